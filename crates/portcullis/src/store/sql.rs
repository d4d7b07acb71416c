//! What the two SQL engines (SQLite, PostgreSQL) share for their simple statements:
//! arguments of either kind, bound in order by each engine's `execute`, and the
//! "exactly one row changed" answer most of them give.

use super::StoreResult;

/// One argument of a statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// Whether the statement changed exactly one row (an insert that happened, a lease
/// taken, a row deleted).
pub(crate) async fn one_row(
    changed: impl std::future::Future<Output = StoreResult<u64>>,
) -> StoreResult<bool> {
    Ok(changed.await? == 1)
}
