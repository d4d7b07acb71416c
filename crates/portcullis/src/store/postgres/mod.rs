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

mod notify;
mod schema;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use super::feed::Tasks;
use super::sql::Arg::{self, Int, Text};
use super::sql::{
    bind, new_session_args, one_row, rotate_args, session_record_args, transaction_args,
    update_tokens_args,
};
use super::{
    ChangeFeed, IdentityKind, LoginTransaction, NewSession, STORE_TIMEOUT, SessionRecord,
    SigningKeyRecord, Store, StoreError, StoreResult, TokenSet, TransactionLimits, User,
    UserProfile, timed,
};
use crate::clock::UnixTime;
use crate::store::id::IdHash;
use notify::{heartbeat, listen};
use schema::{Queries, col, migrate, q};

/// Connections per instance: the hot path holds one only for a single statement.
const POOL_SIZE: u32 = 16;

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

impl PostgresStore {
    /// Runs one statement; how many rows it changed.
    async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        timed(async {
            let done = bind(q(sql), args)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
        .await
    }

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

    async fn upsert_identity(
        &self,
        issuer: &str,
        kind: IdentityKind,
        subject: &str,
        profile: Option<&UserProfile>,
        now: UnixTime,
    ) -> StoreResult<User> {
        let empty = UserProfile::default();
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
            .bind(kind.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            let row = q(&self.sql.upsert_user)
                .bind(crate::random::new_uuid().to_string())
                .bind(issuer)
                .bind(subject)
                .bind(&profile.unwrap_or(&empty).email)
                .bind(&profile.unwrap_or(&empty).name)
                .bind(now)
                .bind(kind.as_str())
                .bind(profile.is_some())
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
                .bind(u.kind.as_str())
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
        self.execute(&self.sql.create_session, &new_session_args(s))
            .await
            .map(drop)
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
        let args = update_tokens_args(family_id, expected_version, t);
        timed(async {
            let n = self
                .announcing(bind(q(&self.sql.update_tokens), &args))
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
        let args = rotate_args(
            family_id,
            expected_version,
            new_id_hash,
            previous_valid_until,
            handover,
            t,
            keep_previous,
        );
        timed(async {
            let n = self.announcing(bind(q(&self.sql.rotate), &args)).await?;
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
        one_row(self.execute(&self.sql.import_session, &session_record_args(s))).await
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
            bind(q(&self.sql.put_transaction), &transaction_args(tx))
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
        let args = [Text(key), Text(holder), Int(now), Int(until)];
        one_row(self.execute(&self.sql.acquire_lease, &args)).await
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        let args = [Text(key), Text(holder), Int(now), Int(until)];
        one_row(self.execute(&self.sql.renew_lease, &args)).await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> StoreResult<()> {
        let args = [Text(key), Text(holder)];
        self.execute(&self.sql.release_lease, &args).await.map(drop)
    }

    async fn remember_once(&self, key: &str, now: UnixTime, until: UnixTime) -> StoreResult<bool> {
        let args = [Text(key), Int(now), Int(until)];
        one_row(self.execute(&self.sql.remember_once, &args)).await
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        self.execute(&self.sql.forget, &[Text(key)]).await.map(drop)
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        let args = [
            Int(key.generation),
            Text(&key.kid),
            Text(key.sealed_key.as_stored()),
            Int(key.created_at),
        ];
        one_row(self.execute(&self.sql.add_signing_key, &args)).await
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
        let args = [Text(key), Text(value)];
        self.execute(&self.sql.put_setting, &args).await.map(drop)
    }

    async fn add_setting(&self, key: &str, value: &str) -> StoreResult<bool> {
        one_row(self.execute(&self.sql.add_setting, &[Text(key), Text(value)])).await
    }

    async fn delete_setting(&self, key: &str) -> StoreResult<bool> {
        one_row(self.execute(&self.sql.delete_setting, &[Text(key)])).await
    }

    async fn delete_signing_key(&self, generation: i64) -> StoreResult<bool> {
        one_row(self.execute(&self.sql.delete_signing_key, &[Int(generation)])).await
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
pub(crate) mod tests;
