#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::*;
use crate::store::FeedEvent;
use crate::store::conformance::{self, CrossHandle, next_event};

/// The test database, or `None` (and one line on stderr) when none is configured.
pub(crate) fn test_url() -> Option<String> {
    let url = std::env::var("PORTCULLIS_TEST_POSTGRES_URL").ok();
    if url.is_none() {
        eprintln!("skipped: set PORTCULLIS_TEST_POSTGRES_URL to run the PostgreSQL store tests");
    }
    url
}

/// A fresh prefix per test, so tests run in parallel on one database.
pub(crate) fn test_prefix() -> String {
    format!("t{}", &crate::random::random_token()[..12])
        .to_ascii_lowercase()
        .replace('-', "_")
}

/// Drops a test prefix's tables.
async fn drop_prefix(store: &PostgresStore) {
    let p = &store.sql.prefix;
    for table in [
        "sessions",
        "users",
        "login_transactions",
        "refresh_leases",
        "replay_cache",
        "migrations",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {p}_{table}"
        )))
        .execute(&store.pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn postgres_passes_the_conformance_suite() {
    let Some(url) = test_url() else { return };
    let store = PostgresStore::connect(&url, &test_prefix()).await.unwrap();
    conformance::run_all(&store).await;
    drop_prefix(&store).await;
}

#[tokio::test]
async fn two_postgres_pools_pass_the_shared_suite() {
    let Some(url) = test_url() else { return };
    let prefix = test_prefix();
    // Two instances starting together on an empty database migrate once.
    let (a, b) = tokio::join!(
        PostgresStore::connect(&url, &prefix),
        PostgresStore::connect(&url, &prefix)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    conformance::run_shared(&a, &b, CrossHandle::Precise).await;
    drop_prefix(&a).await;
}

/// Waits, bounded, until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_killed_feed_connection_resets_and_recovers() {
    let Some(url) = test_url() else { return };
    let store = PostgresStore::connect(&url, &test_prefix()).await.unwrap();
    eventually("the feed is live", || store.feed().is_live()).await;
    let mut sub = store.feed().subscribe();
    // The listener is the connection that LISTENs on our channel.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN %' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
    )
    .bind(&store.sql.channel)
    .fetch_all(&store.pool)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "found the listening connection");
    loop {
        if next_event(&mut sub).await == FeedEvent::Reset {
            break;
        }
    }
    eventually("the feed is live again", || store.feed().is_live()).await;
    // And messages flow again.
    let (_, family) = conformance::a_stored_session(&store).await;
    assert!(store.delete_session(family).await.unwrap());
    loop {
        if let FeedEvent::Changed(c) = next_event(&mut sub).await
            && c.family_id == family
        {
            break;
        }
    }
    drop_prefix(&store).await;
}
