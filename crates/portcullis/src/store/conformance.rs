//! The one test suite every store backend must pass, so that SQLite, PostgreSQL and
//! Redis are interchangeable. Each backend's tests call [`run_all`] with a fresh store.
//! Records use random names so that the suite can share a database with other runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use uuid::Uuid;

use super::*;
use crate::random::new_uuid;
use crate::random::random_token;
use crate::store::id::SessionId;

const NOW: UnixTime = 1_900_000_000;

/// Runs every conformance check against `store`.
pub async fn run_all(store: &dyn Store) {
    store.ping().await.expect("ping");
    users_are_keyed_by_issuer_and_subject(store).await;
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
        },
        user_agent: Some("conformance".into()),
        claims: r#"{"sub":"s","groups":["a","b"]}"#.into(),
        email_verified: true,
    }
}

async fn new_session(store: &dyn Store, user: &User, sid: Option<&str>) -> (SessionId, NewSession) {
    let id = SessionId::generate();
    let mut s = new_session_record(user, &id);
    s.provider_sid = sid.map(str::to_owned);
    store.create_session(&s).await.unwrap();
    (id, s)
}

async fn users_are_keyed_by_issuer_and_subject(store: &dyn Store) {
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
    assert_eq!(store.get_user(a.id).await.unwrap(), Some(again));
    assert_eq!(store.get_user(Uuid::nil()).await.unwrap(), None);
}

async fn sessions_round_trip(store: &dyn Store) {
    let user = new_user(store).await;
    let (id, s) = new_session(store, &user, Some("psid")).await;
    let got = store
        .get_session(&id.hash())
        .await
        .unwrap()
        .expect("session");
    assert_eq!(got.family_id, s.family_id);
    assert_eq!(got.matched, IdMatch::Current);
    assert_eq!(got.user.id, user.id);
    assert_eq!(got.tokens, s.tokens);
    assert_eq!(got.provider_sid.as_deref(), Some("psid"));
    assert_eq!(got.token_version, 0);
    assert!(got.current_seen);
    assert_eq!(got.expires_at(), NOW + 3600);
    assert!(
        store
            .get_session(&SessionId::generate().hash())
            .await
            .unwrap()
            .is_none()
    );

    store
        .touch_session(s.family_id, NOW + 60, NOW + 3660, Some(&id.hash()))
        .await
        .unwrap();
    let touched = store.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(touched.last_seen_at, NOW + 60);
    assert_eq!(touched.idle_expires_at, NOW + 3660);
    // An older touch never moves the deadline back.
    store
        .touch_session(s.family_id, NOW + 10, NOW + 3610, Some(&id.hash()))
        .await
        .unwrap();
    let still = store.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(still.idle_expires_at, NOW + 3660);

    let listed = store.list_sessions(Some(user.id), NOW).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].family_id, s.family_id);
    assert!(
        store
            .list_sessions(Some(user.id), NOW + 4000)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn token_updates_compare_and_swap(store: &dyn Store) {
    let user = new_user(store).await;
    let (id, s) = new_session(store, &user, None).await;
    let next = TokenSet {
        refresh_token: sealed("r2"),
        access_token: sealed("a2"),
        id_token: None,
        access_expires_at: Some(NOW + 600),
        refresh_expires_at: Some(NOW + 7200),
        access_issued_at: Some(NOW + 300),
    };
    assert!(store.update_tokens(s.family_id, 0, &next).await.unwrap());
    assert!(
        !store.update_tokens(s.family_id, 0, &next).await.unwrap(),
        "a stale version must not win"
    );
    let got = store.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(got.tokens, next);
    assert_eq!(got.token_version, 1);
    assert_eq!(got.expires_at(), NOW + 3600);
}

/// Lost rotations (docs/sessions.md): the browser holds the previous id and never received
/// the current one; the next rotation keeps the browser's id as the previous one.
async fn a_lost_rotation_keeps_the_id_the_browser_holds(store: &dyn Store) {
    let user = new_user(store).await;
    let (held, s) = new_session(store, &user, None).await;
    let unseen = SessionId::generate();
    let t = TokenSet::default();
    // Keeping needs a previous id: none yet.
    assert!(
        !store
            .rotate_session_id(s.family_id, 0, &unseen.hash(), NOW + 30, "h1", &t, true)
            .await
            .unwrap()
    );
    assert!(
        store
            .rotate_session_id(s.family_id, 0, &unseen.hash(), NOW + 30, "h1", &t, false)
            .await
            .unwrap()
    );
    // The next rotation while `unseen` was never seen keeps `held`.
    let next = SessionId::generate();
    assert!(
        store
            .rotate_session_id(s.family_id, 1, &next.hash(), NOW + 60, "h2", &t, true)
            .await
            .unwrap()
    );
    let by_held = store.get_session(&held.hash()).await.unwrap().unwrap();
    assert_eq!(by_held.matched, IdMatch::Previous);
    assert_eq!(by_held.id_hash, next.hash());
    assert_eq!(by_held.previous_handover.as_deref(), Some("h2"));
    assert_eq!(by_held.previous_valid_until, Some(NOW + 60));
    assert!(
        store.get_session(&unseen.hash()).await.unwrap().is_none(),
        "the id that never reached the browser finds nothing"
    );
    // Once the current id has been seen, keeping is refused: its holder must not lose it.
    store
        .touch_session(s.family_id, NOW + 1, NOW + 3601, Some(&next.hash()))
        .await
        .unwrap();
    let last = SessionId::generate();
    assert!(
        !store
            .rotate_session_id(s.family_id, 2, &last.hash(), NOW + 90, "h3", &t, true)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_session(&next.hash())
            .await
            .unwrap()
            .unwrap()
            .matched,
        IdMatch::Current
    );
}

async fn rotation_keeps_the_previous_id_for_lookups(store: &dyn Store) {
    let user = new_user(store).await;
    let (old, s) = new_session(store, &user, None).await;
    let new = SessionId::generate();
    let tokens = TokenSet {
        refresh_token: sealed("r-rot"),
        ..Default::default()
    };
    assert!(
        store
            .rotate_session_id(
                s.family_id,
                0,
                &new.hash(),
                NOW + 30,
                "handover-1",
                &tokens,
                false
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_session_id(
                s.family_id,
                0,
                &SessionId::generate().hash(),
                NOW + 30,
                "handover-2",
                &tokens,
                false
            )
            .await
            .unwrap()
    );
    let by_new = store.get_session(&new.hash()).await.unwrap().unwrap();
    assert_eq!(by_new.matched, IdMatch::Current);
    assert!(!by_new.current_seen);
    assert_eq!(by_new.tokens, tokens);
    let by_old = store.get_session(&old.hash()).await.unwrap().unwrap();
    assert_eq!(by_old.matched, IdMatch::Previous);
    assert_eq!(by_old.family_id, s.family_id);
    assert_eq!(by_old.previous_valid_until, Some(NOW + 30));
    assert_eq!(by_old.previous_handover.as_deref(), Some("handover-1"));
    // Activity through the old id is not the new id being seen (the theft rule).
    for seen in [None, Some(old.hash())] {
        store
            .touch_session(s.family_id, NOW + 1, NOW + 3601, seen.as_ref())
            .await
            .unwrap();
    }
    assert!(
        !store
            .get_session(&new.hash())
            .await
            .unwrap()
            .unwrap()
            .current_seen
    );
    // The old id is still found after its grace window: the caller applies the rule.
    assert_eq!(
        store
            .get_session(&old.hash())
            .await
            .unwrap()
            .unwrap()
            .matched,
        IdMatch::Previous
    );
    store
        .touch_session(s.family_id, NOW + 1, NOW + 3601, Some(&new.hash()))
        .await
        .unwrap();
    assert!(
        store
            .get_session(&new.hash())
            .await
            .unwrap()
            .unwrap()
            .current_seen
    );
}

async fn sessions_end_by_id_user_sid_and_all(store: &dyn Store) {
    let user = new_user(store).await;
    let (a, sa) = new_session(store, &user, None).await;
    assert!(store.delete_session(sa.family_id).await.unwrap());
    assert!(!store.delete_session(sa.family_id).await.unwrap());
    assert!(store.get_session(&a.hash()).await.unwrap().is_none());

    let (b, _) = new_session(store, &user, None).await;
    let (c, _) = new_session(store, &user, None).await;
    let other = new_user(store).await;
    let (d, _) = new_session(store, &other, Some("sid-d")).await;
    assert_eq!(store.delete_user_sessions(user.id).await.unwrap(), 2);
    assert!(store.get_session(&b.hash()).await.unwrap().is_none());
    assert!(store.get_session(&c.hash()).await.unwrap().is_none());
    assert!(store.get_session(&d.hash()).await.unwrap().is_some());

    assert_eq!(
        store
            .delete_sessions_by_provider_sid("https://not-the-issuer", "sid-d")
            .await
            .unwrap(),
        0,
        "a sid is scoped to its issuer"
    );
    assert_eq!(
        store
            .delete_sessions_by_provider_sid(&other.issuer, "sid-d")
            .await
            .unwrap(),
        1
    );
    assert!(store.get_session(&d.hash()).await.unwrap().is_none());

    // All sessions of one (issuer, subject): back-channel logout with only `sub`.
    let (f, _) = new_session(store, &other, None).await;
    let (g, _) = new_session(store, &other, Some("sid-g")).await;
    let (h, _) = new_session(store, &user, None).await;
    assert_eq!(
        store
            .delete_sessions_by_subject("https://not-the-issuer", &other.subject)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .delete_sessions_by_subject(&other.issuer, &other.subject)
            .await
            .unwrap(),
        2
    );
    assert!(store.get_session(&f.hash()).await.unwrap().is_none());
    assert!(store.get_session(&g.hash()).await.unwrap().is_none());
    assert!(store.get_session(&h.hash()).await.unwrap().is_some());

    let (e, _) = new_session(store, &other, None).await;
    assert!(store.delete_all_sessions().await.unwrap() >= 1);
    assert!(store.get_session(&e.hash()).await.unwrap().is_none());
}

fn transaction(binding: &str, created_at: UnixTime) -> LoginTransaction {
    LoginTransaction {
        state_hash: unique("state"),
        binding_hash: binding.to_owned(),
        nonce: unique("nonce"),
        verifier: Sealed::from_stored(unique("v1.test.verifier")),
        return_to: "/x?y=1".into(),
        created_at,
        expires_at: created_at + 600,
    }
}

async fn transactions_are_single_use_and_bounded(store: &dyn Store) {
    let binding = unique("binding");
    let tx = transaction(&binding, NOW);
    store
        .put_transaction(&tx, TransactionLimits::default())
        .await
        .unwrap();
    assert_eq!(
        store.take_transaction(&tx.state_hash).await.unwrap(),
        Some(tx.clone())
    );
    assert_eq!(store.take_transaction(&tx.state_hash).await.unwrap(), None);

    // Several tabs: all kept up to the bound, then the oldest go first.
    let txs: Vec<_> = (0..5).map(|i| transaction(&binding, NOW + i)).collect();
    for t in &txs {
        store
            .put_transaction(
                t,
                TransactionLimits {
                    per_browser: 3,
                    total: 1_000_000,
                },
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store.take_transaction(&txs[0].state_hash).await.unwrap(),
        None
    );
    assert_eq!(
        store.take_transaction(&txs[1].state_hash).await.unwrap(),
        None
    );
    for t in &txs[2..] {
        assert!(
            store
                .take_transaction(&t.state_hash)
                .await
                .unwrap()
                .is_some()
        );
    }

    // Eviction is per browser: another binding's transactions stay.
    let other = transaction(&unique("binding"), NOW);
    store
        .put_transaction(&other, TransactionLimits::default())
        .await
        .unwrap();
    for i in 0..5 {
        let t = transaction(&binding, NOW + 10 + i);
        store
            .put_transaction(
                &t,
                TransactionLimits {
                    per_browser: 1,
                    total: 1_000_000,
                },
            )
            .await
            .unwrap();
    }
    assert!(
        store
            .take_transaction(&other.state_hash)
            .await
            .unwrap()
            .is_some()
    );
}

async fn transactions_are_bounded_in_total(store: &dyn Store) {
    // Created far in the future, so that every earlier test's transactions have expired.
    let at = NOW + 50_000_000;
    let limits = TransactionLimits {
        per_browser: 16,
        total: 2,
    };
    let txs: Vec<_> = (0..3)
        .map(|i| transaction(&unique("binding"), at + i))
        .collect();
    assert!(store.put_transaction(&txs[0], limits).await.unwrap());
    assert!(store.put_transaction(&txs[1], limits).await.unwrap());
    // At the bound: the new one is refused, no live one is dropped for it (D01).
    assert!(!store.put_transaction(&txs[2], limits).await.unwrap());
    assert!(
        store
            .take_transaction(&txs[2].state_hash)
            .await
            .unwrap()
            .is_none()
    );
    // Once they have expired, they make room first.
    let later = transaction(&unique("binding"), at + 700);
    assert!(store.put_transaction(&later, limits).await.unwrap());
    assert!(
        store
            .take_transaction(&txs[0].state_hash)
            .await
            .unwrap()
            .is_none(),
        "an expired transaction is gone"
    );
    assert!(
        store
            .take_transaction(&later.state_hash)
            .await
            .unwrap()
            .is_some()
    );
    // A live one survives a full store: taken while the bound refuses newcomers.
    let live = transaction(&unique("binding"), at + 701);
    let other = transaction(&unique("binding"), at + 702);
    let refused = transaction(&unique("binding"), at + 703);
    assert!(store.put_transaction(&live, limits).await.unwrap());
    assert!(store.put_transaction(&other, limits).await.unwrap());
    assert!(!store.put_transaction(&refused, limits).await.unwrap());
    assert!(
        store
            .take_transaction(&live.state_hash)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .take_transaction(&other.state_hash)
            .await
            .unwrap()
            .is_some()
    );
}

async fn concurrent_takes_succeed_once(store: &dyn Store) {
    let tx = transaction(&unique("binding"), NOW);
    store
        .put_transaction(&tx, TransactionLimits::default())
        .await
        .unwrap();
    let takes = (0..50).map(|_| store.take_transaction(&tx.state_hash));
    let results = join_all(takes).await;
    let won = results
        .into_iter()
        .filter(|r| matches!(r, Ok(Some(_))))
        .count();
    assert_eq!(won, 1, "a transaction is single use even under concurrency");
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

    // A rotated session, copied whole: both ids find it, nothing reset.
    let (old, s) = new_session(store, &again, Some("sid-i")).await;
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

/// Collects the events up to a sentinel write's, so that "exactly one" is checked
/// without waiting for silence.
async fn events_until_sentinel(store: &dyn Store, sub: &mut FeedSubscription) -> Vec<FeedEvent> {
    let user = new_user(store).await;
    let (_, sentinel) = new_session(store, &user, None).await;
    store.delete_session(sentinel.family_id).await.unwrap();
    let mut events = Vec::new();
    loop {
        let event = next_event(sub).await;
        if matches!(&event, FeedEvent::Changed(c) if c.family_id == sentinel.family_id) {
            return events;
        }
        events.push(event);
    }
}

fn changes_of(events: &[FeedEvent], family: Uuid) -> Vec<&SessionChange> {
    events
        .iter()
        .filter_map(|e| match e {
            FeedEvent::Changed(c) if c.family_id == family => Some(c),
            _ => None,
        })
        .collect()
}

/// G09: a sign-in (or refresh) that changes a user's email or name announces the user,
/// so that every cached session of theirs is dropped; the same profile again, or a new
/// user, announces nothing.
async fn a_changed_profile_is_announced(store: &dyn Store) {
    let (issuer, subject) = (unique("https://issuer"), unique("sub"));
    let profile = |email: Option<&str>, name: &str| UserProfile {
        email: email.map(str::to_owned),
        name: Some(name.to_owned()),
    };
    let mut sub = store.feed().subscribe();
    let user = store
        .upsert_user(&issuer, &subject, &profile(Some("a@example.com"), "A"), NOW)
        .await
        .unwrap();
    store
        .upsert_user(
            &issuer,
            &subject,
            &profile(Some("a@example.com"), "A"),
            NOW + 1,
        )
        .await
        .unwrap();
    let users_announced = |events: &[FeedEvent]| -> Vec<Uuid> {
        events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::UserChanged(u) => Some(*u),
                _ => None,
            })
            .collect()
    };
    let events = events_until_sentinel(store, &mut sub).await;
    if !events.contains(&FeedEvent::Reset) {
        assert!(
            users_announced(&events).is_empty(),
            "nothing changed: {events:?}"
        );
    }
    for changed in [profile(None, "A"), profile(None, "B")] {
        store
            .upsert_user(&issuer, &subject, &changed, NOW + 2)
            .await
            .unwrap();
        let events = events_until_sentinel(store, &mut sub).await;
        assert!(
            users_announced(&events) == [user.id] || events.contains(&FeedEvent::Reset),
            "{events:?}"
        );
    }
}

/// Settings the instances share: read back as written, replaced, removed; they never
/// expire.
async fn settings_are_kept_replaced_and_removed(store: &dyn Store) {
    let key = unique("client-auth");
    assert_eq!(store.get_setting(&key).await.unwrap(), None);
    store.put_setting(&key, "client_secret_post").await.unwrap();
    assert_eq!(
        store.get_setting(&key).await.unwrap().as_deref(),
        Some("client_secret_post")
    );
    store
        .put_setting(&key, "client_secret_basic")
        .await
        .unwrap();
    store.purge_expired(NOW + 100 * 365 * 86_400).await.unwrap();
    assert_eq!(
        store.get_setting(&key).await.unwrap().as_deref(),
        Some("client_secret_basic")
    );
    assert!(store.delete_setting(&key).await.unwrap());
    assert!(!store.delete_setting(&key).await.unwrap());
    assert_eq!(store.get_setting(&key).await.unwrap(), None);
}

/// Every write that ends or changes a session announces it once, with its id hashes.
async fn every_change_is_announced_once(store: &dyn Store) {
    let user = new_user(store).await;
    let (id, s) = new_session(store, &user, Some("sid-feed")).await;
    let mut sub = store.feed().subscribe();
    let family = s.family_id;
    let hashes = |c: &SessionChange| {
        let mut h: Vec<String> = c.id_hashes.iter().map(|h| h.as_str().to_owned()).collect();
        h.sort();
        h
    };
    let expect_one = |events: Vec<FeedEvent>, want: Vec<String>, what: &str| {
        let changes = changes_of(&events, family);
        assert_eq!(
            changes.len(),
            1,
            "{what}: exactly one message, got {events:?}"
        );
        let mut want = want;
        want.sort();
        assert_eq!(hashes(changes[0]), want, "{what}: names every id hash");
    };

    assert!(store.update_tokens(family, 0, &s.tokens).await.unwrap());
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        vec![id.hash().as_str().to_owned()],
        "update_tokens",
    );
    assert!(!store.update_tokens(family, 0, &s.tokens).await.unwrap());
    assert!(
        changes_of(&events_until_sentinel(store, &mut sub).await, family).is_empty(),
        "a lost compare-and-swap changes nothing and announces nothing"
    );

    let new = SessionId::generate();
    assert!(
        store
            .rotate_session_id(family, 1, &new.hash(), NOW + 30, "h", &s.tokens, false)
            .await
            .unwrap()
    );
    let both = vec![
        id.hash().as_str().to_owned(),
        new.hash().as_str().to_owned(),
    ];
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        both.clone(),
        "rotate_session_id",
    );

    // The first sighting of the new id is announced; later touches are not.
    store
        .touch_session(family, NOW + 1, NOW + 3601, Some(&new.hash()))
        .await
        .unwrap();
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        both.clone(),
        "first sighting",
    );
    store
        .touch_session(family, NOW + 2, NOW + 3602, Some(&new.hash()))
        .await
        .unwrap();
    assert!(
        changes_of(&events_until_sentinel(store, &mut sub).await, family).is_empty(),
        "an idle-deadline touch is not announced"
    );

    assert!(store.update_claims(family, "{}", false).await.unwrap());
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        both.clone(),
        "update_claims",
    );

    assert_eq!(
        store
            .delete_sessions_by_provider_sid(&user.issuer, "sid-feed")
            .await
            .unwrap(),
        1
    );
    expect_one(
        events_until_sentinel(store, &mut sub).await,
        both,
        "delete_sessions_by_provider_sid",
    );

    // Each ending write: by id, by user, by subject.
    for how in ["id", "user", "subject"] {
        let (id, s) = new_session(store, &user, None).await;
        let family = s.family_id;
        match how {
            "id" => assert!(store.delete_session(family).await.unwrap()),
            "user" => assert_eq!(store.delete_user_sessions(user.id).await.unwrap(), 1),
            _ => assert_eq!(
                store
                    .delete_sessions_by_subject(&user.issuer, &user.subject)
                    .await
                    .unwrap(),
                1
            ),
        }
        let events = events_until_sentinel(store, &mut sub).await;
        let changes = changes_of(&events, family);
        assert_eq!(changes.len(), 1, "delete by {how}: {events:?}");
        assert_eq!(changes[0].id_hashes, vec![id.hash()]);
    }

    // Everything at once: each session announced, or one reset.
    let (_, s) = new_session(store, &user, None).await;
    store.delete_all_sessions().await.unwrap();
    let event = next_event(&mut sub).await;
    let mut events = vec![event];
    if events[0] != FeedEvent::Reset {
        events.extend(events_until_sentinel(store, &mut sub).await);
    }
    assert!(
        events.contains(&FeedEvent::Reset) || changes_of(&events, s.family_id).len() == 1,
        "delete_all_sessions: {events:?}"
    );
}

fn signing_key(generation: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        generation,
        kid: unique("kid"),
        sealed_key: Sealed::from_stored(format!("v1.k.{}", random_token())),
        created_at: NOW,
    }
}

/// The next generation on a store that other runs may share.
async fn next_generation(store: &dyn Store) -> i64 {
    let keys = store.signing_keys().await.unwrap();
    keys.last().map_or(1, |k| k.generation + 1)
}

async fn signing_keys_are_written_once_per_generation(store: &dyn Store) {
    let generation = next_generation(store).await;
    let first = signing_key(generation);
    assert!(store.add_signing_key(&first).await.unwrap());
    // The same generation again (another instance starting at the same moment): kept
    // as the first writer left it.
    assert!(
        !store
            .add_signing_key(&signing_key(generation))
            .await
            .unwrap()
    );
    let later = signing_key(generation + 1);
    assert!(store.add_signing_key(&later).await.unwrap());
    let keys = store.signing_keys().await.unwrap();
    let ours: Vec<&SigningKeyRecord> = keys.iter().filter(|k| k.generation >= generation).collect();
    assert_eq!(ours, [&first, &later], "oldest first, as written");
    assert!(keys.windows(2).all(|w| w[0].generation < w[1].generation));
    // Keys do not expire.
    store.purge_expired(NOW + 100 * 365 * 86_400).await.unwrap();
    assert!(store.signing_keys().await.unwrap().contains(&later));
    // `keys prune` removes one generation, and only it.
    assert!(store.delete_signing_key(generation).await.unwrap());
    assert!(!store.delete_signing_key(generation).await.unwrap());
    let keys = store.signing_keys().await.unwrap();
    assert!(!keys.contains(&first) && keys.contains(&later));
}

async fn two_handles_agree_on_one_signing_key(a: &dyn Store, b: &dyn Store) {
    let generation = next_generation(a).await;
    let (ka, kb) = (signing_key(generation), signing_key(generation));
    let (wa, wb) = tokio::join!(a.add_signing_key(&ka), b.add_signing_key(&kb));
    assert!(wa.unwrap() ^ wb.unwrap(), "exactly one writer wins");
    let seen_a = a.signing_keys().await.unwrap();
    let seen_b = b.signing_keys().await.unwrap();
    assert_eq!(seen_a, seen_b);
    let winner = seen_a.iter().find(|k| k.generation == generation).unwrap();
    assert!(winner == &ka || winner == &kb);
}

async fn two_handles_race_one_lease(a: &dyn Store, b: &dyn Store) {
    for _ in 0..20 {
        let key = unique("lease");
        let (got_a, got_b) = tokio::join!(
            a.acquire_lease(&key, "a", NOW, NOW + 6),
            b.acquire_lease(&key, "b", NOW, NOW + 6)
        );
        assert!(
            got_a.unwrap() ^ got_b.unwrap(),
            "exactly one of two racing handles gets the lease"
        );
    }
    let key = unique("lease");
    assert!(a.acquire_lease(&key, "a", NOW, NOW + 6).await.unwrap());
    // A slow holder renews; the other handle never gets in meanwhile.
    for t in (2..20).step_by(2) {
        assert!(
            a.renew_lease(&key, "a", NOW + t, NOW + t + 6)
                .await
                .unwrap()
        );
        assert!(
            !b.acquire_lease(&key, "b", NOW + t + 1, NOW + t + 7)
                .await
                .unwrap()
        );
    }
    // The holder dies: the other gets the lease once it ran out.
    assert!(
        !b.acquire_lease(&key, "b", NOW + 23, NOW + 29)
            .await
            .unwrap()
    );
    assert!(
        b.acquire_lease(&key, "b", NOW + 24, NOW + 30)
            .await
            .unwrap()
    );
    assert!(!a.renew_lease(&key, "a", NOW + 25, NOW + 31).await.unwrap());
    a.release_lease(&key, "a").await.unwrap();
    assert!(
        !a.acquire_lease(&key, "a", NOW + 25, NOW + 31)
            .await
            .unwrap(),
        "a late holder's release does not free another's lease"
    );
}

async fn compare_and_swap_loses_to_another_writer(a: &dyn Store, b: &dyn Store) {
    let user = new_user(a).await;
    let (id, s) = new_session(a, &user, None).await;
    let read_a = a.get_session(&id.hash()).await.unwrap().unwrap();
    let read_b = b.get_session(&id.hash()).await.unwrap().unwrap();
    let mine = TokenSet {
        refresh_token: sealed("from-b"),
        ..s.tokens.clone()
    };
    assert!(
        b.update_tokens(s.family_id, read_b.token_version, &mine)
            .await
            .unwrap()
    );
    let new = SessionId::generate();
    assert!(
        !a.rotate_session_id(
            s.family_id,
            read_a.token_version,
            &new.hash(),
            NOW + 30,
            "h",
            &s.tokens,
            false
        )
        .await
        .unwrap(),
        "a writer with a stale version loses"
    );
    let now = a.get_session(&id.hash()).await.unwrap().unwrap();
    assert_eq!(now.tokens, mine, "the other writer's result stands");
    assert!(a.get_session(&new.hash()).await.unwrap().is_none());
}

async fn take_once_across_handles(a: &dyn Store, b: &dyn Store) {
    let tx = transaction(&unique("binding"), NOW);
    a.put_transaction(&tx, TransactionLimits::default())
        .await
        .unwrap();
    let takes = (0..50).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        store.take_transaction(&tx.state_hash)
    });
    let won = join_all(takes)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Some(_))))
        .count();
    assert_eq!(won, 1, "50 takers on two handles: one wins");
}

async fn writes_of_another_handle_reach_subscribers(
    a: &dyn Store,
    b: &dyn Store,
    cross: CrossHandle,
) {
    let user = new_user(a).await;
    let (id, s) = new_session(a, &user, None).await;
    let mut sub = a.feed().subscribe();
    assert!(b.delete_session(s.family_id).await.unwrap());
    loop {
        match (next_event(&mut sub).await, cross) {
            (FeedEvent::Reset, CrossHandle::Reset) => break,
            (FeedEvent::Changed(c), CrossHandle::Precise) if c.family_id == s.family_id => {
                assert_eq!(c.id_hashes, vec![id.hash()]);
                break;
            }
            (other, _) => assert!(
                !matches!(other, FeedEvent::Reset) || cross == CrossHandle::Reset,
                "unexpected reset"
            ),
        }
    }
}
