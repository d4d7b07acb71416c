//! Finding the session behind a cookie and enforcing its lifetimes: the idle timeout
//! (sliding, touched coarsely so that not every request writes) and the absolute
//! lifetime (SECURITY-CASES S07).

use uuid::Uuid;

use super::SessionError;
use super::id::SessionId;
use crate::clock::UnixTime;
use crate::gateway::Gateway;
use crate::store::{IdMatch, SessionRecord, User};

/// A live session and its user.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    pub family_id: Uuid,
    pub user: User,
    pub expires_at: UnixTime,
    pub record: SessionRecord,
}

impl Gateway {
    /// The live session for a cookie value, or `None`. Ended sessions are deleted.
    pub async fn authenticate(
        &self,
        cookie_value: &str,
    ) -> Result<Option<ActiveSession>, SessionError> {
        // R06: anything not shaped like our ids never reaches the store.
        let Some(id) = SessionId::parse(cookie_value) else {
            return Ok(None);
        };
        let Some(record) = self.store.get_session(&id.hash()).await? else {
            return Ok(None);
        };
        // A rotated-away id: rotation (and its grace window) arrives with refresh.
        if record.matched == IdMatch::Previous {
            return Ok(None);
        }
        let now = self.now();
        if now >= record.expires_at() {
            self.store.delete_session(record.family_id).await?;
            tracing::info!(
                session = record.id_hash.short(),
                "session ended by its lifetime"
            );
            return Ok(None);
        }
        let idle = self.config.session.idle_timeout.as_secs() as i64;
        // Touch at most every min(60 s, idle/10): the idle deadline is then exact to
        // that granularity without a write per request.
        let granularity = (idle / 10).clamp(1, 60);
        if now - record.last_seen_at >= granularity || !record.current_seen {
            self.store
                .touch_session(record.family_id, now, now + idle)
                .await?;
        }
        Ok(Some(ActiveSession {
            family_id: record.family_id,
            user: record.user.clone(),
            expires_at: record
                .tokens
                .refresh_expires_at
                .map_or(record.absolute_expires_at, |r| {
                    r.min(record.absolute_expires_at)
                }),
            record,
        }))
    }

    /// Ends the session behind a cookie value, if any. Failures are logged, not raised:
    /// callers use this when a session is being replaced.
    pub async fn end_session_by_id(&self, id: &SessionId) {
        match self.store.get_session(&id.hash()).await {
            Ok(Some(record)) => {
                if let Err(e) = self.store.delete_session(record.family_id).await {
                    tracing::warn!(error = %e, "could not delete a replaced session");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not look up a replaced session"),
        }
    }
}

/// A session's provider tokens, opened. Zeroized on drop; never logged.
pub struct OpenTokens {
    pub refresh_token: Option<zeroize::Zeroizing<String>>,
    pub access_token: Option<zeroize::Zeroizing<String>>,
    pub id_token: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for OpenTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenTokens(<redacted>)")
    }
}

impl Gateway {
    /// Opens a session's sealed tokens. Each is bound to this session's id hash and its
    /// field name, so ciphertexts moved between sessions or fields fail (S08).
    pub fn session_tokens(&self, record: &SessionRecord) -> Result<OpenTokens, SessionError> {
        let open = |field: &str, sealed: &Option<super::Sealed>| {
            sealed
                .as_ref()
                .map(|s| {
                    self.keys
                        .open_str(s, &super::login::token_context(&record.id_hash, field))
                        .map_err(|_| SessionError::Unsealable)
                })
                .transpose()
        };
        Ok(OpenTokens {
            refresh_token: open("refresh", &record.tokens.refresh_token)?,
            access_token: open("access", &record.tokens.access_token)?,
            id_token: open("id", &record.tokens.id_token)?,
        })
    }
}
