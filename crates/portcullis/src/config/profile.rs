//! `provider.profile = "fapi2"`: the client side of the FAPI 2.0 Security Profile as
//! one switch (docs/fapi.md). The configuration must not contradict it — a confidential
//! client authenticating with `private_key_jwt` (`aud` = the issuer), pushed
//! authorization requests, DPoP-bound tokens, ID tokens signed with PS256, ES256 or
//! EdDSA only — and what it leaves unset is set so. What the provider's metadata must
//! offer is checked at every load (`provider::fapi2`).

use super::provider::{AssertionAudience, AuthMethodSetting, ParSetting, ProviderSettings};
use crate::jose::Algorithm;

/// The ID-token algorithms FAPI 2.0 allows (Security Profile §5.4).
pub const FAPI2_ALGORITHMS: [Algorithm; 3] = [Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA];

/// Whether `url` names this machine (plain http is allowed there, for development).
pub(super) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// `provider.profile`: unset or `fapi2`.
pub(super) fn is_fapi2(value: Option<&str>, errors: &mut Vec<String>) -> bool {
    match value.map(str::trim) {
        None | Some("") => false,
        Some("fapi2") => true,
        Some(other) => {
            errors.push(format!(
                "`provider.profile`: `{other}` is not a profile (the one there is: `fapi2`)"
            ));
            false
        }
    }
}

/// Which of the settings the profile governs were written (not left to defaults).
pub(super) struct Written {
    pub method: bool,
    pub dpop: bool,
    pub algorithms: bool,
    pub client_secret: bool,
}

/// Sets what the profile requires and reports every setting that contradicts it.
pub(super) fn require_fapi2(
    settings: &mut ProviderSettings,
    written: Written,
    errors: &mut Vec<String>,
) {
    let mut contradicts = |what: &str| {
        errors.push(format!("`provider.profile = \"fapi2\"`: {what}"));
    };
    match settings.token_endpoint_auth_method {
        AuthMethodSetting::PrivateKeyJwt => {}
        AuthMethodSetting::Auto if !written.method => {
            settings.token_endpoint_auth_method = AuthMethodSetting::PrivateKeyJwt;
        }
        _ => contradicts("`provider.token_endpoint_auth_method` must be `private_key_jwt`"),
    }
    if settings.client_key.is_none() && settings.client_key_file.is_none() {
        contradicts(
            "needs `provider.client_key_file` (PORTCULLIS_PROVIDER_CLIENT_KEY_FILE) for private_key_jwt; `portcullis keys client-new` makes one",
        );
    }
    if written.client_secret {
        contradicts("`client_secret` is not used by a private_key_jwt client: remove it");
    }
    if settings.client_assertion_aud != AssertionAudience::Issuer {
        contradicts("`provider.client_assertion_aud` must be `issuer`");
    }
    match settings.par {
        ParSetting::Never => contradicts("`provider.par` cannot be `never`"),
        _ => settings.par = ParSetting::Always,
    }
    if written.dpop && !settings.dpop {
        contradicts("`provider.dpop` cannot be `off`");
    }
    settings.dpop = true;
    match &settings.allowed_algorithms {
        Some(list) if !written.algorithms || list.iter().all(|a| FAPI2_ALGORITHMS.contains(a)) => {}
        Some(_) => {
            contradicts("`provider.allowed_algorithms` may hold PS256, ES256 and EdDSA only")
        }
        None => settings.allowed_algorithms = Some(FAPI2_ALGORITHMS.to_vec()),
    }
}
