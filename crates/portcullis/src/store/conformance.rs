//! The one test suite every store backend must pass, so that SQLite, PostgreSQL and
//! Redis are interchangeable. Each backend's tests call [`run_all`] with a fresh store.
//! Records use random names so that the suite can share a database with other runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use uuid::Uuid;

use super::*;
use crate::random::random_token;
use crate::session::id::SessionId;
use crate::session::new_uuid;

const NOW: UnixTime = 1_900_000_000;

/// Runs every conformance check against `store`.
pub async fn run_all(store: &dyn Store) {
    store.ping().await.expect("ping");
    users_are_keyed_by_issuer_and_subject(store).await;
    sessions_round_trip(store).await;
    token_updates_compare_and_swap(store).await;
    rotation_keeps_the_previous_id_for_lookups(store).await;
    sessions_end_by_id_user_sid_and_all(store).await;
    transactions_are_single_use_and_bounded(store).await;
    transactions_are_bounded_in_total(store).await;
    concurrent_takes_succeed_once(store).await;
    leases_exclude_each_other_until_expiry(store).await;
    replay_cache_remembers_once(store).await;
    expiry_purges_everything_old(store).await;
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
            .rotate_session_id(s.family_id, 0, &new.hash(), NOW + 30, "handover-1", &tokens)
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
                &tokens
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
    // Created far in the future so that they are the newest in a shared database.
    let at = NOW + 50_000_000;
    let txs: Vec<_> = (0..4)
        .map(|i| transaction(&unique("binding"), at + i))
        .collect();
    for t in &txs {
        store
            .put_transaction(
                t,
                TransactionLimits {
                    per_browser: 16,
                    total: 2,
                },
            )
            .await
            .unwrap();
    }
    assert!(
        store
            .take_transaction(&txs[0].state_hash)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .take_transaction(&txs[1].state_hash)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .take_transaction(&txs[2].state_hash)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .take_transaction(&txs[3].state_hash)
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
    let takes = (0..8).map(|_| store.take_transaction(&tx.state_hash));
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
