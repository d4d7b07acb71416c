//! The schema: migrations, in order, every statement rendered once for the store's
//! prefix, and how a row's columns are read.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::unavailable;
use crate::store::{StoreError, StoreResult};

/// Schema migrations, in order; `{p}` is replaced by the store prefix.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/0002_signing_keys.sql"),
    ),
    (
        3,
        include_str!("../../../migrations/postgres/0003_settings.sql"),
    ),
    (
        4,
        include_str!("../../../migrations/postgres/0004_providers.sql"),
    ),
    (
        5,
        include_str!("../../../migrations/postgres/0005_identity_kinds.sql"),
    ),
    (
        6,
        include_str!("../../../migrations/postgres/0006_granted_scope.sql"),
    ),
];

pub(super) async fn migrate(pool: &PgPool, sql: &Queries) -> StoreResult<()> {
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

/// Every statement, rendered once for this store's prefix.
#[derive(Debug)]
pub(super) struct Queries {
    pub(super) prefix: String,
    pub(super) channel: String,
    pub(super) upsert_user: String,
    pub(super) user_profile_for_update: String,
    pub(super) get_user: String,
    pub(super) list_users: String,
    pub(super) import_user: String,
    pub(super) create_session: String,
    pub(super) get_session: String,
    pub(super) touch: String,
    pub(super) mark_seen: String,
    pub(super) update_tokens: String,
    pub(super) rotate: String,
    pub(super) update_claims: String,
    pub(super) import_session: String,
    pub(super) delete_by_family: String,
    pub(super) delete_by_user: String,
    pub(super) delete_by_sid: String,
    pub(super) delete_by_subject: String,
    pub(super) delete_all: String,
    pub(super) list_sessions: String,
    pub(super) put_transaction: String,
    pub(super) trim_per_browser: String,
    pub(super) delete_expired_transactions: String,
    pub(super) count_transactions: String,
    pub(super) take_transaction: String,
    pub(super) acquire_lease: String,
    pub(super) renew_lease: String,
    pub(super) release_lease: String,
    pub(super) remember_once: String,
    pub(super) add_signing_key: String,
    pub(super) signing_keys: String,
    pub(super) delete_signing_key: String,
    pub(super) get_setting: String,
    pub(super) put_setting: String,
    pub(super) add_setting: String,
    pub(super) delete_setting: String,
    pub(super) forget: String,
    pub(super) purge: [String; 4],
}

const USER_COLUMNS: &str = "id, issuer, kind, subject, email, name, created_at, updated_at";

/// Announces each row of the CTE `changed` (family_id, id_hash, previous_id_hash) in
/// the same statement as the write; the statement returns one row per session.
const NOTIFY_CHANGED: &str = "SELECT pg_notify('{p}_feed', 's ' || family_id || ' ' || id_hash \
    || coalesce(' ' || previous_id_hash, '')) FROM changed";

// The statements, with `{p}` for the table prefix, `{notify}` for the change-feed
// announcement and `{session_columns}` / `{user_columns}` for the columns read back.

const UPSERT_USER: &str = "INSERT INTO {p}_users (id, issuer, kind, subject, email, name, created_at, updated_at) \
         VALUES ($1, $2, $7, $3, $4, $5, $6, $6) \
         ON CONFLICT (issuer, kind, subject) DO UPDATE SET \
         email = CASE WHEN $8 THEN excluded.email ELSE {p}_users.email END, \
         name = CASE WHEN $8 THEN excluded.name ELSE {p}_users.name END, \
         updated_at = excluded.updated_at \
         RETURNING {user_columns}";
const USER_PROFILE_FOR_UPDATE: &str = "SELECT email, name FROM {p}_users \
         WHERE issuer = $1 AND subject = $2 AND kind = $3 FOR UPDATE";
const GET_USER: &str = "SELECT {user_columns} FROM {p}_users WHERE id = $1";
const LIST_USERS: &str = "SELECT {user_columns} FROM {p}_users WHERE id > $1 ORDER BY id LIMIT $2";
const IMPORT_USER: &str = "INSERT INTO {p}_users ({user_columns}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT DO NOTHING";
const CREATE_SESSION: &str = "INSERT INTO {p}_sessions (family_id, id_hash, current_seen, user_id, \
         provider_sid, created_at, last_seen_at, idle_expires_at, absolute_expires_at, \
         refresh_token, access_token, id_token, access_expires_at, refresh_expires_at, \
         token_version, user_agent, access_issued_at, claims, email_verified, provider_id, \
         granted_scope) \
         VALUES ($1, $2, TRUE, $3, $4, $5, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $14, $15, $16, $17, $18)";
const GET_SESSION: &str = "SELECT {session_columns} FROM {p}_sessions s JOIN {p}_users u ON u.id = s.user_id \
         WHERE s.id_hash = $1 OR s.previous_id_hash = $1";
const TOUCH: &str = "UPDATE {p}_sessions SET last_seen_at = greatest(last_seen_at, $2), \
         idle_expires_at = greatest(idle_expires_at, $3) WHERE family_id = $1";
const MARK_SEEN: &str = "WITH changed AS (UPDATE {p}_sessions SET current_seen = TRUE \
         WHERE family_id = $1 AND id_hash = $2 AND NOT current_seen \
         RETURNING family_id, id_hash, previous_id_hash) {notify}";
const UPDATE_TOKENS: &str = "WITH changed AS (UPDATE {p}_sessions SET refresh_token = $3, \
         access_token = $4, id_token = $5, access_expires_at = $6, refresh_expires_at = $7, \
         access_issued_at = $8, granted_scope = $9, token_version = token_version + 1 \
         WHERE family_id = $1 AND token_version = $2 \
         RETURNING family_id, id_hash, previous_id_hash) {notify}";
const ROTATE: &str = "WITH changed AS (UPDATE {p}_sessions SET \
         previous_id_hash = CASE WHEN $12 THEN previous_id_hash ELSE id_hash END, \
         previous_valid_until = $4, id_hash = $3, current_seen = FALSE, refresh_token = $5, \
         access_token = $6, id_token = $7, access_expires_at = $8, refresh_expires_at = $9, \
         access_issued_at = $10, previous_handover = $11, granted_scope = $13, \
         token_version = token_version + 1 \
         WHERE family_id = $1 AND token_version = $2 \
         AND (NOT $12 OR (current_seen = FALSE AND previous_id_hash IS NOT NULL)) \
         RETURNING family_id, id_hash, previous_id_hash) {notify}";
const UPDATE_CLAIMS: &str = "WITH changed AS (UPDATE {p}_sessions SET claims = $2, email_verified = $3 \
         WHERE family_id = $1 RETURNING family_id, id_hash, previous_id_hash) {notify}";
const IMPORT_SESSION: &str = "INSERT INTO {p}_sessions (family_id, id_hash, previous_id_hash, \
         previous_valid_until, previous_handover, current_seen, user_id, provider_sid, \
         created_at, last_seen_at, idle_expires_at, absolute_expires_at, refresh_token, \
         access_token, id_token, access_expires_at, refresh_expires_at, access_issued_at, \
         token_version, user_agent, claims, email_verified, provider_id, granted_scope) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
         $17, $18, $19, $20, $21, $22, $23, $24) ON CONFLICT DO NOTHING";
const DELETE_ALL: &str = "WITH gone AS (DELETE FROM {p}_sessions RETURNING 1), \
         counted AS (SELECT count(*) AS n FROM gone) \
         SELECT n, pg_notify('{p}_feed', 'a') FROM counted";
const LIST_SESSIONS: &str = "SELECT {session_columns} FROM {p}_sessions s JOIN {p}_users u ON u.id = s.user_id \
         WHERE s.idle_expires_at > $1 AND s.absolute_expires_at > $1 \
         AND (s.refresh_expires_at IS NULL OR s.refresh_expires_at > $1) \
         AND ($2::text IS NULL OR s.user_id = $2) ORDER BY s.created_at DESC, s.family_id";
const PUT_TRANSACTION: &str = "INSERT INTO {p}_login_transactions (state_hash, binding_hash, nonce, \
         verifier, return_to, created_at, expires_at, provider_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const TRIM_PER_BROWSER: &str = "DELETE FROM {p}_login_transactions WHERE binding_hash = $1 AND state_hash NOT IN \
         (SELECT state_hash FROM {p}_login_transactions WHERE binding_hash = $1 \
          ORDER BY created_at DESC, seq DESC LIMIT $2)";
const DELETE_EXPIRED_TRANSACTIONS: &str =
    "DELETE FROM {p}_login_transactions WHERE expires_at <= $1";
const COUNT_TRANSACTIONS: &str = "SELECT COUNT(*) FROM {p}_login_transactions";
const TAKE_TRANSACTION: &str = "DELETE FROM {p}_login_transactions WHERE state_hash = $1 \
         RETURNING state_hash, binding_hash, nonce, verifier, return_to, created_at, expires_at, provider_id";
const ACQUIRE_LEASE: &str = "INSERT INTO {p}_refresh_leases (lease_key, holder, expires_at) VALUES ($1, $2, $4) \
         ON CONFLICT (lease_key) DO UPDATE SET holder = excluded.holder, \
         expires_at = excluded.expires_at \
         WHERE {p}_refresh_leases.expires_at <= $3 OR {p}_refresh_leases.holder = excluded.holder";
const RENEW_LEASE: &str = "UPDATE {p}_refresh_leases SET expires_at = $4 \
         WHERE lease_key = $1 AND holder = $2 AND expires_at > $3";
const RELEASE_LEASE: &str = "DELETE FROM {p}_refresh_leases WHERE lease_key = $1 AND holder = $2";
const REMEMBER_ONCE: &str = "INSERT INTO {p}_replay_cache (replay_key, expires_at) VALUES ($1, $3) \
         ON CONFLICT (replay_key) DO UPDATE SET expires_at = excluded.expires_at \
         WHERE {p}_replay_cache.expires_at <= $2";
const FORGET: &str = "DELETE FROM {p}_replay_cache WHERE replay_key = $1";
const ADD_SIGNING_KEY: &str = "INSERT INTO {p}_signing_keys (generation, kid, sealed_key, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const SIGNING_KEYS: &str =
    "SELECT generation, kid, sealed_key, created_at FROM {p}_signing_keys ORDER BY generation";
const DELETE_SIGNING_KEY: &str = "DELETE FROM {p}_signing_keys WHERE generation = $1";
const GET_SETTING: &str = "SELECT value FROM {p}_settings WHERE key = $1";
const ADD_SETTING: &str =
    "INSERT INTO {p}_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
const PUT_SETTING: &str = "INSERT INTO {p}_settings (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value";
const DELETE_SETTING: &str = "DELETE FROM {p}_settings WHERE key = $1";

impl Queries {
    pub(super) fn new(prefix: &str) -> Self {
        let t = |s: &str| {
            s.replace("{notify}", NOTIFY_CHANGED)
                .replace("{session_columns}", crate::store::rows::SESSION_COLUMNS)
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
            upsert_user: t(UPSERT_USER),
            user_profile_for_update: t(USER_PROFILE_FOR_UPDATE),
            get_user: t(GET_USER),
            list_users: t(LIST_USERS),
            import_user: t(IMPORT_USER),
            create_session: t(CREATE_SESSION),
            get_session: t(GET_SESSION),
            touch: t(TOUCH),
            mark_seen: t(MARK_SEEN),
            update_tokens: t(UPDATE_TOKENS),
            rotate: t(ROTATE),
            update_claims: t(UPDATE_CLAIMS),
            import_session: t(IMPORT_SESSION),
            delete_by_family: delete("family_id = $1"),
            delete_by_user: delete("user_id = $1"),
            delete_by_sid: delete(
                "provider_sid = $2 AND user_id IN (SELECT id FROM {p}_users WHERE issuer = $1)",
            ),
            delete_by_subject: delete(
                "user_id IN (SELECT id FROM {p}_users WHERE issuer = $1 AND subject = $2 AND kind = 'user')",
            ),
            // One reset message rather than one per session: all of them ended.
            delete_all: t(DELETE_ALL),
            list_sessions: t(LIST_SESSIONS),
            put_transaction: t(PUT_TRANSACTION),
            trim_per_browser: t(TRIM_PER_BROWSER),
            delete_expired_transactions: t(DELETE_EXPIRED_TRANSACTIONS),
            count_transactions: t(COUNT_TRANSACTIONS),
            take_transaction: t(TAKE_TRANSACTION),
            acquire_lease: t(ACQUIRE_LEASE),
            renew_lease: t(RENEW_LEASE),
            release_lease: t(RELEASE_LEASE),
            remember_once: t(REMEMBER_ONCE),
            forget: t(FORGET),
            add_signing_key: t(ADD_SIGNING_KEY),
            signing_keys: t(SIGNING_KEYS),
            delete_signing_key: t(DELETE_SIGNING_KEY),
            get_setting: t(GET_SETTING),
            add_setting: t(ADD_SETTING),
            put_setting: t(PUT_SETTING),
            delete_setting: t(DELETE_SETTING),
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

pub(super) fn q(sql: &str) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

pub(super) fn col<'r, T>(row: &'r PgRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
}

impl crate::store::rows::Columns for PgRow {
    fn opt_text(&self, name: &str) -> StoreResult<Option<String>> {
        col(self, name)
    }
    fn opt_int(&self, name: &str) -> StoreResult<Option<i64>> {
        col(self, name)
    }
    fn flag(&self, name: &str) -> StoreResult<bool> {
        col(self, name)
    }
}
