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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, PushInfo, PushKind, RedisError, Script, Value,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use uuid::Uuid;

use super::feed::{HEARTBEAT_EVERY, Tasks};
use super::{
    ChangeFeed, FeedEvent, IdMatch, LoginTransaction, NewSession, SessionRecord, SigningKeyRecord,
    Store, StoreError, StoreResult, TokenSet, TransactionLimits, User, UserProfile, timed,
};
use crate::clock::UnixTime;
use crate::store::Sealed;
use crate::store::id::IdHash;

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

/// Back-off between attempts to re-establish the change-feed connection.
const FEED_RETRY_MIN: Duration = Duration::from_millis(100);
const FEED_RETRY_MAX: Duration = Duration::from_secs(5);

/// How often the feed connection is probed with `PING`, so that a connection that died
/// silently (no FIN) is noticed and replaced.
const FEED_PROBE_EVERY: Duration = Duration::from_secs(1);

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

    async fn open(url: &str, prefix: &str) -> StoreResult<RedisStore> {
        // Part of every key and of the channel name: checked here too, whoever calls.
        if !crate::config::is_valid_store_prefix(prefix) {
            return Err(StoreError::Unavailable("invalid store prefix".into()));
        }
        // The URL may hold a password: it never goes into an error message.
        let info = url
            .into_connection_info()
            .map_err(|_| StoreError::Unavailable("the Redis URL is not valid".into()))?;
        let target = describe(&info);
        let client = redis::Client::open(info.clone()).map_err(store_error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(Duration::from_secs(1));
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(store_error)?;
        // Loaded now, so that a script that does not compile fails at start, not at its
        // first use, and the first lookups need no extra round trip.
        for script in SCRIPTS.all() {
            script.load_async(&mut conn).await.map_err(store_error)?;
        }
        warn_about_deployment(&mut conn, &target).await;

        let feed = ChangeFeed::new();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let link = FeedLink {
            client: redis::Client::open(info.set_redis_settings(resp3)).map_err(store_error)?,
            channel: format!("{prefix}:feed"),
            name: client_name(prefix, feed.origin()),
            feed: feed.clone(),
        };
        // Subscribed before `connect` returns: a subscriber never misses a write made
        // after it.
        let subscribed = link.subscribe().await.map_err(store_error)?;
        let tasks = Arc::new(Tasks::default());
        tasks.add(tokio::spawn(link.carry_forever(subscribed)).abort_handle());
        tasks.add(
            tokio::spawn(send_heartbeats(
                conn.clone(),
                format!("{prefix}:feed"),
                feed.clone(),
            ))
            .abort_handle(),
        );
        Ok(RedisStore {
            conn,
            prefix: prefix.into(),
            target: target.into(),
            feed,
            _tasks: tasks,
        })
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

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }
}

/// The deployment rules of docs/deployment.md ("Redis"): an evicting `maxmemory-policy`
/// signs users out at random under memory pressure, and without persistence a restart
/// signs everyone out. Managed services that refuse `CONFIG GET` are not judged.
async fn deployment_problems(conn: &mut ConnectionManager) -> Vec<String> {
    async fn config(conn: &mut ConnectionManager, name: &str) -> Option<String> {
        let answer: HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(conn)
            .await
            .ok()?;
        answer.get(name).cloned()
    }
    let mut problems = Vec::new();
    if let Some(policy) = config(conn, "maxmemory-policy").await
        && policy != "noeviction"
    {
        problems.push(format!(
            "Redis may evict keys under memory pressure (maxmemory-policy {policy}), which signs users out at random; set `maxmemory-policy noeviction`"
        ));
    }
    let aof = config(conn, "appendonly").await;
    let rdb = config(conn, "save").await;
    if let (Some(aof), Some(rdb)) = (aof, rdb)
        && aof != "yes"
        && rdb.trim().is_empty()
    {
        problems.push(
            "Redis keeps nothing on disk (no AOF, no RDB snapshots): a Redis restart signs everyone out; set `appendonly yes`".into(),
        );
    }
    problems
}

/// Says [`deployment_problems`] once at start.
async fn warn_about_deployment(conn: &mut ConnectionManager, target: &str) {
    for problem in deployment_problems(conn).await {
        tracing::warn!(redis = target, "{problem}");
    }
}

/// Where a store points, for `Debug` and logs: scheme, host, port and database only.
fn describe(info: &ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
        _ => format!("redis (database {db})"),
    }
}

/// The feed connection's `CLIENT SETNAME`: the store prefix and this instance's origin,
/// so that an operator (and a test) can tell the connections apart. Names cannot hold
/// spaces or control characters.
fn client_name(prefix: &str, origin: &str) -> String {
    format!("{prefix}:feed:{origin}")
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
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

// The change feed.

/// The dedicated connection carrying the change feed. RESP3 push messages rather than a
/// RESP2 pub/sub connection, so that it can be named and probed like any other.
struct FeedLink {
    client: redis::Client,
    channel: String,
    name: String,
    feed: ChangeFeed,
}

type Subscribed = (MultiplexedConnection, UnboundedReceiver<PushInfo>);

impl FeedLink {
    async fn subscribe(&self) -> redis::RedisResult<Subscribed> {
        let attempt = async {
            let (sender, receiver) = unbounded_channel();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_push_sender(sender);
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&self.name)
                .exec_async(&mut conn)
                .await?;
            conn.subscribe(&self.channel).await?;
            Ok((conn, receiver))
        };
        match tokio::time::timeout(super::STORE_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::from((
                ErrorKind::Io,
                "the change-feed subscription timed out",
            ))),
        }
    }

    /// Delivers messages while the connection lives; when it drops, resets every
    /// subscriber and reconnects with a bounded back-off, forever.
    async fn carry_forever(self, first: Subscribed) {
        let mut current = Some(first);
        let mut retry = FEED_RETRY_MIN;
        loop {
            let subscribed = match current.take() {
                Some(s) => s,
                None => match self.subscribe().await {
                    Ok(s) => {
                        // Whatever was published while we were away is lost.
                        self.feed.connection_lost();
                        tracing::info!("the Redis change feed is connected again");
                        retry = FEED_RETRY_MIN;
                        s
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the Redis change feed cannot reconnect yet");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(FEED_RETRY_MAX);
                        continue;
                    }
                },
            };
            self.deliver_until_lost(subscribed).await;
            tracing::warn!("the Redis change-feed connection dropped; caches reset");
            self.feed.connection_lost();
            tokio::time::sleep(retry).await;
        }
    }

    async fn deliver_until_lost(&self, (mut conn, mut pushes): Subscribed) {
        let mut probe = tokio::time::interval(FEED_PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.tick().await;
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    None => return,
                    Some(p) if p.kind == PushKind::Disconnection => return,
                    Some(p) => self.deliver(p),
                },
                _ = probe.tick() => {
                    let ping = redis::cmd("PING");
                    let pong = ping.query_async::<String>(&mut conn);
                    if !matches!(tokio::time::timeout(RESPONSE_TIMEOUT, pong).await, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }

    fn deliver(&self, push: PushInfo) {
        let Some(message) = redis::Msg::from_push_info(push) else {
            return; // subscribe confirmations and the like
        };
        if message.get_channel_name() != self.channel {
            return;
        }
        match message.get_payload::<String>() {
            Ok(text) => self.feed.deliver_text(&text),
            Err(_) => {
                tracing::warn!("an unreadable message arrived on the change feed; caches reset");
                self.feed.publish(FeedEvent::Reset);
            }
        }
    }
}

/// Sends this instance's heartbeat through the feed every [`HEARTBEAT_EVERY`], so that
/// [`ChangeFeed::is_live`] measures the path messages take.
async fn send_heartbeats(mut conn: ConnectionManager, channel: String, feed: ChangeFeed) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = timed(async {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(feed.heartbeat_text())
                .exec_async(&mut conn)
                .await
                .map_err(store_error)
        })
        .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "a change-feed heartbeat was not sent");
        }
    }
}

// The Lua scripts, one file each under `store/redis/`. ARGV[1] is always the key prefix; keys are derived in the scripts
// (a single primary: keys need not be declared for cluster routing). Each script reads
// and checks everything before its first write, because Redis does not roll a failed
// script back.

/// Helpers shared by every script.
const PRELUDE: &str = include_str!("redis/prelude.lua");

/// ARGV: prefix, subject key, new id, issuer, subject, now, profile fields. Returns the
/// user's fields.
const UPSERT_USER: &str = include_str!("redis/upsert_user.lua");

/// ARGV: prefix, subject key, id, fields. Returns 0 when the id or (issuer, subject)
/// exists.
const IMPORT_USER: &str = include_str!("redis/import_user.lua");

/// ARGV: prefix, after ('' for the start), limit. Returns the users' fields.
const LIST_USERS: &str = include_str!("redis/list_users.lua");

/// ARGV: prefix, mode ('create' or 'import'), family, user id, id hash, previous id
/// hash or '', fields. Import answers 0 when the family exists; create fails.
const PUT_SESSION: &str = include_str!("redis/put_session.lua");

/// ARGV: prefix, id hash. Returns {session fields, user fields}, or nil.
const GET_SESSION: &str = include_str!("redis/get_session.lua");

/// ARGV: prefix, family, last seen, idle deadline, the id hash presented or ''.
const TOUCH_SESSION: &str = include_str!("redis/touch_session.lua");

/// ARGV: prefix, family, expected version, token fields.
const UPDATE_TOKENS: &str = include_str!("redis/update_tokens.lua");

/// ARGV: prefix, family, expected version, new id hash, previous valid until, handover,
/// keep the previous id ('1' or '0'), token fields.
const ROTATE_SESSION_ID: &str = include_str!("redis/rotate_session_id.lua");

/// ARGV: prefix, family, claims, email verified ('1' or '0').
const UPDATE_CLAIMS: &str = include_str!("redis/update_claims.lua");

/// ARGV: prefix, family.
const DELETE_SESSION: &str = include_str!("redis/delete_session.lua");

/// ARGV: prefix, user id.
const DELETE_USER_SESSIONS: &str = include_str!("redis/delete_user_sessions.lua");

/// ARGV: prefix, subject key, issuer, subject.
const DELETE_SESSIONS_BY_SUBJECT: &str = include_str!("redis/delete_sessions_by_subject.lua");

/// ARGV: prefix, issuer, provider sid.
const DELETE_SESSIONS_BY_PROVIDER_SID: &str =
    include_str!("redis/delete_sessions_by_provider_sid.lua");

/// ARGV: prefix, batch size. Returns {families looked at, sessions removed}; announces
/// one reset (`a`) per batch that removed any.
const DELETE_ALL_SESSIONS: &str = include_str!("redis/delete_all_sessions.lua");

/// ARGV: prefix, now, offset, count, user id or ''. Returns {families looked at,
/// {session fields, user fields}...}; the caller decides which are live at `now`.
const LIST_SESSIONS: &str = include_str!("redis/list_sessions.lua");

/// ARGV: prefix, now, batch size. Removes the sessions that ended by `now`, silently
/// (expiry is decided from deadlines, not announced).
const PURGE_SESSIONS: &str = include_str!("redis/purge_sessions.lua");

/// ARGV: prefix, state hash, binding hash, created at, expires at, per-browser limit,
/// total limit, fields.
const PUT_TRANSACTION: &str = include_str!("redis/put_transaction.lua");

/// ARGV: prefix, state hash. Returns the transaction's fields (read and removed as
/// one), or nil.
const TAKE_TRANSACTION: &str = include_str!("redis/take_transaction.lua");

/// ARGV: prefix, now, batch size.
const PURGE_TRANSACTIONS: &str = include_str!("redis/purge_transactions.lua");

/// ARGV: prefix, key, holder, now, until.
const ACQUIRE_LEASE: &str = include_str!("redis/acquire_lease.lua");

/// ARGV: prefix, key, holder, now, until. Compare-and-extend.
const RENEW_LEASE: &str = include_str!("redis/renew_lease.lua");

/// ARGV: prefix, key, holder. Compare-and-delete.
const RELEASE_LEASE: &str = include_str!("redis/release_lease.lua");

/// ARGV: prefix, key, now, until.
const REMEMBER_ONCE: &str = include_str!("redis/remember_once.lua");

struct Scripts {
    upsert_user: Script,
    import_user: Script,
    list_users: Script,
    put_session: Script,
    get_session: Script,
    touch_session: Script,
    update_tokens: Script,
    rotate_session_id: Script,
    update_claims: Script,
    delete_session: Script,
    delete_user_sessions: Script,
    delete_sessions_by_subject: Script,
    delete_sessions_by_provider_sid: Script,
    delete_all_sessions: Script,
    list_sessions: Script,
    purge_sessions: Script,
    put_transaction: Script,
    take_transaction: Script,
    purge_transactions: Script,
    acquire_lease: Script,
    renew_lease: Script,
    release_lease: Script,
    remember_once: Script,
}

impl Scripts {
    fn all(&self) -> [&Script; 23] {
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

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
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
struct Args(Vec<String>);

impl Args {
    fn new() -> Self {
        Self::default()
    }

    fn with(mut self, value: impl ToString) -> Self {
        self.0.push(value.to_string());
        self
    }

    /// Appends `fields` in the shape the Lua `apply` reads.
    fn fields(mut self, fields: Fields) -> Self {
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

/// Hash fields to write: present values are set, absent ones removed (an absent field
/// reads back as `None`).
#[derive(Debug, Default)]
struct Fields {
    set: Vec<(&'static str, String)>,
    unset: Vec<&'static str>,
}

impl Fields {
    fn put(&mut self, name: &'static str, value: impl ToString) -> &mut Self {
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

    fn tokens(&mut self, t: &TokenSet) -> &mut Self {
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
    }
}

fn profile_fields(profile: &UserProfile) -> Fields {
    let mut f = Fields::default();
    f.maybe("email", profile.email.as_deref())
        .maybe("name", profile.name.as_deref());
    f
}

fn user_fields(u: &User) -> Fields {
    let mut f = Fields::default();
    f.put("id", u.id)
        .put("issuer", &u.issuer)
        .put("subject", &u.subject)
        .maybe("email", u.email.as_deref())
        .maybe("name", u.name.as_deref())
        .put("created_at", u.created_at)
        .put("updated_at", u.updated_at);
    f
}

fn new_session_fields(s: &NewSession) -> Fields {
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
        .flag("email_verified", s.email_verified);
    f
}

fn session_record_fields(s: &SessionRecord) -> Fields {
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
        .flag("email_verified", s.email_verified);
    f
}

/// The `user_by_sub` key of (issuer, subject). The issuer is length-prefixed, so no
/// other pair hashes the same input; the scripts also check the user they find.
fn subject_key(issuer: &str, subject: &str) -> String {
    crate::random::sha256_hex(format!("{}:{issuer}\n{subject}", issuer.len()).as_bytes())
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

fn value_int(v: Value) -> StoreResult<i64> {
    match v {
        Value::Int(i) => Ok(i),
        other => value_text(other)?
            .parse()
            .map_err(|_| StoreError::Corrupt("expected an integer".into())),
    }
}

/// An array answer; nil is an empty one.
fn value_list(v: Value) -> StoreResult<Vec<Value>> {
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
struct Record(HashMap<String, String>);

impl Record {
    /// From `HGETALL`'s flat list of fields and values (or a RESP3 map).
    fn from_value(v: Value) -> StoreResult<Self> {
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

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn text(&self, name: &str) -> StoreResult<String> {
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

    fn sealed(&self, name: &str) -> Option<Sealed> {
        self.opt_text(name).map(Sealed::from_stored)
    }

    fn user(&self) -> StoreResult<User> {
        Ok(User {
            id: self.uuid("id")?,
            issuer: self.text("issuer")?,
            subject: self.text("subject")?,
            email: self.opt_text("email"),
            name: self.opt_text("name"),
            created_at: self.int("created_at")?,
            updated_at: self.int("updated_at")?,
        })
    }

    /// The session with its `user`; `looked_up` is the id hash it was found by.
    fn session(&self, user: User, looked_up: Option<&IdHash>) -> StoreResult<SessionRecord> {
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
            },
            token_version: self.int("token_version")?,
            user_agent: self.opt_text("user_agent"),
            claims: self.text("claims")?,
            email_verified: self.flag("email_verified")?,
        })
    }

    fn transaction(&self) -> StoreResult<LoginTransaction> {
        Ok(LoginTransaction {
            state_hash: self.text("state_hash")?,
            binding_hash: self.text("binding_hash")?,
            nonce: self.text("nonce")?,
            verifier: Sealed::from_stored(self.text("verifier")?),
            return_to: self.text("return_to")?,
            created_at: self.int("created_at")?,
            expires_at: self.int("expires_at")?,
        })
    }
}

/// A `{session fields, user fields}` pair as the scripts answer it.
fn session_with_user(v: Value, looked_up: Option<&IdHash>) -> StoreResult<SessionRecord> {
    let [session, user] = <[Value; 2]>::try_from(value_list(v)?)
        .map_err(|_| StoreError::Corrupt("a session answer is not a pair".into()))?;
    let user = Record::from_value(user)?;
    if user.is_empty() {
        return Err(StoreError::Corrupt("a session's user is missing".into()));
    }
    Record::from_value(session)?.session(user.user()?, looked_up)
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

    async fn upsert_user(
        &self,
        issuer: &str,
        subject: &str,
        profile: &UserProfile,
        now: UnixTime,
    ) -> StoreResult<User> {
        timed(async {
            let args = Args::new()
                .with(subject_key(issuer, subject))
                .with(crate::random::new_uuid())
                .with(issuer)
                .with(subject)
                .with(now)
                .fields(profile_fields(profile));
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
                .with(subject_key(&user.issuer, &user.subject))
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
                .with(subject_key(issuer, subject))
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
                .put("expires_at", tx.expires_at);
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
        timed(async {
            let value = serde_json::json!({
                "kid": key.kid,
                "sealed_key": key.sealed_key.as_stored(),
                "created_at": key.created_at,
            })
            .to_string();
            let mut conn = self.conn.clone();
            let added: i64 = redis::cmd("HSETNX")
                .arg(self.key("signing_keys"))
                .arg(key.generation)
                .arg(value)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            Ok(added == 1)
        })
        .await
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
        timed(async {
            let mut conn = self.conn.clone();
            redis::cmd("HGET")
                .arg(self.key("settings"))
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(store_error)
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        timed(async {
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("HSET")
                .arg(self.key("settings"))
                .arg(key)
                .arg(value)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            Ok(())
        })
        .await
    }

    async fn delete_setting(&self, key: &str) -> StoreResult<bool> {
        timed(async {
            let mut conn = self.conn.clone();
            let removed: i64 = redis::cmd("HDEL")
                .arg(self.key("settings"))
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            Ok(removed == 1)
        })
        .await
    }

    async fn delete_signing_key(&self, generation: i64) -> StoreResult<bool> {
        timed(async {
            let mut conn = self.conn.clone();
            let removed: i64 = redis::cmd("HDEL")
                .arg(self.key("signing_keys"))
                .arg(generation)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            Ok(removed == 1)
        })
        .await
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        timed(async {
            let mut conn = self.conn.clone();
            redis::cmd("DEL")
                .arg(self.key(&format!("replay:{key}")))
                .exec_async(&mut conn)
                .await
                .map_err(store_error)
        })
        .await
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
