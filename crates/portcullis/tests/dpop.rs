//! DPoP-bound tokens (RFC 9449, `provider.dpop = "on"`) against the hostile provider,
//! for what a real one will not do on demand: ask for a nonce forever, answer `Bearer`
//! to a proof, rotate its nonce between two calls. Each proof is checked here with the
//! public key it carries; the npm provider's FAPI run (`tests/fapi.rs`) checks them
//! with an independent library.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;
use support::gateway::Options;
use support::hostile::{DpopScript, DpopSeen, RefreshAnswer, refreshed_tokens};
use support::upstream::echoed;
use support::{Browser, HostileProvider, TestGateway, TestUpstream};

const JSON: &[(&str, &str)] = &[("accept", "application/json")];

struct Setup {
    p: HostileProvider,
    gw: TestGateway,
}

async fn setup(script: DpopScript, options: Options) -> Setup {
    let p = HostileProvider::start().await;
    p.script.lock().unwrap().dpop = Some(script);
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(
        &p.issuer,
        options
            .env("PORTCULLIS_PROVIDER_DPOP", "on")
            .env("PORTCULLIS_UPSTREAM", &up.url),
    )
    .await;
    Setup { p, gw }
}

impl Setup {
    /// Starts a login and completes it at the callback; the authorization URL, the
    /// token response and the callback's answer.
    async fn sign_in(&self, browser: &Browser) -> (url::Url, Value, support::browser::Resp) {
        sign_in_at(&self.p, &self.gw, browser).await
    }

    fn seen(&self, endpoint: &str) -> Vec<DpopSeen> {
        let s = self.p.script.lock().unwrap();
        s.dpop_seen
            .iter()
            .filter(|s| s.endpoint == endpoint)
            .cloned()
            .collect()
    }
}

async fn sign_in_at(
    p: &HostileProvider,
    gw: &TestGateway,
    browser: &Browser,
) -> (url::Url, Value, support::browser::Resp) {
    let auth = gw.start_login(browser, None).await;
    let token = p
        .keys
        .sign_rs256(&p.keys.rs256_header(), &p.claims(&auth.nonce));
    let response = HostileProvider::token_response(&token);
    let code = p.issue_code(&auth.challenge, response.clone());
    let resp = p.answer_with(gw, browser, &auth, &code).await;
    (auth.url, response, resp)
}

/// A proof, verified with the key in its header: its header and claims.
fn verified(proof: &str) -> (Header, Value) {
    let header = jsonwebtoken::decode_header(proof).unwrap();
    assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = header
        .jwk
        .clone()
        .expect("the proof carries its public key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims =
        jsonwebtoken::decode::<Value>(proof, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    (header, claims)
}

/// The RFC 7638 thumbprint of a proof's key.
fn thumbprint(header: &Header) -> String {
    header
        .jwk
        .as_ref()
        .unwrap()
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .unwrap()
}

fn ath(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn header(r: &support::browser::Resp, name: &str) -> Option<String> {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_code_is_bound_and_redeemed_with_proofs_that_learn_the_nonce() {
    let s = setup(DpopScript::with_nonce("n-1"), Options::default()).await;
    let browser = Browser::new();
    let (url, response, resp) = s.sign_in(&browser).await;
    assert_eq!(resp.status, 303, "{}", resp.body);

    // Two token requests: the first without a nonce, refused with `use_dpop_nonce`; the
    // retry with a fresh proof carrying the provider's nonce.
    let token = s.seen("token");
    assert_eq!(token.len(), 2, "{token:?}");
    let (first_header, first) = verified(token[0].proof.as_deref().unwrap());
    let (second_header, second) = verified(token[1].proof.as_deref().unwrap());
    assert!(first.get("nonce").is_none());
    assert_eq!(second["nonce"], "n-1");
    assert_ne!(first["jti"], second["jti"], "a fresh proof per request");
    for claims in [&first, &second] {
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], format!("{}/token", s.p.issuer));
        assert!(claims.get("ath").is_none(), "no token goes along");
    }
    // The code was bound to the same key (RFC 9449 §10).
    let jkt = thumbprint(&first_header);
    assert_eq!(jkt, thumbprint(&second_header));
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "dpop_jkt" && v == jkt.as_str()),
        "{url}"
    );

    // UserInfo got the bound token with the DPoP scheme and a proof naming it.
    let userinfo = s.seen("userinfo");
    assert_eq!(userinfo.len(), 1);
    assert_eq!(userinfo[0].scheme.as_deref(), Some("DPoP"));
    let (header, claims) = verified(userinfo[0].proof.as_deref().unwrap());
    assert_eq!(thumbprint(&header), jkt);
    assert_eq!(claims["htm"], "GET");
    assert_eq!(claims["htu"], format!("{}/userinfo", s.p.issuer));
    assert_eq!(
        claims["ath"],
        ath(response["access_token"].as_str().unwrap())
    );
    assert_eq!(browser.get(&s.gw.at("/x"), JSON).await.status, 200);
}

#[tokio::test]
async fn a_provider_that_asks_for_a_nonce_forever_is_asked_twice() {
    let mut script = DpopScript::with_nonce("unused");
    script.endless = true;
    let s = setup(script, Options::default()).await;
    let browser = Browser::new();
    let (_, _, resp) = s.sign_in(&browser).await;
    assert_ne!(resp.status, 303, "{}", resp.body);
    assert!(resp.body.contains("code_rejected"), "{}", resp.body);
    assert_eq!(s.p.token_calls(), 2, "one retry, then the refusal stands");
    assert!(browser.cookie("portcullis").is_none());
}

#[tokio::test]
async fn a_bearer_token_when_dpop_is_on_is_refused() {
    let mut script = DpopScript::with_nonce("n-1");
    script.token_type = "Bearer";
    let s = setup(script, Options::default()).await;
    let browser = Browser::new();
    let (_, _, resp) = s.sign_in(&browser).await;
    assert_eq!(resp.status, 502, "{}", resp.body);
    assert!(resp.body.contains("provider_bad_response"), "{}", resp.body);
    assert!(browser.cookie("portcullis").is_none());
    assert_eq!(
        s.p.counters
            .userinfo_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an unbound token is used for nothing"
    );
}

#[tokio::test]
async fn userinfo_that_asks_for_its_own_nonce_gets_it_in_a_retry() {
    let mut script = DpopScript::with_nonce("n-1");
    script.userinfo_nonce = Some("rs-1".into());
    let s = setup(script, Options::default()).await;
    let browser = Browser::new();
    let (_, _, resp) = s.sign_in(&browser).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let userinfo = s.seen("userinfo");
    assert_eq!(userinfo.len(), 2);
    let (_, first) = verified(userinfo[0].proof.as_deref().unwrap());
    let (_, second) = verified(userinfo[1].proof.as_deref().unwrap());
    // The authorization server's nonce is not the resource server's.
    assert!(first.get("nonce").is_none(), "{first}");
    assert_eq!(second["nonce"], "rs-1");
}

#[tokio::test]
async fn a_refresh_carries_a_proof_and_follows_a_rotated_nonce() {
    let s = setup(
        DpopScript::with_nonce("n-1"),
        Options::default().env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*"),
    )
    .await;
    let browser = Browser::new();
    let (_, _, resp) = s.sign_in(&browser).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    s.p.script.lock().unwrap().dpop.as_mut().unwrap().nonce = "n-2".into();
    let answer = refreshed_tokens();
    let refreshed = answer["access_token"].as_str().unwrap().to_owned();
    s.p.answer_refreshes([RefreshAnswer::Json(200, answer)]);
    s.gw.clock.advance(250);
    let resp = browser.get(&s.gw.at("/api/orders"), JSON).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        echoed(&resp.json(), "authorization"),
        vec![format!("DPoP {refreshed}")]
    );
    let token = s.seen("token");
    assert_eq!(
        token.len(),
        4,
        "code: 2, refresh: the old nonce, then the new"
    );
    let (_, stale) = verified(token[2].proof.as_deref().unwrap());
    let (_, fresh) = verified(token[3].proof.as_deref().unwrap());
    assert_eq!(stale["nonce"], "n-1");
    assert_eq!(fresh["nonce"], "n-2");
}

#[tokio::test]
async fn relay_sends_the_bound_token_with_a_proof_for_the_decided_request() {
    let s = setup(
        DpopScript::with_nonce("n-1"),
        Options::default().env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*"),
    )
    .await;
    let browser = Browser::new();
    let (_, response, resp) = s.sign_in(&browser).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let token = response["access_token"].as_str().unwrap();
    let spoofed = [
        ("accept", "application/json"),
        ("authorization", "Bearer forged"),
        ("dpop", "forged.proof.value"),
    ];
    // The upstream answers with its own nonce for the next proof.
    let resp = browser
        .get(&s.gw.at("/api/orders?answer_dpop_nonce=up-1"), &spoofed)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let received = resp.json();
    assert_eq!(
        echoed(&received, "authorization"),
        vec![format!("DPoP {token}")]
    );
    let proofs = echoed(&received, "dpop");
    assert_eq!(proofs.len(), 1, "only the gateway's proof: {proofs:?}");
    let (header, claims) = verified(&proofs[0]);
    assert_eq!(claims["htm"], "GET");
    assert_eq!(claims["htu"], s.gw.at("/api/orders"), "no query in htu");
    assert_eq!(claims["ath"], ath(token));
    assert!(claims.get("nonce").is_none());
    let jkt = thumbprint(&header);

    let resp = browser
        .request(
            reqwest::Method::POST,
            &s.gw.at("/api/orders"),
            &[("accept", "application/json"), ("origin", &s.gw.url)],
            Some((String::new(), "text/plain")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let proofs = echoed(&resp.json(), "dpop");
    let (header, claims) = verified(&proofs[0]);
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["nonce"], "up-1", "the upstream's latest nonce");
    assert_eq!(thumbprint(&header), jkt);

    // Off the relay paths, nothing of ours is added (the client's headers are the app's).
    let resp = browser.get(&s.gw.at("/other"), &spoofed).await;
    assert_eq!(
        echoed(&resp.json(), "dpop"),
        vec!["forged.proof.value".to_owned()]
    );
}

#[tokio::test]
async fn forward_auth_answers_carry_the_bound_token_and_its_proof() {
    let s = setup(
        DpopScript::with_nonce("n-1"),
        Options::default()
            .env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*")
            .env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    let browser = Browser::new();
    let (_, response, resp) = s.sign_in(&browser).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let token = response["access_token"].as_str().unwrap();
    let cookie = format!("portcullis={}", browser.cookie("portcullis").unwrap());
    let proxy = Browser::new();
    let verify = |path: &'static str| {
        let cookie = cookie.clone();
        let proxy = &proxy;
        let url = s.gw.at("/auth/verify");
        let origin = s.gw.url.clone();
        async move {
            proxy
                .get(
                    &url,
                    &[
                        ("cookie", cookie.as_str()),
                        ("x-original-uri", path),
                        ("x-original-method", "PUT"),
                        ("origin", origin.as_str()),
                        ("accept", "application/json"),
                    ],
                )
                .await
        }
    };
    let r = verify("/api/x?y=1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(header(&r, "authorization"), Some(format!("DPoP {token}")));
    let (_, claims) = verified(&header(&r, "dpop").unwrap());
    assert_eq!(claims["htm"], "PUT");
    assert_eq!(claims["htu"], s.gw.at("/api/x"));
    assert_eq!(claims["ath"], ath(token));
    // Behind a forward-auth proxy the app gets the raw path, escapes and all: the proof
    // names that one.
    let r = verify("/api/users/a%40b.com").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, claims) = verified(&header(&r, "dpop").unwrap());
    assert_eq!(claims["htu"], s.gw.at("/api/users/a%40b.com"));
    let r = verify("/x").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Off the relay paths the answer carries the client's own (none here): a proxy
    // that copies both passes what the app would get without the gateway.
    assert_eq!(header(&r, "authorization").as_deref(), Some(""));
    assert_eq!(header(&r, "dpop").as_deref(), Some(""));
}

/// A token bound before DPoP was turned on is never relayed unbound: the relay path
/// asks for a sign-in, which brings a bound token.
#[tokio::test]
async fn an_unbound_token_is_not_relayed_once_dpop_is_on() {
    let p = HostileProvider::start().await;
    let up = TestUpstream::start().await;
    let before = TestGateway::start_with(
        &p.issuer,
        Options {
            file_store: true,
            ..Options::default()
        }
        .env("PORTCULLIS_UPSTREAM", &up.url)
        .env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*"),
    )
    .await;
    let browser = Browser::new();
    let (_, _, resp) = sign_in_at(&p, &before, &browser).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(browser.get(&before.at("/api/x"), JSON).await.status, 200);
    let after = TestGateway::start_with(
        &p.issuer,
        Options {
            db_path: before.db_path.clone(),
            secret: Some(before.secret),
            ..Options::default()
        }
        .env("PORTCULLIS_PROVIDER_DPOP", "on")
        .env("PORTCULLIS_UPSTREAM", &up.url)
        .env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*"),
    )
    .await;
    let calls = up.calls();
    assert_eq!(browser.get(&after.at("/api/x"), JSON).await.status, 401);
    assert_eq!(up.calls(), calls, "the app never got the unbound token");
    assert_eq!(browser.get(&after.at("/x"), JSON).await.status, 200);
}

/// Two instances on one store use one key: a session signed in on A and refreshed on B
/// keeps relaying on A with proofs of the same key.
#[tokio::test]
async fn two_instances_share_one_dpop_key() {
    let p = HostileProvider::start().await;
    p.script.lock().unwrap().dpop = Some(DpopScript::with_nonce("n-1"));
    let up = TestUpstream::start().await;
    let options = || {
        Options::default()
            .env("PORTCULLIS_PROVIDER_DPOP", "on")
            .env("PORTCULLIS_UPSTREAM", &up.url)
            .env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*")
    };
    let a = TestGateway::start_with(
        &p.issuer,
        Options {
            file_store: true,
            ..options()
        },
    )
    .await;
    let b = TestGateway::start_with(
        &p.issuer,
        Options {
            db_path: a.db_path.clone(),
            secret: Some(a.secret),
            ..options()
        },
    )
    .await;
    let browser = Browser::new();
    let (url_a, _, resp) = sign_in_at(&p, &a, &browser).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let (url_b, _, resp) = sign_in_at(&p, &b, &Browser::new()).await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let jkt = |url: &url::Url| {
        url.query_pairs()
            .find(|(k, _)| k == "dpop_jkt")
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    assert_eq!(jkt(&url_a), jkt(&url_b), "one key for both instances");

    // B refreshes A's session...
    let answer = refreshed_tokens();
    let refreshed = answer["access_token"].as_str().unwrap().to_owned();
    p.answer_refreshes([RefreshAnswer::Json(200, answer)]);
    // (Both clocks move: instances share the time; only B serves the due request.)
    b.clock.advance(250);
    a.clock.advance(250);
    let resp = browser.get(&b.at("/api/x"), JSON).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    // ...and A relays the refreshed token with a proof of the shared key.
    let resp = browser.get(&a.at("/api/x"), JSON).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let received = resp.json();
    assert_eq!(
        echoed(&received, "authorization"),
        vec![format!("DPoP {refreshed}")]
    );
    let (header, _) = verified(&echoed(&received, "dpop")[0]);
    assert_eq!(thumbprint(&header), jkt(&url_a));
}
