//! The UserInfo endpoint (OIDC Core §5.3). Its `sub` must equal the ID token's
//! (§5.3.2; docs/security.md J10), else the answer belongs to someone else.

use serde_json::{Map, Value};

use super::ProviderError;
use super::dpop::{self, Dpop};
use super::http::{Answer, ProviderHttp, TokenAuth};

/// Cap on a UserInfo response (R03).
pub const MAX_USERINFO_BYTES: usize = 64 * 1024;

/// Fetches the user's claims with the access token and checks `sub`. A DPoP-bound
/// token (`dpop` given) goes with the `DPoP` scheme and a proof, never as `Bearer`
/// (RFC 9449 §7.1), with one retry when UserInfo asks for a nonce (§9).
pub async fn fetch_userinfo(
    http: &ProviderHttp,
    endpoint: &str,
    access_token: &str,
    expected_sub: &str,
    dpop: Option<Dpop<'_>>,
) -> Result<Map<String, Value>, ProviderError> {
    let answer = get_with_token(http, endpoint, access_token, dpop).await?;
    if answer.status.is_server_error() {
        return Err(ProviderError::ServerError(answer.status.as_u16()));
    }
    if !answer.status.is_success() {
        return Err(ProviderError::BadResponse(format!(
            "userinfo answered HTTP {}",
            answer.status.as_u16()
        )));
    }
    if answer.content_type.starts_with("application/jwt") {
        return Err(ProviderError::BadResponse(
            "signed userinfo responses are not supported; configure the provider to answer JSON"
                .into(),
        ));
    }
    let claims = answer.json_object("userinfo")?;
    match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if sub == expected_sub => Ok(claims),
        _ => Err(ProviderError::UserinfoSubjectMismatch),
    }
}

/// GET with the access token as its binding asks, within one call's deadline (R04).
async fn get_with_token(
    http: &ProviderHttp,
    endpoint: &str,
    access_token: &str,
    dpop: Option<Dpop<'_>>,
) -> Result<Answer, ProviderError> {
    let send = || async move {
        let proof = dpop
            .map(|d| d.proof("GET", endpoint, Some(access_token)))
            .transpose()?;
        let token = TokenAuth {
            token: access_token,
            proof: proof.as_deref(),
        };
        http.get("userinfo", endpoint, Some(token), MAX_USERINFO_BYTES)
            .await
    };
    dpop::with_nonce_retry(
        http.total_timeout(),
        endpoint,
        dpop,
        dpop::resource_asks_for_nonce,
        send,
    )
    .await
}
