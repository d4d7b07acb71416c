//! The operator's view of sessions (`portcullis sessions list|revoke`). Sessions are
//! named by a *handle*: the first 12 hex digits of the SHA-256 of their id, the same
//! short hash the logs use. A handle reveals nothing that would let anyone use the
//! session.

use uuid::Uuid;

use super::SessionError;
use super::service::Sessions;
use crate::store::SessionRecord;

/// Which sessions to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// The session whose handle (or a longer prefix of its id hash, 8 hex digits at
    /// least) this is.
    Handle(String),
    /// Every session of one user.
    User(Uuid),
    /// Every session.
    All,
}

/// Why a revocation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("`{0}` is not a session handle (8 to 64 hex digits)")]
    BadHandle(String),
    #[error("no live session has the handle `{0}`")]
    NoSuchSession(String),
    #[error("the handle `{0}` matches {1} sessions; give more digits")]
    Ambiguous(String, usize),
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl From<crate::store::StoreError> for AdminError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Session(e.into())
    }
}

impl Sessions {
    /// Live sessions, newest first, optionally of one user.
    pub async fn live_sessions(
        &self,
        user: Option<Uuid>,
    ) -> Result<Vec<SessionRecord>, AdminError> {
        Ok(self.store.list_sessions(user, self.now()).await?)
    }

    /// Ends sessions at once for every instance sharing the store; their refresh tokens
    /// are revoked at the provider when it offers RFC 7009 (best effort; `All` skips
    /// that, it may be many). Returns how many sessions ended.
    pub async fn revoke_sessions(&self, which: &Revoke) -> Result<u64, AdminError> {
        let records = match which {
            Revoke::All => {
                let ended = self.store.delete_all_sessions().await?;
                tracing::warn!(ended, "every session revoked by an administrator");
                return Ok(ended);
            }
            Revoke::User(user) => self.live_sessions(Some(*user)).await?,
            Revoke::Handle(handle) => {
                let handle = handle.to_ascii_lowercase();
                if !(8..=64).contains(&handle.len())
                    || !handle.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(AdminError::BadHandle(handle));
                }
                let found: Vec<SessionRecord> = self
                    .live_sessions(None)
                    .await?
                    .into_iter()
                    .filter(|r| r.id_hash.as_str().starts_with(&handle))
                    .collect();
                match found.len() {
                    0 => return Err(AdminError::NoSuchSession(handle)),
                    1 => found,
                    n => return Err(AdminError::Ambiguous(handle, n)),
                }
            }
        };
        let mut ended = 0;
        for record in &records {
            let tokens = self.session_tokens(record).ok();
            let refresh = tokens.as_ref().and_then(|t| t.refresh_token.as_deref());
            self.end_session_and_revoke(record, refresh.map(|s| s.as_str()))
                .await?;
            tracing::warn!(session = record.id_hash.short(), user = %record.user.id, "session revoked by an administrator");
            ended += 1;
        }
        Ok(ended)
    }
}
