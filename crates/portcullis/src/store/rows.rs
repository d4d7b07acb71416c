//! One row mapper for the SQL engines: PostgreSQL and SQLite read the same columns into
//! the same records, so the mapping is written once, over [`Columns`], which each
//! engine's row type implements with its own decoding.

use uuid::Uuid;

use super::{
    IdHash, IdMatch, IdentityKind, LoginTransaction, Sealed, SessionRecord, StoreError,
    StoreResult, TokenSet, User,
};

/// What [`session`] reads, from `sessions s JOIN users u` (the user's columns under
/// `u_`): one list for both SQL engines.
pub(crate) const SESSION_COLUMNS: &str = "s.family_id, s.id_hash, s.previous_id_hash, s.previous_valid_until, \
    s.current_seen, s.provider_sid, s.created_at, s.last_seen_at, s.idle_expires_at, \
    s.absolute_expires_at, s.refresh_token, s.access_token, s.id_token, s.access_expires_at, \
    s.refresh_expires_at, s.access_issued_at, s.previous_handover, s.token_version, s.user_agent, \
    s.claims, s.email_verified, s.provider_id, s.granted_scope, \
    u.id AS u_id, u.issuer AS u_issuer, u.kind AS u_kind, u.subject AS u_subject, u.email AS u_email, \
    u.name AS u_name, u.created_at AS u_created_at, u.updated_at AS u_updated_at";

/// What the mappers read from a row, by column name.
pub(crate) trait Columns {
    fn opt_text(&self, name: &str) -> StoreResult<Option<String>>;
    fn opt_int(&self, name: &str) -> StoreResult<Option<i64>>;

    /// A column that may not be NULL.
    fn text(&self, name: &str) -> StoreResult<String> {
        self.opt_text(name)?.ok_or_else(|| null(name))
    }

    fn int(&self, name: &str) -> StoreResult<i64> {
        self.opt_int(name)?.ok_or_else(|| null(name))
    }

    /// A boolean column (stored as `0`/`1`; PostgreSQL's `boolean` overrides this).
    fn flag(&self, name: &str) -> StoreResult<bool> {
        Ok(self.int(name)? != 0)
    }

    fn uuid(&self, name: &str) -> StoreResult<Uuid> {
        Uuid::parse_str(&self.text(name)?).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
    }

    fn sealed(&self, name: &str) -> StoreResult<Option<Sealed>> {
        Ok(self.opt_text(name)?.map(Sealed::from_stored))
    }
}

fn null(name: &str) -> StoreError {
    StoreError::Corrupt(format!("{name}: unexpected NULL"))
}

/// An identity kind as stored (`user` or `client`).
pub(crate) fn kind(text: &str) -> StoreResult<IdentityKind> {
    IdentityKind::parse(text).ok_or_else(|| StoreError::Corrupt(format!("identity kind `{text}`")))
}

/// A user, from columns named `{prefix}id`, `{prefix}issuer`, ….
pub(crate) fn user(row: &impl Columns, prefix: &str) -> StoreResult<User> {
    let name = |column: &str| format!("{prefix}{column}");
    Ok(User {
        id: row.uuid(&name("id"))?,
        issuer: row.text(&name("issuer"))?,
        kind: kind(&row.text(&name("kind"))?)?,
        subject: row.text(&name("subject"))?,
        email: row.opt_text(&name("email"))?,
        name: row.opt_text(&name("name"))?,
        created_at: row.int(&name("created_at"))?,
        updated_at: row.int(&name("updated_at"))?,
    })
}

/// A session joined with its user (columns `u_*`); `looked_up` is the id hash the
/// caller asked for, which tells a current id from a rotated-away one.
pub(crate) fn session(
    row: &impl Columns,
    looked_up: Option<&IdHash>,
) -> StoreResult<SessionRecord> {
    let id_hash = IdHash::from_stored(row.text("id_hash")?);
    let matched = match looked_up {
        Some(h) if *h != id_hash => IdMatch::Previous,
        _ => IdMatch::Current,
    };
    Ok(SessionRecord {
        family_id: row.uuid("family_id")?,
        id_hash,
        previous_id_hash: row.opt_text("previous_id_hash")?.map(IdHash::from_stored),
        previous_valid_until: row.opt_int("previous_valid_until")?,
        previous_handover: row.opt_text("previous_handover")?,
        current_seen: row.flag("current_seen")?,
        matched,
        user: user(row, "u_")?,
        provider_sid: row.opt_text("provider_sid")?,
        created_at: row.int("created_at")?,
        last_seen_at: row.int("last_seen_at")?,
        idle_expires_at: row.int("idle_expires_at")?,
        absolute_expires_at: row.int("absolute_expires_at")?,
        tokens: TokenSet {
            refresh_token: row.sealed("refresh_token")?,
            access_token: row.sealed("access_token")?,
            id_token: row.sealed("id_token")?,
            access_expires_at: row.opt_int("access_expires_at")?,
            refresh_expires_at: row.opt_int("refresh_expires_at")?,
            access_issued_at: row.opt_int("access_issued_at")?,
            granted_scope: row.opt_text("granted_scope")?,
        },
        token_version: row.int("token_version")?,
        user_agent: row.opt_text("user_agent")?,
        claims: row.text("claims")?,
        email_verified: row.flag("email_verified")?,
        provider_id: provider_id(row.opt_text("provider_id")?),
    })
}

/// A login transaction.
pub(crate) fn login_transaction(row: &impl Columns) -> StoreResult<LoginTransaction> {
    Ok(LoginTransaction {
        state_hash: row.text("state_hash")?,
        binding_hash: row.text("binding_hash")?,
        nonce: row.text("nonce")?,
        verifier: Sealed::from_stored(row.text("verifier")?),
        return_to: row.text("return_to")?,
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        provider_id: provider_id(row.opt_text("provider_id")?),
    })
}

/// A row's provider id: absent in rows written before several providers (Redis keeps
/// no default), which were the `default` provider's.
pub(crate) fn provider_id(stored: Option<String>) -> String {
    stored.unwrap_or_else(|| crate::config::DEFAULT_PROVIDER_ID.to_owned())
}
