//! How the client authenticates at the provider's token, refresh and revocation
//! endpoints: `client_secret_basic` (RFC 6749 §2.3.1: id and secret form-encoded, then
//! HTTP Basic), `client_secret_post` (the two in the form), `private_key_jwt` (a
//! fresh signed assertion per request, `client_key`), or none (a public client, PKCE
//! only). `provider.token_endpoint_auth_method = "auto"` decides:
//!
//! - a client key: `private_key_jwt`;
//! - no secret: none;
//! - a secret, and the metadata lists only `client_secret_basic` (or no method at
//!   all, or neither secret method): basic; only `client_secret_post`: post;
//! - both listed: a **probe**, before the first authenticated call — a token request
//!   with a made-up code, which matches no code the provider issued (so no
//!   revoke-on-reuse rule fires): basic first, then post. `invalid_grant` or
//!   `unauthorized_client`: the method works; `invalid_client` or a 401: it does not;
//!   anything else (another error, 429, 5xx, a timeout) is inconclusive: basic, and
//!   nothing remembered. A real code or refresh token is never sent to find out.
//!
//! A probe's result is remembered in the store per (issuer, client id, secret), so
//! that every instance probes once per secret; a real `invalid_client` forgets it. An
//! instance probes at most once per [`PROBE_EVERY`]. Each endpoint's own list (RFC 8414
//! §2: `revocation_endpoint_auth_methods_supported`) is honoured.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::ProviderError;
use super::client_key::ClientKey;
use super::discovery::Metadata;
use super::http::{Answer, ProviderHttp};
use crate::config::AuthMethodSetting;

/// Least time between two probes of one instance.
pub const PROBE_EVERY: Duration = Duration::from_secs(600);

/// A client authentication method the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    None,
}

impl AuthMethod {
    /// The name RFC 8414 and OIDC Discovery use.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::None => "none",
        }
    }

    /// A remembered probe result: only a secret method (a store entry never makes the
    /// gateway a public client).
    fn parse_remembered(name: &str) -> Option<Self> {
        [Self::ClientSecretBasic, Self::ClientSecretPost]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

/// Where a probe's result is kept so that every instance probes once per secret.
#[async_trait]
pub trait AuthMemory: Send + Sync + std::fmt::Debug {
    async fn recall(&self, key: &str) -> Option<String>;
    async fn remember(&self, key: &str, method: &str);
    async fn forget(&self, key: &str);
}

/// The client's credentials and the method they go by.
#[derive(Clone, Copy)]
pub struct ClientAuth<'a> {
    pub client_id: &'a str,
    pub client_secret: Option<&'a str>,
    pub method: AuthMethod,
    /// What `private_key_jwt` signs with, and the assertion's `aud` and `typ`.
    pub assertion: Option<AssertionSettings<'a>>,
}

/// How a client assertion is made.
#[derive(Clone, Copy)]
pub struct AssertionSettings<'a> {
    pub key: &'a ClientKey,
    pub audience: &'a str,
    pub typ: Option<&'a str>,
    /// PS256 for RSA keys (the FAPI 2.0 profile).
    pub fapi2: bool,
}

/// The credentials of one request: made fresh for each (an assertion is never reused,
/// so no two requests share a `jti`).
pub struct Credentials<'a> {
    basic: Option<(&'a str, &'a str)>,
    form: Vec<(&'static str, std::borrow::Cow<'a, str>)>,
}

impl<'a> ClientAuth<'a> {
    /// The credentials for one request (a new client assertion each time).
    pub fn credentials(&self) -> Result<Credentials<'a>, ProviderError> {
        use std::borrow::Cow;
        let id = Cow::Borrowed(self.client_id);
        let (basic, form) = match (self.method, self.client_secret, self.assertion) {
            (AuthMethod::ClientSecretBasic, Some(secret), _) => {
                (Some((self.client_id, secret)), Vec::new())
            }
            (AuthMethod::ClientSecretPost, Some(secret), _) => (
                None,
                vec![("client_id", id), ("client_secret", Cow::Borrowed(secret))],
            ),
            (AuthMethod::PrivateKeyJwt, _, Some(a)) => {
                let now = crate::clock::Clock::now(&crate::clock::SystemClock);
                let jwt = a
                    .key
                    .assertion(self.client_id, a.audience, a.typ, a.fapi2, now)
                    .map_err(|e| ProviderError::ClientAssertion(e.to_string()))?;
                (
                    None,
                    vec![
                        ("client_id", id),
                        (
                            "client_assertion_type",
                            Cow::Borrowed("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                        ),
                        ("client_assertion", Cow::Owned(jwt)),
                    ],
                )
            }
            (AuthMethod::None, _, _) => (None, vec![("client_id", id)]),
            // Configuration refuses these; never fall back to sending no credentials.
            (method, _, _) => {
                return Err(ProviderError::ClientAssertion(format!(
                    "{} is configured without its secret or key",
                    method.name()
                )));
            }
        };
        Ok(Credentials { basic, form })
    }
}

impl Credentials<'_> {
    /// Puts the credentials into a form to post, and returns the pair for HTTP Basic
    /// (`client_secret_basic`).
    pub fn apply<'f>(&'f self, form: &mut Vec<(&'f str, &'f str)>) -> Option<(&'f str, &'f str)> {
        form.extend(self.form.iter().map(|(k, v)| (*k, v.as_ref())));
        self.basic
    }
}

/// Probes basic, then post: the first that works (`Ok(None)`: neither), or `Err(())`
/// when an answer says nothing (the caller falls back without remembering).
async fn probe_methods(
    http: &ProviderHttp,
    metadata: &Metadata,
    redirect_uri: &str,
    client_id: &str,
    secret: &str,
) -> Result<Option<AuthMethod>, ()> {
    for method in [AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost] {
        let auth = ClientAuth {
            client_id,
            client_secret: Some(secret),
            method,
            assertion: None,
        };
        match probe(http, &metadata.token_endpoint, redirect_uri, auth).await {
            ProbeOutcome::Works => return Ok(Some(method)),
            ProbeOutcome::Refused => continue,
            ProbeOutcome::Inconclusive => {
                tracing::warn!(
                    method = method.name(),
                    "the provider's answer to a client authentication probe says nothing; client_secret_basic is used for now"
                );
                return Err(());
            }
        }
    }
    Ok(None)
}

/// What a probe answer says about the method it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The client was authenticated (the made-up code was refused).
    Works,
    /// The client was not authenticated.
    Refused,
    /// Nothing can be concluded.
    Inconclusive,
}

/// The probe's outcome table (see the module text).
pub fn judge_probe(answer: &Result<Answer, ProviderError>) -> ProbeOutcome {
    let Ok(answer) = answer else {
        return ProbeOutcome::Inconclusive;
    };
    match answer.status.as_u16() {
        401 => return ProbeOutcome::Refused,
        400 => {}
        // 429, 5xx, a success or anything else says nothing about the client.
        _ => return ProbeOutcome::Inconclusive,
    }
    let error = answer
        .json_object("token response")
        .ok()
        .and_then(|m| m.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    match error.as_deref() {
        Some("invalid_grant" | "unauthorized_client") => ProbeOutcome::Works,
        Some("invalid_client") => ProbeOutcome::Refused,
        _ => ProbeOutcome::Inconclusive,
    }
}

/// A token request with a made-up code and verifier, authenticated by `auth`, judged
/// by the outcome table.
pub async fn probe(
    http: &ProviderHttp,
    token_endpoint: &str,
    redirect_uri: &str,
    auth: ClientAuth<'_>,
) -> ProbeOutcome {
    judge_probe(&probe_answer(http, token_endpoint, redirect_uri, auth).await)
}

/// The provider's answer to a token request with a made-up code and verifier.
pub async fn probe_answer(
    http: &ProviderHttp,
    token_endpoint: &str,
    redirect_uri: &str,
    auth: ClientAuth<'_>,
) -> Result<Answer, ProviderError> {
    let code = format!("portcullis-probe-{}", crate::random::random_token());
    let verifier = crate::random::random_token() + &crate::random::random_token();
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("redirect_uri", redirect_uri),
    ];
    let credentials = auth.credentials()?;
    let basic = credentials.apply(&mut form);
    http.post_form(
        "token",
        token_endpoint,
        &form,
        basic,
        None,
        super::token::MAX_TOKEN_RESPONSE_BYTES,
    )
    .await
}

/// The secret methods a metadata list names: (basic, post). A missing list names basic
/// (RFC 8414 §2: "If omitted, the default is client_secret_basic").
fn listed(list: Option<&[String]>) -> (bool, bool) {
    match list {
        None => (true, false),
        Some(list) => (
            list.iter().any(|m| m == "client_secret_basic"),
            list.iter().any(|m| m == "client_secret_post"),
        ),
    }
}

/// What the metadata alone decides for a client with a secret; `None`: a probe must.
pub fn decided_by_metadata(list: Option<&[String]>) -> Option<AuthMethod> {
    match listed(list) {
        (_, false) => Some(AuthMethod::ClientSecretBasic),
        (false, true) => Some(AuthMethod::ClientSecretPost),
        (true, true) => None,
    }
}

/// The method at another endpoint (revocation): the token endpoint's, unless that
/// endpoint lists its own methods without it and with the other secret method.
pub fn at_endpoint(chosen: AuthMethod, list: Option<&[String]>) -> AuthMethod {
    let Some(list) = list else {
        return chosen;
    };
    if matches!(chosen, AuthMethod::None | AuthMethod::PrivateKeyJwt)
        || list.iter().any(|m| m == chosen.name())
    {
        return chosen;
    }
    match listed(Some(list)) {
        (true, _) => AuthMethod::ClientSecretBasic,
        (false, true) => AuthMethod::ClientSecretPost,
        (false, false) => chosen,
    }
}

/// The `auto` decision of one gateway: what it found, and when it last probed.
#[derive(Debug, Default)]
pub struct AutoAuth {
    /// The decided method, once known; held while probing (one probe at a time).
    decided: Mutex<Option<AuthMethod>>,
    last_probe: std::sync::Mutex<Option<Instant>>,
    memory: OnceLock<Arc<dyn AuthMemory>>,
}

impl AutoAuth {
    /// Where probe results are shared (the store), set once at start.
    pub fn remember_in(&self, memory: Arc<dyn AuthMemory>) {
        let _ = self.memory.set(memory);
    }

    /// The name under which this client's method is remembered: a digest of the
    /// issuer, the client id and the secret (a new secret is probed afresh).
    fn key(issuer: &str, client_id: &str, secret: &str) -> String {
        let digest = crate::random::sha256_hex(
            format!("portcullis client auth v1\n{issuer}\n{client_id}\n{secret}").as_bytes(),
        );
        format!("client_auth:{digest}")
    }

    /// The method for this client at the token endpoint (see the module text).
    #[allow(clippy::too_many_arguments)]
    pub async fn method(
        &self,
        setting: AuthMethodSetting,
        http: &ProviderHttp,
        metadata: &Metadata,
        issuer: &str,
        client_id: &str,
        secret: Option<&str>,
        has_key: bool,
        redirect_uri: &str,
    ) -> AuthMethod {
        match setting {
            AuthMethodSetting::ClientSecretBasic => return AuthMethod::ClientSecretBasic,
            AuthMethodSetting::ClientSecretPost => return AuthMethod::ClientSecretPost,
            AuthMethodSetting::PrivateKeyJwt => return AuthMethod::PrivateKeyJwt,
            AuthMethodSetting::None => return AuthMethod::None,
            AuthMethodSetting::Auto => {}
        }
        if has_key {
            return AuthMethod::PrivateKeyJwt;
        }
        let Some(secret) = secret else {
            return AuthMethod::None;
        };
        if let Some(method) =
            decided_by_metadata(metadata.token_endpoint_auth_methods_supported.as_deref())
        {
            return method;
        }
        let mut decided = self.decided.lock().await;
        if let Some(method) = *decided {
            return method;
        }
        let key = Self::key(issuer, client_id, secret);
        let memory = self.memory.get();
        if let Some(memory) = memory
            && let Some(method) = memory
                .recall(&key)
                .await
                .and_then(|m| AuthMethod::parse_remembered(&m))
        {
            *decided = Some(method);
            return method;
        }
        {
            let mut last = self.last_probe.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < PROBE_EVERY) {
                return AuthMethod::ClientSecretBasic;
            }
            *last = Some(Instant::now());
        }
        let found = match probe_methods(http, metadata, redirect_uri, client_id, secret).await {
            Ok(found) => found,
            Err(()) => return AuthMethod::ClientSecretBasic,
        };
        let Some(method) = found else {
            tracing::warn!(
                "the provider accepts the client credentials with neither client_secret_basic nor client_secret_post: check client_id and client_secret"
            );
            return AuthMethod::ClientSecretBasic;
        };
        tracing::info!(
            method = method.name(),
            "client authentication decided by a probe (the provider lists client_secret_basic and client_secret_post); remembered for every instance"
        );
        if let Some(memory) = memory {
            memory.remember(&key, method.name()).await;
        }
        *decided = Some(method);
        method
    }

    /// A real call was refused with `invalid_client`: what was decided is forgotten, here
    /// and in the store (the next call may probe again, after [`PROBE_EVERY`]).
    pub async fn forget(&self, issuer: &str, client_id: &str, secret: Option<&str>) {
        let mut decided = self.decided.lock().await;
        if decided.take().is_none() {
            return;
        }
        if let (Some(memory), Some(secret)) = (self.memory.get(), secret) {
            memory.forget(&Self::key(issuer, client_id, secret)).await;
        }
        tracing::warn!(
            "the provider refused the client credentials (invalid_client); the client authentication method will be decided again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_metadata_decides_unless_it_lists_both() {
        use AuthMethod::{ClientSecretBasic, ClientSecretPost};
        let decide = |l: Option<&[&str]>| decided_by_metadata(l.map(list).as_deref());
        assert_eq!(decide(None), Some(ClientSecretBasic));
        assert_eq!(
            decide(Some(&["client_secret_basic"])),
            Some(ClientSecretBasic)
        );
        assert_eq!(
            decide(Some(&["client_secret_post"])),
            Some(ClientSecretPost)
        );
        assert_eq!(decide(Some(&["private_key_jwt"])), Some(ClientSecretBasic));
        assert_eq!(
            decide(Some(&["client_secret_post", "client_secret_basic"])),
            None
        );
    }

    #[test]
    fn revocation_honours_its_own_list() {
        use AuthMethod::{ClientSecretBasic, ClientSecretPost};
        let at = |m, l: Option<&[&str]>| at_endpoint(m, l.map(list).as_deref());
        assert_eq!(at(ClientSecretPost, None), ClientSecretPost);
        assert_eq!(
            at(ClientSecretPost, Some(&["client_secret_basic"])),
            ClientSecretBasic
        );
        assert_eq!(
            at(ClientSecretBasic, Some(&["client_secret_post"])),
            ClientSecretPost
        );
        assert_eq!(
            at(ClientSecretBasic, Some(&["client_secret_basic"])),
            ClientSecretBasic
        );
        assert_eq!(
            at(AuthMethod::None, Some(&["client_secret_basic"])),
            AuthMethod::None
        );
    }

    #[test]
    fn probe_answers_are_judged_by_the_table() {
        use axum::http::StatusCode;
        let answer = |status: u16, body: &str| -> Result<Answer, ProviderError> {
            Ok(Answer {
                status: StatusCode::from_u16(status).unwrap(),
                content_type: "application/json".into(),
                body: body.as_bytes().to_vec(),
                date: None,
                age: None,
                dpop_nonce: None,
                www_authenticate: None,
            })
        };
        use ProbeOutcome::*;
        for (status, body, outcome) in [
            (400, r#"{"error":"invalid_grant"}"#, Works),
            (400, r#"{"error":"unauthorized_client"}"#, Works),
            (400, r#"{"error":"invalid_client"}"#, Refused),
            (401, r#"{"error":"invalid_client"}"#, Refused),
            (401, "", Refused),
            (400, r#"{"error":"invalid_request"}"#, Inconclusive),
            (429, "", Inconclusive),
            (503, "", Inconclusive),
            (200, r#"{"access_token":"x"}"#, Inconclusive),
        ] {
            assert_eq!(
                judge_probe(&answer(status, body)),
                outcome,
                "{status} {body}"
            );
        }
        assert_eq!(judge_probe(&Err(ProviderError::Timeout)), Inconclusive);
    }
}
