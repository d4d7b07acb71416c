//! Start-up: the key ring, the store and the provider client, wired into the session
//! service that every request shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, SecretKeys, StoreLocation};
use crate::provider::http::ProviderHttp;
use crate::provider::{Provider, Providers};
use crate::session::{KeyRing, SecurityEvents, Sessions};
use crate::store::Store;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("key ring: {0}")]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Provider(#[from] crate::provider::ProviderError),
    #[error("{0}")]
    Unsupported(String),
}

/// Why the key ring could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("`secret` is required with the store {0}")]
    Required(String),
    #[error("{0}")]
    Ring(#[from] crate::session::SealError),
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One gateway instance: the session service, wired once at start-up and shared by
/// every request.
#[derive(Debug)]
pub struct Gateway {
    sessions: Arc<Sessions>,
}

impl Gateway {
    /// Opens the configured store, loads (or creates) the key ring and prepares the
    /// provider client. Provider discovery happens on first use and is retried.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        crate::install_crypto_provider();
        // A shared store needs the key ring from the configuration (checked there); a
        // SQLite file may keep a generated one beside it.
        let keys = match (&config.secret, &config.store) {
            (Some(secret), _) => key_ring(secret)?,
            (None, StoreLocation::Sqlite(path)) => key_ring(&load_or_create_secret(path)?)?,
            (None, other) => {
                return Err(SecretError::Required(other.describe()).into());
            }
        };
        let store = crate::store::open(&config.store, &config.store_prefix).await?;
        if !config.is_https() && !is_loopback_origin(&config.public_url) {
            tracing::warn!(
                public_url = %config.public_origin(),
                "the public URL is plain http: cookies cannot be Secure or __Host- prefixed, so a sibling host could plant them; use https"
            );
        }
        let mut providers = Vec::new();
        for settings in crate::provider::ProviderSettings::all_from_config(&config) {
            providers.push(Provider::new(settings, ProviderHttp::new()?));
        }
        let mut extra = Vec::new();
        for entry in &config.bearer {
            if let crate::config::BearerIssuer::Extra(issuer) = &entry.issuer {
                let settings = crate::provider::ProviderSettings::from_config(&config, issuer);
                extra.push(Provider::new(settings, ProviderHttp::new()?));
            }
        }
        Ok(Self::from_parts(
            config,
            Providers::new(providers).with_extra_issuers(extra),
            store,
            keys,
            Arc::new(SystemClock),
        ))
    }

    /// Assembles a gateway from ready parts (tests and embedders).
    pub fn from_parts(
        config: Config,
        providers: Providers,
        store: Arc<dyn Store>,
        keys: KeyRing,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let sessions = Sessions::new(Arc::new(config), providers, store, keys, clock);
        Self {
            sessions: Arc::new(sessions),
        }
    }

    /// The session service: sign-in, lookup, refresh, logout, administration.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Security events counted since start (see `docs/sessions.md`).
    pub fn security_events(&self) -> &SecurityEvents {
        self.sessions.security_events()
    }

    pub fn config(&self) -> &Config {
        self.sessions.config()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.sessions.store()
    }

    pub fn providers(&self) -> &Providers {
        self.sessions.providers()
    }

    /// Readiness: the store answers, a provider's metadata is loaded, and this
    /// instance's key ring is not stale (G08: the store holds no signing key newer than
    /// any the ring opens — another instance runs with a ring this one lacks).
    pub async fn readiness(&self) -> Readiness {
        let store = self.store().ping().await.is_ok();
        // With several providers, one that is down (a partner's) does not take the
        // gateway out of the load balancer: the others still sign people in.
        let mut provider = false;
        for p in self.providers().iter() {
            provider |= p.metadata().await.is_ok();
        }
        let key_ring = self
            .sessions
            .key_ring_is_current()
            .await
            .unwrap_or_default();
        Readiness {
            store,
            provider,
            key_ring,
        }
    }

    /// Deletes expired sessions, transactions, leases and replay entries.
    pub async fn purge_expired(&self) -> Result<u64, crate::store::StoreError> {
        self.sessions.purge_expired().await
    }
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub store: bool,
    pub provider: bool,
    /// False while the store holds an assertion signing key newer than any this
    /// instance's key ring opens (see [`Gateway::readiness`]).
    pub key_ring: bool,
}

impl Readiness {
    pub fn is_ready(self) -> bool {
        self.store && self.provider && self.key_ring
    }
}

fn is_loopback_origin(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

fn key_ring(secret: &SecretKeys) -> Result<KeyRing, StartError> {
    Ok(KeyRing::new(secret).map_err(SecretError::from)?)
}

/// The file beside the SQLite database that holds a generated key ring.
pub fn secret_file_for(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".secret");
    db.with_file_name(name)
}

/// Reads the generated key ring beside the database, creating it (mode 0600) on first
/// start so that sessions survive restarts without configuration.
fn load_or_create_secret(db: &Path) -> Result<SecretKeys, StartError> {
    let path = secret_file_for(db);
    match std::fs::read_to_string(&path) {
        Ok(text) => SecretKeys::parse(text.trim()).map_err(|reason| {
            SecretError::Unreadable {
                path: path.clone(),
                reason,
            }
            .into()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| SecretError::Unwritable {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            let secret = KeyRing::generate_secret();
            write_private(&path, secret.as_bytes()).map_err(|source| SecretError::Unwritable {
                path: path.clone(),
                source,
            })?;
            tracing::info!(
                path = %path.display(),
                "generated a new session key ring and kept it beside the database; set PORTCULLIS_SECRET to manage keys yourself"
            );
            SecretKeys::parse(&secret).map_err(|reason| {
                SecretError::Unreadable {
                    path: path.clone(),
                    reason,
                }
                .into()
            })
        }
        Err(e) => Err(SecretError::Unreadable {
            reason: e.to_string(),
            path,
        }
        .into()),
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}
