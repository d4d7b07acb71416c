//! The login flow against a hostile or faulty provider: every case class (docs/security.md)
//! in "Login and callback", "ID token and JWT", the cookie and access rules, and the size
//! and time limits. Each test fails if its defence is removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::browser::Resp;
use support::gateway::{Authorize, Options, callback_query};
use support::keys::{b64, sign_hs256};
use support::{Browser, HostileProvider, TestGateway};

async fn setup() -> (HostileProvider, TestGateway) {
    let p = HostileProvider::start().await;
    let gw = TestGateway::start(&p.issuer).await;
    (p, gw)
}

async fn setup_with(options: Options) -> (HostileProvider, TestGateway) {
    let p = HostileProvider::start().await;
    let gw = TestGateway::start_with(&p.issuer, options).await;
    (p, gw)
}

/// A gateway with one setting.
async fn setup_with_env(name: &str, value: &str) -> (HostileProvider, TestGateway) {
    setup_with(Options::default().env(name, value)).await
}

/// One login where the provider answers the code with `make_token(authorize request)`.
async fn login_with(
    gw: &TestGateway,
    p: &HostileProvider,
    browser: &Browser,
    make_token: impl FnOnce(&Authorize) -> String,
) -> Resp {
    let auth = gw.start_login(browser, None).await;
    let token = make_token(&auth);
    let code = p.issue_code(&auth.challenge, HostileProvider::token_response(&token));
    p.answer_with(gw, browser, &auth, &code).await
}

/// Finishes a login started with `auth`: the provider answers with standard claims.
async fn finish_login(
    gw: &TestGateway,
    p: &HostileProvider,
    browser: &Browser,
    auth: &Authorize,
) -> Resp {
    let code = p.code_for(auth);
    p.answer_with(gw, browser, auth, &code).await
}

/// "No session": no session cookie set and nothing written to the store.
async fn assert_no_session(gw: &TestGateway, resp: &Resp) {
    assert!(
        resp.set_cookie_named("portcullis").is_none(),
        "a session cookie was set: {:?}",
        resp.set_cookies()
    );
    assert_eq!(gw.session_count().await, 0, "a session was stored");
}

async fn assert_refused(gw: &TestGateway, resp: &Resp, code: &str) {
    assert_eq!(resp.status, 400, "body: {}", resp.body);
    assert!(
        resp.body.contains(code),
        "expected error code {code} in: {}",
        resp.body
    );
    assert_no_session(gw, resp).await;
}

async fn assert_id_token_refused(gw: &TestGateway, resp: &Resp) {
    assert_refused(gw, resp, "id_token_invalid").await;
}

/// One login whose ID token has the standard claims under an RS256 header changed by
/// `patch`: refused as an invalid ID token.
async fn refused_with_header(
    gw: &TestGateway,
    p: &HostileProvider,
    patch: impl FnOnce(&mut Value),
) {
    let resp = login_with(gw, p, &Browser::new(), |a| {
        let mut header = p.keys.rs256_header();
        patch(&mut header);
        p.keys.sign_rs256(&header, &p.claims(&a.nonce))
    })
    .await;
    assert_id_token_refused(gw, &resp).await;
}

// --- The happy path, for reference -------------------------------------------------

#[tokio::test]
async fn a_valid_login_creates_a_session_and_redirects_to_return_to() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, Some("/orders?page=2")).await;
    assert_eq!(auth.redirect_uri, format!("{}/auth/callback", gw.url));
    let resp = p.complete(&gw, &browser, &auth).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(resp.location().as_deref(), Some("/orders?page=2"));
    assert!(browser.cookie("portcullis").is_some());
    let session = browser.get(&gw.at("/auth/session"), &[]).await;
    assert_eq!(session.status, 200);
    let v = session.json();
    assert_eq!(v["authenticated"], true);
    assert_eq!(v["user"]["email"], "alice@example.com");
    assert_eq!(v["user"]["name"], "Alice Example");
    assert!(uuid::Uuid::parse_str(v["user"]["id"].as_str().unwrap()).is_ok());
    assert_eq!(gw.session_count().await, 1);
}

// --- 1. Login and callback ----------------------------------------------------------

#[tokio::test]
async fn l01_callback_without_state_or_transaction_is_refused() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    let code = p.code_for(&auth);

    let missing = gw
        .callback(&browser, &format!("code={code}&iss={}", p.issuer))
        .await;
    assert_refused(&gw, &missing, "state_missing").await;
    let foreign = gw
        .callback(
            &browser,
            &callback_query(&code, "forged-state-value", Some(&p.issuer)),
        )
        .await;
    assert_refused(&gw, &foreign, "state_mismatch").await;
    // A browser with no login transaction at all.
    let stranger = Browser::new();
    let none = p.answer_with(&gw, &stranger, &auth, &code).await;
    assert_refused(&gw, &none, "browser_mismatch").await;
    assert_eq!(
        p.token_calls(),
        0,
        "the token endpoint must never be called"
    );
}

#[tokio::test]
async fn l01_stale_transaction_is_refused() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    gw.clock.advance(601);
    let resp = gw
        .callback(
            &browser,
            &callback_query("code-x", &auth.state, Some(&p.issuer)),
        )
        .await;
    assert_refused(&gw, &resp, "login_expired").await;
    assert_eq!(p.token_calls(), 0);
}

#[tokio::test]
async fn l02_replayed_callback_is_refused() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    let code = p.code_for(&auth);
    let query = callback_query(&code, &auth.state, Some(&p.issuer));
    assert_eq!(gw.callback(&browser, &query).await.status, 303);
    browser.cookies.lock().unwrap().remove("portcullis");
    let again = gw.callback(&browser, &query).await;
    assert_eq!(again.status, 400);
    assert!(again.body.contains("state_mismatch"));
    assert!(again.set_cookie_named("portcullis").is_none());
    assert_eq!(gw.session_count().await, 1, "no second session");
    assert_eq!(p.token_calls(), 1);
}

#[tokio::test]
async fn l03_callback_completed_in_another_browser_is_refused() {
    let (p, gw) = setup().await;
    let a = Browser::new();
    let b = Browser::new();
    // B has a login transaction of its own, so it holds a binding cookie too.
    gw.start_login(&b, None).await;
    let auth = gw.start_login(&a, None).await;
    let code = p.code_for(&auth);
    let resp = p.answer_with(&gw, &b, &auth, &code).await;
    assert_refused(&gw, &resp, "browser_mismatch").await;
    assert_eq!(p.token_calls(), 0);
}

#[tokio::test]
async fn l04_injected_code_fails_pkce_and_nobody_is_signed_in() {
    let (p, gw) = setup().await;
    let victim = Browser::new();
    let attacker = Browser::new();
    let attacker_auth = gw.start_login(&attacker, None).await;
    let mut claims = p.claims(&attacker_auth.nonce);
    claims["sub"] = json!("attacker");
    let attacker_token = p.keys.sign_rs256(&p.keys.rs256_header(), &claims);
    // The attacker's code is bound to the attacker's PKCE challenge.
    let attacker_code = p.issue_code(
        &attacker_auth.challenge,
        HostileProvider::token_response(&attacker_token),
    );
    let victim_auth = gw.start_login(&victim, None).await;
    let resp = p
        .answer_with(&gw, &victim, &victim_auth, &attacker_code)
        .await;
    assert_refused(&gw, &resp, "code_rejected").await;
    assert_eq!(
        p.token_calls(),
        1,
        "the provider saw the redemption and refused it"
    );
}

#[tokio::test]
async fn l05_authorize_parameters_are_s256_random_and_distinct() {
    let p = HostileProvider::start().await;
    // A thousand sign-ins from one address: past the default rate limit.
    let gw = TestGateway::start_with(
        &p.issuer,
        Options::default().env("PORTCULLIS_LIMITS_LOGIN_PER_MINUTE", "5000"),
    )
    .await;
    let mut seen = HashSet::new();
    let browser = Browser::new();
    for _ in 0..1000 {
        let auth = gw.start_login(&browser, None).await;
        assert_eq!(auth.param("code_challenge_method").as_deref(), Some("S256"));
        assert_eq!(auth.param("response_type").as_deref(), Some("code"));
        for v in [&auth.state, &auth.nonce, &auth.challenge] {
            // 43 base64url characters = 256 bits (≥128 required).
            assert_eq!(v.len(), 43, "{v}");
            assert!(
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert!(seen.insert(v.clone()), "a value repeated: {v}");
        }
    }
    assert_eq!(seen.len(), 3000);
    assert_eq!(p.token_calls(), 0);
}

#[tokio::test]
async fn l06_mix_up_iss_is_refused_before_any_token_request() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    for iss in [
        Some("https://evil.example.com"),
        Some(&*format!("{}/", p.issuer)),
        None,
    ] {
        let auth = gw.start_login(&browser, None).await;
        let code = p.code_for(&auth);
        let resp = gw
            .callback(&browser, &callback_query(&code, &auth.state, iss))
            .await;
        assert_refused(&gw, &resp, "issuer_mismatch").await;
    }
    assert_eq!(p.token_calls(), 0);
}

#[tokio::test]
async fn l06_missing_iss_is_accepted_when_the_provider_does_not_advertise_it() {
    let (p, gw) = setup().await;
    p.patch_metadata(json!({"authorization_response_iss_parameter_supported": false}));
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    let code = p.code_for(&auth);
    let resp = gw
        .callback(&browser, &callback_query(&code, &auth.state, None))
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
}

#[tokio::test]
async fn l07_return_to_tricks_always_end_on_a_same_origin_path() {
    let (p, gw) = setup().await;
    for evil in [
        "https://evil.example.com/",
        "//evil.example.com",
        "/\\evil.example.com",
        "/%5Cevil.example.com",
        "https://app@evil.example.com",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: a=b",
    ] {
        let browser = Browser::new();
        let auth = gw.start_login(&browser, Some(evil)).await;
        let resp = p.complete(&gw, &browser, &auth).await;
        assert_eq!(resp.status, 303);
        assert_eq!(resp.location().as_deref(), Some("/"), "return_to {evil:?}");
    }
}

#[tokio::test]
async fn l08_host_headers_never_change_the_redirect_uri() {
    let (p, gw) = setup().await;
    let _ = &p;
    let browser = Browser::new();
    let resp = browser
        .get(
            &gw.at("/auth/login"),
            &[
                ("host", "evil.example.com"),
                ("x-forwarded-host", "evil.example.com"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "host=evil.example.com"),
            ],
        )
        .await;
    assert_eq!(resp.status, 302);
    let location = resp.location().unwrap();
    assert!(!location.contains("evil"), "{location}");
    let url = url::Url::parse(&location).unwrap();
    let redirect_uri = url
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(redirect_uri, format!("{}/auth/callback", gw.url));
    let session = browser
        .get(&gw.at("/auth/session"), &[("host", "evil.example.com")])
        .await;
    assert!(!session.body.contains("evil"), "{}", session.body);
}

#[tokio::test]
async fn l09_error_callback_is_escaped_and_consumes_the_transaction() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    let query = format!(
        "error=access_denied&error_description={}&state={}&iss={}",
        url::form_urlencoded::byte_serialize(b"<script>alert(1)</script>").collect::<String>(),
        auth.state,
        p.issuer
    );
    let resp = gw.callback(&browser, &query).await;
    assert_eq!(resp.status, 400);
    assert!(
        resp.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(!resp.body.contains("<script>"), "{}", resp.body);
    assert!(resp.body.contains("&lt;script&gt;"));
    assert!(resp.body.contains("provider_denied"));
    assert_no_session(&gw, &resp).await;
    // The transaction is gone: a later code for the same state is refused.
    let later = p.complete(&gw, &browser, &auth).await;
    assert_refused(&gw, &later, "state_mismatch").await;
    assert_eq!(p.token_calls(), 0);
}

#[tokio::test]
async fn l10_discovery_issuer_mismatch_refuses_logins() {
    let p = HostileProvider::start().await;
    p.patch_metadata(json!({"issuer": format!("{}/", p.issuer)}));
    let gw = TestGateway::start(&p.issuer).await;
    let browser = Browser::new();
    let resp = browser.navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 502);
    assert!(resp.body.contains("provider_misconfigured"));
    assert!(resp.location().is_none());
    let ready = browser.get(&gw.at("/readyz"), &[]).await;
    assert_eq!(ready.status, 503);
}

#[tokio::test]
async fn several_tabs_share_one_binding_cookie_and_each_completes() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let tab1 = gw.start_login(&browser, Some("/one")).await;
    let binding = browser.cookie("portcullis_tx").unwrap();
    let tab2 = gw.start_login(&browser, Some("/two")).await;
    assert_eq!(
        browser.cookie("portcullis_tx").unwrap(),
        binding,
        "one cookie for all tabs"
    );
    for (auth, target) in [(&tab2, "/two"), (&tab1, "/one")] {
        let code = p.code_for(auth);
        let resp = p.answer_with(&gw, &browser, auth, &code).await;
        assert_eq!(resp.status, 303, "{}", resp.body);
        assert_eq!(resp.location().as_deref(), Some(target));
    }
}

#[tokio::test]
async fn extra_authorize_params_reach_the_provider_but_cannot_replace_ours() {
    let (_p, gw) = setup_with(
        Options::default()
            .env(
                "PORTCULLIS_PROVIDER_EXTRA_AUTHORIZE_PARAMS",
                r#"{ access_type = "offline", audience = "https://api.example.com" }"#,
            )
            .env("PORTCULLIS_SCOPES", "openid email profile"),
    )
    .await;
    let auth = gw.start_login(&Browser::new(), None).await;
    assert_eq!(auth.param("access_type").as_deref(), Some("offline"));
    assert_eq!(
        auth.param("audience").as_deref(),
        Some("https://api.example.com")
    );
    assert_eq!(auth.param("scope").as_deref(), Some("openid email profile"));
    assert_eq!(
        auth.url
            .query_pairs()
            .filter(|(k, _)| k == "redirect_uri")
            .count(),
        1
    );
}

#[tokio::test]
async fn provider_redirects_are_never_followed() {
    let (p, gw) = setup().await;
    p.patch_metadata(json!({"userinfo_endpoint": format!("{}/redirect-to-evil", p.issuer)}));
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert_no_session(&gw, &resp).await;
    assert_eq!(
        p.counters
            .evil_fetches
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

// --- 2. ID token and JWT ------------------------------------------------------------

#[tokio::test]
async fn j01_bad_signatures_are_refused() {
    let (p, gw) = setup().await;
    // RS256 with one flipped signature byte.
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let t = p
            .keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce));
        let (head, sig) = t.rsplit_once('.').unwrap();
        let mut bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        bytes[10] ^= 0x01;
        format!("{head}.{}", b64(bytes))
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
    // ES256 over other claims (signature of a different payload).
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let good = p
            .keys
            .sign_es256(&p.keys.es256_header(), &p.claims(&a.nonce));
        let mut other = p.claims(&a.nonce);
        other["sub"] = json!("admin");
        let forged = format!(
            "{}.{}",
            b64(p.keys.es256_header().to_string()),
            b64(other.to_string())
        );
        format!("{forged}.{}", good.rsplit_once('.').unwrap().1)
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
    // ES256 with r = s = 0 ("psychic signature", CVE-2022-21449).
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let input = format!(
            "{}.{}",
            b64(p.keys.es256_header().to_string()),
            b64(p.claims(&a.nonce).to_string())
        );
        format!("{input}.{}", b64([0u8; 64]))
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
    // And a correct ES256 token passes, so the refusals above are about the signature.
    let ok = login_with(&gw, &p, &Browser::new(), |a| {
        p.keys
            .sign_es256(&p.keys.es256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
}

#[tokio::test]
async fn j02_alg_none_is_refused() {
    let (p, gw) = setup().await;
    for alg in ["none", "None", "NONE"] {
        let resp = login_with(&gw, &p, &Browser::new(), |a| {
            format!(
                "{}.{}.",
                b64(json!({"alg": alg, "typ": "JWT"}).to_string()),
                b64(p.claims(&a.nonce).to_string())
            )
        })
        .await;
        assert_id_token_refused(&gw, &resp).await;
        let resp = login_with(&gw, &p, &Browser::new(), |a| {
            format!(
                "{}.{}.e30",
                b64(json!({"alg": alg}).to_string()),
                b64(p.claims(&a.nonce).to_string())
            )
        })
        .await;
        assert_id_token_refused(&gw, &resp).await;
    }
}

#[tokio::test]
async fn j02_hs256_keyed_with_the_rsa_public_key_is_refused() {
    let (p, gw) = setup().await;
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": p.keys.rsa_kid});
        sign_hs256(&p.keys.rsa_public_der(), &header, &p.claims(&a.nonce))
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
    // Even advertised by the provider and keyed by the real client secret, HS256 stays
    // off the default allow-list: it is accepted only when configured explicitly.
    p.patch_metadata(json!({"id_token_signing_alg_values_supported": ["RS256", "HS256"]}));
    let secret = "the-real-client-secret";
    let gw2 = TestGateway::start_with(
        &p.issuer,
        Options::default().env("PORTCULLIS_CLIENT_SECRET", secret),
    )
    .await;
    let resp = login_with(&gw2, &p, &Browser::new(), |a| {
        sign_hs256(
            secret.as_bytes(),
            &json!({"alg": "HS256", "typ": "JWT"}),
            &p.claims(&a.nonce),
        )
    })
    .await;
    assert_id_token_refused(&gw2, &resp).await;
    let gw3 = TestGateway::start_with(
        &p.issuer,
        Options::default()
            .env("PORTCULLIS_CLIENT_SECRET", secret)
            .env("PORTCULLIS_PROVIDER_ALLOWED_ALGORITHMS", "HS256"),
    )
    .await;
    let resp = login_with(&gw3, &p, &Browser::new(), |a| {
        sign_hs256(
            secret.as_bytes(),
            &json!({"alg": "HS256", "typ": "JWT"}),
            &p.claims(&a.nonce),
        )
    })
    .await;
    assert_eq!(
        resp.status, 303,
        "explicitly configured HS256 keyed by the client secret works: {}",
        resp.body
    );
    // …and then the RSA public key as HMAC key still fails.
    let resp = login_with(&gw3, &p, &Browser::new(), |a| {
        sign_hs256(
            &p.keys.rsa_public_der(),
            &json!({"alg": "HS256"}),
            &p.claims(&a.nonce),
        )
    })
    .await;
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("id_token_invalid"));
    assert!(resp.set_cookie_named("portcullis").is_none());
    assert_eq!(gw3.session_count().await, 1, "only the legitimate login");
}

#[tokio::test]
async fn j02_algorithms_off_the_allow_list_are_refused() {
    let p = HostileProvider::start().await;
    // The provider advertises ES256 only: an RS256 token is refused even with a valid signature.
    p.patch_metadata(json!({"id_token_signing_alg_values_supported": ["ES256"]}));
    let gw = TestGateway::start(&p.issuer).await;
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
    // Configured allow-list wins over the provider's list.
    let gw2 = TestGateway::start_with(
        &p.issuer,
        Options::default().env("PORTCULLIS_PROVIDER_ALLOWED_ALGORITHMS", "RS256"),
    )
    .await;
    let resp = login_with(&gw2, &p, &Browser::new(), |a| {
        p.keys
            .sign_es256(&p.keys.es256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_id_token_refused(&gw2, &resp).await;
}

#[tokio::test]
async fn j03_keys_in_the_header_are_refused_without_any_fetch() {
    let (p, gw) = setup().await;
    let evil = format!("{}/evil-jwks", p.issuer);
    let attacker = support::TestKeys::generate("attacker");
    // Signed with the provider's own key, so only the header check can refuse these.
    for (member, value) in [
        ("jku", json!(evil)),
        ("x5u", json!(evil)),
        ("jwk", attacker.rsa_jwk()),
        ("x5c", json!(["MIIB"])),
    ] {
        refused_with_header(&gw, &p, |header| header[member] = value.clone()).await;
    }
    assert_eq!(
        p.counters
            .evil_fetches
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn j04_hostile_kids_are_refused_without_lookups_outside_the_jwks() {
    let (p, gw) = setup_with(Options {
        jwks_min_refetch: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    // The JWKS really holds keys under the malformed kids, so only the kid check can
    // refuse those; the others must not be looked up anywhere but the JWKS.
    let long_kid = "k".repeat(8192);
    let malformed = [long_kid.as_str(), "a\u{0}b", "line\nbreak"];
    let mut keys = vec![p.keys.rsa_jwk(), p.keys.ec_jwk()];
    for kid in malformed {
        let mut k = p.keys.rsa_jwk();
        k["kid"] = json!(kid);
        keys.push(k);
    }
    p.script.lock().unwrap().jwks = json!({ "keys": keys });
    for kid in malformed
        .into_iter()
        .chain(["../../../../etc/passwd", "' OR '1'='1"])
    {
        refused_with_header(&gw, &p, |header| header["kid"] = json!(kid)).await;
    }
    // The JWKS was fetched at discovery and at most once more (rate-limited), never per kid.
    assert!(
        p.jwks_fetches() <= 2,
        "jwks fetched {} times",
        p.jwks_fetches()
    );
}

#[tokio::test]
async fn j05_unknown_crit_header_is_refused() {
    let (p, gw) = setup().await;
    refused_with_header(&gw, &p, |header| {
        header["crit"] = json!(["urn:example:unknown"]);
        header["urn:example:unknown"] = json!(true);
    })
    .await;
}

/// An ID token with the standard claims for `nonce`, patched (`null` removes a claim).
fn patched_token(p: &HostileProvider, nonce: &str, patch: &Value) -> String {
    let mut claims = p.claims(nonce);
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    p.keys.sign_rs256(&p.keys.rs256_header(), &claims)
}

async fn refused_with_claims(patch: Value) {
    let (p, gw) = setup().await;
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        patched_token(&p, &a.nonce, &patch)
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
}

#[tokio::test]
async fn j06_wrong_or_missing_issuer_is_refused() {
    refused_with_claims(json!({"iss": "https://evil.example.com"})).await;
    refused_with_claims(json!({"iss": null})).await;
}

#[tokio::test]
async fn j06_issuer_differing_by_case_or_slash_is_refused() {
    let p = HostileProvider::start().await;
    let upper = p.issuer.replace("http://", "HTTP://");
    refused_with_claims(json!({"iss": upper})).await;
    refused_with_claims(json!({"iss": format!("{}/", p.issuer)})).await;
}

#[tokio::test]
async fn j07_audience_and_authorized_party_must_be_this_client() {
    refused_with_claims(json!({"aud": "another-client"})).await;
    refused_with_claims(json!({"aud": null})).await;
    refused_with_claims(json!({"aud": ["app", "untrusted-api"]})).await;
    refused_with_claims(json!({"azp": "another-client"})).await;
}

#[tokio::test]
async fn j07_a_trusted_extra_audience_is_admitted_only_with_azp_this_client() {
    // ZITADEL's shape: the project id beside the client id, `azp` the client id.
    let (p, gw) = setup_with_env("PORTCULLIS_PROVIDER_TRUSTED_AUDIENCES", "project-1").await;
    let sign_in = |patch: Value| {
        let (p, gw) = (&p, &gw);
        async move {
            login_with(gw, p, &Browser::new(), |a| {
                patched_token(p, &a.nonce, &patch)
            })
            .await
        }
    };
    for refused in [
        json!({"aud": ["app", "project-1"], "azp": null}),
        json!({"aud": ["app", "project-1", "untrusted-api"], "azp": "app"}),
        json!({"aud": ["project-1"], "azp": "app"}),
        json!({"aud": ["app", "project-1"], "azp": "project-1"}),
    ] {
        let resp = sign_in(refused.clone()).await;
        assert_id_token_refused(&gw, &resp).await;
    }
    let ok = sign_in(json!({"aud": ["app", "project-1"], "azp": "app"})).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    // Without the setting the same token is refused (J07).
    refused_with_claims(json!({"aud": ["app", "project-1"], "azp": "app"})).await;
}

#[tokio::test]
async fn j08_time_claims_are_enforced() {
    let now = support::now();
    refused_with_claims(json!({"exp": now - 300})).await;
    refused_with_claims(json!({"iat": null})).await;
    refused_with_claims(json!({"iat": now + 600})).await;
    refused_with_claims(json!({"nbf": now + 600})).await;
}

#[tokio::test]
async fn j09_nonce_missing_or_from_another_flow_is_refused() {
    refused_with_claims(json!({"nonce": null})).await;
    let (p, gw) = setup().await;
    // The nonce of another browser's login.
    let other = gw.start_login(&Browser::new(), None).await;
    let resp = login_with(&gw, &p, &Browser::new(), |_| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&other.nonce))
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
}

#[tokio::test]
async fn j10_subject_rules_and_userinfo_subject_mismatch() {
    refused_with_claims(json!({"sub": null})).await;
    refused_with_claims(json!({"sub": "x".repeat(256)})).await;
    let (p, gw) = setup().await;
    p.set_userinfo(Some(
        json!({"sub": "mallory", "email": "mallory@example.com"}),
    ));
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_refused(&gw, &resp, "userinfo_sub_mismatch").await;
}

#[tokio::test]
async fn j10_identity_is_issuer_and_subject_never_email() {
    let (p, gw) = setup().await;
    let first = Browser::new();
    assert_eq!(
        login_with(&gw, &p, &first, |a| p
            .keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce)))
        .await
        .status,
        303
    );
    // Another subject claiming alice's email gets another user id.
    p.set_userinfo(Some(
        json!({"sub": "mallory", "email": "alice@example.com"}),
    ));
    let second = Browser::new();
    let resp = login_with(&gw, &p, &second, |a| {
        let mut c = p.claims(&a.nonce);
        c["sub"] = json!("mallory");
        p.keys.sign_rs256(&p.keys.rs256_header(), &c)
    })
    .await;
    assert_eq!(resp.status, 303);
    let a = first.get(&gw.at("/auth/session"), &[]).await.json();
    let b = second.get(&gw.at("/auth/session"), &[]).await.json();
    assert_ne!(a["user"]["id"], b["user"]["id"]);
}

#[tokio::test]
async fn j11_no_kid_with_a_single_fitting_key_is_accepted() {
    let (p, gw) = setup().await;
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        p.keys
            .sign_rs256(&json!({"alg": "RS256"}), &p.claims(&a.nonce))
    })
    .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
}

#[tokio::test]
async fn j12_key_rotation_refetches_once_then_accepts() {
    let (p, gw) = setup_with(Options {
        jwks_min_refetch: Duration::ZERO,
        ..Default::default()
    })
    .await;
    assert_eq!(
        login_with(&gw, &p, &Browser::new(), |a| p
            .keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce)))
        .await
        .status,
        303
    );
    let before = p.jwks_fetches();
    let rotated = support::TestKeys::generate("k2");
    p.script.lock().unwrap().jwks = json!({"keys": [p.keys.rsa_jwk(), rotated.rsa_jwk()]});
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        rotated.sign_rs256(&rotated.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(
        p.jwks_fetches(),
        before + 1,
        "exactly one refetch for the new kid"
    );
}

#[tokio::test]
async fn j12_random_kids_do_not_amplify_jwks_fetches() {
    let (p, gw) = setup_with(Options {
        jwks_min_refetch: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    for i in 0..20 {
        refused_with_header(&gw, &p, |header| {
            header["kid"] = json!(format!("random-{i}"))
        })
        .await;
    }
    assert!(
        p.jwks_fetches() <= 2,
        "20 random kids caused {} JWKS fetches",
        p.jwks_fetches()
    );
}

#[tokio::test]
async fn j13_logout_and_access_tokens_are_not_id_tokens() {
    let (p, gw) = setup().await;
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let mut claims = p.claims(&a.nonce);
        claims["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
        claims["jti"] = json!("j1");
        let mut header = p.keys.rs256_header();
        header["typ"] = json!("logout+jwt");
        p.keys.sign_rs256(&header, &claims)
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
    refused_with_header(&gw, &p, |header| header["typ"] = json!("at+jwt")).await;
}

#[tokio::test]
async fn j14_parser_differentials_are_refused() {
    let (p, gw) = setup().await;
    // Duplicate claims, correctly signed. `email` is one jsonwebtoken does not look at,
    // so only our parser stands between a last-wins reading and a changed identity.
    for claim in [r#""email":"admin@example.com""#, r#""sub":"admin""#] {
        let resp = login_with(&gw, &p, &Browser::new(), |a| {
            let claims = p.claims(&a.nonce).to_string();
            let dup = format!("{},{claim}}}", &claims[..claims.len() - 1]);
            p.keys
                .sign_raw_rs256(&p.keys.rs256_header().to_string(), &dup)
        })
        .await;
        assert_id_token_refused(&gw, &resp).await;
    }
    // Four segments.
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        format!(
            "{}.e30",
            p.keys
                .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
        )
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
    // JWS JSON serialization.
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let t = p
            .keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce));
        let parts: Vec<&str> = t.split('.').collect();
        json!({"protected": parts[0], "payload": parts[1], "signature": parts[2]}).to_string()
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
}

// --- 3. Session and cookie ----------------------------------------------------------

#[tokio::test]
async fn s01_cookies_on_https_are_host_prefixed_secure_httponly_lax() {
    let (p, gw) = setup_with_env("PORTCULLIS_PUBLIC_URL", "https://app.example.test").await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    assert_eq!(auth.redirect_uri, "https://app.example.test/auth/callback");
    let tx = browser
        .history
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .set_cookie_named("__Host-portcullis-tx")
        .expect("tx cookie");
    let resp = p.complete(&gw, &browser, &auth).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let session = resp
        .set_cookie_named("__Host-portcullis")
        .expect("session cookie");
    for cookie in [&tx, &session] {
        for attr in [
            "; Path=/",
            "; HttpOnly",
            "; SameSite=Lax",
            "; Secure",
            "; Max-Age=",
        ] {
            assert!(cookie.contains(attr), "{cookie} lacks {attr}");
        }
        assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
    }
    let value = session
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1;
    assert_eq!(value.len(), 43, "256-bit opaque id");
    assert!(!value.contains("alice"));
    let max_age: i64 = session
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        max_age,
        30 * 86_400,
        "Max-Age is the remaining absolute lifetime"
    );
}

#[tokio::test]
async fn s01_cookies_on_http_use_plain_names_without_secure() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let resp = login_with(&gw, &p, &browser, |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    let c = resp.set_cookie_named("portcullis").unwrap();
    assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && !c.contains("Secure"));
}

#[tokio::test]
async fn s02_no_token_or_code_ever_reaches_the_browser() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, Some("/after")).await;
    let id_token = p
        .keys
        .sign_rs256(&p.keys.rs256_header(), &p.claims(&auth.nonce));
    let response = HostileProvider::token_response(&id_token);
    let access = response["access_token"].as_str().unwrap().to_owned();
    let refresh = response["refresh_token"].as_str().unwrap().to_owned();
    let code = p.issue_code(&auth.challenge, response);
    let resp = p.answer_with(&gw, &browser, &auth, &code).await;
    assert_eq!(resp.status, 303);
    browser.get(&gw.at("/auth/session"), &[]).await;
    browser.navigate(&gw.at("/auth/session")).await;
    let seen = browser.everything_seen();
    for secret in [&access, &refresh, &id_token, &code] {
        assert!(
            !seen.contains(secret.as_str()),
            "a secret reached the browser"
        );
    }
    // The verifier never leaves the server either: only its challenge did.
    assert!(!seen.contains("code_verifier"));
}

#[tokio::test]
async fn s03_a_planted_cookie_is_never_promoted() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let planted = portcullis::random::random_token();
    browser.set_cookie("portcullis", &planted);
    let resp = login_with(&gw, &p, &browser, |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_eq!(resp.status, 303);
    let issued = browser.cookie("portcullis").unwrap();
    assert_ne!(issued, planted, "login must issue a new id");
    let attacker = Browser::new();
    attacker.set_cookie("portcullis", &planted);
    assert_eq!(attacker.get(&gw.at("/auth/session"), &[]).await.status, 401);
}

#[tokio::test]
async fn s03_logging_in_again_replaces_the_previous_session() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    login_with(&gw, &p, &browser, |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    let first = browser.cookie("portcullis").unwrap();
    login_with(&gw, &p, &browser, |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    let second = browser.cookie("portcullis").unwrap();
    assert_ne!(first, second);
    assert_eq!(
        gw.session_count().await,
        1,
        "the replaced session is deleted"
    );
}

#[tokio::test]
async fn s07_idle_timeout_and_absolute_lifetime_end_sessions() {
    let (p, gw) = setup_with(
        Options::default()
            .env("PORTCULLIS_SESSION_IDLE_TIMEOUT", "10m")
            .env("PORTCULLIS_SESSION_ABSOLUTE_LIFETIME", "1h"),
    )
    .await;
    let browser = Browser::new();
    login_with(&gw, &p, &browser, |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    // Activity every 9 minutes keeps it alive past the idle timeout…
    for _ in 0..6 {
        gw.clock.advance(9 * 60);
        assert_eq!(browser.get(&gw.at("/auth/session"), &[]).await.status, 200);
    }
    // …but not past the absolute lifetime (54 min + 9 > 60).
    gw.clock.advance(9 * 60);
    assert_eq!(browser.get(&gw.at("/auth/session"), &[]).await.status, 401);

    let idle = Browser::new();
    login_with(&gw, &p, &idle, |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    gw.clock.advance(10 * 60 + 1);
    assert_eq!(idle.get(&gw.at("/auth/session"), &[]).await.status, 401);
}

#[tokio::test]
async fn s08_store_dump_holds_no_plaintext_token() {
    let (p, gw) = setup_with(Options {
        file_store: true,
        ..Default::default()
    })
    .await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    let id_token = p
        .keys
        .sign_rs256(&p.keys.rs256_header(), &p.claims(&auth.nonce));
    let response = HostileProvider::token_response(&id_token);
    let secrets: Vec<String> = ["access_token", "refresh_token"]
        .iter()
        .map(|k| response[k].as_str().unwrap().to_owned())
        .collect();
    let code = p.issue_code(&auth.challenge, response);
    assert_eq!(p.answer_with(&gw, &browser, &auth, &code).await.status, 303);
    let session_id = browser.cookie("portcullis").unwrap();
    let dir = gw.db_path.as_ref().unwrap().parent().unwrap().to_owned();
    let mut dump = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        dump.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let dump = String::from_utf8_lossy(&dump);
    for s in secrets.iter().chain([&id_token, &session_id]) {
        assert!(
            !dump.contains(s.as_str()),
            "plaintext secret in the store files"
        );
    }
    // The id's hash is what is stored.
    assert!(dump.contains(&portcullis::random::sha256_hex(session_id.as_bytes())));
}

#[tokio::test]
async fn s08_ciphertexts_swapped_between_sessions_fail_to_open() {
    let (p, gw) = setup().await;
    let (a, b) = (Browser::new(), Browser::new());
    login_with(&gw, &p, &a, |x| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&x.nonce))
    })
    .await;
    login_with(&gw, &p, &b, |x| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&x.nonce))
    })
    .await;
    let sa = gw
        .gateway
        .sessions()
        .authenticate(&a.cookie("portcullis").unwrap())
        .await
        .unwrap()
        .unwrap();
    let sb = gw
        .gateway
        .sessions()
        .authenticate(&b.cookie("portcullis").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(gw.gateway.sessions().session_tokens(&sa.record).is_ok());
    let store = gw.gateway.store();
    assert!(
        store
            .update_tokens(sa.family_id, sa.record.token_version, &sb.record.tokens)
            .await
            .unwrap()
    );
    let swapped = gw
        .gateway
        .sessions()
        .authenticate(&a.cookie("portcullis").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        gw.gateway
            .sessions()
            .session_tokens(&swapped.record)
            .is_err(),
        "B's ciphertexts must not open as A's"
    );
}

// --- 8. Access rules ---------------------------------------------------------------

#[tokio::test]
async fn ar1_users_outside_the_rules_get_403_and_no_session() {
    let (p, gw) = setup_with_env("PORTCULLIS_ACCESS_ALLOWED_EMAIL_DOMAINS", "example.com").await;
    // Outside the domain.
    p.set_userinfo(Some(
        json!({"sub": "alice", "email": "alice@evil-example.com", "email_verified": true}),
    ));
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let mut c = p.claims(&a.nonce);
        c["email"] = json!("alice@evil-example.com");
        p.keys.sign_rs256(&p.keys.rs256_header(), &c)
    })
    .await;
    assert_eq!(resp.status, 403);
    assert!(resp.body.contains("email_not_allowed"));
    assert!(
        resp.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_no_session(&gw, &resp).await;
    // In the domain but unverified.
    p.set_userinfo(Some(
        json!({"sub": "alice", "email": "alice@example.com", "email_verified": false}),
    ));
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_eq!(resp.status, 403);
    assert!(resp.body.contains("email_not_verified"));
    assert_no_session(&gw, &resp).await;
    // Verified and in the domain.
    p.set_userinfo(None);
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_eq!(resp.status, 303);
}

#[tokio::test]
async fn ar1_required_claims_are_enforced_at_login() {
    let (p, gw) = setup_with_env(
        "PORTCULLIS_ACCESS_REQUIRED_CLAIMS",
        r#"{ groups = ["admins"] }"#,
    )
    .await;
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        p.keys
            .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
    })
    .await;
    assert_eq!(resp.status, 403);
    assert!(resp.body.contains("claim_required"));
    assert_no_session(&gw, &resp).await;
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let mut c = p.claims(&a.nonce);
        c["groups"] = json!(["staff", "admins"]);
        p.keys.sign_rs256(&p.keys.rs256_header(), &c)
    })
    .await;
    assert_eq!(resp.status, 303);
}

#[tokio::test]
async fn ar2_domain_suffix_tricks_are_refused() {
    let (p, gw) = setup_with_env("PORTCULLIS_ACCESS_ALLOWED_EMAIL_DOMAINS", "example.com").await;
    for email in [
        "m@evil-example.com",
        "m@example.com.evil.net",
        "a@b@example.com",
    ] {
        p.set_userinfo(Some(
            json!({"sub": "alice", "email": email, "email_verified": true}),
        ));
        let resp = login_with(&gw, &p, &Browser::new(), |a| {
            p.keys
                .sign_rs256(&p.keys.rs256_header(), &p.claims(&a.nonce))
        })
        .await;
        assert_eq!(resp.status, 403, "{email}");
        assert_no_session(&gw, &resp).await;
    }
}

// --- 9. Robustness ------------------------------------------------------------------

#[tokio::test]
async fn r03_oversized_token_responses_and_jwts_are_refused() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    p.script.lock().unwrap().token_override = Some((
        200,
        format!(
            "{{\"access_token\":\"{}\",\"token_type\":\"Bearer\"}}",
            "a".repeat(200_000)
        ),
    ));
    let resp = gw
        .callback(&browser, &callback_query("c", &auth.state, Some(&p.issuer)))
        .await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.body.contains("provider_response_too_large"));
    assert_no_session(&gw, &resp).await;
    p.script.lock().unwrap().token_override = None;
    // A 20 KB ID token inside a normal-sized response: refused before any crypto.
    let resp = login_with(&gw, &p, &Browser::new(), |a| {
        let mut c = p.claims(&a.nonce);
        c["padding"] = json!("p".repeat(20_000));
        p.keys.sign_rs256(&p.keys.rs256_header(), &c)
    })
    .await;
    assert_id_token_refused(&gw, &resp).await;
}

#[tokio::test]
async fn r04_a_stalled_token_endpoint_times_out_cleanly() {
    let (p, gw) = setup_with(Options {
        provider_total_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    p.script.lock().unwrap().token_delay = Some(Duration::from_secs(30));
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    let started = tokio::time::Instant::now();
    let resp = gw
        .callback(&browser, &callback_query("c", &auth.state, Some(&p.issuer)))
        .await;
    assert_eq!(resp.status, 504, "{}", resp.body);
    assert!(resp.body.contains("provider_timeout"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_no_session(&gw, &resp).await;
}

#[tokio::test]
async fn r04_an_unreachable_provider_gives_502_and_not_ready() {
    // A port with nothing listening.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let gw = TestGateway::start(&issuer).await;
    let browser = Browser::new();
    let resp = browser.navigate(&gw.at("/auth/login")).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(
        resp.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(resp.set_cookie_named("portcullis_tx").is_none());
    let ready = browser.get(&gw.at("/readyz"), &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["provider"], false);
    assert_eq!(browser.get(&gw.at("/healthz"), &[]).await.status, 200);
}

#[tokio::test]
async fn r02_malformed_callbacks_are_4xx_never_5xx() {
    let (p, gw) = setup().await;
    let browser = Browser::new();
    gw.start_login(&browser, None).await;
    for q in [
        "state=a&state=b&code=c",
        "state=%FF%FE&code=%00",
        "state=&code=",
        "code=x&state=x%00y",
        &format!("state={}", "s".repeat(10_000)),
    ] {
        let resp = gw.callback(&browser, q).await;
        assert!((400..500).contains(&resp.status), "{q}: {}", resp.status);
    }
    for c in [
        "",
        "portcullis=",
        "portcullis=*",
        "portcullis=%00",
        "portcullis=AAAA\"",
        "portcullis=a; portcullis=b",
    ] {
        let resp = Browser::new()
            .get(&gw.at("/auth/session"), &[("cookie", c)])
            .await;
        assert_eq!(resp.status, 401, "{c:?}");
    }
    let _ = p;
}

#[tokio::test]
async fn session_endpoint_answers_401_json_with_a_login_url() {
    let (_p, gw) = setup().await;
    let resp = Browser::new().get(&gw.at("/auth/session"), &[]).await;
    assert_eq!(resp.status, 401);
    let v = resp.json();
    assert_eq!(v["authenticated"], false);
    assert_eq!(v["login_url"], format!("{}/auth/login", gw.url));
    assert_eq!(resp.headers["cache-control"], "no-store");
}

/// Default scopes follow the provider's metadata: `offline_access` only when it is
/// offered (or nothing is listed); configured scopes are sent as written; a provider's
/// `invalid_scope` gets a page that names the scopes and the setting.
#[tokio::test]
async fn scopes_follow_the_provider_and_invalid_scope_names_the_setting() {
    let scope_of = |auth: &Authorize| auth.param("scope").unwrap();
    // Listed without offline_access (Google): not asked for.
    let (p, gw) = setup().await;
    p.patch_metadata(json!({"scopes_supported": ["openid", "email", "profile"]}));
    let auth = gw.start_login(&Browser::new(), None).await;
    assert_eq!(scope_of(&auth), "openid email profile");
    // Listed with it, or nothing listed: asked for.
    let (p, gw) = setup().await;
    p.patch_metadata(json!({"scopes_supported": ["openid", "offline_access"]}));
    let auth = gw.start_login(&Browser::new(), None).await;
    assert_eq!(scope_of(&auth), "openid email profile offline_access");
    let (_p, gw) = setup().await;
    let auth = gw.start_login(&Browser::new(), None).await;
    assert_eq!(scope_of(&auth), "openid email profile offline_access");
    // Configured: as written, whatever the provider lists.
    let p = HostileProvider::start().await;
    p.patch_metadata(json!({"scopes_supported": ["openid"]}));
    let gw = TestGateway::start_with(
        &p.issuer,
        Options::default().env("PORTCULLIS_SCOPES", "openid offline_access groups"),
    )
    .await;
    let browser = Browser::new();
    let auth = gw.start_login(&browser, None).await;
    assert_eq!(scope_of(&auth), "openid offline_access groups");
    // The provider refuses them: the page says which and what to change.
    let query = format!("error=invalid_scope&state={}&iss={}", auth.state, p.issuer);
    let resp = gw.callback(&browser, &query).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.body.contains("invalid_scope"), "{}", resp.body);
    assert!(
        resp.body.contains("openid offline_access groups"),
        "{}",
        resp.body
    );
    assert!(resp.body.contains("PORTCULLIS_SCOPES"), "{}", resp.body);
    assert_no_session(&gw, &resp).await;
}

/// D01: a flood of sign-ins beyond `limits.max_transactions` gets 503 with
/// `Retry-After`, and never evicts a sign-in in progress.
#[tokio::test]
async fn d01_a_flood_beyond_the_cap_never_evicts_a_sign_in_in_progress() {
    let (p, gw) = setup_with_env("PORTCULLIS_LIMITS_MAX_TRANSACTIONS", "3").await;
    let victim = Browser::new();
    let auth = gw.start_login(&victim, None).await;
    // The flood: new browsers, each a new transaction, until the cap answers.
    let mut refused = None;
    for _ in 0..10 {
        let r = Browser::new().navigate(&gw.at("/auth/login")).await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 302, "{}", r.body);
    }
    let refused = refused.expect("the cap answers 503");
    assert!(
        refused.body.contains("too_many_sign_ins"),
        "{}",
        refused.body
    );
    assert!(refused.headers.contains_key("retry-after"));
    // The victim's sign-in, started before the flood, still completes.
    let resp = finish_login(&gw, &p, &victim, &auth).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
}

/// D01: one address flooding `/auth/login` is answered 429 with `Retry-After`, while a
/// browser at another address signs in undisturbed.
#[tokio::test]
async fn d01_a_login_flood_from_one_address_leaves_the_others_alone() {
    let (p, gw) = setup_with_env("PORTCULLIS_LIMITS_LOGIN_PER_MINUTE", "5").await;
    let victim = Browser::from_address("127.0.0.2");
    let auth = gw.start_login(&victim, None).await;
    let flooder = Browser::new(); // 127.0.0.1
    let mut answers = Vec::new();
    for _ in 0..30 {
        answers.push(flooder.navigate(&gw.at("/auth/login")).await);
    }
    let allowed = answers.iter().filter(|r| r.status == 302).count();
    assert_eq!(allowed, 5, "the burst, then nothing");
    let limited = answers.last().unwrap();
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.body.contains("rate_limited"));
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The other address finishes its sign-in and may start another.
    let resp = finish_login(&gw, &p, &victim, &auth).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(
        Browser::from_address("127.0.0.2")
            .navigate(&gw.at("/auth/login"))
            .await
            .status,
        302
    );
}

/// G07: behind a trusted proxy that writes `ip:port` (or `[v6]:port`) into
/// `X-Forwarded-For`, each client has its own bucket: one client's flood never makes
/// every sign-in answer 429. An entry that is no address counts alone too.
#[tokio::test]
async fn g07_clients_behind_a_proxy_writing_ports_are_limited_apart() {
    let (_p, gw) = setup_with(
        Options::default()
            .env("PORTCULLIS_LIMITS_LOGIN_PER_MINUTE", "3")
            .env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    let proxy = Browser::new(); // 127.0.0.1, trusted
    let login = |xff: &'static str| {
        let (proxy, url) = (&proxy, gw.at("/auth/login"));
        async move {
            proxy
                .get(&url, &[("accept", "text/html"), ("x-forwarded-for", xff)])
                .await
                .status
        }
    };
    for _ in 0..3 {
        assert_eq!(login("203.0.113.7:50001").await, 302);
    }
    assert_eq!(
        login("203.0.113.7:50002").await,
        429,
        "one client, another port"
    );
    for other in ["203.0.113.8:50001", "[2001:db8::1]:443", "unknown"] {
        assert_eq!(login(other).await, 302, "{other} has a bucket of its own");
    }
    for _ in 0..2 {
        assert_eq!(login("unknown").await, 302);
    }
    assert_eq!(login("unknown").await, 429);
    assert_eq!(
        login("[2001:db8:0:1::2]:8443").await,
        302,
        "another client still may"
    );
}

/// D01: back-channel logout has its own, per-peer limit; each refusal is a security
/// event.
#[tokio::test]
async fn d01_back_channel_floods_are_refused_and_counted() {
    let (_p, gw) = setup_with_env("PORTCULLIS_LIMITS_BACKCHANNEL_PER_MINUTE", "2").await;
    let b = Browser::new();
    let url = gw.at("/auth/backchannel-logout");
    let post = || {
        b.request(
            reqwest::Method::POST,
            &url,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some((
                "logout_token=x".to_owned(),
                "application/x-www-form-urlencoded",
            )),
        )
    };
    assert_eq!(post().await.status, 400);
    assert_eq!(post().await.status, 400);
    let third = post().await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(
        gw.gateway.security_events().snapshot()["backchannel_rate_limited"],
        1
    );
    // Sign-ins are limited apart.
    assert_eq!(b.navigate(&gw.at("/auth/login")).await.status, 302);
}
