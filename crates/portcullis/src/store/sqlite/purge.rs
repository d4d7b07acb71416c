//! Expiry: sessions, login transactions, leases and replay entries past their time go
//! in batches, and the write log is trimmed to what pollers may still need.

use super::{FEED_LOG_KEEP, SqliteStore, unavailable};
use crate::clock::UnixTime;
use crate::store::{StoreResult, timed};

impl SqliteStore {
    /// Deletes what has expired (`Store::purge_expired`).
    pub(super) async fn purge(&self, now: UnixTime) -> StoreResult<u64> {
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
