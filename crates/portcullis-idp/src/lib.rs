//! # portcullis-idp
//!
//! A small, standards-correct OpenID provider for development, tests and demos:
//! authorization code with **mandatory** PKCE S256 (RFC 7636), exact redirect-URI
//! matching, single-use codes of at most 60 s, refresh-token rotation with reuse
//! detection (RFC 9700 §4.14), RFC 9207 `iss` on every authorization response, RFC 7009
//! revocation, RP-initiated logout and back-channel logout. Users and clients come
//! from a TOML file; grants persist in SQLite.

pub mod authorize;
mod client_credentials;
pub mod config;
pub mod keys;
pub mod logout;
pub mod pages;
pub mod store;
pub mod throttle;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::Algorithm;
use serde_json::json;

pub use config::IdpConfig;
use keys::{KeySet, SigningKey};
use store::IdpStore;

/// Seconds since the epoch (the dev provider has no test clock).
#[allow(clippy::disallowed_methods)]
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why the provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    #[error("refusing to listen on the non-loopback address {0} without --allow-remote")]
    RemoteRefused(SocketAddr),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running provider's state.
#[derive(Debug)]
pub struct Idp {
    pub config: IdpConfig,
    pub store: IdpStore,
    pub keys: KeySet,
    /// For back-channel logout calls.
    pub http: reqwest::Client,
    /// Sign-in attempts per user and address, and the bounded queue of password checks.
    pub throttle: throttle::Throttle,
    /// Client assertion `jti`s seen (replays refused).
    pub assertions: token::SeenAssertions,
}

impl Idp {
    /// Opens the store and loads (or creates) the signing keys.
    pub async fn open(config: IdpConfig) -> Result<Arc<Self>, StartError> {
        portcullis::install_crypto_provider();
        if let Some(dir) = config.store.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let store = IdpStore::open(&config.store).await?;
        let mut keys = load_keys(&store).await?;
        if keys.current(Algorithm::RS256).is_none() || keys.current(Algorithm::ES256).is_none() {
            add_key_pair(&store).await?;
            keys = load_keys(&store).await?;
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| StartError::Io(std::io::Error::other(e)))?;
        Ok(Arc::new(Self {
            config,
            store,
            keys,
            http,
            throttle: throttle::Throttle::default(),
            assertions: token::SeenAssertions::default(),
        }))
    }

    /// Seconds a retired key stays published: the longest token lifetime.
    fn key_overlap(&self) -> i64 {
        let longest = self
            .config
            .id_token_ttl
            .max(self.config.access_token_ttl)
            .as_secs() as i64;
        // Logout tokens live 120 s.
        longest.max(120) + 60
    }
}

async fn load_keys(store: &IdpStore) -> Result<KeySet, StartError> {
    let mut set = KeySet::default();
    for (kid, alg, der, created, retired) in store.keys().await? {
        let alg = match alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => continue,
        };
        set.keys
            .push(SigningKey::from_der(&kid, alg, &der, created, retired)?);
    }
    Ok(set)
}

async fn add_key_pair(store: &IdpStore) -> Result<(), StartError> {
    let now = now();
    for (alg, name) in [(Algorithm::RS256, "RS256"), (Algorithm::ES256, "ES256")] {
        let der = SigningKey::generate_der(alg)?;
        let kid = format!(
            "{}-{}",
            name.to_ascii_lowercase(),
            &portcullis::random::random_token()[..10]
        );
        store.add_key(&kid, name, &der, now).await?;
    }
    Ok(())
}

/// Retires the current keys and makes new ones; the old ones stay published until
/// every token they signed has expired.
pub async fn rotate_keys(config: IdpConfig) -> Result<(), StartError> {
    let store = IdpStore::open(&config.store).await?;
    store.retire_keys(now()).await?;
    add_key_pair(&store).await?;
    Ok(())
}

/// Headers on every page and answer of the provider: no framing (docs/security.md A09),
/// no sniffing, no caching, no referrer.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The provider's routes.
pub fn router(idp: Arc<Idp>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize::show).post(authorize::submit))
        .route("/token", axum::routing::post(token::token))
        .route("/userinfo", get(token::userinfo).post(token::userinfo))
        .route("/revoke", axum::routing::post(token::revoke))
        .route(
            "/end_session",
            get(logout::end_session).post(logout::end_session_confirmed),
        )
        .layer(axum::middleware::map_response(security_headers))
        .with_state(idp)
}

async fn discovery(axum::extract::State(idp): axum::extract::State<Arc<Idp>>) -> Response {
    let i = &idp.config.issuer;
    axum::Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "jwks_uri": format!("{i}/jwks"),
        "revocation_endpoint": format!("{i}/revoke"),
        "end_session_endpoint": format!("{i}/end_session"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "revocation_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
        "scopes_supported": ["openid", "email", "profile", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "sid", "email", "email_verified", "name"],
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    }))
    .into_response()
}

async fn jwks(axum::extract::State(idp): axum::extract::State<Arc<Idp>>) -> Response {
    let mut r = axum::Json(idp.keys.jwks(now(), idp.key_overlap())).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    r
}

/// Runs the provider until `shutdown`. Refuses a non-loopback address unless allowed.
pub async fn run(
    config: IdpConfig,
    allow_remote: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    if !config.listen.ip().is_loopback() && !allow_remote {
        return Err(StartError::RemoteRefused(config.listen));
    }
    let listen = config.listen;
    let idp = Idp::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, issuer = %idp.config.issuer, "portcullis idp listening");
    portcullis::http::serve::serve(listener, router(idp), Default::default(), shutdown).await?;
    Ok(())
}
