//! Signing out (RFC 7009 for the provider side): the local session is deleted first,
//! so that a provider that is down or slow never keeps anyone signed in
//! (docs/security.md O01, O06).

use super::SessionError;
use super::id::SessionId;
use super::service::Sessions;
use crate::store::SessionRecord;

/// What signing out did.
pub enum SignOut {
    /// There was no live session behind the cookie.
    NoSession,
    /// The session was deleted; `revoked` says whether the provider confirmed the
    /// refresh token's revocation; `id_token` is its last ID token (the
    /// `id_token_hint` of an RP-initiated logout).
    Ended {
        revoked: bool,
        id_token: Option<zeroize::Zeroizing<String>>,
        /// The session's provider (whose end-session endpoint signs the user out there).
        provider_id: String,
    },
}

impl std::fmt::Debug for SignOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSession => f.write_str("NoSession"),
            Self::Ended {
                revoked,
                id_token,
                provider_id,
            } => f
                .debug_struct("Ended")
                .field("revoked", revoked)
                .field("provider_id", provider_id)
                .field("id_token", &id_token.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

impl Sessions {
    /// Ends the session behind a cookie value and revokes its refresh token at the
    /// provider when the provider offers revocation.
    pub async fn sign_out(&self, cookie_value: &str) -> Result<SignOut, SessionError> {
        let Some(id) = SessionId::parse(cookie_value) else {
            return Ok(SignOut::NoSession);
        };
        let Some(record) = self.store.get_session_fresh(&id.hash()).await? else {
            return Ok(SignOut::NoSession);
        };
        // F06 holds for signing out too: a rotated-away id past its grace window, while
        // the new id is in use, is a stolen copy. The session still ends (that is what
        // both a thief and the owner asked for), the event is logged, and the copy's
        // holder is given nothing (no ID token for a provider sign-out).
        let now = self.now();
        let stolen = super::lookup::is_stolen_copy(&record, now);
        if stolen {
            self.security_event(
                "session_id_reuse",
                &record,
                "a rotated-away session id was used to sign out after its grace window while the new one is in use; the session is revoked",
            );
        }
        // Opened before the delete; a session whose tokens no longer open is still ended.
        let tokens = self.session_tokens(&record).ok();
        let refresh = tokens.as_ref().and_then(|t| t.refresh_token.as_deref());
        let id_token = tokens
            .as_ref()
            .and_then(|t| t.id_token.clone())
            .filter(|_| !stolen);
        let revoked = self
            .end_session_and_revoke(&record, refresh.map(|s| s.as_str()))
            .await?;
        tracing::info!(session = record.id_hash.short(), user = %record.user.id, "signed out");
        Ok(SignOut::Ended {
            revoked,
            id_token,
            provider_id: record.provider_id.clone(),
        })
    }

    /// Deletes a session, then revokes `refresh_token` at the provider when it offers
    /// RFC 7009. Returns whether the provider confirmed the revocation; its failure is
    /// logged and never keeps the session alive.
    pub(crate) async fn end_session_and_revoke(
        &self,
        record: &SessionRecord,
        refresh_token: Option<&str>,
    ) -> Result<bool, SessionError> {
        self.store.delete_session(record.family_id).await?;
        let Some(token) = refresh_token else {
            return Ok(false);
        };
        // A session of a provider no longer configured has nowhere to revoke.
        let Ok(provider) = self.session_provider(record) else {
            return Ok(false);
        };
        match provider.revoke_refresh_token(token).await {
            Ok(done) => Ok(done),
            Err(e) => {
                tracing::warn!(error = %e, code = e.code(), "refresh token revocation failed; the local session is ended anyway");
                Ok(false)
            }
        }
    }
}

/// Why a back-channel logout request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackchannelError {
    #[error("the logout token is not valid: {0}")]
    Token(#[from] crate::provider::logout_token::LogoutTokenError),
    #[error("this logout token was already used")]
    Replayed,
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl BackchannelError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Token(t) => t.code(),
            Self::Replayed => "logout_token_replayed",
            Self::Provider(p) => p.code(),
            Self::Store(s) => s.code(),
        }
    }
}

impl From<crate::provider::LogoutError> for BackchannelError {
    fn from(e: crate::provider::LogoutError) -> Self {
        match e {
            crate::provider::LogoutError::Token(t) => Self::Token(t),
            crate::provider::LogoutError::Provider(p) => Self::Provider(p),
        }
    }
}

impl Sessions {
    /// OIDC Back-Channel Logout (docs/security.md O04, O05): validates the provider's
    /// logout token, refuses a replayed `jti`, and ends the sessions it names: the
    /// session with that provider `sid`, or every session of that `sub`. Sessions live
    /// in the store, so every instance refuses them from the next request on. Returns
    /// how many sessions ended.
    pub async fn backchannel_logout(&self, logout_token: &str) -> Result<u64, BackchannelError> {
        use crate::provider::logout_token::MAX_AGE_SECONDS;
        let now = self.now();
        // G12: the provider is the one the token names (`iss`), and only its keys may
        // have signed it; it ends only its own users' sessions.
        let (provider, issuer) = self
            .providers
            .for_token(logout_token)
            .ok_or(crate::provider::logout_token::LogoutTokenError::WrongIssuer)?;
        let token = provider.validate_logout_token(logout_token, now).await?;
        let issuer = issuer.as_str();
        let key = format!(
            "backchannel-logout:{}",
            crate::random::sha256_hex(format!("{issuer}\n{}", token.jti).as_bytes())
        );
        // Remembered for as long as the token could be accepted at all.
        let until = token.iat.max(now) + MAX_AGE_SECONDS + 120;
        if !self.store.remember_once(&key, now, until).await? {
            tracing::warn!("a back-channel logout token was replayed; refused");
            return Err(BackchannelError::Replayed);
        }
        let ended = match (&token.sid, &token.sub) {
            (Some(sid), _) => {
                self.store
                    .delete_sessions_by_provider_sid(issuer, sid)
                    .await
            }
            (None, Some(sub)) => self.store.delete_sessions_by_subject(issuer, sub).await,
            (None, None) => Ok(0),
        };
        let ended = match ended {
            Ok(n) => n,
            Err(e) => {
                // Nothing was ended: the provider's retry of this token must not be
                // refused as a replay.
                if let Err(forget) = self.store.forget(&key).await {
                    tracing::warn!(error = %forget, "could not forget a logout token's jti");
                }
                return Err(e.into());
            }
        };
        tracing::info!(
            ended,
            by = if token.sid.is_some() { "sid" } else { "sub" },
            "back-channel logout from the provider"
        );
        Ok(ended)
    }
}
