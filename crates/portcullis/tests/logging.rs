//! No token, code, state or session id in any log line, at debug level, across a good
//! and a refused login. Alone in its own test binary: tracing caches per-callsite
//! interest process-wide, so a capturing subscriber must not race other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::gateway::callback_query;
use support::hostile::RefreshAnswer;
use support::{Browser, HostileProvider, TestGateway};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_token_code_or_session_id_reaches_a_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let p = HostileProvider::start().await;
    let gw = TestGateway::start_with(
        &p.issuer,
        support::gateway::Options::default().env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    let browser = Browser::new();
    let mut secrets = Vec::new();
    // A good login, then a refused one (bad nonce), then session lookups.
    for good in [true, false] {
        let auth = gw.start_login(&browser, None).await;
        let nonce = if good {
            auth.nonce.clone()
        } else {
            "wrong".into()
        };
        let token = p.keys.sign_rs256(&p.keys.rs256_header(), &p.claims(&nonce));
        let response = HostileProvider::token_response(&token);
        secrets.push(response["access_token"].as_str().unwrap().to_owned());
        secrets.push(response["refresh_token"].as_str().unwrap().to_owned());
        secrets.push(token.clone());
        let code = p.issue_code(&auth.challenge, response);
        secrets.push(code.clone());
        secrets.push(auth.state.clone());
        let resp = p.answer_with(&gw, &browser, &auth, &code).await;
        assert_eq!(resp.status, if good { 303 } else { 400 }, "{}", resp.body);
    }
    // A provider that refuses the code with a chatty error, and one that fails.
    for (status, body) in [
        (
            400,
            json!({"error": "invalid_grant", "error_description": "code SECRET-IN-DESCRIPTION"})
                .to_string(),
        ),
        (500, "internal SECRET-IN-500".to_owned()),
        (200, "{not json SECRET-IN-GARBAGE".to_owned()),
    ] {
        let auth = gw.start_login(&browser, None).await;
        p.script.lock().unwrap().token_override = Some((status, body));
        let resp = gw
            .callback(
                &browser,
                &callback_query("code-for-error", &auth.state, Some(&p.issuer)),
            )
            .await;
        assert!(resp.status >= 400);
        secrets.push(auth.state.clone());
    }
    secrets.push("SECRET-IN".to_owned());
    secrets.push("code-for-error".to_owned());
    let session_id = browser.cookie("portcullis").unwrap();
    secrets.push(session_id.clone());
    secrets.push(browser.cookie("portcullis_tx").unwrap());
    browser.get(&gw.at("/auth/session"), &[]).await;

    // A refresh that rotates the id, a refresh that fails, and the theft rule.
    p.script.lock().unwrap().token_override = None;
    let rotated = support::hostile::refreshed_tokens();
    secrets.push(rotated["access_token"].as_str().unwrap().to_owned());
    secrets.push(rotated["refresh_token"].as_str().unwrap().to_owned());
    p.answer_refreshes([
        RefreshAnswer::Json(200, rotated),
        RefreshAnswer::Json(503, json!({"error_description": "SECRET-IN-REFRESH"})),
    ]);
    gw.clock.advance(250);
    assert_eq!(browser.get(&gw.at("/auth/session"), &[]).await.status, 200);
    let rotated_id = browser.cookie("portcullis").unwrap();
    assert_ne!(rotated_id, session_id);
    secrets.push(rotated_id);
    gw.clock.advance(250);
    assert_eq!(browser.get(&gw.at("/auth/session"), &[]).await.status, 200);
    // A forward-auth check: logged with the user and the session's handle.
    let user = browser.get(&gw.at("/auth/session"), &[]).await.json()["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let verify = |uri: &'static str| {
        let (browser, url) = (&browser, gw.at("/auth/verify"));
        async move {
            browser
                .get(
                    &url,
                    &[("x-original-uri", uri), ("x-original-method", "GET")],
                )
                .await
                .status
        }
    };
    assert_eq!(verify("/app").await, 200);
    // G06: a path spelled to forge fields and bidi text is logged percent-encoded.
    assert_eq!(
        verify("/app/a%20status=200%20user=forged%E2%80%AE").await,
        200
    );
    let thief = Browser::new();
    thief.set_cookie("portcullis", &session_id);
    assert_eq!(thief.get(&gw.at("/auth/session"), &[]).await.status, 401);

    // The access log is written by a thread of its own: wait (bounded) for the line of
    // the last request, the thief's refused one.
    let read = || String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for _ in 0..200 {
        if read().lines().any(|l| {
            l.contains("portcullis::access")
                && l.contains("status=401")
                && l.contains("/auth/session")
        }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let logs = read();
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("portcullis::access"))
        .collect();
    // One line per request: the callback without its query, a signed-in request with the
    // user and the session's handle, the thief's 401.
    assert!(
        access
            .iter()
            .any(|l| l.contains("path=/auth/callback") && l.contains("kind=\"gateway\"")),
        "{access:#?}"
    );
    assert!(
        access.iter().any(|l| l.contains("status=401")),
        "{access:#?}"
    );
    assert!(
        access.iter().any(|l| l.contains("kind=\"verify\"")
            && l.contains(&format!("user=\"{user}\""))
            && l.contains("session=\"")),
        "{access:#?}"
    );
    assert!(
        access
            .iter()
            .all(|l| !l.contains('?') && !l.contains("cookie")),
        "no query string or cookie: {access:#?}"
    );
    let forged = access
        .iter()
        .find(|l| l.contains("forged"))
        .unwrap_or_else(|| panic!("{access:#?}"));
    assert!(
        forged.contains("path=/app/a%20status=200%20user=forged%E2%80%AE ")
            && forged.matches("status=").count() == 2
            && !forged.contains(" user=forged"),
        "{forged}"
    );
    assert!(logs.contains("signed in"), "the capture works: {logs}");
    assert!(logs.contains("ID token refused"));
    assert!(logs.contains("session id rotated"));
    assert!(logs.contains("refresh failed"));
    assert!(logs.contains("session_id_reuse"));
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "a secret reached the logs");
    }
}
