//! A real front proxy (Debian nginx or Caddy) in front of a gateway in forward-auth-only
//! mode, configured with the snippets of `docs/forward-auth.md` as written there (only
//! addresses replaced), the real npm `oidc-provider`, and a test app. Each front writes
//! its own configuration and runs the proxy unprivileged on free loopback ports; it
//! stops with the test. `None` (one line printed) when the proxy or Node is missing;
//! `.ci/run` installs them and requires it.

use crate::SendJson as _;
use crate::free_port;
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::process::{Child, Command};

use super::browser::{Resp, follow_sign_in};
use super::gateway::Options;
use super::oidc_provider::{REQUIRE_VAR, RealProvider};
use super::{Browser, TestGateway, TestUpstream};

/// The first fenced block of `language` in `docs/forward-auth.md`.
fn snippet(language: &str) -> String {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/forward-auth.md"),
    )
    .unwrap();
    let start = doc
        .find(&format!("```{language}\n"))
        .unwrap_or_else(|| panic!("no {language} block in docs/forward-auth.md"));
    let body = &doc[start + language.len() + 4..];
    body[..body.find("\n```").unwrap()].to_owned()
}

/// Whether `program` is installed; a skip (one line) or, in CI, a failure when not.
fn installed(program: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os(REQUIRE_VAR).is_some() {
            panic!("{program} is required ({REQUIRE_VAR}) but not installed");
        }
        eprintln!("skipping: {program} is not installed");
    }
    found
}

/// Waits (bounded) until something listens on `port`.
async fn listening(port: u16, what: &str, log: &std::path::Path) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{what} did not listen on {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The proxy in front, the gateway behind it (forward-auth only), the provider, the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Nginx,
    Caddy,
}

/// The API the provider behind every front issues machine clients' tokens for.
pub const FRONT_API: &str = "https://api.example.com";

/// The machine client at that provider: id and secret.
const MACHINE_CLIENT: (&str, &str) = ("reporting", "reporting-secret-0123456789abcdef");

pub struct Front {
    pub kind: Proxy,
    /// The browser-facing origin: the proxy.
    pub url: String,
    pub gw: TestGateway,
    pub op: RealProvider,
    pub up: TestUpstream,
    _proxy: Child,
    _dir: std::path::PathBuf,
}

impl Front {
    pub async fn start(kind: Proxy) -> Option<Self> {
        Self::start_with(kind, None).await
    }

    /// [`Front::start`] with a gateway configuration file (e.g. `[[routes]]`).
    pub async fn start_with(kind: Proxy, config_file: Option<String>) -> Option<Self> {
        Self::start_with_env(kind, config_file, &[]).await
    }

    /// [`Front::start_with`] with more gateway settings (`PORTCULLIS_…` variables).
    pub async fn start_with_env(
        kind: Proxy,
        config_file: Option<String>,
        gateway_env: &[(&str, &str)],
    ) -> Option<Self> {
        let program = match kind {
            Proxy::Nginx => "nginx",
            Proxy::Caddy => "caddy",
        };
        if !installed(program) {
            return None;
        }
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let client = json!([
            {
                "client_id": "app",
                "token_endpoint_auth_method": "none",
                "redirect_uris": [format!("{url}/auth/callback")],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            },
            // A machine client: client-credentials tokens for FRONT_API.
            {
                "client_id": MACHINE_CLIENT.0,
                "client_secret": MACHINE_CLIENT.1,
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
            },
        ]);
        let op = RealProvider::start(
            client,
            &[("ID_TOKEN_TTL", "86400"), ("API_RESOURCE", FRONT_API)],
        )
        .await?;
        let up = TestUpstream::start().await;
        let mut options = Options {
            config_file,
            ..Options::default()
        }
        .env("PORTCULLIS_PUBLIC_URL", &url)
        .env("PORTCULLIS_PUBLIC_PATHS", "/public/*")
        .env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1");
        for (k, v) in gateway_env {
            options = options.env(k, v);
        }
        let gw = TestGateway::start_with(&op.issuer, options).await;
        let dir = std::env::temp_dir().join(format!(
            "pc-{program}-{}",
            portcullis::random::random_token()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (gateway, app) = (
            gw.url.trim_start_matches("http://").to_owned(),
            up.url.trim_start_matches("http://").to_owned(),
        );
        let (mut cmd, log) = match kind {
            Proxy::Nginx => nginx(&dir, port, &gateway, &app),
            Proxy::Caddy => caddy(&dir, port, &gateway, &app),
        };
        let proxy = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        listening(port, program, &log).await;
        Some(Self {
            kind,
            url,
            gw,
            op,
            up,
            _proxy: proxy,
            _dir: dir,
        })
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A client-credentials access token (an RFC 9068 JWT) for [`FRONT_API`], with the
    /// scope `orders:read`, from the provider behind this front.
    pub async fn machine_token(&self) -> String {
        let v: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/token", self.op.issuer))
            .basic_auth(MACHINE_CLIENT.0, Some(MACHINE_CLIENT.1))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", FRONT_API),
                ("scope", "orders:read"),
            ])
            .send_json()
            .await;
        v["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn signed_in(&self, user: &str) -> Browser {
        let b = Browser::new();
        let (_, r) = follow_sign_in(
            &b,
            &self.at("/auth/login?return_to=%2Fapp"),
            user,
            user,
            &self.at("/auth/callback"),
        )
        .await;
        assert_eq!(r.status, 303, "sign-in through the front proxy: {}", r.body);
        b
    }

    pub async fn api(
        &self,
        b: &Browser,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut h = vec![("accept", "application/json")];
        h.extend_from_slice(headers);
        b.request(method, &self.at(path), &h, None).await
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// nginx with the documented snippet, on `port`, in `dir`: the command and its log.
fn nginx(
    dir: &std::path::Path,
    port: u16,
    gateway: &str,
    app: &str,
) -> (Command, std::path::PathBuf) {
    let d = dir.display();
    let server = snippet("nginx")
        .replace("127.0.0.1:4180", gateway)
        .replace("127.0.0.1:3000", app)
        .replace(
            "listen 443 ssl;                      # your TLS settings as usual",
            &format!("listen 127.0.0.1:{port};"),
        );
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 128; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         {server}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stderr(Stdio::null());
    (cmd, dir.join("error.log"))
}

/// Caddy with the documented snippet, on `port`, in `dir`: the command and its log.
fn caddy(
    dir: &std::path::Path,
    port: u16,
    gateway: &str,
    app: &str,
) -> (Command, std::path::PathBuf) {
    let site = snippet("caddyfile")
        .replace("127.0.0.1:4180", gateway)
        .replace("127.0.0.1:3000", app)
        .replace("app.example.com {", &format!("http://127.0.0.1:{port} {{"));
    let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}\n");
    std::fs::write(dir.join("Caddyfile"), conf).unwrap();
    let log = dir.join("caddy.log");
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.join("Caddyfile"))
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stderr(std::fs::File::create(&log).unwrap());
    (cmd, log)
}
