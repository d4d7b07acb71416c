//! The session service: the one owner of the store (behind the session cache), the
//! key ring, the provider client, refresh leases and the clock. `http` asks it for
//! everything about sessions; nothing below it knows it exists
//! (`http → session → store / provider`).

use std::sync::Arc;

use super::cache::CachedStore;
use super::refresh::Refreshes;
use super::seal::KeyRing;
use crate::clock::{Clock, UnixTime};
use crate::config::Config;
use crate::provider::{Provider, Providers};
use crate::store::on_runtime::OnRuntime;
use crate::store::{Store, StoreError};

/// Sign-in, lookup, refresh, logout and administration of sessions. The methods live
/// beside their rules: `login`, `lookup`, `refresh`, `logout`, `admin`.
#[derive(Debug)]
pub struct Sessions {
    pub(crate) config: Arc<Config>,
    /// Every configured provider; a session, a sign-in and a callback each name theirs.
    pub(crate) providers: Providers,
    /// The store, behind the session cache unless `session.cache_entries` is 0.
    pub(crate) store: Arc<dyn Store>,
    /// The key ring: replaced by a reload (`secret_file`).
    pub(crate) keys: super::reload::Swap<KeyRing>,
    /// `[access]`: replaced by a reload.
    pub(crate) access: super::reload::Swap<crate::config::AccessSettings>,
    /// Each provider's own access rules: replaced by a reload.
    pub(crate) provider_access: super::reload::Swap<super::providers::ProviderAccess>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Refreshes in flight and the breaker that keeps a failing provider from a storm.
    pub(crate) refreshes: Refreshes,
    pub(crate) events: SecurityEvents,
    /// The runtime the service was made on (the process's main one): refreshes run
    /// there, so that one whose request went away is never cut short by the end of a
    /// serving thread's runtime. `None` when made outside a runtime.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// Sessions with open WebSockets, closed when the session ends (`ends`).
    pub(crate) watches: super::ends::Watches,
    /// `[[routes]]`: who may reach which paths.
    pub(crate) routes: super::reload::Swap<super::routes::RouteRules>,
    /// The signed identity assertion and its keys.
    pub(crate) assertions: super::assertion::Assertions,
    /// The request path's metric handles (registered at zero when made).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The gateway's DPoP key, read or made at first use (`provider.dpop`).
    pub(crate) dpop: tokio::sync::OnceCell<Arc<crate::jose::dpop::DpopKey>>,
    /// The upstream's latest DPoP nonce, for relayed bound tokens.
    pub(crate) relay_nonces: crate::provider::dpop::Nonces,
    /// `[[bearer]]`: machine clients' access tokens, and the ones validated.
    pub(crate) bearer: super::bearer::BearerTokens,
}

impl Sessions {
    /// Puts the session cache in front of `store` (unless configured off) and takes
    /// ownership of the parts.
    pub fn new(
        config: Arc<Config>,
        providers: Providers,
        store: Arc<dyn Store>,
        keys: KeyRing,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let ids: Vec<&str> = config.providers.iter().map(|p| p.id.as_str()).collect();
        let metrics = Arc::new(crate::metrics::Metrics::register(&ids));
        let runtime = tokio::runtime::Handle::try_current().ok();
        // Store connections live on the runtime the service was made on (see
        // `store::on_runtime`); the cache in front keeps hits on the calling thread.
        let store = match &runtime {
            Some(runtime) => OnRuntime::wrap(store, runtime.clone()),
            None => store,
        };
        let store: Arc<dyn Store> = match config.session.cache_entries {
            0 => store,
            entries => CachedStore::new(store, entries, config.session.cache_mb),
        };
        for provider in providers.iter() {
            provider.remember_client_auth_in(Arc::new(StoreMemory(store.clone())));
        }
        // G08: heartbeats name this instance's key ring, so that an instance on another
        // ring knows it is not alone.
        store.feed().set_ring(keys.sealing_id());
        Self {
            providers,
            store,
            keys: super::reload::Swap::new(keys),
            access: super::reload::Swap::new(config.access.clone()),
            provider_access: super::reload::Swap::new(super::providers::provider_access(&config)),
            clock,
            refreshes: Refreshes::default(),
            events: SecurityEvents::default(),
            runtime,
            watches: Default::default(),
            routes: super::reload::Swap::new(super::routes::RouteRules::new(&config.routes)),
            assertions: super::assertion::Assertions::new(
                config.public_origin(),
                config.assertion_audience.clone(),
            ),
            metrics,
            dpop: tokio::sync::OnceCell::new(),
            relay_nonces: Default::default(),
            bearer: super::bearer::BearerTokens::new(config.bearer.clone()),
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store as the session layer sees it (through the cache when it is on).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every configured provider.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// The provider `id` (a session's, a callback's, a login's choice).
    pub fn provider(&self, id: &str) -> Result<&Provider, super::SessionError> {
        self.providers
            .get(id)
            .ok_or(super::SessionError::UnknownProvider)
    }

    /// Security events counted since start (see `docs/sessions.md`).
    pub fn security_events(&self) -> &SecurityEvents {
        &self.events
    }

    /// The request path's metric handles.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Sets the gauges that describe a state rather than count events (read when
    /// `/metrics` is scraped).
    pub fn observe(&self) {
        crate::metrics::change_feed_up(self.store.feed().is_live());
    }

    pub(crate) fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Whether any `[[routes]]` are configured (else [`Sessions::check_route`] passes
    /// everything and need not be asked).
    pub fn has_routes(&self) -> bool {
        !self.routes.load().is_empty()
    }

    /// The scope a session was granted, for a route's `required_scopes`: what the
    /// provider said it granted, else what it was asked for (the configured `scopes`,
    /// else `openid email profile`).
    pub fn session_scopes(&self, record: &crate::store::SessionRecord) -> Vec<String> {
        if let Some(granted) = &record.tokens.granted_scope {
            return granted.split(' ').map(str::to_owned).collect();
        }
        self.config
            .provider(&record.provider_id)
            .and_then(|p| p.scopes.clone())
            .unwrap_or_else(|| ["openid", "email", "profile"].map(str::to_owned).into())
    }

    /// `[[routes]]` for a signed-in request or a token's: a refusal is a security event
    /// (`who`: the session's short hash, or `token`, and the identity's id).
    pub fn check_route(
        &self,
        method: &axum::http::Method,
        overrides: &[Option<axum::http::Method>],
        path: &crate::path::NormalizedPath,
        caller: &super::routes::Caller<'_>,
        who: (&str, uuid::Uuid),
    ) -> Result<(), super::routes::RouteRefusal> {
        let verdict = self.routes.load().check(method, overrides, path, caller);
        if let Err(refusal) = &verdict {
            let reason = match refusal {
                super::routes::RouteRefusal::Method => "method",
                super::routes::RouteRefusal::Access(denied) => denied.code(),
                super::routes::RouteRefusal::Scope(_) => "insufficient_scope",
            };
            self.events.count("route_refused");
            tracing::warn!(
                event = "route_refused",
                session = who.0,
                user = %who.1,
                %method,
                path = path.as_str(),
                reason,
                "security event: a route refused a signed-in user"
            );
        }
        verdict
    }

    /// Reads the assertion signing keys if they were never read (making the first one
    /// on an empty store), or when this instance's copy may lack a key that signs
    /// elsewhere by now; re-reads them in the background when they are merely due.
    /// One reading at a time; after a failure the current keys stay for an interval.
    pub async fn prepare_assertion_keys(
        self: &Arc<Self>,
    ) -> Result<(), super::assertion::AssertionError> {
        let now = self.now();
        if !self.assertions.stale(now) {
            return Ok(());
        }
        if !self.assertions.has_keys() {
            return self
                .assertions
                .reload(self.store.as_ref(), &self.keys(), now)
                .await;
        }
        if !self.assertions.begin_reload() {
            return Ok(());
        }
        let this = self.clone();
        let reading = async move {
            let failed = match this
                .assertions
                .reload(this.store.as_ref(), &this.keys(), now)
                .await
            {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "could not re-read the assertion signing keys; the current ones stay");
                    Some(now)
                }
            };
            this.assertions.end_reload(failed);
        };
        if self.assertions.too_old(now) {
            reading.await;
        } else {
            match &self.runtime {
                Some(rt) => drop(rt.spawn(reading)),
                None => drop(tokio::spawn(reading)),
            }
        }
        Ok(())
    }

    /// `X-Portcullis-Jwt-Assertion` for a signed-in request (see `session::assertion`).
    pub async fn assertion(
        self: &Arc<Self>,
        active: &super::ActiveSession,
    ) -> Result<axum::http::HeaderValue, super::assertion::AssertionError> {
        self.prepare_assertion_keys().await?;
        self.assertions.for_session(
            &active.record,
            active.expires_at,
            self.config.session.idle_timeout.as_secs() as i64,
            self.now(),
        )
    }

    /// `{prefix}/jwks.json`: the keys are read first when due (not in the background:
    /// a verifier asking right after a rotation sees the new key).
    pub async fn assertion_jwks(
        self: &Arc<Self>,
    ) -> Result<serde_json::Value, super::assertion::AssertionError> {
        let now = self.now();
        if self.assertions.stale(now) && self.assertions.begin_reload() {
            let result = self
                .assertions
                .reload(self.store.as_ref(), &self.keys(), now)
                .await;
            self.assertions
                .end_reload(result.as_ref().err().map(|_| now));
            if let Err(e) = result {
                if !self.assertions.has_keys() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "could not re-read the assertion signing keys; the current ones are published");
            }
        }
        if !self.assertions.has_keys() {
            // Another reading is under way and none finished yet.
            self.assertions
                .reload(self.store.as_ref(), &self.keys(), now)
                .await?;
        }
        Ok(self.assertions.jwks(now))
    }

    /// G08: false while the store holds an assertion signing key newer than any this
    /// instance's key ring opens: it is stale, another instance runs on a newer ring.
    ///
    /// The keys are read (and the first or an emergency key made) first: an instance
    /// started with a new secret is out of the load balancer until it is ready, so its
    /// readiness check is where its emergency key is made.
    pub async fn key_ring_is_current(self: &Arc<Self>) -> Result<bool, StoreError> {
        if let Err(e) = self.prepare_assertion_keys().await {
            // Said by the requests that need a key; readiness probes come often.
            tracing::debug!(error = %e, "the assertion signing keys cannot be read");
        }
        let records = self.store.signing_keys().await?;
        Ok(!super::assertion::stale_ring(&records, &self.keys()))
    }

    /// `portcullis keys prune`: the stored signing keys no entry of this key ring opens;
    /// with `delete`, they are removed. Refused (`Ok(None)`) on a stale ring: a newer key
    /// than any it opens is in the store, which a running instance on another ring signs
    /// with (pruning with the wrong secret would take that key away).
    pub async fn prune_signing_keys(
        &self,
        delete: bool,
    ) -> Result<Option<Vec<crate::store::SigningKeyRecord>>, StoreError> {
        let records = self.store.signing_keys().await?;
        let ring = self.keys();
        if super::assertion::stale_ring(&records, &ring) {
            return Ok(None);
        }
        let unreadable: Vec<crate::store::SigningKeyRecord> =
            super::assertion::unreadable_keys(&records, &ring)
                .into_iter()
                .cloned()
                .collect();
        if delete {
            for key in &unreadable {
                self.store.delete_signing_key(key.generation).await?;
            }
        }
        Ok(Some(unreadable))
    }

    /// `portcullis keys rotate`: adds the next signing key (see `session::assertion`).
    pub async fn rotate_assertion_key(
        &self,
    ) -> Result<crate::store::SigningKeyRecord, super::assertion::AssertionError> {
        super::assertion::rotate(self.store.as_ref(), &self.keys(), self.now()).await
    }

    /// Deletes expired sessions, transactions, leases and replay entries.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.store.purge_expired(self.now()).await
    }
}

/// Security events: logged at `warn` with a stable `event` name, and counted.
#[derive(Debug, Default)]
pub struct SecurityEvents {
    counts: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl SecurityEvents {
    /// Counts one `event`. The caller logs it with its context.
    pub(crate) fn count(&self, event: &'static str) {
        crate::metrics::security_event(event);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(event).or_default() += 1;
    }

    /// How often each event happened since start.
    pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `auto` client authentication remembers what a probe found in the store, so that
/// every instance probes once per secret.
#[derive(Debug)]
struct StoreMemory(Arc<dyn Store>);

#[async_trait::async_trait]
impl crate::provider::client_auth::AuthMemory for StoreMemory {
    async fn recall(&self, key: &str) -> Option<String> {
        match self.0.get_setting(key).await {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the client authentication method from the store");
                None
            }
        }
    }

    async fn remember(&self, key: &str, method: &str) {
        if let Err(e) = self.0.put_setting(key, method).await {
            tracing::warn!(error = %e, "could not keep the client authentication method in the store");
        }
    }

    async fn forget(&self, key: &str) {
        if let Err(e) = self.0.delete_setting(key).await {
            tracing::warn!(error = %e, "could not forget the client authentication method in the store");
        }
    }
}
