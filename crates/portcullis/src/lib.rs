//! # Portcullis
//!
//! A sign-in gateway engine: OAuth 2.0 authorization code with PKCE against any OpenID
//! Connect provider, every token kept on the server, an opaque httpOnly session cookie
//! in the browser, and a verified user handed to the application.
//!
//! The `portcullis` binary is a thin shell around this crate:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = portcullis::Config::load(None)?;
//! let gateway = std::sync::Arc::new(portcullis::Gateway::start(config).await?);
//! let app = portcullis::http::router(gateway)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! portcullis::http::serve::serve(listener, app, Default::default(), shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! Layout: [`config`] (settings), [`provider`] (the identity provider), [`session`]
//! (ids, sealing, lifetimes, login), [`store`] (persistence), [`http`] (the edges).

// Lints: `[workspace.lints]` in the workspace's Cargo.toml.

pub mod clock;
pub mod config;
pub mod doctor;
pub mod gateway;
pub mod http;
pub mod jose;
pub mod metrics;
pub mod net;
pub mod path;
pub mod percent;
pub mod provider;
pub mod random;
pub mod session;
pub mod store;
pub mod threads;

pub use config::Config;
pub use gateway::Gateway;

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
