//! Login transactions: single use, bounded per binding and in total, taken once under
//! concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

pub(super) fn transaction(binding: &str, created_at: UnixTime) -> LoginTransaction {
    LoginTransaction {
        state_hash: unique("state"),
        binding_hash: binding.to_owned(),
        nonce: unique("nonce"),
        verifier: Sealed::from_stored(unique("v1.test.verifier")),
        return_to: "/x?y=1".into(),
        created_at,
        expires_at: created_at + 600,
        provider_id: "partner".into(),
    }
}

pub(super) async fn transactions_are_single_use_and_bounded(store: &dyn Store) {
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
        assert!(taken(store, t).await);
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
    assert!(taken(store, &other).await);
}

pub(super) async fn transactions_are_bounded_in_total(store: &dyn Store) {
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
    assert!(!taken(store, &txs[2]).await);
    // Once they have expired, they make room first.
    let later = transaction(&unique("binding"), at + 700);
    assert!(store.put_transaction(&later, limits).await.unwrap());
    assert!(
        !taken(store, &txs[0]).await,
        "an expired transaction is gone"
    );
    assert!(taken(store, &later).await);
    // A live one survives a full store: taken while the bound refuses newcomers.
    let live = transaction(&unique("binding"), at + 701);
    let other = transaction(&unique("binding"), at + 702);
    let refused = transaction(&unique("binding"), at + 703);
    assert!(store.put_transaction(&live, limits).await.unwrap());
    assert!(store.put_transaction(&other, limits).await.unwrap());
    assert!(!store.put_transaction(&refused, limits).await.unwrap());
    assert!(taken(store, &live).await);
    assert!(taken(store, &other).await);
}

pub(super) async fn concurrent_takes_succeed_once(store: &dyn Store) {
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

/// Whether `tx` could be taken (and so is gone now).
async fn taken(store: &dyn Store, tx: &LoginTransaction) -> bool {
    store
        .take_transaction(&tx.state_hash)
        .await
        .unwrap()
        .is_some()
}
