//! The refresh queue of each session, the breaker that spaces attempts while the
//! provider fails, and the pauses of sessions whose own answers were faulty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::MAX_WAITERS;
use crate::clock::UnixTime;
use crate::provider::ProviderError;
use crate::session::service::Sessions;

/// The longest pause between refresh attempts while the provider fails.
const BREAKER_MAX_SECONDS: i64 = 30;

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
pub(super) struct Permit<'a> {
    refreshes: &'a Refreshes,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    /// The provider answered (`failed`: with an outage-like failure).
    pub(super) fn settle(mut self, now: UnixTime, failed: bool) {
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
pub(super) fn keeps_session(e: &ProviderError) -> bool {
    match e {
        ProviderError::TokenRejected(code) => {
            code.starts_with("http_")
                || matches!(
                    code.as_str(),
                    "temporarily_unavailable"
                        | "slow_down"
                        | "invalid_client"
                        | "unauthorized_client"
                        // DPoP trouble says nothing about the grant (RFC 9449 §8).
                        | "use_dpop_nonce"
                        | "invalid_dpop_proof"
                )
        }
        ProviderError::BadResponse(_)
        | ProviderError::NotFapi2(_)
        | ProviderError::DpopProof(_)
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
pub(super) fn opens_breaker(e: &ProviderError) -> bool {
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
pub(super) struct Ticket {
    sessions: Arc<Sessions>,
    family: Uuid,
    pub(super) lock: Arc<tokio::sync::Mutex<()>>,
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
    pub(super) fn join(sessions: &Arc<Sessions>, family: Uuid) -> Option<Ticket> {
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
    pub(super) fn admit(&self, now: UnixTime) -> Result<Permit<'_>, u64> {
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
    pub(super) fn retry_after(&self, now: UnixTime) -> u64 {
        let b = lock(&self.breaker);
        (b.open_until - now).max(1) as u64
    }

    /// Seconds this session still waits after its own faulty answers, if any.
    pub(super) fn session_pause(&self, family: Uuid, now: UnixTime) -> Option<u64> {
        let paused = lock(&self.paused);
        let until = paused.get(&family)?.until;
        (now < until).then(|| (until - now) as u64)
    }

    /// Pauses one session after a faulty answer about it; the seconds to wait.
    pub(super) fn pause_session(&self, family: Uuid, now: UnixTime) -> u64 {
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

    pub(super) fn clear_pause(&self, family: Uuid) {
        lock(&self.paused).remove(&family);
    }
}
