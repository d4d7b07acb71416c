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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::access::{AccessDenied, access_refusals};
use super::id::SessionId;
use super::login::{MAX_PROVIDER_LIFETIME, token_context};
use super::lookup::OpenTokens;
use super::service::Sessions;
use super::{SessionError, handover};
use crate::clock::UnixTime;
use crate::provider::{IdTokenError, ProviderError, TokenResponse};
use crate::random::random_token;
use crate::store::{
    IdMatch, LEASE_RENEW_EVERY, LEASE_SECONDS, SessionRecord, TokenSet, UserProfile,
};

/// Requests of one session that may wait for its refresh; more get the stale answer.
pub const MAX_WAITERS: usize = 256;

/// How long a request waits for another's refresh of its session.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often an instance waiting for another instance's refresh looks at the store.
const POLL: Duration = Duration::from_millis(100);

/// The longest pause between refresh attempts while the provider fails.
const BREAKER_MAX_SECONDS: i64 = 30;

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

/// Refreshes in flight in this process, the breaker (provider-wide outages), and the
/// sessions whose last answer was faulty in a way that concerns them alone.
#[derive(Debug, Default)]
pub struct Refreshes {
    flights: Mutex<HashMap<Uuid, Flight>>,
    breaker: Mutex<Breaker>,
    paused: Mutex<HashMap<Uuid, Pause>>,
}

/// Sessions paused at once at most; beyond, a new pause is not remembered (its session
/// then retries at its next request, as without a pause).
const MAX_PAUSED: usize = 10_000;

/// One session's pause after faulty answers that did not open the breaker.
#[derive(Debug, Clone, Copy)]
struct Pause {
    failures: u32,
    until: UnixTime,
}

/// `1, 2, 4, … 30` seconds after 1, 2, 3, … failures in a row.
fn backoff(failures: u32) -> i64 {
    (1i64 << failures.min(6).saturating_sub(1)).min(BREAKER_MAX_SECONDS)
}

#[derive(Debug)]
struct Flight {
    lock: Arc<tokio::sync::Mutex<()>>,
    tickets: usize,
}

#[derive(Debug, Default)]
struct Breaker {
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this.
    open_until: UnixTime,
    /// An attempt after failures is under way; the others wait for its outcome.
    probing: bool,
}

/// Leave to call the provider. A probe that ends without an answer from the provider
/// (or by a panic) frees the probe slot when dropped, so the breaker cannot stick.
struct Permit<'a> {
    refreshes: &'a Refreshes,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    /// The provider answered (`failed`: with an outage-like failure).
    fn settle(mut self, now: UnixTime, failed: bool) {
        self.refreshes.settle(now, self.probe, failed);
        self.settled = true;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            lock(&self.refreshes.breaker).probing = false;
        }
    }
}

/// A provider failure that says nothing about this session's grant: the provider is
/// down, slow, overloaded, behind something that is not an OAuth server (a 4xx
/// without an OAuth error), answering garbage, or refusing *us* (a client
/// misconfiguration would otherwise sign out every user). Such failures keep the
/// session (F05); an OAuth refusal of the grant ends it.
fn keeps_session(e: &ProviderError) -> bool {
    match e {
        ProviderError::TokenRejected(code) => {
            code.starts_with("http_")
                || matches!(
                    code.as_str(),
                    "temporarily_unavailable"
                        | "slow_down"
                        | "invalid_client"
                        | "unauthorized_client"
                )
        }
        ProviderError::BadResponse(_)
        | ProviderError::TooLarge(_)
        | ProviderError::IssuerMismatch { .. } => true,
        other => other.is_transient(),
    }
}

/// Failures that would meet every session alike, and so open the breaker: the provider
/// cannot be reached or does not answer in time, answers 5xx or "slow down", or refuses
/// this client. An answer that is too large, malformed or not from an OAuth server
/// pauses only the session it was about: one user's odd answer never holds up the
/// refreshes of everyone else.
fn opens_breaker(e: &ProviderError) -> bool {
    match e {
        ProviderError::TokenRejected(code) => {
            code.starts_with("http_5")
                || matches!(
                    code.as_str(),
                    "http_429"
                        | "temporarily_unavailable"
                        | "slow_down"
                        | "server_error"
                        | "invalid_client"
                        | "unauthorized_client"
                )
        }
        other => other.is_transient(),
    }
}

/// A place in a session's refresh queue; leaving it (drop) frees the entry.
struct Ticket {
    sessions: Arc<Sessions>,
    family: Uuid,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut flights = lock(&self.sessions.refreshes.flights);
        if let Some(f) = flights.get_mut(&self.family) {
            f.tickets -= 1;
            if f.tickets == 0 {
                flights.remove(&self.family);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Refreshes {
    fn join(sessions: &Arc<Sessions>, family: Uuid) -> Option<Ticket> {
        let mut flights = lock(&sessions.refreshes.flights);
        let flight = flights.entry(family).or_insert_with(|| Flight {
            lock: Arc::default(),
            tickets: 0,
        });
        if flight.tickets >= MAX_WAITERS {
            return None;
        }
        flight.tickets += 1;
        Some(Ticket {
            sessions: sessions.clone(),
            family,
            lock: flight.lock.clone(),
        })
    }

    /// Leave to call the provider, or the seconds to wait.
    fn admit(&self, now: UnixTime) -> Result<Permit<'_>, u64> {
        let mut b = lock(&self.breaker);
        let probe = if b.failures == 0 {
            false
        } else if now < b.open_until {
            return Err((b.open_until - now) as u64);
        } else if b.probing {
            return Err(1);
        } else {
            b.probing = true;
            true
        };
        Ok(Permit {
            refreshes: self,
            probe,
            settled: false,
        })
    }

    /// Records how an admitted attempt went: `failed` for an outage-like failure.
    fn settle(&self, now: UnixTime, probe: bool, failed: bool) {
        let mut b = lock(&self.breaker);
        if probe {
            b.probing = false;
        }
        if failed {
            b.failures = b.failures.saturating_add(1);
            b.open_until = now + backoff(b.failures);
        } else {
            b.failures = 0;
        }
    }

    /// Seconds until the breaker lets an attempt through (at least 1).
    fn retry_after(&self, now: UnixTime) -> u64 {
        let b = lock(&self.breaker);
        (b.open_until - now).max(1) as u64
    }

    /// Seconds this session still waits after its own faulty answers, if any.
    fn session_pause(&self, family: Uuid, now: UnixTime) -> Option<u64> {
        let paused = lock(&self.paused);
        let until = paused.get(&family)?.until;
        (now < until).then(|| (until - now) as u64)
    }

    /// Pauses one session after a faulty answer about it; the seconds to wait.
    fn pause_session(&self, family: Uuid, now: UnixTime) -> u64 {
        let mut paused = lock(&self.paused);
        if paused.len() >= MAX_PAUSED && !paused.contains_key(&family) {
            paused.retain(|_, p| now < p.until);
        }
        let failures = paused.get(&family).map_or(0, |p| p.failures) + 1;
        let until = now + backoff(failures);
        if paused.len() < MAX_PAUSED || paused.contains_key(&family) {
            paused.insert(family, Pause { failures, until });
        }
        (until - now).max(1) as u64
    }

    fn clear_pause(&self, family: Uuid) {
        lock(&self.paused).remove(&family);
    }
}

/// Why a refreshed ID token was not accepted.
enum Refused {
    /// It names another user or client, or fails validation: the session ends.
    Identity(&'static str),
    /// It could not be checked right now (keys unreachable or unknown): keep the
    /// previous ID token and do not trust the new one.
    Unverifiable(ProviderError),
}

/// Whether a refusal stands on claims that are present (as opposed to claims that only
/// the unavailable UserInfo would have supplied).
fn conclusive(denied: &AccessDenied, claims: &Map<String, Value>) -> bool {
    match denied {
        AccessDenied::NoEmail => false,
        AccessDenied::EmailNotVerified => claims.contains_key("email_verified"),
        AccessDenied::EmailNotAllowed => true,
        AccessDenied::MissingClaim(claim) => claims.contains_key(claim),
    }
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
        match self.provider.refresh(refresh_token).await {
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
                crate::metrics::refresh("invalid_grant");
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
                crate::metrics::refresh("outage");
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

    /// Checks a refreshed ID token against the session's user and client (F04).
    async fn check_refreshed_id_token(
        &self,
        token: &str,
        record: &SessionRecord,
        now: UnixTime,
    ) -> Result<Map<String, Value>, Refused> {
        let verified = match self.provider.validate_id_token(token, None, now).await {
            Ok(v) => v,
            Err(ProviderError::IdToken(IdTokenError::UnknownKey)) => {
                return Err(Refused::Unverifiable(IdTokenError::UnknownKey.into()));
            }
            Err(ProviderError::IdToken(_)) => return Err(Refused::Identity("invalid")),
            Err(e) => return Err(Refused::Unverifiable(e)),
        };
        if verified.subject != record.user.subject {
            return Err(Refused::Identity("sub"));
        }
        if record.user.issuer != self.provider.issuer() {
            return Err(Refused::Identity("iss"));
        }
        // `aud` needs no comparison with the first ID token: validation accepts only
        // this client's id plus audiences it trusts, issued to it (`azp`) (J07).
        Ok(verified.claims)
    }

    /// Stores what the provider answered under a new session id, then applies the
    /// access rules to the user as the provider now describes them.
    async fn commit_refresh(
        &self,
        fresh: Fresh,
        old: &OpenTokens,
        answer: TokenResponse,
    ) -> Result<Option<Fresh>, SessionError> {
        let now = self.now();
        let record = &fresh.record;
        let new_claims = match answer.id_token.as_deref() {
            None => None,
            Some(token) => match self.check_refreshed_id_token(token, record, now).await {
                Ok(claims) => Some(claims),
                Err(Refused::Identity(what)) => {
                    crate::metrics::refresh("identity_changed");
                    self.security_event(
                        "refresh_identity_changed",
                        record,
                        match what {
                            "sub" => "the refreshed ID token names another subject",
                            "iss" => "the refreshed ID token comes from another issuer",
                            "aud" => "the refreshed ID token is for another audience",
                            _ => "the refreshed ID token is not valid",
                        },
                    );
                    let refresh = answer
                        .refresh_token
                        .as_deref()
                        .or(old.refresh_token.as_deref())
                        .map(|s| s.as_str());
                    self.end_session_and_revoke(record, refresh).await?;
                    return Ok(None);
                }
                Err(Refused::Unverifiable(e)) => {
                    tracing::warn!(error = %e, code = e.code(), "a refreshed ID token could not be checked now; the previous one is kept");
                    None
                }
            },
        };

        // F01: a rotated refresh token replaces the old one; none keeps the old one.
        let new_id = SessionId::generate();
        let hash = new_id.hash();
        let seal = |field: &str, value: &str| {
            Some(self.keys().seal_str(value, &token_context(&hash, field)))
        };
        let refresh_token = answer
            .refresh_token
            .as_deref()
            .or(old.refresh_token.as_deref())
            .and_then(|t| seal("refresh", t));
        let id_token = match (&new_claims, answer.id_token.as_deref()) {
            (Some(_), Some(t)) => seal("id", t),
            _ => old.id_token.as_deref().and_then(|t| seal("id", t)),
        };
        let refresh_expires_at = match (answer.refresh_expires_in, &answer.refresh_token) {
            (Some(s), _) => Some(now.saturating_add(s.min(MAX_PROVIDER_LIFETIME))),
            (None, Some(_)) => None,
            (None, None) => record.tokens.refresh_expires_at,
        };
        let tokens = TokenSet {
            refresh_token,
            access_token: seal("access", &answer.access_token),
            id_token,
            access_expires_at: answer
                .expires_in
                .map(|s| now.saturating_add(s.min(MAX_PROVIDER_LIFETIME))),
            refresh_expires_at,
            access_issued_at: Some(now),
        };
        let grace = now.saturating_add(self.config.session.rotation_grace.as_secs() as i64);
        let swapped = self
            .store
            .rotate_session_id(
                record.family_id,
                record.token_version,
                &hash,
                grace,
                // A lost rotation: the handover is for the id the browser holds.
                &handover::seal(fresh.lost.as_ref().unwrap_or(&fresh.current), &new_id),
                &tokens,
                fresh.lost.is_some(),
            )
            .await;
        match swapped {
            Ok(true) => {}
            Ok(false) => {
                crate::metrics::refresh("success");
                tracing::warn!(
                    session = record.id_hash.short(),
                    "another refresh of this session was committed first; this one's tokens are dropped"
                );
                let latest = self.reload(fresh).await?;
                if latest.is_none()
                    && let Some(rotated) = answer.refresh_token.as_deref()
                {
                    // Ended meanwhile (sign-out, back-channel, admin): the grant this
                    // refresh extended must not stay alive at the provider.
                    if let Err(e) = self.provider.revoke_refresh_token(rotated).await {
                        tracing::warn!(error = %e, code = e.code(), "could not revoke the refresh token of a session ended mid-refresh");
                    }
                }
                return Ok(latest);
            }
            Err(e) => {
                crate::metrics::refresh("outage");
                tracing::error!(
                    session = record.id_hash.short(),
                    error = %e,
                    "refreshed tokens could not be stored; the session will need a new sign-in"
                );
                return Err(e.into());
            }
        }
        tracing::info!(
            session = record.id_hash.short(),
            new_session = hash.short(),
            user = %record.user.id,
            "tokens refreshed; session id rotated"
        );
        let Some(committed) = self.store.get_session_fresh(&hash).await? else {
            // Committed, then ended meanwhile (sign-out, revocation).
            crate::metrics::refresh("success");
            return Ok(None);
        };
        let fresh = Fresh {
            record: committed,
            current: new_id,
            rotated: true,
            lost: fresh.lost,
        };
        self.recheck_access(fresh, new_claims, &answer).await
    }

    /// Access rules at refresh, on the ID token's claims and UserInfo as at sign-in.
    /// Refused: the session ends and the caller answers 403.
    async fn recheck_access(
        &self,
        mut fresh: Fresh,
        new_claims: Option<Map<String, Value>>,
        answer: &TokenResponse,
    ) -> Result<Option<Fresh>, SessionError> {
        let record = &fresh.record;
        let mut claims = new_claims
            .or_else(|| {
                self.session_tokens(record)
                    .ok()
                    .and_then(|t| t.id_token)
                    .and_then(|t| self.provider.stored_id_token_claims(&t))
            })
            .unwrap_or_default();
        let mut complete = true;
        match self
            .provider
            .userinfo(&answer.access_token, &record.user.subject)
            .await
        {
            Ok(Some(info)) => super::login::merge_userinfo(&mut claims, info),
            Ok(None) => {}
            Err(ProviderError::UserinfoSubjectMismatch) => {
                crate::metrics::refresh("identity_changed");
                self.security_event(
                    "refresh_identity_changed",
                    record,
                    "UserInfo answered for another subject after a refresh",
                );
                let tokens = self.session_tokens(record).ok();
                let refresh = tokens.as_ref().and_then(|t| t.refresh_token.as_deref());
                self.end_session_and_revoke(record, refresh.map(|s| s.as_str()))
                    .await?;
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, code = e.code(), "UserInfo failed after a refresh; the access rules see the ID token's claims only");
                complete = false;
            }
        }
        super::claims::assume_email_verified(
            &mut claims,
            self.config.provider.assume_email_verified,
        );
        let refusals = access_refusals(&self.access_rules(), &claims);
        let undecided = !complete && !refusals.is_empty();
        // Without UserInfo, refusing for a claim only UserInfo would have told us is a
        // guess: only refusals on claims at hand count (any one of them).
        let denied = refusals
            .into_iter()
            .find(|d| complete || conclusive(d, &claims));
        if denied.is_none() && undecided {
            tracing::warn!(
                session = record.id_hash.short(),
                "the access rules could not be decided without UserInfo; applied again at the next refresh"
            );
        }
        if let Some(denied) = denied {
            crate::metrics::refresh("denied");
            tracing::info!(
                session = record.id_hash.short(),
                user = %record.user.id,
                reason = denied.code(),
                "the access rules refuse this user now; the session ended"
            );
            let tokens = self.session_tokens(record).ok();
            let refresh = tokens.as_ref().and_then(|t| t.refresh_token.as_deref());
            self.end_session_and_revoke(record, refresh.map(|s| s.as_str()))
                .await?;
            return Err(denied.into());
        }
        crate::metrics::refresh("success");
        // The kept claims follow the provider too, when UserInfo answered (otherwise
        // claims only UserInfo sends, such as `groups` at some providers, would be lost).
        let mut kept = None;
        if complete {
            let (text, verified) = super::claims::kept_claims(&claims);
            match self
                .store
                .update_claims(record.family_id, &text, verified)
                .await
            {
                Ok(_) => kept = Some((text, verified)),
                Err(e) => {
                    tracing::warn!(error = %e, "could not store the user's claims after a refresh")
                }
            }
        }
        // The profile follows the provider; a claim it no longer sends keeps its value
        // (an email address it sends unverified is dropped: E01).
        let told = super::login::profile_from_claims(&claims);
        let profile = UserProfile {
            email: if claims.contains_key("email") {
                told.email
            } else {
                record.user.email.clone()
            },
            name: told.name.or_else(|| record.user.name.clone()),
        };
        if profile.email != record.user.email || profile.name != record.user.name {
            // The rotation is committed: a failed profile update must not turn this
            // answer into an error that would lose the new cookie.
            match self
                .store
                .upsert_user(
                    &record.user.issuer,
                    &record.user.subject,
                    &profile,
                    self.now(),
                )
                .await
            {
                Ok(user) => fresh.record.user = user,
                Err(e) => {
                    tracing::warn!(error = %e, "could not update the user's profile after a refresh")
                }
            }
        }
        if let Some((text, verified)) = kept {
            fresh.record.claims = text;
            fresh.record.email_verified = verified;
        }
        Ok(Some(fresh))
    }
}
