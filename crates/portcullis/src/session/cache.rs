//! The session cache (docs/sessions.md "The session cache"): sessions kept in the
//! process so that a signed-in request does not read the store, coherent with every
//! other instance through the store's change feed.
//!
//! - **Keys**: a session family → its record, and an id hash → its family. A hash is a
//!   hit only while the cached record still names it as its current or previous id.
//! - **Local writes** drop their family before they return (writes whose families are
//!   unknown here, such as "every session of this user", drop everything).
//! - **The fill race**: a record read from the store is inserted only if no feed
//!   message and no reset arrived since the read began. Every invalidation bumps an
//!   epoch under a write lock; an insert checks the epoch under the read lock.
//! - **Liveness**: while the feed's own heartbeat is not coming back (a dropped or a
//!   silently stalled connection), the cache is bypassed; a reset empties it.
//! - **Decisions that end a session** (expiry, the theft rule) and every read made to
//!   refresh re-read the store ([`Store::get_session_fresh`]).
//! - **Touches**: only idle-deadline touches are batched (flushed every second, off the
//!   request path); the first sighting of a rotated id is written and published at once.
//! - **Bounds**: entries and bytes: every entry weighs at least `bytes / entries`, so
//!   neither bound can be passed. Holds sealed tokens only, never an opened one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use uuid::Uuid;

use crate::clock::UnixTime;
use crate::session::id::IdHash;
use crate::store::feed::Tasks;
use crate::store::{
    ChangeFeed, FeedEvent, IdMatch, LoginTransaction, NewSession, SessionRecord, SigningKeyRecord,
    Store, StoreResult, TokenSet, TransactionLimits, User, UserProfile,
};

/// How often batched idle-deadline touches are written.
pub const TOUCH_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Touches waiting for the flush; past this, touches are written at once.
const MAX_PENDING_TOUCHES: usize = 100_000;

/// How the cache answered, counted since start (and in
/// `portcullis_session_cache_requests_total`).
#[derive(Debug)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// The feed was not live, or the lookup had to be fresh: the store answered.
    pub bypasses: AtomicU64,
    /// The series' handles (hit, miss, bypass), resolved when the cache is made.
    series: [metrics::Counter; 3],
}

impl Default for CacheStats {
    fn default() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypasses: AtomicU64::new(0),
            series: crate::metrics::CACHE_RESULTS.map(
                |result| metrics::counter!(crate::metrics::CACHE_REQUESTS, "result" => result),
            ),
        }
    }
}

impl CacheStats {
    fn count(&self, which: usize) {
        let counter = [&self.hits, &self.misses, &self.bypasses][which];
        counter.fetch_add(1, Ordering::Relaxed);
        self.series[which].increment(1);
    }

    fn hit(&self) {
        self.count(0);
    }

    fn miss(&self) {
        self.count(1);
    }

    fn bypass(&self) {
        self.count(2);
    }
}

/// Estimated bytes of a cached record: what its strings hold plus the fixed part.
fn record_bytes(r: &SessionRecord) -> u64 {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let tokens = [
        &r.tokens.refresh_token,
        &r.tokens.access_token,
        &r.tokens.id_token,
    ]
    .iter()
    .map(|t| t.as_ref().map_or(0, |s| s.as_stored().len()))
    .sum::<usize>();
    (std::mem::size_of::<SessionRecord>()
        + 2 * 64
        + opt(&r.previous_handover)
        + opt(&r.provider_sid)
        + opt(&r.user_agent)
        + r.claims.len()
        + r.user.issuer.len()
        + r.user.subject.len()
        + opt(&r.user.email)
        + opt(&r.user.name)
        + tokens) as u64
}

#[derive(Clone)]
struct ByWeight {
    /// The least an entry weighs: the byte bound divided by the entry bound.
    floor: u64,
}

impl Weighter<Uuid, Arc<SessionRecord>> for ByWeight {
    fn weight(&self, _: &Uuid, record: &Arc<SessionRecord>) -> u64 {
        record_bytes(record).max(self.floor)
    }
}

/// A [`Store`] with the session cache in front of it; everything but session reads and
/// touches passes straight through.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    /// The feed this cache trusts: the store's own.
    feed: ChangeFeed,
    records: Cache<Uuid, Arc<SessionRecord>, ByWeight>,
    families: Cache<IdHash, Uuid>,
    /// Bumped by every invalidation, under the write lock.
    epoch: AtomicU64,
    /// The feed's revival count this cache's contents belong to.
    revivals: AtomicU64,
    /// When (feed clock) the latest heartbeat this cache's own listener processed was
    /// sent: every message before it has been applied here.
    applied_ms: AtomicU64,
    fill: RwLock<()>,
    /// Idle-deadline touches to write: family → (last seen, idle deadline).
    pending: Arc<Mutex<HashMap<Uuid, (UnixTime, UnixTime)>>>,
    stats: CacheStats,
    _tasks: Tasks,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("entries", &self.records.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CachedStore {
    /// A cache of at most `entries` sessions and `mb` MiB in front of `inner`. Starts
    /// the feed listener and the touch flusher (stopped when the cache is dropped).
    pub fn new(inner: Arc<dyn Store>, entries: u32, mb: u32) -> Arc<Self> {
        let feed = inner.feed().clone();
        Self::with_feed(inner, feed, entries, mb)
    }

    /// The same, trusting `feed` (tests drive a feed of their own).
    pub(crate) fn with_feed(
        inner: Arc<dyn Store>,
        feed: ChangeFeed,
        entries: u32,
        mb: u32,
    ) -> Arc<Self> {
        let entries = u64::from(entries.max(1));
        let bytes = u64::from(mb.max(1)) * 1024 * 1024;
        let cache = Arc::new(Self {
            records: Cache::with_weighter(
                entries as usize,
                bytes,
                ByWeight {
                    floor: (bytes / entries).max(1),
                },
            ),
            families: Cache::new(entries as usize * 2),
            epoch: AtomicU64::new(0),
            revivals: AtomicU64::new(feed.revivals()),
            applied_ms: AtomicU64::new(0),
            fill: RwLock::new(()),
            pending: Arc::default(),
            stats: CacheStats::default(),
            _tasks: Tasks::default(),
            inner,
            feed,
        });
        let weak = Arc::downgrade(&cache);
        let mut feed = cache.feed.subscribe();
        cache._tasks.add(
            tokio::spawn(async move {
                while let Some(event) = feed.recv().await {
                    let Some(cache) = weak.upgrade() else { return };
                    match event {
                        FeedEvent::Changed(change) => {
                            cache.drop_cached(Some(change.family_id), &change.id_hashes)
                        }
                        FeedEvent::UserChanged(user) => cache.drop_user(user),
                        FeedEvent::Reset => cache.drop_cached(None, &[]),
                        FeedEvent::Heartbeat { sent_ms } => {
                            cache.applied_ms.fetch_max(sent_ms, Ordering::AcqRel);
                        }
                    }
                }
            })
            .abort_handle(),
        );
        let weak = Arc::downgrade(&cache);
        cache._tasks.add(
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TOUCH_FLUSH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(cache) = weak.upgrade() else { return };
                    cache.flush_touches().await;
                }
            })
            .abort_handle(),
        );
        cache
    }

    /// How the cache answered so far.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Sessions cached now.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Live again after a silence: what was withheld meanwhile may not have been
    /// processed yet, so everything cached before is forgotten. The new count is stored
    /// only after the clear, under the write lock, so no request can see the new count
    /// and an old entry.
    fn forget_after_revival(&self) {
        let revivals = self.feed.revivals();
        if self.revivals.load(Ordering::Acquire) == revivals {
            return;
        }
        let _fill = self.fill.write().unwrap_or_else(|p| p.into_inner());
        if self.revivals.load(Ordering::Acquire) != revivals {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.records.clear();
            self.families.clear();
            self.revivals.store(revivals, Ordering::Release);
        }
    }

    /// Drops a family (with the hashes named), or everything (`None`).
    fn drop_cached(&self, family: Option<Uuid>, hashes: &[IdHash]) {
        let _fill = self.fill.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match family {
            Some(f) => {
                self.records.remove(&f);
                for h in hashes {
                    self.families.remove(h);
                }
            }
            None => {
                self.records.clear();
                self.families.clear();
            }
        }
    }

    /// Drops every cached session of `user` (G09: its profile changed).
    fn drop_user(&self, user: Uuid) {
        let _fill = self.fill.write().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.records.retain(|_, record| record.user.id != user);
    }

    /// The cached record for `hash`, as a lookup by that hash would return it.
    fn cached(&self, hash: &IdHash) -> Option<SessionRecord> {
        let family = self.families.get(hash)?;
        let record = self.records.get(&family)?;
        let matched = if record.id_hash == *hash {
            IdMatch::Current
        } else if record.previous_id_hash.as_ref() == Some(hash) {
            IdMatch::Previous
        } else {
            // The family moved on (rotated twice): this hash may be dead.
            return None;
        };
        let mut record = (*record).clone();
        record.matched = matched;
        Some(record)
    }

    /// Inserts what the store answered at `epoch`, unless anything was invalidated
    /// since (the fill race).
    fn fill(&self, epoch: u64, hash: &IdHash, record: &SessionRecord) {
        let _fill = self.fill.read().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::Acquire) != epoch || !self.live() {
            return;
        }
        self.families.insert(hash.clone(), record.family_id);
        self.records
            .insert(record.family_id, Arc::new(record.clone()));
    }

    /// Reads the store and fills the cache with the answer. A touch of this instance
    /// not yet written is part of the answer: it is what this instance knows.
    async fn load(&self, hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut record = self.inner.get_session(hash).await?;
        if let Some(r) = &mut record {
            if let Some((last_seen, idle)) = lock(&self.pending).get(&r.family_id) {
                r.last_seen_at = r.last_seen_at.max(*last_seen);
                r.idle_expires_at = r.idle_expires_at.max(*idle);
            }
            self.fill(epoch, hash, r);
        }
        Ok(record)
    }

    /// Moves a cached family's idle deadline forward (the touch is written later).
    fn touch_cached(&self, family: Uuid, last_seen_at: UnixTime, idle_expires_at: UnixTime) {
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some(record) = self.records.get(&family) else {
            return;
        };
        let mut next = (*record).clone();
        next.last_seen_at = next.last_seen_at.max(last_seen_at);
        next.idle_expires_at = next.idle_expires_at.max(idle_expires_at);
        let _fill = self.fill.read().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.records.insert(family, Arc::new(next));
        }
    }

    /// Writes the batched touches.
    async fn flush_touches(&self) {
        let batch: Vec<_> = std::mem::take(&mut *lock(&self.pending))
            .into_iter()
            .collect();
        for (family, (last_seen, idle)) in batch {
            match self
                .inner
                .touch_session(family, last_seen, idle, None)
                .await
            {
                Ok(true) => {}
                // Gone from the store (expired and purged by some instance, which is
                // not announced): the copy here must not live on.
                Ok(false) => self.drop_cached(Some(family), &[]),
                Err(e) => {
                    tracing::warn!(error = %e, "could not write a session's idle deadline; retried");
                    let mut pending = lock(&self.pending);
                    let entry = pending.entry(family).or_insert((last_seen, idle));
                    *entry = (entry.0.max(last_seen), entry.1.max(idle));
                }
            }
        }
    }

    /// Whether a touch may wait for the batch: it carries no sighting, or the cache
    /// positively knows that `seen` is the current id and already marked seen. Any
    /// doubt (not cached, another current id, not yet seen) writes it at once: the
    /// first sighting of a rotated id decides the theft rule.
    fn may_batch(&self, family: Uuid, seen: Option<&IdHash>) -> bool {
        let Some(seen) = seen else { return true };
        self.records
            .get(&family)
            .is_some_and(|r| r.id_hash == *seen && r.current_seen)
    }

    /// Queues an idle-deadline touch; false when the queue is full (write it now).
    fn queue_touch(&self, family: Uuid, last_seen_at: UnixTime, idle_expires_at: UnixTime) -> bool {
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING_TOUCHES && !pending.contains_key(&family) {
            return false;
        }
        let entry = pending
            .entry(family)
            .or_insert((last_seen_at, idle_expires_at));
        *entry = (entry.0.max(last_seen_at), entry.1.max(idle_expires_at));
        true
    }

    /// Whether the cache may be trusted: the feed is live, and this cache has itself
    /// applied every message up to a heartbeat sent less than a second ago (a backlog
    /// in front of this cache counts as a silence).
    pub(crate) fn live(&self) -> bool {
        if !self.feed.is_measured() {
            return true;
        }
        let applied = self.applied_ms.load(Ordering::Acquire);
        self.feed.is_live()
            && applied != 0
            && self.feed.now_ms().saturating_sub(applied)
                < crate::store::feed::LIVE_WITHIN.as_millis() as u64
    }
}

#[async_trait]
impl Store for CachedStore {
    fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    async fn get_session(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        if !self.live() {
            self.stats.bypass();
            return self.inner.get_session(id_hash).await;
        }
        self.forget_after_revival();
        if let Some(record) = self.cached(id_hash) {
            self.stats.hit();
            return Ok(Some(record));
        }
        self.stats.miss();
        self.load(id_hash).await
    }

    async fn get_session_fresh(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        self.stats.bypass();
        let record = self.load(id_hash).await?;
        if record.is_none() {
            self.families.remove(id_hash);
        }
        Ok(record)
    }

    async fn touch_session(
        &self,
        family_id: Uuid,
        last_seen_at: UnixTime,
        idle_expires_at: UnixTime,
        seen: Option<&IdHash>,
    ) -> StoreResult<bool> {
        if !self.may_batch(family_id, seen) {
            let result = self
                .inner
                .touch_session(family_id, last_seen_at, idle_expires_at, seen)
                .await;
            self.drop_cached(Some(family_id), &[]);
            return result;
        }
        self.touch_cached(family_id, last_seen_at, idle_expires_at);
        if self.queue_touch(family_id, last_seen_at, idle_expires_at) {
            return Ok(true);
        }
        let exists = self
            .inner
            .touch_session(family_id, last_seen_at, idle_expires_at, seen)
            .await?;
        if !exists {
            self.drop_cached(Some(family_id), &[]);
        }
        Ok(exists)
    }

    async fn update_tokens(
        &self,
        family_id: Uuid,
        expected_version: i64,
        tokens: &TokenSet,
    ) -> StoreResult<bool> {
        let result = self
            .inner
            .update_tokens(family_id, expected_version, tokens)
            .await;
        self.drop_cached(Some(family_id), &[]);
        result
    }

    async fn rotate_session_id(
        &self,
        family_id: Uuid,
        expected_version: i64,
        new_id_hash: &IdHash,
        previous_valid_until: UnixTime,
        handover: &str,
        tokens: &TokenSet,
        keep_previous: bool,
    ) -> StoreResult<bool> {
        let result = self
            .inner
            .rotate_session_id(
                family_id,
                expected_version,
                new_id_hash,
                previous_valid_until,
                handover,
                tokens,
                keep_previous,
            )
            .await;
        self.drop_cached(Some(family_id), &[]);
        result
    }

    async fn update_claims(
        &self,
        family_id: Uuid,
        claims: &str,
        email_verified: bool,
    ) -> StoreResult<bool> {
        let result = self
            .inner
            .update_claims(family_id, claims, email_verified)
            .await;
        self.drop_cached(Some(family_id), &[]);
        result
    }

    async fn delete_session(&self, family_id: Uuid) -> StoreResult<bool> {
        let result = self.inner.delete_session(family_id).await;
        self.drop_cached(Some(family_id), &[]);
        lock(&self.pending).remove(&family_id);
        result
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        let result = self.inner.delete_user_sessions(user_id).await;
        self.drop_cached(None, &[]);
        result
    }

    async fn delete_sessions_by_provider_sid(&self, issuer: &str, sid: &str) -> StoreResult<u64> {
        let result = self
            .inner
            .delete_sessions_by_provider_sid(issuer, sid)
            .await;
        self.drop_cached(None, &[]);
        result
    }

    async fn delete_sessions_by_subject(&self, issuer: &str, subject: &str) -> StoreResult<u64> {
        let result = self.inner.delete_sessions_by_subject(issuer, subject).await;
        self.drop_cached(None, &[]);
        result
    }

    async fn delete_all_sessions(&self) -> StoreResult<u64> {
        let result = self.inner.delete_all_sessions().await;
        self.drop_cached(None, &[]);
        result
    }

    async fn import_session(&self, session: &SessionRecord) -> StoreResult<bool> {
        let result = self.inner.import_session(session).await;
        self.drop_cached(Some(session.family_id), &[]);
        result
    }

    async fn upsert_user(
        &self,
        issuer: &str,
        subject: &str,
        profile: &UserProfile,
        now: UnixTime,
    ) -> StoreResult<User> {
        // G09: the store announces a changed profile (email, name, verification) on the
        // feed with the write, to this instance as to every other, and the listener
        // drops the user's cached sessions (a scan of the cache, only when it changed).
        self.inner.upsert_user(issuer, subject, profile, now).await
    }

    // Everything else passes through.

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.inner.get_user(id).await
    }

    async fn list_users(&self, after: Option<Uuid>, limit: u32) -> StoreResult<Vec<User>> {
        self.inner.list_users(after, limit).await
    }

    async fn import_user(&self, user: &User) -> StoreResult<bool> {
        self.inner.import_user(user).await
    }

    async fn create_session(&self, session: &NewSession) -> StoreResult<()> {
        self.inner.create_session(session).await
    }

    async fn list_sessions(
        &self,
        user_id: Option<Uuid>,
        now: UnixTime,
    ) -> StoreResult<Vec<SessionRecord>> {
        self.flush_touches().await;
        self.inner.list_sessions(user_id, now).await
    }

    async fn put_transaction(
        &self,
        tx: &LoginTransaction,
        limits: TransactionLimits,
    ) -> StoreResult<bool> {
        self.inner.put_transaction(tx, limits).await
    }

    async fn take_transaction(&self, state_hash: &str) -> StoreResult<Option<LoginTransaction>> {
        self.inner.take_transaction(state_hash).await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        self.inner.acquire_lease(key, holder, now, until).await
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        self.inner.renew_lease(key, holder, now, until).await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> StoreResult<()> {
        self.inner.release_lease(key, holder).await
    }

    async fn remember_once(&self, key: &str, now: UnixTime, until: UnixTime) -> StoreResult<bool> {
        self.inner.remember_once(key, now, until).await
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        self.inner.forget(key).await
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        self.inner.add_signing_key(key).await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.inner.signing_keys().await
    }

    async fn delete_signing_key(&self, generation: i64) -> StoreResult<bool> {
        self.inner.delete_signing_key(generation).await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.inner.get_setting(key).await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        self.inner.put_setting(key, value).await
    }

    async fn delete_setting(&self, key: &str) -> StoreResult<bool> {
        self.inner.delete_setting(key).await
    }

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<u64> {
        self.flush_touches().await;
        self.inner.purge_expired(now).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::session::id::SessionId;
    use crate::session::new_uuid;
    use crate::store::feed::WireMessage;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{SessionChange, TokenSet};

    const NOW: UnixTime = 1_900_000_000;

    /// A cache over an in-memory store, trusting a feed the test drives (live now):
    /// writes made through `inner` stand for another instance's, whose messages arrive
    /// only if the test delivers them.
    async fn cache(entries: u32) -> (Arc<CachedStore>, ChangeFeed) {
        let feed = ChangeFeed::new();
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        let cache = CachedStore::with_feed(store, feed.clone(), entries, 64);
        beat(&feed);
        live(&cache).await;
        (cache, feed)
    }

    /// Waits (bounded) until the cache's own listener has applied the last heartbeat.
    async fn live(c: &CachedStore) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !c.live() {
            assert!(tokio::time::Instant::now() < deadline, "never live");
            tokio::task::yield_now().await;
        }
    }

    fn beat(feed: &ChangeFeed) {
        feed.deliver(WireMessage::Heartbeat {
            origin: feed.origin().to_owned(),
            sent_ms: feed.now_ms(),
            ring: None,
        });
    }

    async fn session(store: &dyn Store) -> (SessionId, Uuid) {
        let user = store
            .upsert_user(
                "https://i",
                &crate::random::random_token(),
                &UserProfile::default(),
                NOW,
            )
            .await
            .unwrap();
        let id = SessionId::generate();
        let family = new_uuid();
        store
            .create_session(&NewSession {
                family_id: family,
                id_hash: id.hash(),
                user_id: user.id,
                provider_sid: None,
                created_at: NOW,
                idle_expires_at: NOW + 3600,
                absolute_expires_at: NOW + 86_400,
                tokens: TokenSet::default(),
                user_agent: None,
                claims: "{}".into(),
                email_verified: false,
            })
            .await
            .unwrap();
        (id, family)
    }

    fn counts(c: &CachedStore) -> (u64, u64, u64) {
        let s = c.stats();
        (
            s.hits.load(Ordering::Relaxed),
            s.misses.load(Ordering::Relaxed),
            s.bypasses.load(Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn the_second_read_is_a_hit_and_a_local_write_drops_it_before_returning() {
        let (c, _feed) = cache(100).await;
        let (id, family) = session(&*c).await;
        assert!(c.get_session(&id.hash()).await.unwrap().is_some());
        assert!(c.get_session(&id.hash()).await.unwrap().is_some());
        assert_eq!(counts(&c), (1, 1, 0));
        assert!(c.delete_session(family).await.unwrap());
        assert!(
            c.get_session(&id.hash()).await.unwrap().is_none(),
            "revoked here: gone at once"
        );
    }

    /// G09: a changed profile, announced on the feed, drops the user's cached sessions:
    /// the next read shows the new email.
    #[tokio::test]
    async fn g09_a_changed_profile_drops_the_users_cached_sessions() {
        let (c, feed) = cache(100).await;
        let (id, _) = session(&*c).await;
        let user = c.get_session(&id.hash()).await.unwrap().unwrap().user;
        let profile = |email: &str| UserProfile {
            email: Some(email.to_owned()),
            name: None,
        };
        let email = |c: Arc<CachedStore>, id: IdHash| async move {
            c.get_session(&id).await.unwrap().unwrap().user.email
        };
        // Another instance's sign-in: cached until the feed says so.
        c.inner
            .upsert_user(&user.issuer, &user.subject, &profile("a@x"), NOW)
            .await
            .unwrap();
        assert_eq!(email(c.clone(), id.hash()).await, None, "cached until told");
        let mut sub = feed.subscribe();
        feed.deliver(WireMessage::UserChanged(user.id));
        sub.recv().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while email(c.clone(), id.hash()).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not dropped within 1 s"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(email(c.clone(), id.hash()).await.as_deref(), Some("a@x"));
        // Another user's change leaves this one cached.
        let hits = counts(&c).0;
        feed.deliver(WireMessage::UserChanged(new_uuid()));
        sub.recv().await;
        tokio::task::yield_now().await;
        email(c.clone(), id.hash()).await;
        assert_eq!(counts(&c).0, hits + 1, "still a hit");
    }

    #[tokio::test]
    async fn another_instances_change_drops_the_entry() {
        let (c, feed) = cache(100).await;
        let (id, family) = session(&*c).await;
        c.get_session(&id.hash()).await.unwrap();
        // Another instance revokes: its write reaches us only through the feed.
        c.inner.delete_session(family).await.unwrap();
        assert!(
            c.get_session(&id.hash()).await.unwrap().is_some(),
            "cached until told"
        );
        let mut sub = feed.subscribe();
        feed.deliver(WireMessage::Changed(SessionChange {
            family_id: family,
            id_hashes: vec![id.hash()],
        }));
        // The cache's own listener has run once our subscriber saw the message too.
        sub.recv().await;
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while c.get_session(&id.hash()).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not dropped within 1 s"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_read_that_straddles_an_invalidation_is_not_kept() {
        let (c, _feed) = cache(100).await;
        let (id, family) = session(&*c).await;
        // The read begins, the store answers…
        let epoch = c.epoch.load(Ordering::Acquire);
        let stale = c.inner.get_session(&id.hash()).await.unwrap().unwrap();
        // …a revocation arrives before the answer is inserted…
        c.inner.delete_session(family).await.unwrap();
        c.drop_cached(Some(family), &[id.hash()]);
        // …and the stale answer must not be cached.
        c.fill(epoch, &id.hash(), &stale);
        assert!(c.is_empty());
        assert!(c.get_session(&id.hash()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_silent_feed_bypasses_the_cache_within_a_second() {
        let (c, feed) = cache(100).await;
        let (id, family) = session(&*c).await;
        c.get_session(&id.hash()).await.unwrap();
        // Another instance revokes; its message is withheld (the connection stays open,
        // nothing arrives, not even our heartbeat).
        c.inner.delete_session(family).await.unwrap();
        let start = std::time::Instant::now();
        while c.get_session(&id.hash()).await.unwrap().is_some() {
            assert!(
                start.elapsed() < Duration::from_millis(1_100),
                "still served after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(counts(&c).2 > 0, "the store answered");
        // And no fill while the feed is not live.
        let (other, _) = session(&*c).await;
        let before = c.len();
        c.get_session(&other.hash()).await.unwrap();
        assert_eq!(c.len(), before);
        // The heartbeat is back (the withheld message may still be on its way): what
        // was cached before the silence is not trusted any more.
        beat(&feed);
        assert!(
            c.get_session(&id.hash()).await.unwrap().is_none(),
            "not the stale copy"
        );
        c.get_session(&other.hash()).await.unwrap();
        assert_eq!(c.len(), 1, "used again once the heartbeat is back");
    }

    #[tokio::test]
    async fn a_reset_empties_the_cache() {
        let (c, feed) = cache(100).await;
        let (id, _) = session(&*c).await;
        c.get_session(&id.hash()).await.unwrap();
        assert_eq!(c.len(), 1);
        feed.connection_lost();
        beat(&feed);
        live(&c).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !c.is_empty() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_full_cache_evicts_and_loses_no_session() {
        let (c, _feed) = cache(8).await;
        let mut ids = Vec::new();
        for _ in 0..40 {
            ids.push(session(&*c).await.0);
        }
        for id in &ids {
            assert!(c.get_session(&id.hash()).await.unwrap().is_some());
        }
        assert!(c.len() <= 8, "bounded: {}", c.len());
        for id in &ids {
            assert!(
                c.get_session(&id.hash()).await.unwrap().is_some(),
                "still in the store"
            );
        }
    }

    #[tokio::test]
    async fn idle_touches_are_batched_and_the_first_sighting_is_not() {
        let (c, _feed) = cache(100).await;
        let (id, family) = session(&*c).await;
        c.get_session(&id.hash()).await.unwrap();
        c.touch_session(family, NOW + 60, NOW + 3660, Some(&id.hash()))
            .await
            .unwrap();
        let stored = c.inner.get_session(&id.hash()).await.unwrap().unwrap();
        assert_eq!(stored.idle_expires_at, NOW + 3600, "not written yet");
        let here = c.get_session(&id.hash()).await.unwrap().unwrap();
        assert_eq!(here.idle_expires_at, NOW + 3660, "but known here");
        let fresh = c.get_session_fresh(&id.hash()).await.unwrap().unwrap();
        assert_eq!(fresh.idle_expires_at, NOW + 3660, "also to a fresh read");
        c.flush_touches().await;
        let stored = c.inner.get_session(&id.hash()).await.unwrap().unwrap();
        assert_eq!(stored.idle_expires_at, NOW + 3660, "written by the flush");

        // A rotated id seen for the first time: written (and announced) at once.
        let new = SessionId::generate();
        assert!(
            c.rotate_session_id(
                family,
                0,
                &new.hash(),
                NOW + 30,
                "h",
                &TokenSet::default(),
                false
            )
            .await
            .unwrap()
        );
        c.get_session(&new.hash()).await.unwrap();
        c.touch_session(family, NOW + 120, NOW + 3720, Some(&new.hash()))
            .await
            .unwrap();
        let stored = c.inner.get_session(&new.hash()).await.unwrap().unwrap();
        assert!(
            stored.current_seen,
            "the first sighting is in the store at once"
        );
    }

    #[tokio::test]
    async fn a_sighting_the_cache_cannot_vouch_for_is_written_at_once() {
        let (c, _feed) = cache(100).await;
        let (id, family) = session(&*c).await;
        c.get_session(&id.hash()).await.unwrap();
        // Another instance rotates; its message has not arrived here yet.
        let new = SessionId::generate();
        assert!(
            c.inner
                .rotate_session_id(
                    family,
                    0,
                    &new.hash(),
                    NOW + 30,
                    "h",
                    &TokenSet::default(),
                    false
                )
                .await
                .unwrap()
        );
        c.touch_session(family, NOW + 60, NOW + 3660, Some(&new.hash()))
            .await
            .unwrap();
        let stored = c.inner.get_session(&new.hash()).await.unwrap().unwrap();
        assert!(stored.current_seen, "written at once, not batched");
    }

    #[tokio::test]
    async fn a_session_purged_elsewhere_does_not_live_on_here() {
        let (c, _feed) = cache(100).await;
        let (id, family) = session(&*c).await;
        c.get_session(&id.hash()).await.unwrap();
        c.get_session(&id.hash()).await.unwrap();
        // Expired in the store and purged by another instance (not announced)…
        c.inner.delete_session(family).await.unwrap();
        // …while this one batches a touch for it.
        c.touch_session(family, NOW + 60, NOW + 3660, Some(&id.hash()))
            .await
            .unwrap();
        c.flush_touches().await;
        assert!(c.get_session(&id.hash()).await.unwrap().is_none());
    }
}
