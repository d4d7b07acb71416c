//! The change feed on SQLite: a write transaction claims its write-log entries and
//! publishes what it changed; another process's writes are found by polling the log.

use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;

use super::columns::{col, uuid_col};
use super::{SqliteStore, unavailable};
use crate::store::feed::HEARTBEAT_EVERY;
use crate::store::id::IdHash;
use crate::store::{ChangeFeed, FeedEvent, SessionChange, StoreResult};

/// A write transaction on users or sessions (see [`SqliteStore::write`]).
pub(super) struct Write<'a> {
    pub(super) db: sqlx::Transaction<'static, sqlx::Sqlite>,
    pub(super) mark: i64,
    pub(super) store: &'a SqliteStore,
}

impl Write<'_> {
    /// Claims this transaction's write-log entries, commits, then publishes `changes`
    /// (the sessions it changed or ended).
    pub(super) async fn commit(
        mut self,
        changes: Vec<SessionChange>,
    ) -> StoreResult<Vec<SessionChange>> {
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
pub(super) async fn watch_other_processes(
    mut conn: SqliteConnection,
    feed: ChangeFeed,
    mut seen: i64,
) {
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
pub(super) fn changes_from_rows(rows: &[SqliteRow]) -> StoreResult<Vec<SessionChange>> {
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
