//! The Redis backend (docs/deployment.md "Redis"): one primary, `redis://` or
//! `rediss://` (Sentinel and Cluster are out of scope). Every write that touches more
//! than one key, or compares before it writes, is one Lua script, so it is atomic; a
//! write that ends or changes a session publishes its change-feed message inside that
//! same script.
//!
//! Data model, every key under `{p}:` (`p` = `store_prefix`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `user:{id}` | hash | a user (never expires) |
//! | `user_by_sub:{sha256}` | string | user id, by (issuer, subject) (never expires) |
//! | `users` | zset, score 0 | user ids in order, for paging (never expires) |
//! | `session:{family}` | hash | every field of a session |
//! | `sid:{id hash}` | string | family, for the current and the previous id hash |
//! | `user_sessions:{user}` | set | families of a user |
//! | `psid:{sha1}` | set | families by (issuer, provider `sid`) |
//! | `sessions` | zset, score = when it ends | every family: listing, purge, revoke all |
//! | `tx:{state hash}` | hash | a login transaction |
//! | `tx_by_binding:{binding}`, `tx_all` | zset, score = created | eviction, oldest first |
//! | `tx_expiry` | zset, score = expires | purge |
//! | `lease:{key}` | hash | holder and deadline |
//! | `replay:{key}` | string | deadline |
//! | `signing_keys` | hash, generation → `kid`, sealed key, created | assertion signing keys (never expire) |
//!
//! Time: every decision compares a deadline stored as a value with the caller's `now`,
//! in Lua, never Redis' clock (the conformance suite runs in 2030). TTLs — the deadline
//! counted from the caller's latest time we know, plus a minute — only collect garbage;
//! index entries whose record expired are skipped and removed lazily. Session ids are
//! stored only as their SHA-256 hex, tokens only sealed.
//!
//! Change feed: channel `{p}:feed`, carried by a connection of its own (RESP3, hence
//! Redis 6 or later, so that it can be named and probed); a drop resets every
//! subscriber and reconnects, forever.

mod connection;
mod fields;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, Script, Value};
use uuid::Uuid;

use super::feed::Tasks;
use super::{
    ChangeFeed, IdentityKind, LoginTransaction, NewSession, SessionRecord, SigningKeyRecord, Store,
    StoreError, StoreResult, TokenSet, TransactionLimits, User, UserProfile, timed,
};
use crate::clock::UnixTime;
use crate::store::Sealed;
use crate::store::id::IdHash;
use connection::deployment_problems;
use fields::{
    Fields, Record, new_session_fields, profile_fields, session_record_fields, session_with_user,
    subject_key, user_fields, value_int, value_list,
};
use scripts::{Args, SCRIPTS};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long Redis may take to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Reconnection attempts of the command connection per failing call (the next call
/// tries again): bounded, so that a store that is down answers 503 instead of hanging.
const RECONNECT_RETRIES: usize = 3;

/// Records handled per script by the batched writes (`purge_expired`, revoke all) and
/// per page by `list_sessions`, so that no single script blocks Redis for long.
const BATCH: u32 = 500;

/// Sessions, users and transactions in one Redis database, shared by every instance.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    /// `redis://host:port/db`: never the password.
    target: Arc<str>,
    feed: ChangeFeed,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://` or `rediss://`) and subscribes to the change feed
    /// of the store named by `prefix` (validated by the configuration).
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<RedisStore> {
        timed(Self::open(url, prefix)).await
    }

    /// Runs `script` with the key prefix as `ARGV[1]`, then `args`.
    async fn run(&self, script: &Script, args: Args) -> StoreResult<Value> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&*self.prefix);
        for a in args.0 {
            invocation.arg(a);
        }
        let mut conn = self.conn.clone();
        invocation
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(store_error)
    }

    /// Runs a script that answers with an integer.
    async fn run_int(&self, script: &Script, args: Args) -> StoreResult<i64> {
        value_int(self.run(script, args).await?)
    }

    /// Runs a batched script (answering `{looked at, removed}`) until it looked at
    /// fewer than a whole batch; each batch under its own timeout.
    async fn run_batches(&self, script: &Script, args: Args) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let answer = timed(async { value_list(self.run(script, args.clone()).await?) }).await?;
            let [seen, removed] = <[Value; 2]>::try_from(answer)
                .map_err(|_| StoreError::Corrupt("a batch answer is not a pair".into()))?;
            total += u64::try_from(value_int(removed)?).unwrap_or(0);
            if value_int(seen)? < i64::from(BATCH) {
                return Ok(total);
            }
        }
    }

    /// Runs one command, timed.
    async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> StoreResult<T> {
        timed(async {
            let mut conn = self.conn.clone();
            cmd.query_async(&mut conn).await.map_err(store_error)
        })
        .await
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }
}

fn store_error(e: RedisError) -> StoreError {
    if e.code() == Some("CORRUPT") {
        return StoreError::Corrupt(e.detail().unwrap_or("a stored value").to_owned());
    }
    if e.is_timeout() {
        return StoreError::Timeout(RESPONSE_TIMEOUT);
    }
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

#[async_trait]
impl Store for RedisStore {
    fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    async fn deployment_problems(&self) -> Vec<String> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(super::STORE_TIMEOUT, deployment_problems(&mut conn))
            .await
            .unwrap_or_else(|_| vec!["Redis did not answer `CONFIG GET` in time".into()])
    }

    async fn ping(&self) -> StoreResult<()> {
        timed(async {
            let mut conn = self.conn.clone();
            redis::cmd("PING")
                .exec_async(&mut conn)
                .await
                .map_err(store_error)
        })
        .await
    }

    async fn upsert_identity(
        &self,
        issuer: &str,
        kind: IdentityKind,
        subject: &str,
        profile: Option<&UserProfile>,
        now: UnixTime,
    ) -> StoreResult<User> {
        timed(async {
            let args = Args::new()
                .with(subject_key(issuer, kind, subject))
                .with(crate::random::new_uuid())
                .with(issuer)
                .with(subject)
                .with(now)
                .with(kind.as_str())
                .fields(profile.map(profile_fields).unwrap_or_default());
            Record::from_value(self.run(&SCRIPTS.upsert_user, args).await?)?.user()
        })
        .await
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        timed(async {
            let mut conn = self.conn.clone();
            let fields: Value = redis::cmd("HGETALL")
                .arg(self.key(&format!("user:{id}")))
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            let record = Record::from_value(fields)?;
            if record.is_empty() {
                return Ok(None);
            }
            record.user().map(Some)
        })
        .await
    }

    async fn list_users(&self, after: Option<Uuid>, limit: u32) -> StoreResult<Vec<User>> {
        timed(async {
            let args = Args::new()
                .with(after.map(|u| u.to_string()).unwrap_or_default())
                .with(limit);
            value_list(self.run(&SCRIPTS.list_users, args).await?)?
                .into_iter()
                .map(|u| Record::from_value(u)?.user())
                .collect()
        })
        .await
    }

    async fn import_user(&self, user: &User) -> StoreResult<bool> {
        timed(async {
            let args = Args::new()
                .with(subject_key(&user.issuer, user.kind, &user.subject))
                .with(user.id)
                .fields(user_fields(user));
            Ok(self.run_int(&SCRIPTS.import_user, args).await? == 1)
        })
        .await
    }

    async fn create_session(&self, s: &NewSession) -> StoreResult<()> {
        timed(async {
            let args = Args::new()
                .with("create")
                .with(s.family_id)
                .with(s.user_id)
                .with(s.id_hash.as_str())
                .with("")
                .fields(new_session_fields(s));
            self.run_int(&SCRIPTS.put_session, args).await?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        timed(async {
            let answer = self
                .run(&SCRIPTS.get_session, Args::new().with(id_hash.as_str()))
                .await?;
            if answer == Value::Nil {
                return Ok(None);
            }
            let record = session_with_user(answer, Some(id_hash))?;
            // The script matched the hash already; a record that does not name it is
            // never handed out.
            let names_it =
                record.id_hash == *id_hash || record.previous_id_hash.as_ref() == Some(id_hash);
            Ok(names_it.then_some(record))
        })
        .await
    }

    async fn touch_session(
        &self,
        family_id: Uuid,
        last_seen_at: UnixTime,
        idle_expires_at: UnixTime,
        seen: Option<&IdHash>,
    ) -> StoreResult<bool> {
        timed(async {
            let args = Args::new()
                .with(family_id)
                .with(last_seen_at)
                .with(idle_expires_at)
                .with(seen.map(IdHash::as_str).unwrap_or_default());
            Ok(self.run_int(&SCRIPTS.touch_session, args).await? == 1)
        })
        .await
    }

    async fn update_tokens(
        &self,
        family_id: Uuid,
        expected_version: i64,
        tokens: &TokenSet,
    ) -> StoreResult<bool> {
        timed(async {
            let mut fields = Fields::default();
            fields.tokens(tokens);
            let args = Args::new()
                .with(family_id)
                .with(expected_version)
                .fields(fields);
            Ok(self.run_int(&SCRIPTS.update_tokens, args).await? == 1)
        })
        .await
    }

    async fn rotate_session_id(
        &self,
        family_id: Uuid,
        expected_version: i64,
        new_id_hash: &IdHash,
        previous_valid_until: UnixTime,
        handover: &str,
        tokens: &TokenSet,
        keep_previous: bool,
    ) -> StoreResult<bool> {
        timed(async {
            let mut fields = Fields::default();
            fields.tokens(tokens);
            let args = Args::new()
                .with(family_id)
                .with(expected_version)
                .with(new_id_hash.as_str())
                .with(previous_valid_until)
                .with(handover)
                .with(if keep_previous { "1" } else { "0" })
                .fields(fields);
            Ok(self.run_int(&SCRIPTS.rotate_session_id, args).await? == 1)
        })
        .await
    }

    async fn update_claims(
        &self,
        family_id: Uuid,
        claims: &str,
        email_verified: bool,
    ) -> StoreResult<bool> {
        timed(async {
            let args = Args::new()
                .with(family_id)
                .with(claims)
                .with(if email_verified { "1" } else { "0" });
            Ok(self.run_int(&SCRIPTS.update_claims, args).await? == 1)
        })
        .await
    }

    async fn import_session(&self, s: &SessionRecord) -> StoreResult<bool> {
        timed(async {
            let args = Args::new()
                .with("import")
                .with(s.family_id)
                .with(s.user.id)
                .with(s.id_hash.as_str())
                .with(
                    s.previous_id_hash
                        .as_ref()
                        .map(IdHash::as_str)
                        .unwrap_or_default(),
                )
                .fields(session_record_fields(s));
            Ok(self.run_int(&SCRIPTS.put_session, args).await? == 1)
        })
        .await
    }

    async fn delete_session(&self, family_id: Uuid) -> StoreResult<bool> {
        timed(async {
            let args = Args::new().with(family_id);
            Ok(self.run_int(&SCRIPTS.delete_session, args).await? == 1)
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        timed(async {
            let n = self
                .run_int(&SCRIPTS.delete_user_sessions, Args::new().with(user_id))
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn delete_sessions_by_provider_sid(&self, issuer: &str, sid: &str) -> StoreResult<u64> {
        timed(async {
            let args = Args::new().with(issuer).with(sid);
            let n = self
                .run_int(&SCRIPTS.delete_sessions_by_provider_sid, args)
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn delete_sessions_by_subject(&self, issuer: &str, subject: &str) -> StoreResult<u64> {
        timed(async {
            let args = Args::new()
                .with(subject_key(issuer, IdentityKind::User, subject))
                .with(issuer)
                .with(subject);
            let n = self
                .run_int(&SCRIPTS.delete_sessions_by_subject, args)
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn delete_all_sessions(&self) -> StoreResult<u64> {
        self.run_batches(&SCRIPTS.delete_all_sessions, Args::new().with(BATCH))
            .await
    }

    async fn list_sessions(
        &self,
        user_id: Option<Uuid>,
        now: UnixTime,
    ) -> StoreResult<Vec<SessionRecord>> {
        timed(async {
            let mut found = Vec::new();
            let mut seen = HashSet::new();
            let mut offset = 0u64;
            loop {
                let args = Args::new()
                    .with(now)
                    .with(offset)
                    .with(BATCH)
                    .with(user_id.map(|u| u.to_string()).unwrap_or_default());
                let mut answer = value_list(self.run(&SCRIPTS.list_sessions, args).await?)?;
                if answer.is_empty() {
                    return Err(StoreError::Corrupt("an empty listing answer".into()));
                }
                let looked_at = value_int(answer.remove(0))?;
                for pair in answer {
                    let record = session_with_user(pair, None)?;
                    // Live at the caller's `now`: the decision, whatever the index said.
                    if record.expires_at() > now && seen.insert(record.family_id) {
                        found.push(record);
                    }
                }
                // One user's sessions come in one answer; all sessions in pages (a page
                // may shift under concurrent writes: a listing, not a snapshot).
                if user_id.is_some() || looked_at < i64::from(BATCH) {
                    break;
                }
                offset += u64::from(BATCH);
            }
            found.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then(a.family_id.cmp(&b.family_id))
            });
            Ok(found)
        })
        .await
    }

    async fn put_transaction(
        &self,
        tx: &LoginTransaction,
        limits: TransactionLimits,
    ) -> StoreResult<bool> {
        timed(async {
            let mut fields = Fields::default();
            fields
                .put("state_hash", &tx.state_hash)
                .put("binding_hash", &tx.binding_hash)
                .put("nonce", &tx.nonce)
                .put("verifier", tx.verifier.as_stored())
                .put("return_to", &tx.return_to)
                .put("created_at", tx.created_at)
                .put("expires_at", tx.expires_at)
                .put("provider_id", &tx.provider_id);
            let args = Args::new()
                .with(&tx.state_hash)
                .with(&tx.binding_hash)
                .with(tx.created_at)
                .with(tx.expires_at)
                .with(limits.per_browser)
                .with(limits.total)
                .fields(fields);
            Ok(self.run_int(&SCRIPTS.put_transaction, args).await? == 1)
        })
        .await
    }

    async fn take_transaction(&self, state_hash: &str) -> StoreResult<Option<LoginTransaction>> {
        timed(async {
            let answer = self
                .run(&SCRIPTS.take_transaction, Args::new().with(state_hash))
                .await?;
            let record = Record::from_value(answer)?;
            if record.is_empty() {
                return Ok(None);
            }
            record.transaction().map(Some)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        timed(async {
            let args = Args::new().with(key).with(holder).with(now).with(until);
            Ok(self.run_int(&SCRIPTS.acquire_lease, args).await? == 1)
        })
        .await
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        timed(async {
            let args = Args::new().with(key).with(holder).with(now).with(until);
            Ok(self.run_int(&SCRIPTS.renew_lease, args).await? == 1)
        })
        .await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> StoreResult<()> {
        timed(async {
            let args = Args::new().with(key).with(holder);
            self.run_int(&SCRIPTS.release_lease, args).await?;
            Ok(())
        })
        .await
    }

    async fn remember_once(&self, key: &str, now: UnixTime, until: UnixTime) -> StoreResult<bool> {
        timed(async {
            let args = Args::new().with(key).with(now).with(until);
            Ok(self.run_int(&SCRIPTS.remember_once, args).await? == 1)
        })
        .await
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        let value = serde_json::json!({
            "kid": key.kid,
            "sealed_key": key.sealed_key.as_stored(),
            "created_at": key.created_at,
        })
        .to_string();
        let mut cmd = redis::cmd("HSETNX");
        cmd.arg(self.key("signing_keys"))
            .arg(key.generation)
            .arg(value);
        Ok(self.command::<i64>(&cmd).await? == 1)
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        timed(async {
            let mut conn = self.conn.clone();
            let all: HashMap<i64, String> = redis::cmd("HGETALL")
                .arg(self.key("signing_keys"))
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            let mut keys = all
                .into_iter()
                .map(|(generation, value)| {
                    let v: serde_json::Value = serde_json::from_str(&value)
                        .map_err(|_| StoreError::Corrupt("a signing key is not JSON".into()))?;
                    let text = |name: &str| {
                        v[name].as_str().map(str::to_owned).ok_or_else(|| {
                            StoreError::Corrupt(format!("a signing key has no `{name}`"))
                        })
                    };
                    Ok(SigningKeyRecord {
                        generation,
                        kid: text("kid")?,
                        sealed_key: Sealed::from_stored(text("sealed_key")?),
                        created_at: v["created_at"].as_i64().ok_or_else(|| {
                            StoreError::Corrupt("a signing key has no `created_at`".into())
                        })?,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()?;
            keys.sort_by_key(|k| k.generation);
            Ok(keys)
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.command(redis::cmd("HGET").arg(self.key("settings")).arg(key))
            .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.key("settings")).arg(key).arg(value);
        self.command::<i64>(&cmd).await.map(drop)
    }

    async fn add_setting(&self, key: &str, value: &str) -> StoreResult<bool> {
        let mut cmd = redis::cmd("HSETNX");
        cmd.arg(self.key("settings")).arg(key).arg(value);
        Ok(self.command::<i64>(&cmd).await? == 1)
    }

    async fn delete_setting(&self, key: &str) -> StoreResult<bool> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.key("settings")).arg(key);
        Ok(self.command::<i64>(&cmd).await? == 1)
    }

    async fn delete_signing_key(&self, generation: i64) -> StoreResult<bool> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.key("signing_keys")).arg(generation);
        Ok(self.command::<i64>(&cmd).await? == 1)
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(&format!("replay:{key}")));
        self.command::<i64>(&cmd).await.map(drop)
    }

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<u64> {
        // Leases and replay entries have no index: their TTLs collect them, and every
        // decision about them compares their deadline with `now` anyway.
        let args = Args::new().with(now).with(BATCH);
        let sessions = self
            .run_batches(&SCRIPTS.purge_sessions, args.clone())
            .await?;
        let transactions = self.run_batches(&SCRIPTS.purge_transactions, args).await?;
        Ok(sessions + transactions)
    }
}

#[cfg(test)]
mod tests;
