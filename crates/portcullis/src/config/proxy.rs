//! Forwarding to the protected app: `upstream` (top level) and the `[proxy]` section —
//! which proxies in front of the gateway are believed, and which paths get the access
//! token relayed (docs/proxy.md).

use serde::Deserialize;
use url::Url;

use crate::net::Cidr;
use crate::path::PathPattern;

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
pub(super) fn trusted_proxies(value: Option<Vec<String>>, errors: &mut Vec<String>) -> Vec<Cidr> {
    let mut parsed = Vec::new();
    for cidr in value.unwrap_or_default() {
        match Cidr::parse(&cidr) {
            Some(c) => parsed.push(c),
            None => errors.push(format!(
                "`proxy.trusted_proxies`: `{cidr}` is not an address or CIDR like 10.0.0.0/8"
            )),
        }
    }
    parsed
}

/// `proxy.token_relay`: path patterns whose upstream requests carry the access token;
/// none may overlap a public path (a public request relays nothing, and would pass the
/// client's own `Authorization` where the app expects ours).
pub(super) fn token_relay(
    value: Option<Vec<String>>,
    public: &[(String, PathPattern)],
    errors: &mut Vec<String>,
) -> Vec<PathPattern> {
    let mut parsed = Vec::new();
    for p in value.unwrap_or_default() {
        match PathPattern::parse(&p) {
            Some(pattern) => {
                for (name, public) in public {
                    if pattern.overlaps_ignoring_case(public) {
                        errors.push(format!(
                            "`proxy.token_relay`: `{p}` overlaps the public path `{name}`: public requests carry no session, so nothing would be relayed there; narrow one of them"
                        ));
                    }
                }
                parsed.push(pattern);
            }
            None => errors.push(format!(
                "`proxy.token_relay`: `{p}` must be a normalised path (`/api`) or a prefix ending in `/*` (`/api/*`)"
            )),
        }
    }
    parsed
}
