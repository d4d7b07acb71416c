//! Pushed authorization requests (RFC 9126, `provider.par`): against the real npm
//! `oidc-provider` when its metadata requires them (the request pushed once with the
//! client's credentials, the browser carrying `client_id` and `request_uri` only), and
//! against the hostile provider for what a real one will not answer (no `request_uri`,
//! a refusal, a short-lived `request_uri`). The interop tests skip with one line
//! without Node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use serde_json::json;
use support::gateway::{Options, callback_query};
use support::oidc_provider::{auth_calls, sign_in_refresh_and_out, start_with_gateway};
use support::{Browser, HostileProvider, TestGateway};
use url::Url;

#[tokio::test]
async fn interop_a_provider_that_requires_par_gets_the_request_pushed() {
    let secret = "p4r+secret/==";
    let Some(events) = support::oidc_provider::events_of_a_secret_client(
        secret,
        "client_secret_basic",
        &[("REQUIRE_PAR", "1")],
    )
    .await
    else {
        return;
    };
    // Pushed once, authenticated like the token endpoint...
    assert_eq!(
        auth_calls(&events, "/request", "client_secret_basic", 201),
        1,
        "{events}"
    );
    // ...and the browser carried client_id and request_uri, nothing else.
    assert_eq!(
        events["client_auth"]["authorize_params"],
        json!([["client_id", "request_uri"]]),
        "{events}"
    );
}

/// PAR with the credentials in the form: `client_id` is sent once (the provider refuses
/// a repeated parameter).
#[tokio::test]
async fn interop_par_over_client_secret_post_sends_each_parameter_once() {
    let secret = "p4r-p0st+secret/==";
    let Some(events) = support::oidc_provider::events_of_a_secret_client(
        secret,
        "client_secret_post",
        &[("REQUIRE_PAR", "1")],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        auth_calls(&events, "/request", "client_secret_post", 201),
        1,
        "{events}"
    );
}

#[tokio::test]
async fn interop_par_with_private_key_jwt_carries_its_own_assertion() {
    let (key, key_file) =
        support::client_key_file(portcullis::provider::client_key::KeyKind::EcP256);
    let Some((node, gw)) = start_with_gateway(
        json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": key.public_jwks(false)}),
        &[("REQUIRE_PAR", "1")],
        &[(
            "PORTCULLIS_PROVIDER_CLIENT_KEY_FILE",
            key_file.to_str().unwrap(),
        )],
    )
    .await
    else {
        return;
    };
    sign_in_refresh_and_out(&node, &gw).await;
    let events = node.events().await;
    assert_eq!(
        auth_calls(&events, "/request", "private_key_jwt", 201),
        1,
        "{events}"
    );
    // Four assertions (PAR, code, refresh, revocation), no jti twice.
    let assertions = events["client_auth"]["assertions"].as_array().unwrap();
    assert_eq!(assertions.len(), 4, "{events}");
    let jtis: std::collections::HashSet<&str> = assertions
        .iter()
        .map(|a| a["claims"]["jti"].as_str().unwrap())
        .collect();
    assert_eq!(jtis.len(), 4);
    let _ = std::fs::remove_dir_all(key_file.parent().unwrap());
}

#[tokio::test]
async fn interop_par_never_against_a_provider_that_requires_it_says_why() {
    let Some((node, gw)) = start_with_gateway(
        json!({"token_endpoint_auth_method": "none"}),
        &[("REQUIRE_PAR", "1")],
        &[("PORTCULLIS_PROVIDER_PAR", "never")],
    )
    .await
    else {
        return;
    };
    let resp = Browser::new().navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.location().is_none());
    assert!(resp.body.contains("provider_bad_response"), "{}", resp.body);
    // doctor says why, and what to set.
    let (level, line) =
        support::doctor_finding(&node.issuer, &[("PORTCULLIS_PROVIDER_PAR", "never")], "par").await;
    assert_eq!(level, "Error", "{line}");
    assert!(line.contains("provider.par = \"auto\""), "{line}");
    let (level, line) = support::doctor_finding(&node.issuer, &[], "par").await;
    assert_eq!(level, "Ok", "{line}");
}

/// The hostile provider with a PAR endpoint its metadata requires, and a gateway.
async fn hostile_with_par() -> (HostileProvider, TestGateway) {
    let p = HostileProvider::start().await;
    p.patch_metadata(json!({
        "pushed_authorization_request_endpoint": format!("{}/par", p.issuer),
        "require_pushed_authorization_requests": true,
    }));
    let gw = TestGateway::start(&p.issuer).await;
    (p, gw)
}

#[tokio::test]
async fn a_par_answer_without_request_uri_sends_nobody_to_the_provider() {
    let (p, gw) = hostile_with_par().await;
    p.script.lock().unwrap().par_answer = Some((201, json!({"expires_in": 60})));
    let resp = Browser::new().navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.location().is_none());
    assert!(resp.body.contains("provider_bad_response"), "{}", resp.body);
    assert_eq!(p.script.lock().unwrap().pushed.len(), 1);
}

#[tokio::test]
async fn a_refused_push_is_an_error_page_not_a_redirect() {
    let (p, gw) = hostile_with_par().await;
    p.script.lock().unwrap().par_answer = Some((400, json!({"error": "invalid_request"})));
    let resp = Browser::new().navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.location().is_none());
    assert!(resp.body.contains("par_refused"), "{}", resp.body);
}

#[tokio::test]
async fn par_always_needs_a_par_endpoint() {
    let p = HostileProvider::start().await;
    let gw = TestGateway::start_with(
        &p.issuer,
        Options::default().env("PORTCULLIS_PROVIDER_PAR", "always"),
    )
    .await;
    let resp = Browser::new().navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.location().is_none());
    assert!(p.script.lock().unwrap().pushed.is_empty());
}

/// Starts a pushed login: the pushed form and the URL the browser was sent to.
async fn pushed_login(
    p: &HostileProvider,
    gw: &TestGateway,
    browser: &Browser,
) -> (std::collections::HashMap<String, String>, Url) {
    let resp = browser.navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    let url = Url::parse(&resp.location().unwrap()).unwrap();
    let pushed = p.script.lock().unwrap().pushed.last().cloned().unwrap();
    (pushed, url)
}

#[tokio::test]
async fn the_pushed_request_carries_everything_and_the_url_nothing_but_its_reference() {
    let (p, gw) = hostile_with_par().await;
    p.script.lock().unwrap().par_answer = Some((
        201,
        json!({"request_uri": "urn:ietf:params:oauth:request_uri:one", "expires_in": 90}),
    ));
    let browser = Browser::new();
    let (pushed, url) = pushed_login(&p, &gw, &browser).await;
    let mut names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    names.sort();
    assert_eq!(names, ["client_id", "request_uri"]);
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "request_uri" && v == "urn:ietf:params:oauth:request_uri:one")
    );
    // Every parameter went into the push (the challenge's two: read below).
    for name in "response_type client_id redirect_uri scope state nonce".split(' ') {
        assert!(pushed.contains_key(name), "{name} not pushed: {pushed:?}");
    }
    assert_eq!(pushed["code_challenge_method"], "S256");
    // The sign-in completes with the pushed state and challenge.
    let claims = p.claims(&pushed["nonce"]);
    let token = p.keys.sign_rs256(&p.keys.rs256_header(), &claims);
    let code = p.issue_code(
        &pushed["code_challenge"],
        HostileProvider::token_response(&token),
    );
    let resp = gw
        .callback(
            &browser,
            &callback_query(&code, &pushed["state"], Some(&p.issuer)),
        )
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
}

#[tokio::test]
async fn the_login_transaction_ends_with_its_request_uri() {
    let (p, gw) = hostile_with_par().await;
    p.script.lock().unwrap().par_answer = Some((
        201,
        json!({"request_uri": "urn:ietf:params:oauth:request_uri:short", "expires_in": 30}),
    ));
    let browser = Browser::new();
    let (pushed, _) = pushed_login(&p, &gw, &browser).await;
    let claims = p.claims(&pushed["nonce"]);
    let token = p.keys.sign_rs256(&p.keys.rs256_header(), &claims);
    let code = p.issue_code(
        &pushed["code_challenge"],
        HostileProvider::token_response(&token),
    );
    gw.clock.advance(31);
    let resp = gw
        .callback(
            &browser,
            &callback_query(&code, &pushed["state"], Some(&p.issuer)),
        )
        .await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(
        p.token_calls(),
        0,
        "an expired transaction never reaches the token endpoint"
    );
}
