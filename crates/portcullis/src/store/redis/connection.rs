//! Opening a Redis store: the command connection, the deployment checks, and the
//! change feed's own connection with its heartbeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    ProtocolVersion, PushInfo, PushKind, RedisError,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::scripts::SCRIPTS;
use super::{CONNECT_TIMEOUT, RECONNECT_RETRIES, RESPONSE_TIMEOUT, RedisStore, store_error};
use crate::store::feed::{HEARTBEAT_EVERY, Tasks};
use crate::store::{ChangeFeed, FeedEvent, StoreError, StoreResult, timed};

/// Back-off between attempts to re-establish the change-feed connection.
const FEED_RETRY_MIN: Duration = Duration::from_millis(100);
const FEED_RETRY_MAX: Duration = Duration::from_secs(5);

/// How often the feed connection is probed with `PING`, so that a connection that died
/// silently (no FIN) is noticed and replaced.
const FEED_PROBE_EVERY: Duration = Duration::from_secs(1);

impl RedisStore {
    pub(super) async fn open(url: &str, prefix: &str) -> StoreResult<RedisStore> {
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
}

/// The deployment rules of docs/deployment.md ("Redis"): an evicting `maxmemory-policy`
/// signs users out at random under memory pressure, and without persistence a restart
/// signs everyone out. Managed services that refuse `CONFIG GET` are not judged.
pub(super) async fn deployment_problems(conn: &mut ConnectionManager) -> Vec<String> {
    pub(super) async fn config(conn: &mut ConnectionManager, name: &str) -> Option<String> {
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
pub(super) fn describe(info: &ConnectionInfo) -> String {
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
    pub(super) async fn subscribe(&self) -> redis::RedisResult<Subscribed> {
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
        match tokio::time::timeout(crate::store::STORE_TIMEOUT, attempt).await {
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
