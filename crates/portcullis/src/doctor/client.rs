//! `doctor`'s `client` check: how the client authenticates, tried with a made-up code
//! (a provider refuses it with `invalid_grant` once it has accepted the client), and
//! the `provider.token_endpoint_auth_method` to set. A secret is tried with each
//! method the provider lists, so the report says which works even where `auto` would
//! decide by a probe; a client key is checked against the metadata first.

use super::{Level, Report};
use crate::config::{AssertionAudience, AuthMethodSetting, Config};
use crate::provider::Provider;
use crate::provider::client_auth::{AuthMethod, ProbeOutcome, decided_by_metadata, judge_probe};
use crate::provider::discovery::Metadata;
use crate::provider::http::Answer;

/// What one made-up code told about one method.
struct Tried {
    method: AuthMethod,
    outcome: ProbeOutcome,
    /// The provider's error code (`invalid_grant`, `http_401`, …) or the failure.
    said: String,
    /// The call failed (unreachable, timeout, 5xx): nothing was judged.
    failed: bool,
    /// The provider redeemed a made-up code: it does not check codes.
    accepted_made_up_code: bool,
}

async fn try_method(provider: &Provider, method: AuthMethod) -> Tried {
    let answer = provider.probe_client_auth(method).await;
    let (said, failed) = match &answer {
        Ok(a) => (error_of(a), a.status.is_server_error()),
        Err(e) => (e.to_string(), true),
    };
    Tried {
        method,
        outcome: judge_probe(&answer),
        said,
        failed,
        accepted_made_up_code: answer.as_ref().is_ok_and(|a| a.status.is_success()),
    }
}

fn error_of(answer: &Answer) -> String {
    answer
        .json_object("token response")
        .ok()
        .and_then(|m| m.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("http_{}", answer.status.as_u16()))
}

fn setting_line(method: AuthMethod) -> String {
    format!(
        "provider.token_endpoint_auth_method = \"{}\"",
        method.name()
    )
}

pub(super) async fn client_check(
    config: &Config,
    entry: &crate::config::ProviderConfig,
    provider: &Provider,
    report: &mut Report,
) {
    let Ok(metadata) = provider.metadata().await else {
        return;
    };
    if entry.settings.client_key.is_some() {
        return key_check(config, entry, provider, &metadata, report).await;
    }
    if entry.client_secret.is_none() {
        let tried = try_method(provider, AuthMethod::None).await;
        return report_one(report, &tried, "public client id", None);
    }
    let methods = metadata.token_endpoint_auth_methods_supported.as_deref();
    let fixed = match entry.settings.token_endpoint_auth_method {
        AuthMethodSetting::ClientSecretBasic => Some(AuthMethod::ClientSecretBasic),
        AuthMethodSetting::ClientSecretPost => Some(AuthMethod::ClientSecretPost),
        _ => None,
    };
    let mut tried = Vec::new();
    for m in secret_candidates(fixed, methods) {
        tried.push(try_method(provider, m).await);
    }
    if let Some(t) = tried.iter().find(|t| t.accepted_made_up_code || t.failed) {
        return report_one(report, t, "credentials", None);
    }
    let summary = tried
        .iter()
        .map(|t| format!("{} {}", t.method.name(), t.said))
        .collect::<Vec<_>>()
        .join(", ");
    let works = tried.iter().find(|t| t.outcome == ProbeOutcome::Works);
    match (fixed, works) {
        (Some(f), Some(w)) if w.method == f => report_one(report, w, "credentials", None),
        (Some(f), Some(w)) => report.problem(
            Level::Error,
            "client",
            format!(
                "the token endpoint refused the client with {} but accepts {} ({summary})",
                f.name(),
                w.method.name()
            ),
            format!("set {} (or \"auto\")", setting_line(w.method)),
        ),
        (None, Some(w)) => report.push(Level::Ok, "client", auto_works(w, methods)),
        (_, None) if tried.iter().all(|t| t.outcome == ProbeOutcome::Refused) => report.problem(
            Level::Error,
            "client",
            format!("the token endpoint refused the client ({summary})"),
            "check client_id and client_secret (PORTCULLIS_CLIENT_SECRET); a wrong secret is refused by every method",
        ),
        (_, None) => report.problem(
            Level::Warn,
            "client",
            format!(
                "the answers to a bogus code told nothing about the credentials ({summary})"
            ),
            "check client_id and client_secret; sign in once to see",
        ),
    }
}

/// The configured method, then each secret method the provider lists (basic when it
/// lists none: RFC 8414's default).
fn secret_candidates(fixed: Option<AuthMethod>, methods: Option<&[String]>) -> Vec<AuthMethod> {
    let mut candidates: Vec<AuthMethod> = fixed.into_iter().collect();
    for m in [AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost] {
        let listed = methods.map_or(m == AuthMethod::ClientSecretBasic, |l| {
            l.iter().any(|x| x == m.name())
        });
        if listed && !candidates.contains(&m) {
            candidates.push(m);
        }
    }
    candidates
}

/// `auto` finds a method that works: which, and how `auto` gets to it.
fn auto_works(w: &Tried, methods: Option<&[String]>) -> String {
    let how = match decided_by_metadata(methods) {
        Some(_) => "auto uses it (the only secret method the provider lists)",
        None => "auto finds it with one probe per secret, remembered in the store",
    };
    format!(
        "credentials accepted with {} (a bogus code was refused with {}); {how}; to skip auto, set {}",
        w.method.name(),
        w.said,
        setting_line(w.method)
    )
}

/// `private_key_jwt`: the metadata lists it (and the key's algorithm), then a made-up
/// code with a real assertion.
async fn key_check(
    config: &Config,
    entry: &crate::config::ProviderConfig,
    provider: &Provider,
    metadata: &Metadata,
    report: &mut Report,
) {
    let Some(key) = entry.settings.client_key.as_deref() else {
        return;
    };
    let alg = format!("{:?}", key.algorithm(false));
    if let Some(list) = &metadata.token_endpoint_auth_methods_supported
        && !list.iter().any(|m| m == "private_key_jwt")
    {
        return report.problem(
            Level::Error,
            "client",
            format!(
                "the provider does not list private_key_jwt (it lists {})",
                list.join(", ")
            ),
            "use client_secret with this provider, or enable private_key_jwt for the client there",
        );
    }
    if let Some(algs) = &metadata.token_endpoint_auth_signing_alg_values_supported
        && !algs.contains(&alg)
    {
        return report.problem(
            Level::Error,
            "client",
            format!(
                "the client key signs {alg}, which the provider does not accept for client assertions (it lists {})",
                algs.join(", ")
            ),
            "make a key of a kind it accepts: portcullis keys client-new --type ec|ed25519|rsa",
        );
    }
    let tried = try_method(provider, AuthMethod::PrivateKeyJwt).await;
    let aud = match entry.settings.client_assertion_aud {
        AssertionAudience::Issuer => "aud = the issuer",
        AssertionAudience::TokenEndpoint => "aud = the token endpoint",
    };
    let fix = format!(
        "register the public key ({}{}/client-jwks.json, kid {}) for client {}; Entra ID and Okta want provider.client_assertion_aud = \"token_endpoint\"",
        config.public_origin(),
        config.prefix,
        key.kid(),
        entry.client_id
    );
    report_one(
        report,
        &tried,
        &format!("client assertion ({alg}, {aud})"),
        Some(&fix),
    );
}

/// One method's outcome as a finding.
fn report_one(report: &mut Report, tried: &Tried, what: &str, fix: Option<&str>) {
    if tried.accepted_made_up_code {
        return report.problem(
            Level::Error,
            "client",
            "the token endpoint accepted a made-up code",
            "do not use this provider: it does not check authorization codes",
        );
    }
    if tried.failed {
        return report.problem(
            Level::Error,
            "client",
            format!("the token endpoint failed: {}", tried.said),
            "check the provider's token_endpoint is reachable from this host",
        );
    }
    match tried.outcome {
        ProbeOutcome::Works => report.push(
            Level::Ok,
            "client",
            format!(
                "{what} accepted with {} (a bogus code was refused with {})",
                tried.method.name(),
                tried.said
            ),
        ),
        ProbeOutcome::Refused => report.problem(
            Level::Error,
            "client",
            format!("the token endpoint refused the client ({})", tried.said),
            fix.unwrap_or(
                "check client_id; a client registered as confidential needs client_secret (PORTCULLIS_CLIENT_SECRET)",
            ),
        ),
        ProbeOutcome::Inconclusive => report.problem(
            Level::Warn,
            "client",
            format!(
                "a bogus code was refused with {}; the credentials could not be told right or wrong",
                tried.said
            ),
            "sign in once to see; if it fails, check client_id and the credentials",
        ),
    }
}
