//! OpenID Connect Discovery 1.0: the provider's metadata, fetched from
//! `{issuer}/.well-known/openid-configuration`. The `issuer` it names must equal the
//! configured issuer exactly (§4.3; docs/security.md L10), trailing slash included.

use serde::Deserialize;
use url::Url;

use super::ProviderError;
use super::http::ProviderHttp;

/// Cap on the discovery document (R03).
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// The metadata fields Portcullis uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// RFC 7662 (RFC 8414 §2).
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// RFC 8414 §2 / OIDC Discovery: how clients may authenticate (absent: basic).
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// The algorithms client assertions may be signed with.
    #[serde(default)]
    pub token_endpoint_auth_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(default)]
    pub revocation_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    /// RFC 9207 §3: the provider puts `iss` in every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// RFC 9126 §5.
    #[serde(default)]
    pub pushed_authorization_request_endpoint: Option<String>,
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    /// RFC 9449 §5.1: the algorithms DPoP proofs may use (absent: no DPoP).
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
}

/// `{issuer}/.well-known/openid-configuration`.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The metadata at `url` (or the issuer's well-known document), whose `issuer` must
/// equal `issuer` exactly (for a multi-tenant provider, the template itself).
pub async fn discover(
    http: &ProviderHttp,
    issuer: &str,
    url: Option<&str>,
) -> Result<Metadata, ProviderError> {
    let answer = http
        .get(
            "discovery",
            &url.map_or_else(|| discovery_url(issuer), str::to_owned),
            None,
            MAX_METADATA_BYTES,
        )
        .await?;
    if !answer.status.is_success() {
        return Err(ProviderError::BadResponse(format!(
            "discovery answered HTTP {}",
            answer.status.as_u16()
        )));
    }
    let metadata: Metadata = serde_json::from_slice(&answer.body)
        .map_err(|e| ProviderError::BadResponse(format!("discovery document: {e}")))?;
    check_metadata(&metadata, issuer)?;
    Ok(metadata)
}

/// The checks a discovery document must pass before any login uses it.
pub fn check_metadata(m: &Metadata, issuer: &str) -> Result<(), ProviderError> {
    // OIDC Discovery §4.3: exact match, no normalisation.
    if m.issuer != issuer {
        return Err(ProviderError::IssuerMismatch {
            expected: issuer.to_owned(),
            found: truncate(&m.issuer, 200),
        });
    }
    let issuer_is_https = issuer.starts_with("https://");
    for (name, value) in [
        ("authorization_endpoint", Some(&m.authorization_endpoint)),
        ("token_endpoint", Some(&m.token_endpoint)),
        ("jwks_uri", Some(&m.jwks_uri)),
        ("userinfo_endpoint", m.userinfo_endpoint.as_ref()),
        ("end_session_endpoint", m.end_session_endpoint.as_ref()),
        ("revocation_endpoint", m.revocation_endpoint.as_ref()),
        ("introspection_endpoint", m.introspection_endpoint.as_ref()),
        (
            "pushed_authorization_request_endpoint",
            m.pushed_authorization_request_endpoint.as_ref(),
        ),
    ] {
        let Some(value) = value else { continue };
        let ok = Url::parse(value)
            .is_ok_and(|u| u.scheme() == "https" || (!issuer_is_https && u.scheme() == "http"));
        if !ok {
            return Err(ProviderError::BadResponse(format!(
                "discovery `{name}` is not an {} URL",
                if issuer_is_https { "https" } else { "http(s)" }
            )));
        }
    }
    // RFC 7636: without S256 the provider would ignore our challenge.
    if let Some(methods) = &m.code_challenge_methods_supported
        && !methods.iter().any(|x| x == "S256")
    {
        return Err(ProviderError::BadResponse(
            "the provider does not support PKCE S256 (code_challenge_methods_supported)".into(),
        ));
    }
    Ok(())
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().count() > max {
        format!("{clean}…")
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(issuer: &str) -> Metadata {
        serde_json::from_value(serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": "https://id.example.com/authorize",
            "token_endpoint": "https://id.example.com/token",
            "jwks_uri": "https://id.example.com/jwks",
            "code_challenge_methods_supported": ["S256"],
        }))
        .unwrap()
    }

    #[test]
    fn l10_issuer_must_match_exactly() {
        assert!(
            check_metadata(
                &metadata("https://id.example.com"),
                "https://id.example.com"
            )
            .is_ok()
        );
        for other in [
            "https://id.example.com/",
            "https://ID.example.com",
            "https://evil.example.com",
        ] {
            assert!(matches!(
                check_metadata(&metadata(other), "https://id.example.com"),
                Err(ProviderError::IssuerMismatch { .. })
            ));
        }
    }

    #[test]
    fn https_issuer_needs_https_endpoints() {
        let mut m = metadata("https://id.example.com");
        m.token_endpoint = "http://id.example.com/token".into();
        assert!(check_metadata(&m, "https://id.example.com").is_err());
    }

    #[test]
    fn providers_without_s256_are_refused() {
        let mut m = metadata("https://id.example.com");
        m.code_challenge_methods_supported = Some(vec!["plain".into()]);
        assert!(check_metadata(&m, "https://id.example.com").is_err());
    }
}
