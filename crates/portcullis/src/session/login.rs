//! The login flow (docs/security.md "Signing in", OIDC Core §3.1): start a
//! transaction bound to this browser, then finish it at the callback, checking every
//! step before the code is redeemed, and create a session with a new id.

use serde_json::{Map, Value};
use url::Url;

use super::id::SessionId;
use super::return_to::ReturnTo;
use super::service::Sessions;
use super::{SessionError, new_uuid};
use crate::provider::{Pkce, TokenResponse};
use crate::random::{random_token, secrets_equal, sha256_hex};
use crate::store::{LoginTransaction, NewSession, TokenSet, TransactionLimits, UserProfile};

/// How long a login transaction lives (and its binding cookie).
pub const LOGIN_TTL_SECONDS: i64 = 600;

/// Token lifetimes the provider announces are believed up to this (one year).
pub(crate) const MAX_PROVIDER_LIFETIME: i64 = 365 * 86_400;

/// The query of a callback, already split by the HTTP layer. `Debug` hides the code
/// and state.
#[derive(Default, Clone)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl std::fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackParams")
            .field("state", &self.state.as_ref().map(|_| "<redacted>"))
            .field("code", &self.code.as_ref().map(|_| "<redacted>"))
            .field("iss", &self.iss)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// A finished login: the new session's id (for the cookie), its cookie lifetime, and
/// where to send the browser.
#[derive(Debug)]
pub struct LoginOutcome {
    pub session_id: SessionId,
    pub max_age: i64,
    pub return_to: ReturnTo,
}

fn transaction_context(state_hash: &str) -> Vec<u8> {
    format!("login-transaction:{state_hash}").into_bytes()
}

/// What the sealing context of one token field of one session is.
pub(crate) fn token_context(id_hash: &super::IdHash, field: &str) -> Vec<u8> {
    format!("session:{id_hash}:{field}").into_bytes()
}

impl Sessions {
    /// Starts a login at provider `provider_id` for the browser holding `binding` (the
    /// `portcullis_tx` cookie value). Returns the provider URL to redirect to.
    pub async fn begin_login(
        &self,
        provider_id: &str,
        binding: &str,
        return_to: ReturnTo,
        login_hint: Option<&str>,
    ) -> Result<Url, SessionError> {
        let provider = self.provider(provider_id)?;
        let state = random_token();
        let nonce = random_token();
        let pkce = Pkce::generate();
        // Fails before anything is stored when the provider is unreachable.
        let dpop = self.dpop_key_for(provider).await?;
        let authorization = provider
            .authorization(&state, &nonce, &pkce.challenge, dpop.as_deref(), login_hint)
            .await?;
        let now = self.now();
        let state_hash = sha256_hex(state.as_bytes());
        let verifier = self
            .keys()
            .seal_str(&pkce.verifier, &transaction_context(&state_hash));
        let tx = LoginTransaction {
            state_hash,
            binding_hash: sha256_hex(binding.as_bytes()),
            nonce,
            verifier,
            return_to: return_to.as_str().to_owned(),
            created_at: now,
            // A pushed request's `request_uri` may not outlive the transaction's
            // use: the transaction ends with it (RFC 9126 §2.2).
            expires_at: now
                + authorization
                    .expires_in
                    .map_or(LOGIN_TTL_SECONDS, |s| s.min(LOGIN_TTL_SECONDS)),
            provider_id: provider.id().to_owned(),
        };
        if !self
            .store
            .put_transaction(&tx, self.transaction_limits())
            .await?
        {
            tracing::warn!(
                max_transactions = self.config.limits.max_transactions,
                "too many sign-ins in progress: a new one is refused (limits.max_transactions)"
            );
            return Err(SessionError::SignInsFull);
        }
        Ok(authorization.url)
    }

    /// Finishes a login at provider `callback_provider`'s callback. `binding` is this
    /// browser's `portcullis_tx` cookie; `replaced` is a session cookie it presented,
    /// which the new session replaces (never promotes: docs/security.md S03).
    pub async fn complete_login(
        &self,
        callback_provider: &str,
        params: CallbackParams,
        binding: Option<&str>,
        replaced: Option<&SessionId>,
        user_agent: Option<&str>,
    ) -> Result<LoginOutcome, SessionError> {
        let result = async {
            let tx = self
                .take_own_transaction(params.state.as_deref(), binding)
                .await?;
            // G12 (mix-up): the answer must come back to the callback of the provider
            // the sign-in was sent to, before anything in it is believed.
            if tx.provider_id != callback_provider {
                self.events.count("provider_mismatch");
                return Err(SessionError::ProviderMismatch);
            }
            let provider = self.provider(&tx.provider_id)?;
            // L06 (RFC 9207): before the response is interpreted, and before any token
            // request; G12: the `iss` of another provider is refused here.
            provider
                .check_response_issuer(params.iss.as_deref())
                .await
                .map_err(|e| match e {
                    crate::provider::ProviderError::IssuerMismatch { .. } => {
                        SessionError::IssuerMismatch
                    }
                    other => other.into(),
                })?;
            // L09: the provider's error, consumed transaction, no session.
            if let Some(error) = params.error {
                if error == "invalid_scope" {
                    let scopes = provider.requested_scopes().await?;
                    return Err(SessionError::ScopeRefused {
                        scopes: scopes.join(" "),
                    });
                }
                return Err(SessionError::ProviderDenied {
                    error,
                    description: params.error_description,
                });
            }
            let code = params
                .code
                .filter(|c| !c.is_empty())
                .ok_or(SessionError::CodeMissing)?;
            let verifier = self
                .keys()
                .open_str(&tx.verifier, &transaction_context(&tx.state_hash))
                .map_err(|_| SessionError::Unsealable)?;

            let dpop = self.dpop_key_for(provider).await?;
            let tokens = provider
                .exchange_code(
                    &code,
                    &verifier,
                    &self.config.redirect_uri(provider.id()),
                    dpop.as_deref(),
                )
                .await?;
            self.create_session_from_tokens(
                provider,
                tokens,
                Some(&tx.nonce),
                ReturnTo::from_stored(tx.return_to),
                user_agent,
            )
            .await
        }
        .await;
        self.finish_login(callback_provider, result, replaced).await
    }

    /// L01/L02/L03, G08: the login transaction of `state`, taken (single use), when it
    /// belongs to this browser (`binding`), is unexpired, and opens with this key ring.
    async fn take_own_transaction(
        &self,
        state: Option<&str>,
        binding: Option<&str>,
    ) -> Result<LoginTransaction, SessionError> {
        // L01/L02/L03: a transaction of this browser, unused and unexpired, before
        // anything else; taking it makes it single use.
        let state = state.filter(|s| !s.is_empty() && s.len() <= 512);
        // Without a transaction, nothing from the query is shown back (no attacker text
        // on our origin): the provider's `error` is displayed only once the state matched.
        let Some(state) = state else {
            return Err(SessionError::StateMissing);
        };
        let tx = self
            .store
            .take_transaction(&sha256_hex(state.as_bytes()))
            .await?
            .ok_or(SessionError::StateUnknown)?;
        // G08: a sign-in begun on an instance whose key ring this one lacks is absent
        // here, and put back unused for an instance that can finish it.
        if !self.keys().holds_key_of(&tx.verifier) {
            tracing::warn!(
                "a sign-in begun under a key this key ring lacks cannot be finished here; it is left for an instance that holds the key"
            );
            self.store
                .put_transaction(&tx, self.transaction_limits())
                .await?;
            return Err(SessionError::StateUnknown);
        }
        let binding_hash = binding
            .map(|b| sha256_hex(b.as_bytes()))
            .unwrap_or_default();
        if !secrets_equal(binding_hash.as_bytes(), tx.binding_hash.as_bytes()) {
            return Err(SessionError::BrowserMismatch);
        }
        if self.now() >= tx.expires_at {
            return Err(SessionError::LoginExpired);
        }
        Ok(tx)
    }

    /// Bounds on the login transactions stored.
    fn transaction_limits(&self) -> TransactionLimits {
        TransactionLimits {
            total: self.config.limits.max_transactions,
            ..TransactionLimits::default()
        }
    }

    /// The end of every sign-in: a session the browser presented is ended once the new
    /// one exists (replaced, never promoted: S03), and the outcome is counted.
    async fn finish_login(
        &self,
        provider: &str,
        result: Result<LoginOutcome, SessionError>,
        replaced: Option<&SessionId>,
    ) -> Result<LoginOutcome, SessionError> {
        if result.is_ok()
            && let Some(old) = replaced
        {
            self.end_session_by_id(old).await;
        }
        // Counted under configured providers only (a made-up callback path is no
        // provider's sign-in).
        if self.config.provider(provider).is_some() {
            count_login(provider, &result);
        }
        result
    }

    /// Validates a token response, applies the access rules and creates the session.
    /// A new session's tokens, each sealed to its id hash and field (S08), with their
    /// lifetimes (the provider's, capped).
    fn sealed_tokens(
        &self,
        tokens: &TokenResponse,
        id_token: &str,
        id_hash: &super::IdHash,
        now: crate::clock::UnixTime,
    ) -> TokenSet {
        let seal = |field: &str, value: &str| {
            Some(self.keys().seal_str(value, &token_context(id_hash, field)))
        };
        let until = |seconds: i64| now.saturating_add(seconds.min(MAX_PROVIDER_LIFETIME));
        TokenSet {
            refresh_token: tokens
                .refresh_token
                .as_deref()
                .and_then(|t| seal("refresh", t)),
            access_token: seal(
                "access",
                &super::dpop::stored_access_token(&tokens.access_token, tokens.dpop_bound),
            ),
            id_token: seal("id", id_token),
            access_expires_at: tokens.expires_in.map(until),
            refresh_expires_at: tokens.refresh_expires_in.map(until),
            access_issued_at: Some(now),
            granted_scope: tokens.scope.clone(),
        }
    }

    pub(crate) async fn create_session_from_tokens(
        &self,
        provider: &crate::provider::Provider,
        tokens: TokenResponse,
        nonce: Option<&str>,
        return_to: ReturnTo,
        user_agent: Option<&str>,
    ) -> Result<LoginOutcome, SessionError> {
        let now = self.now();
        let id_token = tokens.id_token.as_deref().ok_or_else(|| {
            crate::provider::ProviderError::BadResponse("the token response has no id_token".into())
        })?;
        let verified = provider.validate_id_token(id_token, nonce, now).await?;
        let mut claims: Map<String, Value> = verified.claims.clone();
        let dpop = self.dpop_key_if(tokens.dpop_bound).await?;
        if let Some(info) = provider
            .userinfo(&tokens.access_token, &verified.subject, dpop.as_deref())
            .await?
        {
            merge_userinfo(&mut claims, info);
        }
        self.email_trust(provider, &mut claims);
        self.check_provider_access(provider, &claims)?;

        let profile = profile_from_claims(&claims);
        // Users are (issuer, subject): the concrete `iss` of the token, never linked
        // to another provider's user by email.
        let user = self
            .store
            .upsert_user(&verified.issuer, &verified.subject, &profile, now)
            .await?;

        let session_id = SessionId::generate();
        let id_hash = session_id.hash();
        let sealed = self.sealed_tokens(&tokens, id_token, &id_hash, now);
        let refresh_expires_at = sealed.refresh_expires_at;
        let absolute = now.saturating_add(self.config.session.absolute_lifetime.as_secs() as i64);
        let (kept, email_verified) = super::claims::kept_claims(&claims);
        let session = NewSession {
            family_id: new_uuid(),
            id_hash: id_hash.clone(),
            user_id: user.id,
            provider_sid: verified.sid.clone(),
            created_at: now,
            idle_expires_at: now.saturating_add(self.config.session.idle_timeout.as_secs() as i64),
            absolute_expires_at: absolute,
            tokens: sealed,
            user_agent: user_agent.map(|ua| clip(ua, 256)),
            claims: kept,
            email_verified,
            provider_id: provider.id().to_owned(),
        };
        self.store.create_session(&session).await?;
        tracing::info!(
            session = id_hash.short(),
            user = %user.id,
            provider = provider.id(),
            "signed in"
        );
        let ends = refresh_expires_at.map_or(absolute, |r| r.min(absolute));
        Ok(LoginOutcome {
            session_id,
            max_age: (ends - now).max(0),
            return_to,
        })
    }
}

/// Adds UserInfo claims to the ID token's, never overriding what identifies the token.
pub(crate) fn merge_userinfo(claims: &mut Map<String, Value>, info: Map<String, Value>) {
    for (k, v) in info {
        if !matches!(
            k.as_str(),
            "iss" | "aud" | "sub" | "exp" | "iat" | "nonce" | "azp"
        ) {
            claims.insert(k, v);
        }
    }
}

/// The profile kept for a user: email and name, clipped.
/// The user's profile as the provider tells it. The email address only when the
/// provider verified it (E01): the app receives it as an identity (`X-User-Email`), and
/// an address anyone can type into a sign-up form is not one.
pub(crate) fn profile_from_claims(claims: &Map<String, Value>) -> UserProfile {
    UserProfile {
        email: claims
            .get("email")
            .and_then(Value::as_str)
            .filter(|_| super::claims::email_verified(claims))
            .map(|s| clip(s, 320)),
        name: claims
            .get("name")
            .and_then(Value::as_str)
            .map(|s| clip(s, 256)),
    }
}

fn clip(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

impl Sessions {
    /// The seed's single-page-app contract (`spa.code_exchange`): the browser made the
    /// PKCE pair and state itself and posts `{code, verifier}`. The code is redeemed
    /// with `spa.redirect_uri`; the ID token, UserInfo and access rules are checked as
    /// for `/auth/callback` (the nonce only when the app sends one), and a session with
    /// a new id is created. Weaker than `/auth/login`: see `docs/spa.md`.
    pub async fn complete_spa_login(
        &self,
        code: &str,
        verifier: &str,
        nonce: Option<&str>,
        replaced: Option<&SessionId>,
        user_agent: Option<&str>,
    ) -> Result<LoginOutcome, SessionError> {
        let result = async {
            // `spa.provider` (checked at start: required with several providers).
            let id = self.config.spa.provider.as_deref().unwrap_or_default();
            let provider = self.provider(id)?;
            let redirect_uri = self
                .config
                .spa
                .redirect_uri
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_else(|| self.config.redirect_uri(provider.id()));
            let dpop = self.dpop_key_for(provider).await?;
            let tokens = provider
                .exchange_code(code, verifier, &redirect_uri, dpop.as_deref())
                .await?;
            self.create_session_from_tokens(provider, tokens, nonce, ReturnTo::root(), user_agent)
                .await
        }
        .await;
        self.finish_login(
            self.config.spa.provider.as_deref().unwrap_or_default(),
            result,
            replaced,
        )
        .await
    }
}

/// `portcullis_logins_total`: `denied` when the access rules refused the user or the
/// provider answered `access_denied`, `error` for everything else that ended a sign-in
/// (the provider's other errors, such as `temporarily_unavailable`, included).
fn count_login(provider: &str, result: &Result<LoginOutcome, SessionError>) {
    crate::metrics::login(
        provider,
        match result {
            Ok(_) => "success",
            Err(SessionError::AccessDenied(_)) => "denied",
            Err(SessionError::ProviderDenied { error, .. }) if error == "access_denied" => "denied",
            Err(_) => "error",
        },
    );
}
