//! The UserInfo endpoint (OIDC Core §5.3). Its `sub` must equal the ID token's
//! (§5.3.2; docs/security.md J10), else the answer belongs to someone else.

use serde_json::{Map, Value};

use super::ProviderError;
use super::http::ProviderHttp;

/// Cap on a UserInfo response (R03).
pub const MAX_USERINFO_BYTES: usize = 64 * 1024;

/// Fetches the user's claims with the access token and checks `sub`.
pub async fn fetch_userinfo(
    http: &ProviderHttp,
    endpoint: &str,
    access_token: &str,
    expected_sub: &str,
) -> Result<Map<String, Value>, ProviderError> {
    let answer = http
        .get("userinfo", endpoint, Some(access_token), MAX_USERINFO_BYTES)
        .await?;
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
