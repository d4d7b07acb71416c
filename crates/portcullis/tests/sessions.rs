//! Sessions over time (issue 6): refresh with rotation, single flight, failure
//! semantics, session-id rotation and the theft rule, lifetimes, token relay.
//!
//! Against npm `oidc-provider` (it rotates refresh tokens and revokes the grant when a
//! rotated one is reused: exactly what a double refresh would trigger) where a real
//! peer can show it; against the scriptable hostile provider for faults (503, reset,
//! stall, a refreshed ID token for someone else). The gateway's clock is injected:
//! tests advance it instead of sleeping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use portcullis::random::random_bytes;
use portcullis::session::SessionId;
use portcullis::store::SessionRecord;
use portcullis::store::conformance::join_all;
use serde_json::{Value, json};
use support::browser::Resp;
use support::gateway::{Options, callback_query};
use support::hostile::{RefreshAnswer, refreshed_tokens};
use support::oidc_provider::RealProvider;
use support::upstream::echoed;
use support::{Browser, HostileProvider, TestGateway, TestUpstream};

const JSON: &[(&str, &str)] = &[("accept", "application/json")];

/// The session record behind the browser's cookie.
async fn record(gw: &TestGateway, browser: &Browser) -> Option<SessionRecord> {
    let id = SessionId::parse(&browser.cookie("portcullis")?)?;
    gw.gateway.store().get_session(&id.hash()).await.unwrap()
}

/// The refresh token the store holds for the browser's session, opened.
async fn stored_refresh_token(gw: &TestGateway, browser: &Browser) -> Option<String> {
    let r = record(gw, browser).await?;
    let tokens = gw.gateway.sessions().session_tokens(&r).unwrap();
    tokens.refresh_token.map(|t| t.to_string())
}

async fn api(gw: &TestGateway, browser: &Browser, path: &str) -> Resp {
    browser.get(&gw.at(path), JSON).await
}

fn new_session_cookie(resp: &Resp) -> Option<String> {
    let c = resp.set_cookie_named("portcullis")?;
    let value = c.split(';').next()?.split_once('=')?.1.to_owned();
    (!value.is_empty()).then_some(value)
}

// ---------------------------------------------------------------------------------
// The hostile provider: faults a real provider does not produce on demand.

struct Hostile {
    p: HostileProvider,
    gw: TestGateway,
    up: TestUpstream,
}

async fn hostile(options: Options) -> Hostile {
    let p = HostileProvider::start().await;
    let up = TestUpstream::start().await;
    let options = Options {
        provider_total_timeout: std::time::Duration::from_secs(1),
        ..options
    }
    .env("PORTCULLIS_UPSTREAM", &up.url);
    let gw = TestGateway::start_with(&p.issuer, options).await;
    Hostile { p, gw, up }
}

/// [`hostile`] on a file store, sealing with `secret`.
async fn on_a_file_store_with_secret(secret: [u8; 32]) -> Hostile {
    hostile(Options {
        file_store: true,
        secret: Some(secret),
        ..Options::default()
    })
    .await
}

impl Hostile {
    /// Signs in with the standard claims and this token response (patched).
    async fn sign_in(&self, browser: &Browser, patch: impl FnOnce(&mut Value)) -> Value {
        let auth = self.gw.start_login(browser, None).await;
        let token = self
            .p
            .keys
            .sign_rs256(&self.p.keys.rs256_header(), &self.p.claims(&auth.nonce));
        let mut response = HostileProvider::token_response(&token);
        patch(&mut response);
        let code = self.p.issue_code(&auth.challenge, response.clone());
        let resp = self
            .gw
            .callback(
                browser,
                &callback_query(&code, &auth.state, Some(&self.p.issuer)),
            )
            .await;
        assert_eq!(resp.status, 303, "sign-in failed: {}", resp.body);
        response
    }
}

#[tokio::test]
async fn f01_an_answer_without_a_refresh_token_keeps_the_old_one() {
    let h = hostile(Options::default()).await;
    let browser = Browser::new();
    let issued = h.sign_in(&browser, |_| {}).await;
    let first = issued["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        stored_refresh_token(&h.gw, &browser).await.as_deref(),
        Some(first.as_str())
    );

    let mut no_refresh = refreshed_tokens();
    no_refresh.as_object_mut().unwrap().remove("refresh_token");
    h.p.answer_refreshes([RefreshAnswer::Json(200, no_refresh)]);
    h.gw.clock.advance(250);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    assert_eq!(h.p.refresh_calls(), 1);
    assert_eq!(
        stored_refresh_token(&h.gw, &browser).await.as_deref(),
        Some(first.as_str()),
        "an answer without a refresh token keeps the old one"
    );

    // A rotated one replaces it, and the next refresh presents the newest.
    let rotated = refreshed_tokens();
    let newest = rotated["refresh_token"].as_str().unwrap().to_owned();
    h.p.answer_refreshes([RefreshAnswer::Json(200, rotated)]);
    h.gw.clock.advance(250);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    assert_eq!(
        stored_refresh_token(&h.gw, &browser).await.as_deref(),
        Some(newest.as_str())
    );
    h.gw.clock.advance(250);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    let used = h.p.script.lock().unwrap().refresh_tokens_used.clone();
    assert_eq!(used, vec![first.clone(), first, newest]);
}

#[tokio::test]
async fn f02_invalid_grant_ends_the_session_without_retrying() {
    let h = hostile(Options::default()).await;
    let api_client = Browser::new();
    h.sign_in(&api_client, |_| {}).await;
    let page_client = Browser::new();
    h.sign_in(&page_client, |_| {}).await;
    let dead = || RefreshAnswer::Json(400, json!({"error": "invalid_grant"}));
    h.p.answer_refreshes([dead(), dead()]);
    // Another refusal of the grant (not an outage) ends a session the same way.
    let third = Browser::new();
    h.sign_in(&third, |_| {}).await;
    h.gw.clock.advance(250); // due, though the access token is still valid

    let resp = api(&h.gw, &api_client, "/x").await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert_eq!(resp.json()["error"], "not_signed_in");
    let resp = page_client.navigate(&h.gw.at("/page")).await;
    assert_eq!(resp.status, 302);
    assert!(resp.location().unwrap().starts_with("/auth/login"));
    h.p.answer_refreshes([RefreshAnswer::Json(400, json!({"error": "invalid_scope"}))]);
    assert_eq!(api(&h.gw, &third, "/x").await.status, 401);
    assert_eq!(h.gw.session_count().await, 0);
    assert_eq!(h.up.calls(), 0, "nothing reached the upstream");

    // No retry loop: the session is gone, so the provider is not asked again.
    for _ in 0..3 {
        assert_eq!(api(&h.gw, &api_client, "/x").await.status, 401);
    }
    assert_eq!(h.p.refresh_calls(), 3);
}

#[tokio::test]
async fn f04_a_refreshed_id_token_for_another_user_or_client_ends_the_session() {
    let h = hostile(Options::default()).await;
    let issuer = h.p.issuer.clone();
    type Patch = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Patch)> = vec![
        ("sub", Box::new(|c| c["sub"] = json!("mallory"))),
        (
            "iss",
            Box::new(move |c| c["iss"] = json!(format!("{issuer}/other"))),
        ),
        (
            "aud",
            Box::new(|c| {
                c["aud"] = json!(["app", "another-client"]);
                c["azp"] = json!("app");
            }),
        ),
    ];
    for (n, (what, patch)) in cases.into_iter().enumerate() {
        // The provider signs with real time; the gateway's clock starts there again.
        h.gw.clock.set(support::now());
        let browser = Browser::new();
        h.sign_in(&browser, |_| {}).await;
        let mut answer = refreshed_tokens();
        answer["id_token"] = json!(h.p.refreshed_id_token(patch));
        h.p.answer_refreshes([RefreshAnswer::Json(200, answer)]);
        h.gw.clock.advance(250);
        let resp = api(&h.gw, &browser, "/x").await;
        assert_eq!(resp.status, 401, "{what}: {}", resp.body);
        assert!(record(&h.gw, &browser).await.is_none(), "{what}");
        assert_eq!(
            h.gw.gateway.security_events().snapshot()["refresh_identity_changed"],
            n as u64 + 1,
            "{what}"
        );
    }
    assert_eq!(h.up.calls(), 0);

    // The same user, same client: accepted, and the profile follows the provider.
    h.gw.clock.set(support::now());
    let browser = Browser::new();
    h.sign_in(&browser, |_| {}).await;
    let mut answer = refreshed_tokens();
    answer["id_token"] = json!(h.p.refreshed_id_token(|c| c["name"] = json!("Alice Renamed")));
    h.p.set_userinfo(Some(json!({"sub": "alice", "email": "alice@example.com", "email_verified": true, "name": "Alice Renamed"})));
    h.p.answer_refreshes([RefreshAnswer::Json(200, answer)]);
    h.gw.clock.advance(250);
    let resp = api(&h.gw, &browser, "/x").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(echoed(&resp.json(), "x-user-name"), vec!["Alice Renamed"]);
}

#[tokio::test]
async fn f05_provider_faults_keep_the_session_and_answer_503_with_retry_after() {
    let h = hostile(Options::default()).await;
    let browser = Browser::new();
    h.sign_in(&browser, |_| {}).await;
    let before = browser.cookie("portcullis").unwrap();

    // Due but still valid: a failing refresh does not get in the way.
    h.p.answer_refreshes([RefreshAnswer::Json(
        503,
        json!({"error": "temporarily_unavailable"}),
    )]);
    h.gw.clock.advance(250);
    let resp = api(&h.gw, &browser, "/x").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(h.p.refresh_calls(), 1);
    assert_eq!(h.up.calls(), 1);

    // Expired, and the provider keeps failing: 503 + Retry-After, never the upstream.
    h.gw.clock.advance(60);
    let faults = [
        RefreshAnswer::Json(503, json!({})),
        RefreshAnswer::Json(500, json!({"error": "server_error"})),
        RefreshAnswer::Json(429, json!({"error": "too_many_requests"})),
        RefreshAnswer::Json(403, json!({"message": "Forbidden by a firewall"})),
        RefreshAnswer::Json(401, json!({"error": "invalid_client"})),
        RefreshAnswer::Json(200, json!({"access_token": "no token_type"})),
        RefreshAnswer::Reset,
        RefreshAnswer::Stall(std::time::Duration::from_secs(3)),
    ];
    for (n, fault) in faults.into_iter().enumerate() {
        h.p.answer_refreshes([fault.clone()]);
        let resp = api(&h.gw, &browser, "/x").await;
        assert_eq!(resp.status, 503, "{fault:?}: {}", resp.body);
        assert_eq!(resp.json()["error"], "refresh_unavailable");
        let retry: u64 = resp.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry), "{fault:?}: Retry-After {retry}");
        assert_eq!(h.p.refresh_calls(), n + 2, "{fault:?}");
        // No storm: until the pause is over, nobody calls the provider again.
        for _ in 0..5 {
            assert_eq!(api(&h.gw, &browser, "/x").await.status, 503);
        }
        let page = browser.navigate(&h.gw.at("/page")).await;
        assert_eq!(page.status, 503, "a page gets the 503 too, not a sign-in");
        assert!(page.headers.contains_key("retry-after"));
        assert_eq!(h.p.refresh_calls(), n + 2, "{fault:?}: retried too early");
        h.gw.clock.advance(retry as i64);
    }
    assert_eq!(
        h.up.calls(),
        1,
        "no request without a valid token reached the upstream"
    );
    assert_eq!(h.gw.session_count().await, 1, "nobody was signed out");
    assert_eq!(browser.cookie("portcullis").unwrap(), before);

    // The provider recovers: the same session carries on, with a new id.
    let resp = api(&h.gw, &browser, "/x").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_ne!(browser.cookie("portcullis").unwrap(), before);
    assert_eq!(
        echoed(&resp.json(), "x-user-email"),
        vec!["alice@example.com"]
    );
}

#[tokio::test]
async fn access_rules_are_applied_again_at_refresh() {
    let h =
        hostile(Options::default().env("PORTCULLIS_ACCESS_ALLOWED_EMAILS", "alice@example.com"))
            .await;
    let browser = Browser::new();
    h.sign_in(&browser, |_| {}).await;
    h.p.set_userinfo(Some(
        json!({"sub": "alice", "email": "alice@elsewhere.example", "email_verified": true}),
    ));
    h.gw.clock.advance(250);
    let resp = api(&h.gw, &browser, "/x").await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    assert_eq!(h.gw.session_count().await, 0);
    assert_eq!(h.up.calls(), 0);
    assert_eq!(
        h.p.counters
            .revocations
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn without_userinfo_the_rules_refuse_only_on_claims_at_hand() {
    let h =
        hostile(Options::default().env("PORTCULLIS_ACCESS_ALLOWED_EMAILS", "alice@example.com"))
            .await;
    // UserInfo fails after the refresh; the refreshed ID token has no email: the rules
    // cannot decide, so the session is kept (and checked again at the next refresh).
    let browser = Browser::new();
    h.sign_in(&browser, |_| {}).await;
    let mut answer = refreshed_tokens();
    answer["id_token"] = json!(h.p.refreshed_id_token(|c| {
        c.as_object_mut().unwrap().remove("email");
    }));
    h.p.answer_refreshes([RefreshAnswer::Json(200, answer)]);
    h.p.script.lock().unwrap().userinfo_status = Some(503);
    h.gw.clock.advance(250);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    // The refreshed ID token itself names a refused email: that is decisive.
    let mut answer = refreshed_tokens();
    answer["id_token"] = json!(h.p.refreshed_id_token(|c| {
        c["email"] = json!("alice@elsewhere.example");
        c["exp"] = json!(support::now() + 3600);
    }));
    h.p.answer_refreshes([RefreshAnswer::Json(200, answer)]);
    h.gw.clock.advance(250);
    let resp = api(&h.gw, &browser, "/x").await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    assert_eq!(h.gw.session_count().await, 0);
}

#[tokio::test]
async fn the_refresh_window_is_the_smaller_of_refresh_before_and_half_the_lifetime() {
    let h = hostile(Options::default().env("PORTCULLIS_SESSION_REFRESH_BEFORE", "45s")).await;
    // 60 s tokens: half the lifetime (30 s) is the smaller.
    let browser = Browser::new();
    h.sign_in(&browser, |r| r["expires_in"] = json!(60)).await;
    h.gw.clock.advance(29);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    assert_eq!(h.p.refresh_calls(), 0);
    h.gw.clock.advance(1);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    assert_eq!(h.p.refresh_calls(), 1);

    // 600 s tokens: refresh_before (45 s) is the smaller.
    let browser = Browser::new();
    h.sign_in(&browser, |r| r["expires_in"] = json!(600)).await;
    h.gw.clock.advance(554);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    assert_eq!(h.p.refresh_calls(), 1);
    h.gw.clock.advance(1);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    assert_eq!(h.p.refresh_calls(), 2);
}

#[tokio::test]
async fn s07_idle_timeout_slides_without_a_write_per_request() {
    let h = hostile(Options::default().env("PORTCULLIS_SESSION_IDLE_TIMEOUT", "10m")).await;
    let browser = Browser::new();
    h.sign_in(&browser, |r| r["expires_in"] = json!(86_400))
        .await;
    let signed_in = record(&h.gw, &browser).await.unwrap();

    // Requests within the touch granularity (60 s) write nothing.
    h.gw.clock.advance(30);
    for _ in 0..5 {
        assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    }
    let r = record(&h.gw, &browser).await.unwrap();
    assert_eq!(r.last_seen_at, signed_in.last_seen_at);
    assert_eq!(r.idle_expires_at, signed_in.idle_expires_at);

    // Past it, one request slides the idle deadline.
    h.gw.clock.advance(31);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    let r = record(&h.gw, &browser).await.unwrap();
    assert_eq!(r.idle_expires_at, h.gw.clock_now() + 600);

    // So activity keeps it alive beyond the first deadline; silence ends it.
    h.gw.clock.advance(9 * 60);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    assert!(h.gw.clock_now() > signed_in.idle_expires_at);
    h.gw.clock.advance(10 * 60 + 1);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 401);
    assert_eq!(h.gw.session_count().await, 0);
}

#[tokio::test]
async fn s07_the_session_ends_no_later_than_the_refresh_token() {
    let h = hostile(Options::default()).await;
    let browser = Browser::new();
    h.sign_in(&browser, |r| {
        r["expires_in"] = json!(3600);
        r["refresh_expires_in"] = json!(1800);
    })
    .await;
    let r = record(&h.gw, &browser).await.unwrap();
    assert_eq!(r.expires_at(), h.gw.clock_now() + 1800);
    let s = api(&h.gw, &browser, "/auth/session").await;
    assert_eq!(s.json()["expires_at"], json!(h.gw.clock_now() + 1800));
    for _ in 0..2 {
        h.gw.clock.advance(899);
        assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    }
    h.gw.clock.advance(2);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 401);
}

#[tokio::test]
async fn s09_revoked_sessions_are_refused_at_the_next_request() {
    let h = hostile(Options::default()).await;
    let browser = Browser::new();
    h.sign_in(&browser, |_| {}).await;
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    let user = record(&h.gw, &browser).await.unwrap().user.id;
    // What `portcullis sessions revoke --user` does: the running gateway refuses at once.
    assert_eq!(
        h.gw.gateway
            .store()
            .delete_user_sessions(user)
            .await
            .unwrap(),
        1
    );
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 401);

    // `invalid_grant` at refresh: the next request is 401 too.
    let browser = Browser::new();
    h.sign_in(&browser, |_| {}).await;
    h.p.answer_refreshes([RefreshAnswer::Json(400, json!({"error": "invalid_grant"}))]);
    h.gw.clock.advance(301);
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 401);
    assert_eq!(h.up.calls(), 1);
}

#[tokio::test]
async fn token_relay_sends_a_fresh_access_token_and_never_the_clients() {
    let h = hostile(Options::default().env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*")).await;
    let browser = Browser::new();
    let issued = h.sign_in(&browser, |_| {}).await;
    let first = format!("Bearer {}", issued["access_token"].as_str().unwrap());

    let spoofed = [
        ("accept", "application/json"),
        ("authorization", "Bearer forged"),
        ("dpop", "forged.proof.value"),
    ];
    let resp = browser.get(&h.gw.at("/api/orders"), &spoofed).await;
    assert_eq!(resp.status, 200);
    assert_eq!(echoed(&resp.json(), "authorization"), vec![first.clone()]);
    assert!(
        echoed(&resp.json(), "dpop").is_empty(),
        "a client's proof never goes along with the relayed token"
    );
    // Off the relay paths nothing is added (the client's own header is the app's business).
    let resp = browser.get(&h.gw.at("/other"), JSON).await;
    assert!(echoed(&resp.json(), "authorization").is_empty());

    // Due: the relayed token is the refreshed one.
    let answer = refreshed_tokens();
    let second = format!("Bearer {}", answer["access_token"].as_str().unwrap());
    h.p.answer_refreshes([RefreshAnswer::Json(200, answer)]);
    h.gw.clock.advance(250);
    let resp = browser.get(&h.gw.at("/api/orders"), &spoofed).await;
    assert_eq!(echoed(&resp.json(), "authorization"), vec![second]);
}

#[tokio::test]
async fn a_session_without_a_refresh_token_lives_by_its_timeouts() {
    let h = hostile(
        Options::default()
            .env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*")
            .env("PORTCULLIS_SESSION_IDLE_TIMEOUT", "2h")
            .env("PORTCULLIS_SESSION_ABSOLUTE_LIFETIME", "5h"),
    )
    .await;
    let browser = Browser::new();
    h.sign_in(&browser, |r| {
        r.as_object_mut().unwrap().remove("refresh_token");
        r["expires_in"] = json!(60);
    })
    .await;
    assert_eq!(api(&h.gw, &browser, "/api/x").await.status, 200);
    for _ in 0..4 {
        h.gw.clock.advance(3600);
        assert_eq!(api(&h.gw, &browser, "/x").await.status, 200);
    }
    // The access token expired long ago: relay paths have nothing to send.
    let resp = api(&h.gw, &browser, "/api/x").await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert_eq!(h.p.refresh_calls(), 0);
    h.gw.clock.advance(3600);
    assert_eq!(
        api(&h.gw, &browser, "/x").await.status,
        401,
        "the absolute lifetime"
    );
}

#[tokio::test]
async fn f06_rotation_grace_lost_cookies_and_the_theft_rule() {
    let h = hostile(Options::default()).await;
    let browser = Browser::new();
    h.sign_in(&browser, |_| {}).await;
    let old = browser.cookie("portcullis").unwrap();
    let revocations = || {
        h.p.counters
            .revocations
            .load(std::sync::atomic::Ordering::SeqCst)
    };

    h.gw.clock.advance(250);
    let resp = api(&h.gw, &browser, "/x").await;
    assert_eq!(resp.status, 200);
    let new = new_session_cookie(&resp).expect("a refresh rotates the id");
    assert_ne!(new, old);
    assert!(
        resp.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );

    // Inside the window the old id works and is given the new one, every time.
    let stale = Browser::new();
    stale.set_cookie("portcullis", &old);
    for _ in 0..2 {
        let resp = api(&h.gw, &stale, "/x").await;
        assert_eq!(resp.status, 200);
        assert_eq!(new_session_cookie(&resp).as_deref(), Some(new.as_str()));
        stale.set_cookie("portcullis", &old);
    }
    // A lost Set-Cookie: the new id was never used, so after the window the old id
    // just gets the new cookie again; nothing is revoked.
    h.gw.clock.advance(31);
    let resp = api(&h.gw, &stale, "/x").await;
    assert_eq!(resp.status, 200);
    assert_eq!(new_session_cookie(&resp).as_deref(), Some(new.as_str()));
    assert_eq!(h.gw.session_count().await, 1);
    assert!(h.gw.gateway.security_events().snapshot().is_empty());

    // The browser uses the new id; now the old id after the window is a stolen copy.
    let resp = api(&h.gw, &browser, "/x").await;
    assert_eq!(resp.status, 200);
    assert!(
        new_session_cookie(&resp).is_none(),
        "the current id needs no new cookie"
    );
    let thief = Browser::new();
    thief.set_cookie("portcullis", &old);
    let resp = api(&h.gw, &thief, "/x").await;
    assert_eq!(resp.status, 401);
    assert!(new_session_cookie(&resp).is_none());
    assert_eq!(
        h.gw.gateway.security_events().snapshot()["session_id_reuse"],
        1
    );
    // The whole family: the rightful browser is signed out too, the refresh token revoked.
    assert_eq!(api(&h.gw, &browser, "/x").await.status, 401);
    assert_eq!(h.gw.session_count().await, 0);
    assert_eq!(revocations(), 1);
    assert_eq!(h.up.calls(), 5);
}

#[tokio::test]
async fn f06_signing_out_with_a_stale_id_is_theft_too_and_gets_no_id_token() {
    let h = hostile(
        Options::default()
            .env("PORTCULLIS_LOGOUT_PROVIDER_LOGOUT", "true")
            .env("PORTCULLIS_LOGOUT_ID_TOKEN_HINT", "true"),
    )
    .await;
    h.p.patch_metadata(json!({"end_session_endpoint": format!("{}/end-session", h.p.issuer)}));
    let browser = Browser::new();
    h.sign_in(&browser, |_| {}).await;
    let old = browser.cookie("portcullis").unwrap();
    h.gw.clock.advance(250);
    assert!(new_session_cookie(&api(&h.gw, &browser, "/x").await).is_some());
    assert_eq!(
        api(&h.gw, &browser, "/x").await.status,
        200,
        "the new id is in use"
    );
    h.gw.clock.advance(31);

    let thief = Browser::new();
    thief.set_cookie("portcullis", &old);
    let resp = thief
        .request(
            reqwest::Method::POST,
            &h.gw.at("/auth/logout"),
            &[
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
                ("origin", &h.gw.url),
            ],
            Some((String::new(), "application/x-www-form-urlencoded")),
        )
        .await;
    assert_eq!(resp.status, 303);
    let location = resp.location().unwrap();
    assert!(location.contains("/end-session?"), "{location}");
    assert!(
        !location.contains("id_token_hint"),
        "a stolen copy gets no ID token"
    );
    assert_eq!(
        h.gw.gateway.security_events().snapshot()["session_id_reuse"],
        1
    );
    assert_eq!(h.gw.session_count().await, 0);
}

// ---------------------------------------------------------------------------------
// npm `oidc-provider`: real rotation with reuse detection.

struct Real {
    op: RealProvider,
    gw: TestGateway,
    up: TestUpstream,
}

/// The npm provider with access tokens of `access_ttl` seconds (ID tokens live a day:
/// the gateway's clock runs ahead of the provider's) and a gateway in front of an
/// upstream. `None` when Node is missing outside CI.
async fn real(access_ttl: &str, options: Options) -> Option<Real> {
    real_with(access_ttl, &[], options).await
}

/// [`real`] with more settings for the provider.
async fn real_with(access_ttl: &str, op_env: &[(&str, &str)], options: Options) -> Option<Real> {
    let mut env = vec![("ACCESS_TOKEN_TTL", access_ttl), ("ID_TOKEN_TTL", "86400")];
    env.extend_from_slice(op_env);
    let up = TestUpstream::start().await;
    let options = options.env("PORTCULLIS_UPSTREAM", &up.url);
    let extra = json!({"token_endpoint_auth_method": "none"});
    let (op, gw) = support::oidc_provider::start_with_gateway_options(extra, &env, options).await?;
    Some(Real { op, gw, up })
}

impl Real {
    async fn sign_in(&self, browser: &Browser) {
        let resp = self
            .gw
            .sign_in_through_form(browser, "alice", "alice", "/")
            .await;
        assert_eq!(resp.status, 303, "{}", resp.body);
    }

    async fn refresh_grants(&self) -> u64 {
        self.op.events().await["grants"]["refresh_token"]
            .as_u64()
            .unwrap()
    }

    async fn count(&self, event: &str) -> u64 {
        self.op.events().await["counts"][event].as_u64().unwrap()
    }
}

#[tokio::test]
async fn f01_five_refreshes_in_a_row_against_a_rotating_provider() {
    let Some(r) = real("5", Options::default()).await else {
        return;
    };
    let browser = Browser::new();
    r.sign_in(&browser).await;
    let mut seen = vec![stored_refresh_token(&r.gw, &browser).await.unwrap()];
    for round in 1..=5 {
        // 5 s tokens: due from 2.5 s before expiry.
        r.gw.clock.advance(4);
        let resp = api(&r.gw, &browser, "/x").await;
        assert_eq!(resp.status, 200, "round {round}: {}", resp.body);
        assert!(
            new_session_cookie(&resp).is_some(),
            "round {round}: id rotated"
        );
        assert_eq!(r.refresh_grants().await, round);
        let now = stored_refresh_token(&r.gw, &browser).await.unwrap();
        assert!(
            !seen.contains(&now),
            "round {round}: the store holds the newest token"
        );
        seen.push(now);
    }
    // Had any refresh presented an older token, the provider would have revoked the grant.
    assert_eq!(r.count("grant.error").await, 0);
    assert_eq!(r.count("grant.revoked").await, 0);
}

#[tokio::test]
async fn f02_a_revoked_grant_ends_the_session_at_refresh() {
    let Some(r) = real("300", Options::default()).await else {
        return;
    };
    let browser = Browser::new();
    r.sign_in(&browser).await;
    let refresh = stored_refresh_token(&r.gw, &browser).await.unwrap();
    // Revoked at the provider behind the gateway's back.
    let revoked = reqwest::Client::new()
        .post(format!("{}/token/revocation", r.op.issuer))
        .form(&[("token", refresh.as_str()), ("client_id", "app")])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    r.gw.clock.advance(250);
    let resp = api(&r.gw, &browser, "/x").await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert_eq!(r.gw.session_count().await, 0);
    assert_eq!(r.up.calls(), 0);
    assert_eq!(r.refresh_grants().await, 0);
    assert_eq!(r.count("grant.error").await, 1, "asked once, no retry loop");
    assert_eq!(api(&r.gw, &browser, "/x").await.status, 401);
    assert_eq!(r.count("grant.error").await, 1);
}

#[tokio::test]
async fn f03_fifty_parallel_calls_with_an_expired_token_refresh_once() {
    let Some(r) = real("5", Options::default()).await else {
        return;
    };
    let browser = Browser::new();
    r.sign_in(&browser).await;
    r.gw.clock.advance(6); // expired
    let resps = join_all((0..50).map(|_| api(&r.gw, &browser, "/x"))).await;
    let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(r.refresh_grants().await, 1, "exactly one refresh");
    assert_eq!(
        r.count("grant.error").await,
        0,
        "no reuse of a rotated token"
    );
    assert_eq!(r.up.calls(), 50);
    // Every answer carried the one new id; it works without another refresh.
    let cookies: std::collections::BTreeSet<_> =
        resps.iter().filter_map(new_session_cookie).collect();
    assert_eq!(cookies.len(), 1, "one rotation, one new id");
    assert_eq!(api(&r.gw, &browser, "/x").await.status, 200);
    assert_eq!(r.refresh_grants().await, 1);
}

#[tokio::test]
async fn f03_two_instances_on_one_store_refresh_once() {
    // A slow token endpoint (300 ms): uncoordinated refreshes would overlap there.
    let Some(r) = real_with(
        "5",
        &[("TOKEN_DELAY_MS", "300")],
        Options {
            file_store: true,
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let second = TestGateway::start_with(
        &r.op.issuer,
        Options {
            db_path: r.gw.db_path.clone(),
            secret: Some(r.gw.secret),
            ..Default::default()
        }
        .env("PORTCULLIS_UPSTREAM", &r.up.url),
    )
    .await;
    let browser = Browser::new();
    r.sign_in(&browser).await;
    r.gw.clock.advance(6);
    second.clock.set(r.gw.clock_now());
    let resps = join_all((0..50).map(|i| {
        let gw = if i % 2 == 0 { &r.gw } else { &second };
        api(gw, &browser, "/x")
    }))
    .await;
    let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        r.refresh_grants().await,
        1,
        "one refresh across both instances"
    );
    assert_eq!(r.count("grant.error").await, 0);
}

#[tokio::test]
async fn f06_the_theft_rule_against_a_real_provider() {
    let Some(r) = real("300", Options::default()).await else {
        return;
    };
    let browser = Browser::new();
    r.sign_in(&browser).await;
    let old = browser.cookie("portcullis").unwrap();
    r.gw.clock.advance(250);
    let resp = api(&r.gw, &browser, "/x").await;
    let new = new_session_cookie(&resp).unwrap();

    // Inside the grace window: the old id works and gets the new cookie.
    let stale = Browser::new();
    stale.set_cookie("portcullis", &old);
    let resp = api(&r.gw, &stale, "/x").await;
    assert_eq!(resp.status, 200);
    assert_eq!(new_session_cookie(&resp).as_deref(), Some(new.as_str()));
    // The new id in use, the window over: the old id revokes the family, at the
    // provider too.
    assert_eq!(api(&r.gw, &browser, "/x").await.status, 200);
    r.gw.clock.advance(31);
    let thief = Browser::new();
    thief.set_cookie("portcullis", &old);
    assert_eq!(api(&r.gw, &thief, "/x").await.status, 401);
    assert_eq!(api(&r.gw, &browser, "/x").await.status, 401);
    assert_eq!(r.count("revocation.success").await, 1);
    assert_eq!(r.refresh_grants().await, 1);
}

#[tokio::test]
async fn f05_one_session_s_faulty_answer_does_not_hold_up_the_others() {
    let h = hostile(Options::default()).await;
    let (a, b) = (Browser::new(), Browser::new());
    h.sign_in(&a, |_| {}).await;
    h.sign_in(&b, |_| {}).await;
    h.gw.clock.advance(310); // both access tokens expired

    // A's answer is too odd to use: A waits, and only A.
    for (n, faulty) in [
        RefreshAnswer::Json(200, json!({"access_token": "no token_type"})),
        RefreshAnswer::Json(200, json!({"padding": "x".repeat(2 << 20)})),
    ]
    .into_iter()
    .enumerate()
    {
        if n > 0 {
            h.gw.clock.advance(2); // A's pause is over
        }
        h.p.answer_refreshes([faulty.clone()]);
        let calls = h.p.refresh_calls();
        assert_eq!(api(&h.gw, &a, "/x").await.status, 503, "{faulty:?}");
        assert_eq!(h.p.refresh_calls(), calls + 1);
        assert_eq!(api(&h.gw, &a, "/x").await.status, 503);
        assert_eq!(
            h.p.refresh_calls(),
            calls + 1,
            "A is paused: no second call"
        );
    }
    // B refreshes at once: no breaker was opened for A's answers.
    h.p.answer_refreshes([RefreshAnswer::Json(200, refreshed_tokens())]);
    let calls = h.p.refresh_calls();
    let resp = api(&h.gw, &b, "/x").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(h.p.refresh_calls(), calls + 1);
    assert_eq!(h.gw.session_count().await, 2, "nobody was signed out");
}

// ---------------------------------------------------------------------------------
// Reloads (SIGHUP): the key ring from `secret_file`, the access rules and the routes.

#[tokio::test]
async fn a_reload_puts_a_new_key_in_front_and_new_routes_without_dropping_a_session() {
    use base64::Engine as _;
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let (key_a, key_b) = (random_bytes::<32>(), random_bytes::<32>());
    let h = on_a_file_store_with_secret(key_a).await;
    let before = Browser::new();
    let first = h.sign_in(&before, |_| {}).await;
    assert_eq!(api(&h.gw, &before, "/admin/x").await.status, 200);

    // The file a SIGHUP re-reads: the new key in front, the old one still there; a
    // route only admins may use.
    let dir = h.gw.db_path.as_ref().unwrap().parent().unwrap().to_owned();
    let keys = dir.join("keys");
    std::fs::write(&keys, format!("{}\n{}\n", b64(&key_b), b64(&key_a))).unwrap();
    let file = dir.join("portcullis.toml");
    std::fs::write(
        &file,
        "[[routes]]\npath = \"/admin/*\"\nrequired_claims = { groups = [\"admins\"] }\n",
    )
    .unwrap();
    let running = h.gw.gateway.config();
    let reloaded = portcullis::Config::load_from(
        Some(&file),
        [
            ("PORTCULLIS_ISSUER", running.providers[0].issuer.clone()),
            (
                "PORTCULLIS_CLIENT_ID",
                running.providers[0].client_id.clone(),
            ),
            ("PORTCULLIS_LISTEN", running.listen.to_string()),
            ("PORTCULLIS_UPSTREAM", h.up.url.clone()),
            ("PORTCULLIS_SECRET_FILE", keys.display().to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    )
    .unwrap();
    // A ring without the key that seals now would end every session: refused whole.
    let replaced = dir.join("replaced");
    std::fs::write(&replaced, b64(&key_b)).unwrap();
    let mut typo = reloaded.clone();
    typo.secret = portcullis::config::SecretKeys::parse(&b64(&key_b)).ok();
    typo.secret_file = Some(replaced);
    let refused = h.gw.gateway.sessions().reload_settings(&typo).await;
    assert!(
        matches!(
            refused,
            Err(portcullis::session::reload::ReloadError::DropsSealingKey)
        ),
        "{refused:?}"
    );
    assert_eq!(
        api(&h.gw, &before, "/admin/x").await.status,
        200,
        "nothing applied"
    );

    let report =
        h.gw.gateway
            .sessions()
            .reload_settings(&reloaded)
            .await
            .unwrap();
    assert_eq!(report.keys, Some(2));
    assert!(report.new_sealing_key, "B was not in the running ring");
    // Dropping A now would leave the assertion signing key (sealed with A when it was
    // made) unopenable after a restart: refused, and A stays.
    std::fs::write(dir.join("replaced"), b64(&key_b)).unwrap();
    let refused = h.gw.gateway.sessions().reload_settings(&typo).await;
    assert!(
        matches!(
            refused,
            Err(portcullis::session::reload::ReloadError::DropsSigningKey(_))
        ),
        "{refused:?}"
    );

    // The session from before works on (its tokens still open: relay, refresh) and the
    // new route applies to it at once.
    assert_eq!(api(&h.gw, &before, "/x").await.status, 200);
    assert_eq!(
        stored_refresh_token(&h.gw, &before).await.as_deref(),
        first["refresh_token"].as_str()
    );
    let refused = api(&h.gw, &before, "/admin/x").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"], "route_refused");

    // A new session is sealed with the new key: a gateway with only that key opens its
    // tokens, and not those sealed before the reload.
    let after = Browser::new();
    let second = h.sign_in(&after, |_| {}).await;
    let only_b = TestGateway::start_with(
        &h.p.issuer,
        Options {
            db_path: h.gw.db_path.clone(),
            secret: Some(key_b),
            ..Options::default()
        },
    )
    .await;
    let opened = only_b
        .gateway
        .sessions()
        .session_tokens(&record(&h.gw, &after).await.unwrap())
        .unwrap();
    assert_eq!(
        opened.refresh_token.as_deref().map(|t| t.as_str()),
        second["refresh_token"].as_str()
    );
    assert!(
        only_b
            .gateway
            .sessions()
            .session_tokens(&record(&h.gw, &before).await.unwrap())
            .is_err(),
        "sealed before the reload, with the old key"
    );
}

/// G08, one instance: a store used with secret A, the gateway started again with secret
/// B alone (the step after a leak). The old cookie gets a sign-in, never a 5xx, and its
/// session stays in the store for an instance that still holds A; a sign-in works; the
/// app's assertion is signed at once by an emergency key, the only one `jwks.json`
/// lists, and verifies with an independent library. An instance left on ring A is stale
/// (`/readyz` 503). `keys prune` removes only what ring B cannot open.
#[tokio::test]
async fn g08_a_new_secret_on_a_used_store_signs_in_again_and_asserts_at_once() {
    let (key_a, key_b) = (random_bytes::<32>(), random_bytes::<32>());
    let h = on_a_file_store_with_secret(key_a).await;
    let before = Browser::new();
    h.sign_in(&before, |_| {}).await;
    assert_eq!(api(&h.gw, &before, "/x").await.status, 200);
    let old = record(&h.gw, &before).await.unwrap();

    let b = TestGateway::start_with(
        &h.p.issuer,
        Options {
            db_path: h.gw.db_path.clone(),
            secret: Some(key_b),
            ..Options::default()
        }
        .env("PORTCULLIS_UPSTREAM", &h.up.url),
    )
    .await;
    // Ready at once: its readiness check makes the emergency key (a new instance has
    // no traffic before it is ready).
    let ready = |gw: &TestGateway| {
        let url = gw.at("/readyz");
        async move { Browser::new().get(&url, &[]).await }
    };
    let first = ready(&b).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let calls = h.up.calls();
    let r = api(&b, &before, "/x").await;
    assert_eq!(r.status, 401, "the old cookie signs in again: {}", r.body);
    assert_eq!(before.navigate(&b.at("/x")).await.status, 302);
    assert_eq!(h.up.calls(), calls, "the app never saw it");
    // Never deleted by the new ring: the old instance still serves it.
    assert!(record(&b, &before).await.is_some());
    assert_eq!(api(&h.gw, &before, "/x").await.status, 200);

    // A sign-in begun under ring A and finished at B: absent there (400), put back
    // unused, and finished where it began.
    let late = Browser::new();
    let auth = h.gw.start_login(&late, None).await;
    let token =
        h.p.keys
            .sign_rs256(&h.p.keys.rs256_header(), &h.p.claims(&auth.nonce));
    let code =
        h.p.issue_code(&auth.challenge, HostileProvider::token_response(&token));
    let query = callback_query(&code, &auth.state, Some(&h.p.issuer));
    assert_eq!(b.callback(&late, &query).await.status, 400);
    let finished = h.gw.callback(&late, &query).await;
    assert_eq!(finished.status, 303, "{}", finished.body);

    let after = Browser::new();
    h.p.sign_in(&b, &after).await;
    let r = api(&b, &after, "/x").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let assertion = echoed(&r.json(), "x-portcullis-jwt-assertion")[0].clone();
    let keys = b.gateway.store().signing_keys().await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.generation).collect::<Vec<_>>(),
        [1, 2]
    );
    let jwks = Browser::new()
        .get(&b.at("/auth/jwks.json"), &[])
        .await
        .json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["kid"], keys[1].kid.as_str());
    if support::oidc_provider::unavailable().is_none() {
        let config = b.gateway.config();
        let verified = support::oidc_provider::verify_assertion(
            &b.at("/auth/jwks.json"),
            &config.public_origin(),
            &config.assertion_audience,
            b.clock_now(),
            &assertion,
        )
        .await
        .unwrap();
        assert_eq!(verified["header"]["kid"], keys[1].kid.as_str());
    }

    // The instance left on ring A is stale; ring B's is ready.
    let (stale, current) = (ready(&h.gw).await, ready(&b).await);
    assert_eq!(stale.status, 503, "{}", stale.body);
    assert_eq!(stale.json()["key_ring"], false);
    assert_eq!(current.status, 200, "{}", current.body);

    // Prune: only the key ring B cannot open.
    assert!(
        h.gw.gateway
            .sessions()
            .prune_signing_keys(true)
            .await
            .unwrap()
            .is_none(),
        "the stale ring prunes nothing"
    );
    let pruned = b
        .gateway
        .sessions()
        .prune_signing_keys(true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pruned.iter().map(|k| k.generation).collect::<Vec<_>>(), [1]);
    let left = b.gateway.store().signing_keys().await.unwrap();
    assert_eq!(left, keys[1..]);
    assert!(
        record(&b, &before).await.is_some()
            && old.family_id == record(&b, &before).await.unwrap().family_id
    );
}
