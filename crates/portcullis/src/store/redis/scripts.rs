//! The Lua scripts, one file each beside this one, and their arguments.

use std::sync::LazyLock;

use redis::Script;

use super::fields::Fields;

// The Lua scripts, one file each under `store/redis/`. ARGV[1] is always the key prefix; keys are derived in the scripts
// (a single primary: keys need not be declared for cluster routing). Each script reads
// and checks everything before its first write, because Redis does not roll a failed
// script back.

/// Helpers shared by every script.
const PRELUDE: &str = include_str!("prelude.lua");

/// ARGV: prefix, subject key, new id, issuer, subject, now, profile fields. Returns the
/// user's fields.
const UPSERT_USER: &str = include_str!("upsert_user.lua");

/// ARGV: prefix, subject key, id, fields. Returns 0 when the id or (issuer, subject)
/// exists.
const IMPORT_USER: &str = include_str!("import_user.lua");

/// ARGV: prefix, after ('' for the start), limit. Returns the users' fields.
const LIST_USERS: &str = include_str!("list_users.lua");

/// ARGV: prefix, mode ('create' or 'import'), family, user id, id hash, previous id
/// hash or '', fields. Import answers 0 when the family exists; create fails.
const PUT_SESSION: &str = include_str!("put_session.lua");

/// ARGV: prefix, id hash. Returns {session fields, user fields}, or nil.
const GET_SESSION: &str = include_str!("get_session.lua");

/// ARGV: prefix, family, last seen, idle deadline, the id hash presented or ''.
const TOUCH_SESSION: &str = include_str!("touch_session.lua");

/// ARGV: prefix, family, expected version, token fields.
const UPDATE_TOKENS: &str = include_str!("update_tokens.lua");

/// ARGV: prefix, family, expected version, new id hash, previous valid until, handover,
/// keep the previous id ('1' or '0'), token fields.
const ROTATE_SESSION_ID: &str = include_str!("rotate_session_id.lua");

/// ARGV: prefix, family, claims, email verified ('1' or '0').
const UPDATE_CLAIMS: &str = include_str!("update_claims.lua");

/// ARGV: prefix, family.
const DELETE_SESSION: &str = include_str!("delete_session.lua");

/// ARGV: prefix, user id.
const DELETE_USER_SESSIONS: &str = include_str!("delete_user_sessions.lua");

/// ARGV: prefix, subject key, issuer, subject.
const DELETE_SESSIONS_BY_SUBJECT: &str = include_str!("delete_sessions_by_subject.lua");

/// ARGV: prefix, issuer, provider sid.
const DELETE_SESSIONS_BY_PROVIDER_SID: &str = include_str!("delete_sessions_by_provider_sid.lua");

/// ARGV: prefix, batch size. Returns {families looked at, sessions removed}; announces
/// one reset (`a`) per batch that removed any.
const DELETE_ALL_SESSIONS: &str = include_str!("delete_all_sessions.lua");

/// ARGV: prefix, now, offset, count, user id or ''. Returns {families looked at,
/// {session fields, user fields}...}; the caller decides which are live at `now`.
const LIST_SESSIONS: &str = include_str!("list_sessions.lua");

/// ARGV: prefix, now, batch size. Removes the sessions that ended by `now`, silently
/// (expiry is decided from deadlines, not announced).
const PURGE_SESSIONS: &str = include_str!("purge_sessions.lua");

/// ARGV: prefix, state hash, binding hash, created at, expires at, per-browser limit,
/// total limit, fields.
const PUT_TRANSACTION: &str = include_str!("put_transaction.lua");

/// ARGV: prefix, state hash. Returns the transaction's fields (read and removed as
/// one), or nil.
const TAKE_TRANSACTION: &str = include_str!("take_transaction.lua");

/// ARGV: prefix, now, batch size.
const PURGE_TRANSACTIONS: &str = include_str!("purge_transactions.lua");

/// ARGV: prefix, key, holder, now, until.
const ACQUIRE_LEASE: &str = include_str!("acquire_lease.lua");

/// ARGV: prefix, key, holder, now, until. Compare-and-extend.
const RENEW_LEASE: &str = include_str!("renew_lease.lua");

/// ARGV: prefix, key, holder. Compare-and-delete.
const RELEASE_LEASE: &str = include_str!("release_lease.lua");

/// ARGV: prefix, key, now, until.
const REMEMBER_ONCE: &str = include_str!("remember_once.lua");

pub(super) struct Scripts {
    pub(super) upsert_user: Script,
    pub(super) import_user: Script,
    pub(super) list_users: Script,
    pub(super) put_session: Script,
    pub(super) get_session: Script,
    pub(super) touch_session: Script,
    pub(super) update_tokens: Script,
    pub(super) rotate_session_id: Script,
    pub(super) update_claims: Script,
    pub(super) delete_session: Script,
    pub(super) delete_user_sessions: Script,
    pub(super) delete_sessions_by_subject: Script,
    pub(super) delete_sessions_by_provider_sid: Script,
    pub(super) delete_all_sessions: Script,
    pub(super) list_sessions: Script,
    pub(super) purge_sessions: Script,
    pub(super) put_transaction: Script,
    pub(super) take_transaction: Script,
    pub(super) purge_transactions: Script,
    pub(super) acquire_lease: Script,
    pub(super) renew_lease: Script,
    pub(super) release_lease: Script,
    pub(super) remember_once: Script,
}

impl Scripts {
    pub(super) fn all(&self) -> [&Script; 23] {
        [
            &self.upsert_user,
            &self.import_user,
            &self.list_users,
            &self.put_session,
            &self.get_session,
            &self.touch_session,
            &self.update_tokens,
            &self.rotate_session_id,
            &self.update_claims,
            &self.delete_session,
            &self.delete_user_sessions,
            &self.delete_sessions_by_subject,
            &self.delete_sessions_by_provider_sid,
            &self.delete_all_sessions,
            &self.list_sessions,
            &self.purge_sessions,
            &self.put_transaction,
            &self.take_transaction,
            &self.purge_transactions,
            &self.acquire_lease,
            &self.renew_lease,
            &self.release_lease,
            &self.remember_once,
        ]
    }
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
    Scripts {
        upsert_user: s(UPSERT_USER),
        import_user: s(IMPORT_USER),
        list_users: s(LIST_USERS),
        put_session: s(PUT_SESSION),
        get_session: s(GET_SESSION),
        touch_session: s(TOUCH_SESSION),
        update_tokens: s(UPDATE_TOKENS),
        rotate_session_id: s(ROTATE_SESSION_ID),
        update_claims: s(UPDATE_CLAIMS),
        delete_session: s(DELETE_SESSION),
        delete_user_sessions: s(DELETE_USER_SESSIONS),
        delete_sessions_by_subject: s(DELETE_SESSIONS_BY_SUBJECT),
        delete_sessions_by_provider_sid: s(DELETE_SESSIONS_BY_PROVIDER_SID),
        delete_all_sessions: s(DELETE_ALL_SESSIONS),
        list_sessions: s(LIST_SESSIONS),
        purge_sessions: s(PURGE_SESSIONS),
        put_transaction: s(PUT_TRANSACTION),
        take_transaction: s(TAKE_TRANSACTION),
        purge_transactions: s(PURGE_TRANSACTIONS),
        acquire_lease: s(ACQUIRE_LEASE),
        renew_lease: s(RENEW_LEASE),
        release_lease: s(RELEASE_LEASE),
        remember_once: s(REMEMBER_ONCE),
    }
});

// Arguments going in.

/// A script's arguments after the prefix.
#[derive(Debug, Clone, Default)]
pub(super) struct Args(pub(super) Vec<String>);

impl Args {
    pub(super) fn new() -> Self {
        Self::default()
    }

    pub(super) fn with(mut self, value: impl ToString) -> Self {
        self.0.push(value.to_string());
        self
    }

    /// Appends `fields` in the shape the Lua `apply` reads.
    pub(super) fn fields(mut self, fields: Fields) -> Self {
        self.0.push(fields.set.len().to_string());
        for (name, value) in fields.set {
            self.0.push(name.to_owned());
            self.0.push(value);
        }
        self.0.push(fields.unset.len().to_string());
        self.0.extend(fields.unset.into_iter().map(str::to_owned));
        self
    }
}
