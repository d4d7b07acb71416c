//! Refreshing a session's tokens (docs/sessions.md "Refresh"; docs/security.md
//! F01–F05).
//!
//! - **When**: the access token is within `min(refresh_before, lifetime / 2)` of expiry.
//! - **Single flight**: requests of one session queue on an in-process lock (bounded
//!   in count and time), then the winner takes the store's lease so that instances
//!   sharing a store refresh once too. Whoever waited re-reads the session and finds
//!   the result; the commit is a compare-and-swap on the token version.
//! - **Cancellation**: the refresh runs in its own task, on the runtime the session
//!   service was made on (not a serving thread's). A browser that disconnects cannot
//!   abandon a refresh token the provider has already rotated.
//! - **Failures**: `invalid_grant` ends the session. Anything else keeps it: the request
//!   is served while the access token is valid, else answered 503 with `Retry-After`. A
//!   breaker spaces attempts after a provider-wide failure (unreachable, timeout, 5xx,
//!   "slow down", our client refused: 1 s, 2 s, … 30 s) and lets one probe through at a
//!   time, so an outage is not met with a storm of refreshes. An answer that is too
//!   large or malformed pauses only its own session on the same schedule.
//! - **Identity**: a refreshed ID token must name the same `sub` and `iss` for the same
//!   `aud` (else the session ends), and the access rules are applied again.
//! - **Rotation**: every refresh gives the session a new id (see `lookup` for the grace
//!   window and the theft rule).

mod commit;
mod flight;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::UnixTime;
use crate::random::random_token;
use crate::session::id::SessionId;
use crate::session::service::Sessions;
use crate::session::{SessionError, handover};
use crate::store::{IdMatch, LEASE_RENEW_EVERY, LEASE_SECONDS, SessionRecord, TokenSet};

pub(crate) use flight::Refreshes;
use flight::{Ticket, keeps_session, opens_breaker};

/// Requests of one session that may wait for its refresh; more get the stale answer.
pub const MAX_WAITERS: usize = 256;

/// How long a request waits for another's refresh of its session.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often an instance waiting for another instance's refresh looks at the store.
const POLL: Duration = Duration::from_millis(100);

/// A session as one request sees it: the record, the id that is current, and whether
/// the browser must be given that id (it presented an older one, or a refresh rotated it).
#[derive(Debug, Clone)]
pub struct Fresh {
    pub record: SessionRecord,
    pub current: SessionId,
    pub rotated: bool,
    /// A lost rotation: the id the browser still holds (the previous one) while the
    /// current id never reached it (a proxy that drops `Set-Cookie`,
    /// docs/forward-auth.md "Lost rotations"). The next rotation keeps it as the
    /// previous id.
    pub lost: Option<SessionId>,
}

impl Sessions {
    /// Whether the access token is close enough to expiry to refresh now.
    pub(crate) fn refresh_due(&self, tokens: &TokenSet, now: UnixTime) -> bool {
        let (Some(_), Some(expires)) = (&tokens.refresh_token, tokens.access_expires_at) else {
            return false;
        };
        let before = self.config.session.refresh_before.as_secs() as i64;
        let window = match tokens.access_issued_at {
            Some(issued) => before.min((expires - issued).max(0) / 2),
            None => before,
        };
        now >= expires - window
    }

    /// Refreshes the session if its access token is due; `Ok(None)` when the session
    /// ended on the way.
    pub(crate) async fn refresh_if_due(
        self: &Arc<Self>,
        fresh: Fresh,
    ) -> Result<Option<Fresh>, SessionError> {
        if !self.refresh_due(&fresh.record.tokens, self.now()) {
            return Ok(Some(fresh));
        }
        let Some(ticket) = Refreshes::join(self, fresh.record.family_id) else {
            tracing::warn!(
                session = fresh.record.id_hash.short(),
                "too many requests are waiting for this session's refresh"
            );
            return self.serve_stale(fresh, 1);
        };
        let sessions = self.clone();
        let refresh = async move { sessions.refresh_in_flight(fresh, ticket).await };
        let task = match &self.runtime {
            Some(runtime) => runtime.spawn(refresh),
            None => tokio::spawn(refresh),
        };
        match task.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "a refresh task failed");
                Err(SessionError::RefreshUnavailable { retry_after: 1 })
            }
        }
    }

    /// The answer when no refresh happens now: serve while the access token is valid,
    /// else ask the client to come back.
    fn serve_stale(&self, fresh: Fresh, retry_after: u64) -> Result<Option<Fresh>, SessionError> {
        let valid = fresh
            .record
            .tokens
            .access_expires_at
            .is_some_and(|e| self.now() < e);
        if valid {
            Ok(Some(fresh))
        } else {
            Err(SessionError::RefreshUnavailable {
                retry_after: retry_after.max(1),
            })
        }
    }

    /// Reads the session again by the id that was current; follows a rotation made
    /// meanwhile.
    async fn reload(&self, fresh: Fresh) -> Result<Option<Fresh>, SessionError> {
        // After a lost rotation the unseen current id may be gone: the browser's id finds
        // the session.
        let held = fresh.lost.clone().unwrap_or_else(|| fresh.current.clone());
        let Some(record) = self.store.get_session_fresh(&held.hash()).await? else {
            return Ok(None);
        };
        if record.matched == IdMatch::Current {
            return Ok(Some(Fresh {
                record,
                lost: None,
                ..fresh
            }));
        }
        let next = record
            .previous_handover
            .as_deref()
            .and_then(|h| handover::open(&held, h));
        let lost = fresh.lost.filter(|_| !record.current_seen);
        Ok(next.map(|current| Fresh {
            record,
            current,
            rotated: true,
            lost,
        }))
    }

    async fn refresh_in_flight(
        self: Arc<Self>,
        fresh: Fresh,
        ticket: Ticket,
    ) -> Result<Option<Fresh>, SessionError> {
        let Ok(_turn) = tokio::time::timeout(WAIT, ticket.lock.clone().lock_owned()).await else {
            return self.serve_stale(fresh, 1);
        };
        // Another request may have refreshed while this one waited.
        let Some(fresh) = self.reload(fresh).await? else {
            return Ok(None);
        };
        if !self.refresh_due(&fresh.record.tokens, self.now()) {
            return Ok(Some(fresh));
        }
        let result = self.refresh_under_lease(fresh).await;
        drop(ticket);
        result
    }

    /// Takes the store lease (another instance may hold it: then waits for its result).
    async fn refresh_under_lease(&self, mut fresh: Fresh) -> Result<Option<Fresh>, SessionError> {
        let key = format!("refresh:{}", fresh.record.family_id);
        let holder = random_token();
        let version = fresh.record.token_version;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.now();
            if self
                .store
                .acquire_lease(&key, &holder, now, now + LEASE_SECONDS)
                .await?
            {
                let result = self
                    .renewing_lease(&key, &holder, self.refresh_with_lease(fresh, version))
                    .await;
                if let Err(e) = self.store.release_lease(&key, &holder).await {
                    tracing::warn!(error = %e, "could not release a refresh lease; it expires by itself");
                }
                return result;
            }
            if tokio::time::Instant::now() >= deadline {
                return self.serve_stale(fresh, 1);
            }
            tokio::time::sleep(POLL).await;
            let Some(next) = self.reload(fresh).await? else {
                return Ok(None);
            };
            fresh = next;
            if fresh.record.token_version != version
                || !self.refresh_due(&fresh.record.tokens, self.now())
            {
                return Ok(Some(fresh));
            }
        }
    }

    /// Runs `work` while renewing the lease every 2 s (compare-and-extend), so that a
    /// slow but live holder keeps it and a dead one loses it within [`LEASE_SECONDS`]
    /// (M03). A lost lease is only logged: the commit's compare-and-swap on the token
    /// version is the fence that keeps a late holder from overwriting a newer result.
    async fn renewing_lease<T>(
        &self,
        key: &str,
        holder: &str,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        let start = tokio::time::Instant::now() + LEASE_RENEW_EVERY;
        let mut renew = tokio::time::interval_at(start, LEASE_RENEW_EVERY);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = renew.tick() => {
                    let now = self.now();
                    match self.store.renew_lease(key, holder, now, now + LEASE_SECONDS).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(
                            "a refresh lease was lost while the provider was slow; the token version decides who commits"
                        ),
                        Err(e) => tracing::warn!(error = %e, "could not renew a refresh lease"),
                    }
                }
            }
        }
    }

    /// Holding the lease: reads the session once more (another instance may have
    /// committed between our read and our lease: its refresh token is then the live
    /// one), and refreshes only if nothing changed.
    async fn refresh_with_lease(
        &self,
        fresh: Fresh,
        version: i64,
    ) -> Result<Option<Fresh>, SessionError> {
        let Some(fresh) = self.reload(fresh).await? else {
            return Ok(None);
        };
        if fresh.record.token_version != version
            || !self.refresh_due(&fresh.record.tokens, self.now())
        {
            return Ok(Some(fresh));
        }
        self.refresh_now(fresh).await
    }

    /// Calls the provider, holding the lease.
    async fn refresh_now(&self, fresh: Fresh) -> Result<Option<Fresh>, SessionError> {
        let now = self.now();
        let family = fresh.record.family_id;
        if let Some(seconds) = self.refreshes.session_pause(family, now) {
            return self.serve_stale(fresh, seconds);
        }
        let permit = match self.refreshes.admit(now) {
            Ok(permit) => permit,
            Err(seconds) => return self.serve_stale(fresh, seconds),
        };
        let Ok(tokens) = self.session_tokens(&fresh.record) else {
            drop(permit);
            // G08: absent for this request, never deleted here: an instance whose ring
            // opens it may still serve it (it expires by itself otherwise).
            tracing::warn!(
                session = fresh.record.id_hash.short(),
                "a session's tokens do not open with this key ring; treated as signed out"
            );
            return Ok(None);
        };
        let Some(refresh_token) = tokens.refresh_token.as_deref() else {
            return Ok(Some(fresh));
        };
        // (An error drops the permit unsettled: the breaker's probe, if it was one, ends.)
        let provider = self.session_provider(&fresh.record)?;
        let dpop = self
            .dpop_key_if(provider.settings().dpop || tokens.access_token_bound)
            .await?;
        match provider.refresh(refresh_token, dpop.as_deref()).await {
            Ok(answer) => {
                permit.settle(self.now(), false);
                // Counted in `commit_refresh` once the outcome is known.
                self.refreshes.clear_pause(family);
                self.commit_refresh(fresh, &tokens, answer).await
            }
            Err(e) if !keeps_session(&e) => {
                // F02: the grant is refused (`invalid_grant`, or another OAuth error about
                // it); so is the session. No retry. Unless a rotation was committed
                // meanwhile, which this refusal says nothing about.
                permit.settle(self.now(), false);
                // Only the version this refusal is about is ended: a session gone or
                // rotated meanwhile (an instance whose lease outlived ours) is left be.
                match self.reload(fresh.clone()).await? {
                    Some(latest) if latest.record.token_version == fresh.record.token_version => {}
                    Some(latest) => return Ok(Some(latest)),
                    None => return Ok(None),
                }
                crate::metrics::refresh(provider.id(), "invalid_grant");
                self.store.delete_session(fresh.record.family_id).await?;
                tracing::info!(
                    session = fresh.record.id_hash.short(),
                    user = %fresh.record.user.id,
                    error = e.code(),
                    detail = %e,
                    "the provider refused the refresh token; the session ended"
                );
                Ok(None)
            }
            Err(e) => {
                // F05: an outage or a fault of the provider keeps the session.
                crate::metrics::refresh(provider.id(), "outage");
                let provider_wide = opens_breaker(&e);
                permit.settle(self.now(), provider_wide);
                tracing::warn!(
                    session = fresh.record.id_hash.short(),
                    error = %e,
                    code = e.code(),
                    provider_wide,
                    "refresh failed; the session is kept"
                );
                let retry = if provider_wide {
                    self.refreshes.retry_after(self.now())
                } else {
                    self.refreshes.pause_session(family, self.now())
                };
                self.serve_stale(fresh, retry)
            }
        }
    }
}
