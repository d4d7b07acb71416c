//! Talking to the identity provider: discovery, JWKS, the authorization URL, code
//! exchange, refresh, revocation, ID-token validation and UserInfo.
//!
//! This module never sees a cookie or an HTTP request from the browser: it gets plain
//! values from `session` and answers with typed results.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};
use zeroize::Zeroizing;

pub mod access_token;
pub mod authorize;
pub mod client_auth;
pub mod discovery;
pub mod dpop;
mod error;
pub mod fapi2;
pub mod http;
pub mod id_token;
pub mod jwks;
pub mod logout_token;
pub mod par;
mod set;
pub mod token;
pub mod userinfo;
mod verify;

pub use crate::jose::dpop::DpopKey;
pub use crate::jose::{Algorithm, client_key};
pub use authorize::Pkce;
pub use discovery::Metadata;
pub use error::{LogoutError, ProviderError};
pub use id_token::{IdTokenClaims, IdTokenError};
pub use set::Providers;
pub use token::TokenResponse;

use crate::config::ParSetting;
use client_auth::{AuthMethod, AutoAuth, ClientAuth};
use http::ProviderHttp;
use jwks::JwksCache;

/// `openid email profile`, plus `offline_access` (for a refresh token) when the provider
/// lists it in `scopes_supported`, or lists no scopes at all. Google and others answer
/// `invalid_scope` to a scope they do not know.
pub fn default_scopes(metadata: &discovery::Metadata) -> Vec<String> {
    let mut scopes: Vec<String> = ["openid", "email", "profile"].map(str::to_owned).into();
    let offered = metadata
        .scopes_supported
        .as_ref()
        .is_none_or(|s| s.iter().any(|s| s == "offline_access"));
    if offered {
        scopes.push("offline_access".to_owned());
    }
    scopes
}

/// How to reach and trust one provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The configured id (`default` for the top-level form).
    pub id: String,
    /// What the chooser shows.
    pub name: String,
    /// The issuer identifier; a template holding `{tenantid}` for a multi-tenant
    /// provider (then `allowed_tenants` lists the tenants it accepts).
    pub issuer: String,
    /// Where the metadata is; `None`: `{issuer}/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
    /// The tenants of a template issuer.
    pub allowed_tenants: Vec<String>,
    pub client_id: String,
    pub client_secret: Option<Zeroizing<String>>,
    /// Sent as written; `None`: [`default_scopes`].
    pub scopes: Option<Vec<String>>,
    pub redirect_uri: String,
    pub extra_authorize_params: BTreeMap<String, String>,
    /// `None`: the provider's advertised asymmetric algorithms.
    pub allowed_algorithms: Option<Vec<Algorithm>>,
    pub jwks_min_refetch: Duration,
    /// Audiences an ID token may name besides the client id (then `azp` must be it).
    pub trusted_audiences: Vec<String>,
    /// `provider.token_endpoint_auth_method`.
    pub auth_method: crate::config::AuthMethodSetting,
    /// The key that signs `private_key_jwt` assertions.
    pub client_key: Option<Arc<client_key::ClientKey>>,
    /// `provider.client_assertion_aud`.
    pub client_assertion_aud: crate::config::AssertionAudience,
    /// `provider.client_assertion_typ`.
    pub client_assertion_typ: Option<String>,
    /// `provider.par`.
    pub par: ParSetting,
    /// `provider.profile = "fapi2"`.
    pub fapi2: bool,
    /// `provider.dpop = "on"`.
    pub dpop: bool,
    /// `provider.assume_email_verified`.
    pub assume_email_verified: bool,
}

impl ProviderSettings {
    /// What the client of provider `entry` needs from the configuration.
    pub fn from_config(
        config: &crate::config::Config,
        entry: &crate::config::ProviderConfig,
    ) -> Self {
        let knobs = &entry.settings;
        Self {
            id: entry.id.clone(),
            name: entry.name.clone(),
            issuer: entry.issuer.clone(),
            discovery_url: entry.discovery_url.as_ref().map(|u| u.to_string()),
            allowed_tenants: entry.allowed_tenants.clone(),
            client_id: entry.client_id.clone(),
            client_secret: entry.client_secret.as_ref().map(|s| s.0.clone()),
            scopes: entry.scopes.clone(),
            redirect_uri: config.redirect_uri(&entry.id),
            extra_authorize_params: knobs.extra_authorize_params.clone(),
            allowed_algorithms: knobs.allowed_algorithms.clone(),
            jwks_min_refetch: jwks::MIN_REFETCH_INTERVAL,
            trusted_audiences: knobs.trusted_audiences.clone(),
            auth_method: knobs.token_endpoint_auth_method,
            client_key: knobs.client_key.clone(),
            client_assertion_aud: knobs.client_assertion_aud,
            client_assertion_typ: knobs.client_assertion_typ.clone(),
            par: knobs.par,
            fapi2: knobs.fapi2,
            dpop: knobs.dpop,
            assume_email_verified: knobs.assume_email_verified,
        }
    }

    /// The settings of every configured provider, in order.
    pub fn all_from_config(config: &crate::config::Config) -> Vec<Self> {
        config
            .providers
            .iter()
            .map(|entry| Self::from_config(config, entry))
            .collect()
    }

    /// Whether the issuer is a template (`{tenantid}`).
    pub fn is_multi_tenant(&self) -> bool {
        self.issuer.contains(crate::config::TENANT_PLACEHOLDER)
    }

    /// Whether `iss` is an issuer this provider speaks as: the issuer, or the template
    /// filled with an allowed tenant.
    pub fn accepts_issuer(&self, iss: &str) -> bool {
        if !self.is_multi_tenant() {
            return iss == self.issuer;
        }
        self.allowed_tenants
            .iter()
            .any(|t| self.issuer.replace(crate::config::TENANT_PLACEHOLDER, t) == iss)
    }

    /// The issuer a token with these (not yet trusted) claims must name: the issuer, or
    /// for a template the template filled with the token's `tid` when that tenant is
    /// allowed (`None` otherwise: refused, never a relaxed check).
    pub fn expected_issuer(&self, claims: &Map<String, Value>) -> Option<String> {
        if !self.is_multi_tenant() {
            return Some(self.issuer.clone());
        }
        let tid = claims.get("tid").and_then(Value::as_str)?;
        self.allowed_tenants
            .iter()
            .any(|t| t == tid)
            .then(|| self.issuer.replace(crate::config::TENANT_PLACEHOLDER, tid))
    }
}

/// Least time between two discovery attempts after a failure.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// A client of one OpenID provider.
#[derive(Debug)]
pub struct Provider {
    settings: ProviderSettings,
    http: ProviderHttp,
    metadata: RwLock<Option<Arc<Metadata>>>,
    /// The last failed discovery attempt, for back-off.
    last_discovery: Mutex<Option<(Instant, ProviderError)>>,
    jwks: JwksCache,
    /// How `auto` client authentication was decided.
    auto_auth: AutoAuth,
    /// The client authentication method last logged (0: none yet), so that it is
    /// logged once, and again only when it changes.
    auth_logged: std::sync::atomic::AtomicU8,
    /// The latest DPoP nonce of each of the provider's servers.
    dpop_nonces: dpop::Nonces,
}

impl Provider {
    pub fn new(settings: ProviderSettings, http: ProviderHttp) -> Self {
        let jwks = JwksCache::new(settings.jwks_min_refetch);
        let http = http.named(&settings.id);
        Self {
            settings,
            http,
            metadata: RwLock::new(None),
            last_discovery: Mutex::new(None),
            jwks,
            auto_auth: AutoAuth::default(),
            auth_logged: std::sync::atomic::AtomicU8::new(0),
            dpop_nonces: dpop::Nonces::default(),
        }
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    /// The issuer as configured (a template for a multi-tenant provider: users and
    /// logout lookups use the concrete `iss` of each token).
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// The configured id.
    pub fn id(&self) -> &str {
        &self.settings.id
    }

    /// Whether discovery has succeeded (for `/readyz`).
    pub async fn is_ready(&self) -> bool {
        self.metadata.read().await.is_some()
    }

    /// The provider's metadata: cached after the first success; while missing, fetched
    /// at most once per few seconds.
    pub async fn metadata(&self) -> Result<Arc<Metadata>, ProviderError> {
        if let Some(m) = self.metadata.read().await.clone() {
            return Ok(m);
        }
        let metadata = {
            // One attempt at a time; callers that waited share its outcome.
            let mut last_failure = self.last_discovery.lock().await;
            if let Some(m) = self.metadata.read().await.clone() {
                return Ok(m);
            }
            if let Some((at, error)) = &*last_failure
                && at.elapsed() < DISCOVERY_RETRY
            {
                return Err(error.clone());
            }
            match discovery::discover(
                &self.http,
                &self.settings.issuer,
                self.settings.discovery_url.as_deref(),
            )
            .await
            .and_then(|m| self.meets_profile(m))
            {
                Ok(m) => {
                    let m = Arc::new(m);
                    self.jwks.set_uri(&m.jwks_uri).await;
                    *self.metadata.write().await = Some(m.clone());
                    *last_failure = None;
                    m
                }
                Err(e) => {
                    // The back-off counts from the end of the failed attempt.
                    *last_failure = Some((Instant::now(), e.clone()));
                    return Err(e);
                }
            }
        };
        // Outside the discovery lock: a slow JWKS does not hold up other callers.
        if let Err(e) = self.jwks.refresh(&self.http).await {
            tracing::warn!(error = %e, "could not fetch the provider's JWKS yet");
        }
        Ok(metadata)
    }

    /// Under `provider.profile = "fapi2"`, metadata that cannot support the profile is
    /// refused with every reason (and discovery tried again later, like a failure).
    fn meets_profile(&self, metadata: Metadata) -> Result<Metadata, ProviderError> {
        let problems = self.profile_problems(&metadata);
        if problems.is_empty() {
            return Ok(metadata);
        }
        Err(ProviderError::NotFapi2(problems.join("; ")))
    }

    /// What `metadata` lacks for `provider.profile = "fapi2"` (nothing without it).
    pub fn profile_problems(&self, metadata: &Metadata) -> Vec<String> {
        if !self.settings.fapi2 {
            return Vec::new();
        }
        let alg = self
            .settings
            .client_key
            .as_deref()
            .and_then(|k| {
                let signs = k.algorithm(true);
                Algorithm::ALL
                    .into_iter()
                    .find(|a| a.to_jsonwebtoken() == signs)
            })
            .map_or("ES256", Algorithm::name);
        fapi2::problems(metadata, alg)
    }

    /// Where `auto` client authentication remembers what a probe found (the store).
    pub fn remember_client_auth_in(&self, memory: Arc<dyn client_auth::AuthMemory>) {
        self.auto_auth.remember_in(memory);
    }

    /// How the client authenticates at the token endpoint (see `client_auth`).
    pub async fn client_auth<'a>(&'a self, metadata: &'a Metadata) -> ClientAuth<'a> {
        let method = self
            .auto_auth
            .method(
                self.settings.auth_method,
                &self.http,
                metadata,
                &self.settings.issuer,
                &self.settings.client_id,
                self.settings.client_secret.as_deref().map(String::as_str),
                self.settings.client_key.is_some(),
                &self.settings.redirect_uri,
            )
            .await;
        let code = method as u8 + 1;
        if self
            .auth_logged
            .swap(code, std::sync::atomic::Ordering::Relaxed)
            != code
        {
            tracing::info!(
                method = method.name(),
                setting = ?self.settings.auth_method,
                "client authentication at the provider"
            );
        }
        self.auth_with(metadata, method)
    }

    /// This client's credentials, authenticating by `method`.
    fn auth_with<'a>(&'a self, metadata: &'a Metadata, method: AuthMethod) -> ClientAuth<'a> {
        let assertion =
            self.settings
                .client_key
                .as_deref()
                .map(|key| client_auth::AssertionSettings {
                    key,
                    audience: match self.settings.client_assertion_aud {
                        crate::config::AssertionAudience::Issuer => &self.settings.issuer,
                        crate::config::AssertionAudience::TokenEndpoint => &metadata.token_endpoint,
                    },
                    typ: self.settings.client_assertion_typ.as_deref(),
                    fapi2: self.settings.fapi2,
                });
        ClientAuth {
            client_id: &self.settings.client_id,
            client_secret: self.settings.client_secret.as_deref().map(String::as_str),
            method,
            assertion,
        }
    }

    /// A token request with a made-up code, authenticated by `method`, and the raw
    /// answer (`doctor` tells each method's outcome; nothing is remembered).
    pub async fn probe_client_auth(
        &self,
        method: AuthMethod,
    ) -> Result<http::Answer, ProviderError> {
        let metadata = self.metadata().await?;
        client_auth::probe_answer(
            &self.http,
            &metadata.token_endpoint,
            &self.settings.redirect_uri,
            self.auth_with(&metadata, method),
        )
        .await
    }

    /// A call refused with `invalid_client` (or a 401): an `auto` decision is made
    /// again later.
    async fn after_refusal<T>(&self, result: Result<T, ProviderError>) -> Result<T, ProviderError> {
        if let Err(ProviderError::TokenRejected(e) | ProviderError::ParRefused(e)) = &result
            && (e == "invalid_client" || e == "http_401")
        {
            self.auto_auth
                .forget(
                    &self.settings.issuer,
                    &self.settings.client_id,
                    self.settings.client_secret.as_deref().map(String::as_str),
                )
                .await;
        }
        result
    }

    /// The scopes a login asks for: the configured ones, else [`default_scopes`].
    pub async fn requested_scopes(&self) -> Result<Vec<String>, ProviderError> {
        let metadata = self.metadata().await?;
        Ok(self.scopes_for(&metadata))
    }

    fn scopes_for(&self, metadata: &discovery::Metadata) -> Vec<String> {
        self.settings
            .scopes
            .clone()
            .unwrap_or_else(|| default_scopes(metadata))
    }

    /// Where the browser goes for one login: the authorization URL with every
    /// parameter, or, with PAR (`provider.par`), with only `client_id` and the
    /// `request_uri` the provider gave for the pushed parameters, and how long that
    /// stays usable.
    pub async fn authorization(
        &self,
        state: &str,
        nonce: &str,
        code_challenge: &str,
        dpop_key: Option<&DpopKey>,
        login_hint: Option<&str>,
    ) -> Result<authorize::Authorization, ProviderError> {
        let metadata = self.metadata().await?;
        let scopes = self.scopes_for(&metadata);
        let request = authorize::AuthorizeRequest {
            client_id: &self.settings.client_id,
            redirect_uri: &self.settings.redirect_uri,
            scopes: &scopes,
            state,
            nonce,
            code_challenge,
            extra: &self.settings.extra_authorize_params,
            dpop_jkt: dpop_key.map(DpopKey::jkt),
            login_hint,
        };
        let Some(endpoint) = self.par_endpoint(&metadata)? else {
            return Ok(authorize::Authorization {
                url: authorize::authorize_url(&metadata, &request)?,
                expires_in: None,
            });
        };
        let params = request.params();
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let pushed = par::push(
            &self.http,
            endpoint,
            self.client_auth(&metadata).await,
            &params,
        );
        let pushed = self.after_refusal(pushed.await).await?;
        // FAPI 2.0 Security Profile §5.3.2.2: a request_uri lives under 600 s.
        if self.settings.fapi2 && pushed.expires_in >= 600 {
            return Err(ProviderError::BadResponse(format!(
                "the PAR answer's expires_in ({} s) is 600 s or more, which provider.profile = fapi2 refuses",
                pushed.expires_in
            )));
        }
        Ok(authorize::Authorization {
            url: authorize::pushed_url(&metadata, &self.settings.client_id, &pushed.request_uri)?,
            expires_in: Some(pushed.expires_in),
        })
    }

    /// The PAR endpoint when this login pushes its request (`provider.par`), `None`
    /// when it does not; an error when the setting and the metadata disagree.
    fn par_endpoint<'m>(&self, metadata: &'m Metadata) -> Result<Option<&'m str>, ProviderError> {
        let endpoint = metadata.pushed_authorization_request_endpoint.as_deref();
        let required = metadata.require_pushed_authorization_requests;
        match (self.settings.par, endpoint) {
            (ParSetting::Never, _) if required => Err(ProviderError::BadResponse(
                "the provider requires pushed authorization requests \
                 (require_pushed_authorization_requests) and provider.par is never"
                    .into(),
            )),
            (ParSetting::Never, _) => Ok(None),
            (ParSetting::Auto, _) if !required => Ok(None),
            (_, Some(endpoint)) => Ok(Some(endpoint)),
            (_, None) => Err(ProviderError::BadResponse(
                "the provider lists no pushed_authorization_request_endpoint, which \
                 provider.par needs"
                    .into(),
            )),
        }
    }

    /// RFC 9207 check of the callback's `iss` parameter.
    pub async fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), ProviderError> {
        let metadata = self.metadata().await?;
        authorize::check_response_issuer(&metadata, &self.settings, iss)
    }

    /// DPoP for a call: the key and this provider's nonces.
    fn dpop<'a>(&'a self, key: Option<&'a DpopKey>) -> Option<dpop::Dpop<'a>> {
        key.map(|key| dpop::Dpop {
            key,
            nonces: &self.dpop_nonces,
        })
    }

    /// Redeems a code at the token endpoint (bound to `dpop_key` when given).
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        dpop_key: Option<&DpopKey>,
    ) -> Result<TokenResponse, ProviderError> {
        let metadata = self.metadata().await?;
        let answer = token::exchange_code(
            &self.http,
            &metadata.token_endpoint,
            self.client_auth(&metadata).await,
            code,
            verifier,
            redirect_uri,
            self.dpop(dpop_key),
        )
        .await;
        self.after_refusal(answer).await
    }

    /// Uses a refresh token (the new tokens bound to `dpop_key` when given).
    pub async fn refresh(
        &self,
        refresh_token: &str,
        dpop_key: Option<&DpopKey>,
    ) -> Result<TokenResponse, ProviderError> {
        let metadata = self.metadata().await?;
        let answer = token::refresh(
            &self.http,
            &metadata.token_endpoint,
            self.client_auth(&metadata).await,
            refresh_token,
            self.dpop(dpop_key),
        )
        .await;
        self.after_refusal(answer).await
    }

    /// Revokes a refresh token when the provider offers RFC 7009; `Ok(false)` if not.
    pub async fn revoke_refresh_token(&self, refresh_token: &str) -> Result<bool, ProviderError> {
        let metadata = self.metadata().await?;
        let Some(endpoint) = &metadata.revocation_endpoint else {
            return Ok(false);
        };
        let mut auth = self.client_auth(&metadata).await;
        auth.method = client_auth::at_endpoint(
            auth.method,
            metadata
                .revocation_endpoint_auth_methods_supported
                .as_deref(),
        );
        token::revoke(&self.http, endpoint, auth, refresh_token, "refresh_token").await?;
        Ok(true)
    }

    /// The provider's `end_session_endpoint` with the parameters of RP-Initiated Logout
    /// 1.0 §2, or `None` when the provider has no such endpoint.
    pub async fn end_session_url(
        &self,
        id_token_hint: Option<&str>,
        state: &str,
        post_logout_redirect_uri: &str,
    ) -> Result<Option<url::Url>, ProviderError> {
        let metadata = self.metadata().await?;
        let Some(endpoint) = &metadata.end_session_endpoint else {
            return Ok(None);
        };
        let mut url = url::Url::parse(endpoint)
            .map_err(|_| ProviderError::BadResponse("end_session_endpoint is not a URL".into()))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                q.append_pair("id_token_hint", hint);
            }
            q.append_pair("client_id", &self.settings.client_id);
            q.append_pair("state", state);
            q.append_pair("post_logout_redirect_uri", post_logout_redirect_uri);
        }
        Ok(Some(url))
    }

    /// Claims from the UserInfo endpoint, when the provider has one. A token bound to
    /// `dpop_key` goes with the DPoP scheme and a proof.
    pub async fn userinfo(
        &self,
        access_token: &str,
        subject: &str,
        dpop_key: Option<&DpopKey>,
    ) -> Result<Option<Map<String, Value>>, ProviderError> {
        let metadata = self.metadata().await?;
        match &metadata.userinfo_endpoint {
            Some(endpoint) => userinfo::fetch_userinfo(
                &self.http,
                endpoint,
                access_token,
                subject,
                self.dpop(dpop_key),
            )
            .await
            .map(Some),
            None => Ok(None),
        }
    }
}
