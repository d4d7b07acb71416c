//! Which identity providers sign people in: today's top-level keys (`issuer`,
//! `client_id`, `client_secret`, `scopes`, `[provider]`) for one, or `[[providers]]`
//! (file only) for several — never both. Each entry carries its own credentials,
//! `[provider]` knobs, `email_domains` and access rules; `default_provider` names the
//! entry that signs in without a chooser (docs/providers/several.md).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use url::Url;

use super::access::{AccessSettings, ClaimValues, RawAccess};
use super::provider::{ClientSecret, ProviderSettings, RawProvider};

/// The id of the provider of the top-level form, and of the entry that keeps
/// `{prefix}/callback` as its redirect URI.
pub const DEFAULT_PROVIDER_ID: &str = "default";

/// The placeholder of a multi-tenant issuer (`https://login.microsoftonline.com/{tenantid}/v2.0`).
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// One identity provider as configured.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// `a-z0-9-`, at most 32 characters; `default` for the top-level form.
    pub id: String,
    /// What the chooser shows.
    pub name: String,
    /// The issuer identifier; for a multi-tenant provider, a template holding
    /// [`TENANT_PLACEHOLDER`].
    pub issuer: String,
    /// Where the metadata is (required for a template issuer); `None`:
    /// `{issuer}/.well-known/openid-configuration`.
    pub discovery_url: Option<Url>,
    /// The tenants a template issuer accepts (`tid`); empty for a fixed issuer.
    pub allowed_tenants: Vec<String>,
    pub client_id: String,
    pub client_secret: Option<ClientSecret>,
    /// `None`: `openid email profile`, plus `offline_access` when the provider offers it.
    pub scopes: Option<Vec<String>>,
    /// The `[provider]` knobs of this entry.
    pub settings: ProviderSettings,
    /// Lower-cased domains whose addresses this provider may vouch for (nOAuth), and
    /// by which `login_hint` picks it.
    pub email_domains: Vec<String>,
    /// This entry's own access rules (`[access]` applies as well).
    pub access: AccessSettings,
}

impl ProviderConfig {
    /// Whether the issuer is a template (`{tenantid}`).
    pub fn is_multi_tenant(&self) -> bool {
        self.issuer.contains(TENANT_PLACEHOLDER)
    }

    /// The callback path under `prefix`: `{prefix}/callback` for `default`,
    /// `{prefix}/callback/{id}` for the others.
    pub fn callback_path(&self, prefix: &str) -> String {
        callback_path(prefix, &self.id)
    }

    /// Every issuer this entry accepts: the issuer, or the template filled with each
    /// allowed tenant.
    pub fn concrete_issuers(&self) -> Vec<String> {
        if self.is_multi_tenant() {
            self.allowed_tenants
                .iter()
                .map(|t| self.issuer.replace(TENANT_PLACEHOLDER, t))
                .collect()
        } else {
            vec![self.issuer.clone()]
        }
    }
}

/// `{prefix}/callback` for `default`, `{prefix}/callback/{id}` for another provider.
pub fn callback_path(prefix: &str, id: &str) -> String {
    if id == DEFAULT_PROVIDER_ID {
        format!("{prefix}/callback")
    } else {
        format!("{prefix}/callback/{id}")
    }
}

/// The provider settings as written: the top-level form's keys and `[[providers]]`.
pub(super) struct RawProviders {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scopes: Option<String>,
    pub provider: Option<RawProvider>,
    pub providers: Option<Vec<toml::Table>>,
    pub default_provider: Option<String>,
}

/// Every entry, checked alone and together (ids, issuers, `email_domains`), and
/// `default_provider`. Empty only with errors.
pub(super) fn validate(
    raw: RawProviders,
    errors: &mut Vec<String>,
) -> (Vec<ProviderConfig>, Option<String>) {
    let top_level = raw.issuer.is_some()
        || raw.client_id.is_some()
        || raw.client_secret.is_some()
        || raw.scopes.is_some()
        || raw.provider.is_some();
    let providers = match raw.providers {
        Some(_) if top_level => {
            errors.push(
                "`[[providers]]` and the top-level provider keys (`issuer`, `client_id`, `client_secret`, `scopes`, `[provider]`, or their PORTCULLIS_* variables) cannot be used together: move the provider into `[[providers]]`".into(),
            );
            return (Vec::new(), None);
        }
        Some(tables) if tables.is_empty() => {
            errors.push("`[[providers]]` is empty: list at least one provider".into());
            return (Vec::new(), None);
        }
        Some(tables) => tables
            .into_iter()
            .enumerate()
            .filter_map(|(i, table)| entry(i, table, errors))
            .collect(),
        None => vec![top_level_provider(
            raw.issuer,
            raw.client_id,
            raw.client_secret,
            raw.scopes,
            raw.provider.unwrap_or_default(),
            errors,
        )],
    };
    check_together(&providers, errors);
    let default_provider = raw
        .default_provider
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty());
    if let Some(d) = &default_provider
        && !providers.iter().any(|p| &p.id == d)
    {
        errors.push(format!(
            "`default_provider`: `{d}` is not the id of a provider"
        ));
    }
    (providers, default_provider)
}

/// The one provider of the top-level keys, with the id `default`.
fn top_level_provider(
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Option<String>,
    provider: RawProvider,
    errors: &mut Vec<String>,
) -> ProviderConfig {
    let issuer = super::provider::issuer(issuer, errors);
    let client_id = super::provider::client_id(client_id, errors);
    let client_secret = super::provider::client_secret(client_secret);
    let scopes = super::provider::scopes(scopes, errors);
    let settings = provider.validate(client_secret.is_some(), errors);
    let name = Url::parse(&issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| issuer.clone());
    ProviderConfig {
        id: DEFAULT_PROVIDER_ID.to_owned(),
        name,
        issuer,
        discovery_url: None,
        allowed_tenants: Vec::new(),
        client_id,
        client_secret,
        scopes,
        settings,
        email_domains: Vec::new(),
        access: AccessSettings::default(),
    }
}

/// The keys of a `[[providers]]` entry that are not `[provider]` knobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    id: Option<String>,
    name: Option<String>,
    issuer: Option<String>,
    discovery_url: Option<String>,
    allowed_tenants: Option<Vec<String>>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<String>,
    scopes: Option<String>,
    email_domains: Option<Vec<String>>,
    allowed_email_domains: Option<Vec<String>>,
    allowed_emails: Option<Vec<String>>,
    required_claims: Option<BTreeMap<String, ClaimValues>>,
    require_email_verified: Option<bool>,
}

const ENTRY_KEYS: &[&str] = &[
    "id",
    "name",
    "issuer",
    "discovery_url",
    "allowed_tenants",
    "client_id",
    "client_secret",
    "client_secret_file",
    "scopes",
    "email_domains",
    "allowed_email_domains",
    "allowed_emails",
    "required_claims",
    "require_email_verified",
];

/// One `[[providers]]` entry: its own keys, and every other key read as a `[provider]`
/// knob (reported under the entry's name).
fn entry(index: usize, mut table: toml::Table, errors: &mut Vec<String>) -> Option<ProviderConfig> {
    let mut own = toml::Table::new();
    for key in ENTRY_KEYS {
        if let Some(value) = table.remove(*key) {
            own.insert((*key).to_owned(), value);
        }
    }
    let label = match own.get("id").and_then(toml::Value::as_str) {
        Some(id) if is_id(id) => format!("providers.{id}"),
        _ => format!("providers[{index}]"),
    };
    let raw: RawEntry = match toml::Value::Table(own).try_into() {
        Ok(raw) => raw,
        Err(e) => {
            errors.push(format!("`{label}`: {}", e.message()));
            return None;
        }
    };
    let knobs: RawProvider = match toml::Value::Table(table).try_into() {
        Ok(knobs) => knobs,
        Err(e) => {
            errors.push(format!("`{label}`: {}", e.message()));
            return None;
        }
    };
    // The shared checks name `provider.…` and the top-level keys; here they are the
    // entry's.
    let mut found = Vec::new();
    let config = entry_fields(raw, knobs, &label, &mut found);
    errors.extend(found.into_iter().map(|e| {
        e.replace("`provider.", &format!("`{label}."))
            .replace("(or set PORTCULLIS_ISSUER)", "")
            .replace("(or set PORTCULLIS_CLIENT_ID)", "")
            .replace("`issuer`", &format!("`{label}.issuer`"))
            .replace("`client_id`", &format!("`{label}.client_id`"))
            .replace("`scopes`", &format!("`{label}.scopes`"))
            .trim_end()
            .to_owned()
    }));
    config
}

fn entry_fields(
    raw: RawEntry,
    knobs: RawProvider,
    label: &str,
    errors: &mut Vec<String>,
) -> Option<ProviderConfig> {
    let id = raw.id.map(|i| i.trim().to_owned()).unwrap_or_default();
    if !is_id(&id) {
        errors.push(format!(
            "`{label}.id`: `{id}` must be 1 to 32 characters of a-z, 0-9 and `-`"
        ));
    }
    let template = raw
        .issuer
        .as_deref()
        .is_some_and(|i| i.contains(TENANT_PLACEHOLDER));
    let issuer = entry_issuer(raw.issuer, errors);
    let client_id = super::provider::client_id(raw.client_id, errors);
    let client_secret = entry_secret(raw.client_secret, raw.client_secret_file, label, errors);
    let scopes = super::provider::scopes(raw.scopes, errors);
    let settings = knobs.validate(client_secret.is_some(), errors);
    let discovery_url = raw
        .discovery_url
        .and_then(|u| discovery_url(&u, label, errors));
    let allowed_tenants: Vec<String> = raw
        .allowed_tenants
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.trim().to_owned())
        .collect();
    check_tenants(
        template,
        &discovery_url,
        &allowed_tenants,
        &settings,
        label,
        errors,
    );
    let email_domains = email_domains(raw.email_domains, label, errors);
    let access = RawAccess {
        allowed_email_domains: raw.allowed_email_domains,
        allowed_emails: raw.allowed_emails,
        required_claims: raw.required_claims,
        require_email_verified: raw.require_email_verified,
    }
    .validate_as(label, errors);
    let name = display_name(raw.name, &id, label, errors);
    Some(ProviderConfig {
        id,
        name,
        issuer,
        discovery_url,
        allowed_tenants,
        client_id,
        client_secret,
        scopes,
        settings,
        email_domains,
        access,
    })
}

/// The issuer as written (a template keeps its placeholder); empty when it is not a
/// valid one. A template is checked as a URL with a tenant in its place.
fn entry_issuer(raw: Option<String>, errors: &mut Vec<String>) -> String {
    let checked = super::provider::issuer(
        raw.as_ref()
            .map(|i| i.replace(TENANT_PLACEHOLDER, "tenant")),
        errors,
    );
    if checked.is_empty() {
        checked
    } else {
        raw.unwrap_or_default().trim().to_owned()
    }
}

/// Where the metadata is: https, or http on loopback.
fn discovery_url(raw: &str, label: &str, errors: &mut Vec<String>) -> Option<Url> {
    match Url::parse(raw.trim()) {
        Ok(url) if url.scheme() == "https" || super::profile::is_loopback(&url) => Some(url),
        _ => {
            errors.push(format!(
                "`{label}.discovery_url`: `{raw}` must be an https URL (http on loopback only)"
            ));
            None
        }
    }
}

/// What the chooser shows: the name, else the id; at most 80 characters, none of them
/// control characters.
fn display_name(raw: Option<String>, id: &str, label: &str, errors: &mut Vec<String>) -> String {
    let name = raw
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| id.to_owned());
    if name.chars().any(char::is_control) || name.chars().count() > 80 {
        errors.push(format!(
            "`{label}.name` must be at most 80 characters, none of them control characters"
        ));
    }
    name
}

/// An id: 1 to 32 of `a-z0-9-`.
fn is_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `client_secret` or `client_secret_file` (its content, the final line break
/// dropped), never both.
pub(super) fn entry_secret(
    secret: Option<String>,
    file: Option<String>,
    label: &str,
    errors: &mut Vec<String>,
) -> Option<ClientSecret> {
    let file = file.filter(|f| !f.trim().is_empty());
    match (secret, file) {
        (Some(_), Some(_)) => {
            errors.push(format!(
                "`{label}`: set `client_secret` or `client_secret_file`, not both"
            ));
            None
        }
        (Some(secret), None) => super::provider::client_secret(Some(secret)),
        (None, Some(file)) => match std::fs::read_to_string(file.trim()) {
            Ok(text) => {
                super::provider::client_secret(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            Err(e) => {
                errors.push(format!(
                    "`{label}.client_secret_file`: cannot read {file}: {e}"
                ));
                None
            }
        },
        (None, None) => None,
    }
}

/// A template issuer needs `discovery_url` and `allowed_tenants`; a fixed one takes
/// neither tenants nor `assume_email_verified` with a template (any tenant could
/// assert any address).
fn check_tenants(
    template: bool,
    discovery_url: &Option<Url>,
    tenants: &[String],
    settings: &ProviderSettings,
    label: &str,
    errors: &mut Vec<String>,
) {
    if !template {
        if !tenants.is_empty() {
            errors.push(format!(
                "`{label}.allowed_tenants` is for a multi-tenant issuer (one holding `{TENANT_PLACEHOLDER}`)"
            ));
        }
        return;
    }
    if discovery_url.is_none() {
        errors.push(format!(
            "`{label}`: a multi-tenant issuer (`{TENANT_PLACEHOLDER}`) needs `discovery_url`"
        ));
    }
    if tenants.is_empty() {
        errors.push(format!(
            "`{label}`: a multi-tenant issuer (`{TENANT_PLACEHOLDER}`) needs `allowed_tenants` (the tenant ids it accepts; never any tenant)"
        ));
    }
    for t in tenants {
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            errors.push(format!(
                "`{label}.allowed_tenants`: `{t}` is not a tenant id"
            ));
        }
    }
    if settings.assume_email_verified {
        errors.push(format!(
            "`{label}.assume_email_verified` cannot be set on a multi-tenant issuer: every tenant's administrators could vouch for any address"
        ));
    }
    if settings.client_key.is_some()
        && settings.client_assertion_aud == super::AssertionAudience::Issuer
    {
        errors.push(format!(
            "`{label}`: a multi-tenant issuer has no one issuer to name as a client assertion's audience: set `client_assertion_aud = \"token_endpoint\"`"
        ));
    }
}

/// `email_domains`: lower-cased domains.
fn email_domains(raw: Option<Vec<String>>, label: &str, errors: &mut Vec<String>) -> Vec<String> {
    let domains: Vec<String> = raw
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
        .collect();
    for d in &domains {
        if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) || !d.contains('.') {
            errors.push(format!("`{label}.email_domains`: `{d}` is not a domain"));
        }
    }
    domains
}

/// Ids are unique; no two entries could accept one `iss`; no domain is claimed twice.
fn check_together(providers: &[ProviderConfig], errors: &mut Vec<String>) {
    let mut ids = BTreeSet::new();
    let mut issuers: BTreeMap<String, &str> = BTreeMap::new();
    let mut domains: BTreeMap<&str, &str> = BTreeMap::new();
    for p in providers {
        if !ids.insert(p.id.as_str()) {
            errors.push(format!("`providers`: the id `{}` is used twice", p.id));
        }
        for iss in p.concrete_issuers() {
            if let Some(other) = issuers.insert(iss.clone(), &p.id) {
                errors.push(format!(
                    "`providers`: `{other}` and `{}` could both accept the issuer `{iss}`; a response could not be told apart",
                    p.id
                ));
            }
        }
        for d in &p.email_domains {
            if let Some(other) = domains.insert(d, &p.id) {
                errors.push(format!(
                    "`providers`: `{other}` and `{}` both list `{d}` in `email_domains`; neither could vouch for its addresses",
                    p.id
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
