//! Finding the session behind a cookie: the rotated-away id and its grace window, the
//! theft rule (docs/security.md F06), refresh when due (`refresh`), and the lifetimes:
//! the idle timeout (sliding, touched coarsely so that not every request writes) and
//! the absolute lifetime (S07).

use std::sync::Arc;

use uuid::Uuid;

use super::SessionError;
use super::handover;
use super::id::SessionId;
use super::refresh::Fresh;
use super::service::Sessions;
use crate::clock::UnixTime;
use crate::store::{IdMatch, SessionRecord, User};

/// A live session and its user.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    pub family_id: Uuid,
    pub user: User,
    pub expires_at: UnixTime,
    pub record: SessionRecord,
    /// The id the browser must hold from now on, when it is not the one it presented
    /// (it presented a rotated-away id, or this request rotated it). Every response to
    /// this request carries it as the session cookie.
    pub new_cookie: Option<SessionId>,
    /// The cookie's `Max-Age`: the time left until the session ends at the latest.
    pub max_age: i64,
}

/// The theft rule (F06): the id presented is a rotated-away one, its grace window is
/// over, and the new id has been used since. Inside the window, or while the new id
/// was never seen (its `Set-Cookie` was lost), it is the owner catching up.
pub(crate) fn is_stolen_copy(record: &SessionRecord, now: UnixTime) -> bool {
    let past_grace = record.previous_valid_until.is_none_or(|until| now >= until);
    record.matched == IdMatch::Previous && record.current_seen && past_grace
}

/// Whether this lookup must be decided on the store rather than on a cached copy: the
/// session's lifetime looks over, or a rotated-away id was presented (the theft rule
/// reads `current_seen`, which another instance may have just set; rare, so always).
fn ends_here(record: &SessionRecord, now: UnixTime) -> bool {
    now >= record.expires_at() || record.matched == IdMatch::Previous
}

impl Sessions {
    /// The live session for a cookie value, refreshed if its access token is due, or
    /// `None`. Ended sessions are deleted.
    pub async fn authenticate(
        self: &Arc<Self>,
        cookie_value: &str,
    ) -> Result<Option<ActiveSession>, SessionError> {
        // R06: anything not shaped like our ids never reaches the store.
        let Some(presented) = SessionId::parse(cookie_value) else {
            return Ok(None);
        };
        let now = self.now();
        let Some(record) = self.live_record(&presented.hash(), now).await? else {
            return Ok(None);
        };
        let presented_current = record.matched == IdMatch::Current;
        let fresh = if presented_current {
            Fresh {
                record,
                current: presented,
                rotated: false,
                lost: None,
            }
        } else {
            match self.rotated_away(record, &presented, now).await? {
                Some(fresh) => fresh,
                None => return Ok(None),
            }
        };
        let Some(Fresh {
            record,
            current,
            rotated,
            ..
        }) = self.refresh_if_due(fresh).await?
        else {
            return Ok(None);
        };

        // The current id counts as seen only when this request presented it and it is
        // still current (the theft rule depends on it).
        // (The record's hash is the presented one then: no second SHA-256 per request.)
        let seen = (presented_current && !rotated).then(|| record.id_hash.clone());
        self.touch_if_due(&record, seen.as_ref(), now).await?;
        let expires_at = record
            .tokens
            .refresh_expires_at
            .map_or(record.absolute_expires_at, |r| {
                r.min(record.absolute_expires_at)
            });
        Ok(Some(ActiveSession {
            family_id: record.family_id,
            user: record.user.clone(),
            expires_at,
            max_age: (expires_at - now).max(0),
            new_cookie: rotated.then_some(current),
            record,
        }))
    }

    /// The stored session behind `hash` while it lives (G08: one this ring cannot open
    /// is absent here and left in the store); one past its lifetime is ended.
    async fn live_record(
        &self,
        hash: &super::IdHash,
        now: crate::clock::UnixTime,
    ) -> Result<Option<SessionRecord>, SessionError> {
        let Some(mut record) = self.store.get_session(hash).await? else {
            return Ok(None);
        };
        // G08: a session sealed under a key this ring lacks (a new secret, or an
        // instance on another ring during a change) is absent here — a sign-in — and
        // never ended by this instance: one with that key may still read it.
        if !self.ring_holds_keys_of(&record) {
            tracing::info!(
                session = record.id_hash.short(),
                "a session sealed under a key this key ring lacks is treated as signed out (and left in the store)"
            );
            return Ok(None);
        }
        // A session of a provider no longer configured ends here: nothing could refresh,
        // revoke or end it at its provider.
        if self.providers.get(&record.provider_id).is_none() {
            self.store.delete_session(record.family_id).await?;
            tracing::info!(
                session = record.id_hash.short(),
                provider = record.provider_id.as_str(),
                "session of a provider no longer configured ended"
            );
            return Ok(None);
        }
        // A decision that ends a session stands on the store, never on a cached copy
        // (another instance may have moved the idle deadline or seen the new id).
        if ends_here(&record, now) {
            let Some(stored) = self.store.get_session_fresh(hash).await? else {
                return Ok(None);
            };
            record = stored;
        }
        if now >= record.expires_at() {
            self.store.delete_session(record.family_id).await?;
            tracing::info!(
                session = record.id_hash.short(),
                "session ended by its lifetime"
            );
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Moves the idle deadline (at most every min(60 s, idle/10), so that it is exact to
    /// that granularity without a write per request) and marks the current id seen.
    async fn touch_if_due(
        &self,
        record: &SessionRecord,
        seen: Option<&super::IdHash>,
        now: crate::clock::UnixTime,
    ) -> Result<(), SessionError> {
        let idle = self.config.session.idle_timeout.as_secs() as i64;
        // Touch at most every min(60 s, idle/10): the idle deadline is then exact to
        // that granularity without a write per request.
        let granularity = (idle / 10).clamp(1, 60);
        if now - record.last_seen_at >= granularity || (seen.is_some() && !record.current_seen) {
            self.store
                .touch_session(record.family_id, now, now + idle, seen)
                .await?;
        }
        Ok(())
    }

    /// A rotated-away id was presented. Inside the grace window, or while the new id
    /// has never been seen (its `Set-Cookie` was lost), the browser is given the new
    /// id. After the window, once the new id is in use, someone holds a stale copy of
    /// the cookie: the whole session family is revoked (F06).
    async fn rotated_away(
        &self,
        record: SessionRecord,
        presented: &SessionId,
        now: UnixTime,
    ) -> Result<Option<Fresh>, SessionError> {
        let Some(current) = record
            .previous_handover
            .as_deref()
            .and_then(|h| handover::open(presented, h))
        else {
            tracing::warn!(
                session = record.id_hash.short(),
                "a rotated-away session id has no handover this id opens"
            );
            return Ok(None);
        };
        if !is_stolen_copy(&record, now) {
            // The current id was never seen: the browser never received it, and keeps
            // the one it presented through the next rotation too.
            let lost = (!record.current_seen).then(|| presented.clone());
            return Ok(Some(Fresh {
                record,
                current,
                rotated: true,
                lost,
            }));
        }
        self.security_event(
            "session_id_reuse",
            &record,
            "a rotated-away session id came back after its grace window while the new one is in use; the session is revoked",
        );
        let tokens = self.session_tokens(&record).ok();
        let refresh = tokens.as_ref().and_then(|t| t.refresh_token.as_deref());
        self.end_session_and_revoke(&record, refresh.map(|s| s.as_str()))
            .await?;
        Ok(None)
    }

    /// The access token to relay to the upstream for `method` `path` (the decided
    /// one): only while it is valid (a session without a refresh token keeps living
    /// after it expires, but relays nothing). A DPoP-bound token goes with the `DPoP`
    /// scheme and a proof for this request (`htu` = the public origin + `path`, `htm`,
    /// `ath`, the upstream's latest nonce), never as `Bearer` (RFC 9449 §7.1).
    pub async fn relay(
        &self,
        record: &SessionRecord,
        method: &str,
        path: &str,
    ) -> Result<Option<Relay>, SessionError> {
        let now = self.now();
        if record.tokens.access_expires_at.is_some_and(|e| now >= e) {
            return Ok(None);
        }
        let Ok(tokens) = self.session_tokens(record) else {
            return Ok(None);
        };
        let Some(token) = tokens.access_token else {
            return Ok(None);
        };
        if !tokens.access_token_bound {
            if self
                .session_provider(record)
                .is_ok_and(|p| p.settings().dpop)
            {
                // Bound before DPoP was turned on: never relayed unbound (a sign-in
                // gives a bound one).
                return Ok(None);
            }
            return Ok(Some(Relay {
                authorization: zeroize::Zeroizing::new(format!("Bearer {}", token.as_str())),
                proof: None,
            }));
        }
        // The proof's `iat` is the real time, as the upstream's clock reads it.
        let proof = self
            .relay_proof(
                method,
                path,
                &token,
                crate::clock::Clock::now(&crate::clock::SystemClock),
            )
            .await?;
        Ok(Some(Relay {
            authorization: zeroize::Zeroizing::new(format!("DPoP {}", token.as_str())),
            proof: Some(proof),
        }))
    }

    /// Logs and counts a security event about a session (stable `event` names are
    /// listed in `docs/sessions.md`).
    pub(crate) fn security_event(&self, event: &'static str, record: &SessionRecord, what: &str) {
        self.events.count(event);
        tracing::warn!(
            event,
            session = record.id_hash.short(),
            user = %record.user.id,
            "security event: {what}"
        );
    }

    /// Ends the session behind a cookie value, if any. Failures are logged, not raised:
    /// callers use this when a session is being replaced.
    pub async fn end_session_by_id(&self, id: &SessionId) {
        match self.store.get_session_fresh(&id.hash()).await {
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

/// What a relayed request carries: `Authorization`, and `DPoP` for a bound token.
pub struct Relay {
    pub authorization: zeroize::Zeroizing<String>,
    pub proof: Option<String>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("dpop", &self.proof.is_some())
            .finish_non_exhaustive()
    }
}

/// A session's provider tokens, opened. Zeroized on drop; never logged.
pub struct OpenTokens {
    pub refresh_token: Option<zeroize::Zeroizing<String>>,
    pub access_token: Option<zeroize::Zeroizing<String>>,
    /// Whether the access token is bound to the gateway's DPoP key.
    pub access_token_bound: bool,
    pub id_token: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for OpenTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenTokens(<redacted>)")
    }
}

impl Sessions {
    /// Whether this instance's ring holds the key of every token the session keeps.
    pub(crate) fn ring_holds_keys_of(&self, record: &SessionRecord) -> bool {
        let keys = self.keys();
        [
            &record.tokens.refresh_token,
            &record.tokens.access_token,
            &record.tokens.id_token,
        ]
        .into_iter()
        .flatten()
        .all(|sealed| keys.holds_key_of(sealed))
    }

    /// Opens a session's sealed tokens. Each is bound to this session's id hash and its
    /// field name, so ciphertexts moved between sessions or fields fail (S08).
    pub fn session_tokens(&self, record: &SessionRecord) -> Result<OpenTokens, SessionError> {
        let open = |field: &str, sealed: &Option<super::Sealed>| {
            sealed
                .as_ref()
                .map(|s| {
                    self.keys()
                        .open_str(s, &super::login::token_context(&record.id_hash, field))
                        .map_err(|_| SessionError::Unsealable)
                })
                .transpose()
        };
        let access =
            open("access", &record.tokens.access_token)?.map(super::dpop::read_access_token);
        let access_token_bound = access.as_ref().is_some_and(|(_, bound)| *bound);
        Ok(OpenTokens {
            refresh_token: open("refresh", &record.tokens.refresh_token)?,
            access_token: access.map(|(token, _)| token),
            access_token_bound,
            id_token: open("id", &record.tokens.id_token)?,
        })
    }
}

#[cfg(test)]
mod tests;
