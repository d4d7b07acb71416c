//! W02: an upgraded connection (a WebSocket) lives no longer than the session that
//! opened it. The proxy holds a [`SessionEnd`] per tunnel; one task per process follows
//! the store's change feed and, when a watched session changes (logout, admin revoke,
//! back-channel logout, the theft rule, a rotation — on any instance) or the feed may
//! have missed something (a reset), reads the store and ends the watch of every session
//! that is gone. A sweep every [`SWEEP_EVERY`] catches what a silent feed would hide.
//! (The end of the session's lifetime is a local timer in the tunnel itself.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use super::id::IdHash;
use super::service::Sessions;
use crate::store::{FeedEvent, FeedSubscription};

/// How often every watched session is checked, whatever the feed says.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The sessions that open tunnels depend on.
#[derive(Debug, Default)]
pub struct Watches {
    watched: Mutex<HashMap<Uuid, Watched>>,
    started: AtomicBool,
}

#[derive(Debug)]
struct Watched {
    /// The newest id hash seen for the session (rotations move it).
    id_hash: IdHash,
    ended: watch::Sender<bool>,
}

/// Resolves when its session has ended. Dropping the last one for a session stops
/// watching it.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    ended: watch::Receiver<bool>,
    family: Uuid,
    sessions: Weak<Sessions>,
}

impl SessionEnd {
    /// Waits until the session has ended (forever if it never does).
    pub async fn ended(&mut self) {
        if self.ended.wait_for(|ended| *ended).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        let Some(sessions) = self.sessions.upgrade() else {
            return;
        };
        let mut watched = lock(&sessions.watches.watched);
        // This receiver is the last one: nobody waits for the session any more.
        if watched
            .get(&self.family)
            .is_some_and(|w| w.ended.receiver_count() <= 1)
        {
            watched.remove(&self.family);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    /// Watches the session `family` (currently found by `id_hash`) until it ends.
    pub fn watch_end(self: &Arc<Self>, family: Uuid, id_hash: IdHash) -> SessionEnd {
        self.start_watching();
        let mut watched = lock(&self.watches.watched);
        let entry = watched.entry(family).or_insert_with(|| Watched {
            id_hash,
            ended: watch::channel(false).0,
        });
        SessionEnd {
            ended: entry.ended.subscribe(),
            family,
            sessions: Arc::downgrade(self),
        }
    }

    fn start_watching(self: &Arc<Self>) {
        if self.watches.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let feed = self.store.feed().subscribe();
        let task = follow(Arc::downgrade(self), feed);
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Reads the store for a watched session (by the hashes a feed message named, then
    /// by the one last seen) and ends the watch when it is gone or over.
    async fn check_watched(&self, family: Uuid, named: &[IdHash]) {
        let Some(known) = lock(&self.watches.watched)
            .get(&family)
            .map(|w| w.id_hash.clone())
        else {
            return;
        };
        let now = self.now();
        for hash in named.iter().chain(std::iter::once(&known)) {
            match self.store.get_session_fresh(hash).await {
                Ok(Some(record)) if record.family_id == family && now < record.expires_at() => {
                    if let Some(w) = lock(&self.watches.watched).get_mut(&family) {
                        w.id_hash = record.id_hash;
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    // Cannot tell: the tunnel stays until the next message or sweep.
                    tracing::warn!(error = %e, "could not check a session with open WebSockets");
                    return;
                }
            }
        }
        if let Some(w) = lock(&self.watches.watched).remove(&family) {
            tracing::info!(
                session = known.short(),
                "session ended: closing its WebSockets"
            );
            let _ = w.ended.send(true);
        }
    }

    fn watched_families(&self) -> Vec<Uuid> {
        lock(&self.watches.watched).keys().copied().collect()
    }
}

/// The watching task: until the service or its store is gone.
async fn follow(sessions: Weak<Sessions>, mut feed: FeedSubscription) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.tick().await;
    loop {
        let event = tokio::select! {
            event = feed.recv() => event,
            _ = sweep.tick() => Some(FeedEvent::Reset),
        };
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        match event {
            None => return,
            Some(FeedEvent::Changed(change)) => {
                let watched = lock(&sessions.watches.watched).contains_key(&change.family_id);
                if watched {
                    sessions
                        .check_watched(change.family_id, &change.id_hashes)
                        .await;
                }
            }
            Some(FeedEvent::Reset) => {
                for family in sessions.watched_families() {
                    sessions.check_watched(family, &[]).await;
                }
            }
            Some(FeedEvent::Heartbeat { .. } | FeedEvent::UserChanged(_)) => {}
        }
    }
}
