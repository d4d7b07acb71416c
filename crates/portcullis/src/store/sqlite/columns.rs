//! How a row's columns are read.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::store::{StoreError, StoreResult};

pub(super) fn uuid_col(row: &SqliteRow, col: &str) -> StoreResult<Uuid> {
    let text: String = row
        .try_get(col)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(super) fn col<'r, T>(row: &'r SqliteRow, name: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
}

pub(super) const SESSION_COLUMNS: &str = "s.family_id, s.id_hash, s.previous_id_hash, s.previous_valid_until, \
    s.current_seen, s.provider_sid, s.created_at, s.last_seen_at, s.idle_expires_at, \
    s.absolute_expires_at, s.refresh_token, s.access_token, s.id_token, s.access_expires_at, \
    s.refresh_expires_at, s.access_issued_at, s.previous_handover, s.token_version, s.user_agent, \
    s.claims, s.email_verified, s.provider_id, s.granted_scope, \
    u.id AS u_id, u.issuer AS u_issuer, u.kind AS u_kind, u.subject AS u_subject, u.email AS u_email, \
    u.name AS u_name, u.created_at AS u_created_at, u.updated_at AS u_updated_at";

impl crate::store::rows::Columns for SqliteRow {
    fn opt_text(&self, name: &str) -> StoreResult<Option<String>> {
        col(self, name)
    }
    fn opt_int(&self, name: &str) -> StoreResult<Option<i64>> {
        col(self, name)
    }
}
