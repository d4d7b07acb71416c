//! The one test suite every store backend must pass, so that SQLite, PostgreSQL and
//! Redis are interchangeable. Each backend's tests call `run_all` with a fresh store.
//! Records use random names so that the suite can share a database with other runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod feed;
mod sessions;
mod shared;
mod transactions;

use uuid::Uuid;

use super::*;
use crate::random::new_uuid;
use crate::random::random_token;
use crate::store::id::SessionId;
use feed::{
    a_changed_profile_is_announced, every_change_is_announced_once,
    settings_are_kept_replaced_and_removed,
};
use sessions::{
    a_lost_rotation_keeps_the_id_the_browser_holds, rotation_keeps_the_previous_id_for_lookups,
    sessions_end_by_id_user_sid_and_all, sessions_round_trip, token_updates_compare_and_swap,
};
use shared::{
    compare_and_swap_loses_to_another_writer, signing_keys_are_written_once_per_generation,
    take_once_across_handles, two_handles_agree_on_one_added_setting,
    two_handles_agree_on_one_signing_key, two_handles_race_one_lease,
    writes_of_another_handle_reach_subscribers,
};
use transactions::{
    concurrent_takes_succeed_once, transaction, transactions_are_bounded_in_total,
    transactions_are_single_use_and_bounded,
};

const NOW: UnixTime = 1_900_000_000;

/// Runs every conformance check against `store`.
pub async fn run_all(store: &dyn Store) {
    store.ping().await.expect("ping");
    users_are_keyed_by_issuer_kind_and_subject(store).await;
    sessions_round_trip(store).await;
    claims_are_kept_and_replaced(store).await;
    token_updates_compare_and_swap(store).await;
    rotation_keeps_the_previous_id_for_lookups(store).await;
    a_lost_rotation_keeps_the_id_the_browser_holds(store).await;
    sessions_end_by_id_user_sid_and_all(store).await;
    transactions_are_single_use_and_bounded(store).await;
    transactions_are_bounded_in_total(store).await;
    concurrent_takes_succeed_once(store).await;
    leases_exclude_each_other_until_expiry(store).await;
    leases_renew_only_for_their_holder(store).await;
    replay_cache_remembers_once(store).await;
    signing_keys_are_written_once_per_generation(store).await;
    users_and_sessions_import_as_they_are(store).await;
    every_change_is_announced_once(store).await;
    a_changed_profile_is_announced(store).await;
    settings_are_kept_replaced_and_removed(store).await;
    expiry_purges_everything_old(store).await;
}

/// How another handle's writes reach a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossHandle {
    /// As the same messages (PostgreSQL, Redis).
    Precise,
    /// As a reset (SQLite: another process changed the file).
    Reset,
}

/// Checks that only two handles on one store show (two instances, or an instance and
/// the admin CLI): leases, compare-and-swap, take-once and the feed across handles.
pub async fn run_shared(a: &dyn Store, b: &dyn Store, cross: CrossHandle) {
    two_handles_race_one_lease(a, b).await;
    compare_and_swap_loses_to_another_writer(a, b).await;
    take_once_across_handles(a, b).await;
    two_handles_agree_on_one_signing_key(a, b).await;
    two_handles_agree_on_one_added_setting(a, b).await;
    writes_of_another_handle_reach_subscribers(a, b, cross).await;
}

/// Waits (bounded) for the next feed event other than a heartbeat.
pub async fn next_event(sub: &mut FeedSubscription) -> FeedEvent {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("a feed event within 10 s")
            .expect("the feed is open");
        if !matches!(event, FeedEvent::Heartbeat { .. }) {
            return event;
        }
    }
}

fn unique(label: &str) -> String {
    format!("{label}-{}", &random_token()[..12])
}

async fn new_user(store: &dyn Store) -> User {
    store
        .upsert_user(
            &unique("https://issuer"),
            &unique("sub"),
            &UserProfile::default(),
            NOW,
        )
        .await
        .unwrap()
}

/// A user ("https://i", "s") and a plain session of theirs, made at 1 and ended at 100
/// (the engines' own tests): its id and family.
pub async fn a_stored_session(store: &dyn Store) -> (SessionId, Uuid) {
    let user = store
        .upsert_user("https://i", "s", &UserProfile::default(), 1)
        .await
        .unwrap();
    let id = SessionId::generate();
    let session = NewSession {
        idle_expires_at: 100,
        absolute_expires_at: 100,
        ..NewSession::plain(user.id, id.hash(), 1)
    };
    store.create_session(&session).await.unwrap();
    (id, session.family_id)
}

fn sealed(s: &str) -> Option<Sealed> {
    Some(Sealed::from_stored(format!("v1.test.{s}")))
}

fn new_session_record(user: &User, id: &SessionId) -> NewSession {
    NewSession {
        family_id: new_uuid(),
        id_hash: id.hash(),
        user_id: user.id,
        provider_sid: None,
        created_at: NOW,
        idle_expires_at: NOW + 3600,
        absolute_expires_at: NOW + 86_400,
        tokens: TokenSet {
            refresh_token: sealed("r1"),
            access_token: sealed("a1"),
            id_token: sealed("i1"),
            access_expires_at: Some(NOW + 300),
            refresh_expires_at: None,
            access_issued_at: Some(NOW),
            granted_scope: Some("openid email orders:read".into()),
        },
        user_agent: Some("conformance".into()),
        claims: r#"{"sub":"s","groups":["a","b"]}"#.into(),
        email_verified: true,
        provider_id: "partner".into(),
    }
}

async fn new_session(store: &dyn Store, user: &User, sid: Option<&str>) -> (SessionId, NewSession) {
    let id = SessionId::generate();
    let mut s = new_session_record(user, &id);
    s.provider_sid = sid.map(str::to_owned);
    store.create_session(&s).await.unwrap();
    (id, s)
}

async fn users_are_keyed_by_issuer_kind_and_subject(store: &dyn Store) {
    let issuer = unique("https://issuer");
    let profile = UserProfile {
        email: Some("a@example.com".into()),
        name: Some("Ä".into()),
    };
    let a = store
        .upsert_user(&issuer, "sub-1", &profile, NOW)
        .await
        .unwrap();
    assert_eq!(a.email.as_deref(), Some("a@example.com"));
    let updated = UserProfile {
        email: Some("new@example.com".into()),
        name: None,
    };
    let again = store
        .upsert_user(&issuer, "sub-1", &updated, NOW + 5)
        .await
        .unwrap();
    assert_eq!(again.id, a.id, "same (issuer, sub) must keep its id");
    assert_eq!(again.email.as_deref(), Some("new@example.com"));
    assert_eq!(again.created_at, NOW);
    assert_eq!(again.updated_at, NOW + 5);
    // Same email, other subject or other issuer: another user (no matching by email).
    let other_sub = store
        .upsert_user(&issuer, "sub-2", &updated, NOW)
        .await
        .unwrap();
    let other_iss = store
        .upsert_user(&unique("https://other"), "sub-1", &updated, NOW)
        .await
        .unwrap();
    assert_ne!(other_sub.id, a.id);
    assert_ne!(other_iss.id, a.id);
    assert_eq!(store.get_user(a.id).await.unwrap(), Some(again.clone()));
    assert_eq!(store.get_user(Uuid::nil()).await.unwrap(), None);

    // G13: a client whose `client_id` equals a user's `sub` is another identity, and
    // stays one; a token without profile claims leaves the stored profile alone.
    let client = store
        .upsert_identity(&issuer, IdentityKind::Client, "sub-1", None, NOW)
        .await
        .unwrap();
    assert_ne!(client.id, a.id, "a client never gets a user's id");
    assert_eq!(client.kind, IdentityKind::Client);
    assert_eq!(
        (client.email.as_deref(), client.name.as_deref()),
        (None, None)
    );
    let client_again = store
        .upsert_identity(&issuer, IdentityKind::Client, "sub-1", None, NOW + 9)
        .await
        .unwrap();
    assert_eq!(client_again.id, client.id);
    let by_token = store
        .upsert_identity(&issuer, IdentityKind::User, "sub-1", None, NOW + 9)
        .await
        .unwrap();
    assert_eq!(by_token.id, a.id);
    assert_eq!(by_token.kind, IdentityKind::User);
    assert_eq!(
        by_token.email, again.email,
        "no profile given, none changed"
    );
    // Back-channel logout by subject ends users' sessions only, never touching clients.
    let (_, session) = new_session(store, &a, None).await;
    assert_eq!(
        store
            .delete_sessions_by_subject(&issuer, "sub-1")
            .await
            .unwrap(),
        1
    );
    assert!(store.get_session(&session.id_hash).await.unwrap().is_none());
}

/// Polls all futures concurrently (a tiny `join_all`, to avoid a dependency); also
/// used by other crates' tests.
pub async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

async fn leases_exclude_each_other_until_expiry(store: &dyn Store) {
    let key = unique("lease");
    assert!(store.acquire_lease(&key, "a", NOW, NOW + 10).await.unwrap());
    assert!(
        !store
            .acquire_lease(&key, "b", NOW + 1, NOW + 11)
            .await
            .unwrap()
    );
    store.release_lease(&key, "b").await.unwrap();
    assert!(
        !store
            .acquire_lease(&key, "b", NOW + 2, NOW + 12)
            .await
            .unwrap(),
        "only the holder releases"
    );
    store.release_lease(&key, "a").await.unwrap();
    assert!(
        store
            .acquire_lease(&key, "b", NOW + 3, NOW + 13)
            .await
            .unwrap()
    );
    assert!(
        store
            .acquire_lease(&key, "c", NOW + 13, NOW + 23)
            .await
            .unwrap(),
        "an expired lease is free"
    );
}

async fn replay_cache_remembers_once(store: &dyn Store) {
    let key = unique("jti");
    assert!(store.remember_once(&key, NOW, NOW + 60).await.unwrap());
    assert!(!store.remember_once(&key, NOW + 1, NOW + 61).await.unwrap());
    assert!(
        store
            .remember_once(&key, NOW + 60, NOW + 120)
            .await
            .unwrap()
    );
    // Forgotten (the work it guarded failed): the key may be used again.
    store.forget(&key).await.unwrap();
    assert!(
        store
            .remember_once(&key, NOW + 61, NOW + 121)
            .await
            .unwrap()
    );
    store.forget(&unique("never-seen")).await.unwrap();
}

async fn expiry_purges_everything_old(store: &dyn Store) {
    let user = new_user(store).await;
    let (id, _) = new_session(store, &user, None).await;
    let tx = transaction(&unique("binding"), NOW);
    store
        .put_transaction(&tx, TransactionLimits::default())
        .await
        .unwrap();
    let purged = store.purge_expired(NOW + 100_000).await.unwrap();
    assert!(purged >= 2);
    assert!(store.get_session(&id.hash()).await.unwrap().is_none());
    assert!(
        store
            .take_transaction(&tx.state_hash)
            .await
            .unwrap()
            .is_none()
    );
}

async fn claims_are_kept_and_replaced(store: &dyn Store) {
    let user = new_user(store).await;
    let (id, s) = new_session(store, &user, None).await;
    let got = store.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(got.claims, s.claims);
    assert!(got.email_verified);
    assert_eq!(got.provider_id, "partner", "the session's provider is kept");
    let big = format!(r#"{{"groups":["{}"]}}"#, "g".repeat(MAX_CLAIMS_BYTES - 20));
    assert!(store.update_claims(s.family_id, &big, false).await.unwrap());
    let got = store.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(got.claims, big, "claims up to 16 KiB are kept whole");
    assert!(!got.email_verified);
    assert!(
        !store.update_claims(new_uuid(), "{}", true).await.unwrap(),
        "no such session"
    );
}

async fn leases_renew_only_for_their_holder(store: &dyn Store) {
    let key = unique("lease");
    assert!(store.acquire_lease(&key, "a", NOW, NOW + 6).await.unwrap());
    assert!(
        store
            .renew_lease(&key, "a", NOW + 4, NOW + 10)
            .await
            .unwrap()
    );
    assert!(
        !store
            .acquire_lease(&key, "b", NOW + 7, NOW + 13)
            .await
            .unwrap(),
        "a renewed lease outlives its first deadline"
    );
    assert!(
        !store
            .renew_lease(&key, "b", NOW + 7, NOW + 13)
            .await
            .unwrap(),
        "only the holder renews"
    );
    assert!(
        store
            .acquire_lease(&key, "a", NOW + 8, NOW + 14)
            .await
            .unwrap(),
        "the holder may take its own lease again"
    );
    assert!(
        !store
            .renew_lease(&key, "a", NOW + 14, NOW + 20)
            .await
            .unwrap(),
        "an expired lease cannot be renewed"
    );
    assert!(
        store
            .acquire_lease(&key, "b", NOW + 14, NOW + 20)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_lease(&key, "a", NOW + 15, NOW + 21)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_lease(&unique("lease"), "a", NOW, NOW + 6)
            .await
            .unwrap(),
        "no lease, nothing to renew"
    );
}

async fn users_and_sessions_import_as_they_are(store: &dyn Store) {
    let user = User {
        id: new_uuid(),
        issuer: unique("https://issuer"),
        kind: IdentityKind::User,
        subject: unique("sub"),
        email: Some("i@example.com".into()),
        name: Some("Imported".into()),
        created_at: NOW - 100,
        updated_at: NOW - 50,
    };
    assert!(store.import_user(&user).await.unwrap());
    assert!(!store.import_user(&user).await.unwrap(), "already there");
    let clash = User {
        id: new_uuid(),
        ..user.clone()
    };
    assert!(
        !store.import_user(&clash).await.unwrap(),
        "an (issuer, subject) keeps the id it has"
    );
    assert_eq!(store.get_user(user.id).await.unwrap(), Some(user.clone()));
    let again = store
        .upsert_user(&user.issuer, &user.subject, &UserProfile::default(), NOW)
        .await
        .unwrap();
    assert_eq!(again.id, user.id, "a signed-in user keeps the imported id");
    // A client of the same (issuer, subject) imports beside the user, and keeps its kind.
    let client = User {
        id: new_uuid(),
        kind: IdentityKind::Client,
        email: None,
        name: None,
        ..user.clone()
    };
    assert!(store.import_user(&client).await.unwrap());
    assert_eq!(
        store.get_user(client.id).await.unwrap(),
        Some(client.clone())
    );
    let found = store
        .upsert_identity(&user.issuer, IdentityKind::Client, &user.subject, None, NOW)
        .await
        .unwrap();
    assert_eq!(found.id, client.id, "an imported client keeps its id");

    // Listed in pages by id.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_users(after, 7).await.unwrap();
        assert!(page.len() <= 7);
        assert!(page.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.into_iter().map(|u| u.id));
    }
    assert!(seen.contains(&user.id));

    a_rotated_session_imports_whole(store, &again).await;
}

/// A rotated session, copied whole: both ids find it, nothing reset, indexed like a
/// created one.
async fn a_rotated_session_imports_whole(store: &dyn Store, user: &User) {
    let (old, s) = new_session(store, user, Some("sid-i")).await;
    let new = SessionId::generate();
    store
        .rotate_session_id(
            s.family_id,
            0,
            &new.hash(),
            NOW + 30,
            "handover",
            &s.tokens,
            false,
        )
        .await
        .unwrap();
    let record = store.get_session(&new.hash()).await.unwrap().unwrap();
    assert!(store.delete_session(s.family_id).await.unwrap());
    assert!(store.import_session(&record).await.unwrap());
    assert!(
        !store.import_session(&record).await.unwrap(),
        "already there"
    );
    let by_new = store.get_session(&new.hash()).await.unwrap().unwrap();
    let by_old = store.get_session(&old.hash()).await.unwrap().unwrap();
    assert_eq!(by_old.matched, IdMatch::Previous);
    for got in [&by_new, &by_old] {
        assert_eq!(got.family_id, record.family_id);
        assert_eq!(got.tokens, record.tokens);
        assert_eq!(got.token_version, record.token_version);
        assert_eq!(got.claims, record.claims);
        assert_eq!(got.previous_handover, record.previous_handover);
        assert_eq!(got.current_seen, record.current_seen);
        assert_eq!(got.idle_expires_at, record.idle_expires_at);
        assert_eq!(got.provider_sid, record.provider_sid);
    }
    assert_eq!(
        store
            .delete_sessions_by_provider_sid(&user.issuer, "sid-i")
            .await
            .unwrap(),
        1,
        "an imported session is indexed like a created one"
    );
}
