//! Signing out (RFC 7009 for the provider side): the local session is deleted first,
//! so that a provider that is down or slow never keeps anyone signed in
//! (SECURITY-CASES O01, O06).

use super::SessionError;
use super::id::SessionId;
use crate::gateway::Gateway;
use crate::store::SessionRecord;

/// What signing out did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOut {
    /// There was no live session behind the cookie.
    NoSession,
    /// The session was deleted; `revoked` says whether the provider confirmed the
    /// refresh token's revocation.
    Ended { revoked: bool },
}

impl Gateway {
    /// Ends the session behind a cookie value and revokes its refresh token at the
    /// provider when the provider offers revocation.
    pub async fn sign_out(&self, cookie_value: &str) -> Result<SignOut, SessionError> {
        let Some(id) = SessionId::parse(cookie_value) else {
            return Ok(SignOut::NoSession);
        };
        let Some(record) = self.store.get_session(&id.hash()).await? else {
            return Ok(SignOut::NoSession);
        };
        // Opened before the delete; a session whose tokens no longer open is still ended.
        let tokens = self.session_tokens(&record).ok();
        let refresh = tokens.as_ref().and_then(|t| t.refresh_token.as_deref());
        let revoked = self
            .end_session_and_revoke(&record, refresh.map(|s| s.as_str()))
            .await?;
        tracing::info!(session = record.id_hash.short(), user = %record.user.id, "signed out");
        Ok(SignOut::Ended { revoked })
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
        match self.provider.revoke_refresh_token(token).await {
            Ok(done) => Ok(done),
            Err(e) => {
                tracing::warn!(error = %e, code = e.code(), "refresh token revocation failed; the local session is ended anyway");
                Ok(false)
            }
        }
    }
}
