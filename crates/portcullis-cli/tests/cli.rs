//! The `portcullis` binary as a user runs it: help, version, check-config, serve.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support::SendJson as _;
use portcullis_test_support::free_port;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

fn portcullis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    // A clean environment: only what each test sets.
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn help_and_version_work_everywhere() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check-config", "--help"],
    ] {
        let out = portcullis().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("--config") || args == ["--help"]);
    }
    for args in [vec!["--version"], vec!["serve", "--version"]] {
        let out = portcullis().args(&args).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn check_config_lists_every_problem_and_exits_non_zero() {
    let out = portcullis()
        .arg("check-config")
        .env("PORTCULLIS_LISTEN", "0.0.0.0:8080")
        .env("PORTCULLIS_SESSION_IDLE_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "public_url",
        "issuer",
        "client_id",
        "idle_timeout",
        "4 problem(s)",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

/// `portcullis ARGS --config FILE`, run to the end.
fn with_config(args: &[&str], file: &std::path::Path) -> std::process::Output {
    portcullis()
        .args(args)
        .arg("--config")
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = std::env::temp_dir().join(format!("pc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("portcullis.toml");
    std::fs::write(
        &file,
        "issuer = \"https://id.example.com\"\nclient_id = \"app\"\npublic_url = \"https://app.example.com\"\nlisten = \"0.0.0.0:8080\"\n[access]\nallowed_email_domains = [\"example.com\"]\n",
    )
    .unwrap();
    let out = with_config(&["check-config"], &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("https://app.example.com/auth/callback"));
    assert!(text.contains("mode          forward-auth only"), "{text}");
    let out = portcullis()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("PORTCULLIS_UPSTREAM", "http://127.0.0.1:3000")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mode          reverse proxy"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn serve_answers_health_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("pc-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A provider address with nothing listening: serve must still start (not ready).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = portcullis()
        .arg("serve")
        .current_dir(&dir)
        .env("PORTCULLIS_ISSUER", format!("http://{dead}"))
        .env("PORTCULLIS_CLIENT_ID", "app")
        .env("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "PORTCULLIS_METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            break out;
        }
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Metrics on their own listener (the health check counted), never on the public one.
    let metrics = http_get(metrics_port, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
    assert!(
        metrics.contains("portcullis_requests_total{kind=\"gateway\",status=\"200\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_change_feed_up "), "{metrics}");
    let public = http_get(port, "/metrics");
    assert!(public.starts_with("HTTP/1.1 404"), "{public}");
    assert!(!public.contains("portcullis_"), "{public}");
    // The key ring was generated beside the default SQLite file.
    assert!(dir.join("portcullis.db.secret").exists());
    unsafe_free_sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let logs: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("generated a new session key ring"))
    );
    assert!(
        logs.iter().all(|l| l.starts_with('{')),
        "json log lines: {logs:?}"
    );
    // The access log in JSON: one object per request, with its fields.
    let access: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["target"] == "portcullis::access")
        .collect();
    let health = access
        .iter()
        .find(|v| v["fields"]["path"] == "/healthz")
        .unwrap_or_else(|| panic!("no access line for /healthz: {logs:?}"));
    assert_eq!(health["fields"]["method"], "GET");
    assert_eq!(health["fields"]["status"], 200);
    assert_eq!(health["fields"]["kind"], "gateway");
    assert!(
        health["fields"]["duration_ms"].as_f64().is_some(),
        "{health}"
    );
    assert_eq!(health["level"], "INFO");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sighup_reloads_the_secret_file_and_a_bad_one_changes_nothing() {
    let (dir, mut env) = gateway_env("sighup");
    let keys = dir.join("keys");
    let first = portcullis::session::KeyRing::generate_secret();
    std::fs::write(&keys, first.as_bytes()).unwrap();
    env.retain(|(k, _)| k != "PORTCULLIS_SECRET");
    let port = free_port();
    let mut child = portcullis()
        .arg("serve")
        .envs(env)
        .env("PORTCULLIS_SECRET_FILE", &keys)
        .env("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    };
    wait_for("portcullis starting");
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    // A new key in front of the old one.
    let second = portcullis::session::KeyRing::generate_secret();
    std::fs::write(&keys, format!("{}\n{}\n", &*second, &*first)).unwrap();
    hup();
    let line = wait_for("reloaded the key ring");
    assert!(line.contains("2 keys"), "{line}");
    // A broken file, then one without the key that seals now: refused, still serving.
    std::fs::write(&keys, "not a key").unwrap();
    hup();
    wait_for("reload refused");
    std::fs::write(&keys, first.as_bytes()).unwrap();
    hup();
    let line = wait_for("reload refused");
    assert!(line.contains("lacks the key that seals now"), "{line}");
    assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"));
    unsafe_free_sigterm(child.id());
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(dir).unwrap();
}

/// One GET on loopback `port`, the whole answer as text.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Sends SIGTERM with the `kill` command (no libc dependency, no unsafe).
fn unsafe_free_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn idp_refuses_remote_listening_and_bad_configs() {
    let dir = std::env::temp_dir().join(format!("pc-idp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let remote = dir.join("remote.toml");
    std::fs::write(
        &remote,
        format!(
            "issuer = \"http://0.0.0.0:9100\"\nlisten = \"0.0.0.0:9100\"\nstore = \"sqlite:{}\"\n[[clients]]\nid = \"app\"\nredirect_uris = [\"http://127.0.0.1:8080/auth/callback\"]\n",
            dir.join("idp.db").display()
        ),
    )
    .unwrap();
    let out = with_config(&["idp"], &remote);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "issuer = \"http://127.0.0.1:9100\"\nlisten = \"127.0.0.1:9100\"\ntypo = 1\n",
    )
    .unwrap();
    let out = with_config(&["idp"], &bad);
    assert_eq!(out.status.code(), Some(2));

    let rotate = with_config(&["idp", "--rotate-keys"], &remote);
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let help = portcullis().args(["idp", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--allow-remote"));
    std::fs::remove_dir_all(dir).unwrap();
}

use portcullis_test_support::browser;

/// A base port whose next three are free as well (the demo's gateway, two providers
/// and its app).
fn free_port_quad() -> u16 {
    for _ in 0..200 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > 65_000 {
            continue;
        }
        let all_free = (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no four consecutive free ports");
}

/// Follows the demo from `start` to the app: the chooser's link to `provider` when
/// the chooser shows, then the provider's form with `user` / `user` and the callback.
/// The app's page, and whether the chooser was seen.
async fn through_the_demo(
    b: &browser::Browser,
    base: &str,
    start: &str,
    provider: &str,
    user: &str,
) -> (browser::Resp, bool) {
    let mut start = format!("{base}{start}");
    let mut resp = b.navigate(&start).await;
    while matches!(resp.status, 302 | 303) && resp.location().unwrap().starts_with('/') {
        start = format!("{base}{}", resp.location().unwrap());
        resp = b.navigate(&start).await;
    }
    let saw_chooser = resp.status == 200 && resp.body.contains("Continue with");
    if saw_chooser {
        let at = resp
            .body
            .find(&format!("provider={provider}&amp;"))
            .expect("a link per provider");
        let from = resp.body[..at].rfind("href=\"").unwrap() + 6;
        let to = at + resp.body[at..].find('"').unwrap();
        start = format!("{base}{}", resp.body[from..to].replace("&amp;", "&"));
    }
    let callback = format!("{base}/auth/callback/{provider}");
    let (_, resp) = browser::follow_sign_in(b, &start, user, user, &callback).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let page = b
        .navigate(&format!("{base}{}", resp.location().unwrap()))
        .await;
    (page, saw_chooser)
}

/// The README's first command, as written (`portcullis demo`), on a free port: the
/// chooser first; alice signs in at Example Corp through the real form, sees herself,
/// calls the API, signs out; carol's address takes her to Partner.
#[tokio::test]
async fn the_demo_signs_alice_in_through_the_real_form() {
    use tokio::io::AsyncBufReadExt;
    let port = free_port_quad();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["demo", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
    })
    .await
    .expect("the demo did not start");
    let base = format!("http://127.0.0.1:{port}");
    assert!(printed.contains(&format!("{base}/")), "{printed}");
    assert!(printed.contains("alice / alice") && printed.contains("bob / bob"));
    assert!(printed.contains("carol / carol"), "{printed}");

    let b = browser::Browser::new();
    let (resp, saw_chooser) = through_the_demo(&b, &base, "/", "corp", "alice").await;
    assert!(saw_chooser, "the chooser was shown first");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(
        resp.body
            .contains("Hello, <span id=\"name\">Alice Example</span>"),
        "{}",
        resp.body
    );
    assert!(resp.body.contains("x-user-email: alice@example.com"));
    assert!(resp.body.contains("x-user-provider: corp"), "{}", resp.body);

    // Carol's address takes her to Partner's form, no choice needed.
    let carol = browser::Browser::new();
    let hint = "/auth/login?login_hint=carol%40partner.example&return_to=%2F";
    let (resp, saw_chooser) = through_the_demo(&carol, &base, hint, "partner", "carol").await;
    assert!(!saw_chooser);
    assert!(
        resp.body.contains("x-user-provider: partner"),
        "{}",
        resp.body
    );
    assert!(resp.body.contains("x-user-email: carol@partner.example"));

    let api = b
        .request(
            reqwest::Method::POST,
            &format!("{base}/api/hello"),
            &[("x-csrf", "1"), ("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(api.status, 200);
    assert!(
        api.json()["message"]
            .as_str()
            .unwrap()
            .contains("Alice Example")
    );
    // The machine client, as docs/machine-clients.md walks through it with curl.
    assert!(
        printed.contains("grant_type=client_credentials"),
        "{printed}"
    );
    let corp = format!("http://127.0.0.1:{}", port + 1);
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!("{corp}/token"))
        .basic_auth("reporting", Some("reporting-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send_json()
        .await;
    let token = token["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned();
    let machine = browser::Browser::new();
    let orders = machine
        .get(
            &format!("{base}/api/orders"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(orders.status, 200, "{}", orders.body);
    let caller = &orders.json()["caller"];
    assert_eq!(caller["auth_method"], "bearer");
    assert_eq!(caller["provider"], "corp");
    assert!(caller["email"].is_null(), "a client has no email: {caller}");
    let tampered = machine
        .get(
            &format!("{base}/api/orders"),
            &[("authorization", &format!("Bearer {}", tamper(&token)))],
        )
        .await;
    assert_eq!(tampered.status, 401);
    assert!(
        tampered.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let out = b
        .request(
            reqwest::Method::POST,
            &format!("{base}/auth/logout"),
            &[("x-csrf", "1"), ("accept", "application/json")],
            None,
        )
        .await;
    assert_eq!(out.status, 200);
    let after = b
        .get(
            &format!("{base}/api/hello"),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(after.status, 401);
    unsafe_free_sigterm(child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `token` with one character of its signature changed (never a trailing one, whose
/// low bits a base64 decoder may ignore).
fn tamper(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() - 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// `portcullis sessions list|revoke` against the store of a running gateway: what it
/// lists is live, and what it revokes is refused by that gateway at once.
#[tokio::test]
async fn sessions_list_and_revoke_by_handle_user_and_all() {
    use portcullis::session::SessionId;
    use portcullis::store::{NewSession, UserProfile};

    let (_dir, env) = gateway_env("sessions");

    // The running gateway, and three sessions in its store.
    let config = portcullis::Config::load_from(None, env.clone()).unwrap();
    let gateway = std::sync::Arc::new(portcullis::Gateway::start(config).await.unwrap());
    let store = gateway.store().clone();
    #[allow(clippy::disallowed_methods)] // what the store's peer clock says
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let user = |sub: &str| {
        let store = store.clone();
        let sub = sub.to_owned();
        async move {
            let profile = UserProfile {
                email: Some(format!("{sub}@example.com")),
                name: None,
            };
            store
                .upsert_user("http://127.0.0.1:9", &sub, &profile, now)
                .await
                .unwrap()
        }
    };
    let (alice, bob) = (user("alice").await, user("bob").await);
    let mut ids = Vec::new();
    for (u, ua) in [
        (&alice, "Firefox\u{1b}[2J"),
        (&alice, "Safari"),
        (&bob, "curl"),
    ] {
        let id = SessionId::generate();
        let session = NewSession {
            user_agent: Some(ua.into()),
            ..NewSession::plain(u.id, id.hash(), now)
        };
        store.create_session(&session).await.unwrap();
        ids.push(id);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth/session", listener.local_addr().unwrap());
    let app = portcullis::http::router(gateway).unwrap();
    portcullis_test_support::serve_in_background(listener, app);
    let client = reqwest::Client::new();
    let status = |id: &SessionId| {
        let req = client
            .get(&url)
            .header("cookie", format!("portcullis={}", id.expose()));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // The CLI is another process: the gateway learns of its writes within a second
    // (docs/sessions.md "The session cache"; SQLite is polled).
    let refused_within_a_second = |id: &SessionId| {
        let id = id.clone();
        let status = &status;
        async move {
            let start = Instant::now();
            while status(&id).await != 401 {
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "still signed in after 1 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::from(portcullis());
        cmd.arg("sessions").args(args);
        cmd.envs(env.iter().cloned());
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    let (code, out, err) = run(&["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with(
            "HANDLE\tUSER ID\tEMAIL\tPROVIDER\tCREATED\tLAST SEEN\tEXPIRES\tUSER AGENT"
        )
    );
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.split('\t').nth(3) == Some("default")),
        "each session's provider: {out}"
    );
    for id in &ids {
        assert!(out.contains(id.hash().short()), "{out}");
        assert!(!out.contains(id.expose()), "never the session id itself");
    }
    assert!(out.contains("alice@example.com") && out.contains("bob@example.com"));
    assert!(
        out.contains("Firefox?[2J"),
        "control characters are not printed: {out}"
    );
    assert!(!out.contains('\u{1b}'));
    let (_, out, _) = run(&["list", "--user", &bob.id.to_string()]).await;
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("curl") && !out.contains("Safari"));

    for id in &ids {
        assert_eq!(status(id).await, 200);
    }
    // By handle: that session, within a second, for the running gateway.
    let (code, out, err) = run(&["revoke", ids[0].hash().short()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 session(s) revoked"), "{out}");
    refused_within_a_second(&ids[0]).await;
    assert_eq!(status(&ids[1]).await, 200);
    // Unknown and malformed handles are errors, not silent successes.
    for bad in [ids[0].hash().short(), "zzzzzzzzzzzz", "abc"] {
        let (code, _, err) = run(&["revoke", bad]).await;
        assert_ne!(code, Some(0), "{bad}");
        assert!(err.contains("handle"), "{err}");
    }
    // By user.
    let (code, out, _) = run(&["revoke", "--user", &alice.id.to_string()]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("1 session(s) revoked"), "{out}");
    refused_within_a_second(&ids[1]).await;
    assert_eq!(status(&ids[2]).await, 200);
    // Everything.
    let (code, out, _) = run(&["revoke", "--all"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("1 session(s) revoked"), "{out}");
    refused_within_a_second(&ids[2]).await;
    // Exactly one of HANDLE, --user, --all.
    let (code, _, _) = run(&["revoke"]).await;
    assert_ne!(code, Some(0));
    let (code, _, _) = run(&["revoke", "--all", "--user", &bob.id.to_string()]).await;
    assert_ne!(code, Some(0));
}

/// `portcullis keys rotate` adds the next signing key to the configured store: a gateway
/// reading the store publishes both, and the old one keeps signing until the new one
/// is 30 s old.
#[tokio::test]
async fn keys_rotate_adds_the_next_signing_key() {
    let (dir, env) = gateway_env("keys");
    let config = portcullis::Config::load_from(None, env.clone()).unwrap();
    let gateway = std::sync::Arc::new(portcullis::Gateway::start(config).await.unwrap());
    gateway.sessions().prepare_assertion_keys().await.unwrap();
    let first = gateway.store().signing_keys().await.unwrap();
    assert_eq!(first.len(), 1);

    let mut cmd = tokio::process::Command::from(portcullis());
    cmd.args(["keys", "rotate"]).envs(env.iter().cloned());
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = gateway.store().signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], first[0]);
    assert_eq!(keys[1].generation, 2);
    assert!(
        stdout.contains(&format!("added signing key {} (generation 2)", keys[1].kid)),
        "{stdout}"
    );
    // Another gateway on the store publishes both.
    let config = portcullis::Config::load_from(None, env).unwrap();
    let other = std::sync::Arc::new(portcullis::Gateway::start(config).await.unwrap());
    let jwks = other.sessions().assertion_jwks().await.unwrap();
    let kids = portcullis_test_support::kids(&jwks);
    assert_eq!(kids, [keys[0].kid.as_str(), keys[1].kid.as_str()]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh folder with a SQLite store, and the settings of a gateway on it (an issuer
/// nobody listens on: these commands never ask it).
fn gateway_env(label: &str) -> (std::path::PathBuf, Vec<(String, String)>) {
    let dir = std::env::temp_dir().join(format!(
        "pc-cli-{label}-{}",
        portcullis::random::random_token()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = portcullis::session::KeyRing::generate_secret();
    let env = [
        ("PORTCULLIS_ISSUER", "http://127.0.0.1:9".to_owned()),
        ("PORTCULLIS_CLIENT_ID", "app".to_owned()),
        (
            "PORTCULLIS_STORE",
            format!("sqlite:{}", dir.join("portcullis.db").display()),
        ),
        ("PORTCULLIS_SECRET", secret.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    (dir, env)
}

/// G06: paths spelled to forge log fields or lines (` status=200 user=…`, quotes,
/// newlines, bidi overrides) give one access line each, in text and in JSON, that
/// parses back to exactly the access log's fields.
#[test]
fn g06_hostile_paths_never_forge_access_log_fields() {
    let hostile = [
        "/public/a%20status=200%20user=00000000-0000-0000-0000-000000000000",
        "/public/%22q%22%20kind=gateway",
        "/public/%E2%80%AEx%E2%80%AC",
        "/public/a%0Afake%20line%20status=200",
        "/public/a\"b",
    ];
    for format in ["text", "json"] {
        let (dir, env) = gateway_env(&format!("g06-{format}"));
        let port = free_port();
        let mut child = portcullis()
            .arg("serve")
            .envs(env)
            .env("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "PORTCULLIS_UPSTREAM",
                format!("http://127.0.0.1:{}", free_port()),
            )
            .env("PORTCULLIS_PUBLIC_PATHS", "/public/*")
            .env("PORTCULLIS_LOG_FORMAT", format)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        for path in hostile {
            let answer = http_get(port, path);
            assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
        }
        unsafe_free_sigterm(child.id());
        assert!(child.wait().unwrap().success());
        let logs: Vec<String> = BufReader::new(child.stderr.take().unwrap())
            .lines()
            .map(Result::unwrap)
            .collect();
        let access: Vec<&String> = logs
            .iter()
            .filter(|l| l.contains("portcullis::access"))
            .collect();
        assert_eq!(access.len(), hostile.len(), "{format}: {logs:#?}");
        // serve waits for the access log before it says it stopped: no line is lost
        // with the process.
        let stopped = logs.iter().position(|l| l.contains("portcullis stopped"));
        let last_access = logs.iter().rposition(|l| l.contains("portcullis::access"));
        assert!(
            stopped.is_some() && last_access < stopped,
            "{format}: {logs:#?}"
        );
        for line in &access {
            assert!(
                !line.chars().any(|c| matches!(c, '\u{202a}'..='\u{202e}')),
                "{line}"
            );
            let mut fields: Vec<String> = if format == "json" {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                v["fields"].as_object().unwrap().keys().cloned().collect()
            } else {
                portcullis_test_support::log_text_fields(line)
            };
            fields.sort_unstable();
            let mut expected = ["duration_ms", "kind", "method", "path", "status"].to_vec();
            if format == "json" {
                expected.insert(2, "message");
            }
            assert_eq!(fields, expected, "{format}: {line}");
        }
        assert!(
            access
                .iter()
                .any(|l| l.contains("/public/a%20status=200%20user=")),
            "{access:#?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn keys_client_new_writes_a_key_and_certificate_the_gateway_reads() {
    use std::os::unix::fs::PermissionsExt as _;
    for kind in ["ec", "ed25519", "rsa"] {
        let dir = std::env::temp_dir().join(format!(
            "pc-client-new-{kind}-{}",
            portcullis::random::random_token()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let run = || {
            portcullis()
                .current_dir(&dir)
                .args(["keys", "client-new", "--type", kind, "--out", "key.pem"])
                .args(["--self-signed", "--cert-out", "cert.pem"])
                .output()
                .unwrap()
        };
        let out = run();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("client_key_file = \"key.pem\""), "{stdout}");
        assert!(
            stdout.contains("client_cert_file = \"cert.pem\""),
            "{stdout}"
        );
        let mode = std::fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the private key is readable by its owner only"
        );

        // The gateway reads both, and publishes the key set that was printed.
        let env = vec![
            (
                "PORTCULLIS_ISSUER".to_owned(),
                "https://op.example".to_owned(),
            ),
            ("PORTCULLIS_CLIENT_ID".to_owned(), "app".to_owned()),
            (
                "PORTCULLIS_PROVIDER_CLIENT_KEY_FILE".to_owned(),
                dir.join("key.pem").display().to_string(),
            ),
            (
                "PORTCULLIS_PROVIDER_CLIENT_CERT_FILE".to_owned(),
                dir.join("cert.pem").display().to_string(),
            ),
        ];
        let config = portcullis::Config::load_from(None, env).unwrap();
        let key = config.providers[0].settings.client_key.as_deref().unwrap();
        let jwks = key.public_jwks(false);
        assert!(jwks["keys"][0]["x5t#S256"].is_string(), "{jwks}");
        assert!(stdout.contains(key.kid()), "{stdout}");
        let printed: serde_json::Value =
            serde_json::from_str(&stdout[stdout.find('{').unwrap()..=stdout.rfind('}').unwrap()])
                .unwrap();
        assert_eq!(printed, jwks);

        // A second run never overwrites the key.
        let before = std::fs::read(dir.join("key.pem")).unwrap();
        let again = run();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
        assert_eq!(std::fs::read(dir.join("key.pem")).unwrap(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
