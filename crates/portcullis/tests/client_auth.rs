//! Client authentication against the real, certified npm `oidc-provider`:
//! `client_secret_basic` with a base64 secret (`+`, `/`, `=`), `client_secret_post`,
//! `auto`'s probe (once, for every instance on a store; a provider that does not decode
//! Basic credentials is played by the hostile provider in `hostile_provider.rs`), and `private_key_jwt` with EC, RSA and Ed25519 keys and both `aud` forms — sign-in,
//! refresh and revocation, each with its own assertion (the provider refuses a
//! repeated `jti`, and the test checks them too). Skips with one line without Node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use std::collections::HashSet;

use portcullis::provider::client_key::{ClientKey, KeyKind, generate_pem};
use serde_json::{Value, json};
use support::gateway::Options;
use support::oidc_provider::{self, RealProvider, auth_calls as calls, sign_in_refresh_and_out};
use support::{Browser, TestGateway};

/// A provider with one client (`extra` merged into its registration) and a gateway
/// configured by `env`.
async fn start(extra: Value, env: &[(&str, &str)]) -> Option<(RealProvider, TestGateway)> {
    oidc_provider::start_with_gateway(extra, &[], env).await
}

/// `doctor`'s `client` finding for a gateway of `issuer` with `env`: (level, line).
async fn doctor_client(issuer: &str, env: &[(&str, &str)]) -> (String, String) {
    support::doctor_finding(issuer, env, "client").await
}

#[tokio::test]
async fn interop_client_secret_basic_carries_a_base64_secret() {
    // RFC 6749 §2.3.1: form-encoded, then Basic; a certified provider decodes it.
    let secret = "q+8/Zx==Ab+c/d=e";
    let Some(events) =
        oidc_provider::events_of_a_secret_client(secret, "client_secret_basic", &[]).await
    else {
        return;
    };
    assert_eq!(calls(&events, "/token", "client_secret_basic", 200), 2);
    assert_eq!(
        calls(&events, "/token/revocation", "client_secret_basic", 200),
        1
    );
}

#[tokio::test]
async fn interop_client_secret_post_sends_the_secret_in_the_form() {
    let secret = "p0st+secret/==";
    let Some(events) =
        oidc_provider::events_of_a_secret_client(secret, "client_secret_post", &[]).await
    else {
        return;
    };
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
        let (key, key_file) = support::client_key_file(kind);
        let dir = key_file.parent().unwrap().to_owned();
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
        let (level, line) = doctor_client(&node.issuer, &env).await;
        assert_eq!(level, "Ok", "{line}");
        assert!(
            line.starts_with(&format!("client assertion ({alg}, aud = the"))
                && line.contains("accepted with private_key_jwt"),
            "{line}"
        );
        // A key the provider does not know: doctor says to register it.
        let stranger = dir.join("stranger.pem");
        std::fs::write(&stranger, generate_pem(kind).unwrap()).unwrap();
        let (level, line) = doctor_client(
            &node.issuer,
            &[(
                "PORTCULLIS_PROVIDER_CLIENT_KEY_FILE",
                stranger.to_str().unwrap(),
            )],
        )
        .await;
        assert_eq!(level, "Error", "{line}");
        assert!(
            line.contains("register the public key") && line.contains("/auth/client-jwks.json"),
            "{line}"
        );
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

// ---------------------------------------------------------------------------------
// `auto` against a provider that lists basic and post but does not form-decode Basic
// credentials (played by the hostile provider): the probe's outcome table.

mod auto_probe {
    use super::support::gateway::Options;
    use super::support::{Browser, HostileProvider, TestGateway};
    use serde_json::json;

    /// A secret as base64 makes them: RFC 6749's encoding changes it over Basic.
    const SECRET: &str = "Zm9v+YmFy/YmF6==";

    async fn provider(secret: &str) -> HostileProvider {
        let p = HostileProvider::start().await;
        p.patch_metadata(json!({
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }));
        p.script.lock().unwrap().client_secret = Some(secret.to_owned());
        p
    }

    async fn gateway(
        p: &HostileProvider,
        secret: &str,
        store_of: Option<&TestGateway>,
    ) -> TestGateway {
        let options = Options {
            file_store: store_of.is_none(),
            db_path: store_of.and_then(|g| g.db_path.clone()),
            secret: store_of.map(|g| g.secret),
            ..Options::default()
        };
        TestGateway::start_with(&p.issuer, options.env("PORTCULLIS_CLIENT_SECRET", secret)).await
    }

    /// One sign-in attempt; the gateway's answer status and the code the provider issued.
    async fn attempt(p: &HostileProvider, gw: &TestGateway) -> (u16, String) {
        let browser = Browser::new();
        let auth = gw.start_login(&browser, None).await;
        let code = p.code_for(&auth);
        let resp = p.answer_with(gw, &browser, &auth, &code).await;
        (resp.status, code)
    }

    /// The token requests so far: (method, whether it carried a made-up probe code).
    fn requests(p: &HostileProvider) -> Vec<(&'static str, bool)> {
        p.script
            .lock()
            .unwrap()
            .token_requests
            .iter()
            .map(|(m, code)| (*m, code.starts_with("portcullis-probe-")))
            .collect()
    }

    fn times_presented(p: &HostileProvider, code: &str) -> usize {
        let s = p.script.lock().unwrap();
        s.token_requests.iter().filter(|(_, c)| c == code).count()
    }

    #[tokio::test]
    async fn the_probe_picks_post_and_the_real_code_is_sent_once() {
        let p = provider(SECRET).await;
        let gw = gateway(&p, SECRET, None).await;
        let (status, code) = attempt(&p, &gw).await;
        assert_eq!(status, 303, "sign-in works with client_secret_post");
        assert_eq!(
            requests(&p),
            [("basic", true), ("post", true), ("post", false)],
            "basic probed and refused, post probed and accepted, then the code with post"
        );
        assert_eq!(times_presented(&p, &code), 1);
        // Decided for every instance on the store: a second one goes straight to post.
        let second = gateway(&p, SECRET, Some(&gw)).await;
        let (status, code) = attempt(&p, &second).await;
        assert_eq!(status, 303);
        assert_eq!(requests(&p)[3..], [("post", false)]);
        assert_eq!(times_presented(&p, &code), 1);
    }

    #[tokio::test]
    async fn a_wrong_secret_costs_one_probe_not_a_call_per_request() {
        let p = provider("the-right-one").await;
        let gw = gateway(&p, SECRET, None).await;
        let (status, _) = attempt(&p, &gw).await;
        assert_eq!(status, 400, "the provider refuses the client");
        assert_eq!(
            requests(&p),
            [("basic", true), ("post", true), ("basic", false)]
        );
        for _ in 0..2 {
            let (status, code) = attempt(&p, &gw).await;
            assert_eq!(status, 400);
            assert_eq!(times_presented(&p, &code), 1);
        }
        assert_eq!(
            requests(&p).len(),
            5,
            "no probe again within 10 minutes: {:?}",
            requests(&p)
        );
    }

    #[tokio::test]
    async fn a_real_invalid_client_forgets_the_decision() {
        let p = provider(SECRET).await;
        let gw = gateway(&p, SECRET, None).await;
        assert_eq!(attempt(&p, &gw).await.0, 303);
        assert_eq!(requests(&p).len(), 3, "decided: post");
        // The provider stops accepting the client (the secret was rotated there).
        p.script.lock().unwrap().client_secret = Some("rotated".into());
        assert_eq!(attempt(&p, &gw).await.0, 400);
        assert_eq!(requests(&p)[3..], [("post", false)]);
        // Back: another instance finds nothing stored and probes again.
        p.script.lock().unwrap().client_secret = Some(SECRET.into());
        let second = gateway(&p, SECRET, Some(&gw)).await;
        assert_eq!(attempt(&p, &second).await.0, 303);
        assert_eq!(
            requests(&p)[4..],
            [("basic", true), ("post", true), ("post", false)],
            "the decision was forgotten in the store"
        );
    }

    #[tokio::test]
    async fn doctor_names_the_method_that_works() {
        let p = provider(SECRET).await;
        let auto = super::doctor_client(&p.issuer, &[("PORTCULLIS_CLIENT_SECRET", SECRET)]).await;
        assert_eq!(auto.0, "Ok", "{}", auto.1);
        assert!(
            auto.1
                .starts_with("credentials accepted with client_secret_post")
                && auto
                    .1
                    .contains(r#"set provider.token_endpoint_auth_method = "client_secret_post""#),
            "{}",
            auto.1
        );
        let basic = super::doctor_client(
            &p.issuer,
            &super::oidc_provider::client_secret_env(SECRET, "client_secret_basic"),
        )
        .await;
        assert_eq!(basic.0, "Error", "{}", basic.1);
        assert!(
            basic.1.contains(
                "refused the client with client_secret_basic but accepts client_secret_post"
            ) && basic
                .1
                .contains(r#"fix: set provider.token_endpoint_auth_method = "client_secret_post""#),
            "{}",
            basic.1
        );
        let wrong = super::doctor_client(&p.issuer, &[("PORTCULLIS_CLIENT_SECRET", "wrong")]).await;
        assert_eq!(wrong.0, "Error", "{}", wrong.1);
        assert!(
            wrong.1.contains("check client_id and client_secret"),
            "{}",
            wrong.1
        );
        p.script.lock().unwrap().token_override = Some((503, "{}".into()));
        let down = super::doctor_client(&p.issuer, &[("PORTCULLIS_CLIENT_SECRET", SECRET)]).await;
        assert_eq!(down.0, "Error", "{}", down.1);
        assert!(down.1.contains("the token endpoint failed"), "{}", down.1);
        // doctor remembers nothing: the gateway still probes.
        p.script.lock().unwrap().token_override = None;
        let gw = gateway(&p, SECRET, None).await;
        let before = requests(&p).len();
        let (status, _) = attempt(&p, &gw).await;
        assert_eq!(status, 303);
        assert_eq!(
            requests(&p)[before..],
            [("basic", true), ("post", true), ("post", false)]
        );
    }

    #[tokio::test]
    async fn an_inconclusive_probe_falls_back_to_basic_and_is_not_remembered() {
        for status in [503u16, 429] {
            let p = provider(SECRET).await;
            p.script.lock().unwrap().token_override = Some((status, "{}".into()));
            let gw = gateway(&p, SECRET, None).await;
            let (answer, _) = attempt(&p, &gw).await;
            assert_ne!(answer, 303);
            assert_eq!(
                requests(&p),
                [("basic", true), ("basic", false)],
                "{status}: one probe, inconclusive, then basic"
            );
            // The provider is back: another instance on the store probes afresh (the
            // inconclusive answer was not stored) and finds post.
            p.script.lock().unwrap().token_override = None;
            let second = gateway(&p, SECRET, Some(&gw)).await;
            let (answer, _) = attempt(&p, &second).await;
            assert_eq!(answer, 303, "{status}");
            assert_eq!(
                requests(&p)[2..],
                [("basic", true), ("post", true), ("post", false)]
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// The dev provider's `private_key_jwt` clients.

#[tokio::test]
async fn dev_provider_signs_in_a_private_key_jwt_client_and_refuses_replays() {
    let (key, key_file) = support::client_key_file(KeyKind::EcP256);
    let dir = key_file.parent().unwrap().to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let jwks_line = format!(
        "jwks = '{}'",
        serde_json::to_string(&key.public_jwks(false)).unwrap()
    );
    let issuer = support::dev_provider::start_with_client(&gateway_url, &jwks_line).await;
    let gw = TestGateway::start_with(
        &issuer,
        Options {
            listener: Some(listener),
            ..Options::default()
        }
        .env(
            "PORTCULLIS_PROVIDER_CLIENT_KEY_FILE",
            key_file.to_str().unwrap(),
        ),
    )
    .await;
    let browser = Browser::new();
    let resp = gw
        .sign_in_through_form(&browser, "alice", "alice", "/")
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);

    // At the token endpoint directly: an assertion authenticates once (the made-up
    // code is then refused as a grant), its replay is refused as a client.
    let token_endpoint = format!("{issuer}/token");
    let post = |assertion: String| {
        let token_endpoint = token_endpoint.clone();
        let gateway_url = gateway_url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(&token_endpoint)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", "made-up"),
                    ("code_verifier", &"v".repeat(43)),
                    ("redirect_uri", &format!("{gateway_url}/auth/callback")),
                    ("client_id", "app"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                ])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap()["error"].clone())
        }
    };
    let now = gw.clock_now();
    let assertion = key.assertion("app", &issuer, None, false, now).unwrap();
    assert_eq!(post(assertion.clone()).await, (400, json!("invalid_grant")));
    assert_eq!(
        post(assertion).await,
        (401, json!("invalid_client")),
        "replay"
    );
    // Signed by another key under the registered key's kid: the signature decides.
    let claims = |jti: &str| json!({"iss": "app", "sub": "app", "aud": issuer, "jti": jti, "iat": now, "exp": now + 60});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.kid().to_owned());
    let other =
        jsonwebtoken::EncodingKey::from_ec_pem(generate_pem(KeyKind::EcP256).unwrap().as_bytes())
            .unwrap();
    let foreign = jsonwebtoken::encode(&header, &claims("foreign"), &other).unwrap();
    assert_eq!(post(foreign).await.0, 401, "another key");
    // HS256 keyed with the registered public key's JSON, and an unsigned token.
    let public_jwk = serde_json::to_string(&key.public_jwks(false)["keys"][0]).unwrap();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(key.kid().to_owned());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims("hs"),
        &jsonwebtoken::EncodingKey::from_secret(public_jwk.as_bytes()),
    )
    .unwrap();
    assert_eq!(post(confused).await.0, 401, "HS256 with the public key");
    let b64 = |v: Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v.to_string(),
        )
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": key.kid()})),
        b64(claims("none"))
    );
    assert_eq!(post(unsigned).await.0, 401, "alg none");
    let elsewhere = key
        .assertion("app", "https://another.example", None, false, now)
        .unwrap();
    assert_eq!(post(elsewhere).await.0, 401, "another audience");
    // A key client cannot pass as a public one (no assertion at all).
    let public = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "made-up"),
            ("code_verifier", &"v".repeat(43)),
            ("redirect_uri", &format!("{gateway_url}/auth/callback")),
            ("client_id", "app"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 401, "no credentials");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn dev_provider_verifies_a_key_only_for_its_registered_algorithm() {
    // An RSA key registered for RS256 does not also verify PS256.
    let pem = generate_pem(KeyKind::Rsa).unwrap();
    let key = ClientKey::from_pem(pem.as_bytes(), None).unwrap();
    let jwks_line = format!(
        "jwks = '{}'",
        serde_json::to_string(&key.public_jwks(false)).unwrap()
    );
    let issuer = support::dev_provider::start_with_client("http://127.0.0.1:9", &jwks_line).await;
    let now = portcullis::clock::Clock::now(&portcullis::clock::SystemClock);
    let post = |assertion: String| {
        let url = format!("{issuer}/token");
        async move {
            reqwest::Client::new()
                .post(url)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", "made-up"),
                    ("client_id", "app"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let rs256 = key.assertion("app", &issuer, None, false, now).unwrap();
    assert_eq!(
        post(rs256).await,
        400,
        "authenticated; the made-up code refused"
    );
    let ps256 = key.assertion("app", &issuer, None, true, now).unwrap();
    assert_eq!(
        post(ps256).await,
        401,
        "PS256 with a key registered for RS256"
    );
}
