//! The real, certified OpenID provider (npm `oidc-provider`, `tests/interop/`), run as
//! a child process on a free loopback port. It exits when its stdin closes, so a test
//! that ends (or panics) takes it down.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
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
        let ready = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| {
                let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
                panic!(
                    "oidc-provider did not start within 30 s; its stderr ended with:\n{}",
                    tail.join("\n")
                )
            })
            .expect("read stdout")
            .expect("oidc-provider exited before it was ready");
        let issuer = ready
            .strip_prefix("READY ")
            .expect("READY line")
            .trim()
            .to_owned();
        Some(Self {
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
