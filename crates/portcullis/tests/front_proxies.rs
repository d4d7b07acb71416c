//! Forward-auth behind the real front proxies, with the configuration snippets of
//! `docs/forward-auth.md` as written there (only addresses replaced): Debian nginx and
//! Caddy, the real npm `oidc-provider`, the gateway in forward-auth-only mode. Every
//! test runs against both proxies. Each test
//! writes its own configuration and runs the proxy unprivileged on free loopback ports.
//! Skips with one line when the proxy or Node is missing; `.ci/run` installs them and
//! requires it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::browser::{Resp, follow_sign_in};
use support::gateway::Options;
use support::oidc_provider::{REQUIRE_VAR, RealProvider};
use support::upstream::echoed;
use support::{Browser, TestGateway, TestUpstream};
use tokio::process::{Child, Command};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
enum Proxy {
    Nginx,
    Caddy,
}

struct Front {
    kind: Proxy,
    /// The browser-facing origin: the proxy.
    url: String,
    gw: TestGateway,
    op: RealProvider,
    up: TestUpstream,
    _proxy: Child,
    _dir: std::path::PathBuf,
}

impl Front {
    async fn start(kind: Proxy) -> Option<Self> {
        let program = match kind {
            Proxy::Nginx => "nginx",
            Proxy::Caddy => "caddy",
        };
        if !installed(program) {
            return None;
        }
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let client = json!([{
            "client_id": "app",
            "token_endpoint_auth_method": "none",
            "redirect_uris": [format!("{url}/auth/callback")],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }]);
        let op = RealProvider::start(client, &[("ID_TOKEN_TTL", "86400")]).await?;
        let up = TestUpstream::start().await;
        let gw = TestGateway::start_with(
            &op.issuer,
            Options::default()
                .env("PORTCULLIS_PUBLIC_URL", &url)
                .env("PORTCULLIS_PUBLIC_PATHS", "/public/*")
                .env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1"),
        )
        .await;
        let dir = std::env::temp_dir().join(format!(
            "pc-{program}-{}",
            portcullis::random::random_token()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (gateway, app) = (
            gw.url.trim_start_matches("http://").to_owned(),
            up.url.trim_start_matches("http://").to_owned(),
        );
        let d = dir.display();
        let mut cmd = Command::new(program);
        let log = match kind {
            Proxy::Nginx => {
                let server = snippet("nginx")
                    .replace("127.0.0.1:4180", &gateway)
                    .replace("127.0.0.1:3000", &app)
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
                cmd.arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(dir.join("nginx.conf"))
                    .stderr(Stdio::null());
                dir.join("error.log")
            }
            Proxy::Caddy => {
                let site = snippet("caddyfile")
                    .replace("127.0.0.1:4180", &gateway)
                    .replace("127.0.0.1:3000", &app)
                    .replace("app.example.com {", &format!("http://127.0.0.1:{port} {{"));
                let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}\n");
                std::fs::write(dir.join("Caddyfile"), conf).unwrap();
                let log = dir.join("caddy.log");
                cmd.args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(dir.join("Caddyfile"))
                    .env("HOME", &dir)
                    .env("XDG_DATA_HOME", dir.join("data"))
                    .env("XDG_CONFIG_HOME", dir.join("config"))
                    .stderr(std::fs::File::create(&log).unwrap());
                log
            }
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

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn signed_in(&self, user: &str) -> Browser {
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

    async fn api(&self, b: &Browser, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
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

async fn anonymous_pages_go_to_sign_in_and_anonymous_api_calls_get_401(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let anonymous = Browser::new();
    let page = anonymous.navigate(&f.at("/app/page?x=1")).await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(
        page.location().unwrap(),
        format!("{}/auth/login?return_to=%2Fapp%2Fpage%3Fx%3D1", f.url)
    );
    let api = f.api(&anonymous, Method::GET, "/api/x", &[]).await;
    assert_eq!(api.status, 401);
    assert!(api.location().is_none());
    // Forged and truncated cookies are no better.
    for cookie in ["portcullis=forged", "portcullis=", "portcullis=AAAA%00"] {
        let r = f
            .api(&anonymous, Method::GET, "/api/x", &[("cookie", cookie)])
            .await;
        assert_eq!(r.status, 401, "{cookie}");
    }
    assert_eq!(f.up.calls(), 0, "the app never saw an anonymous request");
}

async fn a_sign_in_through_the_proxy_hands_the_app_only_our_identity(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let session = b.get(&f.at("/auth/session"), &[]).await.json();
    let id = session["user"]["id"].as_str().unwrap().to_owned();
    let r = b
        .get(
            &f.at("/app"),
            &[
                ("x-user-id", "admin"),
                ("x-auth-request-user", "admin"),
                ("x-portcullis-jwt-assertion", "forged"),
                ("x-user_id", "admin"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(echoed(&v, "x-user-id"), [id.as_str()]);
    assert_eq!(echoed(&v, "x-user-email"), ["alice@example.com"]);
    assert!(
        echoed(&v, "x-auth-request-user")
            .iter()
            .all(String::is_empty)
    );
    assert!(echoed(&v, "x-user_id").is_empty());
    let assertion = echoed(&v, "x-portcullis-jwt-assertion");
    assert_eq!(assertion.len(), 1);
    assert_ne!(assertion[0], "forged");
    let cookies = echoed(&v, "cookie").join("; ");
    assert!(!cookies.contains("portcullis="), "{cookies}");
}

async fn the_session_survives_three_refreshes(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let mut seen = vec![b.cookie("portcullis").unwrap()];
    for _ in 0..3 {
        // Past the refresh point (the provider's access tokens live 300 s).
        f.gw.clock.advance(250);
        let r = f.api(&b, Method::GET, "/app", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let cookie = b.cookie("portcullis").unwrap();
        match f.kind {
            // nginx passes the rotated id on.
            Proxy::Nginx => assert!(
                !seen.contains(&cookie),
                "the rotated id reached the browser"
            ),
            // Caddy 2.6 drops the auth answer's Set-Cookie: a lost rotation each time.
            Proxy::Caddy => assert_eq!(cookie, seen[0], "Caddy passes no Set-Cookie"),
        }
        seen.push(cookie);
        assert_eq!(f.api(&b, Method::GET, "/app", &[]).await.status, 200);
    }
    let refreshes = f.op.events().await["grants"]["refresh_token"]
        .as_u64()
        .unwrap();
    assert_eq!(refreshes, 3);
}

async fn browsers_never_use_verify_or_write_cross_site(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let calls = f.up.calls();
    for (method, headers) in [
        (Method::GET, vec![]),
        (
            Method::GET,
            vec![("x-original-uri", "/app"), ("x-original-method", "GET")],
        ),
        (
            Method::POST,
            vec![("x-forwarded-uri", "/app"), ("x-forwarded-method", "GET")],
        ),
    ] {
        let r = f.api(&b, method, "/auth/verify", &headers).await;
        assert!(r.status >= 400, "{}: {}", r.status, r.body);
        assert!(r.headers.get("x-portcullis-jwt-assertion").is_none());
        assert!(!r.body.contains("eyJ"), "no token in {}", r.body);
    }
    // S06: a cross-site write is refused before the app.
    let r = f
        .api(
            &b,
            Method::POST,
            "/app/transfer",
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, 403);
    let own = f.url.clone();
    let r = f
        .api(
            &b,
            Method::POST,
            "/app/transfer",
            &[("origin", own.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.up.calls(), calls + 1);
}

/// A public path, and a user whose email is not verified, give the app every identity
/// header it copies empty — never the client's value, never placeholder text (Debian's
/// Caddy 2.6.2 copies a header missing from the auth answer as a literal placeholder).
async fn missing_values_reach_the_app_empty(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let anonymous = Browser::new();
    let r = anonymous
        .get(
            &f.at("/public/app.js"),
            &[
                ("x-user-id", "admin"),
                ("x-user-email", "admin@example.com"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    for name in [
        "x-user-id",
        "x-user-email",
        "x-user-name",
        "x-portcullis-jwt-assertion",
    ] {
        let seen = echoed(&v, name);
        assert!(seen.iter().all(String::is_empty), "{name}: {seen:?}");
    }
    let carol = f.signed_in("carol").await;
    let r = carol
        .get(&f.at("/app"), &[("x-user-email", "admin@example.com")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(
        echoed(&v, "x-user-email").iter().all(String::is_empty),
        "an unverified address never reaches the app: {:?}",
        echoed(&v, "x-user-email")
    );
    assert_eq!(echoed(&v, "x-user-name"), ["Carol Unverified"]);
    assert!(
        !r.body.contains('{') || !r.body.contains("{http."),
        "no placeholder: {}",
        r.body
    );
}

macro_rules! behind_each_proxy {
    ($($name:ident),* $(,)?) => {
        mod nginx {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Proxy::Nginx).await
                }
            )*
        }
        mod caddy {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Proxy::Caddy).await
                }
            )*
        }
    };
}

behind_each_proxy!(
    anonymous_pages_go_to_sign_in_and_anonymous_api_calls_get_401,
    a_sign_in_through_the_proxy_hands_the_app_only_our_identity,
    the_session_survives_three_refreshes,
    browsers_never_use_verify_or_write_cross_site,
    missing_values_reach_the_app_empty,
);
