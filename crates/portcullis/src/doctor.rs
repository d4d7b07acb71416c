//! `portcullis doctor`: the configuration checked against the live provider, store and
//! upstream, one finding per line with its fix (README.md "Run it in front of your
//! identity provider").
//!
//! Every check runs even when an earlier one failed (a wrong secret and a missing
//! `offline_access` are both worth knowing at once), except those that need the
//! provider's metadata when discovery failed. Nothing here logs in or changes anything
//! at the provider: the client credentials are tried with a bogus code, which a
//! provider refuses with `invalid_grant` once it has accepted the client.

// doctor compares the provider's clock with this machine's wall clock.
#![allow(clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::config::Config;
use crate::provider::discovery::{self, Metadata};
use crate::provider::http::ProviderHttp;
use crate::provider::{Provider, ProviderError};

mod client;
use client::client_check;

/// How far the provider's clock may be from ours before a warning (ID tokens allow
/// 60 s, [`crate::provider::id_token`]).
const SKEW_WARN: Duration = Duration::from_secs(5);
const SKEW_ERROR: Duration = Duration::from_secs(60);
/// Time for the upstream to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_METADATA_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Worth knowing; nothing to change.
    Note,
    /// Works, but not as well as it could: exit status 1.
    Warn,
    /// Sign-ins or sessions will fail: exit status 2.
    Error,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Note => "note",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    /// The check's name: `config`, `discovery`, `jwks`, `pkce`, `iss`, `refresh`,
    /// `logout`, `backchannel`, `clock`, `client`, `store`, `upstream`, `quirk`.
    pub check: &'static str,
    pub message: String,
    /// What to change, for a warning or an error.
    pub fix: Option<String>,
}

/// Everything `doctor` found, and the URIs to register at the provider.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// (what, URI) to register at the provider.
    pub register: Vec<(&'static str, String)>,
}

impl Report {
    fn push(&mut self, level: Level, check: &'static str, message: impl Into<String>) {
        self.findings.push(Finding {
            level,
            check,
            message: message.into(),
            fix: None,
        });
    }

    fn problem(
        &mut self,
        level: Level,
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.findings.push(Finding {
            level,
            check,
            message: message.into(),
            fix: Some(fix.into()),
        });
    }

    fn count(&self, level: Level) -> usize {
        self.findings.iter().filter(|f| f.level == level).count()
    }

    /// 0 when all is well, 1 with warnings, 2 with errors.
    pub fn exit_status(&self) -> u8 {
        match self.findings.iter().map(|f| f.level).max() {
            Some(Level::Error) => 2,
            Some(Level::Warn) => 1,
            _ => 0,
        }
    }

    /// The report as `doctor` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = write!(out, "{:<5} {:<12} {}", f.level.label(), f.check, f.message);
            if let Some(fix) = &f.fix {
                let _ = write!(out, " — fix: {fix}");
            }
            out.push('\n');
        }
        if !self.register.is_empty() {
            out.push_str("register at the provider:\n");
            for (what, uri) in &self.register {
                let _ = writeln!(out, "  {what:<25} {uri}");
            }
        }
        let (errors, warnings) = (self.count(Level::Error), self.count(Level::Warn));
        let _ = writeln!(
            out,
            "{errors} error{}, {warnings} warning{}",
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" }
        );
        out
    }
}

/// Runs every check against `config` (already valid: the caller reports configuration
/// errors itself, [`config_errors`]).
pub async fn run(config: &Config) -> Report {
    crate::install_crypto_provider();
    let mut report = Report::default();
    report.push(Level::Ok, "config", "configuration is valid");
    match ProviderHttp::new() {
        Ok(http) => provider_checks(config, http, &mut report).await,
        Err(e) => report.problem(
            Level::Error,
            "discovery",
            format!("no HTTP client: {e}"),
            "report this as a bug",
        ),
    }
    store_check(config, &mut report).await;
    upstream_check(config, &mut report).await;
    report
        .register
        .insert(0, ("redirect URI", config.redirect_uri()));
    if let Some(spa) = config
        .spa
        .code_exchange
        .then_some(config.spa.redirect_uri.as_ref())
        .flatten()
    {
        report
            .register
            .insert(1, ("redirect URI (SPA)", spa.to_string()));
    }
    report
}

/// The report for a configuration that does not load: one error per problem.
pub fn config_errors(errors: &[String]) -> Report {
    let mut report = Report::default();
    for e in errors {
        report.problem(
            Level::Error,
            "config",
            e.clone(),
            "see docs/configuration.md; `portcullis check-config` lists the same",
        );
    }
    report
}

async fn provider_checks(config: &Config, http: ProviderHttp, report: &mut Report) {
    let url = discovery::discovery_url(&config.issuer);
    let asked = SystemTime::now();
    let answer = match http.get("discovery", &url, None, MAX_METADATA_BYTES).await {
        Ok(a) if a.status.is_success() => a,
        Ok(a) => {
            return report.problem(
                Level::Error,
                "discovery",
                format!("{url} answered HTTP {}", a.status.as_u16()),
                "check `issuer` (PORTCULLIS_ISSUER): it is the URL before /.well-known/openid-configuration",
            );
        }
        Err(e) => {
            return report.problem(
                Level::Error,
                "discovery",
                format!("cannot fetch {url}: {e}"),
                "check `issuer` (PORTCULLIS_ISSUER) and that this host can reach it",
            );
        }
    };
    let answered = SystemTime::now();
    let parsed = serde_json::from_slice::<Value>(&answer.body).ok();
    let metadata = parsed
        .clone()
        .and_then(|raw| serde_json::from_value::<Metadata>(raw).ok());
    let (Some(raw), Some(metadata)) = (parsed, metadata) else {
        return report.problem(
            Level::Error,
            "discovery",
            format!("{url} is not an OpenID discovery document"),
            "check `issuer`: it must be the provider's issuer, not its login page",
        );
    };
    if let Err(e) = discovery::check_metadata(&metadata, &config.issuer) {
        let fix = match &e {
            ProviderError::IssuerMismatch { found, .. } => {
                format!("set `issuer` to exactly `{found}` (a trailing slash matters)")
            }
            _ => "use a provider (or issuer URL) whose metadata passes; see the message".into(),
        };
        return report.problem(Level::Error, "discovery", e.to_string(), fix);
    }
    report.push(
        Level::Ok,
        "discovery",
        if config.issuer.starts_with("https://") {
            "issuer matches; every endpoint uses https"
        } else {
            "issuer matches (plain http: loopback only, for development)"
        },
    );
    let provider = Provider::new(crate::provider::ProviderSettings::from_config(config), http);
    jwks_check(&provider, report).await;
    pkce_check(&metadata, report);
    iss_check(&metadata, report);
    refresh_check(config, &provider, &metadata, &raw, report).await;
    email_check(config, &raw, report);
    logout_checks(config, &metadata, &raw, report);
    clock_check(answer.date.as_deref(), answer.age, asked, answered, report);
    client_check(config, &provider, report).await;
    quirks(config, &metadata, report);
}

async fn jwks_check(provider: &Provider, report: &mut Report) {
    match provider.usable_keys().await {
        Ok((algorithms, 0)) if algorithms.iter().all(|a| a.starts_with("HS")) => report.push(
            Level::Ok,
            "jwks",
            format!("ID tokens signed with {} (the client secret)", algorithms.join(", ")),
        ),
        Ok((algorithms, 0)) => report.problem(
            Level::Error,
            "jwks",
            format!("no key in the JWKS can verify {}", algorithms.join(", ")),
            "set `provider.allowed_algorithms` to the algorithm the provider signs ID tokens with, or fix its JWKS",
        ),
        Ok((algorithms, n)) => report.push(
            Level::Ok,
            "jwks",
            format!(
                "{n} usable key{} for {}",
                if n == 1 { "" } else { "s" },
                algorithms.join(", ")
            ),
        ),
        Err(e) => report.problem(
            Level::Error,
            "jwks",
            format!("cannot read the JWKS: {e}"),
            "check the provider's `jwks_uri` is reachable from this host",
        ),
    }
}

fn pkce_check(metadata: &Metadata, report: &mut Report) {
    // A list without S256 already failed discovery.
    match &metadata.code_challenge_methods_supported {
        Some(_) => report.push(Level::Ok, "pkce", "S256 offered"),
        None => report.problem(
            Level::Warn,
            "pkce",
            "code_challenge_methods_supported is not listed; S256 is sent anyway",
            "make sure the provider enforces PKCE for this client (most do when asked)",
        ),
    }
}

fn iss_check(metadata: &Metadata, report: &mut Report) {
    if metadata.authorization_response_iss_parameter_supported {
        report.push(
            Level::Ok,
            "iss",
            "authorization responses carry iss (RFC 9207), and it is checked",
        );
    } else {
        report.problem(
            Level::Warn,
            "iss",
            "authorization responses carry no iss (RFC 9207); the mix-up defence rests on the state and this one provider",
            "none needed while the gateway talks to one provider; prefer a provider that sends iss",
        );
    }
}

async fn refresh_check(
    config: &Config,
    provider: &Provider,
    metadata: &Metadata,
    raw: &Value,
    report: &mut Report,
) {
    let scopes = provider.requested_scopes().await.unwrap_or_default();
    let requested = scopes.iter().any(|s| s == "offline_access");
    let offered = metadata
        .scopes_supported
        .as_ref()
        .is_none_or(|s| s.iter().any(|s| s == "offline_access"));
    let google_style = config
        .provider
        .extra_authorize_params
        .get("access_type")
        .is_some_and(|v| v == "offline");
    let refresh_grant = raw
        .get("grant_types_supported")
        .and_then(Value::as_array)
        .is_none_or(|g| g.iter().any(|g| g == "refresh_token"));
    if !refresh_grant {
        return report.problem(
            Level::Warn,
            "refresh",
            "the provider lists no refresh_token grant: sessions cannot be refreshed",
            "keep session.idle_timeout and session.absolute_lifetime short; relayed access tokens stop at their expiry",
        );
    }
    match (requested, offered) {
        (true, true) => report.push(Level::Ok, "refresh", "offline_access offered and requested"),
        // Discovery need not list every scope it accepts (some providers leave
        // offline_access out and still issue refresh tokens for it): a warning.
        (true, false) => report.problem(
            Level::Warn,
            "refresh",
            "`scopes` asks for offline_access, which the provider's discovery does not list: if the provider does not accept it, every sign-in fails with invalid_scope (the gateway then says so); if it does, refresh tokens come with it",
            "sign in once: on invalid_scope remove offline_access from `scopes` (or leave `scopes` unset)",
        ),
        (false, _) if google_style => report.push(
            Level::Ok,
            "refresh",
            "access_type=offline requested (refresh tokens without offline_access)",
        ),
        (false, _) if is_host(&config.issuer, "gitlab.com") => report.push(
            Level::Ok,
            "refresh",
            "offline_access not offered; GitLab issues refresh tokens without it",
        ),
        (false, true) => report.problem(
            Level::Warn,
            "refresh",
            "offline_access is offered but `scopes` does not ask for it: most providers then give no refresh token",
            "add offline_access to `scopes` (or leave `scopes` unset)",
        ),
        (false, false) => report.problem(
            Level::Warn,
            "refresh",
            "offline_access is not offered: the provider may give no refresh token, and sessions then end or stop relaying tokens when the access token expires",
            "if the provider gives refresh tokens another way, set it in `provider.extra_authorize_params`; otherwise keep session.idle_timeout short",
        ),
    }
}

/// Addresses without `email_verified` never reach the app as verified (E01): a provider
/// whose `claims_supported` lists `email` but not `email_verified` likely sends such.
fn email_check(config: &Config, raw: &Value, report: &mut Report) {
    let Some(claims) = raw.get("claims_supported").and_then(Value::as_array) else {
        return;
    };
    let lists = |name: &str| claims.iter().any(|c| c == name);
    if lists("email") && !lists("email_verified") && !config.provider.assume_email_verified {
        report.problem(
            Level::Warn,
            "email",
            "the provider lists the email claim but not email_verified: addresses it sends without it are not passed to the app (no X-User-Email) and the email rules refuse them",
            "if the provider releases verified addresses only (Microsoft Entra ID does), set provider.assume_email_verified = true",
        );
    }
}

fn logout_checks(config: &Config, metadata: &Metadata, raw: &Value, report: &mut Report) {
    let origin = format!("{}{}", config.public_origin(), config.prefix);
    match (
        &metadata.end_session_endpoint,
        config.logout.provider_logout,
    ) {
        (Some(_), on) => {
            report.push(
                Level::Ok,
                "logout",
                if on {
                    "end_session_endpoint offered; sign-outs continue there"
                } else {
                    "end_session_endpoint offered (logout.provider_logout = true signs out there too)"
                },
            );
            let uris: Vec<String> = if config.logout.post_logout_redirect_uris.is_empty() {
                vec![format!("{origin}/logged-out")]
            } else {
                config
                    .logout
                    .post_logout_redirect_uris
                    .iter()
                    .map(|u| u.to_string())
                    .collect()
            };
            for uri in uris {
                report.register.push(("post-logout redirect URI", uri));
            }
        }
        (None, true) => report.problem(
            Level::Error,
            "logout",
            "logout.provider_logout is on, but the provider has no end_session_endpoint",
            "set logout.provider_logout = false",
        ),
        (None, false) => report.push(
            Level::Ok,
            "logout",
            "no end_session_endpoint; logout.provider_logout is off",
        ),
    }
    if raw.get("backchannel_logout_supported") == Some(&Value::Bool(true)) {
        report.push(
            Level::Ok,
            "backchannel",
            "back-channel logout offered (a sign-out at the provider ends sessions here)",
        );
        report.register.push((
            "back-channel logout URI",
            format!("{origin}/backchannel-logout"),
        ));
    } else {
        report.problem(
            Level::Warn,
            "backchannel",
            "no back-channel logout: a sign-out at the provider does not end sessions here",
            "keep session.idle_timeout short; end sessions with `portcullis sessions revoke`",
        );
    }
}

fn clock_check(
    date: Option<&str>,
    age: Option<u64>,
    asked: SystemTime,
    answered: SystemTime,
    report: &mut Report,
) {
    // A cached answer keeps its `Date` and says how long it was kept in `Age`.
    let Some(theirs) = date
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .map(|d| d + Duration::from_secs(age.unwrap_or(0)))
    else {
        return report.push(
            Level::Note,
            "clock",
            "the provider sent no Date header; clock skew not checked",
        );
    };
    // Their clock read somewhere between our two readings; HTTP dates have whole seconds.
    let ours = asked + answered.duration_since(asked).unwrap_or_default() / 2;
    let (skew, behind) = match ours.duration_since(theirs) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let skew = skew.saturating_sub(Duration::from_secs(1));
    let text = format!(
        "{:.1} s {} the provider's clock",
        skew.as_secs_f64(),
        if skew.is_zero() {
            "from"
        } else if behind {
            "ahead of"
        } else {
            "behind"
        }
    );
    if skew > SKEW_ERROR {
        report.problem(
            Level::Error,
            "clock",
            format!("{text}: ID tokens will be refused as expired or not yet valid"),
            "synchronise this host's clock (NTP)",
        );
    } else if skew > SKEW_WARN {
        report.problem(
            Level::Warn,
            "clock",
            text,
            "synchronise this host's clock (NTP); 60 s is the most ID tokens allow",
        );
    } else {
        report.push(Level::Ok, "clock", text);
    }
}

/// Whether `issuer`'s host is `host` or under it.
fn is_host(issuer: &str, host: &str) -> bool {
    url::Url::parse(issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .is_some_and(|h| h == host || h.ends_with(&format!(".{host}")))
}

/// Known providers, recognised by issuer, and the setting each needs.
fn quirks(config: &Config, metadata: &Metadata, report: &mut Report) {
    let issuer = config.issuer.as_str();
    let extra = &config.provider.extra_authorize_params;
    let logout = &config.logout;
    let email_rules =
        !config.access.allowed_emails.is_empty() || !config.access.allowed_email_domains.is_empty();
    if is_host(issuer, "accounts.google.com") {
        if extra.get("access_type").is_some_and(|v| v == "offline") {
            report.push(
                Level::Note,
                "quirk",
                "Google: refresh tokens come with access_type=offline; prompt=consent makes Google send one at every sign-in",
            );
        } else {
            report.problem(
                Level::Warn,
                "quirk",
                "Google gives no refresh token without access_type=offline (and refuses the offline_access scope)",
                "provider.extra_authorize_params = { access_type = \"offline\", prompt = \"consent\" }",
            );
        }
    }
    if is_host(issuer, "login.microsoftonline.com") {
        if !issuer.trim_end_matches('/').ends_with("/v2.0") {
            report.problem(
                Level::Warn,
                "quirk",
                "Entra ID: this is the v1 issuer",
                "use https://login.microsoftonline.com/{tenant-id}/v2.0",
            );
        }
        if config.provider.assume_email_verified {
            report.push(
                Level::Note,
                "quirk",
                "Entra ID sends no email_verified; provider.assume_email_verified trusts its addresses (see docs/providers/entra-id.md)",
            );
        } else {
            report.problem(
                if email_rules { Level::Warn } else { Level::Note },
                "quirk",
                "Entra ID sends no email_verified: no address reaches the app, and email rules refuse everyone",
                "provider.assume_email_verified = true, after reading docs/providers/entra-id.md",
            );
        }
    }
    if is_host(issuer, "auth0.com") {
        if !extra.contains_key("audience") {
            report.push(
                Level::Note,
                "quirk",
                "Auth0: access tokens are opaque unless provider.extra_authorize_params has an API `audience`",
            );
        }
        if metadata.end_session_endpoint.is_none() {
            report.push(
                Level::Note,
                "quirk",
                "Auth0 lists end_session_endpoint only with \"RP-Initiated Logout End Session Endpoint Discovery\" on (tenant settings)",
            );
        }
    }
    let okta = ["okta.com", "oktapreview.com", "okta-emea.com"]
        .iter()
        .any(|h| is_host(issuer, h));
    if okta && logout.provider_logout && !logout.id_token_hint {
        report.problem(
            Level::Warn,
            "quirk",
            "Okta's logout endpoint needs id_token_hint",
            "logout.id_token_hint = true",
        );
    }
    let keycloak = url::Url::parse(issuer).is_ok_and(|u| u.path().contains("/realms/"));
    if keycloak && logout.provider_logout && !logout.id_token_hint {
        report.push(
            Level::Note,
            "quirk",
            "Keycloak asks the user to confirm a logout that comes without id_token_hint (logout.id_token_hint = true skips it)",
        );
    }
    if is_host(issuer, "zitadel.cloud") {
        if config.provider.trusted_audiences.is_empty() {
            report.problem(
                Level::Error,
                "quirk",
                "ZITADEL puts its project id in the ID token's aud next to the client id, and the gateway refuses audiences it does not trust: sign-ins fail",
                "provider.trusted_audiences = [\"<the project's Resource Id>\"] (docs/providers/zitadel.md)",
            );
        } else {
            report.push(
                Level::Note,
                "quirk",
                "ZITADEL: ID tokens also name the project; provider.trusted_audiences admits it (azp must be this client)",
            );
        }
    }
}

async fn store_check(config: &Config, report: &mut Report) {
    // Never create a database here (doctor may run as another user than serve).
    if let crate::config::StoreLocation::Sqlite(path) = &config.store
        && !path.exists()
    {
        return report.push(
            Level::Ok,
            "store",
            format!(
                "{} does not exist yet; serve creates it (its folder must be writable by serve's user)",
                config.store.describe()
            ),
        );
    }
    let store = match crate::store::open(&config.store, &config.store_prefix).await {
        Ok(s) => s,
        Err(e) => {
            return report.problem(
                Level::Error,
                "store",
                format!("cannot open {}: {e}", config.store.describe()),
                "check `store` (PORTCULLIS_STORE): the address, the credentials, and that the server runs",
            );
        }
    };
    if let Err(e) = store.ping().await {
        return report.problem(
            Level::Error,
            "store",
            format!("{} does not answer: {e}", config.store.describe()),
            "check the store server",
        );
    }
    report.push(
        Level::Ok,
        "store",
        format!("{} reachable, schema current", config.store.describe()),
    );
    for problem in store.deployment_problems().await {
        report.problem(
            Level::Warn,
            "store",
            problem,
            "change the server's configuration as said (docs/deployment.md)",
        );
    }
    key_ring_check(config, store.as_ref(), report).await;
}

/// G08: whether the configured key ring opens the store's assertion signing keys — a
/// newer key it cannot open makes this instance stale; older ones only take room.
async fn key_ring_check(config: &Config, store: &dyn crate::store::Store, report: &mut Report) {
    let secret = match (&config.secret, &config.store) {
        (Some(secret), _) => Some(secret.clone()),
        // The ring serve generated beside the database, if there is one (never made here).
        (None, crate::config::StoreLocation::Sqlite(path)) => {
            std::fs::read_to_string(crate::gateway::secret_file_for(path))
                .ok()
                .and_then(|text| crate::config::SecretKeys::parse(text.trim()).ok())
        }
        (None, _) => None,
    };
    let Some(ring) = secret.and_then(|s| crate::session::KeyRing::new(&s).ok()) else {
        return;
    };
    let records = match store.signing_keys().await {
        Ok(r) => r,
        Err(e) => {
            return report.problem(
                Level::Error,
                "key ring",
                format!("cannot read the signing keys: {e}"),
                "check the store server",
            );
        }
    };
    let unreadable = crate::session::assertion::unreadable_keys(&records, &ring);
    if crate::session::assertion::stale_ring(&records, &ring) {
        let newest = records.iter().map(|r| r.generation).max().unwrap_or(0);
        report.problem(
            Level::Error,
            "key ring",
            format!(
                "the store holds signing key generation {newest}, which this key ring cannot open: another instance runs with a secret this one lacks, and this one would be stale (its /readyz fails)"
            ),
            "give every instance the same secret (PORTCULLIS_SECRET); after a leak, the new one only (docs/deployment.md, \"If the secret leaked\")",
        );
    } else if !unreadable.is_empty() {
        report.problem(
            Level::Warn,
            "key ring",
            format!(
                "{} older signing key(s) in the store open with no key of this key ring (left by a replaced secret)",
                unreadable.len()
            ),
            "portcullis keys prune --yes",
        );
    } else {
        report.push(
            Level::Ok,
            "key ring",
            format!("opens every signing key in the store ({})", records.len()),
        );
    }
}

async fn upstream_check(config: &Config, report: &mut Report) {
    let Some(upstream) = &config.upstream else {
        return report.push(
            Level::Ok,
            "upstream",
            "none: forward-auth only (docs/forward-auth.md)",
        );
    };
    let client = reqwest::Client::builder()
        .timeout(UPSTREAM_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let answer = match client {
        Ok(c) => c.get(upstream.as_str()).send().await.map(|r| r.status()),
        Err(e) => Err(e),
    };
    match answer {
        Ok(status) => report.push(
            Level::Ok,
            "upstream",
            format!("{upstream} answered HTTP {}", status.as_u16()),
        ),
        Err(e) => report.problem(
            Level::Error,
            "upstream",
            format!("{upstream} does not answer: {}", without_url(e)),
            "start the app, or fix `upstream` (PORTCULLIS_UPSTREAM)",
        ),
    }
}

/// A reqwest error without the URL it repeats, with its causes.
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(date: SystemTime, age: Option<u64>) -> Finding {
        let mut report = Report::default();
        let now = SystemTime::now();
        clock_check(
            Some(&httpdate::fmt_http_date(date)),
            age,
            now,
            now,
            &mut report,
        );
        report.findings.remove(0)
    }

    #[test]
    fn emails_without_email_verified_are_a_warning_naming_the_setting() {
        let config = |assume: &str| {
            let mut e = crate::config::test_support::minimal();
            e.push((
                "PORTCULLIS_PROVIDER_ASSUME_EMAIL_VERIFIED".into(),
                assume.into(),
            ));
            Config::load_from(None, e).unwrap()
        };
        let findings = |config: &Config, claims: serde_json::Value| {
            let mut report = Report::default();
            email_check(
                config,
                &serde_json::json!({ "claims_supported": claims }),
                &mut report,
            );
            report.findings
        };
        let warned = findings(
            &config("false"),
            serde_json::json!(["sub", "email", "name"]),
        );
        assert_eq!(warned.len(), 1);
        assert_eq!(warned[0].level, Level::Warn);
        assert!(
            warned[0]
                .fix
                .as_deref()
                .unwrap_or("")
                .contains("assume_email_verified")
        );
        assert!(
            findings(
                &config("false"),
                serde_json::json!(["email", "email_verified"])
            )
            .is_empty()
        );
        assert!(findings(&config("true"), serde_json::json!(["email"])).is_empty());
    }

    #[test]
    fn the_clock_check_counts_a_cached_answers_age_and_judges_the_skew() {
        let now = SystemTime::now();
        assert_eq!(clock(now, None).level, Level::Ok);
        // Kept five minutes in a cache: its Date is old, its Age says so.
        let cached = now - Duration::from_secs(300);
        assert_eq!(clock(cached, Some(300)).level, Level::Ok);
        assert_eq!(clock(cached, None).level, Level::Error);
        let off = clock(now + Duration::from_secs(20), None);
        assert_eq!(off.level, Level::Warn);
        assert!(off.message.contains("behind"), "{}", off.message);
        assert_eq!(
            clock(now - Duration::from_secs(90), None).level,
            Level::Error
        );
    }
}
