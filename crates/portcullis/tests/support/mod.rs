//! Test support shared by the integration tests: signing keys, a scriptable hostile
//! OpenID provider, a gateway on a free loopback port, and a cookie-keeping browser.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod dev_provider;
pub mod front_proxy;
pub mod gateway;
pub mod hostile;
pub mod keys;
pub mod oidc_provider;
pub mod upstream;

pub use browser::Browser;
pub use gateway::TestGateway;
pub use hostile::HostileProvider;
pub use keys::TestKeys;
pub use upstream::TestUpstream;

/// Seconds since the epoch, real time.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
