use super::*;

fn record(generation: i64, created_at: UnixTime) -> SigningKeyRecord {
    SigningKeyRecord {
        generation,
        kid: format!("k{generation}"),
        sealed_key: crate::session::Sealed::from_stored("unused".into()),
        created_at,
    }
}

fn ring(byte: u8) -> KeyRing {
    KeyRing::new(&crate::config::SecretKeys(vec![zeroize::Zeroizing::new(
        [byte; 32],
    )]))
    .unwrap()
}

/// Keys just read are not read again on the request path: only in the background,
/// until they are [`ACTIVATION`] old.
#[tokio::test]
async fn keys_read_just_now_are_read_again_in_the_background() {
    crate::install_crypto_provider();
    let store = crate::store::sqlite::SqliteStore::in_memory()
        .await
        .unwrap();
    let signer = Assertions::new("https://a".into(), "https://a".into());
    assert!(signer.too_old(1_000));
    signer.reload(&store, &ring(1), 1_000).await.unwrap();
    assert!(!signer.too_old(1_000 + ACTIVATION - 1));
    assert!(signer.stale(1_000 + RELOAD_EVERY));
    assert!(signer.too_old(1_000 + ACTIVATION));
}

/// G08: a ring that opens no stored key makes one emergency key, which signs at
/// once and is the only one published; the old ring's instance is then stale.
#[tokio::test]
async fn g08_a_new_ring_makes_an_emergency_key_that_signs_at_once() {
    crate::install_crypto_provider();
    let store = crate::store::sqlite::SqliteStore::in_memory()
        .await
        .unwrap();
    let (old, new) = (ring(1), ring(2));
    let before = Assertions::new("https://a".into(), "https://a".into());
    before.reload(&store, &old, 1_000).await.unwrap();
    let now = 5_000;
    let after = Assertions::new("https://a".into(), "https://a".into());
    after.reload(&store, &new, now).await.unwrap();
    let records = store.signing_keys().await.unwrap();
    assert_eq!(records.len(), 2);
    let emergency = &records[1];
    assert_eq!(emergency.generation, 2);
    assert_eq!(
        after.key_set().signing(now).unwrap().record.kid,
        emergency.kid
    );
    let published = after.jwks(now);
    assert_eq!(published["keys"].as_array().unwrap().len(), 1);
    assert_eq!(published["keys"][0]["kid"], emergency.kid.as_str());
    // A second instance on the new ring adds nothing.
    let again = Assertions::new("https://a".into(), "https://a".into());
    again.reload(&store, &new, now + 1).await.unwrap();
    assert_eq!(store.signing_keys().await.unwrap().len(), 2);
    assert!(stale_ring(&records, &old) && !stale_ring(&records, &new));
    let unreadable: Vec<i64> = unreadable_keys(&records, &new)
        .iter()
        .map(|r| r.generation)
        .collect();
    assert_eq!(unreadable, [1]);
    assert!(!stale_ring(&records[..1], &old) && !stale_ring(&[], &new));
}

/// The first key, made by an instance whose clock is ahead, signs at once on an
/// instance whose clock is behind (instances' clocks differ a little).
#[tokio::test]
async fn the_first_key_signs_at_once_on_an_instance_whose_clock_is_behind() {
    crate::install_crypto_provider();
    let store = crate::store::sqlite::SqliteStore::in_memory()
        .await
        .unwrap();
    let ahead = Assertions::new("https://a".into(), "https://a".into());
    ahead.reload(&store, &ring(1), 1_002).await.unwrap();
    let behind = Assertions::new("https://a".into(), "https://a".into());
    behind.reload(&store, &ring(1), 1_000).await.unwrap();
    let made = &store.signing_keys().await.unwrap()[0];
    assert_eq!((made.generation, made.created_at), (1, 1_002));
    assert_eq!(
        behind.key_set().signing(1_000).unwrap().record.kid,
        made.kid
    );
    assert_eq!(behind.jwks(1_000)["keys"].as_array().unwrap().len(), 1);
}

#[test]
fn retired_keys_are_out_of_use_once_their_assertions_have_expired() {
    let records = [record(2, 1_000), record(1, 0)];
    let kids = |now| -> Vec<String> {
        in_use(&records, now)
            .iter()
            .map(|r| r.kid.clone())
            .collect()
    };
    // The successor signs from 1_000 + ACTIVATION; the old key's last assertions
    // live LIFETIME more, plus a minute of skew.
    let retired = 1_000 + ACTIVATION + LIFETIME + 60;
    assert_eq!(kids(1_000), ["k1", "k2"]);
    assert_eq!(kids(retired - 1), ["k1", "k2"]);
    assert_eq!(kids(retired), ["k2"]);
    assert_eq!(
        in_use(&records[1..], 5_000_000).len(),
        1,
        "the newest stays"
    );
}
