//! Password guessing and argon2 exhaustion: sign-in attempts are counted per user and
//! per client address before any password is checked (over the rate: 429 with
//! `Retry-After`), and password checks wait in a bounded queue (full: 503), so a flood
//! of form posts can neither guess quickly nor pile up unbounded argon2 work.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use portcullis::http::limits::{ClientKey, KeyedLimiter};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Attempts a minute for one user name (a configured user: unknown names are counted
/// only against the address, so they cannot fill the table).
pub const ATTEMPTS_PER_USER_PER_MINUTE: u32 = 10;
/// Attempts a minute from one client address (IPv6: one /64).
pub const ATTEMPTS_PER_ADDRESS_PER_MINUTE: u32 = 30;
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

/// The sign-in attempt limits of one provider.
#[derive(Debug)]
pub struct Throttle {
    per_user: KeyedLimiter<String>,
    per_address: KeyedLimiter<ClientKey>,
    /// Places in the queue, running checks included.
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(
            ATTEMPTS_PER_USER_PER_MINUTE,
            ATTEMPTS_PER_ADDRESS_PER_MINUTE,
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
            per_user: KeyedLimiter::per_minute(per_user),
            per_address: KeyedLimiter::per_minute(per_address),
            admitted: Arc::new(Semaphore::new(at_once + waiting)),
            running: Arc::new(Semaphore::new(at_once)),
        }
    }

    /// Counts an attempt for `user` (a configured user name, else `None`) from `peer`.
    pub fn attempt(&self, user: Option<&str>, peer: Option<IpAddr>) -> Result<(), Refused> {
        if let Some(peer) = peer {
            self.per_address
                .check(ClientKey::of(peer))
                .map_err(Refused::TooMany)?;
        }
        if let Some(user) = user {
            self.per_user
                .check(user.to_owned())
                .map_err(Refused::TooMany)?;
        }
        Ok(())
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
    fn attempts_are_limited_per_user_and_per_address() {
        let t = Throttle::new(3, 5, 1, 1);
        let a = Some("10.0.0.1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(t.attempt(Some("alice"), a), Ok(()));
        }
        // alice is over her rate, from any address; bob is not.
        assert!(matches!(
            t.attempt(Some("alice"), Some("10.0.0.2".parse().unwrap())),
            Err(Refused::TooMany(s)) if s >= 1
        ));
        assert_eq!(t.attempt(Some("bob"), a), Ok(()));
        // The address is at 5 now (alice's refusal from .2 did not count here).
        assert!(t.attempt(None, a).is_ok());
        assert!(matches!(t.attempt(None, a), Err(Refused::TooMany(_))));
        assert!(matches!(
            t.attempt(Some("carol"), a),
            Err(Refused::TooMany(_))
        ));
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
