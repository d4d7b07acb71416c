//! A gateway on a free loopback port, with an in-memory (or file) SQLite store, a
//! random key ring, a manual clock and short provider timeouts.

use std::sync::Arc;
use std::time::Duration;

use portcullis::clock::ManualClock;
use portcullis::config::SecretKeys;
use portcullis::provider::Provider;
use portcullis::provider::http::ProviderHttp;
use portcullis::session::KeyRing;
use portcullis::store::Store;
use portcullis::store::sqlite::SqliteStore;
use portcullis::{Config, Gateway};
use url::Url;
use zeroize::Zeroizing;

use super::browser::{Browser, Resp};

pub struct Options {
    pub env: Vec<(String, String)>,
    /// A configuration file's text (for what only the file can set, e.g. `[[routes]]`).
    pub config_file: Option<String>,
    /// Keep the store in a file (returned in `db_path`) instead of memory.
    pub file_store: bool,
    /// Open this SQLite file (another gateway's `db_path`): two instances, one store.
    pub db_path: Option<std::path::PathBuf>,
    /// The key ring's one key (another gateway's `secret`); random when unset.
    pub secret: Option<[u8; 32]>,
    pub provider_total_timeout: Duration,
    pub jwks_min_refetch: Duration,
    /// A listener bound beforehand (when the provider must know our port first).
    pub listener: Option<std::net::TcpListener>,
    pub proxy_timeouts: portcullis::http::proxy::ProxyTimeouts,
    pub serve: portcullis::http::serve::ServeOptions,
    /// Stops the server when it fires (else it serves until the test ends).
    pub shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            config_file: None,
            file_store: false,
            db_path: None,
            secret: None,
            provider_total_timeout: Duration::from_secs(5),
            jwks_min_refetch: Duration::from_secs(30),
            listener: None,
            proxy_timeouts: Default::default(),
            serve: Default::default(),
            shutdown: None,
        }
    }
}

impl Options {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
}

pub struct TestGateway {
    /// Base URL to reach it on loopback.
    pub url: String,
    pub gateway: Arc<Gateway>,
    pub clock: ManualClock,
    pub db_path: Option<std::path::PathBuf>,
    pub secret: [u8; 32],
    /// The server's task: finished once it has stopped (see `Options::shutdown`).
    pub served: tokio::task::JoinHandle<()>,
}

/// The parameters of the authorization request the gateway sent the browser to.
#[derive(Debug, Clone)]
pub struct Authorize {
    pub url: Url,
    pub state: String,
    pub nonce: String,
    pub challenge: String,
    pub redirect_uri: String,
}

impl Authorize {
    pub fn param(&self, name: &str) -> Option<String> {
        self.url
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl TestGateway {
    pub async fn start(issuer: &str) -> Self {
        Self::start_with(issuer, Options::default()).await
    }

    pub async fn start_with(issuer: &str, options: Options) -> Self {
        portcullis::install_crypto_provider();
        let listener = match options.listener {
            Some(l) => {
                l.set_nonblocking(true).unwrap();
                tokio::net::TcpListener::from_std(l).unwrap()
            }
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let mut env = vec![("PORTCULLIS_LISTEN".to_owned(), addr.to_string())];
        // An empty issuer: the configuration file lists the providers (`[[providers]]`).
        if !issuer.is_empty() {
            env.push(("PORTCULLIS_ISSUER".to_owned(), issuer.to_owned()));
            env.push(("PORTCULLIS_CLIENT_ID".to_owned(), "app".to_owned()));
        }
        // `.ci/run` runs the suites once with the session cache (the default) and once
        // without it.
        if let Ok(entries) = std::env::var("PORTCULLIS_TEST_SESSION_CACHE_ENTRIES") {
            env.push(("PORTCULLIS_SESSION_CACHE_ENTRIES".to_owned(), entries));
        }
        env.extend(options.env);
        let file = options.config_file.as_deref().map(config_file);
        let config = Config::load_from(file.as_deref(), env).unwrap();
        let (store, db_path) = store(options.db_path, options.file_store).await;
        let secret = options
            .secret
            .unwrap_or_else(portcullis::random::random_bytes::<32>);
        let keys = KeyRing::new(&SecretKeys(vec![Zeroizing::new(secret)])).unwrap();
        let providers = providers(
            &config,
            options.jwks_min_refetch,
            options.provider_total_timeout,
        );
        let clock = ManualClock::default();
        let gateway = Arc::new(Gateway::from_parts(
            config,
            providers,
            store,
            keys,
            Arc::new(clock.clone()),
        ));
        let upstream = gateway.config().upstream.as_ref().map(|base| {
            portcullis::http::proxy::Upstream::new(
                base,
                &gateway.config().public_url,
                options.proxy_timeouts,
            )
            .unwrap()
        });
        let app = portcullis::http::router_with_upstream(gateway.clone(), upstream);
        let mut serve = options.serve;
        serve.tunnels = serve.tunnels.or_else(|| app.tunnels());
        let shutdown = options.shutdown;
        let served = tokio::spawn(async move {
            let stop = async move {
                match shutdown {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            };
            let _ = portcullis::http::serve::serve(listener, app, serve, stop).await;
        });
        Self {
            url: format!("http://{addr}"),
            gateway,
            clock,
            db_path,
            secret,
            served,
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Live sessions in the store.
    pub async fn session_count(&self) -> usize {
        self.gateway
            .store()
            .list_sessions(None, self.clock_now())
            .await
            .unwrap()
            .len()
    }

    pub fn clock_now(&self) -> i64 {
        use portcullis::clock::Clock as _;
        self.clock.now()
    }

    /// `GET /auth/login` as a navigation; returns the provider request it redirected to.
    pub async fn start_login(&self, browser: &Browser, return_to: Option<&str>) -> Authorize {
        let path = match return_to {
            Some(r) => format!(
                "/auth/login?return_to={}",
                url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
            ),
            None => "/auth/login".to_owned(),
        };
        self.start_login_at(browser, &path).await
    }

    /// Starts a login at `path` (`/auth/login?provider=…`) and reads the authorization
    /// request it redirects to.
    pub async fn start_login_at(&self, browser: &Browser, path: &str) -> Authorize {
        let resp = browser.navigate(&self.at(path)).await;
        assert_eq!(resp.status, 302, "login should redirect: {}", resp.body);
        let url = Url::parse(&resp.location().unwrap()).unwrap();
        let get = |n: &str| {
            url.query_pairs()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.into_owned())
                .unwrap()
        };
        Authorize {
            state: get("state"),
            nonce: get("nonce"),
            challenge: get("code_challenge"),
            redirect_uri: get("redirect_uri"),
            url,
        }
    }

    /// `GET /auth/callback?<query>` as a navigation.
    pub async fn callback(&self, browser: &Browser, query: &str) -> Resp {
        browser
            .navigate(&self.at(&format!("/auth/callback?{query}")))
            .await
    }

    /// The callback of provider `id` (`/auth/callback/{id}`).
    pub async fn callback_of(&self, browser: &Browser, id: &str, query: &str) -> Resp {
        browser
            .navigate(&self.at(&format!("/auth/callback/{id}?{query}")))
            .await
    }
}

impl TestGateway {
    /// Signs in through a real provider's login form: follows every redirect from
    /// `/auth/login`, posts `username`/`password` to the form, and returns the gateway's
    /// answer to the callback.
    pub async fn sign_in_through_form(
        &self,
        browser: &Browser,
        username: &str,
        password: &str,
        return_to: &str,
    ) -> Resp {
        let start = format!(
            "/auth/login?return_to={}",
            url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
        );
        let (_, resp) = follow_sign_in(
            browser,
            &self.at(&start),
            username,
            password,
            &self.at("/auth/callback"),
        )
        .await;
        resp
    }

    /// A browser signed in as `user` (whose password is its name, as the test providers
    /// have them) through the real login form.
    pub async fn signed_in_as(&self, user: &str) -> Browser {
        let browser = Browser::new();
        let resp = self.sign_in_through_form(&browser, user, user, "/").await;
        assert_eq!(resp.status, 303, "sign-in failed: {}", resp.body);
        browser
    }

    /// `POST {prefix}/logout` as an API call (JSON, with the CSRF header).
    pub async fn sign_out_api(&self, browser: &Browser) -> Resp {
        browser
            .request(
                reqwest::Method::POST,
                &self.at("/auth/logout"),
                &[("accept", "application/json"), ("x-csrf", "1")],
                None,
            )
            .await
    }
}

pub use super::browser::follow_sign_in;

/// A configuration file holding `text`, in a folder of its own.
fn config_file(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-test-config-{}",
        portcullis::random::random_token()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The store: another gateway's file, a new file, or memory.
async fn store(
    db_path: Option<std::path::PathBuf>,
    file_store: bool,
) -> (Arc<dyn Store>, Option<std::path::PathBuf>) {
    let path = match db_path {
        Some(path) => path,
        None if file_store => {
            let dir = std::env::temp_dir().join(format!(
                "portcullis-test-{}",
                portcullis::random::random_token()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            dir.join("portcullis.db")
        }
        None => return (Arc::new(SqliteStore::in_memory().await.unwrap()), None),
    };
    (
        Arc::new(SqliteStore::open(&path).await.unwrap()),
        Some(path),
    )
}

/// `code=…&state=…&iss=…`, encoded.
pub fn callback_query(code: &str, state: &str, iss: Option<&str>) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    s.append_pair("code", code).append_pair("state", state);
    if let Some(iss) = iss {
        s.append_pair("iss", iss);
    }
    s.finish()
}

/// The configured providers and the `[[bearer]]` issuers that are not providers, with
/// the test's JWKS refetch interval and call deadline.
fn providers(
    config: &Config,
    jwks_min_refetch: Duration,
    total_timeout: Duration,
) -> portcullis::provider::Providers {
    let http = || ProviderHttp::with_timeouts(Duration::from_secs(2), total_timeout).unwrap();
    let providers = portcullis::provider::ProviderSettings::all_from_config(config)
        .into_iter()
        .map(|mut settings| {
            settings.jwks_min_refetch = jwks_min_refetch;
            Provider::new(settings, http())
        })
        .collect();
    let extra = config
        .bearer
        .iter()
        .filter_map(|e| match &e.issuer {
            portcullis::config::BearerIssuer::Extra(entry) => Some(Provider::new(
                portcullis::provider::ProviderSettings::from_config(config, entry),
                http(),
            )),
            portcullis::config::BearerIssuer::Provider(_) => None,
        })
        .collect();
    portcullis::provider::Providers::new(providers).with_extra_issuers(extra)
}
