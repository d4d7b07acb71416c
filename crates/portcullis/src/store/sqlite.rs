//! The SQLite backend (sqlx, WAL): the embedded default for a single instance.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use std::sync::Arc;

use sqlx::{ConnectOptions as _, SqliteConnection};

use super::feed::{HEARTBEAT_EVERY, Tasks};
use super::{
    ChangeFeed, FeedEvent, LoginTransaction, NewSession, STORE_TIMEOUT, SessionChange,
    SessionRecord, SigningKeyRecord, Store, StoreError, StoreResult, TokenSet, TransactionLimits,
    User, UserProfile, timed,
};
use crate::clock::UnixTime;
use crate::store::Sealed;
use crate::store::id::IdHash;

/// Schema migrations, applied in order once each; embedded in the binary.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_rotation.sql")),
    (
        3,
        include_str!("../../migrations/sqlite/0003_claims_and_feed.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_foreign_writes.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_signing_keys.sql"),
    ),
    (6, include_str!("../../migrations/sqlite/0006_settings.sql")),
];

/// Write-log entries kept for pollers in other processes; a poller that finds a gap
/// resets.
const FEED_LOG_KEEP: i64 = 10_000;

async fn migrate(pool: &SqlitePool) -> StoreResult<()> {
    apply_migrations(pool, MIGRATIONS).await
}

/// Applies the migrations (version, SQL) this database has not seen, in order, each in
/// its own transaction. Also used by the dev provider for its own database.
pub async fn apply_migrations(
    pool: &SqlitePool,
    migrations: &[(i64, &'static str)],
) -> StoreResult<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS portcullis_migrations (version INTEGER PRIMARY KEY NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(unavailable)?;
    for (version, sql) in migrations {
        let mut tx = pool.begin().await.map_err(unavailable)?;
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

/// Sessions, users and transactions in one SQLite file.
///
/// The change feed is in-process for this handle's own writes (published after each
/// commit). Writes by anyone else (the admin CLI, `sqlite3` by hand) are noticed by
/// polling `PRAGMA data_version` every 250 ms on a connection of its own: triggers log
/// every change to users and sessions in `feed_log`, this handle claims its own entries
/// inside the writing transaction, and an entry it did not claim is a reset.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    feed: ChangeFeed,
    _tasks: Arc<Tasks>,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
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

    /// Starts a write to users or sessions. `BEGIN IMMEDIATE` takes the write lock at
    /// once, so the write-log entries after `mark` are exactly this transaction's.
    async fn write(&self) -> StoreResult<Write<'_>> {
        let mut db = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let mark: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM feed_log")
            .fetch_one(&mut *db)
            .await
            .map_err(unavailable)?;
        Ok(Write {
            db,
            mark,
            store: self,
        })
    }

    /// Deletes the sessions matching `condition` (SQL over fixed text, values bound as
    /// `?1`, `?2`) and announces each.
    async fn delete_where(&self, condition: &'static str, values: &[&str]) -> StoreResult<u64> {
        timed(async {
            let mut w = self.write().await?;
            let sql = format!(
                "DELETE FROM sessions WHERE {condition} RETURNING family_id, id_hash, previous_id_hash"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for v in values {
                query = query.bind(*v);
            }
            let rows = query.fetch_all(&mut *w.db).await.map_err(unavailable)?;
            let changes = w.commit(changes_from_rows(&rows)?).await?;
            Ok(changes.len() as u64)
        })
        .await
    }
}

/// A write transaction on users or sessions (see [`SqliteStore::write`]).
struct Write<'a> {
    db: sqlx::Transaction<'static, sqlx::Sqlite>,
    mark: i64,
    store: &'a SqliteStore,
}

impl Write<'_> {
    /// Claims this transaction's write-log entries, commits, then publishes `changes`
    /// (the sessions it changed or ended).
    async fn commit(mut self, changes: Vec<SessionChange>) -> StoreResult<Vec<SessionChange>> {
        sqlx::query("UPDATE feed_log SET origin = ?1 WHERE seq > ?2")
            .bind(self.store.feed.origin())
            .bind(self.mark)
            .execute(&mut *self.db)
            .await
            .map_err(unavailable)?;
        self.db.commit().await.map_err(unavailable)?;
        for change in &changes {
            self.store.feed.publish(FeedEvent::Changed(change.clone()));
        }
        Ok(changes)
    }
}

/// New write-log entries: the first and last sequence numbers, and how many are not ours.
type LogSummary = (Option<i64>, Option<i64>, i64);

/// Polls for writes by other processes (docs/sessions.md: every 250 ms) and turns each
/// into a reset: this process cannot know what they changed.
async fn watch_other_processes(mut conn: SqliteConnection, feed: ChangeFeed, mut seen: i64) {
    let mut version: Option<i64> = None;
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now: Result<Vec<i64>, _> = sqlx::query_scalar("PRAGMA data_version")
            .fetch_all(&mut conn)
            .await;
        let Some(now) = now.ok().and_then(|v| v.into_iter().next()) else {
            feed.publish(FeedEvent::Reset);
            continue;
        };
        if version == Some(now) {
            continue;
        }
        version = Some(now);
        // One row however much was written: the first and last new entries and how many
        // of them this handle did not claim.
        // (`fetch_all`: a statement left unfinished would hold a read transaction open,
        // and this connection would never see another write.)
        let summary: Result<Vec<LogSummary>, _> = sqlx::query_as(
            "SELECT min(seq), max(seq), coalesce(sum(origin <> ?2), 0) FROM feed_log WHERE seq > ?1",
        )
        .bind(seen)
        .bind(feed.origin())
        .fetch_all(&mut conn)
        .await;
        let Some((first, last, foreign)) = summary.ok().and_then(|rows| rows.into_iter().next())
        else {
            feed.publish(FeedEvent::Reset);
            continue;
        };
        // A gap: entries pruned before we read them, so we cannot know whose they were.
        let gap = first.is_some_and(|first| first > seen + 1);
        if let Some(last) = last {
            seen = last;
        }
        if gap || foreign > 0 {
            feed.publish(FeedEvent::Reset);
        }
    }
}

/// The changes announced for rows returned by `... RETURNING family_id, id_hash,
/// previous_id_hash`.
fn changes_from_rows(rows: &[SqliteRow]) -> StoreResult<Vec<SessionChange>> {
    rows.iter()
        .map(|r| {
            let mut id_hashes = vec![IdHash::from_stored(col(r, "id_hash")?)];
            if let Some(prev) = col::<Option<String>>(r, "previous_id_hash")? {
                id_hashes.push(IdHash::from_stored(prev));
            }
            Ok(SessionChange {
                family_id: uuid_col(r, "family_id")?,
                id_hashes,
            })
        })
        .collect()
}

fn uuid_col(row: &SqliteRow, col: &str) -> StoreResult<Uuid> {
    let text: String = row
        .try_get(col)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn col<'r, T>(row: &'r SqliteRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
}

const SESSION_COLUMNS: &str = "s.family_id, s.id_hash, s.previous_id_hash, s.previous_valid_until, \
    s.current_seen, s.provider_sid, s.created_at, s.last_seen_at, s.idle_expires_at, \
    s.absolute_expires_at, s.refresh_token, s.access_token, s.id_token, s.access_expires_at, \
    s.refresh_expires_at, s.access_issued_at, s.previous_handover, s.token_version, s.user_agent, \
    s.claims, s.email_verified, \
    u.id AS u_id, u.issuer AS u_issuer, u.subject AS u_subject, u.email AS u_email, \
    u.name AS u_name, u.created_at AS u_created_at, u.updated_at AS u_updated_at";

impl super::rows::Columns for SqliteRow {
    fn text(&self, name: &str) -> StoreResult<String> {
        col(self, name)
    }
    fn opt_text(&self, name: &str) -> StoreResult<Option<String>> {
        col(self, name)
    }
    fn int(&self, name: &str) -> StoreResult<i64> {
        col(self, name)
    }
    fn opt_int(&self, name: &str) -> StoreResult<Option<i64>> {
        col(self, name)
    }
    fn flag(&self, name: &str) -> StoreResult<bool> {
        Ok(col::<i64>(self, name)? != 0)
    }
}

fn opt_str(s: &Option<Sealed>) -> Option<&str> {
    s.as_ref().map(Sealed::as_stored)
}

#[async_trait]
impl Store for SqliteStore {
    fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    async fn ping(&self) -> StoreResult<()> {
        timed(async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn upsert_user(
        &self,
        issuer: &str,
        subject: &str,
        profile: &UserProfile,
        now: UnixTime,
    ) -> StoreResult<User> {
        timed(async {
            let mut w = self.write().await?;
            let before: Option<(Option<String>, Option<String>)> =
                sqlx::query_as("SELECT email, name FROM users WHERE issuer = ?1 AND subject = ?2")
                    .bind(issuer)
                    .bind(subject)
                    .fetch_optional(&mut *w.db)
                    .await
                    .map_err(unavailable)?;
            let new_id = crate::random::new_uuid();
            let row = sqlx::query(
                "INSERT INTO users (id, issuer, subject, email, name, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
                 ON CONFLICT (issuer, subject) DO UPDATE SET \
                   email = excluded.email, name = excluded.name, updated_at = excluded.updated_at \
                 RETURNING id, issuer, subject, email, name, created_at, updated_at",
            )
            .bind(new_id.to_string())
            .bind(issuer)
            .bind(subject)
            .bind(&profile.email)
            .bind(&profile.name)
            .bind(now)
            .fetch_one(&mut *w.db)
            .await
            .map_err(unavailable)?;
            let user = super::rows::user(&row, "")?;
            w.commit(Vec::new()).await?;
            // G09: a changed profile is announced, after the write, like a session change.
            if before.is_some_and(|(email, name)| email != user.email || name != user.name) {
                self.feed.publish(FeedEvent::UserChanged(user.id));
            }
            Ok(user)
        })
        .await
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        timed(async {
            let row = sqlx::query(
                "SELECT id, issuer, subject, email, name, created_at, updated_at FROM users WHERE id = ?1",
            )
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            row.map(|r| super::rows::user(&r, "")).transpose()
        })
        .await
    }

    async fn list_users(&self, after: Option<Uuid>, limit: u32) -> StoreResult<Vec<User>> {
        timed(async {
            let rows = sqlx::query(
                "SELECT id, issuer, subject, email, name, created_at, updated_at FROM users \
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .bind(after.map(|u| u.to_string()).unwrap_or_default())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            rows.iter().map(|r| super::rows::user(r, "")).collect()
        })
        .await
    }

    async fn import_user(&self, u: &User) -> StoreResult<bool> {
        timed(async {
            let mut w = self.write().await?;
            let done = sqlx::query(
                "INSERT INTO users (id, issuer, subject, email, name, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )
            .bind(u.id.to_string())
            .bind(&u.issuer)
            .bind(&u.subject)
            .bind(&u.email)
            .bind(&u.name)
            .bind(u.created_at)
            .bind(u.updated_at)
            .execute(&mut *w.db)
            .await
            .map_err(unavailable)?;
            w.commit(Vec::new()).await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn create_session(&self, s: &NewSession) -> StoreResult<()> {
        timed(async {
            let mut w = self.write().await?;
            sqlx::query(
                "INSERT INTO sessions (family_id, id_hash, current_seen, user_id, provider_sid, \
                 created_at, last_seen_at, idle_expires_at, absolute_expires_at, refresh_token, \
                 access_token, id_token, access_expires_at, refresh_expires_at, token_version, user_agent, \
                 access_issued_at, claims, email_verified) \
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, ?13, ?14, ?15, ?16)",
            )
            .bind(s.family_id.to_string())
            .bind(s.id_hash.as_str())
            .bind(s.user_id.to_string())
            .bind(&s.provider_sid)
            .bind(s.created_at)
            .bind(s.idle_expires_at)
            .bind(s.absolute_expires_at)
            .bind(opt_str(&s.tokens.refresh_token))
            .bind(opt_str(&s.tokens.access_token))
            .bind(opt_str(&s.tokens.id_token))
            .bind(s.tokens.access_expires_at)
            .bind(s.tokens.refresh_expires_at)
            .bind(&s.user_agent)
            .bind(s.tokens.access_issued_at)
            .bind(&s.claims)
            .bind(s.email_verified)
            .execute(&mut *w.db)
            .await
            .map_err(unavailable)?;
            w.commit(Vec::new()).await?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        timed(async {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.id_hash = ?1 OR s.previous_id_hash = ?1"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id_hash.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            row.map(|r| super::rows::session(&r, Some(id_hash)))
                .transpose()
        })
        .await
    }

    async fn touch_session(
        &self,
        family_id: Uuid,
        last_seen_at: UnixTime,
        idle_expires_at: UnixTime,
        seen: Option<&IdHash>,
    ) -> StoreResult<bool> {
        timed(async {
            let mut w = self.write().await?;
            let exists = sqlx::query(
                "UPDATE sessions SET last_seen_at = max(last_seen_at, ?2), \
                 idle_expires_at = max(idle_expires_at, ?3) WHERE family_id = ?1",
            )
            .bind(family_id.to_string())
            .bind(last_seen_at)
            .bind(idle_expires_at)
            .execute(&mut *w.db)
            .await
            .map_err(unavailable)?
            .rows_affected()
                > 0;
            // The first sighting of a rotated id decides the theft rule: published.
            let rows = sqlx::query(
                "UPDATE sessions SET current_seen = 1 \
                 WHERE family_id = ?1 AND id_hash = ?2 AND current_seen = 0 \
                 RETURNING family_id, id_hash, previous_id_hash",
            )
            .bind(family_id.to_string())
            .bind(seen.map(IdHash::as_str))
            .fetch_all(&mut *w.db)
            .await
            .map_err(unavailable)?;
            w.commit(changes_from_rows(&rows)?).await?;
            Ok(exists)
        })
        .await
    }

    async fn update_tokens(
        &self,
        family_id: Uuid,
        expected_version: i64,
        t: &TokenSet,
    ) -> StoreResult<bool> {
        timed(async {
            let mut w = self.write().await?;
            let rows = sqlx::query(
                "UPDATE sessions SET refresh_token = ?3, access_token = ?4, id_token = ?5, \
                 access_expires_at = ?6, refresh_expires_at = ?7, access_issued_at = ?8, \
                 token_version = token_version + 1 \
                 WHERE family_id = ?1 AND token_version = ?2 \
                 RETURNING family_id, id_hash, previous_id_hash",
            )
            .bind(family_id.to_string())
            .bind(expected_version)
            .bind(opt_str(&t.refresh_token))
            .bind(opt_str(&t.access_token))
            .bind(opt_str(&t.id_token))
            .bind(t.access_expires_at)
            .bind(t.refresh_expires_at)
            .bind(t.access_issued_at)
            .fetch_all(&mut *w.db)
            .await
            .map_err(unavailable)?;
            let changes = w.commit(changes_from_rows(&rows)?).await?;
            Ok(changes.len() == 1)
        })
        .await
    }

    async fn rotate_session_id(
        &self,
        family_id: Uuid,
        expected_version: i64,
        new_id_hash: &IdHash,
        previous_valid_until: UnixTime,
        handover: &str,
        t: &TokenSet,
        keep_previous: bool,
    ) -> StoreResult<bool> {
        timed(async {
            let mut w = self.write().await?;
            // The message names the id that stops being current as well as the new one.
            let rows = sqlx::query(
                "UPDATE sessions SET \
                 previous_id_hash = CASE WHEN ?12 THEN previous_id_hash ELSE id_hash END, \
                 previous_valid_until = ?4, \
                 id_hash = ?3, current_seen = 0, refresh_token = ?5, access_token = ?6, \
                 id_token = ?7, access_expires_at = ?8, refresh_expires_at = ?9, \
                 access_issued_at = ?10, previous_handover = ?11, token_version = token_version + 1 \
                 WHERE family_id = ?1 AND token_version = ?2 \
                 AND (NOT ?12 OR (current_seen = 0 AND previous_id_hash IS NOT NULL)) \
                 RETURNING family_id, id_hash, previous_id_hash",
            )
            .bind(family_id.to_string())
            .bind(expected_version)
            .bind(new_id_hash.as_str())
            .bind(previous_valid_until)
            .bind(opt_str(&t.refresh_token))
            .bind(opt_str(&t.access_token))
            .bind(opt_str(&t.id_token))
            .bind(t.access_expires_at)
            .bind(t.refresh_expires_at)
            .bind(t.access_issued_at)
            .bind(handover)
            .bind(keep_previous)
            .fetch_all(&mut *w.db)
            .await
            .map_err(unavailable)?;
            let changes = w.commit(changes_from_rows(&rows)?).await?;
            Ok(changes.len() == 1)
        })
        .await
    }

    async fn update_claims(
        &self,
        family_id: Uuid,
        claims: &str,
        email_verified: bool,
    ) -> StoreResult<bool> {
        timed(async {
            let mut w = self.write().await?;
            let rows = sqlx::query(
                "UPDATE sessions SET claims = ?2, email_verified = ?3 WHERE family_id = ?1 \
                 RETURNING family_id, id_hash, previous_id_hash",
            )
            .bind(family_id.to_string())
            .bind(claims)
            .bind(email_verified)
            .fetch_all(&mut *w.db)
            .await
            .map_err(unavailable)?;
            let changes = w.commit(changes_from_rows(&rows)?).await?;
            Ok(changes.len() == 1)
        })
        .await
    }

    async fn import_session(&self, s: &SessionRecord) -> StoreResult<bool> {
        timed(async {
            let mut w = self.write().await?;
            let done = sqlx::query(
                "INSERT INTO sessions (family_id, id_hash, previous_id_hash, previous_valid_until, \
                 previous_handover, current_seen, user_id, provider_sid, created_at, last_seen_at, \
                 idle_expires_at, absolute_expires_at, refresh_token, access_token, id_token, \
                 access_expires_at, refresh_expires_at, access_issued_at, token_version, \
                 user_agent, claims, email_verified) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                 ?17, ?18, ?19, ?20, ?21, ?22) ON CONFLICT DO NOTHING",
            )
            .bind(s.family_id.to_string())
            .bind(s.id_hash.as_str())
            .bind(s.previous_id_hash.as_ref().map(IdHash::as_str))
            .bind(s.previous_valid_until)
            .bind(&s.previous_handover)
            .bind(s.current_seen)
            .bind(s.user.id.to_string())
            .bind(&s.provider_sid)
            .bind(s.created_at)
            .bind(s.last_seen_at)
            .bind(s.idle_expires_at)
            .bind(s.absolute_expires_at)
            .bind(opt_str(&s.tokens.refresh_token))
            .bind(opt_str(&s.tokens.access_token))
            .bind(opt_str(&s.tokens.id_token))
            .bind(s.tokens.access_expires_at)
            .bind(s.tokens.refresh_expires_at)
            .bind(s.tokens.access_issued_at)
            .bind(s.token_version)
            .bind(&s.user_agent)
            .bind(&s.claims)
            .bind(s.email_verified)
            .execute(&mut *w.db)
            .await
            .map_err(unavailable)?;
            w.commit(Vec::new()).await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn delete_session(&self, family_id: Uuid) -> StoreResult<bool> {
        let ended = self
            .delete_where("family_id = ?1", &[&family_id.to_string()])
            .await?;
        Ok(ended > 0)
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        self.delete_where("user_id = ?1", &[&user_id.to_string()])
            .await
    }

    async fn delete_sessions_by_provider_sid(&self, issuer: &str, sid: &str) -> StoreResult<u64> {
        self.delete_where(
            "provider_sid = ?2 AND user_id IN (SELECT id FROM users WHERE issuer = ?1)",
            &[issuer, sid],
        )
        .await
    }

    async fn delete_sessions_by_subject(&self, issuer: &str, subject: &str) -> StoreResult<u64> {
        self.delete_where(
            "user_id IN (SELECT id FROM users WHERE issuer = ?1 AND subject = ?2)",
            &[issuer, subject],
        )
        .await
    }

    async fn delete_all_sessions(&self) -> StoreResult<u64> {
        self.delete_where("1 = 1", &[]).await
    }

    async fn list_sessions(
        &self,
        user_id: Option<Uuid>,
        now: UnixTime,
    ) -> StoreResult<Vec<SessionRecord>> {
        timed(async {
            let sql = format!(
                "SELECT {SESSION_COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.idle_expires_at > ?1 AND s.absolute_expires_at > ?1 \
                 AND (s.refresh_expires_at IS NULL OR s.refresh_expires_at > ?1) \
                 AND (?2 IS NULL OR s.user_id = ?2) ORDER BY s.created_at DESC, s.family_id"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(user_id.map(|u| u.to_string()))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            rows.iter().map(|r| super::rows::session(r, None)).collect()
        })
        .await
    }

    async fn put_transaction(
        &self,
        tx: &LoginTransaction,
        limits: TransactionLimits,
    ) -> StoreResult<bool> {
        timed(async {
            let mut db = self.pool.begin().await.map_err(unavailable)?;
            // Expired ones go first; at the bound, the new one is refused (D01).
            sqlx::query("DELETE FROM login_transactions WHERE expires_at <= ?1")
                .bind(tx.created_at)
                .execute(&mut *db)
                .await
                .map_err(unavailable)?;
            let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM login_transactions")
                .fetch_one(&mut *db)
                .await
                .map_err(unavailable)?;
            if live >= i64::from(limits.total) {
                db.commit().await.map_err(unavailable)?;
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO login_transactions (state_hash, binding_hash, nonce, verifier, \
                 return_to, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(&tx.state_hash)
            .bind(&tx.binding_hash)
            .bind(&tx.nonce)
            .bind(tx.verifier.as_stored())
            .bind(&tx.return_to)
            .bind(tx.created_at)
            .bind(tx.expires_at)
            .execute(&mut *db)
            .await
            .map_err(unavailable)?;
            sqlx::query(
                "DELETE FROM login_transactions WHERE binding_hash = ?1 AND state_hash NOT IN \
                 (SELECT state_hash FROM login_transactions WHERE binding_hash = ?1 \
                  ORDER BY created_at DESC, rowid DESC LIMIT ?2)",
            )
            .bind(&tx.binding_hash)
            .bind(i64::from(limits.per_browser))
            .execute(&mut *db)
            .await
            .map_err(unavailable)?;
            db.commit().await.map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn take_transaction(&self, state_hash: &str) -> StoreResult<Option<LoginTransaction>> {
        timed(async {
            let row = sqlx::query(
                "DELETE FROM login_transactions WHERE state_hash = ?1 \
                 RETURNING state_hash, binding_hash, nonce, verifier, return_to, created_at, expires_at",
            )
            .bind(state_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            row.map(|r| super::rows::login_transaction(&r))
            .transpose()
        })
        .await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        timed(async {
            let done = sqlx::query(
                "INSERT INTO refresh_leases (lease_key, holder, expires_at) VALUES (?1, ?2, ?4) \
                 ON CONFLICT (lease_key) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE refresh_leases.expires_at <= ?3 OR refresh_leases.holder = excluded.holder",
            )
            .bind(key)
            .bind(holder)
            .bind(now)
            .bind(until)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        timed(async {
            let done = sqlx::query(
                "UPDATE refresh_leases SET expires_at = ?4 \
                 WHERE lease_key = ?1 AND holder = ?2 AND expires_at > ?3",
            )
            .bind(key)
            .bind(holder)
            .bind(now)
            .bind(until)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> StoreResult<()> {
        timed(async {
            sqlx::query("DELETE FROM refresh_leases WHERE lease_key = ?1 AND holder = ?2")
                .bind(key)
                .bind(holder)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn remember_once(&self, key: &str, now: UnixTime, until: UnixTime) -> StoreResult<bool> {
        timed(async {
            let done = sqlx::query(
                "INSERT INTO replay_cache (replay_key, expires_at) VALUES (?1, ?3) \
                 ON CONFLICT (replay_key) DO UPDATE SET expires_at = excluded.expires_at \
                 WHERE replay_cache.expires_at <= ?2",
            )
            .bind(key)
            .bind(now)
            .bind(until)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        timed(async {
            sqlx::query("DELETE FROM replay_cache WHERE replay_key = ?1")
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        timed(async {
            let done = sqlx::query(
                "INSERT INTO signing_keys (generation, kid, sealed_key, created_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .bind(key.generation)
            .bind(&key.kid)
            .bind(key.sealed_key.as_stored())
            .bind(key.created_at)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        timed(async {
            let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
                "SELECT generation, kid, sealed_key, created_at FROM signing_keys ORDER BY generation",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(rows.into_iter().map(SigningKeyRecord::from_row).collect())
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        timed(async {
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        timed(async {
            sqlx::query(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn delete_setting(&self, key: &str) -> StoreResult<bool> {
        timed(async {
            let done = sqlx::query("DELETE FROM settings WHERE key = ?1")
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn delete_signing_key(&self, generation: i64) -> StoreResult<bool> {
        timed(async {
            let done = sqlx::query("DELETE FROM signing_keys WHERE generation = ?1")
                .bind(generation)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<u64> {
        // In batches, each under its own timeout, so that a large backlog (a flood of
        // abandoned logins) is worked off instead of timing out as one statement.
        const BATCH: i64 = 5_000;
        let mut total = 0;
        for (table, expired) in [
            (
                "sessions",
                "idle_expires_at <= ?1 OR absolute_expires_at <= ?1 \
                 OR (refresh_expires_at IS NOT NULL AND refresh_expires_at <= ?1)",
            ),
            ("login_transactions", "expires_at <= ?1"),
            ("refresh_leases", "expires_at <= ?1"),
            ("replay_cache", "expires_at <= ?1"),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {expired} LIMIT ?2)"
            );
            loop {
                // Expiry is not announced, but its write-log entries are ours.
                let deleted = timed(async {
                    let mut w = self.write().await?;
                    let deleted = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(now)
                        .bind(BATCH)
                        .execute(&mut *w.db)
                        .await
                        .map_err(unavailable)?
                        .rows_affected();
                    w.commit(Vec::new()).await?;
                    Ok(deleted)
                })
                .await?;
                total += deleted;
                if deleted < BATCH as u64 {
                    break;
                }
            }
        }
        // The write log only needs to outlive the pollers' 250 ms (not counted: it is
        // bookkeeping, not expired records).
        timed(async {
            Ok(sqlx::query(
                "DELETE FROM feed_log WHERE seq <= (SELECT max(seq) FROM feed_log) - ?1",
            )
            .bind(FEED_LOG_KEEP)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?
            .rows_affected())
        })
        .await?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
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
        let user = store
            .upsert_user("https://i", "s", &UserProfile::default(), 1)
            .await
            .unwrap();
        let id = crate::store::id::SessionId::generate();
        store
            .create_session(&NewSession {
                family_id: crate::random::new_uuid(),
                id_hash: id.hash(),
                user_id: user.id,
                provider_sid: None,
                created_at: 1,
                idle_expires_at: 100,
                absolute_expires_at: 100,
                tokens: TokenSet::default(),
                user_agent: None,
                claims: "{}".into(),
                email_verified: false,
            })
            .await
            .unwrap();
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
}
