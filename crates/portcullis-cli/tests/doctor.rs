//! `portcullis doctor` against real peers: the npm `oidc-provider` (as configured
//! normally, without `offline_access`, without RFC 9207 `iss`, with a wrong client
//! secret), the dev provider (`portcullis idp`), an issuer nobody listens on, and a
//! configuration that does not load. The findings and the exit status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support::dev_provider;
use portcullis_test_support::oidc_provider;
use portcullis_test_support::upstream;

use std::process::Stdio;

use oidc_provider::RealProvider;
use serde_json::json;
use tokio::process::Command;
use upstream::TestUpstream;

const PUBLIC: &str = "http://127.0.0.1:18080";
const SECRET: &str = "doctor-test-secret-0123456789";

/// `portcullis doctor` with these settings (and a SQLite store of its own): its output
/// and exit status.
async fn doctor(env: &[(&str, &str)]) -> (String, i32) {
    let dir =
        std::env::temp_dir().join(format!("pc-doctor-{}", portcullis::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("doctor")
        .env("PORTCULLIS_CLIENT_ID", "app")
        .env("PORTCULLIS_PUBLIC_URL", PUBLIC)
        .env(
            "PORTCULLIS_STORE",
            format!("sqlite:{}", dir.join("portcullis.db").display()),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    (text, out.status.code().unwrap())
}

/// The line of `check`, e.g. `line(&out, "warn", "iss")`.
/// `portcullis doctor --config FILE` with no `PORTCULLIS_*` variable of the caller's.
async fn doctor_with_file(file: std::path::PathBuf) -> std::io::Result<std::process::Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("doctor")
        .arg("--config")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .await
}

fn line<'a>(out: &'a str, level: &str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(level) && words.next() == Some(check)
        })
        .unwrap_or_else(|| panic!("no `{level} {check}` line in:\n{out}"))
}

async fn oidc_provider(env: &[(&str, &str)]) -> Option<RealProvider> {
    let client = json!([{
        "client_id": "app",
        "client_secret": SECRET,
        "token_endpoint_auth_method": "client_secret_basic",
        "redirect_uris": [format!("{PUBLIC}/auth/callback")],
        "post_logout_redirect_uris": [format!("{PUBLIC}/auth/logged-out")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "backchannel_logout_uri": format!("{PUBLIC}/auth/backchannel-logout"),
    }]);
    RealProvider::start(client, env).await
}

#[tokio::test]
async fn all_is_well_with_oidc_provider_and_every_uri_to_register_is_printed() {
    let Some(op) = oidc_provider(&[]).await else {
        return;
    };
    let up = TestUpstream::start().await;
    let (out, status) = doctor(&[
        ("PORTCULLIS_ISSUER", &op.issuer),
        ("PORTCULLIS_CLIENT_SECRET", SECRET),
        ("PORTCULLIS_UPSTREAM", &up.url),
    ])
    .await;
    assert_eq!(status, 0, "{out}");
    assert!(
        out.starts_with(&format!("portcullis doctor: {} (client app)\n", op.issuer)),
        "{out}"
    );
    for check in [
        "config",
        "discovery",
        "jwks",
        "pkce",
        "iss",
        "refresh",
        "logout",
        "backchannel",
        "clock",
        "client",
        "store",
        "upstream",
    ] {
        line(&out, "ok", check);
    }
    assert!(
        line(&out, "ok", "client").contains("invalid_grant"),
        "{out}"
    );
    assert!(line(&out, "ok", "jwks").contains("RS256"), "{out}");
    for (what, uri) in [
        ("redirect URI", "/auth/callback"),
        ("back-channel logout URI", "/auth/backchannel-logout"),
        ("post-logout redirect URI", "/auth/logged-out"),
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(what) && l.ends_with(&format!("{PUBLIC}{uri}"))),
            "{what} missing:\n{out}"
        );
    }
    assert!(out.ends_with("0 errors, 0 warnings\n"), "{out}");
}

#[tokio::test]
async fn a_wrong_client_secret_is_an_error() {
    let Some(op) = oidc_provider(&[]).await else {
        return;
    };
    let (out, status) = doctor(&[
        ("PORTCULLIS_ISSUER", &op.issuer),
        ("PORTCULLIS_CLIENT_SECRET", "not-the-secret"),
    ])
    .await;
    assert_eq!(status, 2, "{out}");
    let client = line(&out, "error", "client");
    assert!(client.contains("invalid_client"), "{client}");
    assert!(
        client.contains("— fix: check client_id and client_secret"),
        "{client}"
    );
    // The other checks still ran.
    line(&out, "ok", "jwks");
    line(&out, "ok", "store");
}

#[tokio::test]
async fn a_provider_without_offline_access_or_iss_gets_warnings() {
    let Some(op) = oidc_provider(&[("SCOPES", "openid email profile"), ("NO_ISS", "1")]).await
    else {
        return;
    };
    let (out, status) = doctor(&[
        ("PORTCULLIS_ISSUER", &op.issuer),
        ("PORTCULLIS_CLIENT_SECRET", SECRET),
    ])
    .await;
    assert_eq!(status, 1, "{out}");
    assert!(
        line(&out, "warn", "refresh").contains("offline_access is not offered"),
        "{out}"
    );
    assert!(line(&out, "warn", "iss").contains("RFC 9207"), "{out}");
    line(&out, "ok", "client");
    assert!(out.ends_with("0 errors, 2 warnings\n"), "{out}");

    // Asking for offline_access all the same: discovery need not list every scope, so
    // a warning that says what happens either way, not an error.
    let (out, status) = doctor(&[
        ("PORTCULLIS_ISSUER", &op.issuer),
        ("PORTCULLIS_CLIENT_SECRET", SECRET),
        ("PORTCULLIS_SCOPES", "openid email offline_access"),
    ])
    .await;
    assert_eq!(status, 1, "{out}");
    let refresh = line(&out, "warn", "refresh");
    assert!(
        refresh.contains("does not list") && refresh.contains("invalid_scope"),
        "{out}"
    );
}

#[tokio::test]
async fn the_dev_provider_passes() {
    let issuer = dev_provider::start(PUBLIC, Some(SECRET)).await;
    let (out, status) = doctor(&[
        ("PORTCULLIS_ISSUER", &issuer),
        ("PORTCULLIS_CLIENT_SECRET", SECRET),
    ])
    .await;
    assert_eq!(status, 0, "{out}");
    line(&out, "ok", "client");
    line(&out, "ok", "backchannel");
    line(&out, "ok", "refresh");
    let (out, status) = doctor(&[
        ("PORTCULLIS_ISSUER", &issuer),
        ("PORTCULLIS_CLIENT_SECRET", "wrong"),
    ])
    .await;
    assert_eq!(status, 2, "{out}");
    line(&out, "error", "client");
}

#[tokio::test]
async fn an_unreachable_issuer_and_a_bad_configuration_are_errors() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (out, status) = doctor(&[("PORTCULLIS_ISSUER", &format!("http://{dead}"))]).await;
    assert_eq!(status, 2, "{out}");
    let discovery = line(&out, "error", "discovery");
    assert!(discovery.contains("cannot fetch"), "{discovery}");
    assert!(discovery.contains("— fix: check `issuer`"), "{discovery}");
    // What does not need the provider is still checked.
    line(&out, "ok", "store");
    line(&out, "ok", "upstream");

    let (out, status) = doctor(&[
        ("PORTCULLIS_ISSUER", "https://id.example.com"),
        ("PORTCULLIS_SESSION_IDLE_TIMEOUT", "soon"),
    ])
    .await;
    assert_eq!(status, 2, "{out}");
    assert!(
        line(&out, "error", "config").contains("idle_timeout"),
        "{out}"
    );
}

/// A fresh store prefix, so that parallel tests on one server never share tables.
fn random_prefix() -> String {
    format!(
        "doc{}",
        &portcullis::random::random_token()[..10].to_ascii_lowercase()
    )
    .chars()
    .filter(|c| c.is_ascii_alphanumeric())
    .collect()
}

#[tokio::test]
async fn shared_stores_are_reached_and_an_evicting_redis_is_a_warning() {
    let secret = portcullis::session::KeyRing::generate_secret();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let issuer = format!("http://{dead}");
    let prefix = random_prefix();
    match std::env::var("PORTCULLIS_TEST_POSTGRES_URL") {
        Ok(url) => {
            let (out, _) = doctor(&[
                ("PORTCULLIS_ISSUER", &issuer),
                ("PORTCULLIS_STORE", &url),
                ("PORTCULLIS_STORE_PREFIX", &prefix),
                ("PORTCULLIS_SECRET", &secret),
            ])
            .await;
            assert!(
                line(&out, "ok", "store").contains("reachable, schema current"),
                "{out}"
            );
        }
        Err(_) => {
            eprintln!("skipped: set PORTCULLIS_TEST_POSTGRES_URL to check doctor on PostgreSQL")
        }
    }
    let Ok(url) = std::env::var("PORTCULLIS_TEST_REDIS_URL") else {
        eprintln!("skipped: set PORTCULLIS_TEST_REDIS_URL to check doctor on Redis");
        return;
    };
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let policy: Vec<String> = ::redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut admin)
        .await
        .unwrap();
    let run = || async {
        doctor(&[
            ("PORTCULLIS_ISSUER", &issuer),
            ("PORTCULLIS_STORE", &url),
            ("PORTCULLIS_STORE_PREFIX", &prefix),
            ("PORTCULLIS_SECRET", &secret),
        ])
        .await
        .0
    };
    if policy[1] == "noeviction" {
        let out = run().await;
        line(&out, "ok", "store");
        assert!(!out.contains("maxmemory-policy"), "{out}");
    }
    // Without `maxmemory` an evicting policy evicts nothing: harmless to the other tests
    // on this server while it lasts, and put back at once.
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut admin)
        .await
        .unwrap();
    let out = run().await;
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg(&policy[1])
        .query_async(&mut admin)
        .await
        .unwrap();
    line(&out, "ok", "store");
    let warning = line(&out, "warn", "store");
    assert!(
        warning.contains("maxmemory-policy allkeys-lru"),
        "{warning}"
    );
    assert!(warning.contains("noeviction"), "{warning}");
}

/// Several providers: a block per provider (each checked against its own metadata),
/// each one's redirect URI to register, and the nOAuth warning when two providers list
/// no `email_domains`.
#[tokio::test]
async fn several_providers_get_a_block_each_and_the_email_domains_warning() {
    let corp = dev_provider::start_for_callback(PUBLIC, "", "/auth/callback/corp").await;
    let partner = dev_provider::start_for_callback(PUBLIC, "", "/auth/callback/partner").await;
    let dir =
        std::env::temp_dir().join(format!("pc-doctor-{}", portcullis::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |domains: bool| {
        let file = dir.join(format!("portcullis-{domains}.toml"));
        let line = |d: &str| {
            if domains {
                format!("email_domains = [\"{d}\"]\n")
            } else {
                String::new()
            }
        };
        std::fs::write(
            &file,
            format!(
                "public_url = \"{PUBLIC}\"\nstore = \"sqlite:{}\"\n\
                 [[providers]]\nid = \"corp\"\nname = \"Example Corp\"\nissuer = \"{corp}\"\nclient_id = \"app\"\n{}\
                 [[providers]]\nid = \"partner\"\nname = \"Partner\"\nissuer = \"{partner}\"\nclient_id = \"app\"\n{}",
                dir.join("portcullis.db").display(),
                line("example.com"),
                line("example.org"),
            ),
        )
        .unwrap();
        doctor_with_file(file)
    };
    let out = run(false).await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        line(&text, "warn", "providers").contains("corp, partner list no `email_domains`"),
        "{text}"
    );
    let blocks: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("note  provider"))
        .collect();
    assert_eq!(blocks.len(), 2, "{text}");
    assert!(blocks[0].contains(&format!("corp (Example Corp): {corp}")));
    assert!(blocks[1].contains(&format!("partner (Partner): {partner}")));
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("ok    discovery"))
            .count(),
        2,
        "each provider's own discovery: {text}"
    );
    for id in ["corp", "partner"] {
        assert!(
            text.contains(&format!("redirect URI ({id})"))
                && text.contains(&format!("{PUBLIC}/auth/callback/{id}")),
            "{text}"
        );
    }
    let out = run(true).await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    line(&text, "ok", "providers");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `[[bearer]]`: each entry's issuer is read; an entry that introspects at an issuer
/// without an introspection endpoint is an error.
#[tokio::test]
async fn bearer_entries_are_checked_against_their_issuers() {
    let issuer = dev_provider::start(PUBLIC, None).await;
    let dir =
        std::env::temp_dir().join(format!("pc-doctor-{}", portcullis::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |introspection: bool| {
        let file = dir.join(format!("portcullis-{introspection}.toml"));
        std::fs::write(
            &file,
            format!(
                "public_url = \"{PUBLIC}\"\nstore = \"sqlite:{}\"\nissuer = \"{issuer}\"\nclient_id = \"app\"\n\
                 [[bearer]]\nissuer = \"default\"\naudiences = [\"{PUBLIC}/api\"]\npaths = [\"/api/*\"]\nintrospection = {introspection}\n",
                dir.join("portcullis.db").display(),
            ),
        )
        .unwrap();
        doctor_with_file(file)
    };
    let out = run(false).await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        line(&text, "ok", "bearer").contains("bearer[0]: access tokens of"),
        "{text}"
    );
    // The dev provider has no introspection endpoint.
    let out = run(true).await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        line(&text, "error", "bearer").contains("no introspection_endpoint"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
