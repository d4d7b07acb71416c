//! Machine clients through the doors (docs/machine-clients.md; docs/security.md G13):
//! access tokens on `[[bearer]]` paths, signed by the scriptable provider's real keys.
//! A valid user token and a client token pass with their own identities; every
//! forgery is 401 with a challenge and the app is never called; DPoP-bound tokens need
//! a fresh proof on every request, and a proof used at one instance fails at another.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use portcullis::jose::dpop::DpopKey;
use serde_json::{Value, json};
use support::browser::Resp;
use support::gateway::Options;
use support::upstream::echoed;
use support::{Browser, HostileProvider, TestGateway, TestUpstream};

const API: &str = "https://api.example.com";

fn bearer_config(extra: &str) -> String {
    format!(
        r#"
[[bearer]]
issuer = "default"
audiences = ["{API}"]
paths = ["/api/*"]
{extra}

[[routes]]
path = "/api/admin/*"
required_scopes = ["orders:admin"]
"#
    )
}

struct Setup {
    p: HostileProvider,
    gw: TestGateway,
    up: TestUpstream,
}

async fn setup_with(extra: &str, options: Options) -> Setup {
    let p = HostileProvider::start().await;
    let up = TestUpstream::start().await;
    let mut options = options.env("PORTCULLIS_UPSTREAM", &up.url);
    options.config_file = Some(bearer_config(extra));
    let gw = TestGateway::start_with(&p.issuer, options).await;
    Setup { p, gw, up }
}

/// Two instances on one store (a SQLite file) and one key ring, with `extra` in their
/// `[[bearer]]` entry.
async fn two_instances(extra: &str) -> (Setup, TestGateway) {
    let s = setup_with(
        extra,
        Options {
            file_store: true,
            ..Default::default()
        },
    )
    .await;
    let second = TestGateway::start_with(
        &s.p.issuer,
        Options {
            db_path: s.gw.db_path.clone(),
            secret: Some(s.gw.secret),
            config_file: Some(bearer_config(extra)),
            ..Default::default()
        }
        .env("PORTCULLIS_UPSTREAM", &s.up.url),
    )
    .await;
    (s, second)
}

async fn setup() -> Setup {
    setup_with("", Options::default()).await
}

impl Setup {
    fn now(&self) -> i64 {
        self.gw.clock_now()
    }

    /// An `at+jwt` access token from the provider, with `patch` applied to its claims.
    fn token(&self, patch: Value) -> String {
        let now = self.now();
        let mut c = json!({
            "iss": self.p.issuer, "aud": API, "exp": now + 300, "iat": now,
            "client_id": "cli", "sub": "alice", "scope": "orders:read",
            "email": "alice@example.com", "email_verified": true,
            "jti": portcullis::random::random_token(),
        });
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let mut h = self.p.keys.rs256_header();
        h["typ"] = json!("at+jwt");
        self.p.keys.sign_rs256(&h, &c)
    }

    async fn call(&self, gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Resp {
        Browser::new().get(&gw.at(path), headers).await
    }

    async fn with_token(&self, path: &str, token: &str) -> Resp {
        let auth = format!("Bearer {token}");
        self.call(&self.gw, path, &[("authorization", &auth)]).await
    }
}

fn header(r: &Resp, name: &str) -> Option<String> {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn challenge(r: &Resp) -> String {
    header(r, "www-authenticate").unwrap_or_default()
}

/// A JWT's claims, read without verifying (the test's own tokens and assertions).
fn payload_of(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn g13_a_users_token_passes_as_that_user_and_the_app_gets_the_token_method() {
    let s = setup().await;
    let token = s.token(json!({}));
    let r = s.with_token("/api/orders", &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(echoed(&v, "x-user-auth-method"), vec!["bearer"]);
    assert_eq!(echoed(&v, "x-user-email"), vec!["alice@example.com"]);
    assert_eq!(echoed(&v, "x-user-provider"), vec!["default"]);
    let id = echoed(&v, "x-user-id").pop().unwrap();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "the row's UUID, never the sub"
    );
    // Not relayed: the app gets the client's own Authorization.
    assert_eq!(echoed(&v, "authorization"), vec![format!("Bearer {token}")]);
    // The assertion names the method and the kind.
    let assertion = echoed(&v, "x-portcullis-jwt-assertion").pop().unwrap();
    let claims = payload_of(&assertion);
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["auth_method"], "bearer");
    assert_eq!(claims["kind"], "user");

    // The same person signing in with a browser is the same identity.
    let b = Browser::new();
    s.p.sign_in(&s.gw, &b).await;
    let session = b.get(&s.gw.at("/auth/session"), &[]).await.json();
    assert_eq!(session["user"]["id"], id.as_str());
    // Off the token paths a token is not looked at: no session, no pass.
    let elsewhere = s.with_token("/app/orders", &token).await;
    assert_eq!(elsewhere.status, 401);
    assert_eq!(s.up.calls(), 1);
}

#[tokio::test]
async fn g13_forged_expired_foreign_and_id_tokens_are_401_and_the_app_is_never_called() {
    let s = setup().await;
    let now = s.now();
    let good = s.token(json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let none = format!(
        "{}.{}.",
        support::keys::b64(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
        parts[1]
    );
    let hs256 = support::keys::sign_hs256(
        &s.p.keys.rsa_public_der(),
        &json!({"alg": "HS256", "typ": "at+jwt", "kid": s.p.keys.rsa_kid}),
        &payload_of(&good),
    );
    let mut id_token_header = s.p.keys.rs256_header();
    id_token_header["typ"] = json!("JWT");
    let id_token = s.p.keys.sign_rs256(
        &id_token_header,
        &json!({"iss": s.p.issuer, "aud": "app", "sub": "alice", "exp": now + 300,
                "iat": now, "nonce": "n"}),
    );
    let cases = [
        ("alg none", none),
        ("HS256 keyed with the public key", hs256),
        (
            "another audience",
            s.token(json!({"aud": "https://other.example"})),
        ),
        (
            "expired",
            s.token(json!({"exp": now - 3600, "iat": now - 7200})),
        ),
        (
            "unconfigured issuer",
            s.token(json!({"iss": "https://evil.example"})),
        ),
        ("an ID token", id_token),
        ("not a JWT", "opaque-token-value".to_owned()),
        (
            "a bad signature",
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][..10]),
        ),
    ];
    for (what, token) in cases {
        let r = s.with_token("/api/orders", &token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(header(&r, "location").is_none(), "{what}: never a sign-in");
        assert!(
            challenge(&r).starts_with("Bearer error=\"invalid_token\""),
            "{what}: {}",
            challenge(&r)
        );
        assert_eq!(r.json()["error"], "invalid_token", "{what}");
        // A page navigation with a token is no different.
        let page = s
            .call(
                &s.gw,
                "/api/orders",
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("accept", "text/html"),
                    ("sec-fetch-mode", "navigate"),
                ],
            )
            .await;
        assert_eq!(
            (page.status, header(&page, "location")),
            (401, None),
            "{what}"
        );
    }
    assert_eq!(s.up.calls(), 0, "the app was never called");
    // Another unknown key: the provider's JWKS does not hold it.
    let mut h = s.p.keys.rs256_header();
    h["kid"] = json!("not-a-key-of-theirs");
    h["typ"] = json!("at+jwt");
    let unknown = support::keys::TestKeys::generate("stranger").sign_rs256(
        &h,
        &json!({
            "iss": s.p.issuer, "aud": API, "exp": now + 300, "iat": now, "sub": "alice"
        }),
    );
    assert_eq!(s.with_token("/api/orders", &unknown).await.status, 401);
    assert_eq!(s.up.calls(), 0);
    assert!(s.with_token("/api/orders", &good).await.status == 200);
}

#[tokio::test]
async fn g13_a_client_named_like_a_user_gets_its_own_identity_and_no_email() {
    let s = setup().await;
    let user = s
        .with_token("/api/orders", &s.token(json!({})))
        .await
        .json();
    // Client credentials: `sub` = `client_id` = the user's `sub`.
    let client_token = s.token(json!({
        "client_id": "alice", "sub": "alice", "email": "alice@example.com"
    }));
    let client = s.with_token("/api/orders", &client_token).await;
    assert_eq!(client.status, 200, "{}", client.body);
    let client = client.json();
    assert_ne!(
        echoed(&client, "x-user-id"),
        echoed(&user, "x-user-id"),
        "a client never gets a user's id"
    );
    assert!(
        echoed(&client, "x-user-email").is_empty(),
        "no email for a client"
    );
    // No `sub` at all: the client too.
    let no_sub = s.token(json!({"client_id": "alice", "sub": null}));
    let again = s.with_token("/api/orders", &no_sub).await.json();
    assert_eq!(echoed(&again, "x-user-id"), echoed(&client, "x-user-id"));
}

#[tokio::test]
async fn g13_email_rules_refuse_clients_and_scopes_are_required() {
    let s = setup_with(
        "required_scopes = [\"orders:read\"]",
        Options::default().env("PORTCULLIS_ACCESS_ALLOWED_EMAIL_DOMAINS", "example.com"),
    )
    .await;
    assert_eq!(
        s.with_token("/api/orders", &s.token(json!({})))
            .await
            .status,
        200
    );
    let client = s.token(json!({"client_id": "svc", "sub": null}));
    let r = s.with_token("/api/orders", &client).await;
    assert_eq!(
        r.status, 403,
        "[access] fails closed for a client: {}",
        r.body
    );
    let other = s.token(json!({"email": "eve@evil.example"}));
    assert_eq!(s.with_token("/api/orders", &other).await.status, 403);
    // A reload that tightens `[access]` applies to a token validated (and cached)
    // before.
    let alice = s.token(json!({}));
    assert_eq!(s.with_token("/api/orders", &alice).await.status, 200);
    let gateway = &s.gw.gateway;
    let reload_with_domain = |domain: &str| {
        let mut config = gateway.config().clone();
        config.access.allowed_email_domains = vec![domain.into()];
        async move { gateway.sessions().reload_settings(&config).await.unwrap() }
    };
    reload_with_domain("other.example").await;
    assert_eq!(s.with_token("/api/orders", &alice).await.status, 403);
    reload_with_domain("example.com").await;
    // The entry's scope.
    let r = s
        .with_token("/api/orders", &s.token(json!({"scope": "profile"})))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert!(
        challenge(&r).contains("scope=\"orders:read\""),
        "{}",
        challenge(&r)
    );
    // A route's scope, for tokens…
    let r = s.with_token("/api/admin/users", &s.token(json!({}))).await;
    assert_eq!(r.status, 403);
    assert!(challenge(&r).contains("insufficient_scope"));
    let admin = s.token(json!({"scope": "orders:read orders:admin"}));
    assert_eq!(s.with_token("/api/admin/users", &admin).await.status, 200);
    // …and for sessions, against their scope (`openid email profile`).
    let b = Browser::new();
    s.p.sign_in(&s.gw, &b).await;
    let r = b
        .get(
            &s.gw.at("/api/admin/users"),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "insufficient_scope");
    // A session whose provider granted the scope (the token response's `scope`, kept
    // with the session) passes.
    let admin = Browser::new();
    let auth = s.gw.start_login(&admin, None).await;
    let id_token =
        s.p.keys
            .sign_rs256(&s.p.keys.rs256_header(), &s.p.claims(&auth.nonce));
    let mut response = HostileProvider::token_response(&id_token);
    response["scope"] = json!("openid email profile orders:admin");
    let code = s.p.issue_code(&auth.challenge, response);
    let done =
        s.gw.callback(
            &admin,
            &support::gateway::callback_query(&code, &auth.state, Some(&s.p.issuer)),
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let r = admin
        .get(
            &s.gw.at("/api/admin/users"),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(echoed(&r.json(), "x-user-auth-method"), vec!["session"]);
}

#[tokio::test]
async fn g13_dpop_bound_tokens_need_a_fresh_proof_at_every_instance() {
    let (s, second) = two_instances("").await;
    let (key, _) = DpopKey::generate().unwrap();
    let token = s.token(json!({"cnf": {"jkt": key.jkt()}}));
    let htu = format!("{}/api/orders", s.gw.url);
    let now = s.now();
    let proof = key.proof("GET", &htu, None, Some(&token), now).unwrap();
    let dpop = |proof: &str| -> Vec<(String, String)> {
        vec![
            ("authorization".into(), format!("DPoP {token}")),
            ("dpop".into(), proof.to_owned()),
        ]
    };
    let call = |gw: &TestGateway, headers: Vec<(String, String)>| {
        let url = gw.at("/api/orders");
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Browser::new().get(&url, &h).await
        }
    };
    // A bound token as Bearer (RFC 9449 §7.2).
    let r = s.with_token("/api/orders", &token).await;
    assert_eq!(r.status, 401);
    assert!(challenge(&r).starts_with("Bearer error=\"invalid_token\""));
    // No proof.
    let r = call(
        &s.gw,
        vec![("authorization".into(), format!("DPoP {token}"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(challenge(&r).starts_with("DPoP algs="), "{}", challenge(&r));
    assert!(challenge(&r).contains("invalid_dpop_proof"));
    // A valid proof passes.
    let r = call(&s.gw, dpop(&proof)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(echoed(&r.json(), "x-user-auth-method"), vec!["dpop"]);
    // The same proof again, here or at the other instance (the replay cache is the store's).
    for gw in [&s.gw, &second] {
        let r = call(gw, dpop(&proof)).await;
        assert_eq!(r.status, 401, "a replayed proof");
        assert!(challenge(&r).contains("invalid_dpop_proof"));
    }
    // Another method, another URI, another key.
    let wrong_htm = key.proof("POST", &htu, None, Some(&token), now).unwrap();
    let wrong_htu = key
        .proof(
            "GET",
            &format!("{}/api/other", s.gw.url),
            None,
            Some(&token),
            now,
        )
        .unwrap();
    let (other_key, _) = DpopKey::generate().unwrap();
    let wrong_key = other_key
        .proof("GET", &htu, None, Some(&token), now)
        .unwrap();
    for (what, p) in [("htm", wrong_htm), ("htu", wrong_htu), ("key", wrong_key)] {
        let r = call(&s.gw, dpop(&p)).await;
        assert_eq!(r.status, 401, "wrong {what}");
    }
    // A path with a reserved escape: the client signs the URI as it sent it.
    let escaped = format!("{}/api/a%40b", s.gw.url);
    let proof = key.proof("GET", &escaped, None, Some(&token), now).unwrap();
    let r = Browser::new()
        .get(
            &escaped,
            &[
                ("authorization", &format!("DPoP {token}")),
                ("dpop", &proof),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A fresh proof at the second instance (whose public URL is its own) passes.
    let second_htu = format!("{}/api/orders", second.url);
    let fresh = key
        .proof("GET", &second_htu, None, Some(&token), now)
        .unwrap();
    assert_eq!(call(&second, dpop(&fresh)).await.status, 200);
    assert_eq!(s.up.calls(), 3);
}

#[tokio::test]
async fn g13_dpop_nonces_are_asked_for_and_good_at_every_instance() {
    let (s, second) = two_instances("dpop_nonce = true").await;
    let (key, _) = DpopKey::generate().unwrap();
    let token = s.token(json!({"cnf": {"jkt": key.jkt()}}));
    let htu = format!("{}/api/orders", s.gw.url);
    let now = s.now();
    let send_to = |gw: &TestGateway, proof: String| {
        let (url, auth) = (gw.at("/api/orders"), format!("DPoP {token}"));
        async move {
            Browser::new()
                .get(&url, &[("authorization", &auth), ("dpop", &proof)])
                .await
        }
    };
    let send = |proof: String| send_to(&s.gw, proof);
    let r = send(key.proof("GET", &htu, None, Some(&token), now).unwrap()).await;
    assert_eq!(r.status, 401);
    assert!(
        challenge(&r).contains("use_dpop_nonce"),
        "{}",
        challenge(&r)
    );
    let nonce = header(&r, "dpop-nonce").expect("a nonce to use");
    let r = send(
        key.proof("GET", &htu, Some(&nonce), Some(&token), now)
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(
        key.proof("GET", &htu, Some("made-up"), Some(&token), now)
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    // The nonce the first instance gave is good at the second (the key behind it is
    // shared through the store).
    let second_htu = format!("{}/api/orders", second.url);
    let r = send_to(
        &second,
        key.proof("GET", &second_htu, Some(&nonce), Some(&token), now)
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn g13_forward_auth_answers_tokens_like_the_proxy() {
    let s = setup_with(
        "strip_authorization = true",
        Options::default().env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1/32"),
    )
    .await;
    let verify = |token: &str| {
        let (url, auth) = (s.gw.at("/auth/verify"), format!("Bearer {token}"));
        async move {
            Browser::new()
                .get(
                    &url,
                    &[
                        ("authorization", &auth),
                        ("x-forwarded-uri", "/api/orders"),
                        ("x-forwarded-method", "GET"),
                    ],
                )
                .await
        }
    };
    let ok = verify(&s.token(json!({}))).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(header(&ok, "x-user-auth-method").as_deref(), Some("bearer"));
    assert_eq!(
        header(&ok, "authorization").as_deref(),
        Some(""),
        "stripped"
    );
    let bad = verify(&s.token(json!({"aud": "https://other.example"}))).await;
    assert_eq!(bad.status, 401);
    assert!(header(&bad, "location").is_none());
    assert!(challenge(&bad).starts_with("Bearer error=\"invalid_token\""));
    // Through the reverse proxy the app gets neither header.
    let r = s
        .with_token("/api/orders", &s.token(json!({})))
        .await
        .json();
    assert!(echoed(&r, "authorization").is_empty());
}

/// RFC 7662: an opaque token goes to the introspection server of the one entry that
/// covers its path, never to another entry's; the answer counts only when active, for
/// one of the audiences, unexpired; it is kept at most `introspection_cache`; the
/// server's outage is 503, never a pass; a JWS is never introspected.
#[tokio::test]
async fn g13_introspection_is_asked_once_per_token_at_the_right_server_and_fails_closed() {
    let partner = HostileProvider::start().await;
    let secret_file = std::env::temp_dir().join(format!(
        "pc-introspection-{}",
        portcullis::random::random_token()
    ));
    std::fs::write(&secret_file, "partner-secret").unwrap();
    let extra = format!(
        r#"introspection = true
introspection_cache = "60s"

[[bearer]]
issuer = "{}"
audiences = ["{API}"]
paths = ["/partner/*"]
introspection = true
client_id = "gateway-at-partner"
client_secret_file = "{}"
"#,
        partner.issuer,
        secret_file.display()
    );
    let s = setup_with(&extra, Options::default()).await;
    let now = s.now();
    let active = |aud: &str| {
        json!({"active": true, "aud": aud, "exp": now + 3600, "sub": "alice",
               "client_id": "cli", "scope": "orders:read", "iss": s.p.issuer})
    };
    s.p.script.lock().unwrap().introspection = Some(active(API));
    let r = s.with_token("/api/orders", "opaque-1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(echoed(&r.json(), "x-user-auth-method"), vec!["bearer"]);
    assert_eq!(s.with_token("/api/orders", "opaque-1").await.status, 200);
    assert_eq!(
        s.p.script.lock().unwrap().introspected,
        vec!["opaque-1"],
        "asked once, then cached"
    );
    assert!(
        partner.script.lock().unwrap().introspected.is_empty(),
        "a token is never sent to another entry's server"
    );
    // Past `introspection_cache`, the server is asked again.
    s.gw.clock.advance(61);
    assert_eq!(s.with_token("/api/orders", "opaque-1").await.status, 200);
    assert_eq!(s.p.script.lock().unwrap().introspected.len(), 2);
    let calls = s.up.calls();

    // Inactive, another audience, expired: 401.
    for (token, answer) in [
        ("opaque-2", json!({"active": false})),
        ("opaque-3", active("https://other.example")),
        (
            "opaque-4",
            json!({"active": true, "aud": API, "exp": now - 10, "sub": "alice"}),
        ),
        (
            "opaque-5",
            json!({"active": "true", "aud": API, "exp": now + 300, "sub": "alice"}),
        ),
    ] {
        s.p.script.lock().unwrap().introspection = Some(answer);
        let r = s.with_token("/api/orders", token).await;
        assert_eq!(r.status, 401, "{token}: {}", r.body);
        assert!(challenge(&r).contains("invalid_token"));
    }
    // The server down: 503, never a pass.
    s.p.script.lock().unwrap().introspection_status = Some(503);
    let r = s.with_token("/api/orders", "opaque-6").await;
    assert_eq!(r.status, 503, "{}", r.body);
    s.p.script.lock().unwrap().introspection_status = Some(401);
    assert_eq!(s.with_token("/api/orders", "opaque-7").await.status, 503);
    assert_eq!(s.up.calls(), calls, "the app was never called");
    // A JWS is verified, never introspected.
    let before = s.p.script.lock().unwrap().introspected.len();
    assert_eq!(s.with_token("/api/orders", "a.b.c").await.status, 401);
    assert_eq!(s.p.script.lock().unwrap().introspected.len(), before);
    // The partner's paths go to the partner's server only.
    partner.script.lock().unwrap().introspection = Some(json!({
        "active": true, "aud": API, "exp": now + 3600, "sub": "dave", "iss": partner.issuer
    }));
    let r = s.with_token("/partner/orders", "opaque-p").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(echoed(&r.json(), "x-user-provider"), vec!["bearer-1"]);
    assert_eq!(
        partner.script.lock().unwrap().introspected,
        vec!["opaque-p"]
    );
    assert!(
        !s.p.script
            .lock()
            .unwrap()
            .introspected
            .contains(&"opaque-p".to_owned())
    );
    let _ = std::fs::remove_file(secret_file);
}

/// Against the certified npm `oidc-provider`: client-credentials access tokens for an
/// API named with RFC 8707 `resource` (RFC 9068 JWTs), a token for another API, a
/// DPoP-bound one with a proof (and the same token as Bearer), and an opaque token
/// checked by the provider's own introspection endpoint.
#[tokio::test]
async fn interop_client_credentials_tokens_from_the_npm_provider() {
    use support::oidc_provider::RealProvider;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let opaque_api = "https://opaque.example.com";
    let clients = json!([
        {
            "client_id": "app",
            "client_secret": "app-secret-for-introspection-0123456789",
            "redirect_uris": [format!("{gateway_url}/auth/callback")],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        },
        {
            "client_id": "reporting",
            "client_secret": "reporting-secret-0123456789abcdef",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
        },
    ]);
    let Some(node) = RealProvider::start(
        clients,
        &[("API_RESOURCE", API), ("OPAQUE_RESOURCE", opaque_api)],
    )
    .await
    else {
        return;
    };
    let up = TestUpstream::start().await;
    let config = format!(
        r#"
[[bearer]]
issuer = "default"
audiences = ["{API}"]
paths = ["/api/*"]
required_scopes = ["orders:read"]

[[bearer]]
issuer = "default"
audiences = ["{opaque_api}"]
paths = ["/legacy/*"]
introspection = true
"#
    );
    let gw = TestGateway::start_with(
        &node.issuer,
        Options {
            listener: Some(listener),
            config_file: Some(config),
            ..Options::default()
        }
        .env("PORTCULLIS_UPSTREAM", &up.url)
        .env(
            "PORTCULLIS_CLIENT_SECRET",
            "app-secret-for-introspection-0123456789",
        ),
    )
    .await;
    let http = reqwest::Client::new();
    let token_for = |resource: &str, dpop: Option<String>| {
        let mut req = http
            .post(format!("{}/token", node.issuer))
            .basic_auth("reporting", Some("reporting-secret-0123456789abcdef"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", "orders:read"),
            ]);
        if let Some(proof) = dpop {
            req = req.header("dpop", proof);
        }
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v["access_token"]
                .as_str()
                .unwrap_or_else(|| panic!("no token: {v}"))
                .to_owned()
        }
    };
    let call = |path: &str, headers: Vec<(String, String)>| {
        let url = gw.at(path);
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Browser::new().get(&url, &h).await
        }
    };
    let bearer = |t: &str| vec![("authorization".to_owned(), format!("Bearer {t}"))];

    // An RFC 9068 JWT for the API: passes as the client.
    let token = token_for(API, None).await;
    assert_eq!(token.split('.').count(), 3, "a JWT access token");
    let r = call("/api/orders", bearer(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(echoed(&v, "x-user-auth-method"), vec!["bearer"]);
    assert!(echoed(&v, "x-user-email").is_empty());
    let client_id = echoed(&v, "x-user-id");
    // The same client again: the same identity.
    let again = call("/api/orders", bearer(&token_for(API, None).await)).await;
    assert_eq!(echoed(&again.json(), "x-user-id"), client_id);
    // A token for another API: 401, the app never called.
    let calls = up.calls();
    let other = token_for("https://other.example", None).await;
    let r = call("/api/orders", bearer(&other)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(up.calls(), calls);

    // DPoP: the provider binds the token to the client's key (RFC 9449 §5).
    let (key, _) = DpopKey::generate().unwrap();
    let now = gw.clock_now();
    let at_token_endpoint = key
        .proof(
            "POST",
            &format!("{}/token", node.issuer),
            None,
            None,
            support::now(),
        )
        .unwrap();
    let bound = token_for(API, Some(at_token_endpoint)).await;
    let htu = format!("{}/api/orders", gw.url);
    let proof = key.proof("GET", &htu, None, Some(&bound), now).unwrap();
    let r = call(
        "/api/orders",
        vec![
            ("authorization".into(), format!("DPoP {bound}")),
            ("dpop".into(), proof),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(echoed(&r.json(), "x-user-auth-method"), vec!["dpop"]);
    let r = call("/api/orders", bearer(&bound)).await;
    assert_eq!(r.status, 401, "a bound token as Bearer: {}", r.body);

    // An opaque token, introspected at the provider (as the gateway's client).
    let opaque = token_for(opaque_api, None).await;
    assert_ne!(opaque.split('.').count(), 3, "an opaque token");
    let r = call("/legacy/report", bearer(&opaque)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(echoed(&r.json(), "x-user-id"), client_id, "the same client");
    // The JWT for the API is no use on the opaque API's paths (its audience).
    assert_eq!(call("/legacy/report", bearer(&token)).await.status, 401);
    // Nor an opaque token nobody issued.
    assert_eq!(
        call("/legacy/report", bearer("not-issued-by-anyone"))
            .await
            .status,
        401
    );
}
