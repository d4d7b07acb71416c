#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::{Config, SecretKeys};
use crate::provider::Provider;
use crate::provider::http::ProviderHttp;
use crate::session::KeyRing;
use crate::session::cache::CachedStore;
use crate::store::feed::WireMessage;
use crate::store::sqlite::SqliteStore;
use crate::store::{ChangeFeed, NewSession, Store, TokenSet, UserProfile};

const ISSUER: &str = "https://id.example.com";

/// A session service whose cache trusts a feed the test drives; writes through
/// `inner` stand for another instance's, whose messages have not arrived yet.
async fn sessions() -> (Arc<Sessions>, Arc<SqliteStore>, ManualClock) {
    crate::install_crypto_provider();
    let config = Config::load_from(
        None,
        [
            ("PORTCULLIS_ISSUER", ISSUER),
            ("PORTCULLIS_CLIENT_ID", "app"),
            ("PORTCULLIS_SESSION_IDLE_TIMEOUT", "10m"),
            ("PORTCULLIS_SESSION_CACHE_ENTRIES", "0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .unwrap();
    let inner = Arc::new(SqliteStore::in_memory().await.unwrap());
    let feed = ChangeFeed::new();
    let cache = CachedStore::with_feed(inner.clone(), feed.clone(), 100, 16);
    feed.deliver(WireMessage::Heartbeat {
        origin: feed.origin().to_owned(),
        sent_ms: feed.now_ms(),
        ring: None,
    });
    // The cache is in use once its listener applied the heartbeat.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while !cache.live() {
        assert!(tokio::time::Instant::now() < deadline, "cache never live");
        tokio::task::yield_now().await;
    }
    let provider = Provider::new(
        crate::provider::ProviderSettings::from_config(&config, &config.providers[0]),
        ProviderHttp::new().unwrap(),
    );
    let keys = KeyRing::new(&SecretKeys(vec![zeroize::Zeroizing::new([7; 32])])).unwrap();
    let clock = ManualClock::default();
    let gw = Sessions::new(
        Arc::new(config),
        crate::provider::Providers::new(vec![provider]),
        cache,
        keys,
        Arc::new(clock.clone()),
    );
    (Arc::new(gw), inner, clock)
}

/// alice's session with id `id`, made at `now` straight in the store (as another
/// instance would): idle after ten minutes; its family.
async fn alices_session(inner: &SqliteStore, id: &SessionId, now: UnixTime) -> Uuid {
    let user = inner
        .upsert_user(ISSUER, "alice", &UserProfile::default(), now)
        .await
        .unwrap();
    let session = NewSession {
        idle_expires_at: now + 600,
        email_verified: true,
        ..NewSession::plain(user.id, id.hash(), now)
    };
    inner.create_session(&session).await.unwrap();
    session.family_id
}

#[tokio::test]
async fn an_expiry_seen_in_the_cache_is_checked_against_the_store() {
    let (gw, inner, clock) = sessions().await;
    let now = clock.now();
    let id = SessionId::generate();
    let family = alices_session(&inner, &id, now).await;
    assert!(gw.authenticate(id.expose()).await.unwrap().is_some());
    // Another instance served the user at +590 s and moved the idle deadline; this
    // one has not heard of it and its cached copy says the session is idle.
    inner
        .touch_session(family, now + 590, now + 1190, None)
        .await
        .unwrap();
    clock.advance(700);
    assert!(
        gw.authenticate(id.expose()).await.unwrap().is_some(),
        "the store says the session is alive: not ended on a stale copy"
    );
    assert!(inner.get_session(&id.hash()).await.unwrap().is_some());
    // Once it is really idle, it ends.
    clock.advance(600);
    assert!(gw.authenticate(id.expose()).await.unwrap().is_none());
    assert!(inner.get_session(&id.hash()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_rotated_away_id_is_judged_on_the_store_not_the_cache() {
    let (gw, inner, clock) = sessions().await;
    let now = clock.now();
    let (old, new) = (SessionId::generate(), SessionId::generate());
    let family = alices_session(&inner, &old, now).await;
    // Another instance refreshed and rotated the id.
    let handover = handover::seal(&old, &new);
    assert!(
        inner
            .rotate_session_id(
                family,
                0,
                &new.hash(),
                now + 30,
                &handover,
                &TokenSet::default(),
                false
            )
            .await
            .unwrap()
    );
    // This instance caches the rotated record (new id not yet seen) through the old id.
    let caught_up = gw.authenticate(old.expose()).await.unwrap().unwrap();
    assert_eq!(caught_up.new_cookie.as_ref(), Some(&new));
    // The owner uses the new id elsewhere (unannounced here), the grace ends…
    inner
        .touch_session(family, now + 1, now + 601, Some(&new.hash()))
        .await
        .unwrap();
    clock.advance(31);
    // …and the old id comes back: a stolen copy, whatever the cache remembers.
    assert!(gw.authenticate(old.expose()).await.unwrap().is_none());
    assert!(
        inner.get_session(&new.hash()).await.unwrap().is_none(),
        "the family is revoked"
    );
}
