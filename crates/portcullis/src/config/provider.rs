//! Who the identity provider is and who the gateway is to it: `issuer`, `client_id`,
//! `client_secret`, `scopes` (top level) and the `[provider]` section (extra authorize
//! parameters, accepted ID-token algorithms, whether email addresses count as verified).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

/// Provider-specific knobs.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    pub extra_authorize_params: BTreeMap<String, String>,
    /// `None`: the provider's advertised asymmetric algorithms.
    pub allowed_algorithms: Option<Vec<crate::jose::Algorithm>>,
    /// Treat an email address without `email_verified` as verified (providers that
    /// release verified addresses only and do not say so, such as Entra ID).
    pub assume_email_verified: bool,
    /// Audiences an ID token may name besides the client id (OIDC Core §3.1.3.7 step
    /// 3: "additional audiences trusted by the client"); then `azp` must be the client
    /// id. Empty: none (J07).
    pub trusted_audiences: Vec<String>,
    /// How the client authenticates at the provider's token, refresh and revocation
    /// endpoints (`provider.token_endpoint_auth_method`).
    pub token_endpoint_auth_method: AuthMethodSetting,
    /// `provider.client_key_file` (with `client_cert_file`), read and checked: the key
    /// that signs `private_key_jwt` assertions.
    pub client_key: Option<Arc<crate::jose::client_key::ClientKey>>,
    /// `provider.client_key_file` as written (for `doctor` and reload reports).
    pub client_key_file: Option<std::path::PathBuf>,
    /// `provider.client_assertion_aud`.
    pub client_assertion_aud: AssertionAudience,
    /// `provider.client_assertion_typ`: `None`, or `client-authentication+jwt`.
    pub client_assertion_typ: Option<String>,
    /// `provider.par`: whether the authorization request is pushed (RFC 9126).
    pub par: ParSetting,
    /// `provider.dpop = "on"`: tokens are bound to the gateway's DPoP key (RFC 9449).
    pub dpop: bool,
    /// `provider.profile = "fapi2"`: the FAPI 2.0 Security Profile, required whole
    /// (`config::profile`).
    pub fapi2: bool,
}

/// `provider.par`: push the authorization request to the provider first (RFC 9126),
/// so that only `client_id` and `request_uri` pass through the browser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ParSetting {
    /// When the provider's metadata requires it
    /// (`require_pushed_authorization_requests`).
    #[default]
    Auto,
    /// Always; a provider without a PAR endpoint cannot sign anyone in.
    Always,
    /// Never (a provider that requires PAR refuses the sign-in).
    Never,
}

/// `provider.client_assertion_aud`: what a client assertion names as its audience.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AssertionAudience {
    /// The issuer identifier, as a string (rfc7523bis).
    #[default]
    Issuer,
    /// The token endpoint's URL (Entra ID, Okta).
    TokenEndpoint,
}

/// `provider.token_endpoint_auth_method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMethodSetting {
    /// Decided from the secret and the provider's metadata (a probe when it lists both
    /// `client_secret_basic` and `client_secret_post`).
    #[default]
    Auto,
    ClientSecretBasic,
    ClientSecretPost,
    /// A signed client assertion (`provider.client_key_file`).
    PrivateKeyJwt,
    /// A public client: PKCE only.
    None,
}

impl AuthMethodSetting {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "auto" => Self::Auto,
            "client_secret_basic" => Self::ClientSecretBasic,
            "client_secret_post" => Self::ClientSecretPost,
            "private_key_jwt" => Self::PrivateKeyJwt,
            "none" => Self::None,
            _ => return None,
        })
    }
}

/// A client secret: never printed.
#[derive(Clone)]
pub struct ClientSecret(pub Zeroizing<String>);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// `issuer` (required): `https`, or `http` on loopback only; no query or fragment.
pub(super) fn issuer(value: Option<String>, errors: &mut Vec<String>) -> String {
    let issuer = required(value, "issuer", "PORTCULLIS_ISSUER", errors);
    if !issuer.is_empty() {
        match Url::parse(&issuer) {
            Ok(u) if u.scheme() == "https" || is_loopback_http(&u) => {
                if u.query().is_some() || u.fragment().is_some() {
                    errors.push("`issuer` must not have a query or fragment".into());
                }
            }
            Ok(_) => errors.push(
                "`issuer` must be an https URL (http is allowed only for loopback development providers)".into(),
            ),
            Err(_) => errors.push(format!("`issuer`: `{issuer}` is not a URL")),
        }
    }
    issuer
}

fn is_loopback_http(u: &Url) -> bool {
    u.scheme() == "http"
        && match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        }
}

/// `client_id` (required).
pub(super) fn client_id(value: Option<String>, errors: &mut Vec<String>) -> String {
    required(value, "client_id", "PORTCULLIS_CLIENT_ID", errors)
}

/// `client_secret`: unset or empty means a public client.
pub(super) fn client_secret(value: Option<String>) -> Option<ClientSecret> {
    value
        .filter(|s| !s.is_empty())
        .map(|s| ClientSecret(Zeroizing::new(s)))
}

/// `scopes`: space-separated, sent exactly as written; must include `openid` (OpenID
/// Connect Core 1.0 §3.1.2.1). `None` when not set: the provider decides
/// (`provider::default_scopes`).
pub(super) fn scopes(value: Option<String>, errors: &mut Vec<String>) -> Option<Vec<String>> {
    let scopes: Vec<String> = value?.split_whitespace().map(str::to_owned).collect();
    if !scopes.iter().any(|s| s == "openid") {
        errors.push("`scopes` must include `openid`".into());
    }
    Some(scopes)
}

/// A required text setting, trimmed; empty (with an error) when missing or blank.
fn required(value: Option<String>, name: &str, env: &str, errors: &mut Vec<String>) -> String {
    match value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
        Some(v) => v,
        None => {
            errors.push(format!("`{name}` is required (or set {env})"));
            String::new()
        }
    }
}

/// The `[provider]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    extra_authorize_params: Option<BTreeMap<String, String>>,
    allowed_algorithms: Option<Vec<String>>,
    assume_email_verified: Option<bool>,
    trusted_audiences: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    client_key_file: Option<String>,
    client_cert_file: Option<String>,
    client_assertion_aud: Option<String>,
    client_assertion_typ: Option<String>,
    par: Option<String>,
    dpop: Option<String>,
    profile: Option<String>,
}

/// Authorize parameters the gateway sets itself; configuration may not replace them.
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "request",
    "request_uri",
    "dpop_jkt",
];

impl RawProvider {
    /// HMAC algorithms (`HS*`) are accepted only with a client secret, which keys them.
    pub(super) fn validate(
        self,
        has_client_secret: bool,
        errors: &mut Vec<String>,
    ) -> ProviderSettings {
        let extra_authorize_params = self.extra_authorize_params.unwrap_or_default();
        for key in extra_authorize_params.keys() {
            if RESERVED_AUTHORIZE_PARAMS.contains(&key.as_str()) {
                errors.push(format!(
                    "`provider.extra_authorize_params`: `{key}` is set by the gateway itself and cannot be overridden"
                ));
            }
        }
        let written = super::profile::Written {
            method: self.token_endpoint_auth_method.is_some(),
            dpop: self.dpop.is_some(),
            algorithms: self.allowed_algorithms.is_some(),
            client_secret: has_client_secret,
        };
        let allowed_algorithms = self.allowed_algorithms;
        if let Some(algs) = &allowed_algorithms {
            check_algorithms(algs, has_client_secret, errors);
        }
        let trusted_audiences = trusted_audiences(self.trusted_audiences, errors);
        let ClientAuthParts {
            token_endpoint_auth_method,
            client_key,
            client_key_file,
            client_assertion_aud,
            client_assertion_typ,
        } = client_auth(
            RawClientAuth {
                method: self.token_endpoint_auth_method,
                key_file: self.client_key_file,
                cert_file: self.client_cert_file,
                aud: self.client_assertion_aud,
                typ: self.client_assertion_typ,
            },
            has_client_secret,
            errors,
        );
        let par = par_setting(self.par.as_deref(), errors);
        let dpop = dpop_setting(self.dpop.as_deref(), errors);
        let fapi2 = super::profile::is_fapi2(self.profile.as_deref(), errors);
        let mut settings = ProviderSettings {
            extra_authorize_params,
            allowed_algorithms: allowed_algorithms.map(|list| {
                list.iter()
                    .filter_map(|a| crate::jose::Algorithm::parse(a))
                    .collect()
            }),
            assume_email_verified: self.assume_email_verified.unwrap_or(false),
            trusted_audiences,
            token_endpoint_auth_method,
            client_key,
            client_key_file,
            client_assertion_aud,
            client_assertion_typ,
            par,
            dpop,
            fapi2,
        };
        if fapi2 {
            super::profile::require_fapi2(&mut settings, written, errors);
        }
        settings
    }
}

/// `provider.dpop`: `off` (the default) or `on`.
fn dpop_setting(value: Option<&str>, errors: &mut Vec<String>) -> bool {
    match value.map(str::trim) {
        None | Some("off") => false,
        Some("on") => true,
        Some(other) => {
            errors.push(format!("`provider.dpop`: `{other}` is neither off nor on"));
            false
        }
    }
}

/// `provider.allowed_algorithms`: supported JWS names, never `none`; HMAC only with a
/// client secret (it keys them).
fn check_algorithms(algs: &[String], has_client_secret: bool, errors: &mut Vec<String>) {
    if algs.is_empty() {
        errors.push("`provider.allowed_algorithms` must not be empty".into());
    }
    for a in algs {
        if crate::jose::Algorithm::parse(a).is_none() {
            errors.push(format!(
                "`provider.allowed_algorithms`: `{a}` is not a supported JWS algorithm (`none` never is)"
            ));
        } else if a.starts_with("HS") && !has_client_secret {
            errors.push(format!(
                "`provider.allowed_algorithms`: `{a}` needs `client_secret` (HMAC ID tokens are keyed by it)"
            ));
        }
    }
}

/// `provider.trusted_audiences`: non-empty strings without control characters.
fn trusted_audiences(raw: Option<Vec<String>>, errors: &mut Vec<String>) -> Vec<String> {
    let audiences: Vec<String> = raw
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.trim().to_owned())
        .collect();
    if audiences
        .iter()
        .any(|a| a.is_empty() || a.chars().any(char::is_control))
    {
        errors.push("`provider.trusted_audiences` must hold non-empty strings".into());
    }
    audiences
}

/// `provider.par`: `auto` (the default), `always` or `never`.
fn par_setting(value: Option<&str>, errors: &mut Vec<String>) -> ParSetting {
    match value.map(str::trim) {
        None | Some("auto") => ParSetting::Auto,
        Some("always") => ParSetting::Always,
        Some("never") => ParSetting::Never,
        Some(other) => {
            errors.push(format!(
                "`provider.par`: `{other}` is none of auto, always, never"
            ));
            ParSetting::Auto
        }
    }
}

/// The client-authentication keys as written.
struct RawClientAuth {
    method: Option<String>,
    key_file: Option<String>,
    cert_file: Option<String>,
    aud: Option<String>,
    typ: Option<String>,
}

/// The client-authentication settings, read and checked together (they depend on each
/// other and on whether there is a secret).
struct ClientAuthParts {
    token_endpoint_auth_method: AuthMethodSetting,
    client_key: Option<Arc<crate::jose::client_key::ClientKey>>,
    client_key_file: Option<std::path::PathBuf>,
    client_assertion_aud: AssertionAudience,
    client_assertion_typ: Option<String>,
}

fn client_auth(raw: RawClientAuth, has_secret: bool, errors: &mut Vec<String>) -> ClientAuthParts {
    let token_endpoint_auth_method = match raw.method.as_deref() {
        None => AuthMethodSetting::Auto,
        Some(value) => match AuthMethodSetting::parse(value.trim()) {
            Some(method) => method,
            None => {
                errors.push(format!(
                    "`provider.token_endpoint_auth_method`: `{value}` is none of auto, client_secret_basic, client_secret_post, private_key_jwt, none"
                ));
                AuthMethodSetting::Auto
            }
        },
    };
    match token_endpoint_auth_method {
        AuthMethodSetting::ClientSecretBasic | AuthMethodSetting::ClientSecretPost
            if !has_secret =>
        {
            errors.push(
                "`provider.token_endpoint_auth_method`: a client_secret method needs `client_secret` (PORTCULLIS_CLIENT_SECRET)".into(),
            );
        }
        AuthMethodSetting::None if has_secret => errors.push(
            "`provider.token_endpoint_auth_method = \"none\"` is a public client: leave `client_secret` unset".into(),
        ),
        _ => {}
    }
    let client_key_file = non_empty(raw.key_file).map(std::path::PathBuf::from);
    let client_cert_file = non_empty(raw.cert_file).map(std::path::PathBuf::from);
    let client_key = client_key_file
        .as_deref()
        .and_then(|key| read_client_key(key, client_cert_file.as_deref(), errors));
    if client_key_file.is_none() {
        if raw.aud.is_some() || raw.typ.is_some() {
            errors.push(
                "`provider.client_assertion_aud` and `client_assertion_typ` shape private_key_jwt assertions: they need `provider.client_key_file`".into(),
            );
        }
        if client_cert_file.is_some() {
            errors.push(
                "`provider.client_cert_file` needs `provider.client_key_file` (the certificate's private key)".into(),
            );
        }
        if token_endpoint_auth_method == AuthMethodSetting::PrivateKeyJwt {
            errors.push(
                "`provider.token_endpoint_auth_method = \"private_key_jwt\"` needs `provider.client_key_file` (PORTCULLIS_PROVIDER_CLIENT_KEY_FILE); `portcullis keys client-new` makes one".into(),
            );
        }
    } else if matches!(
        token_endpoint_auth_method,
        AuthMethodSetting::ClientSecretBasic
            | AuthMethodSetting::ClientSecretPost
            | AuthMethodSetting::None
    ) {
        errors.push(
            "`provider.client_key_file` is set but `provider.token_endpoint_auth_method` is not `private_key_jwt` or `auto`; remove one".into(),
        );
    }
    let client_assertion_aud = assertion_aud(raw.aud, errors);
    let client_assertion_typ = assertion_typ(raw.typ, errors);
    ClientAuthParts {
        token_endpoint_auth_method,
        client_key,
        client_key_file,
        client_assertion_aud,
        client_assertion_typ,
    }
}

/// `provider.client_assertion_aud`: `issuer` (the default) or `token_endpoint`.
fn assertion_aud(raw: Option<String>, errors: &mut Vec<String>) -> AssertionAudience {
    match non_empty(raw).as_deref() {
        None | Some("issuer") => AssertionAudience::Issuer,
        Some("token_endpoint") => AssertionAudience::TokenEndpoint,
        Some(other) => {
            errors.push(format!(
                "`provider.client_assertion_aud`: `{other}` is neither `issuer` nor `token_endpoint`"
            ));
            AssertionAudience::Issuer
        }
    }
}

/// `provider.client_assertion_typ`: unset, or the rfc7523bis `typ`.
fn assertion_typ(raw: Option<String>, errors: &mut Vec<String>) -> Option<String> {
    let typ = non_empty(raw);
    if let Some(typ) = &typ
        && typ != crate::jose::client_key::ASSERTION_TYP
    {
        errors.push(format!(
            "`provider.client_assertion_typ`: `{typ}` is not `{}` (leave it unset for no `typ`)",
            crate::jose::client_key::ASSERTION_TYP
        ));
    }
    typ
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Reads and checks `provider.client_key_file` (and `client_cert_file`).
fn read_client_key(
    key: &std::path::Path,
    cert: Option<&std::path::Path>,
    errors: &mut Vec<String>,
) -> Option<Arc<crate::jose::client_key::ClientKey>> {
    let key_pem = std::fs::read(key)
        .map_err(|e| {
            errors.push(format!(
                "`provider.client_key_file`: cannot read {}: {e}",
                key.display()
            ))
        })
        .ok()?;
    let cert_pem = match cert {
        Some(cert) => Some(
            std::fs::read(cert)
                .map_err(|e| {
                    errors.push(format!(
                        "`provider.client_cert_file`: cannot read {}: {e}",
                        cert.display()
                    ))
                })
                .ok()?,
        ),
        None => None,
    };
    crate::jose::client_key::ClientKey::from_pem(&key_pem, cert_pem.as_deref())
        .map(Arc::new)
        .map_err(|e| {
            let (name, file) = match e {
                crate::jose::client_key::ClientKeyError::NotACertificate
                | crate::jose::client_key::ClientKeyError::CertificateMismatch => {
                    ("client_cert_file", cert.unwrap_or(key))
                }
                _ => ("client_key_file", key),
            };
            errors.push(format!("`provider.{name}` {}: {e}", file.display()));
        })
        .ok()
}

#[cfg(test)]
mod tests;
