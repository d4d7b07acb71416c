//! `[[bearer]]` (file only): where machine clients may present access tokens instead of
//! a session cookie, and which tokens count (docs/machine-clients.md). An ordered list;
//! for a token, the first entry covering the path whose issuer and audience match it
//! decides. No entry, or a path no entry lists: tokens are not looked at, and the
//! request needs a session as before.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::provider::{ClientSecret, RawProvider};
use super::providers::ProviderConfig;
use crate::config::AccessSettings;
use crate::path::PathPattern;

/// How long an introspection answer is kept at most (`introspection_cache`).
pub const DEFAULT_INTROSPECTION_CACHE: Duration = Duration::from_secs(60);

/// The access-token shapes an entry accepts (`token_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTokenType {
    /// RFC 9068: `typ` is `at+jwt` (or `application/at+jwt`).
    AtJwt,
    /// A plain JWT (`typ` absent or `JWT`), as providers that predate RFC 9068 issue;
    /// then anything shaped like an ID or logout token is refused.
    Jwt,
}

/// Whose tokens an entry accepts.
#[derive(Debug, Clone)]
pub enum BearerIssuer {
    /// A configured provider, by id: its issuer (tenants included), discovery and keys.
    Provider(String),
    /// Another issuer, with its own discovery (`{issuer}/.well-known/openid-configuration`)
    /// and, for introspection, its own client credentials. Read as a provider entry
    /// that never signs anyone in.
    Extra(Box<ProviderConfig>),
}

/// One `[[bearer]]` entry as configured.
#[derive(Debug, Clone)]
pub struct BearerSettings {
    /// `bearer[N]`, as errors and logs name it.
    pub label: String,
    pub issuer: BearerIssuer,
    /// `aud` must name at least one of these.
    pub audiences: Vec<String>,
    pub token_types: Vec<AccessTokenType>,
    /// Every one of these must be granted (`scope`/`scp`).
    pub required_scopes: Vec<String>,
    /// Where these tokens are accepted.
    pub paths: Vec<PathPattern>,
    /// RFC 7662 introspection for tokens that are not JWTs.
    pub introspection: bool,
    /// How long an introspection answer is kept at most (never past the token's `exp`).
    pub introspection_cache: Duration,
    /// Remove `Authorization` (and `DPoP`) before the app sees the request.
    pub strip_authorization: bool,
    /// `[access]` (and the provider's own rules) apply to the token's claims.
    pub access: bool,
    /// DPoP proofs must carry a nonce of the gateway's (RFC 9449 §9).
    pub dpop_nonce: bool,
}

impl BearerSettings {
    /// Whether this entry accepts tokens on `path`.
    pub fn covers(&self, path: &crate::path::NormalizedPath) -> bool {
        self.paths.iter().any(|p| p.matches(path))
    }

    /// The provider id whose issuer this entry trusts, or for an extra issuer the id
    /// of the entry made for it (`bearer-N`).
    pub fn issuer_id(&self) -> &str {
        match &self.issuer {
            BearerIssuer::Provider(id) => id,
            BearerIssuer::Extra(entry) => &entry.id,
        }
    }
}

/// One `[[bearer]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBearer {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    token_types: Option<Vec<String>>,
    required_scopes: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    introspection: Option<bool>,
    introspection_cache: Option<String>,
    strip_authorization: Option<bool>,
    access: Option<bool>,
    client_id: Option<String>,
    client_secret_file: Option<String>,
    dpop_nonce: Option<bool>,
}

/// Every entry, checked alone and together (at most one introspecting entry per path).
pub(super) fn validate(
    raw: Option<Vec<RawBearer>>,
    providers: &[ProviderConfig],
    public: &[(String, PathPattern)],
    prefix: &str,
    errors: &mut Vec<String>,
) -> Vec<BearerSettings> {
    let entries: Vec<BearerSettings> = raw
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| entry(i, raw, providers, public, prefix, errors))
        .collect();
    for e in &entries {
        if let BearerIssuer::Extra(extra) = &e.issuer
            && providers.iter().any(|p| p.id == extra.id)
        {
            errors.push(format!(
                "`{}` is an extra issuer, known as `{}`, but a provider has that id: rename the provider",
                e.label, extra.id
            ));
        }
    }
    // A token never goes to two introspection servers, so no path may have two.
    let introspecting: Vec<&BearerSettings> = entries.iter().filter(|e| e.introspection).collect();
    for (i, a) in introspecting.iter().enumerate() {
        for b in &introspecting[i + 1..] {
            if a.paths
                .iter()
                .any(|p| b.paths.iter().any(|q| p.overlaps_ignoring_case(q)))
            {
                errors.push(format!(
                    "`{}` and `{}` both introspect tokens on some path: a token must go to one introspection server only; give them paths apart",
                    a.label, b.label
                ));
            }
        }
    }
    entries
}

fn entry(
    index: usize,
    raw: RawBearer,
    providers: &[ProviderConfig],
    public: &[(String, PathPattern)],
    prefix: &str,
    errors: &mut Vec<String>,
) -> Option<BearerSettings> {
    let label = format!("bearer[{index}]");
    let before = errors.len();
    let issuer_text = raw.issuer.unwrap_or_default().trim().to_owned();
    let audiences: Vec<String> = raw
        .audiences
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    if audiences.is_empty() {
        errors.push(format!(
            "`{label}.audiences` is required: the audiences (`aud`) of this API's tokens; a token for another API must never pass"
        ));
    }
    let token_types = token_types(raw.token_types, &label, errors);
    let required_scopes = scopes(
        raw.required_scopes,
        &format!("{label}.required_scopes"),
        errors,
    );
    let paths = paths(raw.paths, &label, public, prefix, errors);
    let introspection = raw.introspection.unwrap_or(false);
    let introspection_cache = super::duration::duration_setting(
        raw.introspection_cache,
        &format!("{label}.introspection_cache"),
        DEFAULT_INTROSPECTION_CACHE,
        errors,
    );
    let credentials = raw.client_id.is_some() || raw.client_secret_file.is_some();
    let issuer = if providers.iter().any(|p| p.id == issuer_text) {
        if credentials {
            errors.push(format!(
                "`{label}`: `client_id` and `client_secret_file` are for an extra issuer; provider `{issuer_text}` introspects with its own client"
            ));
        }
        BearerIssuer::Provider(issuer_text)
    } else {
        let extra = extra_issuer(
            index,
            &issuer_text,
            raw.client_id,
            raw.client_secret_file,
            &label,
            errors,
        )?;
        if introspection && extra.client_secret.is_none() {
            errors.push(format!(
                "`{label}.introspection` at an extra issuer needs `client_id` and `client_secret_file` (RFC 7662 §2.1: the introspection endpoint authenticates its callers)"
            ));
        }
        BearerIssuer::Extra(Box::new(extra))
    };
    (errors.len() == before).then_some(BearerSettings {
        label,
        issuer,
        audiences,
        token_types,
        required_scopes,
        paths,
        introspection,
        introspection_cache,
        strip_authorization: raw.strip_authorization.unwrap_or(false),
        access: raw.access.unwrap_or(true),
        dpop_nonce: raw.dpop_nonce.unwrap_or(false),
    })
}

/// `token_types`: `at+jwt` (the default) and/or `jwt`.
fn token_types(
    raw: Option<Vec<String>>,
    label: &str,
    errors: &mut Vec<String>,
) -> Vec<AccessTokenType> {
    let Some(list) = raw else {
        return vec![AccessTokenType::AtJwt];
    };
    if list.is_empty() {
        errors.push(format!(
            "`{label}.token_types` is empty: leave it out for `at+jwt`"
        ));
    }
    list.iter()
        .filter_map(|t| match t.trim().to_ascii_lowercase().as_str() {
            "at+jwt" => Some(AccessTokenType::AtJwt),
            "jwt" => Some(AccessTokenType::Jwt),
            other => {
                errors.push(format!(
                    "`{label}.token_types`: `{other}` is not `at+jwt` or `jwt` (ID tokens are never access tokens)"
                ));
                None
            }
        })
        .collect()
}

/// A list of scope names (no spaces inside one).
pub(super) fn scopes(
    raw: Option<Vec<String>>,
    name: &str,
    errors: &mut Vec<String>,
) -> Vec<String> {
    raw.unwrap_or_default()
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| {
            let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            if !ok {
                errors.push(format!(
                    "`{name}`: `{s}` is not a scope name (RFC 6749 §3.3: printable, no space, quote or backslash)"
                ));
            }
            ok
        })
        .collect()
}

/// `paths`: where tokens are accepted (required: none by default), never a public path
/// or one of the gateway's own.
fn paths(
    raw: Option<Vec<String>>,
    label: &str,
    public: &[(String, PathPattern)],
    prefix: &str,
    errors: &mut Vec<String>,
) -> Vec<PathPattern> {
    let list = raw.unwrap_or_default();
    if list.is_empty() {
        errors.push(format!(
            "`{label}.paths` is required: the paths where these tokens are accepted (none by default)"
        ));
    }
    let own = PathPattern::parse(&format!("{prefix}/*"));
    list.into_iter()
        .filter_map(|p| {
            let Some(pattern) = PathPattern::parse(&p) else {
                errors.push(format!(
                    "`{label}.paths`: `{p}` must be a normalised path (`/api`) or a prefix ending in `/*` (`/api/*`)"
                ));
                return None;
            };
            if let Some((name, _)) = public.iter().find(|(_, q)| pattern.overlaps_ignoring_case(q)) {
                errors.push(format!(
                    "`{label}.paths`: `{p}` overlaps the public path `{name}`, where nothing is checked; narrow one of them"
                ));
            }
            if own.as_ref().is_some_and(|o| pattern.overlaps_ignoring_case(o)) {
                errors.push(format!(
                    "`{label}.paths`: `{p}` overlaps the gateway's own paths under `{prefix}`"
                ));
            }
            Some(pattern)
        })
        .collect()
}

/// An issuer URL that is not a configured provider: a provider entry of its own that
/// never signs anyone in (id `bearer-N`).
fn extra_issuer(
    index: usize,
    issuer: &str,
    client_id: Option<String>,
    client_secret_file: Option<String>,
    label: &str,
    errors: &mut Vec<String>,
) -> Option<ProviderConfig> {
    match Url::parse(issuer) {
        Ok(u) if u.scheme() == "https" || super::profile::is_loopback(&u) => {
            if u.query().is_some() || u.fragment().is_some() {
                errors.push(format!(
                    "`{label}.issuer` must not have a query or fragment"
                ));
                return None;
            }
        }
        _ => {
            errors.push(format!(
                "`{label}.issuer`: `{issuer}` is neither the id of a provider nor an https issuer URL"
            ));
            return None;
        }
    }
    let client_secret: Option<ClientSecret> =
        super::providers::entry_secret(None, client_secret_file, label, errors);
    let mut knobs_errors = Vec::new();
    let settings = RawProvider::default().validate(client_secret.is_some(), &mut knobs_errors);
    errors.extend(knobs_errors);
    let id = format!("bearer-{index}");
    Some(ProviderConfig {
        name: issuer.to_owned(),
        issuer: issuer.to_owned(),
        discovery_url: None,
        allowed_tenants: Vec::new(),
        client_id: client_id.map(|c| c.trim().to_owned()).unwrap_or_default(),
        client_secret,
        scopes: None,
        settings,
        email_domains: Vec::new(),
        access: AccessSettings::default(),
        id,
    })
}
