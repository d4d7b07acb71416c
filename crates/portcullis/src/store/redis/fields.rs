//! Records as Redis hashes: the fields a write sets or removes, and the fields a
//! script answers read back into users, sessions and transactions.

use std::collections::HashMap;

use redis::Value;
use uuid::Uuid;

use crate::store::id::IdHash;
use crate::store::{
    IdMatch, IdentityKind, LoginTransaction, NewSession, Sealed, SessionRecord, StoreError,
    StoreResult, TokenSet, User, UserProfile,
};

/// Hash fields to write: present values are set, absent ones removed (an absent field
/// reads back as `None`).
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub(super) set: Vec<(&'static str, String)>,
    pub(super) unset: Vec<&'static str>,
}

impl Fields {
    pub(super) fn put(&mut self, name: &'static str, value: impl ToString) -> &mut Self {
        self.set.push((name, value.to_string()));
        self
    }

    fn maybe<T: ToString>(&mut self, name: &'static str, value: Option<T>) -> &mut Self {
        match value {
            Some(v) => self.put(name, v),
            None => {
                self.unset.push(name);
                self
            }
        }
    }

    fn flag(&mut self, name: &'static str, value: bool) -> &mut Self {
        self.put(name, if value { "1" } else { "0" })
    }

    pub(super) fn tokens(&mut self, t: &TokenSet) -> &mut Self {
        self.maybe(
            "refresh_token",
            t.refresh_token.as_ref().map(Sealed::as_stored),
        )
        .maybe(
            "access_token",
            t.access_token.as_ref().map(Sealed::as_stored),
        )
        .maybe("id_token", t.id_token.as_ref().map(Sealed::as_stored))
        .maybe("access_expires_at", t.access_expires_at)
        .maybe("refresh_expires_at", t.refresh_expires_at)
        .maybe("access_issued_at", t.access_issued_at)
        .maybe("granted_scope", t.granted_scope.as_deref())
    }
}

pub(super) fn profile_fields(profile: &UserProfile) -> Fields {
    let mut f = Fields::default();
    f.maybe("email", profile.email.as_deref())
        .maybe("name", profile.name.as_deref());
    f
}

pub(super) fn user_fields(u: &User) -> Fields {
    let mut f = Fields::default();
    f.put("id", u.id)
        .put("issuer", &u.issuer)
        .put("kind", u.kind.as_str())
        .put("subject", &u.subject)
        .maybe("email", u.email.as_deref())
        .maybe("name", u.name.as_deref())
        .put("created_at", u.created_at)
        .put("updated_at", u.updated_at);
    f
}

pub(super) fn new_session_fields(s: &NewSession) -> Fields {
    let mut f = Fields::default();
    f.put("family_id", s.family_id)
        .put("user_id", s.user_id)
        .put("id_hash", s.id_hash.as_str())
        .flag("current_seen", true)
        .maybe("provider_sid", s.provider_sid.as_deref())
        .put("created_at", s.created_at)
        .put("last_seen_at", s.created_at)
        .put("idle_expires_at", s.idle_expires_at)
        .put("absolute_expires_at", s.absolute_expires_at)
        .tokens(&s.tokens)
        .put("token_version", 0)
        .maybe("user_agent", s.user_agent.as_deref())
        .put("claims", &s.claims)
        .flag("email_verified", s.email_verified)
        .put("provider_id", &s.provider_id);
    f
}

pub(super) fn session_record_fields(s: &SessionRecord) -> Fields {
    let mut f = Fields::default();
    f.put("family_id", s.family_id)
        .put("user_id", s.user.id)
        .put("id_hash", s.id_hash.as_str())
        .maybe(
            "previous_id_hash",
            s.previous_id_hash.as_ref().map(IdHash::as_str),
        )
        .maybe("previous_valid_until", s.previous_valid_until)
        .maybe("previous_handover", s.previous_handover.as_deref())
        .flag("current_seen", s.current_seen)
        .maybe("provider_sid", s.provider_sid.as_deref())
        .put("created_at", s.created_at)
        .put("last_seen_at", s.last_seen_at)
        .put("idle_expires_at", s.idle_expires_at)
        .put("absolute_expires_at", s.absolute_expires_at)
        .tokens(&s.tokens)
        .put("token_version", s.token_version)
        .maybe("user_agent", s.user_agent.as_deref())
        .put("claims", &s.claims)
        .flag("email_verified", s.email_verified)
        .put("provider_id", &s.provider_id);
    f
}

/// The `user_by_sub` key of (issuer, kind, subject). The issuer is length-prefixed, so
/// no other pair hashes the same input; a client's input starts with `client\n`, which
/// no user's (it starts with a digit) does, so users' keys are the ones made before
/// kinds were kept. The scripts also check the identity they find.
pub(super) fn subject_key(issuer: &str, kind: IdentityKind, subject: &str) -> String {
    let user = format!("{}:{issuer}\n{subject}", issuer.len());
    let input = match kind {
        IdentityKind::User => user,
        IdentityKind::Client => format!("client\n{user}"),
    };
    crate::random::sha256_hex(input.as_bytes())
}

// Values coming back. Nothing read from Redis is trusted to have the expected shape:
// anything else is `StoreError::Corrupt`, never a panic.

fn value_text(v: Value) -> StoreResult<String> {
    match v {
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map_err(|_| StoreError::Corrupt("a stored value is not UTF-8".into())),
        Value::SimpleString(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(StoreError::Corrupt(format!(
            "expected text, got {}",
            kind_of(&other)
        ))),
    }
}

pub(super) fn value_int(v: Value) -> StoreResult<i64> {
    match v {
        Value::Int(i) => Ok(i),
        other => value_text(other)?
            .parse()
            .map_err(|_| StoreError::Corrupt("expected an integer".into())),
    }
}

/// An array answer; nil is an empty one.
pub(super) fn value_list(v: Value) -> StoreResult<Vec<Value>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(StoreError::Corrupt(format!(
            "expected a list, got {}",
            kind_of(&other)
        ))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        _ => "another type",
    }
}

/// A hash read back from Redis.
#[derive(Debug)]
pub(super) struct Record(HashMap<String, String>);

impl Record {
    /// From `HGETALL`'s flat list of fields and values (or a RESP3 map).
    pub(super) fn from_value(v: Value) -> StoreResult<Self> {
        let mut fields = HashMap::new();
        if let Value::Map(pairs) = v {
            for (k, v) in pairs {
                fields.insert(value_text(k)?, value_text(v)?);
            }
            return Ok(Self(fields));
        }
        let mut items = value_list(v)?.into_iter();
        while let Some(k) = items.next() {
            let v = items
                .next()
                .ok_or_else(|| StoreError::Corrupt("a hash with an odd field list".into()))?;
            fields.insert(value_text(k)?, value_text(v)?);
        }
        Ok(Self(fields))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn text(&self, name: &str) -> StoreResult<String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("{name} is missing")))
    }

    fn opt_text(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn int(&self, name: &str) -> StoreResult<i64> {
        self.opt_int(name)?
            .ok_or_else(|| StoreError::Corrupt(format!("{name} is missing")))
    }

    fn opt_int(&self, name: &str) -> StoreResult<Option<i64>> {
        self.0
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| StoreError::Corrupt(format!("{name} is not an integer")))
            })
            .transpose()
    }

    fn uuid(&self, name: &str) -> StoreResult<Uuid> {
        Uuid::parse_str(&self.text(name)?)
            .map_err(|_| StoreError::Corrupt(format!("{name} is not a UUID")))
    }

    fn flag(&self, name: &str) -> StoreResult<bool> {
        match self.0.get(name).map(String::as_str) {
            Some("1") => Ok(true),
            Some("0") => Ok(false),
            _ => Err(StoreError::Corrupt(format!("{name} is not 0 or 1"))),
        }
    }

    pub(super) fn sealed(&self, name: &str) -> Option<Sealed> {
        self.opt_text(name).map(Sealed::from_stored)
    }

    pub(super) fn user(&self) -> StoreResult<User> {
        Ok(User {
            id: self.uuid("id")?,
            issuer: self.text("issuer")?,
            // Identities from before kinds were kept are users.
            kind: match self.opt_text("kind") {
                None => IdentityKind::User,
                Some(k) => crate::store::rows::kind(&k)?,
            },
            subject: self.text("subject")?,
            email: self.opt_text("email"),
            name: self.opt_text("name"),
            created_at: self.int("created_at")?,
            updated_at: self.int("updated_at")?,
        })
    }

    /// The session with its `user`; `looked_up` is the id hash it was found by.
    pub(super) fn session(
        &self,
        user: User,
        looked_up: Option<&IdHash>,
    ) -> StoreResult<SessionRecord> {
        let id_hash = IdHash::from_stored(self.text("id_hash")?);
        let matched = match looked_up {
            Some(h) if *h != id_hash => IdMatch::Previous,
            _ => IdMatch::Current,
        };
        if self.uuid("user_id")? != user.id {
            return Err(StoreError::Corrupt(
                "a session's user does not match".into(),
            ));
        }
        Ok(SessionRecord {
            family_id: self.uuid("family_id")?,
            id_hash,
            previous_id_hash: self.opt_text("previous_id_hash").map(IdHash::from_stored),
            previous_valid_until: self.opt_int("previous_valid_until")?,
            previous_handover: self.opt_text("previous_handover"),
            current_seen: self.flag("current_seen")?,
            matched,
            user,
            provider_sid: self.opt_text("provider_sid"),
            created_at: self.int("created_at")?,
            last_seen_at: self.int("last_seen_at")?,
            idle_expires_at: self.int("idle_expires_at")?,
            absolute_expires_at: self.int("absolute_expires_at")?,
            tokens: TokenSet {
                refresh_token: self.sealed("refresh_token"),
                access_token: self.sealed("access_token"),
                id_token: self.sealed("id_token"),
                access_expires_at: self.opt_int("access_expires_at")?,
                refresh_expires_at: self.opt_int("refresh_expires_at")?,
                access_issued_at: self.opt_int("access_issued_at")?,
                granted_scope: self.opt_text("granted_scope"),
            },
            token_version: self.int("token_version")?,
            user_agent: self.opt_text("user_agent"),
            claims: self.text("claims")?,
            email_verified: self.flag("email_verified")?,
            provider_id: crate::store::rows::provider_id(self.opt_text("provider_id")),
        })
    }

    pub(super) fn transaction(&self) -> StoreResult<LoginTransaction> {
        Ok(LoginTransaction {
            state_hash: self.text("state_hash")?,
            binding_hash: self.text("binding_hash")?,
            nonce: self.text("nonce")?,
            verifier: Sealed::from_stored(self.text("verifier")?),
            return_to: self.text("return_to")?,
            created_at: self.int("created_at")?,
            expires_at: self.int("expires_at")?,
            provider_id: crate::store::rows::provider_id(self.opt_text("provider_id")),
        })
    }
}

/// A `{session fields, user fields}` pair as the scripts answer it.
pub(super) fn session_with_user(
    v: Value,
    looked_up: Option<&IdHash>,
) -> StoreResult<SessionRecord> {
    let [session, user] = <[Value; 2]>::try_from(value_list(v)?)
        .map_err(|_| StoreError::Corrupt("a session answer is not a pair".into()))?;
    let user = Record::from_value(user)?;
    if user.is_empty() {
        return Err(StoreError::Corrupt("a session's user is missing".into()));
    }
    Record::from_value(session)?.session(user.user()?, looked_up)
}
