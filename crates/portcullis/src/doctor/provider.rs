//! The provider's checks: discovery, keys, PKCE, `iss`, refresh, emails, logout, the
//! clock, the client's credentials (in `client`) and known quirks (in `quirks`).

// The clock check compares the provider's clock with this machine's wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::client::client_check;
use super::quirks::{is_host, quirks};
use super::{Level, Report};
use crate::config::Config;
use crate::provider::discovery::{self, Metadata};
use crate::provider::http::ProviderHttp;
use crate::provider::{Provider, ProviderError};

/// How far the provider's clock may be from ours before a warning (ID tokens allow
/// 60 s, [`crate::provider::id_token`]).
const SKEW_WARN: Duration = Duration::from_secs(5);
const SKEW_ERROR: Duration = Duration::from_secs(60);
const MAX_METADATA_BYTES: usize = 64 * 1024;

pub(super) async fn provider_checks(
    config: &Config,
    entry: &crate::config::ProviderConfig,
    http: ProviderHttp,
    report: &mut Report,
) {
    let url = entry.discovery_url.as_ref().map_or_else(
        || discovery::discovery_url(&entry.issuer),
        |u| u.to_string(),
    );
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
    if let Err(e) = discovery::check_metadata(&metadata, &entry.issuer) {
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
        if entry.issuer.starts_with("https://") {
            "issuer matches; every endpoint uses https"
        } else {
            "issuer matches (plain http: loopback only, for development)"
        },
    );
    let provider = Provider::new(
        crate::provider::ProviderSettings::from_config(config, entry),
        http,
    );
    profile_checks(entry, &provider, &metadata, report);
    jwks_check(&provider, report).await;
    pkce_check(&metadata, report);
    par_check(entry, &metadata, report);
    iss_check(&metadata, report);
    refresh_check(entry, &provider, &metadata, &raw, report).await;
    email_check(entry, &raw, report);
    logout_checks(config, &metadata, &raw, report);
    clock_check(answer.date.as_deref(), answer.age, asked, answered, report);
    client_check(config, entry, &provider, report).await;
    quirks(config, entry, &metadata, report);
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

/// `provider.profile = "fapi2"` and `provider.dpop` against what the metadata offers.
fn profile_checks(
    entry: &crate::config::ProviderConfig,
    provider: &Provider,
    metadata: &Metadata,
    report: &mut Report,
) {
    if entry.settings.fapi2 {
        let problems = provider.profile_problems(metadata);
        if problems.is_empty() {
            report.push(
                Level::Ok,
                "fapi2",
                "the provider offers everything provider.profile = \"fapi2\" needs (PAR, DPoP, S256, iss, private_key_jwt, FAPI algorithms)",
            );
        }
        for problem in problems {
            report.problem(
                Level::Error,
                "fapi2",
                format!("the provider cannot support provider.profile = \"fapi2\": {problem}; every sign-in is refused"),
                "enable the provider's FAPI 2.0 profile for this client, or remove provider.profile",
            );
        }
        return;
    }
    let dpop = metadata
        .dpop_signing_alg_values_supported
        .as_ref()
        .is_some_and(|l| l.iter().any(|a| a == "ES256"));
    match (entry.settings.dpop, dpop) {
        (true, true) => report.push(
            Level::Ok,
            "dpop",
            "tokens are bound to the gateway's DPoP key (ES256 proofs)",
        ),
        (true, false) => report.problem(
            Level::Error,
            "dpop",
            "provider.dpop is on but the provider lists no ES256 in dpop_signing_alg_values_supported: it will answer Bearer tokens, which are refused",
            "provider.dpop = \"off\", or enable DPoP at the provider",
        ),
        (false, true) => report.push(
            Level::Note,
            "dpop",
            "the provider offers DPoP; provider.dpop = \"on\" binds its tokens to the gateway (a stolen token is useless without its key)",
        ),
        (false, false) => {}
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

/// `provider.par` against what the metadata offers and requires (RFC 9126 §5).
fn par_check(entry: &crate::config::ProviderConfig, metadata: &Metadata, report: &mut Report) {
    use crate::config::ParSetting;
    let endpoint = metadata.pushed_authorization_request_endpoint.is_some();
    let required = metadata.require_pushed_authorization_requests;
    match (entry.settings.par, endpoint, required) {
        (ParSetting::Never, _, true) => report.problem(
            Level::Error,
            "par",
            "the provider requires pushed authorization requests and provider.par is never: every sign-in is refused",
            "provider.par = \"auto\"",
        ),
        (ParSetting::Always | ParSetting::Auto, false, true) => report.problem(
            Level::Error,
            "par",
            "the provider requires pushed authorization requests but lists no pushed_authorization_request_endpoint: every sign-in is refused",
            "fix the provider's discovery document (its PAR endpoint)",
        ),
        (ParSetting::Always, false, false) => report.problem(
            Level::Error,
            "par",
            "provider.par is always but the provider lists no pushed_authorization_request_endpoint: every sign-in is refused",
            "provider.par = \"auto\"",
        ),
        (ParSetting::Always, true, _) | (ParSetting::Auto, true, true) => report.push(
            Level::Ok,
            "par",
            "authorization requests are pushed (RFC 9126): the browser carries client_id and request_uri only",
        ),
        (ParSetting::Auto, true, false) => report.push(
            Level::Note,
            "par",
            "the provider offers pushed authorization requests; provider.par = \"always\" uses them",
        ),
        _ => {}
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
    entry: &crate::config::ProviderConfig,
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
    let google_style = entry
        .settings
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
        (false, _) if is_host(&entry.issuer, "gitlab.com") => report.push(
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
fn email_check(entry: &crate::config::ProviderConfig, raw: &Value, report: &mut Report) {
    let Some(claims) = raw.get("claims_supported").and_then(Value::as_array) else {
        return;
    };
    let lists = |name: &str| claims.iter().any(|c| c == name);
    if lists("email") && !lists("email_verified") && !entry.settings.assume_email_verified {
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
                report
                    .register
                    .push(("post-logout redirect URI".to_owned(), uri));
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
            "back-channel logout URI".to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Finding;

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
                &config.providers[0],
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
