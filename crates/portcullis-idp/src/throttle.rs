//! Password guessing and argon2 exhaustion: failed sign-ins are counted per user and
//! per client address, and once either is over its limit for the minute, attempts are
//! refused before any password is checked (429 with `Retry-After`); password checks
//! wait in a bounded queue (full: 503). A flood of form posts can neither guess quickly
//! nor pile up unbounded argon2 work, and people who sign in correctly, however often
//! (demos, benchmarks, test suites), are never held up.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use portcullis::http::limits::ClientKey;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Failed sign-ins a minute for one user name (a configured user: unknown names are
/// counted only against the address, so they cannot fill the table).
pub const FAILURES_PER_USER_PER_MINUTE: u32 = 10;
/// Failed sign-ins a minute from one client address (IPv6: one /64).
pub const FAILURES_PER_ADDRESS_PER_MINUTE: u32 = 30;
/// Addresses tracked at once; past it, new ones share one count.
const MAX_ADDRESSES: usize = 100_000;
/// The counting window, seconds.
const WINDOW: i64 = 60;
/// Password checks at once (argon2 is costly by design).
pub const CHECKS_AT_ONCE: usize = 2;
/// Password checks waiting for their turn; more are refused at once.
pub const CHECKS_WAITING: usize = 32;

/// The peer address of a request, when the server recorded it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Why an attempt was not checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over a rate: retry after this many seconds.
    TooMany(u64),
    /// The queue of password checks is full.
    Busy,
}

/// Failures per key in the current minute (fixed windows), the table bounded.
#[derive(Debug)]
struct Failures<K> {
    limit: u32,
    max_keys: usize,
    /// `None`: every key past `max_keys`.
    counts: Mutex<HashMap<Option<K>, (i64, u32)>>,
}

impl<K: Hash + Eq + Clone> Failures<K> {
    fn new(limit: u32, max_keys: usize) -> Self {
        Self {
            limit,
            max_keys,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds)` while `key` is at its limit for the minute.
    fn check(&self, key: &K, now: i64) -> Result<(), u64> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts.get(&Some(key.clone())).or_else(|| {
            (counts.len() >= self.max_keys)
                .then(|| counts.get(&None))
                .flatten()
        });
        match entry {
            Some(&(start, n)) if now < start + WINDOW && n >= self.limit => {
                Err((start + WINDOW - now).max(1) as u64)
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, key: &K, now: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut slot = Some(key.clone());
        if !counts.contains_key(&slot) && counts.len() >= self.max_keys {
            counts.retain(|_, (start, _)| now < *start + WINDOW);
            if counts.len() >= self.max_keys {
                slot = None;
            }
        }
        let entry = counts.entry(slot).or_insert((now, 0));
        if now >= entry.0 + WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// The sign-in attempt limits of one provider.
#[derive(Debug)]
pub struct Throttle {
    per_user: Failures<String>,
    per_address: Failures<ClientKey>,
    /// Places in the queue, running checks included.
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(
            FAILURES_PER_USER_PER_MINUTE,
            FAILURES_PER_ADDRESS_PER_MINUTE,
            CHECKS_AT_ONCE,
            CHECKS_WAITING,
        )
    }
}

/// A password check's turn; the places are given back when dropped. Owned, so that it
/// moves into the blocking task and is held until the hashing ends, even when the
/// client went away meanwhile.
#[derive(Debug)]
pub struct Turn {
    _admitted: OwnedSemaphorePermit,
    _running: OwnedSemaphorePermit,
}

impl Throttle {
    pub fn new(per_user: u32, per_address: u32, at_once: usize, waiting: usize) -> Self {
        Self {
            per_user: Failures::new(per_user, MAX_ADDRESSES),
            per_address: Failures::new(per_address, MAX_ADDRESSES),
            admitted: Arc::new(Semaphore::new(at_once + waiting)),
            running: Arc::new(Semaphore::new(at_once)),
        }
    }

    /// Whether an attempt for `user` (a configured user name, else `None`) from `peer`
    /// may be checked at `now`: not while either has had its failures for the minute.
    pub fn attempt(
        &self,
        user: Option<&str>,
        peer: Option<IpAddr>,
        now: i64,
    ) -> Result<(), Refused> {
        if let Some(peer) = peer {
            self.per_address
                .check(&ClientKey::of(peer), now)
                .map_err(Refused::TooMany)?;
        }
        if let Some(user) = user {
            self.per_user
                .check(&user.to_owned(), now)
                .map_err(Refused::TooMany)?;
        }
        Ok(())
    }

    /// Counts a failed attempt.
    pub fn failed(&self, user: Option<&str>, peer: Option<IpAddr>, now: i64) {
        if let Some(peer) = peer {
            self.per_address.failed(&ClientKey::of(peer), now);
        }
        if let Some(user) = user {
            self.per_user.failed(&user.to_owned(), now);
        }
    }

    /// Waits for a turn to check a password, or `Busy` at once when the queue is full.
    pub async fn turn(&self) -> Result<Turn, Refused> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Busy)?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Refused::Busy)?;
        Ok(Turn {
            _admitted: admitted,
            _running: running,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_limited_per_user_and_per_address() {
        let t = Throttle::new(3, 5, 1, 1);
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        // Successes are never counted.
        for _ in 0..10 {
            assert_eq!(t.attempt(Some("alice"), a, 0), Ok(()));
        }
        for _ in 0..3 {
            assert_eq!(t.attempt(Some("alice"), a, 0), Ok(()));
            t.failed(Some("alice"), a, 0);
        }
        // alice has had her failures, from any address; bob has not.
        assert_eq!(t.attempt(Some("alice"), b, 10), Err(Refused::TooMany(50)));
        assert_eq!(t.attempt(Some("bob"), a, 10), Ok(()));
        // The address has three failures; two more and it is refused for anyone.
        t.failed(None, a, 10);
        t.failed(Some("bob"), a, 10);
        assert!(matches!(
            t.attempt(Some("carol"), a, 10),
            Err(Refused::TooMany(_))
        ));
        assert_eq!(t.attempt(Some("carol"), b, 10), Ok(()));
        // A new minute.
        assert_eq!(t.attempt(Some("alice"), a, 60), Ok(()));
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let f = Failures::<u32>::new(2, 3);
        for key in 0..10 {
            f.failed(&key, 0);
        }
        let counts = f.counts.lock().unwrap();
        assert!(counts.len() <= 4, "{}", counts.len());
        // Every key past the bound shares one count, and is refused with it.
        drop(counts);
        assert!(f.check(&9, 0).is_err());
        // Once the minute is over, old keys make room again.
        f.failed(&100, 61);
        assert!(f.counts.lock().unwrap().contains_key(&Some(100)));
    }

    #[tokio::test]
    async fn the_queue_of_password_checks_is_bounded() {
        let t = Throttle::new(100, 100, 1, 1);
        let running = t.turn().await.unwrap();
        // One waits for its turn...
        let mut waiting = Box::pin(t.turn());
        assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        // ...and the next is refused at once instead of queueing.
        let refused = futures_poll_once(Box::pin(t.turn())).await;
        assert_eq!(refused.map(|r| r.err()), Some(Some(Refused::Busy)));
        drop(running);
        assert!(waiting.await.is_ok());
        assert!(t.turn().await.is_ok());
    }

    /// Polls a future once: `None` while it is pending.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
