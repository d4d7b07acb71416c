//! The SQLite backend (sqlx, WAL): the embedded default for a single instance.

mod columns;
mod feed;
mod purge;
mod schema;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::SqlitePool;
use uuid::Uuid;

use super::feed::Tasks;
use super::sql::Arg::{self, Int, Text};
use super::sql::{
    bind, new_session_args, one_row, rotate_args, session_record_args, transaction_args,
    update_tokens_args,
};
use super::{
    ChangeFeed, FeedEvent, IdentityKind, LoginTransaction, NewSession, SessionRecord,
    SigningKeyRecord, Store, StoreError, StoreResult, TokenSet, TransactionLimits, User,
    UserProfile, timed,
};
use crate::clock::UnixTime;
use crate::store::id::IdHash;
use crate::store::rows::SESSION_COLUMNS;
use feed::{Write, changes_from_rows};
pub use schema::apply_migrations;

/// Write-log entries kept for pollers in other processes; a poller that finds a gap
/// resets.
const FEED_LOG_KEEP: i64 = 10_000;

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
    /// Runs one statement; how many rows it changed.
    async fn execute(&self, sql: &'static str, args: &[Arg<'_>]) -> StoreResult<u64> {
        timed(async {
            let done = bind(sqlx::query(sql), args)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
        .await
    }

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

    async fn upsert_identity(
        &self,
        issuer: &str,
        kind: IdentityKind,
        subject: &str,
        profile: Option<&UserProfile>,
        now: UnixTime,
    ) -> StoreResult<User> {
        timed(async {
            let mut w = self.write().await?;
            let before: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT email, name FROM users WHERE issuer = ?1 AND subject = ?2 AND kind = ?3",
            )
            .bind(issuer)
            .bind(subject)
            .bind(kind.as_str())
            .fetch_optional(&mut *w.db)
            .await
            .map_err(unavailable)?;
            let new_id = crate::random::new_uuid();
            let empty = UserProfile::default();
            let row = sqlx::query(
                "INSERT INTO users (id, issuer, kind, subject, email, name, created_at, updated_at) \
                 VALUES (?1, ?2, ?7, ?3, ?4, ?5, ?6, ?6) \
                 ON CONFLICT (issuer, kind, subject) DO UPDATE SET \
                   email = CASE WHEN ?8 THEN excluded.email ELSE users.email END, \
                   name = CASE WHEN ?8 THEN excluded.name ELSE users.name END, \
                   updated_at = excluded.updated_at \
                 RETURNING id, issuer, kind, subject, email, name, created_at, updated_at",
            )
            .bind(new_id.to_string())
            .bind(issuer)
            .bind(subject)
            .bind(&profile.unwrap_or(&empty).email)
            .bind(&profile.unwrap_or(&empty).name)
            .bind(now)
            .bind(kind.as_str())
            .bind(profile.is_some())
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
                "SELECT id, issuer, kind, subject, email, name, created_at, updated_at FROM users WHERE id = ?1",
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
                "SELECT id, issuer, kind, subject, email, name, created_at, updated_at FROM users \
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
                "INSERT INTO users (id, issuer, kind, subject, email, name, created_at, updated_at) \
                 VALUES (?1, ?2, ?8, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )
            .bind(u.id.to_string())
            .bind(&u.issuer)
            .bind(&u.subject)
            .bind(&u.email)
            .bind(&u.name)
            .bind(u.created_at)
            .bind(u.updated_at)
            .bind(u.kind.as_str())
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
            let sql = "INSERT INTO sessions (family_id, id_hash, current_seen, user_id, provider_sid, \
                 created_at, last_seen_at, idle_expires_at, absolute_expires_at, refresh_token, \
                 access_token, id_token, access_expires_at, refresh_expires_at, token_version, user_agent, \
                 access_issued_at, claims, email_verified, provider_id, granted_scope) \
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, ?13, ?14, ?15, ?16, ?17, ?18)";
            bind(sqlx::query(sql), &new_session_args(s))
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
            let rows = bind(
                sqlx::query(
                    "UPDATE sessions SET refresh_token = ?3, access_token = ?4, id_token = ?5, \
                 access_expires_at = ?6, refresh_expires_at = ?7, access_issued_at = ?8, \
                 granted_scope = ?9, token_version = token_version + 1 \
                 WHERE family_id = ?1 AND token_version = ?2 \
                 RETURNING family_id, id_hash, previous_id_hash",
                ),
                &update_tokens_args(family_id, expected_version, t),
            )
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
            let args = rotate_args(
                family_id,
                expected_version,
                new_id_hash,
                previous_valid_until,
                handover,
                t,
                keep_previous,
            );
            let rows = bind(
                sqlx::query(
                    "UPDATE sessions SET \
                 previous_id_hash = CASE WHEN ?12 THEN previous_id_hash ELSE id_hash END, \
                 previous_valid_until = ?4, \
                 id_hash = ?3, current_seen = 0, refresh_token = ?5, access_token = ?6, \
                 id_token = ?7, access_expires_at = ?8, refresh_expires_at = ?9, \
                 access_issued_at = ?10, previous_handover = ?11, granted_scope = ?13, \
                 token_version = token_version + 1 \
                 WHERE family_id = ?1 AND token_version = ?2 \
                 AND (NOT ?12 OR (current_seen = 0 AND previous_id_hash IS NOT NULL)) \
                 RETURNING family_id, id_hash, previous_id_hash",
                ),
                &args,
            )
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
            let sql = "INSERT INTO sessions (family_id, id_hash, previous_id_hash, previous_valid_until, \
                 previous_handover, current_seen, user_id, provider_sid, created_at, last_seen_at, \
                 idle_expires_at, absolute_expires_at, refresh_token, access_token, id_token, \
                 access_expires_at, refresh_expires_at, access_issued_at, token_version, \
                 user_agent, claims, email_verified, provider_id, granted_scope) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                 ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24) ON CONFLICT DO NOTHING";
            let done = bind(sqlx::query(sql), &session_record_args(s))
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
            "user_id IN (SELECT id FROM users WHERE issuer = ?1 AND subject = ?2 AND kind = 'user')",
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
            let sql = "INSERT INTO login_transactions (state_hash, binding_hash, nonce, verifier, \
                 return_to, created_at, expires_at, provider_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
            bind(sqlx::query(sql), &transaction_args(tx))
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
                 RETURNING state_hash, binding_hash, nonce, verifier, return_to, created_at, expires_at, provider_id",
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
        let sql = "INSERT INTO refresh_leases (lease_key, holder, expires_at) VALUES (?1, ?2, ?4) \
                   ON CONFLICT (lease_key) DO UPDATE SET holder = excluded.holder, \
                   expires_at = excluded.expires_at \
                   WHERE refresh_leases.expires_at <= ?3 OR refresh_leases.holder = excluded.holder";
        one_row(self.execute(sql, &[Text(key), Text(holder), Int(now), Int(until)])).await
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        let sql = "UPDATE refresh_leases SET expires_at = ?4 \
                   WHERE lease_key = ?1 AND holder = ?2 AND expires_at > ?3";
        one_row(self.execute(sql, &[Text(key), Text(holder), Int(now), Int(until)])).await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> StoreResult<()> {
        let sql = "DELETE FROM refresh_leases WHERE lease_key = ?1 AND holder = ?2";
        self.execute(sql, &[Text(key), Text(holder)])
            .await
            .map(drop)
    }

    async fn remember_once(&self, key: &str, now: UnixTime, until: UnixTime) -> StoreResult<bool> {
        let sql = "INSERT INTO replay_cache (replay_key, expires_at) VALUES (?1, ?3) \
                   ON CONFLICT (replay_key) DO UPDATE SET expires_at = excluded.expires_at \
                   WHERE replay_cache.expires_at <= ?2";
        one_row(self.execute(sql, &[Text(key), Int(now), Int(until)])).await
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        let sql = "DELETE FROM replay_cache WHERE replay_key = ?1";
        self.execute(sql, &[Text(key)]).await.map(drop)
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        let sql = "INSERT INTO signing_keys (generation, kid, sealed_key, created_at) \
                   VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";
        let args = [
            Int(key.generation),
            Text(&key.kid),
            Text(key.sealed_key.as_stored()),
            Int(key.created_at),
        ];
        one_row(self.execute(sql, &args)).await
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
        let sql = "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                   ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        self.execute(sql, &[Text(key), Text(value)]).await.map(drop)
    }

    async fn add_setting(&self, key: &str, value: &str) -> StoreResult<bool> {
        let sql = "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING";
        one_row(self.execute(sql, &[Text(key), Text(value)])).await
    }

    async fn delete_setting(&self, key: &str) -> StoreResult<bool> {
        one_row(self.execute("DELETE FROM settings WHERE key = ?1", &[Text(key)])).await
    }

    async fn delete_signing_key(&self, generation: i64) -> StoreResult<bool> {
        let sql = "DELETE FROM signing_keys WHERE generation = ?1";
        one_row(self.execute(sql, &[Int(generation)])).await
    }

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<u64> {
        self.purge(now).await
    }
}

#[cfg(test)]
mod tests;
