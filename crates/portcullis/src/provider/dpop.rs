//! DPoP at the provider (RFC 9449): a proof with every token request (§5) and with
//! every call that carries a bound token (§7.1), each with the latest nonce that
//! server gave (§8 for the authorization server, §9 for a resource server such as
//! UserInfo). A server that asks for a nonce gets one retry with a fresh proof (and a
//! fresh client assertion); one that keeps asking is refused, never looped on.

use std::sync::Mutex;

use super::ProviderError;
use super::http::Answer;
use crate::clock::Clock as _;
use crate::jose::dpop::DpopKey;

/// Retries after a `use_dpop_nonce` answer (RFC 9449 §8.2: the client retries once
/// with the nonce it was given).
pub const NONCE_RETRIES: usize = 1;

/// Servers whose nonce is kept; beyond this the oldest is forgotten.
const MAX_SERVERS: usize = 16;

/// The latest `DPoP-Nonce` of each server: an endpoint's URL without its query (an
/// authorization server's nonce is not its UserInfo's, RFC 9449 §8, §9), or the
/// upstream's public origin.
#[derive(Debug, Default)]
pub struct Nonces(Mutex<Vec<(String, String)>>);

impl Nonces {
    /// The nonce last given by the server of `url`.
    pub fn get(&self, url: &str) -> Option<String> {
        let origin = server(url)?;
        let nonces = self.0.lock().unwrap_or_else(|p| p.into_inner());
        nonces
            .iter()
            .find(|(o, _)| *o == origin)
            .map(|(_, n)| n.clone())
    }

    /// Keeps the nonce an answer from `url` carried, if any.
    pub fn remember(&self, url: &str, answer: &Answer) {
        if let Some(nonce) = &answer.dpop_nonce {
            self.remember_value(url, nonce);
        }
    }

    /// Keeps `nonce` as the latest of the server of `url` (ignored unless it is a
    /// well-formed nonce).
    pub fn remember_value(&self, url: &str, nonce: &str) {
        let Some(origin) = server(url).filter(|_| super::http::is_nonce(nonce)) else {
            return;
        };
        let mut nonces = self.0.lock().unwrap_or_else(|p| p.into_inner());
        nonces.retain(|(o, _)| *o != origin);
        if nonces.len() >= MAX_SERVERS {
            nonces.remove(0);
        }
        nonces.push((origin, nonce.to_owned()));
    }
}

fn server(url: &str) -> Option<String> {
    let mut url = url::Url::parse(url).ok()?;
    url.set_query(None);
    url.set_fragment(None);
    Some(url.into())
}

/// The key and the nonces, for one call.
#[derive(Debug, Clone, Copy)]
pub struct Dpop<'a> {
    pub key: &'a DpopKey,
    pub nonces: &'a Nonces,
}

impl Dpop<'_> {
    /// A fresh proof for `htm` `url`, with that server's latest nonce and, for a call
    /// that carries a bound token, its hash (`ath`).
    pub fn proof(
        &self,
        htm: &str,
        url: &str,
        access_token: Option<&str>,
    ) -> Result<String, ProviderError> {
        let now = crate::clock::SystemClock.now();
        self.key
            .proof(htm, url, self.nonces.get(url).as_deref(), access_token, now)
            .map_err(|e| ProviderError::DpopProof(e.to_string()))
    }
}

/// Sends a request (`send` makes it anew each time: a fresh proof, fresh credentials)
/// and, with DPoP, keeps the nonce the answer carries and sends again when `asks` says
/// the server wants one — at most [`NONCE_RETRIES`] times, all within `deadline` (R04).
pub async fn with_nonce_retry<F, Fut>(
    deadline: std::time::Duration,
    url: &str,
    dpop: Option<Dpop<'_>>,
    asks: fn(&Answer) -> bool,
    mut send: F,
) -> Result<Answer, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, ProviderError>>,
{
    let attempts = async {
        let mut retries = 0;
        loop {
            let answer = send().await?;
            let Some(dpop) = dpop else {
                return Ok(answer);
            };
            dpop.nonces.remember(url, &answer);
            if retries == NONCE_RETRIES || !asks(&answer) {
                return Ok(answer);
            }
            retries += 1;
        }
    };
    tokio::time::timeout(deadline, attempts)
        .await
        .unwrap_or(Err(ProviderError::Timeout))
}

/// RFC 9449 §8: the authorization server wants a (new) nonce — `400` with the error
/// `use_dpop_nonce` and a `DPoP-Nonce` header.
pub fn server_asks_for_nonce(answer: &Answer) -> bool {
    answer.status.as_u16() == 400
        && answer.dpop_nonce.is_some()
        && answer
            .json_object("token response")
            .ok()
            .and_then(|m| m.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .is_some_and(|e| e == "use_dpop_nonce")
}

/// RFC 9449 §9: a resource server wants a (new) nonce — `401` with a `DPoP` challenge
/// naming `use_dpop_nonce` (among any others, in any order), and a `DPoP-Nonce` header.
pub fn resource_asks_for_nonce(answer: &Answer) -> bool {
    answer.status.as_u16() == 401
        && answer.dpop_nonce.is_some()
        && answer
            .www_authenticate
            .as_deref()
            .is_some_and(|challenges| {
                let has_dpop_scheme = challenges
                    .split([',', ' '])
                    .any(|word| word.eq_ignore_ascii_case("dpop"));
                has_dpop_scheme && challenges.contains("use_dpop_nonce")
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, nonce: Option<&str>, challenge: Option<&str>) -> Answer {
        Answer {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            content_type: "application/json".into(),
            body: body.as_bytes().to_vec(),
            date: None,
            age: None,
            dpop_nonce: nonce.map(str::to_owned),
            www_authenticate: challenge.map(str::to_owned),
        }
    }

    #[test]
    fn nonces_are_kept_per_server() {
        let nonces = Nonces::default();
        nonces.remember(
            "https://as.example/token",
            &answer(200, "{}", Some("n1"), None),
        );
        nonces.remember(
            "https://rs.example/me",
            &answer(200, "{}", Some("r1"), None),
        );
        assert_eq!(
            nonces.get("https://as.example/token?x").as_deref(),
            Some("n1")
        );
        assert_eq!(nonces.get("https://rs.example/me").as_deref(), Some("r1"));
        assert_eq!(
            nonces.get("https://as.example/userinfo"),
            None,
            "per endpoint"
        );
        nonces.remember(
            "https://as.example/token",
            &answer(200, "{}", Some("n2"), None),
        );
        assert_eq!(
            nonces.get("https://as.example/token").as_deref(),
            Some("n2")
        );
        assert_eq!(nonces.get("https://other.example/"), None);
        // An answer without a nonce leaves the last one.
        nonces.remember("https://as.example/token", &answer(200, "{}", None, None));
        assert_eq!(
            nonces.get("https://as.example/token").as_deref(),
            Some("n2")
        );
    }

    #[test]
    fn a_nonce_request_needs_its_error_and_its_header() {
        let asks = r#"{"error":"use_dpop_nonce"}"#;
        assert!(server_asks_for_nonce(&answer(400, asks, Some("n"), None)));
        assert!(!server_asks_for_nonce(&answer(400, asks, None, None)));
        assert!(!server_asks_for_nonce(&answer(
            400,
            r#"{"error":"invalid_grant"}"#,
            Some("n"),
            None
        )));
        let challenge = r#"DPoP error="use_dpop_nonce", algs="ES256""#;
        assert!(resource_asks_for_nonce(&answer(
            401,
            "",
            Some("n"),
            Some(challenge)
        )));
        assert!(!resource_asks_for_nonce(&answer(
            401,
            "",
            None,
            Some(challenge)
        )));
        assert!(!resource_asks_for_nonce(&answer(
            401,
            "",
            Some("n"),
            Some(r#"Bearer error="invalid_token""#)
        )));
        // The DPoP challenge after another, as two headers joined.
        assert!(resource_asks_for_nonce(&answer(
            401,
            "",
            Some("n"),
            Some(r#"Bearer realm="api", DPoP error="use_dpop_nonce""#)
        )));
    }
}
