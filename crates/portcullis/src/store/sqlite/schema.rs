//! Opening a database: its connection settings, the watcher of other processes' writes,
//! and the schema migrations, embedded and applied in order once each.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions as _, SqlitePool};

use super::feed::watch_other_processes;
use super::{SqliteStore, unavailable};
use crate::store::StoreError;
use crate::store::feed::Tasks;
use crate::store::{ChangeFeed, STORE_TIMEOUT, StoreResult};

/// Schema migrations, applied in order once each; embedded in the binary.
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../../migrations/sqlite/0002_rotation.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/sqlite/0003_claims_and_feed.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/sqlite/0004_foreign_writes.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/sqlite/0005_signing_keys.sql"),
    ),
    (
        6,
        include_str!("../../../migrations/sqlite/0006_settings.sql"),
    ),
    (
        7,
        include_str!("../../../migrations/sqlite/0007_providers.sql"),
    ),
    (
        8,
        include_str!("../../../migrations/sqlite/0008_identity_kinds.sql"),
    ),
    (
        9,
        include_str!("../../../migrations/sqlite/0009_granted_scope.sql"),
    ),
];

pub(super) async fn migrate(pool: &SqlitePool) -> StoreResult<()> {
    apply_migrations(pool, MIGRATIONS).await
}

/// Applies the migrations (version, SQL) this database has not seen, in order, each in
/// its own transaction. Also used by the dev provider for its own database.
///
/// They run on one connection with foreign keys off, as SQLite's procedure for changing
/// a table requires (a rebuilt table is dropped while rows still refer to it), and each
/// is checked (`PRAGMA foreign_key_check`) before it commits. The connection is closed
/// afterwards rather than returned to the pool with foreign keys off.
pub async fn apply_migrations(
    pool: &SqlitePool,
    migrations: &[(i64, &'static str)],
) -> StoreResult<()> {
    let mut conn = pool.acquire().await.map_err(unavailable)?;
    let result = migrate_on(&mut conn, migrations).await;
    let restored = sqlx::raw_sql("PRAGMA foreign_keys = ON")
        .execute(&mut *conn)
        .await;
    if result.is_err() || restored.is_err() {
        // Never back into the pool with foreign keys off.
        drop(conn.detach());
    }
    result?;
    restored.map_err(unavailable)?;
    Ok(())
}

async fn migrate_on(
    conn: &mut sqlx::SqliteConnection,
    migrations: &[(i64, &'static str)],
) -> StoreResult<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS portcullis_migrations (version INTEGER PRIMARY KEY NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?;
    sqlx::raw_sql("PRAGMA foreign_keys = OFF")
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    for (version, sql) in migrations {
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(unavailable)?;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM portcullis_migrations WHERE version = ?1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        if done.is_none() {
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let dangling = sqlx::query("PRAGMA foreign_key_check")
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?;
            if !dangling.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "migration {version} would leave {} rows referring to nothing",
                    dangling.len()
                )));
            }
            sqlx::query("INSERT INTO portcullis_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(STORE_TIMEOUT);
        Self::connect(options).await
    }

    /// A private in-memory database, for tests.
    pub async fn in_memory() -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(unavailable)?
            .foreign_keys(true);
        // One connection: every connection to `:memory:` is its own database, so no
        // other process can write to it and nothing needs polling.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(STORE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            feed: ChangeFeed::in_process(),
            _tasks: Arc::default(),
        })
    }

    async fn connect(options: SqliteConnectOptions) -> StoreResult<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(STORE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(unavailable)?;
        migrate(&pool).await?;
        let feed = ChangeFeed::in_process();
        let tasks = Arc::new(Tasks::default());
        let watcher = options.connect().await.map_err(unavailable)?;
        let start: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM feed_log")
            .fetch_one(&pool)
            .await
            .map_err(unavailable)?;
        tasks.add(tokio::spawn(watch_other_processes(watcher, feed.clone(), start)).abort_handle());
        Ok(Self {
            pool,
            feed,
            _tasks: tasks,
        })
    }
}
