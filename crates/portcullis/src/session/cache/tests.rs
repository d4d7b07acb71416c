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
    let session = NewSession::plain(user.id, id.hash(), NOW);
    store.create_session(&session).await.unwrap();
    (id, session.family_id)
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
    let start = tokio::time::Instant::now();
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
