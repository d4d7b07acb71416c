//! The token endpoint (RFC 6749 §4.1.3, §6) and revocation (RFC 7009), the client
//! authenticated as `client_auth` decided (basic, post, or a public client's
//! `client_id` with PKCE). With DPoP every token request carries a fresh proof, and
//! the tokens must come back bound (`token_type` `DPoP`).

use serde_json::Value;
use zeroize::Zeroizing;

use super::ProviderError;
use super::dpop::{self, Dpop};
use super::http::{Answer, ProviderHttp};

/// Cap on a token response (R03).
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The parts of a token response we keep. Secrets are zeroized on drop.
pub struct TokenResponse {
    pub access_token: Zeroizing<String>,
    pub refresh_token: Option<Zeroizing<String>>,
    pub id_token: Option<Zeroizing<String>>,
    pub expires_in: Option<i64>,
    /// Keycloak and others say how long the refresh token lives.
    pub refresh_expires_in: Option<i64>,
    /// `token_type` `DPoP`: the access token is bound to the gateway's DPoP key.
    pub dpop_bound: bool,
    /// `scope`: what was granted, when the provider says (RFC 6749 §5.1: absent means
    /// what was asked for). Scope names only: printable, at most 2 KiB.
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("id_token", &self.id_token.is_some())
            .field("expires_in", &self.expires_in)
            .field("dpop_bound", &self.dpop_bound)
            .finish_non_exhaustive()
    }
}

pub use super::client_auth::ClientAuth;

/// A number, or a string holding one (some providers send `"3600"`).
fn seconds(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|n| *n >= 0)
}

fn secret_field(map: &serde_json::Map<String, Value>, name: &str) -> Option<Zeroizing<String>> {
    map.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|s| Zeroizing::new(s.to_owned()))
}

/// Posts a grant — again, with a fresh proof and fresh credentials, when the server
/// asks for a DPoP nonce (at most [`dpop::NONCE_RETRIES`] times), all within one
/// call's deadline (R04).
async fn post_grant(
    http: &ProviderHttp,
    endpoint: &str,
    auth: ClientAuth<'_>,
    grant: &[(&str, &str)],
    dpop: Option<Dpop<'_>>,
) -> Result<Answer, ProviderError> {
    dpop::with_nonce_retry(
        http.total_timeout(),
        endpoint,
        dpop,
        dpop::server_asks_for_nonce,
        || post_grant_once(http, endpoint, auth, grant, dpop),
    )
    .await
}

async fn post_grant_once(
    http: &ProviderHttp,
    endpoint: &str,
    auth: ClientAuth<'_>,
    grant: &[(&str, &str)],
    dpop: Option<Dpop<'_>>,
) -> Result<Answer, ProviderError> {
    let credentials = auth.credentials()?;
    let mut form = grant.to_vec();
    let basic = credentials.apply(&mut form);
    let proof = dpop.map(|d| d.proof("POST", endpoint, None)).transpose()?;
    http.post_form(
        "token",
        endpoint,
        &form,
        basic,
        proof.as_deref(),
        MAX_TOKEN_RESPONSE_BYTES,
    )
    .await
}

/// Posts a grant and parses the answer (RFC 6749 §5.1 / §5.2).
async fn token_request(
    http: &ProviderHttp,
    endpoint: &str,
    auth: ClientAuth<'_>,
    form: Vec<(&str, &str)>,
    dpop: Option<Dpop<'_>>,
) -> Result<TokenResponse, ProviderError> {
    let answer = post_grant(http, endpoint, auth, &form, dpop).await?;
    // 5xx, 408 and 429 say the provider is down or busy, whatever the body says.
    if answer.status.is_server_error() || matches!(answer.status.as_u16(), 408 | 429) {
        return Err(ProviderError::ServerError(answer.status.as_u16()));
    }
    let map = answer.json_object("token response")?;
    if !answer.status.is_success() {
        let error = map
            .get("error")
            .and_then(Value::as_str)
            .map(|e| super::discovery::truncate(e, 64))
            .unwrap_or_else(|| format!("http_{}", answer.status.as_u16()));
        return Err(ProviderError::TokenRejected(error));
    }
    // RFC 9449 §5: a token asked for with a proof is bound (`DPoP`); a provider that
    // answers `Bearer` ignored the proof, and its token would work for anyone.
    let token_type = map.get("token_type").and_then(Value::as_str).unwrap_or("");
    let expected = if dpop.is_some() { "DPoP" } else { "Bearer" };
    if !token_type.eq_ignore_ascii_case(expected) {
        return Err(ProviderError::BadResponse(if dpop.is_some() {
            format!(
                "token_type is `{}`, not DPoP: the provider did not bind the token (provider.dpop = on needs a provider with DPoP)",
                super::discovery::truncate(token_type, 32)
            )
        } else {
            "token_type is not Bearer".to_owned()
        }));
    }
    let access_token = secret_field(&map, "access_token")
        .ok_or_else(|| ProviderError::BadResponse("token response has no access_token".into()))?;
    Ok(TokenResponse {
        access_token,
        refresh_token: secret_field(&map, "refresh_token"),
        id_token: secret_field(&map, "id_token"),
        expires_in: seconds(map.get("expires_in")),
        scope: map
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| s.len() <= 2048 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')),
        refresh_expires_in: seconds(map.get("refresh_expires_in")).filter(|n| *n > 0),
        dpop_bound: dpop.is_some(),
    })
}

/// Redeems an authorization code with its PKCE verifier (RFC 7636 §4.5).
pub async fn exchange_code(
    http: &ProviderHttp,
    endpoint: &str,
    auth: ClientAuth<'_>,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
    dpop: Option<Dpop<'_>>,
) -> Result<TokenResponse, ProviderError> {
    let form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
        ("redirect_uri", redirect_uri),
    ];
    token_request(http, endpoint, auth, form, dpop).await
}

/// Uses a refresh token (RFC 6749 §6).
pub async fn refresh(
    http: &ProviderHttp,
    endpoint: &str,
    auth: ClientAuth<'_>,
    refresh_token: &str,
    dpop: Option<Dpop<'_>>,
) -> Result<TokenResponse, ProviderError> {
    let form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    token_request(http, endpoint, auth, form, dpop).await
}

/// An authenticated form post naming one token (RFC 7009 §2.1, RFC 7662 §2.1).
async fn about_token(
    http: &ProviderHttp,
    what: &'static str,
    endpoint: &str,
    auth: ClientAuth<'_>,
    token: &str,
    hint: &str,
) -> Result<super::http::Answer, ProviderError> {
    let mut form = vec![("token", token), ("token_type_hint", hint)];
    let credentials = auth.credentials()?;
    let basic = credentials.apply(&mut form);
    http.post_form(what, endpoint, &form, basic, None, MAX_TOKEN_RESPONSE_BYTES)
        .await
}

/// Revokes a token (RFC 7009 §2.1). The provider answers 200 even for unknown tokens.
pub async fn revoke(
    http: &ProviderHttp,
    endpoint: &str,
    auth: ClientAuth<'_>,
    token: &str,
    hint: &str,
) -> Result<(), ProviderError> {
    let answer = about_token(http, "revocation", endpoint, auth, token, hint).await?;
    if answer.status.is_success() {
        Ok(())
    } else if answer.status.is_server_error() {
        Err(ProviderError::ServerError(answer.status.as_u16()))
    } else {
        Err(ProviderError::TokenRejected(format!(
            "revocation_http_{}",
            answer.status.as_u16()
        )))
    }
}

/// Asks the introspection endpoint about a token (RFC 7662 §2.1) and returns its JSON
/// answer; anything but a 200 with a JSON object is the server's failure, never an
/// answer about the token.
pub async fn introspect(
    http: &ProviderHttp,
    endpoint: &str,
    auth: ClientAuth<'_>,
    token: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
    let answer = about_token(http, "introspection", endpoint, auth, token, "access_token").await?;
    if answer.status.is_server_error() {
        return Err(ProviderError::ServerError(answer.status.as_u16()));
    }
    if !answer.status.is_success() {
        return Err(ProviderError::BadResponse(format!(
            "the introspection endpoint answered {}",
            answer.status.as_u16()
        )));
    }
    serde_json::from_slice(&answer.body).map_err(|_| {
        ProviderError::BadResponse("the introspection answer is not a JSON object".into())
    })
}
