//! What `SIGHUP` re-reads without a restart (docs/deployment.md "Reloading keys, access
//! rules and routes"): the key ring from `secret_file`, the access rules and the
//! routes. Sessions are untouched: a new key in front seals from then on, and every key
//! still in the ring opens what it sealed.
//!
//! Each of the three is held behind a [`Swap`]: a request takes the current value (a
//! read lock and a reference count) and keeps it for as long as it needs it, so a reload
//! never changes the rules under a request halfway through.

use std::sync::{Arc, RwLock};

use super::routes::RouteRules;
use super::service::Sessions;
use super::{KeyRing, SealError};
use crate::config::{AccessSettings, Config};

/// A value that a reload replaces as a whole.
#[derive(Debug)]
pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn store(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// The key ring was replaced (`secret_file` is set): how many keys it holds now.
    pub keys: Option<usize>,
    /// The new ring seals with a key the running one did not hold: instances that have
    /// not reloaded yet cannot open what this one seals from now on.
    pub new_sealing_key: bool,
    /// Settings that differ from the running ones but need a restart to apply.
    pub needs_restart: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new key ring cannot be used: {0}")]
    Keys(#[from] SealError),
    #[error(
        "the new key ring lacks the key that seals now, so every session would end: put the new key in front and keep the old one until its sessions have ended (to replace the ring whole, restart)"
    )]
    DropsSealingKey,
    #[error(
        "the new key ring cannot open the assertion signing key `{0}`, still in use: keep the key that sealed it, or run `portcullis keys rotate` and reload once the old signing key has retired (about 8 minutes)"
    )]
    DropsSigningKey(String),
    #[error("the assertion signing keys could not be read to check the new key ring: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl Sessions {
    /// Applies the key ring (when `secret_file` gives one), the access rules and the
    /// routes of `new`, a configuration loaded again. Anything else that changed is
    /// reported, not applied.
    pub async fn reload_settings(&self, new: &Config) -> Result<Reloaded, ReloadError> {
        let keys = match (&new.secret_file, &new.secret) {
            (Some(_), Some(secret)) => Some(KeyRing::new(secret)?),
            _ => None,
        };
        let running = self.keys();
        if let Some(ring) = &keys {
            // Whatever is sealed now must still open: sessions, and the assertion
            // signing keys (sealed when they were made, kept until retired).
            if !ring.opens_what_is_sealed_by(&running) {
                return Err(ReloadError::DropsSealingKey);
            }
            let records = self.store.signing_keys().await?;
            if let Some(key) = super::assertion::unopenable_key_in_use(&records, ring, self.now()) {
                return Err(ReloadError::DropsSigningKey(key.kid.clone()));
            }
        }
        let mut report = Reloaded {
            keys: keys.as_ref().map(KeyRing::len),
            new_sealing_key: keys
                .as_ref()
                .is_some_and(|ring| !running.opens_what_is_sealed_by(ring)),
            needs_restart: needs_restart(&self.config, new),
        };
        if let Some(keys) = keys {
            self.store.feed().set_ring(keys.sealing_id());
            // The DPoP key in use, sealed under the new sealing key too: once the old
            // key leaves the ring, restarted instances still find the same key.
            if let Some(dpop) = self.dpop.get()
                && let Err(e) = super::dpop::reseal(&*self.store, &keys, dpop).await
            {
                tracing::warn!(error = %e, "could not seal the DPoP key under the new key ring; do not drop the old key until a restart has");
            }
            self.keys.store(keys);
        }
        self.access.store(new.access.clone());
        self.provider_access
            .store(super::providers::provider_access(new));
        self.routes.store(RouteRules::new(&new.routes));
        self.bearer.forget_validated();
        if report.keys.is_none() && new.secret_file.is_some() {
            report.needs_restart = true;
        }
        Ok(report)
    }

    /// The key ring in force.
    pub(crate) fn keys(&self) -> Arc<KeyRing> {
        self.keys.load()
    }

    /// The access rules in force.
    pub(crate) fn access_rules(&self) -> Arc<AccessSettings> {
        self.access.load()
    }
}

/// Whether `new` differs from `running` in anything a reload does not apply.
fn needs_restart(running: &Config, new: &Config) -> bool {
    let mut comparable = new.clone();
    comparable.secret = running.secret.clone();
    comparable.secret_file = running.secret_file.clone();
    comparable.access = running.access.clone();
    comparable.routes = running.routes.clone();
    for (mine, theirs) in comparable.providers.iter_mut().zip(&running.providers) {
        mine.access = theirs.access.clone();
    }
    // `Debug` hides secrets and passwords: those are compared as they are.
    let secret = |c: &Config| {
        c.providers
            .iter()
            .map(|p| p.client_secret.as_ref().map(|s| s.0.clone()))
            .collect::<Vec<_>>()
    };
    format!("{comparable:?}") != format!("{running:?}")
        || secret(new) != secret(running)
        || new.store != running.store
}

#[cfg(test)]
mod tests {
    use super::needs_restart;
    use crate::config::Config;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let mut env = vec![
            (
                "PORTCULLIS_ISSUER".to_owned(),
                "https://id.example.com".to_owned(),
            ),
            ("PORTCULLIS_CLIENT_ID".to_owned(), "app".to_owned()),
        ];
        env.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Config::load_from(None, env).unwrap()
    }

    #[test]
    fn a_changed_secret_or_store_password_needs_a_restart_though_debug_hides_them() {
        let running = config(&[("PORTCULLIS_CLIENT_SECRET", "one")]);
        assert!(!needs_restart(&running, &running.clone()));
        assert!(needs_restart(
            &running,
            &config(&[("PORTCULLIS_CLIENT_SECRET", "two")])
        ));
        let key = crate::session::KeyRing::generate_secret();
        let store = |password: &str| {
            config(&[
                ("PORTCULLIS_STORE", &format!("postgres://u:{password}@db/x")),
                ("PORTCULLIS_SECRET", key.as_str()),
            ])
        };
        assert!(needs_restart(&store("a"), &store("b")));
        assert!(!needs_restart(&store("a"), &store("a")));
        // What a reload applies is no reason to restart.
        let rules = config(&[("PORTCULLIS_ACCESS_ALLOWED_EMAIL_DOMAINS", "example.com")]);
        assert!(!needs_restart(&config(&[]), &rules));
    }
}
