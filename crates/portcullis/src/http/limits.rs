//! D01: per-client rate limits on the endpoints that cost the gateway (and the provider)
//! work before anyone is signed in: `/auth/login`, the callback, the SPA code exchange,
//! and, separately and generously, back-channel logout. Token buckets from `governor`,
//! keyed by the client address: the rightmost `X-Forwarded-For` entry that is not a
//! trusted proxy when the peer is one (never the leftmost, which the client writes),
//! else the peer; IPv6 by /64 (one host holds a whole /64). Over the rate: 429 with
//! `Retry-After`, before the body is read.

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

/// Who a limit counts: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }
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

/// A token bucket per key (a client address, a user name), the table bounded: past
/// [`MAX_CLIENTS`] keys the idle ones are forgotten, and while it is still full new keys
/// share one bucket.
pub struct KeyedLimiter<K: Hash + Eq + Clone>(DefaultKeyedRateLimiter<Option<K>>);

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedLimiter")
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `n` a minute per key, all `n` at once at most.
    pub fn per_minute(n: u32) -> Self {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self(RateLimiter::keyed(Quota::per_minute(n)))
    }

    /// Counts one for `key`; `Err(seconds to wait)` when it is over its rate.
    pub fn check(&self, key: K) -> Result<(), u64> {
        let mut key = Some(key);
        if self.0.len() >= MAX_CLIENTS {
            self.0.retain_recent();
            if self.0.len() >= MAX_CLIENTS {
                key = None;
            }
        }
        self.0.check_key(&key).map_err(|not_until| {
            not_until
                .wait_time_from(DefaultClock::default().now())
                .as_secs()
                .max(1)
        })
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

    /// The client address of a request (see the module text).
    pub fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        client_address(&self.trusted, peer, headers)
    }

    /// `Err(seconds)` when the request is over the endpoint's rate.
    pub fn check(
        &self,
        endpoint: Endpoint,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<(), u64> {
        let (limiter, ip) = match endpoint {
            Endpoint::Login => (&self.login, self.client(peer, headers)),
            Endpoint::Callback => (&self.callback, self.client(peer, headers)),
            Endpoint::SpaExchange => (&self.spa_exchange, self.client(peer, headers)),
            // Per peer: the provider itself calls this endpoint.
            Endpoint::Backchannel => (&self.backchannel, peer.map(|p| p.ip().to_canonical())),
        };
        let Some(ip) = ip else {
            return Ok(());
        };
        limiter.check(ClientKey::of(ip))
    }
}

/// The rightmost `X-Forwarded-For` entry that is not a trusted proxy, when the peer is
/// one; else the peer.
pub fn client_address(
    trusted: &[Cidr],
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = peer?.ip().to_canonical();
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    while let Some(entry) = entries.pop() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip.to_canonical()) => continue,
            Ok(ip) => return Some(ip.to_canonical()),
            // Not an address: the chain cannot be followed further; the last trusted
            // hop is the client as far as we can tell.
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
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

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let trusted: Vec<Cidr> = ["10.0.0.0/8"]
            .iter()
            .filter_map(|c| Cidr::parse(c))
            .collect();
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.7"));
        let from =
            |peer: &str, h: &HeaderMap| client_address(&trusted, Some(peer.parse().unwrap()), h);
        // Behind our proxy: the hop before it, never the client-written leftmost entry.
        assert_eq!(from("10.0.0.1:5000", &h), Some("1.2.3.4".parse().unwrap()));
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(from("8.8.8.8:5000", &h), Some("8.8.8.8".parse().unwrap()));
        // Garbage in the chain: the last trusted hop.
        let mut bad = HeaderMap::new();
        bad.append(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4, junk"));
        assert_eq!(
            from("10.0.0.1:5000", &bad),
            Some("10.0.0.1".parse().unwrap())
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
