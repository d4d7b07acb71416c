//! What the two SQL engines (SQLite, PostgreSQL) share: statement arguments, bound in
//! order by each engine's `bind`, the argument lists of the session statements (both
//! engines number their parameters alike), and the "exactly one row changed" answer.

use super::{NewSession, SessionRecord, StoreResult, TokenSet};
use crate::store::id::IdHash;
use crate::store::sealed::Sealed;

/// One argument of a statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
    /// Stored as its hyphenated text.
    Uuid(uuid::Uuid),
}

use Arg::{Bool, Int, OptInt, OptText, Text};

/// Binds `args` in order, on either engine.
pub(crate) fn bind<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, DB::Arguments>,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for arg in args {
        query = match *arg {
            Text(text) => query.bind(text),
            OptText(text) => query.bind(text),
            Int(number) => query.bind(number),
            OptInt(number) => query.bind(number),
            Bool(flag) => query.bind(flag),
            Arg::Uuid(id) => query.bind(id.to_string()),
        };
    }
    query
}

/// Whether the statement changed exactly one row (an insert that happened, a lease
/// taken, a row deleted).
pub(crate) async fn one_row(
    changed: impl std::future::Future<Output = StoreResult<u64>>,
) -> StoreResult<bool> {
    Ok(changed.await? == 1)
}

fn sealed(value: &Option<Sealed>) -> Option<&str> {
    value.as_ref().map(Sealed::as_stored)
}

/// The token columns, in the order the statements that write them number them
/// (refresh, access, ID token, access expiry, refresh expiry, access issued).
fn token_args(t: &TokenSet) -> [Arg<'_>; 6] {
    [
        OptText(sealed(&t.refresh_token)),
        OptText(sealed(&t.access_token)),
        OptText(sealed(&t.id_token)),
        OptInt(t.access_expires_at),
        OptInt(t.refresh_expires_at),
        OptInt(t.access_issued_at),
    ]
}

/// `create_session` (18 parameters).
pub(crate) fn new_session_args(s: &NewSession) -> Vec<Arg<'_>> {
    let t = &s.tokens;
    vec![
        Arg::Uuid(s.family_id),
        Text(s.id_hash.as_str()),
        Arg::Uuid(s.user_id),
        OptText(s.provider_sid.as_deref()),
        Int(s.created_at),
        Int(s.idle_expires_at),
        Int(s.absolute_expires_at),
        OptText(sealed(&t.refresh_token)),
        OptText(sealed(&t.access_token)),
        OptText(sealed(&t.id_token)),
        OptInt(t.access_expires_at),
        OptInt(t.refresh_expires_at),
        OptText(s.user_agent.as_deref()),
        OptInt(t.access_issued_at),
        Text(&s.claims),
        Bool(s.email_verified),
        Text(&s.provider_id),
        OptText(t.granted_scope.as_deref()),
    ]
}

/// `import_session` (24 parameters: every column).
pub(crate) fn session_record_args(s: &SessionRecord) -> Vec<Arg<'_>> {
    let mut args = vec![
        Arg::Uuid(s.family_id),
        Text(s.id_hash.as_str()),
        OptText(s.previous_id_hash.as_ref().map(IdHash::as_str)),
        OptInt(s.previous_valid_until),
        OptText(s.previous_handover.as_deref()),
        Bool(s.current_seen),
        Arg::Uuid(s.user.id),
        OptText(s.provider_sid.as_deref()),
        Int(s.created_at),
        Int(s.last_seen_at),
        Int(s.idle_expires_at),
        Int(s.absolute_expires_at),
    ];
    args.extend(token_args(&s.tokens));
    args.extend([
        Int(s.token_version),
        OptText(s.user_agent.as_deref()),
        Text(&s.claims),
        Bool(s.email_verified),
        Text(&s.provider_id),
        OptText(s.tokens.granted_scope.as_deref()),
    ]);
    args
}

/// `put_transaction` (8 parameters).
pub(crate) fn transaction_args(tx: &crate::store::LoginTransaction) -> Vec<Arg<'_>> {
    vec![
        Text(&tx.state_hash),
        Text(&tx.binding_hash),
        Text(&tx.nonce),
        Text(tx.verifier.as_stored()),
        Text(&tx.return_to),
        Int(tx.created_at),
        Int(tx.expires_at),
        Text(&tx.provider_id),
    ]
}

/// `update_tokens`: the family, the expected version, then the tokens.
pub(crate) fn update_tokens_args(
    family_id: uuid::Uuid,
    expected_version: i64,
    t: &TokenSet,
) -> Vec<Arg<'_>> {
    let mut args = vec![Arg::Uuid(family_id), Int(expected_version)];
    args.extend(token_args(t));
    args.push(OptText(t.granted_scope.as_deref()));
    args
}

/// `rotate_session_id`: the family, the expected version, the new id, how long the
/// previous one stays valid, the tokens, the handover, whether to keep the previous.
pub(crate) fn rotate_args<'a>(
    family_id: uuid::Uuid,
    expected_version: i64,
    new_id_hash: &'a IdHash,
    previous_valid_until: i64,
    handover: &'a str,
    t: &'a TokenSet,
    keep_previous: bool,
) -> Vec<Arg<'a>> {
    let mut args = vec![
        Arg::Uuid(family_id),
        Int(expected_version),
        Text(new_id_hash.as_str()),
        Int(previous_valid_until),
    ];
    args.extend(token_args(t));
    args.extend([
        Text(handover),
        Bool(keep_previous),
        OptText(t.granted_scope.as_deref()),
    ]);
    args
}
