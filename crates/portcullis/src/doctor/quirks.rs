//! What doctor knows of particular providers, recognised by their issuer's host.

use super::{Level, Report};
use crate::config::Config;
use crate::provider::discovery::Metadata;

/// Whether `issuer`'s host is `host` or under it.
pub(super) fn is_host(issuer: &str, host: &str) -> bool {
    url::Url::parse(issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .is_some_and(|h| h == host || h.ends_with(&format!(".{host}")))
}

/// Known providers, recognised by issuer, and the setting each needs.
pub(super) fn quirks(
    config: &Config,
    entry: &crate::config::ProviderConfig,
    metadata: &Metadata,
    report: &mut Report,
) {
    let issuer = entry.issuer.as_str();
    let extra = &entry.settings.extra_authorize_params;
    let logout = &config.logout;
    let email_rules =
        !config.access.allowed_emails.is_empty() || !config.access.allowed_email_domains.is_empty();
    if is_host(issuer, "accounts.google.com") {
        google(extra, report);
    }
    if is_host(issuer, "login.microsoftonline.com") {
        entra_id(entry, email_rules, report);
    }
    if is_host(issuer, "auth0.com") {
        auth0(extra, metadata, report);
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
        zitadel(entry, report);
    }
}

fn google(extra: &std::collections::BTreeMap<String, String>, report: &mut Report) {
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

fn entra_id(entry: &crate::config::ProviderConfig, email_rules: bool, report: &mut Report) {
    let issuer = entry.issuer.as_str();
    if !issuer.trim_end_matches('/').ends_with("/v2.0") {
        report.problem(
            Level::Warn,
            "quirk",
            "Entra ID: this is the v1 issuer",
            "use https://login.microsoftonline.com/{tenant-id}/v2.0",
        );
    }
    if entry.settings.assume_email_verified {
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

fn auth0(
    extra: &std::collections::BTreeMap<String, String>,
    metadata: &Metadata,
    report: &mut Report,
) {
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

fn zitadel(entry: &crate::config::ProviderConfig, report: &mut Report) {
    if entry.settings.trusted_audiences.is_empty() {
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
