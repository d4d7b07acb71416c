//! Test support shared by the integration tests of every crate: signing keys, a
//! scriptable hostile OpenID provider, the real npm provider and the dev provider, a
//! gateway on a free loopback port, a cookie-keeping browser, upstreams and front
//! proxies. A crate of its own (a dev-dependency), so that no suite includes another's
//! files by path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// G05's routing headers: none of them may reach an app from any peer.
pub const ROUTING_HEADERS: [&str; 10] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-method",
    "x-forwarded-uri",
    "x-forwarded-method",
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
];

/// Serves `app` on a free loopback port (with the peer's address, as the gateway's
/// own server records it) until the test ends; its base URL.
pub async fn serve_app(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    base
}

/// Seconds since the epoch, real time (what a real peer's clock says).
#[allow(clippy::disallowed_methods)]
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
