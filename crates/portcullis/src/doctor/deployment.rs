//! The deployment's checks: the store (opened as `serve` would), its key ring, and the
//! upstream.

use std::time::Duration;

use super::{Level, Report};
use crate::config::Config;

/// Time for the upstream to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn store_check(config: &Config, report: &mut Report) {
    // Never create a database here (doctor may run as another user than serve).
    if let crate::config::StoreLocation::Sqlite(path) = &config.store
        && !path.exists()
    {
        return report.push(
            Level::Ok,
            "store",
            format!(
                "{} does not exist yet; serve creates it (its folder must be writable by serve's user)",
                config.store.describe()
            ),
        );
    }
    let store = match crate::store::open(&config.store, &config.store_prefix).await {
        Ok(s) => s,
        Err(e) => {
            return report.problem(
                Level::Error,
                "store",
                format!("cannot open {}: {e}", config.store.describe()),
                "check `store` (PORTCULLIS_STORE): the address, the credentials, and that the server runs",
            );
        }
    };
    if let Err(e) = store.ping().await {
        return report.problem(
            Level::Error,
            "store",
            format!("{} does not answer: {e}", config.store.describe()),
            "check the store server",
        );
    }
    report.push(
        Level::Ok,
        "store",
        format!("{} reachable, schema current", config.store.describe()),
    );
    for problem in store.deployment_problems().await {
        report.problem(
            Level::Warn,
            "store",
            problem,
            "change the server's configuration as said (docs/deployment.md)",
        );
    }
    key_ring_check(config, store.as_ref(), report).await;
}

/// G08: whether the configured key ring opens the store's assertion signing keys — a
/// newer key it cannot open makes this instance stale; older ones only take room.
async fn key_ring_check(config: &Config, store: &dyn crate::store::Store, report: &mut Report) {
    let secret = match (&config.secret, &config.store) {
        (Some(secret), _) => Some(secret.clone()),
        // The ring serve generated beside the database, if there is one (never made here).
        (None, crate::config::StoreLocation::Sqlite(path)) => {
            std::fs::read_to_string(crate::gateway::secret_file_for(path))
                .ok()
                .and_then(|text| crate::config::SecretKeys::parse(text.trim()).ok())
        }
        (None, _) => None,
    };
    let Some(ring) = secret.and_then(|s| crate::session::KeyRing::new(&s).ok()) else {
        return;
    };
    let records = match store.signing_keys().await {
        Ok(r) => r,
        Err(e) => {
            return report.problem(
                Level::Error,
                "key ring",
                format!("cannot read the signing keys: {e}"),
                "check the store server",
            );
        }
    };
    let unreadable = crate::session::assertion::unreadable_keys(&records, &ring);
    if crate::session::assertion::stale_ring(&records, &ring) {
        let newest = records.iter().map(|r| r.generation).max().unwrap_or(0);
        report.problem(
            Level::Error,
            "key ring",
            format!(
                "the store holds signing key generation {newest}, which this key ring cannot open: another instance runs with a secret this one lacks, and this one would be stale (its /readyz fails)"
            ),
            "give every instance the same secret (PORTCULLIS_SECRET); after a leak, the new one only (docs/deployment.md, \"If the secret leaked\")",
        );
    } else if !unreadable.is_empty() {
        report.problem(
            Level::Warn,
            "key ring",
            format!(
                "{} older signing key(s) in the store open with no key of this key ring (left by a replaced secret)",
                unreadable.len()
            ),
            "portcullis keys prune --yes",
        );
    } else {
        report.push(
            Level::Ok,
            "key ring",
            format!("opens every signing key in the store ({})", records.len()),
        );
    }
    if config.providers.iter().any(|p| p.settings.dpop) {
        dpop_key_check(store, &ring, report).await;
    }
}

/// G08 for the DPoP key: which key this ring would bind tokens to.
async fn dpop_key_check(
    store: &dyn crate::store::Store,
    ring: &crate::session::KeyRing,
    report: &mut Report,
) {
    use crate::session::dpop::{KeyState, key_state};
    match key_state(store, ring).await {
        Ok(KeyState::Absent) => report.push(
            Level::Ok,
            "dpop key",
            "no DPoP key in the store yet: the first sign-in makes it, and every instance shares it",
        ),
        Ok(KeyState::Shared) => report.push(
            Level::Ok,
            "dpop key",
            "the shared DPoP key opens with this key ring",
        ),
        Ok(KeyState::OwnKey { made }) => report.problem(
            Level::Warn,
            "dpop key",
            format!(
                "the shared DPoP key is sealed under a secret this key ring lacks: this instance binds tokens to a key of its own ring ({}), so instances on the other secret cannot use its tokens",
                if made { "in the store" } else { "made at its first sign-in" }
            ),
            "give every instance the same secret (PORTCULLIS_SECRET); after a leak, the new one only (docs/deployment.md, \"If the secret leaked\")",
        ),
        Ok(KeyState::Broken) => report.problem(
            Level::Error,
            "dpop key",
            "a stored DPoP key does not open although this key ring holds its key: sign-ins cannot bind tokens",
            "delete the setting `dpop_key` from the store (tokens bound to it stop working; their sessions refresh or sign in again)",
        ),
        Err(e) => report.problem(
            Level::Error,
            "dpop key",
            format!("cannot read the DPoP key: {e}"),
            "check the store server",
        ),
    }
}

pub(super) async fn upstream_check(config: &Config, report: &mut Report) {
    let Some(upstream) = &config.upstream else {
        return report.push(
            Level::Ok,
            "upstream",
            "none: forward-auth only (docs/forward-auth.md)",
        );
    };
    let client = reqwest::Client::builder()
        .timeout(UPSTREAM_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let answer = match client {
        Ok(c) => c.get(upstream.as_str()).send().await.map(|r| r.status()),
        Err(e) => Err(e),
    };
    match answer {
        Ok(status) => report.push(
            Level::Ok,
            "upstream",
            format!("{upstream} answered HTTP {}", status.as_u16()),
        ),
        Err(e) => report.problem(
            Level::Error,
            "upstream",
            format!("{upstream} does not answer: {}", without_url(e)),
            "start the app, or fix `upstream` (PORTCULLIS_UPSTREAM)",
        ),
    }
}

/// A reqwest error without the URL it repeats, with its causes.
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
