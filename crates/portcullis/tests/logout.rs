//! Every way a session ends from the outside (issue 7): back-channel logout from the
//! provider (O04, O05), RP-initiated logout with an allow-listed return (O03), and the
//! seed's single-page-app code exchange. Forged logout tokens come from the hostile
//! provider; the real flows run against npm `oidc-provider`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};
use support::browser::{Resp, form_action, hidden_fields};
use support::gateway::{Options, follow_sign_in};
use support::keys::b64;
use support::oidc_provider::RealProvider;
use support::upstream::echoed;
use support::{Browser, HostileProvider, TestGateway, TestUpstream};

const JSON: &[(&str, &str)] = &[("accept", "application/json")];
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

async fn status(gw: &TestGateway, browser: &Browser) -> u16 {
    browser.get(&gw.at("/auth/session"), JSON).await.status
}

/// Waits until `gw` refuses the browser's session, for at most a second: the instance
/// that ended a session refuses it at once, every other one within 1 s (docs/sessions.md
/// "The session cache"; on SQLite the other instance learns of it by polling).
async fn refused_within_a_second(gw: &TestGateway, browser: &Browser) {
    let start = tokio::time::Instant::now();
    loop {
        let code = status(gw, browser).await;
        if code == 401 {
            return;
        }
        assert_eq!(code, 200);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "still signed in after 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Posts a back-channel logout request with this form body.
async fn post_logout_token(gw: &TestGateway, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.at("/auth/backchannel-logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn form(token: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish()
}

impl Hostile {
    /// Claims of a valid logout token for `sid` / `sub`.
    fn logout_claims(&self, sid: Option<&str>, sub: Option<&str>) -> Value {
        let mut c = json!({
            "iss": self.p.issuer, "aud": "app", "iat": support::now(),
            "jti": portcullis::random::random_token(),
            "events": { EVENT: {} },
        });
        if let Some(sid) = sid {
            c["sid"] = json!(sid);
        }
        if let Some(sub) = sub {
            c["sub"] = json!(sub);
        }
        c
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = self.p.keys.rs256_header();
        header["typ"] = json!("logout+jwt");
        self.p.keys.sign_rs256(&header, claims)
    }

    /// Signs `browser` in as `sub` with provider session `sid`.
    async fn sign_in(&self, gw: &TestGateway, browser: &Browser, sub: &str, sid: &str) {
        self.p
            .sign_in_with(gw, browser, |c| {
                c["sub"] = json!(sub);
                c["sid"] = json!(sid);
                c["email"] = json!(format!("{sub}@example.com"));
            })
            .await;
        self.p.set_userinfo(None);
    }
}

struct Hostile {
    p: HostileProvider,
}

#[tokio::test]
async fn o04_faulty_logout_tokens_get_400_and_end_nothing() {
    let h = Hostile {
        p: HostileProvider::start().await,
    };
    let gw = TestGateway::start(&h.p.issuer).await;
    let browser = Browser::new();
    h.sign_in(&gw, &browser, "alice", "sid-1").await;
    assert_eq!(status(&gw, &browser).await, 200);

    let good = h.logout_claims(Some("sid-1"), Some("alice"));
    let patched = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        h.sign(&c)
    };
    let mut bad_signature = h.sign(&good).into_bytes();
    let at = bad_signature.len() - 5;
    bad_signature[at] = if bad_signature[at] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let id_token =
        h.p.keys
            .sign_rs256(&h.p.keys.rs256_header(), &h.p.claims("a-nonce"));
    let hs256_with_public_key = support::keys::sign_hs256(
        &h.p.keys.rsa_public_der(),
        &json!({"alg": "HS256", "typ": "logout+jwt"}),
        &good,
    );
    let cases: Vec<(&str, String)> = vec![
        ("bad signature", String::from_utf8(bad_signature).unwrap()),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "logout+jwt"}).to_string()),
                b64(good.to_string())
            ),
        ),
        ("HS256 keyed with the public key", hs256_with_public_key),
        (
            "wrong iss",
            patched(&|c| c["iss"] = json!("https://evil.example")),
        ),
        (
            "wrong aud",
            patched(&|c| c["aud"] = json!("another-client")),
        ),
        (
            "no sub and no sid",
            patched(&|c| {
                c.as_object_mut().unwrap().remove("sid");
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        (
            "no events",
            patched(&|c| {
                c.as_object_mut().unwrap().remove("events");
            }),
        ),
        (
            "wrong event",
            patched(&|c| c["events"] = json!({"http://schemas.openid.net/event/other": {}})),
        ),
        ("has a nonce", patched(&|c| c["nonce"] = json!("n"))),
        (
            "stale",
            patched(&|c| c["iat"] = json!(support::now() - 3600)),
        ),
        (
            "no jti",
            patched(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        ("an ID token instead", id_token),
        ("typed as an access token", {
            let mut header = h.p.keys.rs256_header();
            header["typ"] = json!("at+jwt");
            h.p.keys.sign_rs256(&header, &good)
        }),
        ("garbage", "not-a-jwt".into()),
    ];
    for (what, token) in cases {
        let resp = post_logout_token(&gw, form(&token)).await;
        assert_eq!(resp.status(), 400, "{what}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{what}");
        assert_eq!(status(&gw, &browser).await, 200, "{what} ended the session");
    }
    // Malformed requests.
    for body in [String::new(), format!("{}&{}", form("a"), form("b"))] {
        assert_eq!(post_logout_token(&gw, body).await.status(), 400);
    }
    let json_body = reqwest::Client::new()
        .post(gw.at("/auth/backchannel-logout"))
        .json(&json!({"logout_token": h.sign(&good)}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), 400);

    // A replayed jti: the first use is honoured (for another session), the replay is not.
    let other = h.sign(&h.logout_claims(Some("sid-other"), None));
    assert_eq!(post_logout_token(&gw, form(&other)).await.status(), 200);
    assert_eq!(post_logout_token(&gw, form(&other)).await.status(), 400);
    assert_eq!(status(&gw, &browser).await, 200);

    // And the valid token does end it.
    let resp = post_logout_token(&gw, form(&h.sign(&good))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(status(&gw, &browser).await, 401);
}

#[tokio::test]
async fn o05_sid_ends_that_session_and_sub_every_session_on_every_instance() {
    let h = Hostile {
        p: HostileProvider::start().await,
    };
    let first = TestGateway::start_with(
        &h.p.issuer,
        Options {
            file_store: true,
            ..Default::default()
        },
    )
    .await;
    let second = TestGateway::start_with(
        &h.p.issuer,
        Options {
            db_path: first.db_path.clone(),
            secret: Some(first.secret),
            ..Default::default()
        },
    )
    .await;
    let (a1, a2, bob) = (Browser::new(), Browser::new(), Browser::new());
    h.sign_in(&first, &a1, "alice", "sid-a1").await;
    h.sign_in(&second, &a2, "alice", "sid-a2").await;
    h.sign_in(&first, &bob, "bob", "sid-bob").await;
    for b in [&a1, &a2, &bob] {
        assert_eq!(status(&first, b).await, 200);
        assert_eq!(status(&second, b).await, 200);
    }

    // `sid`: that session only, on both instances.
    let token = h.sign(&h.logout_claims(Some("sid-a1"), Some("alice")));
    assert_eq!(post_logout_token(&second, form(&token)).await.status(), 200);
    assert_eq!(
        status(&second, &a1).await,
        401,
        "at once where it was received"
    );
    refused_within_a_second(&first, &a1).await;
    assert_eq!(status(&first, &a2).await, 200);

    // Only `sub`: every session of that user, and nobody else's.
    h.sign_in(&second, &a1, "alice", "sid-a1-again").await;
    let token = h.sign(&h.logout_claims(None, Some("alice")));
    assert_eq!(post_logout_token(&first, form(&token)).await.status(), 200);
    for b in [&a1, &a2] {
        assert_eq!(
            status(&first, b).await,
            401,
            "at once where it was received"
        );
        refused_within_a_second(&second, b).await;
    }
    assert_eq!(status(&first, &bob).await, 200);
    assert_eq!(status(&second, &bob).await, 200);
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn sign_out(gw: &TestGateway, browser: &Browser, query: &str) -> Resp {
    browser
        .request(
            Method::POST,
            &gw.at(&format!("/auth/logout{query}")),
            &[
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
                ("origin", &gw.url),
            ],
            Some((String::new(), "application/x-www-form-urlencoded")),
        )
        .await
}

#[tokio::test]
async fn o03_post_logout_redirects_only_to_allow_listed_targets() {
    let p = HostileProvider::start().await;
    p.patch_metadata(json!({"end_session_endpoint": format!("{}/end-session", p.issuer)}));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw_url = format!("http://{}", listener.local_addr().unwrap());
    let own = format!("{gw_url}/auth/logged-out");
    let gw = TestGateway::start_with(
        &p.issuer,
        Options {
            listener: Some(listener),
            ..Default::default()
        }
        .env("PORTCULLIS_LOGOUT_PROVIDER_LOGOUT", "true")
        .env(
            "PORTCULLIS_LOGOUT_POST_LOGOUT_REDIRECT_URIS",
            &format!("{own},https://www.example.com/goodbye"),
        ),
    )
    .await;

    for (asked, expected) in [
        ("", own.as_str()),
        (
            "?post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F",
            own.as_str(),
        ),
        (
            "?post_logout_redirect_uri=https%3A%2F%2Fwww.example.com%2Fgoodbye.evil.example",
            own.as_str(),
        ),
        (
            "?post_logout_redirect_uri=https%3A%2F%2Fwww.example.com%2Fgoodbye",
            "https://www.example.com/goodbye",
        ),
    ] {
        let browser = Browser::new();
        let issued = p.sign_in(&gw, &browser).await;
        let resp = sign_out(&gw, &browser, asked).await;
        assert_eq!(resp.status, 303, "{asked}: {}", resp.body);
        let location = resp.location().unwrap();
        assert!(
            location.starts_with(&format!("{}/end-session?", p.issuer)),
            "{location}"
        );
        assert!(!location.contains("evil"), "{location}");
        let q = query(&location);
        assert_eq!(q["post_logout_redirect_uri"], expected, "{asked}");
        assert_eq!(q["client_id"], "app");
        // S02: no ID token through the browser unless configured.
        assert!(!q.contains_key("id_token_hint"));
        assert!(
            !resp
                .visible_text()
                .contains(issued["id_token"].as_str().unwrap())
        );
        assert_eq!(
            browser.cookie("portcullis_logout").as_deref(),
            Some(q["state"].as_str())
        );
        assert!(
            browser.cookie("portcullis").is_none(),
            "signed out here first"
        );
        assert_eq!(gw.session_count().await, 0);
    }

    // The provider's return: a foreign or missing state is ignored …
    let browser = Browser::new();
    p.sign_in(&gw, &browser).await;
    let location = sign_out(&gw, &browser, "").await.location().unwrap();
    let state = query(&location)["state"].clone();
    for bad in ["?state=forged", ""] {
        let resp = browser
            .navigate(&gw.at(&format!("/auth/logged-out{bad}")))
            .await;
        assert_eq!(resp.status, 400, "{bad}");
        assert!(resp.body.contains("logout_state_mismatch"));
        assert!(browser.cookie("portcullis_logout").is_some());
    }
    let stranger = Browser::new();
    let resp = stranger
        .navigate(&gw.at(&format!("/auth/logged-out?state={state}")))
        .await;
    assert_eq!(resp.status, 400, "the state belongs to another browser");
    // … the right one completes it.
    let resp = browser
        .navigate(&gw.at(&format!("/auth/logged-out?state={state}")))
        .await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("You are signed out"));
    assert!(browser.cookie("portcullis_logout").is_none());

    // With `logout.id_token_hint`, the hint goes along on page navigations only.
    let gw = TestGateway::start_with(
        &p.issuer,
        Options::default()
            .env("PORTCULLIS_LOGOUT_PROVIDER_LOGOUT", "true")
            .env("PORTCULLIS_LOGOUT_ID_TOKEN_HINT", "true"),
    )
    .await;
    let browser = Browser::new();
    let issued = p.sign_in(&gw, &browser).await;
    let location = sign_out(&gw, &browser, "").await.location().unwrap();
    assert_eq!(
        query(&location)["id_token_hint"],
        issued["id_token"].as_str().unwrap()
    );
    let issued = p.sign_in(&gw, &browser).await;
    let api = gw.sign_out_api(&browser).await;
    assert_eq!(api.status, 200, "{}", api.body);
    let redirect = api.json()["redirect"].as_str().unwrap().to_owned();
    assert!(redirect.starts_with(&format!("{}/end-session?", p.issuer)));
    assert!(!api.body.contains(issued["id_token"].as_str().unwrap()));
    assert!(!query(&redirect).contains_key("id_token_hint"));
}

// ---------------------------------------------------------------------------------
// npm `oidc-provider`.

struct Real {
    op: RealProvider,
    gw: TestGateway,
    up: TestUpstream,
}

async fn real(client_extra: Value, env: &[(&str, &str)]) -> Option<Real> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw_url = format!("http://{}", listener.local_addr().unwrap());
    let mut client = json!({
        "client_id": "app",
        "token_endpoint_auth_method": "none",
        "redirect_uris": [format!("{gw_url}/auth/callback"), format!("{gw_url}/spa/callback")],
        "post_logout_redirect_uris": [format!("{gw_url}/auth/logged-out")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "backchannel_logout_uri": format!("{gw_url}/auth/backchannel-logout"),
        "backchannel_logout_session_required": true,
    });
    for (k, v) in client_extra.as_object().unwrap() {
        client[k] = v.clone();
    }
    let op = RealProvider::start(json!([client]), &[]).await?;
    let up = TestUpstream::start().await;
    let mut options = Options {
        listener: Some(listener),
        ..Default::default()
    }
    .env("PORTCULLIS_UPSTREAM", &up.url);
    for (k, v) in env {
        let v = v.replace("{gw}", &gw_url);
        options = options.env(k, &v);
    }
    let gw = TestGateway::start_with(&op.issuer, options).await;
    Some(Real { op, gw, up })
}

impl Real {
    async fn count(&self, event: &str) -> u64 {
        self.op.events().await["counts"][event].as_u64().unwrap()
    }
}

#[tokio::test]
async fn signing_out_at_the_provider_ends_the_gateway_session_within_a_second() {
    let Some(r) = real(json!({}), &[]).await else {
        return;
    };
    let browser = Browser::new();
    let resp =
        r.gw.sign_in_through_form(&browser, "alice", "alice", "/")
            .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(status(&r.gw, &browser).await, 200);
    let bystander = Browser::new();
    let resp =
        r.gw.sign_in_through_form(&bystander, "bob", "bob", "/")
            .await;
    assert_eq!(resp.status, 303);

    let started = tokio::time::Instant::now();
    let ended = reqwest::Client::new()
        .post(format!("{}/test/logout/alice", r.op.issuer))
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_success());
    // Poll the gateway (not a sleep): the session must be gone within a second.
    loop {
        if status(&r.gw, &browser).await == 401 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "the gateway session outlived the provider's by a second"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(r.count("backchannel.success").await, 1);
    assert_eq!(r.count("backchannel.error").await, 0);
    assert_eq!(
        status(&r.gw, &bystander).await,
        200,
        "only alice was signed out"
    );
}

#[tokio::test]
async fn rp_initiated_logout_ends_the_provider_session_and_returns_with_our_state() {
    let Some(r) = real(json!({}), &[("PORTCULLIS_LOGOUT_PROVIDER_LOGOUT", "true")]).await else {
        return;
    };
    let browser = Browser::new();
    let resp =
        r.gw.sign_in_through_form(&browser, "alice", "alice", "/")
            .await;
    assert_eq!(resp.status, 303);
    let resp = sign_out(&r.gw, &browser, "").await;
    assert_eq!(resp.status, 303);
    let to_provider = resp.location().unwrap();
    assert!(to_provider.starts_with(&r.op.issuer), "{to_provider}");
    assert_eq!(
        status(&r.gw, &browser).await,
        401,
        "signed out here before leaving"
    );

    // The provider asks to confirm (a form it submits by script); submit it.
    let page = browser.navigate(&to_provider).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let action = url::Url::parse(&to_provider)
        .unwrap()
        .join(&form_action(&page.body))
        .unwrap();
    let body = hidden_fields(&page.body).finish();
    let back = browser
        .request(
            Method::POST,
            action.as_str(),
            &[("accept", "text/html")],
            Some((
                format!("{body}&logout=yes"),
                "application/x-www-form-urlencoded",
            )),
        )
        .await;
    assert_eq!(back.status, 303, "{}", back.body);
    let returned = back.location().unwrap();
    assert!(
        returned.starts_with(&r.gw.at("/auth/logged-out?")),
        "{returned}"
    );
    let done = browser.navigate(&returned).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(r.count("end_session.success").await, 1);

    // The provider's session is gone too: signing in again needs the form.
    let mut url = url::Url::parse(&r.gw.at("/auth/login")).unwrap();
    let mut resp = browser.navigate(url.as_str()).await;
    for _ in 0..5 {
        if resp.status != 302 && resp.status != 303 {
            break;
        }
        url = url.join(&resp.location().unwrap()).unwrap();
        resp = browser.navigate(url.as_str()).await;
    }
    assert!(resp.body.contains("name=\"password\""), "{}", resp.body);
}

/// The seed's `generatePKCE`: 32 random bytes, base64url; the challenge is the
/// base64url SHA-256 of the verifier.
fn generate_pkce() -> (String, String) {
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(portcullis::random::random_bytes::<32>());
    let challenge = portcullis::provider::authorize::s256(&verifier);
    (verifier, challenge)
}

async fn exchange(gw: &TestGateway, browser: &Browser, body: Value, origin: &str) -> Resp {
    browser
        .request(
            Method::POST,
            &gw.at("/api/auth/callback"),
            &[("accept", "application/json"), ("origin", origin)],
            Some((body.to_string(), "application/json")),
        )
        .await
}

#[tokio::test]
async fn the_seeds_spa_flow_signs_in_with_code_and_verifier() {
    let Some(r) = real(
        json!({}),
        &[
            ("PORTCULLIS_SPA_CODE_EXCHANGE", "true"),
            ("PORTCULLIS_SPA_REDIRECT_URI", "{gw}/spa/callback"),
        ],
    )
    .await
    else {
        return;
    };
    // The seed's LoginButton: PKCE pair and state made in the browser, straight to the
    // provider's authorization endpoint.
    let (verifier, challenge) = generate_pkce();
    let redirect_uri = r.gw.at("/spa/callback");
    let mut authorize = url::Url::parse(&format!("{}/auth", r.op.issuer)).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", "app")
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", "openid email profile")
        .append_pair("state", "seed-state")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let browser = Browser::new();
    let (callback, _) = follow_sign_in(
        &browser,
        authorize.as_str(),
        "alice",
        "alice",
        &redirect_uri,
    )
    .await;
    let code = query(callback.as_str())["code"].clone();

    // The seed's handleCallback: POST {code, verifier} from the app's own origin.
    let resp = exchange(
        &r.gw,
        &browser,
        json!({"code": code, "verifier": verifier}),
        &r.gw.url,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.json(), json!({"ok": true}));
    assert!(browser.cookie("portcullis").is_some());
    assert!(!resp.body.contains(&code));
    let me = browser.get(&r.gw.at("/anything"), JSON).await;
    assert_eq!(me.status, 200);
    assert_eq!(
        echoed(&me.json(), "x-user-email"),
        vec!["alice@example.com"]
    );
    assert_eq!(r.up.calls(), 1);

    // The same code again (another browser): the provider refuses, no session.
    let replay = Browser::new();
    let resp = exchange(
        &r.gw,
        &replay,
        json!({"code": code, "code_verifier": verifier}),
        &r.gw.url,
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(resp.json()["error"], "code_rejected");
    assert!(replay.cookie("portcullis").is_none());
}

#[tokio::test]
async fn the_spa_exchange_is_same_origin_json_with_a_real_verifier() {
    let p = HostileProvider::start().await;
    let gw = TestGateway::start_with(
        &p.issuer,
        Options::default()
            .env("PORTCULLIS_SPA_CODE_EXCHANGE", "true")
            .env(
                "PORTCULLIS_SPA_REDIRECT_URI",
                "http://127.0.0.1:9/spa/callback",
            ),
    )
    .await;
    let (verifier, challenge) = generate_pkce();
    let token = p.keys.sign_rs256(&p.keys.rs256_header(), &{
        let mut c = p.claims("");
        c.as_object_mut().unwrap().remove("nonce");
        c
    });
    let code = p.issue_code(&challenge, HostileProvider::token_response(&token));
    let good = json!({"code": code, "verifier": verifier});
    let browser = Browser::new();
    let cross = exchange(&gw, &browser, good.clone(), "https://evil.example").await;
    assert_eq!(cross.status, 403);
    for body in [
        json!({"code": code}),
        json!({"code": code, "verifier": "short"}),
        json!({"code": code, "verifier": verifier, "code_verifier": format!("{verifier}x")}),
        json!({"code": "", "verifier": verifier}),
        json!(["not", "an", "object"]),
    ] {
        let resp = exchange(&gw, &browser, body.clone(), &gw.url).await;
        assert_eq!(resp.status, 400, "{body}");
    }
    let form = browser
        .request(
            Method::POST,
            &gw.at("/api/auth/callback"),
            &[("origin", gw.url.as_str())],
            Some((
                format!("code={code}&verifier={verifier}"),
                "application/x-www-form-urlencoded",
            )),
        )
        .await;
    assert_eq!(form.status, 400);
    assert_eq!(p.token_calls(), 0, "nothing reached the provider");
    assert_eq!(gw.session_count().await, 0);
    // A nonce the app sends is checked against the ID token.
    let resp = exchange(
        &gw,
        &browser,
        json!({"code": code, "verifier": verifier, "nonce": "other"}),
        &gw.url,
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(gw.session_count().await, 0);
}
