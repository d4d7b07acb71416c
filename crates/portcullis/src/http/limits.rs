//! D01: per-client rate limits on the endpoints that cost the gateway (and the provider)
//! work before anyone is signed in: `/auth/login`, the callback, the SPA code exchange,
//! and, separately and generously, back-channel logout. Token buckets from `governor`,
//! keyed by the client address: the rightmost `X-Forwarded-For` entry that is not a
//! trusted proxy when the peer is one (never the leftmost, which the client writes),
//! else the peer; IPv6 by /64 (one host holds a whole /64). Entries a proxy wrote with
//! a port (`1.2.3.4:5678`, `[2001:db8::1]:443`) are read without it; an entry that is
//! no address at all counts in a bucket of its own, never in the proxy's (G07). Over
//! the rate: 429 with `Retry-After`, before the body is read. The tables are pruned by
//! a task of their own, never on the request path.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::HttpError;
use super::guard::Cidr;
use crate::config::LimitSettings;
use crate::session::SecurityEvents;

/// Clients one limiter tracks; beyond, new clients share one bucket until the idle
/// ones are forgotten (so the table stays bounded under a flood of addresses).
pub const MAX_CLIENTS: usize = 100_000;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How often the limiters' tables are pruned of clients whose buckets are full again.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Who a limit counts: an IPv4 address, an IPv6 /64, or a forwarded entry that is no
/// address (by a keyed hash of its text: every such spelling counts alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6(u64),
    Unparsed(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }

    /// The key of one `X-Forwarded-For` entry: an address, with or without a port
    /// (`1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`),
    /// or its own bucket when it is none.
    pub fn of_forwarded(entry: &str) -> Self {
        match forwarded_address(entry) {
            Some(ip) => Self::of(ip),
            None => {
                static KEYS: std::sync::OnceLock<std::hash::RandomState> =
                    std::sync::OnceLock::new();
                let keys = KEYS.get_or_init(std::hash::RandomState::new);
                Self::Unparsed(std::hash::BuildHasher::hash_one(keys, entry))
            }
        }
    }
}

/// The address of an `X-Forwarded-For` entry, port or brackets removed.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The endpoint a limit protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Callback,
    SpaExchange,
    Backchannel,
}

impl Endpoint {
    /// The `endpoint` label of `portcullis_rate_limited_total`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Callback => "callback",
            Self::SpaExchange => "spa_exchange",
            Self::Backchannel => "backchannel",
        }
    }
}

/// A token bucket per key (a client address, a user name), the table bounded: while it
/// holds [`MAX_CLIENTS`] keys, every request shares one bucket until
/// [`KeyedLimiter::upkeep`] (run by a task of its own, every [`UPKEEP_EVERY`]) forgets
/// the idle ones — or, without that task, the request that finds the table full does.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<Option<K>>,
    /// A task prunes the table: the request path never does.
    upkept: std::sync::atomic::AtomicBool,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedLimiter")
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `n` a minute per key, all `n` at once at most.
    pub fn per_minute(n: u32) -> Self {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(n)),
            upkept: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Counts one for `key`; `Err(seconds to wait)` when it is over its rate. Scans the
    /// table only when no task keeps it ([`KeyedLimiter::upkeep`]).
    pub fn check(&self, key: K) -> Result<(), u64> {
        use std::sync::atomic::Ordering;
        if self.limiter.len() >= MAX_CLIENTS && !self.upkept.load(Ordering::Relaxed) {
            self.limiter.retain_recent();
        }
        let key = (self.limiter.len() < MAX_CLIENTS).then_some(key);
        self.limiter.check_key(&key).map_err(|not_until| {
            not_until
                .wait_time_from(DefaultClock::default().now())
                .as_secs()
                .max(1)
        })
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// Forgets the keys whose buckets are full again (they would start afresh anyway).
    pub fn upkeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// From now on a task prunes the table (see [`KeyedLimiter::upkeep`]).
    pub fn kept_by_a_task(&self) {
        self.upkept
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

type Limiter = KeyedLimiter<ClientKey>;

/// The limits of one gateway.
#[derive(Debug)]
pub struct RateLimits {
    login: Limiter,
    callback: Limiter,
    spa_exchange: Limiter,
    backchannel: Limiter,
    trusted: Vec<Cidr>,
    /// Where back-channel refusals are counted.
    sessions: Arc<crate::session::Sessions>,
}

impl RateLimits {
    pub fn new(
        settings: &LimitSettings,
        trusted: Vec<Cidr>,
        sessions: Arc<crate::session::Sessions>,
    ) -> Self {
        Self {
            login: Limiter::per_minute(settings.login_per_minute),
            callback: Limiter::per_minute(settings.callback_per_minute),
            spa_exchange: Limiter::per_minute(settings.spa_exchange_per_minute),
            backchannel: Limiter::per_minute(settings.backchannel_per_minute),
            trusted,
            sessions,
        }
    }

    fn events(&self) -> &SecurityEvents {
        self.sessions.security_events()
    }

    /// Who a request counts as (see the module text).
    pub fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<ClientKey> {
        client_key(&self.trusted, peer, headers)
    }

    /// `Err(seconds)` when the request is over the endpoint's rate.
    pub fn check(
        &self,
        endpoint: Endpoint,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<(), u64> {
        let (limiter, client) = match endpoint {
            Endpoint::Login => (&self.login, self.client(peer, headers)),
            Endpoint::Callback => (&self.callback, self.client(peer, headers)),
            Endpoint::SpaExchange => (&self.spa_exchange, self.client(peer, headers)),
            // Per peer: the provider itself calls this endpoint.
            Endpoint::Backchannel => (&self.backchannel, peer.map(|p| ClientKey::of(p.ip()))),
        };
        let Some(client) = client else {
            return Ok(());
        };
        limiter.check(client)
    }

    /// Prunes every limiter's table (see [`KeyedLimiter::upkeep`]).
    pub fn upkeep(&self) {
        for limiter in [
            &self.login,
            &self.callback,
            &self.spa_exchange,
            &self.backchannel,
        ] {
            limiter.upkeep();
        }
    }

    /// Prunes the tables every [`UPKEEP_EVERY`] on a task of its own, off the request
    /// path, for as long as the limits are in use (without a runtime: never; a full
    /// table then sends new clients to the one shared bucket).
    pub fn start_upkeep(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for limiter in [
            &self.login,
            &self.callback,
            &self.spa_exchange,
            &self.backchannel,
        ] {
            limiter.kept_by_a_task();
        }
        let limits = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(limits) = limits.upgrade() else {
                    return;
                };
                limits.upkeep();
            }
        });
    }
}

/// Who a request counts as: when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not one (an address with or without its port, or,
/// when the entry is no address, a bucket of its own: G07); else the peer.
pub fn client_key(
    trusted: &[Cidr],
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<ClientKey> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = peer?.ip().to_canonical();
    if !is_trusted(peer) {
        return Some(ClientKey::of(peer));
    }
    let mut entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        // A value that is not text is one entry that is no address.
        .flat_map(|v| v.to_str().unwrap_or("\u{fffd}").split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    while let Some(entry) = entries.pop() {
        match forwarded_address(entry) {
            Some(ip) if is_trusted(ip.to_canonical()) => continue,
            _ => return Some(ClientKey::of_forwarded(entry)),
        }
    }
    Some(ClientKey::of(peer))
}

/// The middleware in front of one endpoint: 429 + `Retry-After` over the rate.
pub async fn enforce(
    State((limits, endpoint)): State<(Arc<RateLimits>, Endpoint)>,
    req: Request,
    next: Next,
) -> Response {
    let peer = super::request::peer(&req);
    match limits.check(endpoint, peer, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(retry_after) => {
            crate::metrics::rate_limited(endpoint.name());
            if endpoint == Endpoint::Backchannel {
                limits.events().count("backchannel_rate_limited");
                tracing::warn!(
                    event = "backchannel_rate_limited",
                    "security event: back-channel logout requests over the rate were refused"
                );
            } else {
                tracing::info!(?endpoint, "requests over the rate were refused");
            }
            let mut e = HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests from your address; please wait a moment.",
            );
            e.retry_after = Some(retry_after);
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn trusted() -> Vec<Cidr> {
        ["10.0.0.0/8", "fd00::/8"]
            .iter()
            .filter_map(|c| Cidr::parse(c))
            .collect()
    }

    fn forwarded(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        h
    }

    fn from(peer: &str, h: &HeaderMap) -> Option<ClientKey> {
        client_key(&trusted(), Some(peer.parse().unwrap()), h)
    }

    fn ip(s: &str) -> Option<ClientKey> {
        Some(ClientKey::of(s.parse().unwrap()))
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let h = forwarded(&["6.6.6.6, 1.2.3.4", "10.0.0.7"]);
        // Behind our proxy: the hop before it, never the client-written leftmost entry.
        assert_eq!(from("10.0.0.1:5000", &h), ip("1.2.3.4"));
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(from("8.8.8.8:5000", &h), ip("8.8.8.8"));
        assert_eq!(from("10.0.0.1:5000", &HeaderMap::new()), ip("10.0.0.1"));
    }

    /// G07: proxies that write `ip:port` or `[v6]:port` are read without the port; an
    /// entry that is no address counts alone, never in the proxy's bucket.
    #[test]
    fn g07_ports_are_dropped_and_unparseable_entries_count_alone() {
        for (entry, client) in [
            ("1.2.3.4:5678", "1.2.3.4"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let h = forwarded(&[entry, "10.0.0.7:80"]);
            assert_eq!(from("10.0.0.1:5000", &h), ip(client), "{entry}");
        }
        let (a, b) = (
            from("10.0.0.1:5000", &forwarded(&["unknown"])),
            from("10.0.0.1:5000", &forwarded(&["_hidden"])),
        );
        let proxy = ip("10.0.0.1");
        assert!(matches!(a, Some(ClientKey::Unparsed(_))), "{a:?}");
        assert!(a != proxy && b != proxy && a != b);
        assert_eq!(a, from("10.0.0.9:1", &forwarded(&["1.2.3.4, unknown"])));
        // Clients that differ only in their port are one client.
        assert_eq!(
            from("10.0.0.1:5000", &forwarded(&["1.2.3.4:1"])),
            from("10.0.0.1:5000", &forwarded(&["1.2.3.4:2"]))
        );
    }

    /// Past the table's bound every request shares one bucket until the upkeep runs;
    /// the request path never scans a table a task keeps.
    #[test]
    fn a_full_table_shares_one_bucket_for_newcomers() {
        let limiter = KeyedLimiter::<u32>::per_minute(1);
        limiter.kept_by_a_task();
        for key in 0..MAX_CLIENTS as u32 {
            assert!(limiter.check(key).is_ok());
        }
        assert_eq!(limiter.len(), MAX_CLIENTS);
        assert!(limiter.check(u32::MAX).is_ok(), "the shared bucket");
        assert!(limiter.check(u32::MAX - 1).is_err(), "shared, and spent");
        assert!(limiter.check(0).is_err(), "the shared bucket, spent");
        limiter.upkeep();
        assert_eq!(
            limiter.len(),
            MAX_CLIENTS + 1,
            "every bucket is still spent"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = ClientKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = ClientKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ClientKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientKey::of("::ffff:1.2.3.4".parse().unwrap()),
            ClientKey::of("1.2.3.4".parse().unwrap())
        );
    }
}
