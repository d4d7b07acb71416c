//! Signing keys, and two handles on one shared store: one key, one lease, one winner
//! of a compare-and-swap, one take, every write seen by the other's subscribers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::transactions::transaction;
use super::*;

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

pub(super) async fn signing_keys_are_written_once_per_generation(store: &dyn Store) {
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

pub(super) async fn two_handles_agree_on_one_signing_key(a: &dyn Store, b: &dyn Store) {
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

/// Two instances creating one shared value at once (the DPoP key) keep the first.
pub(super) async fn two_handles_agree_on_one_added_setting(a: &dyn Store, b: &dyn Store) {
    let key = unique("shared-key");
    let (wa, wb) = tokio::join!(a.add_setting(&key, "from-a"), b.add_setting(&key, "from-b"));
    assert!(wa.unwrap() ^ wb.unwrap(), "exactly one writer wins");
    let seen_a = a.get_setting(&key).await.unwrap();
    assert_eq!(seen_a, b.get_setting(&key).await.unwrap());
    assert!(matches!(seen_a.as_deref(), Some("from-a" | "from-b")));
    assert!(a.delete_setting(&key).await.unwrap());
}

pub(super) async fn two_handles_race_one_lease(a: &dyn Store, b: &dyn Store) {
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

pub(super) async fn compare_and_swap_loses_to_another_writer(a: &dyn Store, b: &dyn Store) {
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

pub(super) async fn take_once_across_handles(a: &dyn Store, b: &dyn Store) {
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

pub(super) async fn writes_of_another_handle_reach_subscribers(
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
