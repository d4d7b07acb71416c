//! The FAPI 2.0 run against the real npm `oidc-provider` with its FAPI 2.0 profile:
//! pushed authorization requests required, `private_key_jwt`, DPoP proofs with server
//! nonces at every token request, DPoP-bound access tokens. Behind the gateway, the
//! provider's own resource server (`/api/...` in tests/interop/server.mjs) verifies
//! every relayed proof with npm `jose`, an independent JWT library. Skips with one
//! line without Node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use portcullis::provider::client_key::KeyKind;
use serde_json::{Value, json};
use support::gateway::Options;
use support::oidc_provider::RealProvider;
use support::{Browser, HostileProvider, TestGateway};

const JSON: &[(&str, &str)] = &[("accept", "application/json")];

/// The provider in its FAPI 2.0 profile with one `private_key_jwt` client whose tokens
/// are DPoP-bound and whose ID tokens are ES256, and a gateway with
/// `provider.profile = "fapi2"` that relays `/api/*` to the provider's resource server.
async fn fapi(gateway_env: &[(&str, &str)]) -> Option<(RealProvider, TestGateway)> {
    let (key, key_file) = support::client_key_file(KeyKind::EcP256);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let client = json!({
        "client_id": "app",
        "redirect_uris": [format!("{gateway_url}/auth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": key.public_jwks(false),
        "dpop_bound_access_tokens": true,
        "id_token_signed_response_alg": "ES256",
    });
    let node = RealProvider::start(json!([client]), &[("FAPI", "1")]).await?;
    let mut options = Options {
        listener: Some(listener),
        file_store: true,
        ..Options::default()
    }
    .env(
        "PORTCULLIS_PROVIDER_CLIENT_KEY_FILE",
        key_file.to_str().unwrap(),
    )
    .env("PORTCULLIS_PROVIDER_PROFILE", "fapi2")
    .env("PORTCULLIS_UPSTREAM", &node.issuer)
    .env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*");
    for (k, v) in gateway_env {
        options = options.env(k, v);
    }
    let gw = TestGateway::start_with(&node.issuer, options).await;
    Some((node, gw))
}

/// The provider's record of DPoP proofs at `path` (`/token`, `/me`).
fn proofs<'a>(events: &'a Value, path: &str) -> Vec<&'a Value> {
    events["client_auth"]["dpop"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["path"] == path)
        .collect()
}

/// The resource server's last call record.
fn last_api_call(events: &Value) -> Value {
    events["api"].as_array().unwrap().last().cloned().unwrap()
}

#[tokio::test]
async fn interop_fapi2_sign_in_relay_refresh_and_logout() {
    let Some((node, gw)) = fapi(&[]).await else {
        return;
    };
    let browser = gw.signed_in_as("alice").await;
    let events = node.events().await;
    // PAR: the browser carried client_id and request_uri only.
    assert_eq!(
        events["client_auth"]["authorize_params"],
        json!([["client_id", "request_uri"]]),
        "{events}"
    );
    // The code: a proof without a nonce, the provider's use_dpop_nonce, a fresh proof
    // with it (and a fresh client assertion: no jti twice).
    let token = proofs(&events, "/token");
    assert_eq!(token.len(), 2, "{events}");
    assert_eq!(token[0]["status"], 400);
    assert!(token[0]["claims"]["nonce"].is_null());
    assert_eq!(token[1]["status"], 200);
    assert!(token[1]["claims"]["nonce"].is_string());
    let assertions = events["client_auth"]["assertions"].as_array().unwrap();
    let jtis: std::collections::HashSet<&str> = assertions
        .iter()
        .map(|a| a["claims"]["jti"].as_str().unwrap())
        .collect();
    assert_eq!(jtis.len(), assertions.len(), "{events}");
    // UserInfo took the bound token with the DPoP scheme, after asking for its nonce.
    let me = proofs(&events, "/me");
    assert_eq!(me.len(), 2, "{events}");
    assert!(me.iter().all(|p| p["scheme"] == "DPoP"), "{events}");
    assert_eq!(me[0]["status"], 401);
    assert_eq!(me[1]["status"], 200);
    assert!(me[1]["claims"]["nonce"].is_string());
    assert!(me[1]["claims"]["ath"].is_string());

    // A resource server that wants its own nonce: the relayed request is not retried
    // (the 401 reaches the client); the next one carries the nonce it gave.
    let resp = browser.get(&gw.at("/api/nonce/orders"), JSON).await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert_eq!(node.events().await["api"].as_array().unwrap().len(), 1);
    let resp = browser.get(&gw.at("/api/nonce/orders"), JSON).await;
    assert_eq!(resp.status, 200, "{}", resp.body);

    // Token relay: the resource server verified the proof (jose) and the binding.
    let resp = browser.get(&gw.at("/api/orders"), JSON).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["sub"], "alice");
    assert_eq!(resp.json()["bound"], true);
    let call = last_api_call(&node.events().await);
    assert_eq!(call["scheme"], "DPoP");
    for check in ["jkt", "htm", "htu", "ath", "iat", "jti"] {
        assert_eq!(call["checks"][check], true, "{check}: {call}");
    }

    // Refresh, with the provider asking for a fresh nonce first.
    reqwest::Client::new()
        .post(format!("{}/test/dpop/challenge-next", node.issuer))
        .send()
        .await
        .unwrap();
    gw.clock.advance(250);
    let session = browser.get(&gw.at("/auth/session"), &[]).await;
    assert_eq!(session.status, 200, "{}", session.body);
    let events = node.events().await;
    assert_eq!(events["grants"]["refresh_token"], 1, "{events}");
    assert_eq!(events["dpop_hook"]["challenged"], 1, "{events}");
    let token = proofs(&events, "/token");
    assert_eq!(token.last().unwrap()["status"], 200, "{events}");
    // The refreshed token is bound and relays.
    let resp = browser.get(&gw.at("/api/orders"), JSON).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json()["bound"], true);

    // Sign-out revokes the refresh token.
    let out = gw.sign_out_api(&browser).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(
        node.events().await["counts"]["revocation.success"],
        1,
        "{}",
        node.events().await
    );
}

/// Forward-auth hands the proxy the bound token and its proof; the resource server
/// takes them as the proxy passes them on, and refuses the token as Bearer or without
/// its proof.
#[tokio::test]
async fn interop_a_relayed_bound_token_is_refused_as_bearer() {
    let Some((node, gw)) = fapi(&[("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1")]).await else {
        return;
    };
    let browser = gw.signed_in_as("alice").await;
    let cookie = format!("portcullis={}", browser.cookie("portcullis").unwrap());
    let answer = Browser::new()
        .get(
            &gw.at("/auth/verify"),
            &[
                ("cookie", &cookie),
                ("x-original-uri", "/api/orders"),
                ("x-original-method", "GET"),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let header = |name: &str| answer.headers[name].to_str().unwrap().to_owned();
    let authorization = header("authorization");
    let proof = header("dpop");
    let token = authorization
        .strip_prefix("DPoP ")
        .expect("the DPoP scheme");
    let host = gw.url.trim_start_matches("http://").to_owned();
    let api = |auth: String, proof: Option<String>| {
        let url = format!("{}/api/orders", node.issuer);
        let host = host.clone();
        async move {
            let mut req = reqwest::Client::new()
                .get(url)
                .header("authorization", auth)
                .header("x-forwarded-host", host)
                .header("x-forwarded-proto", "http");
            if let Some(p) = proof {
                req = req.header("dpop", p);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    // As Bearer, with or without the proof: refused (RFC 9449 §7.2).
    assert_eq!(api(format!("Bearer {token}"), None).await, 401);
    assert_eq!(
        api(format!("Bearer {token}"), Some(proof.clone())).await,
        401
    );
    assert_eq!(
        last_api_call(&node.events().await)["error"],
        "a DPoP-bound token was sent as Bearer"
    );
    // As DPoP without a proof: refused.
    assert_eq!(api(authorization.clone(), None).await, 401);
    // As the proxy passes it on: accepted, once (the proof's jti is spent).
    assert_eq!(api(authorization.clone(), Some(proof.clone())).await, 200);
    assert_eq!(api(authorization, Some(proof)).await, 401);
}

/// A gateway with `provider.profile = "fapi2"` (and a client key) in front of the
/// hostile provider, whose metadata offers everything the profile needs but what
/// `strip` names.
async fn hostile_fapi2(strip: &[&str]) -> (HostileProvider, TestGateway, Vec<(String, String)>) {
    let p = HostileProvider::start().await;
    let mut metadata = json!({
        "pushed_authorization_request_endpoint": format!("{}/par", p.issuer),
        "dpop_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
    });
    for name in strip {
        metadata[*name] = Value::Null;
    }
    p.patch_metadata(metadata);
    let (_, key_file) = support::client_key_file(KeyKind::EcP256);
    let env = vec![
        ("PORTCULLIS_PROVIDER_PROFILE".to_owned(), "fapi2".to_owned()),
        (
            "PORTCULLIS_PROVIDER_CLIENT_KEY_FILE".to_owned(),
            key_file.to_str().unwrap().to_owned(),
        ),
    ];
    let mut options = Options::default();
    for (k, v) in &env {
        options = options.env(k, v);
    }
    let gw = TestGateway::start_with(&p.issuer, options).await;
    (p, gw, env)
}

/// Metadata that cannot support the profile: sign-ins refused with the reason, the
/// gateway not ready, `doctor` exiting 2.
#[tokio::test]
async fn fapi2_against_a_provider_without_dpop_refuses_sign_ins_readiness_and_doctor() {
    let (p, gw, env) = hostile_fapi2(&["dpop_signing_alg_values_supported"]).await;
    let resp = Browser::new().navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.location().is_none());
    assert!(resp.body.contains("provider_not_fapi2"), "{}", resp.body);
    assert!(
        resp.body.contains("dpop_signing_alg_values_supported"),
        "the page names what is missing: {}",
        resp.body
    );
    assert!(
        p.script.lock().unwrap().pushed.is_empty(),
        "nothing was pushed"
    );
    let ready = Browser::new().get(&gw.at("/readyz"), &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.body);

    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (level, line) = support::doctor_finding(&p.issuer, &env, "fapi2").await;
    assert_eq!(level, "Error", "{line}");
    assert!(line.contains("dpop_signing_alg_values_supported"), "{line}");
    let mut vars: Vec<(String, String)> = vec![
        ("PORTCULLIS_ISSUER".into(), p.issuer.clone()),
        ("PORTCULLIS_CLIENT_ID".into(), "app".into()),
        ("PORTCULLIS_STORE".into(), "sqlite::memory:".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let config = portcullis::Config::load_from(None, vars).unwrap();
    assert_eq!(portcullis::doctor::run(&config).await.exit_status(), 2);
}

/// FAPI 2.0 Security Profile §5.3.2.2: a `request_uri` must live under 600 s.
#[tokio::test]
async fn under_fapi2_a_par_answer_living_600_seconds_is_refused() {
    let (p, gw, _) = hostile_fapi2(&[]).await;
    assert_eq!(Browser::new().get(&gw.at("/readyz"), &[]).await.status, 200);
    p.script.lock().unwrap().par_answer = Some((
        201,
        json!({"request_uri": "urn:ietf:params:oauth:request_uri:long", "expires_in": 600}),
    ));
    let resp = Browser::new().navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.location().is_none());
    assert!(resp.body.contains("provider_bad_response"), "{}", resp.body);
    p.script.lock().unwrap().par_answer = Some((
        201,
        json!({"request_uri": "urn:ietf:params:oauth:request_uri:ok", "expires_in": 599}),
    ));
    let resp = Browser::new().navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    let url = url::Url::parse(&resp.location().unwrap()).unwrap();
    assert!(url.query_pairs().any(|(k, _)| k == "request_uri"));
    let pushed = p.script.lock().unwrap().pushed.last().cloned().unwrap();
    assert!(pushed.contains_key("dpop_jkt"), "{pushed:?}");
    assert_eq!(
        pushed.get("client_assertion_type").map(String::as_str),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
}
