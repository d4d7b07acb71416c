use sqlx::ConnectOptions as _;
use sqlx::sqlite::SqliteConnectOptions;

use super::*;
use crate::store::conformance::CrossHandle;

#[tokio::test]
async fn sqlite_in_memory_passes_the_conformance_suite() {
    let store = SqliteStore::in_memory().await.unwrap();
    super::super::conformance::run_all(&store).await;
}

#[tokio::test]
async fn sqlite_file_passes_the_conformance_suite() {
    let dir = std::env::temp_dir().join(format!("pc-store-{}", crate::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir.join("p.db")).await.unwrap();
    super::super::conformance::run_all(&store).await;
    // A second handle on the file: another instance, or the admin CLI.
    let other = SqliteStore::open(&dir.join("p.db")).await.unwrap();
    super::super::conformance::run_shared(&store, &other, CrossHandle::Reset).await;
    drop((store, other));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn own_writes_are_claimed_and_a_write_by_hand_resets() {
    let dir = std::env::temp_dir().join(format!("pc-store-{}", crate::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.db");
    let store = SqliteStore::open(&path).await.unwrap();
    // Every kind of write this handle makes, through the conformance suite.
    super::super::conformance::run_all(&store).await;
    store.purge_expired(i64::MAX / 2).await.unwrap();
    let unclaimed: i64 = sqlx::query_scalar("SELECT count(*) FROM feed_log WHERE origin <> ?1")
        .bind(store.feed.origin())
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(
        unclaimed, 0,
        "every write-log entry of our own writes is claimed"
    );

    // An operator's `sqlite3 portcullis.db "DELETE FROM sessions …"`.
    let (id, _) = crate::store::conformance::a_stored_session(&store).await;
    let mut sub = store.feed().subscribe();
    let mut by_hand = SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    sqlx::query("DELETE FROM sessions WHERE id_hash = ?1")
        .bind(id.hash().as_str())
        .execute(&mut by_hand)
        .await
        .unwrap();
    assert_eq!(
        super::super::conformance::next_event(&mut sub).await,
        FeedEvent::Reset,
        "a change made behind the gateway's back resets its caches"
    );
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A database from before several providers (migrations 1–6): its sessions and sign-ins
/// in flight are the `default` provider's once migrated, and its users are users.
#[tokio::test]
async fn a_database_from_before_several_providers_keeps_its_sessions_as_defaults() {
    let dir = std::env::temp_dir().join(format!("pc-store-{}", crate::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.db");
    let old = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    super::schema::apply_migrations(&old, &super::schema::MIGRATIONS[..6])
        .await
        .unwrap();
    let (user, id) = (
        crate::random::new_uuid(),
        crate::store::id::SessionId::generate(),
    );
    sqlx::query("INSERT INTO users (id, issuer, subject, created_at, updated_at) VALUES (?1, 'https://i', 's', 1, 1)")
        .bind(user.to_string())
        .execute(&old)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sessions (family_id, id_hash, current_seen, user_id, created_at, last_seen_at, \
         idle_expires_at, absolute_expires_at, token_version, claims, email_verified) \
         VALUES (?1, ?2, 1, ?3, 1, 1, 4000000000, 4000000000, 0, '{}', 0)",
    )
    .bind(crate::random::new_uuid().to_string())
    .bind(id.hash().as_str())
    .bind(user.to_string())
    .execute(&old)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO login_transactions (state_hash, binding_hash, nonce, verifier, return_to, \
         created_at, expires_at) VALUES ('st', 'b', 'n', 'v1.x.y', '/', 1, 4000000000)",
    )
    .execute(&old)
    .await
    .unwrap();
    old.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    let got = store.get_session_fresh(&id.hash()).await.unwrap().unwrap();
    assert_eq!(got.provider_id, "default");
    let tx = store.take_transaction("st").await.unwrap().unwrap();
    assert_eq!(tx.provider_id, "default");
    // Migration 8 rebuilt `users` keyed (issuer, kind, subject): the session still
    // finds its user, who is a user, and a client of the same subject is another row.
    assert_eq!((got.user.id, got.user.kind), (user, IdentityKind::User));
    let client = store
        .upsert_identity("https://i", IdentityKind::Client, "s", None, 5)
        .await
        .unwrap();
    assert_ne!(client.id, user);
    // Foreign keys are on again once the migrations are done.
    let orphan = sqlx::query(
        "INSERT INTO sessions (family_id, id_hash, current_seen, user_id, created_at, last_seen_at, \
         idle_expires_at, absolute_expires_at, token_version, claims, email_verified) \
         VALUES ('f', 'h', 1, 'nobody', 1, 1, 2, 2, 0, '{}', 0)",
    )
    .execute(&store.pool)
    .await;
    assert!(orphan.is_err(), "a session of no user is refused");
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}
