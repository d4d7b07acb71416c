//! The dev provider's persistence (SQLite through sqlx): signing keys, browser
//! sessions, codes, grants and tokens. Codes and tokens are kept only as SHA-256.
//! Single use is enforced by atomic `UPDATE … SET used = used + 1 RETURNING used`.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[error("idp store: {0}")]
pub struct StoreError(String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<portcullis::store::StoreError> for StoreError {
    fn from(e: portcullis::store::StoreError) -> Self {
        Self(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/0001_init.sql"))];

/// A code as issued.
#[derive(Debug, Clone)]
pub struct CodeRow {
    pub client_id: String,
    pub redirect_uri: String,
    pub username: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub challenge: String,
    pub sid: String,
    pub auth_time: i64,
    pub expires_at: i64,
    /// How many times it has been presented, this time included.
    pub uses: i64,
    pub grant_id: Option<String>,
}

/// A grant: one authorization of one client by one user, and every token from it.
#[derive(Debug, Clone)]
pub struct GrantRow {
    pub grant_id: String,
    pub client_id: String,
    pub username: String,
    pub scope: String,
    pub sid: String,
    pub auth_time: i64,
    pub nonce: Option<String>,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct IdpStore {
    pool: SqlitePool,
}

impl IdpStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        portcullis::store::sqlite::apply_migrations(&pool, MIGRATIONS).await?;
        Ok(Self { pool })
    }

    // Keys.
    pub async fn keys(&self) -> Result<Vec<(String, String, Vec<u8>, i64, Option<i64>)>> {
        let rows = sqlx::query("SELECT kid, alg, private_der, created_at, retired_at FROM signing_keys ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }

    pub async fn add_key(&self, kid: &str, alg: &str, der: &[u8], now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_der, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(kid)
        .bind(alg)
        .bind(der)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn retire_keys(&self, now: i64) -> Result<u64> {
        Ok(
            sqlx::query("UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL")
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    // Browser sessions at the provider.
    pub async fn create_session(
        &self,
        id_hash: &str,
        sid: &str,
        username: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO sessions (id_hash, sid, username, auth_time, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(id_hash)
            .bind(sid)
            .bind(username)
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// (sid, username, auth_time) of a live session.
    pub async fn session(&self, id_hash: &str, now: i64) -> Result<Option<(String, String, i64)>> {
        let row = sqlx::query(
            "SELECT sid, username, auth_time FROM sessions WHERE id_hash = ?1 AND expires_at > ?2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        })
    }

    pub async fn session_by_sid(&self, sid: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT username FROM sessions WHERE sid = ?1")
                .bind(sid)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn note_session_client(&self, sid: &str, client_id: &str) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO session_clients (sid, client_id) VALUES (?1, ?2)")
            .bind(sid)
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a session: deletes it, revokes its grants, returns the clients that took part.
    pub async fn end_session(&self, sid: &str) -> Result<Vec<String>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let clients: Vec<String> =
            sqlx::query_scalar("SELECT client_id FROM session_clients WHERE sid = ?1")
                .bind(sid)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM sessions WHERE sid = ?1")
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM session_clients WHERE sid = ?1")
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        let grants: Vec<String> = sqlx::query_scalar("SELECT grant_id FROM grants WHERE sid = ?1")
            .bind(sid)
            .fetch_all(&mut *tx)
            .await?;
        for g in &grants {
            revoke_grant_in(&mut tx, g).await?;
        }
        tx.commit().await?;
        Ok(clients)
    }

    // Codes.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_code(&self, code_hash: &str, row: &CodeRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO codes (code_hash, client_id, redirect_uri, username, scope, nonce, challenge, sid, auth_time, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(code_hash)
        .bind(&row.client_id)
        .bind(&row.redirect_uri)
        .bind(&row.username)
        .bind(&row.scope)
        .bind(&row.nonce)
        .bind(&row.challenge)
        .bind(&row.sid)
        .bind(row.auth_time)
        .bind(row.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Presents a code: counts the use and, on the first use, reserves `grant_id` for
    /// what it will issue, in one atomic statement.
    /// Counts one presentation of a code by the client it was issued to (another
    /// client's presentation neither finds nor spends it).
    pub async fn present_code(
        &self,
        code_hash: &str,
        client_id: &str,
        grant_id: &str,
    ) -> Result<Option<CodeRow>> {
        let row = sqlx::query(
            "UPDATE codes SET used = used + 1, grant_id = COALESCE(grant_id, ?2) \
             WHERE code_hash = ?1 AND client_id = ?3 \
             RETURNING client_id, redirect_uri, username, scope, nonce, challenge, sid, auth_time, expires_at, used, grant_id",
        )
        .bind(code_hash)
        .bind(grant_id)
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(CodeRow {
                client_id: r.try_get(0)?,
                redirect_uri: r.try_get(1)?,
                username: r.try_get(2)?,
                scope: r.try_get(3)?,
                nonce: r.try_get(4)?,
                challenge: r.try_get(5)?,
                sid: r.try_get(6)?,
                auth_time: r.try_get(7)?,
                expires_at: r.try_get(8)?,
                uses: r.try_get(9)?,
                grant_id: r.try_get(10)?,
            }),
            None => None,
        })
    }

    /// How many times a code has been presented so far.
    pub async fn code_uses(&self, code_hash: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT used FROM codes WHERE code_hash = ?1")
                .bind(code_hash)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(0),
        )
    }

    // Grants and tokens.
    pub async fn add_grant(&self, g: &GrantRow, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO grants (grant_id, client_id, username, scope, sid, auth_time, nonce, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&g.grant_id)
        .bind(&g.client_id)
        .bind(&g.username)
        .bind(&g.scope)
        .bind(&g.sid)
        .bind(g.auth_time)
        .bind(&g.nonce)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn grant(&self, grant_id: &str) -> Result<Option<GrantRow>> {
        let row = sqlx::query("SELECT grant_id, client_id, username, scope, sid, auth_time, nonce, revoked FROM grants WHERE grant_id = ?1")
            .bind(grant_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(GrantRow {
                grant_id: r.try_get(0)?,
                client_id: r.try_get(1)?,
                username: r.try_get(2)?,
                scope: r.try_get(3)?,
                sid: r.try_get(4)?,
                auth_time: r.try_get(5)?,
                nonce: r.try_get(6)?,
                revoked: r.try_get::<i64, _>(7)? != 0,
            }),
            None => None,
        })
    }

    /// Revokes a grant and deletes every token it issued.
    pub async fn revoke_grant(&self, grant_id: &str) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        revoke_grant_in(&mut tx, grant_id).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_refresh(&self, hash: &str, grant_id: &str, expires_at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, grant_id, expires_at) VALUES (?1, ?2, ?3)",
        )
        .bind(hash)
        .bind(grant_id)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Presents a refresh token: (grant id, expiry, uses including this one).
    pub async fn present_refresh(&self, hash: &str) -> Result<Option<(String, i64, i64)>> {
        let row = sqlx::query("UPDATE refresh_tokens SET used = used + 1 WHERE token_hash = ?1 RETURNING grant_id, expires_at, used")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        })
    }

    /// (grant id, expiry) of a refresh token, without using it.
    pub async fn refresh_token(&self, hash: &str) -> Result<Option<(String, i64)>> {
        let row =
            sqlx::query("SELECT grant_id, expires_at FROM refresh_tokens WHERE token_hash = ?1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    /// The grant of a refresh token, without using it (for revocation).
    pub async fn refresh_grant(&self, hash: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT grant_id FROM refresh_tokens WHERE token_hash = ?1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn add_access(
        &self,
        hash: &str,
        grant_id: &str,
        scope: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO access_tokens (token_hash, grant_id, scope, expires_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(hash)
            .bind(grant_id)
            .bind(scope)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// (grant id, expiry, scope) of an access token.
    pub async fn access(&self, hash: &str) -> Result<Option<(String, i64, String)>> {
        let row = sqlx::query(
            "SELECT grant_id, expires_at, scope FROM access_tokens WHERE token_hash = ?1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        })
    }

    pub async fn delete_access(&self, hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM access_tokens WHERE token_hash = ?1")
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn revoke_grant_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    grant_id: &str,
) -> Result<()> {
    sqlx::query("UPDATE grants SET revoked = 1 WHERE grant_id = ?1")
        .bind(grant_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM refresh_tokens WHERE grant_id = ?1")
        .bind(grant_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM access_tokens WHERE grant_id = ?1")
        .bind(grant_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
