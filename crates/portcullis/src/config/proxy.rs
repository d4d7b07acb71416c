//! Forwarding to the protected app: `upstream` (top level) and the `[proxy]` section —
//! which proxies in front of the gateway are believed, and which paths get the access
//! token relayed (docs/proxy.md).

use std::net::IpAddr;

use serde::Deserialize;
use url::Url;

/// `upstream`: an http(s) base URL; unset or empty means forward-auth only.
pub(super) fn upstream(value: Option<String>, errors: &mut Vec<String>) -> Option<Url> {
    value
        .filter(|s| !s.is_empty())
        .and_then(|u| match Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            _ => {
                errors.push(format!("`upstream`: `{u}` is not an http(s) URL"));
                None
            }
        })
}

/// The `[proxy]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) token_relay: Option<Vec<String>>,
}

/// `proxy.trusted_proxies`: addresses or CIDRs whose forwarding headers are believed.
pub(super) fn trusted_proxies(value: Option<Vec<String>>, errors: &mut Vec<String>) -> Vec<String> {
    let trusted_proxies = value.unwrap_or_default();
    for cidr in &trusted_proxies {
        if !is_cidr(cidr) {
            errors.push(format!(
                "`proxy.trusted_proxies`: `{cidr}` is not an address or CIDR like 10.0.0.0/8"
            ));
        }
    }
    trusted_proxies
}

fn is_cidr(s: &str) -> bool {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    match bits {
        None => true,
        Some(b) => b
            .parse::<u8>()
            .is_ok_and(|n| n <= if ip.is_ipv4() { 32 } else { 128 }),
    }
}

/// `proxy.token_relay`: path patterns whose upstream requests carry the access token.
pub(super) fn token_relay(value: Option<Vec<String>>, errors: &mut Vec<String>) -> Vec<String> {
    let token_relay = value.unwrap_or_default();
    for p in &token_relay {
        if crate::path::PathPattern::parse(p).is_none() {
            errors.push(format!(
                "`proxy.token_relay`: `{p}` must be a normalised path (`/api`) or a prefix ending in `/*` (`/api/*`)"
            ));
        }
    }
    token_relay
}
