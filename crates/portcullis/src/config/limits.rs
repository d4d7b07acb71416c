//! The `[limits]` section (docs/configuration.md, `[limits]`): per-client
//! rates on the endpoints that work before anyone is signed in, and the bound on login
//! transactions, and the connection caps.

/// Live login transactions kept in all (`limits.max_transactions`): expired ones are
/// removed first, and at the bound a new sign-in is refused rather than a live one
/// dropped, so a flood of `/auth/login` requests can neither grow the store without
/// bound (R01) nor evict someone else's sign-in in progress (D01).
pub const MAX_LIVE_TRANSACTIONS: u32 = 50_000;

use std::time::Duration;

use serde::Deserialize;

use super::duration::duration_setting;

/// Bounds against floods.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// `/auth/login` per client address and minute (offices share an address).
    pub login_per_minute: u32,
    /// The callback per client address and minute.
    pub callback_per_minute: u32,
    /// The SPA code exchange per client address and minute.
    pub spa_exchange_per_minute: u32,
    /// Back-channel logout per peer and minute.
    pub backchannel_per_minute: u32,
    /// Live login transactions at once; at the bound a new sign-in gets 503 (D01).
    pub max_transactions: u32,
    /// Connections one client address (IPv6: /64) may hold; trusted proxies exempt (D02).
    pub connections_per_peer: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request body the gateway reads itself (the SPA code
    /// exchange, back-channel logout); later → 408 (D02).
    pub body_timeout: Duration,
    /// Time a connection may wait for the next request's headers to arrive in full,
    /// counted from when it opened or its previous answer was sent: the idle keep-alive
    /// timeout, and with it the deadline for slow headers (D02).
    pub keepalive_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            login_per_minute: 120,
            callback_per_minute: 60,
            spa_exchange_per_minute: 30,
            backchannel_per_minute: 600,
            max_transactions: MAX_LIVE_TRANSACTIONS,
            connections_per_peer: 256,
            max_connections: 10_000,
            body_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
        }
    }
}

/// The `[limits]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    login_per_minute: Option<u32>,
    callback_per_minute: Option<u32>,
    spa_exchange_per_minute: Option<u32>,
    backchannel_per_minute: Option<u32>,
    max_transactions: Option<u32>,
    connections_per_peer: Option<u32>,
    max_connections: Option<u32>,
    body_timeout: Option<String>,
    keepalive_timeout: Option<String>,
}

/// A zero deadline would refuse every request.
fn at_least_a_second(value: Duration, name: &str, errors: &mut Vec<String>) -> Duration {
    if value < Duration::from_secs(1) {
        errors.push(format!("`limits.{name}` must be at least 1s"));
    }
    value
}

impl RawLimits {
    pub(super) fn validate(self, errors: &mut Vec<String>) -> LimitSettings {
        let d = LimitSettings::default();
        let mut at_least_one = |name: &str, value: Option<u32>, default: u32| {
            let value = value.unwrap_or(default);
            if value == 0 {
                errors.push(format!("`limits.{name}` must be at least 1"));
            }
            value
        };
        LimitSettings {
            login_per_minute: at_least_one(
                "login_per_minute",
                self.login_per_minute,
                d.login_per_minute,
            ),
            callback_per_minute: at_least_one(
                "callback_per_minute",
                self.callback_per_minute,
                d.callback_per_minute,
            ),
            spa_exchange_per_minute: at_least_one(
                "spa_exchange_per_minute",
                self.spa_exchange_per_minute,
                d.spa_exchange_per_minute,
            ),
            backchannel_per_minute: at_least_one(
                "backchannel_per_minute",
                self.backchannel_per_minute,
                d.backchannel_per_minute,
            ),
            max_transactions: at_least_one(
                "max_transactions",
                self.max_transactions,
                d.max_transactions,
            ),
            connections_per_peer: at_least_one(
                "connections_per_peer",
                self.connections_per_peer,
                d.connections_per_peer as u32,
            ) as usize,
            max_connections: at_least_one(
                "max_connections",
                self.max_connections,
                d.max_connections as u32,
            ) as usize,
            body_timeout: at_least_a_second(
                duration_setting(
                    self.body_timeout,
                    "limits.body_timeout",
                    d.body_timeout,
                    errors,
                ),
                "body_timeout",
                errors,
            ),
            keepalive_timeout: at_least_a_second(
                duration_setting(
                    self.keepalive_timeout,
                    "limits.keepalive_timeout",
                    d.keepalive_timeout,
                    errors,
                ),
                "keepalive_timeout",
                errors,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;
    use crate::config::test_support::minimal;

    fn with(key: &str, value: &str) -> Result<Config, String> {
        let mut e = minimal();
        e.push((key.into(), value.into()));
        Config::load_from(None, e).map_err(|e| e.to_string())
    }

    #[test]
    fn deadlines_read_as_durations_and_refuse_zero() {
        let c = Config::load_from(None, minimal()).unwrap();
        assert_eq!(c.limits.body_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.keepalive_timeout, Duration::from_secs(75));
        let c = with("PORTCULLIS_LIMITS_KEEPALIVE_TIMEOUT", "5m").unwrap();
        assert_eq!(c.limits.keepalive_timeout, Duration::from_secs(300));
        let e = with("PORTCULLIS_LIMITS_BODY_TIMEOUT", "0s").unwrap_err();
        assert!(e.contains("limits.body_timeout"), "{e}");
        let e = with("PORTCULLIS_LIMITS_KEEPALIVE_TIMEOUT", "75").unwrap_err();
        assert!(e.contains("limits.keepalive_timeout"), "{e}");
        let e = with("PORTCULLIS_LIMITS_LOGIN_PER_MINUTE", "0").unwrap_err();
        assert!(e.contains("limits.login_per_minute"), "{e}");
    }
}
