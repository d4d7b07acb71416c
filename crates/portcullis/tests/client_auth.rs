//! Client authentication against the real, certified npm `oidc-provider`:
//! `client_secret_basic` with a base64 secret (`+`, `/`, `=`), `client_secret_post`,
//! `auto`'s probe (once, for every instance on a store; a provider that does not decode
//! Basic credentials is played by the hostile provider in `hostile_provider.rs`), and `private_key_jwt` with EC, RSA and Ed25519 keys and both `aud` forms — sign-in,
//! refresh and revocation, each with its own assertion (the provider refuses a
//! repeated `jti`, and the test checks them too). Skips with one line without Node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use portcullis::provider::client_key::{ClientKey, KeyKind, generate_pem};
use reqwest::Method;
use serde_json::{Value, json};
use support::gateway::Options;
use support::oidc_provider::RealProvider;
use support::{Browser, TestGateway};

/// A provider with one client (`extra` merged into its registration) and a gateway on
/// a pre-bound port configured by `env`.
async fn start(extra: Value, env: &[(&str, &str)]) -> Option<(RealProvider, TestGateway)> {
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
    let node = RealProvider::start(json!([client]), &[]).await?;
    let mut options = Options {
        listener: Some(listener),
        file_store: true,
        ..Options::default()
    };
    for (k, v) in env {
        options = options.env(k, v);
    }
    let gw = TestGateway::start_with(&node.issuer, options).await;
    Some((node, gw))
}

/// Signs alice in, refreshes once (the clock past the refresh point) and signs out
/// (which revokes the refresh token): three authenticated calls.
async fn sign_in_refresh_and_out(node: &RealProvider, gw: &TestGateway) {
    let browser = Browser::new();
    let resp = gw
        .sign_in_through_form(&browser, "alice", "alice", "/")
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    gw.clock.advance(250);
    let session = browser.get(&gw.at("/auth/session"), &[]).await;
    assert_eq!(session.status, 200, "{}", session.body);
    assert_eq!(session.json()["user"]["email"], "alice@example.com");
    let out = browser
        .request(
            Method::POST,
            &gw.at("/auth/logout"),
            &[("accept", "application/json"), ("x-csrf", "1")],
            None,
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    let events = node.events().await;
    assert_eq!(events["grants"]["authorization_code"], 1, "{events}");
    assert_eq!(events["grants"]["refresh_token"], 1, "{events}");
    assert_eq!(events["counts"]["revocation.success"], 1, "{events}");
}

/// How many token or revocation requests used `method` and got `status`.
fn calls(events: &Value, path: &str, method: &str, status: u16) -> u64 {
    events["client_auth"]["methods"][format!("{path} {method} {status}")]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn interop_client_secret_basic_carries_a_base64_secret() {
    // RFC 6749 §2.3.1: form-encoded, then Basic; a certified provider decodes it.
    let secret = "q+8/Zx==Ab+c/d=e";
    let Some((node, gw)) = start(
        json!({"client_secret": secret, "token_endpoint_auth_method": "client_secret_basic"}),
        &[
            ("PORTCULLIS_CLIENT_SECRET", secret),
            (
                "PORTCULLIS_PROVIDER_TOKEN_ENDPOINT_AUTH_METHOD",
                "client_secret_basic",
            ),
        ],
    )
    .await
    else {
        return;
    };
    sign_in_refresh_and_out(&node, &gw).await;
    let events = node.events().await;
    assert_eq!(calls(&events, "/token", "client_secret_basic", 200), 2);
    assert_eq!(
        calls(&events, "/token/revocation", "client_secret_basic", 200),
        1
    );
}

#[tokio::test]
async fn interop_client_secret_post_sends_the_secret_in_the_form() {
    let secret = "p0st+secret/==";
    let Some((node, gw)) = start(
        json!({"client_secret": secret, "token_endpoint_auth_method": "client_secret_post"}),
        &[
            ("PORTCULLIS_CLIENT_SECRET", secret),
            (
                "PORTCULLIS_PROVIDER_TOKEN_ENDPOINT_AUTH_METHOD",
                "client_secret_post",
            ),
        ],
    )
    .await
    else {
        return;
    };
    sign_in_refresh_and_out(&node, &gw).await;
    let events = node.events().await;
    assert_eq!(
        calls(&events, "/token", "client_secret_post", 200),
        2,
        "{events}"
    );
    assert_eq!(
        calls(&events, "/token/revocation", "client_secret_post", 200),
        1
    );
    assert_eq!(calls(&events, "/token", "client_secret_basic", 200), 0);
}

#[tokio::test]
async fn interop_auto_probes_once_for_every_instance() {
    // oidc-provider lists basic and post and accepts either: `auto` probes with a
    // made-up code (basic first: invalid_grant = it works) and remembers the answer in
    // the store, so a second instance on that store does not probe again.
    let secret = "a+uto/probe==";
    let listeners: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let client = json!({
        "client_id": "app",
        "client_secret": secret,
        "token_endpoint_auth_method": "client_secret_basic",
        "redirect_uris": urls.iter().map(|u| format!("{u}/auth/callback")).collect::<Vec<_>>(),
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    let Some(node) = RealProvider::start(json!([client]), &[]).await else {
        return;
    };
    let mut listeners = listeners.into_iter();
    let first = TestGateway::start_with(
        &node.issuer,
        Options {
            listener: listeners.next(),
            file_store: true,
            ..Options::default()
        }
        .env("PORTCULLIS_CLIENT_SECRET", secret),
    )
    .await;
    sign_in_refresh_and_out(&node, &first).await;
    let events = node.events().await;
    assert_eq!(
        calls(&events, "/token", "client_secret_basic", 400),
        1,
        "one probe: {events}"
    );
    assert_eq!(
        calls(&events, "/token", "client_secret_basic", 200),
        2,
        "{events}"
    );
    assert_eq!(
        calls(&events, "/token", "client_secret_post", 400),
        0,
        "{events}"
    );

    let second = TestGateway::start_with(
        &node.issuer,
        Options {
            listener: listeners.next(),
            db_path: first.db_path.clone(),
            secret: Some(first.secret),
            ..Options::default()
        }
        .env("PORTCULLIS_CLIENT_SECRET", secret),
    )
    .await;
    let browser = Browser::new();
    let resp = second
        .sign_in_through_form(&browser, "bob", "bob", "/")
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let events = node.events().await;
    assert_eq!(events["grants"]["authorization_code"], 2, "{events}");
    assert_eq!(
        calls(&events, "/token", "client_secret_basic", 400),
        1,
        "no second probe"
    );
    assert_eq!(calls(&events, "/token", "client_secret_post", 400), 0);
}

/// A `private_key_jwt` client of `kind`, once with `aud` = the issuer and once with the
/// token endpoint (and the rfc7523bis `typ`).
async fn private_key_jwt(kind: KeyKind, alg: &str) {
    for aud_form in ["issuer", "token_endpoint"] {
        let pem = generate_pem(kind).unwrap();
        let key = ClientKey::from_pem(pem.as_bytes(), None).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "pc-client-key-{}",
            portcullis::random::random_token()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("client-key.pem");
        std::fs::write(&key_file, &pem).unwrap();
        let typ = (aud_form == "token_endpoint").then_some("client-authentication+jwt");
        let mut env = vec![
            (
                "PORTCULLIS_PROVIDER_CLIENT_KEY_FILE",
                key_file.to_str().unwrap(),
            ),
            ("PORTCULLIS_PROVIDER_CLIENT_ASSERTION_AUD", aud_form),
        ];
        if let Some(typ) = typ {
            env.push(("PORTCULLIS_PROVIDER_CLIENT_ASSERTION_TYP", typ));
        }
        let Some((node, gw)) = start(
            json!({
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": key.public_jwks(false),
            }),
            &env,
        )
        .await
        else {
            return;
        };
        // The public half is published.
        let published = reqwest::get(gw.at("/auth/client-jwks.json")).await.unwrap();
        assert_eq!(published.status(), 200);
        assert_eq!(
            published.json::<Value>().await.unwrap(),
            key.public_jwks(false)
        );

        sign_in_refresh_and_out(&node, &gw).await;
        let events = node.events().await;
        let assertions = events["client_auth"]["assertions"].as_array().unwrap();
        assert_eq!(assertions.len(), 3, "{events}");
        let expected_aud = match aud_form {
            "issuer" => node.issuer.clone(),
            _ => format!("{}/token", node.issuer),
        };
        let mut jtis = HashSet::new();
        for a in assertions {
            assert_eq!(a["status"], 200, "{a}");
            assert_eq!(a["header"]["alg"], alg);
            assert_eq!(a["header"]["kid"], key.kid());
            assert_eq!(a["header"]["typ"].as_str(), typ);
            let claims = &a["claims"];
            assert_eq!(claims["aud"], expected_aud.as_str(), "aud is one string");
            assert_eq!(claims["iss"], "app");
            assert_eq!(claims["sub"], "app");
            let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
            assert!((1..=60).contains(&lifetime), "{claims}");
            assert!(
                jtis.insert(claims["jti"].as_str().unwrap().to_owned()),
                "a jti was reused"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn interop_private_key_jwt_with_an_ec_key() {
    private_key_jwt(KeyKind::EcP256, "ES256").await;
}

#[tokio::test]
async fn interop_private_key_jwt_with_an_rsa_key() {
    private_key_jwt(KeyKind::Rsa, "RS256").await;
}

#[tokio::test]
async fn interop_private_key_jwt_with_an_ed25519_key() {
    private_key_jwt(KeyKind::Ed25519, "EdDSA").await;
}

#[tokio::test]
async fn client_jwks_is_absent_without_a_client_key() {
    let issuer = support::dev_provider::start("http://127.0.0.1:9", None).await;
    let gw = TestGateway::start(&issuer).await;
    let r = reqwest::get(gw.at("/auth/client-jwks.json")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "no_client_key");
}
