//! Prometheus series (docs/deployment.md "Metrics"), recorded through the `metrics` facade.
//!
//! The library only records; whoever runs it decides where the numbers go. `portcullis
//! serve` installs a Prometheus recorder when `metrics.listen` is set and serves it on
//! that listener, never on the public one. An app embedding the gateway installs its own
//! recorder **before** [`crate::Gateway::start`]: the gateway resolves its handles there
//! ([`Metrics::register`]), so that every known series exists at zero from the start and
//! the request path never looks a series up by name. Without a recorder every record is
//! a no-op.
//!
//! Never a path, user, id or token in a label: the label values are the fixed lists
//! below, the numeric status, and the store trait's method names.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};

pub const REQUESTS: &str = "portcullis_requests_total";
pub const REQUEST_DURATION: &str = "portcullis_request_duration_seconds";
pub const LOGINS: &str = "portcullis_logins_total";
pub const REFRESHES: &str = "portcullis_refreshes_total";
pub const SECURITY_EVENTS: &str = "portcullis_security_events_total";
pub const PROVIDER_DURATION: &str = "portcullis_provider_request_duration_seconds";
pub const STORE_DURATION: &str = "portcullis_store_operation_duration_seconds";
pub const CACHE_REQUESTS: &str = "portcullis_session_cache_requests_total";
pub const RATE_LIMITED: &str = "portcullis_rate_limited_total";
pub const CHANGE_FEED_UP: &str = "portcullis_change_feed_up";
pub const BUILD_INFO: &str = "portcullis_build_info";

/// The buckets of every `_duration_seconds` histogram, in seconds.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// `kind` of a request (the access log's kinds).
pub const KINDS: [&str; 5] = ["gateway", "public", "protected", "verify", "websocket"];
/// Statuses registered at zero for every kind: those the gateway answers itself. Others
/// (whatever the upstream answers) appear when they first happen.
pub const KNOWN_STATUSES: [u16; 13] = [
    200, 204, 302, 303, 400, 401, 403, 404, 408, 413, 429, 502, 503,
];
pub const LOGIN_RESULTS: [&str; 3] = ["success", "denied", "error"];
pub const REFRESH_RESULTS: [&str; 5] = [
    "success",
    "invalid_grant",
    "outage",
    "identity_changed",
    "denied",
];
pub const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "bypass"];
pub const PROVIDER_ENDPOINTS: [&str; 6] = [
    "discovery",
    "jwks",
    "token",
    "userinfo",
    "revocation",
    "par",
];
pub const RATE_LIMITED_ENDPOINTS: [&str; 4] = ["login", "callback", "spa_exchange", "backchannel"];
/// The security events' stable names (`docs/sessions.md`).
pub const SECURITY_EVENT_NAMES: [&str; 7] = [
    "session_id_reuse",
    "refresh_identity_changed",
    "backchannel_rate_limited",
    "route_refused",
    "untrusted_forwarder",
    "provider_mismatch",
    "email_domain_not_owned",
];
/// The store trait's methods (the `operation` label).
pub const STORE_OPERATIONS: [&str; 29] = [
    "ping",
    "upsert_user",
    "get_user",
    "list_users",
    "import_user",
    "create_session",
    "get_session",
    "get_session_fresh",
    "touch_session",
    "update_tokens",
    "rotate_session_id",
    "update_claims",
    "import_session",
    "delete_session",
    "delete_user_sessions",
    "delete_sessions_by_provider_sid",
    "delete_sessions_by_subject",
    "delete_all_sessions",
    "list_sessions",
    "put_transaction",
    "take_transaction",
    "acquire_lease",
    "renew_lease",
    "release_lease",
    "remember_once",
    "forget",
    "add_signing_key",
    "signing_keys",
    "purge_expired",
];

/// Status codes the per-status table holds handles for (100–599); others are rare and
/// looked up by name.
const STATUS_SLOTS: usize = 500;

/// The handles of the request path, resolved once against the recorder installed at
/// start. Everything else is recorded through the free functions below (a lookup by
/// name: calls to the store or the provider cost far more).
pub struct Metrics {
    request_duration: [Histogram; 5],
    /// `KINDS.len() × STATUS_SLOTS` handles, filled on first use.
    requests: Vec<OnceLock<Counter>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn position(list: &[&str], value: &str) -> Option<usize> {
    list.iter().position(|v| *v == value)
}

impl Metrics {
    /// Describes every series (HELP text) and registers every known label value at
    /// zero, with the recorder installed now.
    /// `providers`: the configured provider ids (the `provider` label's values).
    pub fn register(providers: &[&str]) -> Self {
        describe();
        let metrics = Self {
            request_duration: KINDS
                .map(|kind| metrics::histogram!(REQUEST_DURATION, "kind" => kind)),
            requests: (0..KINDS.len() * STATUS_SLOTS)
                .map(|_| OnceLock::new())
                .collect(),
        };
        // A counter exists once it is incremented: by zero here.
        for result in CACHE_RESULTS {
            metrics::counter!(CACHE_REQUESTS, "result" => result).increment(0);
        }
        for (k, _) in KINDS.iter().enumerate() {
            for status in KNOWN_STATUSES {
                metrics.requests_counter(k, status).increment(0);
            }
        }
        for provider in providers {
            for result in LOGIN_RESULTS {
                metrics::counter!(LOGINS, "provider" => provider.to_string(), "result" => result)
                    .increment(0);
            }
            for result in REFRESH_RESULTS {
                metrics::counter!(REFRESHES, "provider" => provider.to_string(), "result" => result)
                    .increment(0);
            }
        }
        for event in SECURITY_EVENT_NAMES {
            metrics::counter!(SECURITY_EVENTS, "event" => event).increment(0);
        }
        for endpoint in RATE_LIMITED_ENDPOINTS {
            metrics::counter!(RATE_LIMITED, "endpoint" => endpoint).increment(0);
        }
        // A histogram is registered by taking its handle.
        for provider in providers {
            for endpoint in PROVIDER_ENDPOINTS {
                let _ = metrics::histogram!(
                    PROVIDER_DURATION,
                    "provider" => provider.to_string(),
                    "endpoint" => endpoint
                );
            }
        }
        for operation in STORE_OPERATIONS {
            let _ = metrics::histogram!(STORE_DURATION, "operation" => operation);
        }
        metrics::gauge!(CHANGE_FEED_UP).set(0.0);
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        metrics
    }

    fn slot(&self, kind: usize, status: u16) -> Option<&OnceLock<Counter>> {
        usize::from(status)
            .checked_sub(100)
            .filter(|s| *s < STATUS_SLOTS)
            .and_then(|s| self.requests.get(kind * STATUS_SLOTS + s))
    }

    fn requests_counter(&self, kind: usize, status: u16) -> Counter {
        let make =
            || metrics::counter!(REQUESTS, "kind" => KINDS[kind], "status" => status.to_string());
        match self.slot(kind, status) {
            Some(slot) => slot.get_or_init(make).clone(),
            None => make(),
        }
    }

    /// One request answered.
    pub fn request(&self, kind: &str, status: u16, duration: Duration) {
        let Some(k) = position(&KINDS, kind) else {
            return;
        };
        self.request_duration[k].record(duration.as_secs_f64());
        match self.slot(k, status).and_then(OnceLock::get) {
            Some(counter) => counter.increment(1),
            None => self.requests_counter(k, status).increment(1),
        }
    }
}

/// A sign-in finished: `success`, `denied` or `error`.
pub fn login(provider: &str, result: &'static str) {
    metrics::counter!(LOGINS, "provider" => provider.to_owned(), "result" => result).increment(1);
}

/// A refresh at the provider finished (see [`REFRESH_RESULTS`]).
pub fn refresh(provider: &str, result: &'static str) {
    metrics::counter!(REFRESHES, "provider" => provider.to_owned(), "result" => result)
        .increment(1);
}

/// A security event (its stable name).
pub fn security_event(event: &'static str) {
    metrics::counter!(SECURITY_EVENTS, "event" => event).increment(1);
}

/// A request refused by a rate limit.
pub fn rate_limited(endpoint: &'static str) {
    metrics::counter!(RATE_LIMITED, "endpoint" => endpoint).increment(1);
}

/// A store call below the cache took `duration`.
pub fn store_operation(operation: &'static str, duration: Duration) {
    metrics::histogram!(STORE_DURATION, "operation" => operation).record(duration.as_secs_f64());
}

/// A call to the provider took `duration`.
pub fn provider_request(provider: &str, endpoint: &'static str, duration: Duration) {
    metrics::histogram!(PROVIDER_DURATION, "provider" => provider.to_owned(), "endpoint" => endpoint)
        .record(duration.as_secs_f64());
}

/// Whether the store's change feed is live now.
pub fn change_feed_up(up: bool) {
    metrics::gauge!(CHANGE_FEED_UP).set(if up { 1.0 } else { 0.0 });
}

/// HELP text for every series.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Requests answered, by kind (gateway, public, protected, verify, websocket) and status code."
    );
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its response headers, by kind."
    );
    describe_counter!(
        LOGINS,
        "Sign-ins finished at the callback or the SPA exchange: success, denied (access rules or the provider refused), error."
    );
    describe_counter!(
        REFRESHES,
        "Token refreshes at the provider: success, invalid_grant (session ended), outage (session kept), identity_changed, denied (access rules)."
    );
    describe_counter!(
        SECURITY_EVENTS,
        "Security events by their stable name (docs/sessions.md)."
    );
    describe_histogram!(
        PROVIDER_DURATION,
        metrics::Unit::Seconds,
        "Calls to the identity provider, by endpoint, failures included."
    );
    describe_histogram!(
        STORE_DURATION,
        metrics::Unit::Seconds,
        "Session store calls below the session cache, by the store method's name."
    );
    describe_counter!(
        CACHE_REQUESTS,
        "Session lookups: hit (answered in process), miss (read from the store, then cached), bypass (read from the store: the change feed was not live or a fresh read was needed)."
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429 by the per-address rate limits, by endpoint."
    );
    describe_gauge!(
        CHANGE_FEED_UP,
        "1 while the store's change feed is live (the session cache is trusted), else 0."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
}
