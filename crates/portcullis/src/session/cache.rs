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
    ChangeFeed, FeedEvent, IdMatch, IdentityKind, LoginTransaction, NewSession, SessionRecord,
    SigningKeyRecord, Store, StoreResult, TokenSet, TransactionLimits, User, UserProfile,
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

    async fn upsert_identity(
        &self,
        issuer: &str,
        kind: IdentityKind,
        subject: &str,
        profile: Option<&UserProfile>,
        now: UnixTime,
    ) -> StoreResult<User> {
        // G09: the store announces a changed profile (email, name, verification) on the
        // feed with the write, to this instance as to every other, and the listener
        // drops the user's cached sessions (a scan of the cache, only when it changed).
        self.inner
            .upsert_identity(issuer, kind, subject, profile, now)
            .await
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

    async fn add_setting(&self, key: &str, value: &str) -> StoreResult<bool> {
        self.inner.add_setting(key, value).await
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
mod tests;
