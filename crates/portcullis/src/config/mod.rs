//! Typed settings, parsed and validated once at start-up.
//!
//! Sources, later wins: built-in defaults, the TOML file, then the environment
//! (`PORTCULLIS_<SECTION>_<KEY>`, top-level keys without a section). Every problem is
//! collected and reported as one line, so `portcullis check-config` shows them all.
//!
//! One file per section, each holding its raw shape, defaults, parsing and checks:
//! `server` (listen, public_url, prefix, public_paths), `provider` (issuer, client,
//! scopes, `[provider]`), `proxy` (upstream, `[proxy]`), `store` (store, store_prefix,
//! secret), `logging`, `session`, `access`, `csrf`, `logout`, `spa`; `env` overlays the
//! environment and `duration` parses `"30s"`-style values. The reference for users is
//! `docs/configuration.md`.

mod access;
mod assertion;
mod bearer;
mod csrf;
mod duration;
mod env;
mod limits;
mod logging;
mod logout;
mod profile;
mod provider;
mod providers;
mod proxy;
mod routes;
mod server;
mod session;
mod spa;
mod store;
#[cfg(test)]
pub(crate) mod test_support;

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use url::Url;

use crate::net::Cidr;
use crate::path::PathPattern;

pub use access::AccessSettings;
pub use bearer::{AccessTokenType, BearerIssuer, BearerSettings, DEFAULT_INTROSPECTION_CACHE};
pub use duration::parse_duration;
pub use env::{all_keys, env_name};
pub use limits::LimitSettings;
pub use limits::MAX_LIVE_TRANSACTIONS;
pub use logging::LogFormat;
pub use logout::LogoutSettings;
pub use profile::FAPI2_ALGORITHMS;
pub use provider::{
    AssertionAudience, AuthMethodSetting, ClientSecret, ParSetting, ProviderSettings,
};
pub use providers::{DEFAULT_PROVIDER_ID, ProviderConfig, TENANT_PLACEHOLDER, callback_path};
pub use routes::RouteSettings;
pub use session::SessionSettings;
pub use spa::SpaSettings;
pub use store::{SecretKeys, StoreLocation, is_valid_store_prefix};

/// All problems found in a configuration, one human sentence each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

/// The validated configuration of a gateway.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Origin the browser sees, without a trailing slash, e.g. `https://app.example.com`.
    pub public_url: Url,
    /// The identity providers, in the order written (at least one; the top-level form
    /// is one entry with the id `default`).
    pub providers: Vec<ProviderConfig>,
    /// `default_provider`: the entry that signs in without a chooser.
    pub default_provider: Option<String>,
    pub upstream: Option<Url>,
    pub store: StoreLocation,
    /// Prefix of table names (PostgreSQL) and keys (Redis), e.g. `portcullis`.
    pub store_prefix: String,
    pub secret: Option<SecretKeys>,
    pub log: String,
    pub log_format: LogFormat,
    /// Path prefix of the gateway's own endpoints, e.g. `/auth`.
    pub prefix: String,
    /// `public_paths`, parsed.
    pub public_paths: Vec<PathPattern>,
    pub session: SessionSettings,
    pub limits: LimitSettings,
    pub access: AccessSettings,
    /// `[[routes]]`, in order (file only).
    pub routes: Vec<RouteSettings>,
    /// `[[bearer]]`, in order (file only): where machine clients' access tokens count.
    pub bearer: Vec<BearerSettings>,
    /// `proxy.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<Cidr>,
    /// Path patterns whose upstream requests carry `Authorization: Bearer <access token>`.
    pub token_relay: Vec<PathPattern>,
    pub csrf_header: String,
    pub spa: SpaSettings,
    pub logout: LogoutSettings,
    /// `assertion.audience`: the `aud` of `X-Portcullis-Jwt-Assertion`.
    pub assertion_audience: String,
    /// `metrics.listen`: where `GET /metrics` is served; `None`: no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// `secret_file`: the file the key ring was read from (re-read on SIGHUP).
    pub secret_file: Option<std::path::PathBuf>,
}

impl Config {
    /// `https` public URL: cookies get `Secure` and the `__Host-` prefix.
    pub fn is_https(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// The redirect URI registered at provider `id`: public URL + prefix + `/callback`
    /// (`default`) or `/callback/{id}`.
    pub fn redirect_uri(&self, id: &str) -> String {
        format!(
            "{}{}",
            self.public_origin(),
            providers::callback_path(&self.prefix, id)
        )
    }

    /// The provider entry `id`.
    pub fn provider(&self, id: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// Whether more than one provider is configured.
    pub fn several_providers(&self) -> bool {
        self.providers.len() > 1
    }

    /// `scheme://host[:port]`, no trailing slash.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }

    /// Loads the file (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigErrors> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the file (if any) and the given environment variables.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigErrors(vec![format!(
                        "cannot read config file {}: {e}",
                        path.display()
                    )])
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigErrors(vec![format!(
                        "config file {} is not valid TOML: {}",
                        path.display(),
                        e.message()
                    )])
                })?
            }
            None => toml::Table::new(),
        };
        let mut errors = Vec::new();
        env::overlay_environment(&mut table, env, &mut errors);
        let raw: RawConfig = match toml::Value::Table(table).try_into() {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(format!("configuration: {}", e.message()));
                return Err(ConfigErrors(errors));
            }
        };
        let config = validate(raw, &mut errors);
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// The raw, unvalidated shape of the file: top-level keys, then one table per section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    public_url: Option<String>,
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Option<String>,
    upstream: Option<String>,
    store: Option<String>,
    store_prefix: Option<String>,
    secret: Option<String>,
    secret_file: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    prefix: Option<String>,
    public_paths: Option<Vec<String>>,
    #[serde(default)]
    session: session::RawSession,
    #[serde(default)]
    access: access::RawAccess,
    provider: Option<provider::RawProvider>,
    providers: Option<Vec<toml::Table>>,
    default_provider: Option<String>,
    #[serde(default)]
    proxy: proxy::RawProxy,
    #[serde(default)]
    csrf: csrf::RawCsrf,
    #[serde(default)]
    spa: spa::RawSpa,
    #[serde(default)]
    logout: logout::RawLogout,
    #[serde(default)]
    limits: limits::RawLimits,
    routes: Option<Vec<routes::RawRoute>>,
    bearer: Option<Vec<bearer::RawBearer>>,
    #[serde(default)]
    assertion: assertion::RawAssertion,
    #[serde(default)]
    metrics: RawMetrics,
}

/// The `[metrics]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

/// Checks every section, collecting problems in `errors` (in this order, so the report
/// reads top to bottom like the reference). `None` only when `listen` or `public_url`
/// is too broken for the rest to be judged.
fn validate(raw: RawConfig, errors: &mut Vec<String>) -> Option<Config> {
    let listen = server::listen(raw.listen, errors)?;
    let public_url = server::public_url(raw.public_url, listen, errors)?;
    let (providers, default_provider) = providers::validate(
        providers::RawProviders {
            issuer: raw.issuer,
            client_id: raw.client_id,
            client_secret: raw.client_secret,
            scopes: raw.scopes,
            provider: raw.provider,
            providers: raw.providers,
            default_provider: raw.default_provider,
        },
        errors,
    );
    let upstream = proxy::upstream(raw.upstream, errors);
    let store = store::location(raw.store, errors);
    let secret_file = raw
        .secret_file
        .filter(|f| !f.trim().is_empty())
        .map(std::path::PathBuf::from);
    let secret = store::secret(raw.secret, secret_file.as_deref(), &store, errors);
    let store_prefix = store::prefix(raw.store_prefix, errors);
    let log = logging::filter(raw.log);
    let log_format = logging::format(raw.log_format, errors);
    let prefix = server::prefix(raw.prefix, errors);
    let public_paths = server::public_paths(raw.public_paths, errors);
    let session = raw.session.validate(errors);
    let access = raw.access.validate(errors);
    let routes = routes::validate(raw.routes, &public_paths, &providers, errors);
    let bearer = bearer::validate(raw.bearer, &providers, &public_paths, &prefix, errors);
    let trusted_proxies = proxy::trusted_proxies(raw.proxy.trusted_proxies, errors);
    let token_relay = proxy::token_relay(raw.proxy.token_relay, &public_paths, errors);
    let csrf_header = csrf::header(raw.csrf.header, errors);
    let logout = raw.logout.validate(errors);
    let spa = raw.spa.validate(&prefix, &providers, errors);
    let fapi2 = providers.iter().any(|p| p.settings.fapi2);
    if fapi2 && public_url.scheme() != "https" && !profile::is_loopback(&public_url) {
        errors.push(
            "`provider.profile = \"fapi2\"` needs an https `public_url` (FAPI 2.0 §5.2.1: TLS everywhere; plain http only on loopback, for development)".into(),
        );
    }
    if spa.code_exchange
        && providers
            .iter()
            .any(|p| p.settings.fapi2 && spa.provider.as_deref().is_none_or(|id| id == p.id))
    {
        errors.push(
            "`spa.code_exchange` cannot be used with `provider.profile = \"fapi2\"`: the browser would hold the code and its verifier, and FAPI 2.0 keeps both with the confidential client".into(),
        );
    }
    let limits = raw.limits.validate(errors);
    let assertion_audience = assertion::audience(
        raw.assertion.audience,
        upstream.as_ref(),
        &public_url,
        errors,
    );
    let metrics_listen = server::metrics_listen(raw.metrics.listen, listen, errors);

    Some(Config {
        listen,
        public_url,
        providers,
        default_provider,
        upstream,
        store,
        store_prefix,
        secret,
        log,
        log_format,
        prefix,
        public_paths: public_paths.into_iter().map(|(_, p)| p).collect(),
        session,
        access,
        routes,
        bearer,
        trusted_proxies,
        token_relay,
        csrf_header,
        spa,
        logout,
        limits,
        assertion_audience,
        metrics_listen,
        secret_file,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::test_support::{env, minimal, repo_file};

    #[test]
    fn defaults_follow_the_product_table() {
        let c = Config::load_from(None, minimal()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.public_origin(), "http://127.0.0.1:8080");
        assert_eq!(
            c.redirect_uri("default"),
            "http://127.0.0.1:8080/auth/callback"
        );
        assert_eq!(
            c.providers[0].scopes, None,
            "the provider's metadata decides"
        );
        assert_eq!(c.store, StoreLocation::Sqlite("portcullis.db".into()));
        assert_eq!(c.prefix, "/auth");
        assert_eq!(c.session.idle_timeout, Duration::from_secs(86_400));
        assert_eq!(
            c.session.absolute_lifetime,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(c.session.refresh_before, Duration::from_secs(60));
        assert_eq!(c.session.rotation_grace, Duration::from_secs(30));
        assert_eq!(c.csrf_header, "X-CSRF");
        assert_eq!(c.spa.code_exchange_path, "/api/auth/callback");
        assert!(!c.access.require_email_verified);
        assert!(!c.is_https());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = Config::load_from(
            None,
            env(&[
                ("PORTCULLIS_LISTEN", "0.0.0.0:8080"),
                ("PORTCULLIS_SESSION_IDLE_TIMEOUT", "ten minutes"),
                ("PORTCULLIS_PROVIDER_ALLOWED_ALGORITHMS", "none"),
                ("PORTCULLIS_STORE", "redis://127.0.0.1"),
                ("PORTCULLIS_TYPO", "1"),
            ]),
        )
        .unwrap_err()
        .0;
        let all = errs.join("\n");
        for needle in [
            "public_url",
            "issuer",
            "client_id",
            "idle_timeout",
            "allowed_algorithms",
            "`secret` is required",
            "PORTCULLIS_TYPO",
        ] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
    }

    #[test]
    fn a_relay_path_may_not_overlap_a_public_path() {
        let load = |relay: &str| {
            let mut e = minimal();
            e.push((
                "PORTCULLIS_PUBLIC_PATHS".into(),
                "/api/public/*,/health".into(),
            ));
            e.push(("PORTCULLIS_PROXY_TOKEN_RELAY".into(), relay.into()));
            Config::load_from(None, e)
        };
        let e = load("/api/*").unwrap_err().0.join("\n");
        assert!(
            e.contains("`proxy.token_relay`: `/api/*` overlaps the public path"),
            "{e}"
        );
        assert!(load("/API/Public/x").is_err(), "compared ignoring case");
        assert!(load("/api/private/*").is_ok());
    }

    #[test]
    fn the_example_configurations_are_valid() {
        for name in ["keycloak", "auth0", "google"] {
            let path = repo_file(&format!("examples/{name}.toml"));
            let config = Config::load_from(Some(&path), Vec::new())
                .unwrap_or_else(|e| panic!("examples/{name}.toml: {e}"));
            assert!(config.is_https());
        }
    }
}
