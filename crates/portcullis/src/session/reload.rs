//! What `SIGHUP` re-reads without a restart (PRODUCT.md "Operations"): the key ring from
//! `secret_file`, the access rules and the routes. Sessions are untouched: a new key in
//! front seals from then on, and every key still in the ring opens what it sealed.
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
}

impl Sessions {
    /// Applies the key ring (when `secret_file` gives one), the access rules and the
    /// routes of `new`, a configuration loaded again. Anything else that changed is
    /// reported, not applied.
    pub fn reload_settings(&self, new: &Config) -> Result<Reloaded, ReloadError> {
        let keys = match (&new.secret_file, &new.secret) {
            (Some(_), Some(secret)) => Some(KeyRing::new(secret)?),
            _ => None,
        };
        if keys
            .as_ref()
            .is_some_and(|k| !k.opens_what_is_sealed_by(&self.keys()))
        {
            return Err(ReloadError::DropsSealingKey);
        }
        let mut report = Reloaded {
            keys: keys.as_ref().map(KeyRing::len),
            needs_restart: needs_restart(&self.config, new),
        };
        if let Some(keys) = keys {
            self.keys.store(keys);
        }
        self.access.store(new.access.clone());
        self.routes.store(RouteRules::new(&new.routes));
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
    format!("{comparable:?}") != format!("{running:?}")
}
