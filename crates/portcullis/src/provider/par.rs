//! Pushed authorization requests (RFC 9126): the authorization request's parameters are
//! posted to the provider, authenticated like a token request, and the browser carries
//! only `client_id` and the `request_uri` the provider answers with. Nothing of the
//! request (scopes, PKCE challenge, state, nonce) can be read or changed on the way.

use serde_json::Value;

use super::ProviderError;
use super::client_auth::ClientAuth;
use super::http::ProviderHttp;

/// Cap on a PAR answer: a `request_uri` and its lifetime.
const MAX_PAR_RESPONSE_BYTES: usize = 16 * 1024;

/// The longest `request_uri` accepted (RFC 9126 gives no bound; it goes into a URL).
const MAX_REQUEST_URI: usize = 2048;

/// What the provider answered to a pushed request (RFC 9126 §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub request_uri: String,
    /// Seconds the `request_uri` stays usable.
    pub expires_in: i64,
}

/// Posts the authorization request's `params` to `endpoint`, with this client's
/// credentials (a fresh assertion for `private_key_jwt`).
pub async fn push(
    http: &ProviderHttp,
    endpoint: &str,
    auth: ClientAuth<'_>,
    params: &[(&str, &str)],
) -> Result<Pushed, ProviderError> {
    let credentials = auth.credentials()?;
    let mut form: Vec<(&str, &str)> = Vec::with_capacity(params.len() + 3);
    let basic = credentials.apply(&mut form);
    // The credentials may carry `client_id` already (post, private_key_jwt, none): a
    // parameter is never sent twice (RFC 6749 §3.2).
    for &(name, value) in params {
        if !form.iter().any(|(present, _)| *present == name) {
            form.push((name, value));
        }
    }
    let answer = http
        .post_form("par", endpoint, &form, basic, None, MAX_PAR_RESPONSE_BYTES)
        .await?;
    if answer.status.is_server_error() || matches!(answer.status.as_u16(), 408 | 429) {
        return Err(ProviderError::ServerError(answer.status.as_u16()));
    }
    if !answer.status.is_success() {
        let error = answer
            .json_object("PAR answer")
            .ok()
            .and_then(|map| map.get("error").and_then(Value::as_str).map(str::to_owned))
            .map(|e| super::discovery::truncate(&e, 64))
            .unwrap_or_else(|| format!("http_{}", answer.status.as_u16()));
        return Err(ProviderError::ParRefused(error));
    }
    read_answer(&answer.json_object("PAR answer")?)
}

/// RFC 9126 §2.2: `request_uri` (a string) and `expires_in` (a positive integer) are
/// both required.
fn read_answer(map: &serde_json::Map<String, Value>) -> Result<Pushed, ProviderError> {
    let request_uri = map
        .get("request_uri")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && u.len() <= MAX_REQUEST_URI && !u.chars().any(char::is_control))
        .ok_or_else(|| {
            ProviderError::BadResponse("the PAR answer has no usable request_uri".into())
        })?;
    let expires_in = map
        .get("expires_in")
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ProviderError::BadResponse("the PAR answer has no positive expires_in".into())
        })?;
    Ok(Pushed {
        request_uri: request_uri.to_owned(),
        expires_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> Result<Pushed, ProviderError> {
        read_answer(v.as_object().unwrap())
    }

    #[test]
    fn an_answer_needs_a_request_uri_and_a_positive_lifetime() {
        assert_eq!(
            read(json!({"request_uri": "urn:ietf:params:oauth:request_uri:abc", "expires_in": 60}))
                .unwrap(),
            Pushed {
                request_uri: "urn:ietf:params:oauth:request_uri:abc".into(),
                expires_in: 60
            }
        );
        for bad in [
            json!({"expires_in": 60}),
            json!({"request_uri": "", "expires_in": 60}),
            json!({"request_uri": 5, "expires_in": 60}),
            json!({"request_uri": "urn:x\r\nSet-Cookie: a=b", "expires_in": 60}),
            json!({"request_uri": "urn:x"}),
            json!({"request_uri": "urn:x", "expires_in": 0}),
            json!({"request_uri": "urn:x", "expires_in": "60"}),
        ] {
            assert!(
                matches!(read(bad.clone()), Err(ProviderError::BadResponse(_))),
                "{bad}"
            );
        }
    }
}
