//! The authorization request (RFC 6749 §4.1.1, OIDC Core §3.1.2.1) with PKCE S256
//! (RFC 7636 §4), and the RFC 9207 check of `iss` on the response.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use url::Url;
use zeroize::Zeroizing;

use super::ProviderError;
use super::discovery::Metadata;
use crate::random;

/// A PKCE pair. The verifier is 43 unreserved characters (256 bits, RFC 7636 §4.1);
/// the challenge is its S256 transform (§4.2).
pub struct Pkce {
    pub verifier: Zeroizing<String>,
    pub challenge: String,
}

impl Pkce {
    pub fn generate() -> Self {
        let verifier = Zeroizing::new(random::random_token());
        let challenge = s256(&verifier);
        Self {
            verifier,
            challenge,
        }
    }
}

/// `BASE64URL(SHA256(ASCII(verifier)))`.
pub fn s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// What goes into one authorization request.
pub struct AuthorizeRequest<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub state: &'a str,
    pub nonce: &'a str,
    pub code_challenge: &'a str,
    pub extra: &'a std::collections::BTreeMap<String, String>,
    /// The DPoP key's thumbprint, which binds the code to it (RFC 9449 §10).
    pub dpop_jkt: Option<&'a str>,
    /// The address the user typed into the chooser (OIDC Core §3.1.2.1 `login_hint`).
    pub login_hint: Option<&'a str>,
}

impl AuthorizeRequest<'_> {
    /// Every parameter of the request, in order: in the URL, or pushed (PAR).
    pub fn params(&self) -> Vec<(&str, String)> {
        let mut params = vec![
            ("response_type", "code".to_owned()),
            ("client_id", self.client_id.to_owned()),
            ("redirect_uri", self.redirect_uri.to_owned()),
            ("scope", self.scopes.join(" ")),
            ("state", self.state.to_owned()),
            ("nonce", self.nonce.to_owned()),
            ("code_challenge", self.code_challenge.to_owned()),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if let Some(jkt) = self.dpop_jkt {
            params.push(("dpop_jkt", jkt.to_owned()));
        }
        if let Some(hint) = self.login_hint
            && !self.extra.contains_key("login_hint")
        {
            params.push(("login_hint", hint.to_owned()));
        }
        params.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
        params
    }
}

/// Where the browser is sent, and for how long a pushed request stays usable.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub url: Url,
    /// With PAR: the `request_uri`'s `expires_in` (seconds).
    pub expires_in: Option<i64>,
}

fn authorization_endpoint(metadata: &Metadata) -> Result<Url, ProviderError> {
    Url::parse(&metadata.authorization_endpoint)
        .map_err(|_| ProviderError::BadResponse("authorization_endpoint is not a URL".into()))
}

/// Builds the URL the browser is sent to, every parameter in its query.
pub fn authorize_url(
    metadata: &Metadata,
    req: &AuthorizeRequest<'_>,
) -> Result<Url, ProviderError> {
    let mut url = authorization_endpoint(metadata)?;
    url.query_pairs_mut().extend_pairs(req.params());
    Ok(url)
}

/// The URL of a pushed request (RFC 9126 §4): `client_id` and `request_uri` only.
pub fn pushed_url(
    metadata: &Metadata,
    client_id: &str,
    request_uri: &str,
) -> Result<Url, ProviderError> {
    let mut url = authorization_endpoint(metadata)?;
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("request_uri", request_uri);
    Ok(url)
}

/// RFC 9207 §2.4: `iss` must equal the issuer; when the provider advertises
/// `authorization_response_iss_parameter_supported`, it must be present (L06).
pub fn check_response_issuer(
    metadata: &Metadata,
    settings: &super::ProviderSettings,
    iss: Option<&str>,
) -> Result<(), ProviderError> {
    let issuer = settings.issuer.as_str();
    match iss {
        Some(found) if settings.accepts_issuer(found) => Ok(()),
        Some(found) => Err(ProviderError::IssuerMismatch {
            expected: issuer.to_owned(),
            found: super::discovery::truncate(found, 200),
        }),
        None if metadata.authorization_response_iss_parameter_supported => {
            Err(ProviderError::IssuerMismatch {
                expected: issuer.to_owned(),
                found: "(missing)".into(),
            })
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn l05_verifier_is_43_unreserved_chars() {
        let p = Pkce::generate();
        assert_eq!(p.verifier.len(), 43);
        assert!(
            p.verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        );
        assert_eq!(p.challenge, s256(&p.verifier));
    }
}
