//! The real, certified OpenID provider (npm `oidc-provider`, `tests/interop/`), run as
//! a child process on a free loopback port. It exits when its stdin closes, so a test
//! that ends (or panics) takes it down.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};

use crate::gateway::Options;
use crate::{Browser, TestGateway};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Set (to anything) in CI: a missing Node or `npm ci` is then a failure, not a skip.
pub const REQUIRE_VAR: &str = "PORTCULLIS_TEST_REQUIRE_INTEROP";

pub struct RealProvider {
    pub issuer: String,
    _child: Child,
}

pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop")
}

/// Why the interop suite cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not installed".into());
    }
    if !interop_dir().join("node_modules/oidc-provider").exists()
        || !interop_dir().join("node_modules/openid-client").exists()
        || !interop_dir().join("node_modules/jose").exists()
    {
        return Some(
            "tests/interop/node_modules is missing (run `npm ci` in tests/interop)".into(),
        );
    }
    None
}

impl RealProvider {
    /// Starts the provider with these clients and extra environment, or returns `None`
    /// (after printing one line saying why) when Node or the package is missing.
    pub async fn start(clients: Value, env: &[(&str, &str)]) -> Option<Self> {
        if let Some(reason) = unavailable() {
            if std::env::var_os(REQUIRE_VAR).is_some() {
                panic!("interop suite required ({REQUIRE_VAR}) but {reason}");
            }
            eprintln!("skipping interop test: {reason}");
            return None;
        }
        // Node has been seen, rarely and only under a busy parallel suite, to print its
        // start-up warning and then never become ready; a second start has always
        // worked. One retry, and the first hang is reported with the process's state.
        match Self::try_start(&clients, env).await {
            Ok(p) => Some(p),
            Err(why) => {
                eprintln!("oidc-provider start retried: {why}");
                Some(
                    Self::try_start(&clients, env)
                        .await
                        .unwrap_or_else(|why| panic!("{why}")),
                )
            }
        }
    }

    async fn try_start(clients: &Value, env: &[(&str, &str)]) -> Result<Self, String> {
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(interop_dir())
            .env("PORT", "0")
            .env("OIDC_CLIENTS", clients.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        // stderr is drained for as long as the provider runs (a full pipe would stall
        // it); its last lines explain a provider that does not start.
        let stderr = child.stderr.take().expect("stderr");
        let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let keep = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut tail = keep.lock().unwrap();
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let Ok(ready) =
            tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await
        else {
            let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
            let state = child
                .id()
                .map(|pid| {
                    let status =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    let wchan =
                        std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                    let state = status
                        .lines()
                        .find(|l| l.starts_with("State:"))
                        .unwrap_or("");
                    format!("pid {pid}, {state}, wchan {wchan}")
                })
                .unwrap_or_default();
            let _ = child.kill().await;
            return Err(format!(
                "oidc-provider did not start within 20 s ({state}); its stderr ended with:\n{}",
                tail.join("\n")
            ));
        };
        let ready = ready
            .expect("read stdout")
            .expect("oidc-provider exited before it was ready");
        let issuer = ready
            .strip_prefix("READY ")
            .expect("READY line")
            .trim()
            .to_owned();
        Ok(Self {
            issuer,
            _child: child,
        })
    }

    /// The provider's event counters (`/test/events`).
    pub async fn events(&self) -> Value {
        reqwest::get(format!("{}/test/events", self.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Verifies an identity assertion with npm `jose` (an independent JWT library), as an
/// app would: the keys from `jwks_url`, ES256, `iss`, `aud`, `exp` at `now`. The
/// verified `{header, payload}`, or jose's error.
pub async fn verify_assertion(
    jwks_url: &str,
    issuer: &str,
    audience: &str,
    now: i64,
    token: &str,
) -> Result<Value, String> {
    let out = Command::new("node")
        .arg("verify-assertion.mjs")
        .args([jwks_url, issuer, audience, &now.to_string(), token])
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    } else {
        Err(text)
    }
}

/// Verifies an identity assertion with Python's PyJWT, with the code
/// `docs/authorization.md` shows (`tests/interop/verify_assertion.py`), at the real
/// time. `None` (after one line) when PyJWT is not installed, unless the interop suite
/// is required.
pub async fn verify_assertion_with_pyjwt(
    jwks_url: &str,
    issuer: &str,
    audience: &str,
    token: &str,
) -> Option<Result<Value, String>> {
    let has_pyjwt = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pyjwt {
        if std::env::var_os(REQUIRE_VAR).is_some() {
            panic!(
                "interop suite required ({REQUIRE_VAR}) but PyJWT is not installed (pip install \"pyjwt[crypto]\")"
            );
        }
        eprintln!("skipping the PyJWT check: pip install \"pyjwt[crypto]\"");
        return None;
    }
    let out = Command::new("python3")
        .arg("verify_assertion.py")
        .args([jwks_url, issuer, audience, token])
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some(if out.status.success() {
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    } else {
        Err(text)
    })
}

/// A provider (started with `provider_env`) with one client, `app` (`extra` merged into
/// its registration), and a gateway on a pre-bound port configured by `env`.
pub async fn start_with_gateway(
    extra: Value,
    provider_env: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Option<(RealProvider, TestGateway)> {
    let mut options = Options {
        file_store: true,
        ..Options::default()
    };
    for (k, v) in env {
        options = options.env(k, v);
    }
    start_with_gateway_options(extra, provider_env, options).await
}

/// [`start_with_gateway`] with the gateway's whole [`Options`] (its listener is ours).
pub async fn start_with_gateway_options(
    extra: Value,
    provider_env: &[(&str, &str)],
    options: Options,
) -> Option<(RealProvider, TestGateway)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let mut client = json!({
        "client_id": "app",
        "redirect_uris": [format!("{gateway_url}/auth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    for (k, v) in extra.as_object().unwrap() {
        client[k] = v.clone();
    }
    let node = RealProvider::start(json!([client]), provider_env).await?;
    let options = Options {
        listener: Some(listener),
        ..options
    };
    let gw = TestGateway::start_with(&node.issuer, options).await;
    Some((node, gw))
}

/// [`start_with_gateway`] for a client that authenticates with `secret` by `method`
/// (registered so at the provider, configured so at the gateway).
pub async fn start_with_client_secret(
    secret: &str,
    method: &str,
    provider_env: &[(&str, &str)],
) -> Option<(RealProvider, TestGateway)> {
    let client = json!({"client_secret": secret, "token_endpoint_auth_method": method});
    start_with_gateway(client, provider_env, &client_secret_env(secret, method)).await
}

/// A client that authenticates with `secret` by `method` signs alice in, refreshes
/// and signs out ([`sign_in_refresh_and_out`]); what the provider recorded (`None`:
/// the provider could not start, and the test skips).
pub async fn events_of_a_secret_client(
    secret: &str,
    method: &str,
    provider_env: &[(&str, &str)],
) -> Option<Value> {
    let (node, gw) = start_with_client_secret(secret, method, provider_env).await?;
    sign_in_refresh_and_out(&node, &gw).await;
    Some(node.events().await)
}

/// The gateway's settings for a client secret sent by `method`.
pub fn client_secret_env<'a>(secret: &'a str, method: &'a str) -> [(&'static str, &'a str); 2] {
    [
        ("PORTCULLIS_CLIENT_SECRET", secret),
        ("PORTCULLIS_PROVIDER_TOKEN_ENDPOINT_AUTH_METHOD", method),
    ]
}

/// Signs alice in, refreshes once (the clock past the refresh point) and signs out
/// (which revokes the refresh token): three authenticated calls.
pub async fn sign_in_refresh_and_out(node: &RealProvider, gw: &TestGateway) {
    let browser = Browser::new();
    let resp = gw
        .sign_in_through_form(&browser, "alice", "alice", "/")
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    gw.clock.advance(250);
    let session = browser.get(&gw.at("/auth/session"), &[]).await;
    assert_eq!(session.status, 200, "{}", session.body);
    assert_eq!(session.json()["user"]["email"], "alice@example.com");
    let out = gw.sign_out_api(&browser).await;
    assert_eq!(out.status, 200, "{}", out.body);
    let events = node.events().await;
    assert_eq!(events["grants"]["authorization_code"], 1, "{events}");
    assert_eq!(events["grants"]["refresh_token"], 1, "{events}");
    assert_eq!(events["counts"]["revocation.success"], 1, "{events}");
}

/// How many token, revocation or PAR requests used `method` and got `status`.
pub fn auth_calls(events: &Value, path: &str, method: &str, status: u16) -> u64 {
    events["client_auth"]["methods"][format!("{path} {method} {status}")]
        .as_u64()
        .unwrap_or(0)
}
