//! Several `portcullis serve` processes on one shared store (PostgreSQL, Redis) behind
//! one public URL, against the real npm `oidc-provider`, with the real clock:
//! cases M01–M05, F03 and O05 across instances, S09 (docs/security.md).
//!
//! Each test runs once per engine (`PORTCULLIS_TEST_POSTGRES_URL`,
//! `PORTCULLIS_TEST_REDIS_URL`); an engine that is not configured is skipped with one
//! line. Every test uses its own store prefix, so tests run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_test_support::SendJson as _;
use portcullis_test_support::free_port;
use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use portcullis_test_support::browser;
use portcullis_test_support::oidc_provider;
use portcullis_test_support::upstream;

use browser::{Browser, Resp, follow_sign_in};
use oidc_provider::RealProvider;
use upstream::TestUpstream;

// ---------------------------------------------------------------------------
// The cluster: a provider, an upstream, and gateway processes on one store.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Postgres,
    Redis,
}

impl Engine {
    /// The test server's URL, or `None` (and one line) when it is not configured.
    fn url(self) -> Option<String> {
        let var = match self {
            Self::Postgres => "PORTCULLIS_TEST_POSTGRES_URL",
            Self::Redis => "PORTCULLIS_TEST_REDIS_URL",
        };
        let url = std::env::var(var).ok();
        if url.is_none() {
            eprintln!("skipped: set {var} to run the several-instances tests on {self:?}");
        }
        url
    }
}

/// One `portcullis serve` process; killed when dropped.
struct Instance {
    url: String,
    child: Child,
}

impl Instance {
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGKILL: no graceful shutdown, no lease released.
    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Clusters running at once: each is a provider and two or three gateway processes, and
/// the machine may have two cores.
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

struct Cluster {
    _slot: tokio::sync::SemaphorePermit<'static>,
    op: RealProvider,
    _up: TestUpstream,
    /// What every instance is configured with (the CLI needs it too).
    env: Vec<(String, String)>,
    instances: Vec<Instance>,
    /// The browser-facing origin: the first instance's address.
    public: String,
    /// A free port whose callback the provider also accepts: for an instance of its own
    /// public URL (`spawn_with`).
    spare: u16,
    store: String,
    prefix: String,
}

fn random_prefix() -> String {
    let bytes = portcullis::random::random_bytes::<8>();
    format!(
        "t{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn portcullis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

struct Setup<'a> {
    /// Access-token lifetime at the provider, seconds.
    access_ttl: &'a str,
    provider_env: &'a [(&'a str, &'a str)],
    instances: usize,
    /// Extra gateway settings.
    env: &'a [(&'a str, &'a str)],
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            access_ttl: "300",
            provider_env: &[],
            instances: 3,
            env: &[],
        }
    }
}

impl Cluster {
    /// `instances` gateways with the default setup.
    async fn of(store: String, instances: usize) -> Option<Self> {
        let setup = Setup {
            instances,
            ..Setup::default()
        };
        Self::start(store, setup).await
    }

    async fn start(store: String, setup: Setup<'_>) -> Option<Self> {
        let slot = SLOTS.acquire().await.unwrap();
        let ports: Vec<u16> = (0..setup.instances).map(|_| free_port()).collect();
        let public = format!("http://127.0.0.1:{}", ports[0]);
        let spare = free_port();
        let client = json!([{
            "client_id": "app",
            "token_endpoint_auth_method": "none",
            "redirect_uris": [
                format!("{public}/auth/callback"),
                format!("http://127.0.0.1:{spare}/auth/callback"),
            ],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "backchannel_logout_uri": format!("{public}/auth/backchannel-logout"),
            "backchannel_logout_session_required": true,
        }]);
        let mut op_env = vec![
            ("ACCESS_TOKEN_TTL", setup.access_ttl),
            ("ID_TOKEN_TTL", "86400"),
        ];
        op_env.extend_from_slice(setup.provider_env);
        let op = RealProvider::start(client, &op_env).await?;
        let up = TestUpstream::start().await;
        let secret = base64::engine::general_purpose::STANDARD
            .encode(portcullis::random::random_bytes::<32>());
        let prefix = random_prefix();
        let mut env: Vec<(String, String)> = [
            ("PORTCULLIS_ISSUER", op.issuer.as_str()),
            ("PORTCULLIS_CLIENT_ID", "app"),
            ("PORTCULLIS_PUBLIC_URL", public.as_str()),
            ("PORTCULLIS_UPSTREAM", up.url.as_str()),
            ("PORTCULLIS_STORE", store.as_str()),
            ("PORTCULLIS_STORE_PREFIX", prefix.as_str()),
            ("PORTCULLIS_SECRET", secret.as_str()),
            ("PORTCULLIS_LOG", "warn"),
        ]
        .iter()
        .chain(setup.env)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        // `.ci/run` runs these once with the session cache and once without it.
        if let Ok(entries) = std::env::var("PORTCULLIS_TEST_SESSION_CACHE_ENTRIES") {
            env.push(("PORTCULLIS_SESSION_CACHE_ENTRIES".to_owned(), entries));
        }
        env.sort();
        let mut cluster = Self {
            _slot: slot,
            op,
            _up: up,
            env,
            instances: Vec::new(),
            public,
            spare,
            store,
            prefix,
        };
        for port in ports {
            let instance = cluster.spawn(port).await;
            cluster.instances.push(instance);
        }
        Some(cluster)
    }

    /// Starts one more `portcullis serve` on `port` with the cluster's settings.
    async fn spawn(&self, port: u16) -> Instance {
        self.spawn_with(port, &[]).await
    }

    /// Starts one more `portcullis serve` with some settings of its own, without
    /// waiting for it to be ready (only for it to answer `/healthz`).
    async fn spawn_unready(&self, port: u16, settings: &[(&str, &str)]) -> Instance {
        let child = portcullis()
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(settings.iter().copied())
            .env("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let instance = Instance {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(instance.at("/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                Instant::now() < deadline,
                "instance on {port} not up in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        instance
    }

    /// [`Cluster::spawn`] with some settings of its own.
    async fn spawn_with(&self, port: u16, settings: &[(&str, &str)]) -> Instance {
        let mut cmd = portcullis();
        cmd.arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(settings.iter().copied())
            .env("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            // The outage tests make the gateways log store errors by design: shown only
            // on request.
            .stderr(if std::env::var_os("PORTCULLIS_TEST_SHOW_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let child = cmd.spawn().unwrap();
        let mut instance = Instance {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = match reqwest::get(instance.at("/readyz")).await {
                Ok(r) if r.status() == 200 => return instance,
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            // A gateway that exited (its port taken meanwhile, a bad setting) says so now,
            // not after the deadline.
            if let Ok(Some(status)) = instance.child.try_wait() {
                panic!(
                    "instance on {port} exited ({status}) before it was ready; last /readyz: {last}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "instance on {port} not ready in 30 s; last /readyz: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs `user` in through the first instance (the public URL).
    async fn sign_in(&self, browser: &Browser, user: &str) {
        let (_, resp) = follow_sign_in(
            browser,
            &format!("{}/auth/login?return_to=%2F", self.public),
            user,
            user,
            &format!("{}/auth/callback", self.public),
        )
        .await;
        assert_eq!(resp.status, 303, "sign-in: {}", resp.body);
    }

    async fn events(&self) -> Value {
        self.op.events().await
    }

    async fn refresh_grants(&self) -> u64 {
        self.events().await["grants"]["refresh_token"]
            .as_u64()
            .unwrap()
    }

    async fn count(&self, event: &str) -> u64 {
        self.events().await["counts"][event].as_u64().unwrap()
    }

    /// `portcullis sessions …` with the cluster's settings.
    async fn cli(&self, args: &[&str]) -> std::process::Output {
        portcullis()
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .await
            .unwrap()
    }
}

/// An API call (401 JSON rather than a redirect when signed out).
async fn api(instance: &Instance, browser: &Browser, path: &str) -> Resp {
    browser
        .get(&instance.at(path), &[("accept", "application/json")])
        .await
}

/// The `X-User-Id` the upstream saw.
fn user_id_seen(resp: &Resp) -> String {
    upstream::echoed(&resp.json(), "x-user-id")
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Polls `instance` until it refuses the browser's session; returns how long it took.
async fn refused_within(instance: &Instance, browser: &Browser, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        // The contract is about when a request is decided, which is after it was sent:
        // an answer to a request sent within the limit may still be the old one.
        let sent = start.elapsed();
        let resp = api(instance, browser, "/whoami").await;
        if resp.status == 401 {
            return sent;
        }
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert!(
            sent < limit,
            "{} still accepts an ended session after {limit:?}",
            instance.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits, bounded, for the access token to be due for refresh (the real clock).
async fn until_refresh_due(access_ttl_secs: u64) {
    // Due from half the lifetime (min(refresh_before, lifetime / 2) before expiry).
    tokio::time::sleep(Duration::from_millis(access_ttl_secs * 500 + 1_100)).await;
}

macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(url) = super::Engine::Postgres.url() {
                        super::$name(url).await;
                    }
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(url) = super::Engine::Redis.url() {
                        super::$name(url).await;
                    }
                }
            )*
        }
    };
}

on_every_engine!(
    m01_sign_in_on_a_use_on_b_sign_out_on_c,
    m01_admin_revoke_and_back_channel_logout_reach_every_instance,
    m02_fifty_expired_calls_over_two_instances_refresh_once,
    m03_a_slow_provider_beyond_the_lease_still_refreshes_once,
    m03_a_killed_lease_holder_is_replaced_and_nobody_is_signed_out,
    m05_the_store_holds_no_token_session_id_or_code,
    m01_refresh_and_the_theft_rule_on_a_reach_a_warm_b,
    m01_a_killed_feed_connection_never_leaves_a_revoked_session_usable,
    w02_a_websocket_on_a_closes_when_its_session_ends_elsewhere,
    assertions_from_any_instance_verify_with_the_keys_of_any_other,
    store_copy_from_sqlite_keeps_cookies_and_user_ids,
    g08_two_key_rings_on_one_store_never_delete_each_others_sessions,
    g09_a_changed_email_reaches_a_cached_session_on_another_instance,
    dpop_one_key_for_every_instance,
);

// ---------------------------------------------------------------------------
// M01, S09, O05: one session, every instance.

async fn m01_sign_in_on_a_use_on_b_sign_out_on_c(store: String) {
    let Some(c) = Cluster::start(store, Setup::default()).await else {
        return;
    };
    let [a, b, cc] = &c.instances[..] else {
        unreachable!()
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let on_a = api(a, &browser, "/whoami").await;
    let on_b = api(b, &browser, "/whoami").await;
    assert_eq!((on_a.status, on_b.status), (200, 200), "{}", on_b.body);
    assert_eq!(
        user_id_seen(&on_a),
        user_id_seen(&on_b),
        "one user everywhere"
    );
    assert!(!user_id_seen(&on_b).is_empty());
    // A copy of the cookie: what is left in another tab, or what a thief holds.
    let copy = Browser::new();
    copy.set_cookie("portcullis", &browser.cookie("portcullis").unwrap());

    // Sign out on C (same origin: the public URL).
    let out = browser
        .request(
            reqwest::Method::POST,
            &cc.at("/auth/logout"),
            &[
                ("origin", c.public.as_str()),
                ("accept", "application/json"),
            ],
            None,
        )
        .await;
    assert!(out.status < 400, "logout: {} {}", out.status, out.body);
    for instance in [a, b, cc] {
        refused_within(instance, &copy, Duration::from_secs(1)).await;
    }
}

async fn m01_admin_revoke_and_back_channel_logout_reach_every_instance(store: String) {
    let Some(c) = Cluster::start(store, Setup::default()).await else {
        return;
    };
    // Admin revoke through the CLI (another process).
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let user = user_id_seen(&api(&c.instances[1], &browser, "/whoami").await);
    let listed = c.cli(&["sessions", "list", "--user", &user]).await;
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains(&user)).count(),
        1,
        "sessions list: {listed}"
    );
    let out = c.cli(&["sessions", "revoke", "--user", &user]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for instance in &c.instances {
        refused_within(instance, &browser, Duration::from_secs(1)).await;
    }

    // Back-channel logout: the provider tells the first instance (O05).
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    for instance in &c.instances {
        assert_eq!(api(instance, &browser, "/whoami").await.status, 200);
    }
    let logout: Value = reqwest::Client::new()
        .post(format!("{}/test/logout/alice", c.op.issuer))
        .send_json()
        .await;
    assert_eq!(logout["backchannel"][0]["ok"], json!(true), "{logout}");
    for instance in &c.instances {
        refused_within(instance, &browser, Duration::from_secs(1)).await;
    }
}

/// A WebSocket through `instance` to the upstream's echo, as `browser`.
async fn open_websocket(instance: &Instance, browser: &Browser, origin: &str) -> TcpStream {
    let addr = instance.url.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: {origin}\r\nCookie: portcullis={}\r\n\r\n",
        browser.cookie("portcullis").unwrap()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = portcullis_test_support::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// W02 across processes: a WebSocket through instance A closes within seconds when its
/// session ends by a sign-out on instance B, and by an admin revoke from another process
/// (the CLI) — the store's change feed reaches A's tunnels.
async fn w02_a_websocket_on_a_closes_when_its_session_ends_elsewhere(store: String) {
    let Some(c) = Cluster::of(store, 2).await else {
        return;
    };
    let [a, b] = &c.instances[..] else {
        unreachable!()
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let mut socket = open_websocket(a, &browser, &c.public).await;
    let out = browser
        .request(
            reqwest::Method::POST,
            &b.at("/auth/logout"),
            &[
                ("origin", c.public.as_str()),
                ("accept", "application/json"),
            ],
            None,
        )
        .await;
    assert!(out.status < 400, "logout: {} {}", out.status, out.body);
    portcullis_test_support::closed_within(&mut socket, Duration::from_secs(5)).await;

    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let user = user_id_seen(&api(b, &browser, "/whoami").await);
    let mut socket = open_websocket(a, &browser, &c.public).await;
    let out = c.cli(&["sessions", "revoke", "--user", &user]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    portcullis_test_support::closed_within(&mut socket, Duration::from_secs(5)).await;
}

/// Instances on one store publish the same assertion keys (the first one made
/// insert-if-absent on the empty store) and sign with them: an assertion from either
/// verifies, with npm `jose`, by the other's `jwks.json`.
async fn assertions_from_any_instance_verify_with_the_keys_of_any_other(store: String) {
    let Some(c) = Cluster::of(store, 2).await else {
        return;
    };
    let [a, b] = &c.instances[..] else {
        unreachable!()
    };
    let jwks = |i: &Instance| {
        let url = i.at("/auth/jwks.json");
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let (on_a, on_b) = (jwks(a).await, jwks(b).await);
    assert_eq!(on_a, on_b);
    assert_eq!(on_a["keys"].as_array().unwrap().len(), 1, "{on_a}");
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    for (signer, verifier) in [(a, b), (b, a)] {
        let seen = api(signer, &browser, "/whoami").await;
        let token = upstream::echoed(&seen.json(), "x-portcullis-jwt-assertion");
        // The verifier's clock: read after the assertion was signed (`iat` in the past).
        #[allow(clippy::disallowed_methods)] // what the store's peer clock says
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let v = oidc_provider::verify_assertion(
            &verifier.at("/auth/jwks.json"),
            &c.public,
            &c._up.url,
            now,
            &token[0],
        )
        .await
        .unwrap();
        assert_eq!(v["payload"]["sub"], user_id_seen(&seen).as_str());
    }
}

/// P05: a store outage never lets `/auth/verify` answer 2xx for a request without a
/// valid session: the session table is locked (the store's calls time out), and a
/// well-formed but unknown session id gets 503, never 200; once the store answers,
/// the real session passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p05_a_store_outage_never_lets_forward_auth_pass() {
    let Some(url) = Engine::Postgres.url() else {
        return;
    };
    let Some(c) = Cluster::of(url.clone(), 1).await else {
        return;
    };
    let a = &c.instances[0];
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let verify = |cookie: Option<String>| {
        let mut req = reqwest::Client::new()
            .get(a.at("/auth/verify"))
            .header("accept", "application/json");
        if let Some(cookie) = cookie {
            req = req.header("cookie", format!("portcullis={cookie}"));
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            // Every 503 says when to come back.
            assert!(status != 503 || r.headers().contains_key("retry-after"));
            status
        }
    };
    let real = browser.cookie("portcullis").unwrap();
    assert_eq!(verify(Some(real.clone())).await, 200);

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut outage = pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {}_sessions IN ACCESS EXCLUSIVE MODE",
        c.prefix
    )))
    .execute(&mut *outage)
    .await
    .unwrap();
    let unknown = portcullis::session::SessionId::generate();
    assert_eq!(verify(Some(unknown.expose().to_owned())).await, 503);
    assert_eq!(verify(None).await, 401);
    outage.rollback().await.unwrap();
    assert_eq!(verify(Some(real)).await, 200);
    assert_eq!(verify(Some(unknown.expose().to_owned())).await, 401);
}

/// The session id a response sets, if any.
fn set_session_id(resp: &Resp) -> Option<String> {
    let cookie = resp.set_cookie_named("portcullis")?;
    let value = cookie.split(';').next()?.split_once('=')?.1.to_owned();
    (!value.is_empty()).then_some(value)
}

async fn m01_refresh_and_the_theft_rule_on_a_reach_a_warm_b(store: String) {
    let setup = Setup {
        access_ttl: "4",
        instances: 2,
        env: &[("PORTCULLIS_SESSION_ROTATION_GRACE", "1s")],
        ..Default::default()
    };
    let Some(c) = Cluster::start(store, setup).await else {
        return;
    };
    let [a, b] = &c.instances[..] else {
        unreachable!()
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let old = browser.cookie("portcullis").unwrap();
    // B knows the session (its cache is warm).
    assert_eq!(api(b, &browser, "/x").await.status, 200);
    assert_eq!(api(b, &browser, "/x").await.status, 200);

    // A refreshes: the session id rotates.
    until_refresh_due(4).await;
    let resp = api(a, &browser, "/x").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let new = set_session_id(&resp).expect("a refresh rotates the id");
    // B sees the new state within a second: the old id now leads to the new one.
    let stale = Browser::new();
    let start = Instant::now();
    loop {
        stale.set_cookie("portcullis", &old);
        let sent = start.elapsed(); // as in `refused_within`
        let resp = api(b, &stale, "/x").await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        if set_session_id(&resp).as_deref() == Some(new.as_str()) {
            break;
        }
        assert!(
            sent < Duration::from_secs(1),
            "B still serves the old state"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The theft rule on A: the new id in use, the grace window over, the old id back.
    assert_eq!(api(a, &browser, "/x").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2_100)).await; // the 1 s grace, in real time
    let thief = Browser::new();
    thief.set_cookie("portcullis", &old);
    assert_eq!(api(a, &thief, "/x").await.status, 401);
    // B refuses the whole family within a second.
    refused_within(b, &browser, Duration::from_secs(1)).await;
}

/// Kills every change-feed connection of the cluster's gateways.
async fn kill_feed_connections(c: &Cluster) {
    if c.store.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&c.store).await.unwrap();
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(format!("portcullis/{}", c.prefix))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(!killed.is_empty());
    } else {
        let client = ::redis::Client::open(c.store.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let list: String = ::redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mine = format!("name={}:feed:", c.prefix);
        let ids: Vec<&str> = list
            .lines()
            .filter(|l| l.contains(&mine))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .collect();
        assert!(!ids.is_empty(), "{list}");
        for id in ids {
            let _: i64 = ::redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

async fn m01_a_killed_feed_connection_never_leaves_a_revoked_session_usable(store: String) {
    let setup = Setup {
        instances: 2,
        ..Default::default()
    };
    let Some(c) = Cluster::start(store, setup).await else {
        return;
    };
    let [a, b] = &c.instances[..] else {
        unreachable!()
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    assert_eq!(api(b, &browser, "/x").await.status, 200);
    assert_eq!(api(b, &browser, "/x").await.status, 200);
    let copy = Browser::new();
    copy.set_cookie("portcullis", &browser.cookie("portcullis").unwrap());
    // The feed drops, and the session is signed out on A while it is down.
    kill_feed_connections(&c).await;
    let out = browser
        .request(
            reqwest::Method::POST,
            &a.at("/auth/logout"),
            &[
                ("origin", c.public.as_str()),
                ("accept", "application/json"),
            ],
            None,
        )
        .await;
    assert!(out.status < 400, "{}", out.body);
    refused_within(b, &copy, Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------
// M02, F03: single flight across instances.

async fn m02_fifty_expired_calls_over_two_instances_refresh_once(store: String) {
    let setup = Setup {
        access_ttl: "4",
        provider_env: &[("TOKEN_DELAY_MS", "300")],
        instances: 2,
        ..Default::default()
    };
    let Some(c) = Cluster::start(store, setup).await else {
        return;
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    until_refresh_due(4).await;
    let calls = (0..50).map(|i| api(&c.instances[i % 2], &browser, "/x"));
    let resps = portcullis::store::conformance::join_all(calls).await;
    let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(c.refresh_grants().await, 1, "one refresh across instances");
    assert_eq!(
        c.count("grant.error").await,
        0,
        "no reuse of a rotated token"
    );
}

// ---------------------------------------------------------------------------
// M03: lease renewal and a dead holder.

async fn m03_a_slow_provider_beyond_the_lease_still_refreshes_once(store: String) {
    // 8 s at the token endpoint: longer than the 6 s lease, so only renewal keeps it.
    let setup = Setup {
        access_ttl: "4",
        provider_env: &[("TOKEN_DELAY_MS", "8000")],
        instances: 2,
        ..Default::default()
    };
    let Some(c) = Cluster::start(store, setup).await else {
        return;
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    until_refresh_due(4).await;
    let first = api(&c.instances[0], &browser, "/x");
    let others = async {
        // The second instance asks once the first holds the lease.
        tokio::time::sleep(Duration::from_millis(500)).await;
        portcullis::store::conformance::join_all(
            (0..4).map(|_| api(&c.instances[1], &browser, "/x")),
        )
        .await
    };
    let (first, others) = tokio::join!(first, others);
    assert_eq!(first.status, 200, "{}", first.body);
    for r in &others {
        assert!(r.status == 200, "{} {}", r.status, r.body);
    }
    let events = c.events().await;
    assert_eq!(
        events["token_requests"]["started"],
        json!(2),
        "sign-in and one refresh: {events}"
    );
    assert_eq!(c.refresh_grants().await, 1);
    assert_eq!(c.count("grant.error").await, 0);
}

async fn m03_a_killed_lease_holder_is_replaced_and_nobody_is_signed_out(store: String) {
    let setup = Setup {
        access_ttl: "4",
        provider_env: &[("TOKEN_DELAY_MS", "3000")],
        instances: 2,
        ..Default::default()
    };
    let Some(mut c) = Cluster::start(store, setup).await else {
        return;
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let before = c.events().await["token_requests"]["started"]
        .as_u64()
        .unwrap();
    until_refresh_due(4).await;
    // The first instance takes the lease and calls the provider...
    let cookie = browser.cookie("portcullis").unwrap();
    let doomed = {
        let url = c.instances[0].at("/x");
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .header("accept", "application/json")
                .header("cookie", format!("portcullis={cookie}"))
                .send()
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.events().await["token_requests"]["started"]
        .as_u64()
        .unwrap()
        == before
    {
        assert!(
            Instant::now() < deadline,
            "the refresh never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and dies before the provider answers.
    c.instances[0].kill().await;
    assert!(
        doomed.await.unwrap().is_err(),
        "the killed instance did not answer"
    );
    let killed_at = Instant::now();
    let resp = api(&c.instances[1], &browser, "/x").await;
    assert_eq!(resp.status, 200, "still signed in: {}", resp.body);
    assert!(
        killed_at.elapsed() < Duration::from_secs(6 + 3 + 3),
        "taken over within the lease (6 s) plus one slow refresh: {:?}",
        killed_at.elapsed()
    );
    let events = c.events().await;
    assert_eq!(events["token_requests"]["dropped"], json!(1), "{events}");
    assert_eq!(c.refresh_grants().await, 1, "the survivor refreshed once");
    assert_eq!(c.count("grant.error").await, 0, "no reuse error");
    assert_eq!(api(&c.instances[1], &browser, "/x").await.status, 200);
}

// ---------------------------------------------------------------------------
// M05: what the store holds.

async fn m05_the_store_holds_no_token_session_id_or_code(store: String) {
    let setup = Setup {
        access_ttl: "4",
        instances: 1,
        env: &[("PORTCULLIS_PROXY_TOKEN_RELAY", "/relay/*")],
        ..Default::default()
    };
    let Some(c) = Cluster::start(store, setup).await else {
        return;
    };
    let browser = Browser::new();
    let (callback, resp) = follow_sign_in(
        &browser,
        &format!("{}/auth/login", c.public),
        "alice",
        "alice",
        &format!("{}/auth/callback", c.public),
    )
    .await;
    assert_eq!(resp.status, 303);
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    until_refresh_due(4).await;
    // A refresh (rotation), then the access token as the upstream receives it.
    let relayed = api(&c.instances[0], &browser, "/relay/x").await;
    assert_eq!(relayed.status, 200);
    assert_eq!(c.refresh_grants().await, 1);
    let bearer = upstream::echoed(&relayed.json(), "authorization")
        .into_iter()
        .next()
        .unwrap();
    let access = bearer.strip_prefix("Bearer ").unwrap().to_owned();
    let session_id = browser.cookie("portcullis").unwrap();

    let dump = dump_store(&c.store, &c.prefix).await;
    assert!(dump.len() > 200, "the dump holds the session: {dump}");
    for (what, secret) in [
        ("session id", session_id.as_str()),
        ("access token", access.as_str()),
        ("authorization code", code.as_str()),
    ] {
        assert!(!dump.contains(secret), "{what} in clear in the store");
    }
    // ID and refresh tokens: nothing shaped like a JWT (`eyJ….eyJ….`). Not a bare
    // "eyJ": sealed values are random base64url and contain it now and then.
    assert!(!holds_a_jwt(&dump), "a JWT in clear in the store");
}

/// Whether `text` holds a JWT: a base64url JSON header and payload joined by a dot.
fn holds_a_jwt(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .any(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts
                .windows(2)
                .any(|w| w[0].starts_with("eyJ") && w[1].starts_with("eyJ"))
        })
}

/// Every row (PostgreSQL) or key (Redis) under `prefix`, as text.
async fn dump_store(url: &str, prefix: &str) -> String {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE tablename LIKE $1 || '\\_%'",
        )
        .bind(prefix)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(tables.len() >= 5, "{tables:?}");
        let mut dump = String::new();
        for t in tables {
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT row_to_json(x)::text FROM {t} x"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            dump.push_str(&rows.join("\n"));
        }
        dump
    } else {
        let client = ::redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!keys.is_empty());
        let mut dump = String::new();
        for key in keys {
            let kind: String = ::redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let (command, extra): (&str, &[&str]) = match kind.as_str() {
                "string" => ("GET", &[]),
                "hash" => ("HGETALL", &[]),
                "set" => ("SMEMBERS", &[]),
                "zset" => ("ZRANGE", &["0", "-1"]),
                "list" => ("LRANGE", &["0", "-1"]),
                other => panic!("unexpected key type {other} for {key}"),
            };
            let values: Vec<String> = ::redis::cmd(command)
                .arg(&key)
                .arg(extra)
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|_| Vec::new());
            let single: Option<String> = if values.is_empty() && command == "GET" {
                ::redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .ok()
            } else {
                None
            };
            dump.push_str(&format!("{key} {values:?} {single:?}\n"));
        }
        dump
    }
}

// ---------------------------------------------------------------------------
// M04: the store goes away under traffic and comes back.

/// What the browser saw while the store was away.
#[derive(Debug, Default)]
struct Outage {
    ok: usize,
    unavailable: usize,
}

/// Calls the instances in turn until `until` says stop; every answer must be a 200 or
/// a 503 with `Retry-After` (never a 401: nobody is signed out; never a 500).
async fn traffic(
    c: &Cluster,
    browser: &Browser,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Outage {
    let mut seen = Outage::default();
    let mut i = 0;
    while !*stop.borrow() {
        let instance = &c.instances[i % c.instances.len()];
        i += 1;
        let resp = api(instance, browser, "/x").await;
        match resp.status {
            200 => seen.ok += 1,
            503 => {
                assert!(
                    resp.headers.contains_key("retry-after"),
                    "503 without Retry-After"
                );
                seen.unavailable += 1;
            }
            other => panic!("{other} during a store outage: {}", resp.body),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    seen
}

/// Waits, bounded, until every instance serves the browser again.
async fn recovered_within(c: &Cluster, browser: &Browser, limit: Duration) -> Duration {
    let start = Instant::now();
    for instance in &c.instances {
        loop {
            let resp = api(instance, browser, "/x").await;
            if resp.status == 200 {
                break;
            }
            assert_eq!(resp.status, 503, "{}", resp.body);
            assert!(start.elapsed() < limit, "not recovered within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m04_postgres_connections_killed_under_traffic() {
    let Some(url) = Engine::Postgres.url() else {
        return;
    };
    let setup = Setup {
        instances: 2,
        ..Default::default()
    };
    let Some(c) = Cluster::start(url.clone(), setup).await else {
        return;
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let kill = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(format!("portcullis/{}", c.prefix))
            .fetch_all(&admin)
            .await
            .unwrap();
            assert!(!killed.is_empty(), "found the gateways' connections");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(true).unwrap();
    };
    let (seen, ()) = tokio::join!(traffic(&c, &browser, &stopped), kill);
    assert!(seen.ok > 0, "{seen:?}");
    recovered_within(&c, &browser, Duration::from_secs(10)).await;
    for instance in &c.instances {
        let ready = reqwest::get(instance.at("/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);
    }
}

/// A Redis server of our own (with an append-only file), to restart at will.
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start() -> Option<Self> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("pc-redis-{}", random_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port: free_port(),
            dir,
            child: None,
        };
        redis.run().await;
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A clean shutdown (the append-only file is flushed), then the process is gone.
    async fn stop(&mut self) {
        let client = ::redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: Result<(), _> = ::redis::cmd("SHUTDOWN").query_async(&mut conn).await;
        if let Some(mut child) = self.child.take() {
            child.wait().await.unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m04_redis_restarted_under_traffic() {
    if Engine::Redis.url().is_none() {
        return;
    }
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let setup = Setup {
        instances: 2,
        ..Default::default()
    };
    let Some(c) = Cluster::start(redis.url(), setup).await else {
        return;
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    assert_eq!(api(&c.instances[1], &browser, "/x").await.status, 200);

    redis.stop().await;
    // While it is gone: 503 + Retry-After, readiness down, nobody signed out.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let outage = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = reqwest::get(c.instances[0].at("/readyz")).await.unwrap();
            if ready.status() == 503 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never reported the outage"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.send(true).unwrap();
    };
    let (seen, ()) = tokio::join!(traffic(&c, &browser, &stopped), outage);
    assert!(seen.unavailable > 0, "the outage was visible: {seen:?}");
    let page = api(&c.instances[0], &browser, "/x").await;
    assert_eq!(page.status, 503);
    eprintln!(
        "during the outage a browser saw: {} {}",
        page.status, page.body
    );

    redis.run().await;
    let took = recovered_within(&c, &browser, Duration::from_secs(15)).await;
    eprintln!("full service {took:?} after Redis came back");
    for instance in &c.instances {
        let ready = reqwest::get(instance.at("/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);
    }
}

// ---------------------------------------------------------------------------
// Moving stores: `portcullis store copy`.

async fn store_copy_from_sqlite_keeps_cookies_and_user_ids(target: String) {
    let dir = std::env::temp_dir().join(format!("pc-copy-{}", random_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = format!("sqlite:{}", dir.join("portcullis.db").display());
    let setup = Setup {
        instances: 1,
        ..Default::default()
    };
    let Some(mut c) = Cluster::start(sqlite.clone(), setup).await else {
        return;
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let before = api(&c.instances[0], &browser, "/whoami").await;
    assert_eq!(before.status, 200);
    let user = user_id_seen(&before);
    c.instances[0].kill().await;

    let prefix = random_prefix();
    let out = portcullis()
        .args(["store", "copy", "--from", &sqlite, "--to", &target])
        .env("PORTCULLIS_STORE_PREFIX", &prefix)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("copied 1 user(s)") && said.contains("1 live session(s)"),
        "{said}"
    );

    // The same gateway, now on the shared store: same cookie, same X-User-Id.
    for (k, v) in c.env.iter_mut() {
        match k.as_str() {
            "PORTCULLIS_STORE" => *v = target.clone(),
            "PORTCULLIS_STORE_PREFIX" => *v = prefix.clone(),
            _ => {}
        }
    }
    let port: u16 = c.public.rsplit(':').next().unwrap().parse().unwrap();
    let moved = c.spawn(port).await;
    let after = api(&moved, &browser, "/whoami").await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(user_id_seen(&after), user, "X-User-Id unchanged");
    // Signing in again on the new store is still the same user.
    let fresh = Browser::new();
    c.sign_in(&fresh, "alice").await;
    assert_eq!(user_id_seen(&api(&moved, &fresh, "/whoami").await), user);
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------------------
// G08: a new secret on a used store, with an instance still on the old one.

/// A new secret on a used store: instance A (ring A) is stopped and B starts on ring B
/// alone — its emergency key makes it ready. Then A comes back on the old ring (a
/// forgotten instance) while B runs: under traffic with refreshes due, each serves its
/// own users, signs the other's out and deletes nothing of theirs, and A is stale
/// (`/readyz` 503). An instance on a third ring (a mistyped secret) started while B runs
/// makes no key of its own and stays unready: it must not take B out. Once A is gone,
/// `keys prune` removes only the key ring B cannot open, and refuses on a stale ring.
async fn g08_two_key_rings_on_one_store_never_delete_each_others_sessions(store: String) {
    let Some(mut c) = Cluster::start(
        store,
        Setup {
            instances: 1,
            access_ttl: "4",
            ..Setup::default()
        },
    )
    .await
    else {
        return;
    };
    let alice = Browser::new();
    c.sign_in(&alice, "alice").await;
    assert_eq!(api(&c.instances[0], &alice, "/whoami").await.status, 200);
    let ring_a = c
        .env
        .iter()
        .find(|(k, _)| k == "PORTCULLIS_SECRET")
        .map(|(_, v)| v.clone())
        .unwrap();
    let secret = || {
        base64::engine::general_purpose::STANDARD.encode(portcullis::random::random_bytes::<32>())
    };
    let (ring_b, ring_c) = (secret(), secret());
    let b_url = format!("http://127.0.0.1:{}", c.spare);

    c.instances[0].kill().await;
    // Ready once it signs with a key of its own: its readiness makes the emergency key
    // once no instance on another ring has been heard for a few seconds.
    let b = c
        .spawn_with(
            c.spare,
            &[
                ("PORTCULLIS_SECRET", &ring_b),
                ("PORTCULLIS_PUBLIC_URL", &b_url),
            ],
        )
        .await;
    let a = c.spawn_unready(free_port(), &[]).await;
    let stale = reqwest::get(a.at("/readyz")).await.unwrap();
    assert_eq!(stale.status(), 503);
    assert_eq!(stale.json::<Value>().await.unwrap()["key_ring"], false);

    let bob = Browser::new();
    let (_, signed_in) = follow_sign_in(
        &bob,
        &b.at("/auth/login?return_to=%2F"),
        "bob",
        "bob",
        &b.at("/auth/callback"),
    )
    .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);

    // Traffic for longer than two access-token lifetimes: both sessions refresh on
    // their own instance, and each browser is also sent to the other one.
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        let (on_a, on_b, bob_b, bob_a) = tokio::join!(
            api(&a, &alice, "/whoami"),
            api(&b, &alice, "/whoami"),
            api(&b, &bob, "/whoami"),
            api(&a, &bob, "/whoami"),
        );
        assert_eq!(on_a.status, 200, "alice on her ring: {}", on_a.body);
        assert_eq!(bob_b.status, 200, "bob on his ring: {}", bob_b.body);
        assert_eq!(
            (on_b.status, bob_a.status),
            (401, 401),
            "the other ring signs out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        c.refresh_grants().await >= 4,
        "both refreshed, twice or more"
    );

    // A mistyped secret while B runs: no key of its own, unready; B stays ready.
    let keys_before = keys_in_store(&c, &ring_b).await;
    let typo = c
        .spawn_unready(free_port(), &[("PORTCULLIS_SECRET", &ring_c)])
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert_eq!(
            reqwest::get(typo.at("/readyz")).await.unwrap().status(),
            503
        );
        assert_eq!(reqwest::get(b.at("/readyz")).await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        keys_in_store(&c, &ring_b).await,
        keys_before,
        "no key of its own"
    );
    drop(typo);
    drop(a);

    // Prune: refused on the stale ring A; with ring B, only the key B cannot open.
    let prune = |secret: &str, yes: bool| {
        let mut cmd = portcullis();
        cmd.args(["keys", "prune"])
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .env("PORTCULLIS_SECRET", secret);
        if yes {
            cmd.arg("--yes");
        }
        cmd.output()
    };
    let refused = prune(&ring_a, true).await.unwrap();
    assert!(!refused.status.success(), "a stale ring prunes nothing");
    let out = prune(&ring_b, true).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("removed signing key ") && text.contains("(generation 1,"),
        "{text}"
    );
    let again = prune(&ring_b, false).await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to prune"));
    assert_eq!(api(&b, &bob, "/whoami").await.status, 200);
}

/// What `keys prune` (without `--yes`) says of the store's signing keys for `secret`.
async fn keys_in_store(c: &Cluster, secret: &str) -> String {
    let out = portcullis()
        .args(["keys", "prune"])
        .envs(c.env.iter().map(|(k, v)| (k, v)))
        .env("PORTCULLIS_SECRET", secret)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// G09: a profile that changes reaches every cached session of the user.

/// The email `X-User-Email` carried to the app.
fn email_seen(resp: &Resp) -> String {
    upstream::echoed(&resp.json(), "x-user-email")
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Alice's session is cached on B; she signs in again on A (another browser) after her
/// address changed at the provider, then after it became unverified: her first
/// session's next request on B carries the new address within a second, then none.
async fn g09_a_changed_email_reaches_a_cached_session_on_another_instance(store: String) {
    let Some(c) = Cluster::of(store, 2).await else {
        return;
    };
    let [_, b] = &c.instances[..] else {
        unreachable!()
    };
    let first = Browser::new();
    c.sign_in(&first, "alice").await;
    for _ in 0..3 {
        let r = api(b, &first, "/whoami").await;
        assert_eq!(email_seen(&r), "alice@example.com", "{}", r.body);
    }
    let change = |profile: Value| {
        let url = format!("{}/test/profile/alice", c.op.issuer);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&profile)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };
    for (profile, expected) in [
        (json!({"email": "alice@example.org"}), "alice@example.org"),
        (json!({"email_verified": false}), ""),
    ] {
        change(profile).await;
        c.sign_in(&Browser::new(), "alice").await;
        let start = Instant::now();
        loop {
            let sent = start.elapsed(); // as in `refused_within`
            let r = api(b, &first, "/whoami").await;
            assert_eq!(r.status, 200, "{}", r.body);
            if email_seen(&r) == expected {
                break;
            }
            assert!(
                sent < Duration::from_secs(1),
                "B still shows {:?} after a second, not {expected:?}",
                email_seen(&r)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// DPoP (issue 26): one key in the store for every instance.

/// The relayed token and the public key of its proof, as the app saw them.
fn relayed(resp: &Resp) -> (String, Value) {
    let got = resp.json();
    let authorization = upstream::echoed(&got, "authorization");
    let proof = upstream::echoed(&got, "dpop");
    assert_eq!((authorization.len(), proof.len()), (1, 1), "{got}");
    let token = authorization[0]
        .strip_prefix("DPoP ")
        .expect("a bound token goes as DPoP")
        .to_owned();
    let header = proof[0].split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    (token, header["jwk"].clone())
}

/// Two real processes on a shared store, the npm provider binding tokens with DPoP
/// (a public client: its refresh token is bound too, so a refresh with another key
/// fails there). Signed in through A, refreshed on B, relayed again on A: one key.
async fn dpop_one_key_for_every_instance(store: String) {
    let setup = Setup {
        access_ttl: "4",
        instances: 2,
        env: &[
            ("PORTCULLIS_PROVIDER_DPOP", "on"),
            ("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*"),
        ],
        ..Default::default()
    };
    let Some(c) = Cluster::start(store, setup).await else {
        return;
    };
    let [a, b] = &c.instances[..] else {
        unreachable!()
    };
    let browser = Browser::new();
    c.sign_in(&browser, "alice").await;
    let resp = api(a, &browser, "/api/x").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let (first, key) = relayed(&resp);

    until_refresh_due(4).await;
    let resp = api(b, &browser, "/api/x").await;
    assert_eq!(
        resp.status, 200,
        "B refreshes with the shared key: {}",
        resp.body
    );
    let (refreshed, key_b) = relayed(&resp);
    assert_ne!(refreshed, first, "B relayed a refreshed token");
    assert_eq!(key_b, key, "B proves with A's key");
    assert_eq!(c.refresh_grants().await, 1);

    let resp = api(a, &browser, "/api/x").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let (again, key_a) = relayed(&resp);
    assert_eq!(again, refreshed, "A relays what B refreshed");
    assert_eq!(key_a, key);
}
