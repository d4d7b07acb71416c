//! The change feed (docs/deployment.md "Several instances"): every store write that ends or
//! changes a session announces the session's family and id hashes, so that caches and
//! open tunnels on every instance learn of it within a second (M01, S09, W02).
//!
//! Each backend carries the messages its own way — PostgreSQL `NOTIFY` inside the
//! writing transaction, Redis `PUBLISH` inside the writing script, SQLite in-process
//! plus a poll for writes by other processes — and hands them to one [`ChangeFeed`].
//! Anything that may have been missed (a reconnect, a lagging subscriber, a write by
//! another process on SQLite) arrives as [`FeedEvent::Reset`]: drop everything cached.
//!
//! Liveness: each instance sends itself a heartbeat through the feed every 250 ms; the
//! feed counts as live only while the last one came back less than a second ago.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::broadcast;
use uuid::Uuid;

use crate::store::id::IdHash;

/// How often an instance sends itself a heartbeat through the feed.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

/// The feed is live only while its last heartbeat came back within this.
pub const LIVE_WITHIN: Duration = Duration::from_secs(1);

/// Another instance's key ring counts as running while its heartbeats came within this.
pub const RINGS_HEARD_WITHIN: Duration = Duration::from_secs(3);

/// Messages a slow subscriber may fall behind before it is told to reset.
const BACKLOG: usize = 4096;

/// One session changed or ended: its family and every id hash it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChange {
    pub family_id: Uuid,
    pub id_hashes: Vec<IdHash>,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    Changed(SessionChange),
    /// A user's profile (email, name, whether the email is verified) changed: every
    /// cached session of the user is stale (G09).
    UserChanged(Uuid),
    /// Something may have been missed: forget everything learnt from the store.
    Reset,
    /// Our own heartbeat, sent at this instant of [`ChangeFeed::now_ms`]: every message
    /// before it has been delivered to this subscriber (a cache knows how current it is).
    Heartbeat {
        sent_ms: u64,
    },
}

/// A message as it travels through PostgreSQL or Redis: one line of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireMessage {
    Changed(SessionChange),
    UserChanged(Uuid),
    /// Every session ended (`sessions revoke --all`).
    AllEnded,
    Heartbeat {
        origin: String,
        sent_ms: u64,
        /// The sending instance's key ring (its sealing key's public id), when it says.
        ring: Option<String>,
    },
}

impl WireMessage {
    /// `s <family> <hash>…`, `u <user>`, `a`, or `h <origin> <sent ms>`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut words = text.split(' ');
        match words.next()? {
            "s" => {
                let family_id = Uuid::parse_str(words.next()?).ok()?;
                let id_hashes = words
                    .filter(|w| !w.is_empty())
                    .map(|w| IdHash::from_stored(w.to_owned()))
                    .collect();
                Some(Self::Changed(SessionChange {
                    family_id,
                    id_hashes,
                }))
            }
            "u" => {
                let user = Uuid::parse_str(words.next()?).ok()?;
                words.next().is_none().then_some(Self::UserChanged(user))
            }
            "a" => Some(Self::AllEnded),
            "h" => Some(Self::Heartbeat {
                origin: words.next()?.to_owned(),
                sent_ms: words.next()?.parse().ok()?,
                ring: words.next().map(str::to_owned),
            }),
            _ => None,
        }
    }

    pub(crate) fn heartbeat(origin: &str, sent_ms: u64, ring: &str) -> String {
        if ring.is_empty() {
            format!("h {origin} {sent_ms}")
        } else {
            format!("h {origin} {sent_ms} {ring}")
        }
    }
}

/// A change message in wire form, as the SQL and Lua of the backends build it (their
/// tests compare against it).
#[cfg(test)]
pub(crate) fn changed_text(family_id: Uuid, hashes: &[&IdHash]) -> String {
    let mut text = format!("s {family_id}");
    for h in hashes {
        text.push(' ');
        text.push_str(h.as_str());
    }
    text
}

/// The feed of one store handle: subscribers, liveness and this instance's origin.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sender: broadcast::Sender<FeedEvent>,
    /// Names this instance's heartbeats (and, on SQLite, its writes).
    origin: String,
    started: Instant,
    /// When (milliseconds after `started`) the latest of our own heartbeats that came
    /// back was *sent*; 0: never. A backlog delays it, so a slow feed is not live.
    last_heartbeat_ms: AtomicU64,
    /// A feed whose liveness is not measured (SQLite: in-process, always live).
    always_live: AtomicBool,
    /// How often the feed came back to life after not being live: what was withheld
    /// meanwhile may not have been processed yet, so a cache starts over.
    revivals: AtomicU64,
    /// When (feed clock) the first of our own heartbeats came back; 0: never.
    first_live_ms: AtomicU64,
    /// This instance's key ring, as its heartbeats name it (G08).
    ring: std::sync::RwLock<String>,
    /// Other instances' key rings and when (feed clock) a heartbeat last named them.
    rings_heard: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl ChangeFeed {
    /// A feed whose liveness comes from heartbeats.
    pub(crate) fn new() -> Self {
        let (sender, _) = broadcast::channel(BACKLOG);
        Self {
            inner: Arc::new(Inner {
                sender,
                origin: crate::random::random_token()[..16].to_owned(),
                started: Instant::now(),
                last_heartbeat_ms: AtomicU64::new(0),
                always_live: AtomicBool::new(false),
                revivals: AtomicU64::new(0),
                first_live_ms: AtomicU64::new(0),
                ring: std::sync::RwLock::new(String::new()),
                rings_heard: std::sync::Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    /// A feed that is delivered in-process and therefore always live.
    pub(crate) fn in_process() -> Self {
        let feed = Self::new();
        feed.inner.always_live.store(true, Ordering::Relaxed);
        feed
    }

    /// Receives every message published after this call.
    pub fn subscribe(&self) -> FeedSubscription {
        FeedSubscription {
            receiver: self.inner.sender.subscribe(),
        }
    }

    /// Whether messages are known to arrive right now (the heartbeat came back within
    /// [`LIVE_WITHIN`]). A cache that trusts the feed must be bypassed while it is not.
    pub fn is_live(&self) -> bool {
        if self.inner.always_live.load(Ordering::Relaxed) {
            return true;
        }
        let last = self.inner.last_heartbeat_ms.load(Ordering::Acquire);
        last != 0 && self.elapsed_ms().saturating_sub(last) < LIVE_WITHIN.as_millis() as u64
    }

    /// How many times the feed became live again after it was not: a cache that saw
    /// this number change must forget what it holds (messages withheld while the feed
    /// was silent may still be on their way to it).
    pub fn revivals(&self) -> u64 {
        self.inner.revivals.load(Ordering::Acquire)
    }

    /// This instance's name in heartbeats and, on SQLite, in the write log.
    pub(crate) fn origin(&self) -> &str {
        &self.inner.origin
    }

    fn elapsed_ms(&self) -> u64 {
        // At least 1, so that 0 keeps meaning "never".
        (self.inner.started.elapsed().as_millis() as u64).max(1)
    }

    /// This feed's clock, in milliseconds (what heartbeats carry).
    pub fn now_ms(&self) -> u64 {
        self.elapsed_ms()
    }

    /// Whether liveness is measured by heartbeats (false: in-process, always live).
    pub fn is_measured(&self) -> bool {
        !self.inner.always_live.load(Ordering::Relaxed)
    }

    /// A heartbeat to send now, in wire form.
    pub(crate) fn heartbeat_text(&self) -> String {
        let ring = self.inner.ring.read().unwrap_or_else(|p| p.into_inner());
        WireMessage::heartbeat(&self.inner.origin, self.elapsed_ms(), &ring)
    }

    pub(crate) fn publish(&self, event: FeedEvent) {
        // No subscriber is not an error.
        let _ = self.inner.sender.send(event);
    }

    /// Delivers a message received from the backend.
    pub(crate) fn deliver(&self, message: WireMessage) {
        match message {
            WireMessage::Changed(change) => self.publish(FeedEvent::Changed(change)),
            WireMessage::UserChanged(user) => self.publish(FeedEvent::UserChanged(user)),
            WireMessage::AllEnded => self.publish(FeedEvent::Reset),
            WireMessage::Heartbeat {
                origin,
                sent_ms,
                ring,
            } => {
                if origin != self.inner.origin {
                    if let Some(ring) = ring {
                        self.heard_ring(ring);
                    }
                    return;
                }
                {
                    let _ = self.inner.first_live_ms.compare_exchange(
                        0,
                        self.elapsed_ms(),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                {
                    let was_live = self.is_live();
                    self.inner
                        .last_heartbeat_ms
                        .fetch_max(sent_ms.max(1), Ordering::AcqRel);
                    if !was_live && self.is_live() {
                        self.inner.revivals.fetch_add(1, Ordering::AcqRel);
                    }
                    self.publish(FeedEvent::Heartbeat { sent_ms });
                }
            }
        }
    }

    /// Says which key ring this instance's heartbeats name (the sealing key's public id).
    pub(crate) fn set_ring(&self, ring: &str) {
        *self.inner.ring.write().unwrap_or_else(|p| p.into_inner()) = ring.to_owned();
    }

    fn heard_ring(&self, ring: String) {
        let now = self.elapsed_ms();
        let mut heard = self
            .inner
            .rings_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if heard.len() >= 64 && !heard.contains_key(&ring) {
            heard.retain(|_, at| now.saturating_sub(*at) < RINGS_HEARD_WITHIN.as_millis() as u64);
            if heard.len() >= 64 {
                return;
            }
        }
        heard.insert(ring, now);
    }

    /// G08: whether another instance on this store runs with a key ring other than
    /// this one's (its heartbeats named one within [`RINGS_HEARD_WITHIN`]). `None` while
    /// the feed has not been live for that long (no one could have been heard yet).
    /// In-process feeds (SQLite) hear no other instance: `Some(false)`.
    pub fn another_ring_is_running(&self) -> Option<bool> {
        if !self.is_measured() {
            return Some(false);
        }
        let now = self.elapsed_ms();
        let window = RINGS_HEARD_WITHIN.as_millis() as u64;
        let first = self.inner.first_live_ms.load(Ordering::Acquire);
        if first == 0 || now.saturating_sub(first) < window || !self.is_live() {
            return None;
        }
        let own = self
            .inner
            .ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let heard = self
            .inner
            .rings_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Some(
            heard
                .iter()
                .any(|(ring, at)| *ring != own && now.saturating_sub(*at) < window),
        )
    }

    /// Delivers a raw text message; unknown text is a sign of something we do not
    /// understand on the channel, so it resets rather than being ignored.
    pub(crate) fn deliver_text(&self, text: &str) {
        match WireMessage::parse(text) {
            Some(m) => self.deliver(m),
            None => {
                tracing::warn!("an unreadable message arrived on the change feed; caches reset");
                self.publish(FeedEvent::Reset);
            }
        }
    }

    /// The connection carrying the feed dropped or came back: messages may have been
    /// lost, and the feed is not live until a heartbeat returns.
    pub(crate) fn connection_lost(&self) {
        self.inner.last_heartbeat_ms.store(0, Ordering::Release);
        self.publish(FeedEvent::Reset);
    }
}

/// One subscriber's view of the feed.
#[derive(Debug)]
pub struct FeedSubscription {
    receiver: broadcast::Receiver<FeedEvent>,
}

impl FeedSubscription {
    /// The next event; a subscriber that fell behind gets [`FeedEvent::Reset`]. `None`
    /// when the store is gone.
    pub async fn recv(&mut self) -> Option<FeedEvent> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(FeedEvent::Reset),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Aborts a backend's background tasks (feed listener, heartbeat) when the last handle
/// of the store is dropped.
#[derive(Debug, Default)]
pub(crate) struct Tasks(std::sync::Mutex<Vec<tokio::task::AbortHandle>>);

impl Tasks {
    pub(crate) fn add(&self, handle: tokio::task::AbortHandle) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in self
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_messages_round_trip() {
        let family = crate::random::new_uuid();
        let a = IdHash::from_stored("aa".into());
        let b = IdHash::from_stored("bb".into());
        assert_eq!(
            WireMessage::parse(&changed_text(family, &[&a, &b])),
            Some(WireMessage::Changed(SessionChange {
                family_id: family,
                id_hashes: vec![a, b]
            }))
        );
        assert_eq!(WireMessage::parse("a"), Some(WireMessage::AllEnded));
        assert_eq!(
            WireMessage::parse(&format!("u {family}")),
            Some(WireMessage::UserChanged(family))
        );
        assert_eq!(
            WireMessage::parse(&WireMessage::heartbeat("me", 42, "")),
            Some(WireMessage::Heartbeat {
                origin: "me".into(),
                sent_ms: 42,
                ring: None,
            })
        );
        assert_eq!(
            WireMessage::parse(&WireMessage::heartbeat("me", 42, "ab12cd34")),
            Some(WireMessage::Heartbeat {
                origin: "me".into(),
                sent_ms: 42,
                ring: Some("ab12cd34".into()),
            })
        );
        for bad in ["", "x", "s", "s not-a-uuid", "h", "h me", "h me soon"] {
            assert_eq!(WireMessage::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn liveness_follows_our_own_heartbeat_only() {
        let feed = ChangeFeed::new();
        assert!(!feed.is_live(), "never heard from: not live");
        feed.deliver(WireMessage::Heartbeat {
            origin: "someone-else".into(),
            sent_ms: feed.now_ms(),
            ring: None,
        });
        assert!(!feed.is_live());
        // Our own, but sent over a second ago (a backlog): not live either.
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        feed.deliver(WireMessage::Heartbeat {
            origin: feed.origin().to_owned(),
            sent_ms: 1,
            ring: None,
        });
        assert!(
            !feed.is_live(),
            "a heartbeat that took over a second is not liveness"
        );
        feed.deliver(WireMessage::Heartbeat {
            origin: feed.origin().to_owned(),
            sent_ms: feed.now_ms(),
            ring: None,
        });
        assert!(feed.is_live());
        let mut sub = feed.subscribe();
        feed.connection_lost();
        assert!(!feed.is_live(), "a lost connection is not live");
        assert_eq!(sub.recv().await, Some(FeedEvent::Reset));
    }

    #[tokio::test]
    async fn unreadable_messages_and_lag_reset() {
        let feed = ChangeFeed::in_process();
        let mut sub = feed.subscribe();
        feed.deliver_text("garbage");
        assert_eq!(sub.recv().await, Some(FeedEvent::Reset));
        let change = SessionChange {
            family_id: crate::random::new_uuid(),
            id_hashes: vec![],
        };
        for _ in 0..(BACKLOG + 10) {
            feed.deliver(WireMessage::Changed(change.clone()));
        }
        assert_eq!(
            sub.recv().await,
            Some(FeedEvent::Reset),
            "a lagging subscriber resets"
        );
        assert_eq!(sub.recv().await, Some(FeedEvent::Changed(change)));
    }
}
