//! The Prometheus series (docs/deployment.md "Metrics"): every series described and every
//! known label registered at zero from the start, and the counters moving by exactly
//! what happened. Alone in its own test binary: the recorder is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use support::gateway::Options;
use support::hostile::{RefreshAnswer, refreshed_tokens};
use support::{Browser, HostileProvider, TestGateway, TestUpstream};

fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&portcullis::metrics::BUCKETS)
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();
    handle
}

/// The value of one series (`name{labels}` exactly as rendered), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn has_series(text: &str, series: &str) -> bool {
    text.lines().any(|line| {
        line.strip_prefix(series)
            .is_some_and(|rest| rest.starts_with(' '))
    })
}

/// `promtool check metrics` on the exposition: required by `.ci/run`, skipped (with a
/// line saying so) where promtool is not installed.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) if std::env::var_os("PORTCULLIS_TEST_REQUIRE_PROMTOOL").is_none() => {
            eprintln!(
                "skipping promtool check: promtool is not installed (Debian package prometheus)"
            );
            return;
        }
        Err(e) => panic!("promtool is required here: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_series_starts_at_zero_and_counts_exactly_what_happened() {
    let handle = install();
    let p = HostileProvider::start().await;
    let upstream = TestUpstream::start().await;
    let gw = TestGateway::start_with(
        &p.issuer,
        Options::default()
            .env("PORTCULLIS_UPSTREAM", &upstream.url)
            .env("PORTCULLIS_ACCESS_ALLOWED_EMAIL_DOMAINS", "example.com"),
    )
    .await;

    // At start: HELP and TYPE for every series, every known label at zero, the buckets.
    let before = handle.render();
    for name in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds",
        "portcullis_logins_total",
        "portcullis_refreshes_total",
        "portcullis_security_events_total",
        "portcullis_provider_request_duration_seconds",
        "portcullis_store_operation_duration_seconds",
        "portcullis_session_cache_requests_total",
        "portcullis_rate_limited_total",
        "portcullis_change_feed_up",
        "portcullis_build_info",
    ] {
        assert!(
            before.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{before}"
        );
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
    }
    for series in [
        r#"portcullis_logins_total{provider="default",result="success"}"#,
        r#"portcullis_logins_total{provider="default",result="denied"}"#,
        r#"portcullis_logins_total{provider="default",result="error"}"#,
        r#"portcullis_refreshes_total{provider="default",result="identity_changed"}"#,
        r#"portcullis_refreshes_total{provider="default",result="outage"}"#,
        r#"portcullis_security_events_total{event="session_id_reuse"}"#,
        r#"portcullis_security_events_total{event="untrusted_forwarder"}"#,
        r#"portcullis_session_cache_requests_total{result="bypass"}"#,
        r#"portcullis_rate_limited_total{endpoint="spa_exchange"}"#,
        r#"portcullis_requests_total{kind="websocket",status="200"}"#,
        r#"portcullis_provider_request_duration_seconds_count{provider="default",endpoint="revocation"}"#,
        r#"portcullis_store_operation_duration_seconds_count{operation="take_transaction"}"#,
        r#"portcullis_request_duration_seconds_bucket{kind="verify",le="0.0001"}"#,
        r#"portcullis_request_duration_seconds_bucket{kind="verify",le="10"}"#,
    ] {
        assert!(
            has_series(&before, series),
            "{series} missing at start:\n{before}"
        );
    }
    assert_eq!(
        value(
            &before,
            r#"portcullis_refreshes_total{provider="default",result="identity_changed"}"#
        ),
        0.0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &before,
            &format!(r#"portcullis_build_info{{version="{version}"}}"#)
        ),
        1.0
    );
    promtool_check(&before);

    // A sign-in, a refused sign-in (the access rules), three proxied requests and a
    // refresh.
    let browser = Browser::new();
    p.sign_in(&gw, &browser).await;
    let mallory = Browser::new();
    p.set_userinfo(Some(
        serde_json::json!({"sub": "alice", "email": "mallory@evil.test", "email_verified": true}),
    ));
    let auth = gw.start_login(&mallory, None).await;
    let mut claims = p.claims(&auth.nonce);
    claims["email"] = "mallory@evil.test".into();
    let token = p.keys.sign_rs256(&p.keys.rs256_header(), &claims);
    let code = p.issue_code(&auth.challenge, HostileProvider::token_response(&token));
    let refused = p.answer_with(&gw, &mallory, &auth, &code).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    p.set_userinfo(None);
    for n in 0..3 {
        let page = browser.get(&gw.at(&format!("/page/{n}")), &[]).await;
        assert_eq!(page.status, 200);
    }
    p.answer_refreshes([RefreshAnswer::Json(200, refreshed_tokens())]);
    gw.clock.advance(250);
    assert_eq!(browser.get(&gw.at("/auth/session"), &[]).await.status, 200);
    assert_eq!(p.refresh_calls(), 1);

    let after = handle.render();
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        moved(r#"portcullis_logins_total{provider="default",result="success"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"portcullis_logins_total{provider="default",result="denied"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"portcullis_logins_total{provider="default",result="error"}"#),
        0.0
    );
    assert_eq!(
        moved(r#"portcullis_refreshes_total{provider="default",result="success"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"portcullis_refreshes_total{provider="default",result="invalid_grant"}"#),
        0.0
    );
    assert_eq!(
        moved(r#"portcullis_requests_total{kind="protected",status="200"}"#),
        3.0
    );
    assert_eq!(
        moved(r#"portcullis_request_duration_seconds_count{kind="protected"}"#),
        3.0
    );
    // /auth/login twice (302), the callbacks (303 and 403), /auth/session (200).
    assert_eq!(
        moved(r#"portcullis_requests_total{kind="gateway",status="302"}"#),
        2.0
    );
    assert_eq!(
        moved(r#"portcullis_requests_total{kind="gateway",status="303"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"portcullis_requests_total{kind="gateway",status="403"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"portcullis_requests_total{kind="gateway",status="200"}"#),
        1.0
    );
    // Two code exchanges and a refresh at the token endpoint.
    assert_eq!(
        moved(
            r#"portcullis_provider_request_duration_seconds_count{provider="default",endpoint="token"}"#
        ),
        3.0
    );
    assert!(
        moved(r#"portcullis_store_operation_duration_seconds_count{operation="create_session"}"#)
            >= 1.0
    );
    assert_eq!(
        moved(r#"portcullis_security_events_total{event="session_id_reuse"}"#),
        0.0
    );
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        for secret in ["alice", "mallory", "/page/", "example.com"] {
            assert!(!line.contains(secret), "a label names {secret}: {line}");
        }
    }
    promtool_check(&after);
}
