//! The PostgreSQL backend (sqlx, runtime queries): one database shared by several
//! gateway instances (docs/deployment.md "Several instances").
//!
//! - Tables are named `{store_prefix}_…`; their SQL is rendered once per store.
//! - Every write that ends or changes a session calls `pg_notify` in the same
//!   statement as the write, so the message is sent if and only if it commits.
//! - A dedicated connection LISTENs with `PgListener::try_recv`, which reports a lost
//!   connection as `None` (plain `recv` would reconnect silently and lose messages):
//!   that, and every reconnect, is a reset for the feed's subscribers. A connection
//!   that died without a word (no FIN: a failover, a NAT) is noticed by silence: our
//!   own heartbeat arrives every 250 ms, so 3 s without any message means it is gone.
//! - Leases are rows taken with `INSERT … ON CONFLICT … DO UPDATE … WHERE`: never a
//!   lock or a transaction held across a provider call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::feed::{HEARTBEAT_EVERY, Tasks};
use super::{
    ChangeFeed, LoginTransaction, NewSession, STORE_TIMEOUT, SessionRecord, SigningKeyRecord,
    Store, StoreError, StoreResult, TokenSet, TransactionLimits, User, UserProfile, timed,
};
use crate::clock::UnixTime;
use crate::store::Sealed;
use crate::store::id::IdHash;

/// Schema migrations, in order; `{p}` is replaced by the store prefix.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_signing_keys.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_settings.sql"),
    ),
];

/// Connections per instance: the hot path holds one only for a single statement.
const POOL_SIZE: u32 = 16;

/// Silence on the LISTEN connection after which it is presumed dead.
const FEED_SILENCE: Duration = Duration::from_secs(3);

/// Rows deleted per statement by the expiry job.
const PURGE_BATCH: i64 = 5_000;

/// Sessions, users, transactions, leases and the replay cache in PostgreSQL.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Queries>,
    feed: ChangeFeed,
    /// Where the store is, for `Debug` and logs: no password.
    describe: Arc<str>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("at", &self.describe)
            .field("prefix", &self.sql.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl PostgresStore {
    /// Connects, applies the migrations this prefix has not seen (one instance at a
    /// time, under an advisory lock), and starts the change feed.
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<Self> {
        // Pasted into every table name: checked here too, whoever calls.
        if !crate::config::is_valid_store_prefix(prefix) {
            return Err(StoreError::Unavailable("invalid store prefix".into()));
        }
        let options: PgConnectOptions = url.parse().map_err(unavailable)?;
        let options = options
            // Names the prefix too: an operator (or a test) can tell the gateways apart.
            .application_name(&format!("portcullis/{prefix}"))
            // A statement that runs away is cut by the server too, not only abandoned.
            .options([("statement_timeout", "5000")]);
        let describe: Arc<str> = describe(url).into();
        let pool = timed(async {
            PgPoolOptions::new()
                .max_connections(POOL_SIZE)
                .acquire_timeout(STORE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(unavailable)
        })
        .await?;
        let sql = Arc::new(Queries::new(prefix));
        timed(migrate(&pool, &sql)).await?;
        let feed = ChangeFeed::new();
        let tasks = Arc::new(Tasks::default());
        tasks.add(
            tokio::spawn(listen(pool.clone(), sql.channel.clone(), feed.clone())).abort_handle(),
        );
        tasks.add(
            tokio::spawn(heartbeat(pool.clone(), sql.channel.clone(), feed.clone())).abort_handle(),
        );
        Ok(Self {
            pool,
            sql,
            feed,
            describe,
            _tasks: tasks,
        })
    }
}

/// The URL without its password (in the user part or as `?password=`) or query.
fn describe(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "postgres (unparsable url)".into(),
    }
}

async fn migrate(pool: &PgPool, sql: &Queries) -> StoreResult<()> {
    let table = format!("{}_migrations", sql.prefix);
    let mut tx = pool.begin().await.map_err(unavailable)?;
    // Instances starting together migrate one after the other.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(&table)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )))
    .execute(&mut *tx)
    .await
    .map_err(unavailable)?;
    for (version, text) in MIGRATIONS {
        let done: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT version FROM {table} WHERE version = $1"
        )))
        .bind(version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if done.is_none() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(text.replace("{p}", &sql.prefix)))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (version) VALUES ($1)"
            )))
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
    }
    tx.commit().await.map_err(unavailable)
}

/// Carries notifications to the feed. A dropped connection (`try_recv` → `None`) or a
/// failed reconnect is a reset; `try_recv` reconnects and listens again on the next call.
async fn listen(pool: PgPool, channel: String, feed: ChangeFeed) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Connecting and LISTEN are outbound calls like any other: bounded.
        let connected = tokio::time::timeout(STORE_TIMEOUT, async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        })
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "the PostgreSQL change feed cannot connect; retrying");
                feed.connection_lost();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // `try_recv` reconnects (and LISTENs again) right after reporting a loss.
        listener.eager_reconnect(true);
        // Whatever was sent before this LISTEN is unknown to us.
        feed.connection_lost();
        loop {
            let Ok(received) = tokio::time::timeout(FEED_SILENCE, listener.try_recv()).await else {
                tracing::warn!("the PostgreSQL change feed went silent; reconnecting");
                feed.connection_lost();
                break;
            };
            match received {
                Ok(Some(note)) => {
                    backoff = Duration::from_millis(100);
                    feed.deliver_text(note.payload());
                }
                Ok(None) => {
                    tracing::warn!("the PostgreSQL change feed lost its connection; caches reset");
                    feed.connection_lost();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the PostgreSQL change feed failed; reconnecting");
                    feed.connection_lost();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}

/// Sends this instance's heartbeat through the feed every 250 ms.
async fn heartbeat(pool: PgPool, channel: String, feed: ChangeFeed) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = tokio::time::timeout(
            STORE_TIMEOUT,
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&channel)
                .bind(feed.heartbeat_text())
                .execute(&pool),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::debug!("a change-feed heartbeat could not be sent");
        }
    }
}

/// Every statement, rendered once for this store's prefix.
#[derive(Debug)]
struct Queries {
    prefix: String,
    channel: String,
    upsert_user: String,
    user_profile_for_update: String,
    get_user: String,
    list_users: String,
    import_user: String,
    create_session: String,
    get_session: String,
    touch: String,
    mark_seen: String,
    update_tokens: String,
    rotate: String,
    update_claims: String,
    import_session: String,
    delete_by_family: String,
    delete_by_user: String,
    delete_by_sid: String,
    delete_by_subject: String,
    delete_all: String,
    list_sessions: String,
    put_transaction: String,
    trim_per_browser: String,
    delete_expired_transactions: String,
    count_transactions: String,
    take_transaction: String,
    acquire_lease: String,
    renew_lease: String,
    release_lease: String,
    remember_once: String,
    add_signing_key: String,
    signing_keys: String,
    delete_signing_key: String,
    get_setting: String,
    put_setting: String,
    delete_setting: String,
    forget: String,
    purge: [String; 4],
}

const USER_COLUMNS: &str = "id, issuer, subject, email, name, created_at, updated_at";

const SESSION_COLUMNS: &str = "s.family_id, s.id_hash, s.previous_id_hash, s.previous_valid_until, \
    s.current_seen, s.provider_sid, s.created_at, s.last_seen_at, s.idle_expires_at, \
    s.absolute_expires_at, s.refresh_token, s.access_token, s.id_token, s.access_expires_at, \
    s.refresh_expires_at, s.access_issued_at, s.previous_handover, s.token_version, s.user_agent, \
    s.claims, s.email_verified, \
    u.id AS u_id, u.issuer AS u_issuer, u.subject AS u_subject, u.email AS u_email, \
    u.name AS u_name, u.created_at AS u_created_at, u.updated_at AS u_updated_at";

/// Announces each row of the CTE `changed` (family_id, id_hash, previous_id_hash) in
/// the same statement as the write; the statement returns one row per session.
const NOTIFY_CHANGED: &str = "SELECT pg_notify('{p}_feed', 's ' || family_id || ' ' || id_hash \
    || coalesce(' ' || previous_id_hash, '')) FROM changed";

impl Queries {
    fn new(prefix: &str) -> Self {
        let t = |s: &str| {
            s.replace("{notify}", NOTIFY_CHANGED)
                .replace("{session_columns}", SESSION_COLUMNS)
                .replace("{user_columns}", USER_COLUMNS)
                .replace("{p}", prefix)
        };
        let delete = |condition: &str| {
            t(&format!(
                "WITH changed AS (DELETE FROM {{p}}_sessions WHERE {condition} \
                 RETURNING family_id, id_hash, previous_id_hash) {{notify}}"
            ))
        };
        Self {
            prefix: prefix.to_owned(),
            channel: format!("{prefix}_feed"),
            upsert_user: t(
                "INSERT INTO {p}_users (id, issuer, subject, email, name, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) \
                 ON CONFLICT (issuer, subject) DO UPDATE SET \
                 email = excluded.email, name = excluded.name, updated_at = excluded.updated_at \
                 RETURNING {user_columns}",
            ),
            user_profile_for_update: t(
                "SELECT email, name FROM {p}_users WHERE issuer = $1 AND subject = $2 FOR UPDATE",
            ),
            get_user: t("SELECT {user_columns} FROM {p}_users WHERE id = $1"),
            list_users: t(
                "SELECT {user_columns} FROM {p}_users WHERE id > $1 ORDER BY id LIMIT $2",
            ),
            import_user: t(
                "INSERT INTO {p}_users ({user_columns}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT DO NOTHING",
            ),
            create_session: t(
                "INSERT INTO {p}_sessions (family_id, id_hash, current_seen, user_id, \
                 provider_sid, created_at, last_seen_at, idle_expires_at, absolute_expires_at, \
                 refresh_token, access_token, id_token, access_expires_at, refresh_expires_at, \
                 token_version, user_agent, access_issued_at, claims, email_verified) \
                 VALUES ($1, $2, TRUE, $3, $4, $5, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $14, $15, $16)",
            ),
            get_session: t(
                "SELECT {session_columns} FROM {p}_sessions s JOIN {p}_users u ON u.id = s.user_id \
                 WHERE s.id_hash = $1 OR s.previous_id_hash = $1",
            ),
            touch: t(
                "UPDATE {p}_sessions SET last_seen_at = greatest(last_seen_at, $2), \
                 idle_expires_at = greatest(idle_expires_at, $3) WHERE family_id = $1",
            ),
            mark_seen: t(
                "WITH changed AS (UPDATE {p}_sessions SET current_seen = TRUE \
                 WHERE family_id = $1 AND id_hash = $2 AND NOT current_seen \
                 RETURNING family_id, id_hash, previous_id_hash) {notify}",
            ),
            update_tokens: t(
                "WITH changed AS (UPDATE {p}_sessions SET refresh_token = $3, \
                 access_token = $4, id_token = $5, access_expires_at = $6, refresh_expires_at = $7, \
                 access_issued_at = $8, token_version = token_version + 1 \
                 WHERE family_id = $1 AND token_version = $2 \
                 RETURNING family_id, id_hash, previous_id_hash) {notify}",
            ),
            rotate: t("WITH changed AS (UPDATE {p}_sessions SET \
                 previous_id_hash = CASE WHEN $12 THEN previous_id_hash ELSE id_hash END, \
                 previous_valid_until = $4, id_hash = $3, current_seen = FALSE, refresh_token = $5, \
                 access_token = $6, id_token = $7, access_expires_at = $8, refresh_expires_at = $9, \
                 access_issued_at = $10, previous_handover = $11, token_version = token_version + 1 \
                 WHERE family_id = $1 AND token_version = $2 \
                 AND (NOT $12 OR (current_seen = FALSE AND previous_id_hash IS NOT NULL)) \
                 RETURNING family_id, id_hash, previous_id_hash) {notify}"),
            update_claims: t(
                "WITH changed AS (UPDATE {p}_sessions SET claims = $2, email_verified = $3 \
                 WHERE family_id = $1 RETURNING family_id, id_hash, previous_id_hash) {notify}",
            ),
            import_session: t(
                "INSERT INTO {p}_sessions (family_id, id_hash, previous_id_hash, \
                 previous_valid_until, previous_handover, current_seen, user_id, provider_sid, \
                 created_at, last_seen_at, idle_expires_at, absolute_expires_at, refresh_token, \
                 access_token, id_token, access_expires_at, refresh_expires_at, access_issued_at, \
                 token_version, user_agent, claims, email_verified) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17, $18, $19, $20, $21, $22) ON CONFLICT DO NOTHING",
            ),
            delete_by_family: delete("family_id = $1"),
            delete_by_user: delete("user_id = $1"),
            delete_by_sid: delete(
                "provider_sid = $2 AND user_id IN (SELECT id FROM {p}_users WHERE issuer = $1)",
            ),
            delete_by_subject: delete(
                "user_id IN (SELECT id FROM {p}_users WHERE issuer = $1 AND subject = $2)",
            ),
            // One reset message rather than one per session: all of them ended.
            delete_all: t("WITH gone AS (DELETE FROM {p}_sessions RETURNING 1), \
                 counted AS (SELECT count(*) AS n FROM gone) \
                 SELECT n, pg_notify('{p}_feed', 'a') FROM counted"),
            list_sessions: t(
                "SELECT {session_columns} FROM {p}_sessions s JOIN {p}_users u ON u.id = s.user_id \
                 WHERE s.idle_expires_at > $1 AND s.absolute_expires_at > $1 \
                 AND (s.refresh_expires_at IS NULL OR s.refresh_expires_at > $1) \
                 AND ($2::text IS NULL OR s.user_id = $2) ORDER BY s.created_at DESC, s.family_id",
            ),
            put_transaction: t(
                "INSERT INTO {p}_login_transactions (state_hash, binding_hash, nonce, \
                 verifier, return_to, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            ),
            trim_per_browser: t(
                "DELETE FROM {p}_login_transactions WHERE binding_hash = $1 AND state_hash NOT IN \
                 (SELECT state_hash FROM {p}_login_transactions WHERE binding_hash = $1 \
                  ORDER BY created_at DESC, seq DESC LIMIT $2)",
            ),
            delete_expired_transactions: t(
                "DELETE FROM {p}_login_transactions WHERE expires_at <= $1",
            ),
            count_transactions: t("SELECT COUNT(*) FROM {p}_login_transactions"),
            take_transaction: t("DELETE FROM {p}_login_transactions WHERE state_hash = $1 \
                 RETURNING state_hash, binding_hash, nonce, verifier, return_to, created_at, expires_at"),
            acquire_lease: t(
                "INSERT INTO {p}_refresh_leases (lease_key, holder, expires_at) VALUES ($1, $2, $4) \
                 ON CONFLICT (lease_key) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE {p}_refresh_leases.expires_at <= $3 OR {p}_refresh_leases.holder = excluded.holder",
            ),
            renew_lease: t("UPDATE {p}_refresh_leases SET expires_at = $4 \
                 WHERE lease_key = $1 AND holder = $2 AND expires_at > $3"),
            release_lease: t("DELETE FROM {p}_refresh_leases WHERE lease_key = $1 AND holder = $2"),
            remember_once: t(
                "INSERT INTO {p}_replay_cache (replay_key, expires_at) VALUES ($1, $3) \
                 ON CONFLICT (replay_key) DO UPDATE SET expires_at = excluded.expires_at \
                 WHERE {p}_replay_cache.expires_at <= $2",
            ),
            forget: t("DELETE FROM {p}_replay_cache WHERE replay_key = $1"),
            add_signing_key: t(
                "INSERT INTO {p}_signing_keys (generation, kid, sealed_key, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            ),
            signing_keys: t(
                "SELECT generation, kid, sealed_key, created_at FROM {p}_signing_keys ORDER BY generation",
            ),
            delete_signing_key: t("DELETE FROM {p}_signing_keys WHERE generation = $1"),
            get_setting: t("SELECT value FROM {p}_settings WHERE key = $1"),
            put_setting: t("INSERT INTO {p}_settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
            delete_setting: t("DELETE FROM {p}_settings WHERE key = $1"),
            purge: [
                // Ended sessions are not announced: every reader decides expiry from
                // the deadlines an entry carries.
                t(
                    "DELETE FROM {p}_sessions WHERE family_id IN (SELECT family_id FROM {p}_sessions \
                   WHERE idle_expires_at <= $1 OR absolute_expires_at <= $1 \
                   OR refresh_expires_at <= $1 LIMIT $2)",
                ),
                t(
                    "DELETE FROM {p}_login_transactions WHERE state_hash IN (SELECT state_hash \
                   FROM {p}_login_transactions WHERE expires_at <= $1 LIMIT $2)",
                ),
                t(
                    "DELETE FROM {p}_refresh_leases WHERE lease_key IN (SELECT lease_key \
                   FROM {p}_refresh_leases WHERE expires_at <= $1 LIMIT $2)",
                ),
                t(
                    "DELETE FROM {p}_replay_cache WHERE replay_key IN (SELECT replay_key \
                   FROM {p}_replay_cache WHERE expires_at <= $1 LIMIT $2)",
                ),
            ],
        }
    }
}

fn q(sql: &str) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

fn col<'r, T>(row: &'r PgRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
}

impl super::rows::Columns for PgRow {
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
        col(self, name)
    }
}

fn opt_str(s: &Option<Sealed>) -> Option<&str> {
    s.as_ref().map(Sealed::as_stored)
}

impl PostgresStore {
    /// Runs a statement that announces the sessions it changed; returns how many.
    async fn announcing(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> StoreResult<u64> {
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        Ok(rows.len() as u64)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    async fn ping(&self) -> StoreResult<()> {
        timed(async {
            q("SELECT 1")
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
            // G09: the profile as it was, locked until the upsert commits (so that two
            // sign-ins at once compare against what the other wrote), and the change
            // announced (`u <id>`) in the same transaction.
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            let before: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                sqlx::AssertSqlSafe(self.sql.user_profile_for_update.as_str()),
            )
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            let row = q(&self.sql.upsert_user)
                .bind(crate::random::new_uuid().to_string())
                .bind(issuer)
                .bind(subject)
                .bind(&profile.email)
                .bind(&profile.name)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
            let user = super::rows::user(&row, "")?;
            if before.is_some_and(|(email, name)| email != user.email || name != user.name) {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(&self.sql.channel)
                    .bind(format!("u {}", user.id))
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(user)
        })
        .await
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        timed(async {
            let row = q(&self.sql.get_user)
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
            let rows = q(&self.sql.list_users)
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
            let done = q(&self.sql.import_user)
                .bind(u.id.to_string())
                .bind(&u.issuer)
                .bind(&u.subject)
                .bind(&u.email)
                .bind(&u.name)
                .bind(u.created_at)
                .bind(u.updated_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn create_session(&self, s: &NewSession) -> StoreResult<()> {
        timed(async {
            q(&self.sql.create_session)
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
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        timed(async {
            let row = q(&self.sql.get_session)
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
            let exists = q(&self.sql.touch)
                .bind(family_id.to_string())
                .bind(last_seen_at)
                .bind(idle_expires_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?
                .rows_affected()
                > 0;
            // The first sighting of a rotated id decides the theft rule: announced.
            if let Some(seen) = seen {
                self.announcing(
                    q(&self.sql.mark_seen)
                        .bind(family_id.to_string())
                        .bind(seen.as_str()),
                )
                .await?;
            }
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
            let n = self
                .announcing(
                    q(&self.sql.update_tokens)
                        .bind(family_id.to_string())
                        .bind(expected_version)
                        .bind(opt_str(&t.refresh_token))
                        .bind(opt_str(&t.access_token))
                        .bind(opt_str(&t.id_token))
                        .bind(t.access_expires_at)
                        .bind(t.refresh_expires_at)
                        .bind(t.access_issued_at),
                )
                .await?;
            Ok(n == 1)
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
            let n = self
                .announcing(
                    q(&self.sql.rotate)
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
                        .bind(keep_previous),
                )
                .await?;
            Ok(n == 1)
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
            let n = self
                .announcing(
                    q(&self.sql.update_claims)
                        .bind(family_id.to_string())
                        .bind(claims)
                        .bind(email_verified),
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn import_session(&self, s: &SessionRecord) -> StoreResult<bool> {
        timed(async {
            let done = q(&self.sql.import_session)
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
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn delete_session(&self, family_id: Uuid) -> StoreResult<bool> {
        timed(async {
            let n = self
                .announcing(q(&self.sql.delete_by_family).bind(family_id.to_string()))
                .await?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        timed(self.announcing(q(&self.sql.delete_by_user).bind(user_id.to_string()))).await
    }

    async fn delete_sessions_by_provider_sid(&self, issuer: &str, sid: &str) -> StoreResult<u64> {
        timed(self.announcing(q(&self.sql.delete_by_sid).bind(issuer).bind(sid))).await
    }

    async fn delete_sessions_by_subject(&self, issuer: &str, subject: &str) -> StoreResult<u64> {
        timed(self.announcing(q(&self.sql.delete_by_subject).bind(issuer).bind(subject))).await
    }

    async fn delete_all_sessions(&self) -> StoreResult<u64> {
        timed(async {
            let row = q(&self.sql.delete_all)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(col::<i64>(&row, "n")?.max(0) as u64)
        })
        .await
    }

    async fn list_sessions(
        &self,
        user_id: Option<Uuid>,
        now: UnixTime,
    ) -> StoreResult<Vec<SessionRecord>> {
        timed(async {
            let rows = q(&self.sql.list_sessions)
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
            q(&self.sql.delete_expired_transactions)
                .bind(tx.created_at)
                .execute(&mut *db)
                .await
                .map_err(unavailable)?;
            let live: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql.count_transactions.as_str()))
                    .fetch_one(&mut *db)
                    .await
                    .map_err(unavailable)?;
            if live >= i64::from(limits.total) {
                db.commit().await.map_err(unavailable)?;
                return Ok(false);
            }
            q(&self.sql.put_transaction)
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
            q(&self.sql.trim_per_browser)
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
            let row = q(&self.sql.take_transaction)
                .bind(state_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            row.map(|r| super::rows::login_transaction(&r)).transpose()
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
            let done = q(&self.sql.acquire_lease)
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
            let done = q(&self.sql.renew_lease)
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
            q(&self.sql.release_lease)
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
            let done = q(&self.sql.remember_once)
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
            q(&self.sql.forget)
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
            let done = q(&self.sql.add_signing_key)
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
            let rows: Vec<(i64, String, String, i64)> =
                sqlx::query_as(sqlx::AssertSqlSafe(self.sql.signing_keys.as_str()))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)?;
            Ok(rows.into_iter().map(SigningKeyRecord::from_row).collect())
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        timed(async {
            sqlx::query_scalar(sqlx::AssertSqlSafe(self.sql.get_setting.as_str()))
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        timed(async {
            q(&self.sql.put_setting)
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
            let done = q(&self.sql.delete_setting)
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
            let done = q(&self.sql.delete_signing_key)
                .bind(generation)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<u64> {
        // In batches, each under its own timeout, so that a large backlog is worked off
        // instead of timing out as one statement.
        let mut total = 0;
        for sql in &self.sql.purge {
            loop {
                let deleted = timed(async {
                    Ok(q(sql)
                        .bind(now)
                        .bind(PURGE_BATCH)
                        .execute(&self.pool)
                        .await
                        .map_err(unavailable)?
                        .rows_affected())
                })
                .await?;
                total += deleted;
                if deleted < PURGE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::FeedEvent;
    use crate::store::conformance::{self, CrossHandle, next_event};

    /// The test database, or `None` (and one line on stderr) when none is configured.
    pub(crate) fn test_url() -> Option<String> {
        let url = std::env::var("PORTCULLIS_TEST_POSTGRES_URL").ok();
        if url.is_none() {
            eprintln!(
                "skipped: set PORTCULLIS_TEST_POSTGRES_URL to run the PostgreSQL store tests"
            );
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
        let user = store
            .upsert_user("https://i", "s", &UserProfile::default(), 1)
            .await
            .unwrap();
        let id = crate::store::id::SessionId::generate();
        let family = crate::random::new_uuid();
        store
            .create_session(&NewSession {
                family_id: family,
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
}
