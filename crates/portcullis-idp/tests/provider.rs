//! The dev provider as an authorization server: cases A01–A09 (docs/security.md) and the
//! rest of its contract, driven over HTTP on a free loopback port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use portcullis_test_support::SendJson as _;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;
use support::{REDIRECT, assert_error, pkce, query, start};

#[tokio::test]
async fn a01_pkce_is_mandatory_and_plain_is_refused() {
    let p = start().await;
    for extra in [
        vec![],
        vec![
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ),
            ("code_challenge_method", "plain"),
        ],
    ] {
        let r = p
            .client
            .get(p.authorize_url("app", None, &extra))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let q = query(r.headers()["location"].to_str().unwrap());
        assert_eq!(q["error"], "invalid_request", "{extra:?}");
        assert_eq!(q["iss"], p.base);
        assert_eq!(q["state"], "st-1");
    }
    let meta: Value = p
        .client
        .get(format!("{}/.well-known/openid-configuration", p.base))
        .send_json()
        .await;
    assert_eq!(
        meta["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
}

#[tokio::test]
async fn a02_missing_wrong_or_ill_formed_verifiers_are_refused() {
    let p = start().await;
    let (_, challenge) = pkce();
    let (code, _) = p.code("app", &challenge).await;
    let (s, v) = p.redeem(&code, "too-short").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (code, _) = p.code("app", &challenge).await;
    let (s, v) = p
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", "app"),
            ],
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "missing verifier"
    );
    let (code, _) = p.code("app", &challenge).await;
    let (wrong, _) = pkce();
    let (s, v) = p.redeem(&code, &wrong).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "wrong verifier"
    );
}

#[tokio::test]
async fn a03_exact_redirect_uri_and_unknown_clients_get_a_page() {
    let p = start().await;
    let (_, challenge) = pkce();
    for url in [
        p.authorize_url("nobody", Some(&challenge), &[]),
        p.authorize_url("app", Some(&challenge), &[])
            .replace("auth%2Fcallback", "auth%2Fcallback%2F"),
        p.authorize_url("app", Some(&challenge), &[])
            .replace("auth%2Fcallback", "auth%2Fcallback%3Fx%3D1"),
        p.authorize_url("app", Some(&challenge), &[])
            .replace("127.0.0.1%3A8080", "evil.example.com"),
    ] {
        let r = p.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
        assert!(
            r.headers().get("location").is_none(),
            "never a redirect: {url}"
        );
    }
    // The token request must repeat the exact redirect URI.
    let (verifier, challenge) = pkce();
    let (code, _) = p.code("app", &challenge).await;
    assert_error(
        p.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", &verifier),
                ("redirect_uri", "http://127.0.0.1:8080/other"),
                ("client_id", "app"),
            ],
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
}

#[tokio::test]
async fn a04_codes_are_single_use_client_bound_and_short_lived() {
    let p = start().await;
    let (verifier, challenge) = pkce();
    let (code, _) = p.code("app", &challenge).await;
    let (s, first) = p.redeem(&code, &verifier).await;
    assert_eq!(s, 200);
    assert_eq!(
        p.userinfo(first["access_token"].as_str().unwrap()).await,
        200
    );
    let (s, v) = p.redeem(&code, &verifier).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // The replay revoked what the first redemption issued.
    assert_eq!(
        p.userinfo(first["access_token"].as_str().unwrap()).await,
        401
    );
    assert_eq!(
        p.refresh(first["refresh_token"].as_str().unwrap()).await.1["error"],
        "invalid_grant"
    );

    // Bound to its client.
    let (verifier, challenge) = pkce();
    let (code, _) = p.code("app", &challenge).await;
    assert_error(
        p.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", &verifier),
                ("redirect_uri", REDIRECT),
            ],
            Some(("conf", "conf-secret")),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    // … and another client's attempt did not burn it: a leaked code cannot be spoilt
    // by a stranger, the client it was issued to still redeems it.
    let (s, v) = p.redeem(&code, &verifier).await;
    assert_eq!(s, 200, "{v}");

    // Short-lived: a code past its 60 s is refused.
    let (verifier, challenge) = pkce();
    let (code, _) = p.code("app", &challenge).await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", p.db.display()))
        .await
        .unwrap();
    let ttl: i64 = sqlx::query_scalar(
        "SELECT expires_at - strftime('%s','now') FROM codes WHERE code_hash = ?1",
    )
    .bind(portcullis::random::sha256_hex(code.as_bytes()))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(ttl <= 60, "codes live at most 60 s, this one {ttl}");
    sqlx::query("UPDATE codes SET expires_at = 0 WHERE code_hash = ?1")
        .bind(portcullis::random::sha256_hex(code.as_bytes()))
        .execute(&pool)
        .await
        .unwrap();
    let (s, v) = p.redeem(&code, &verifier).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn a05_refresh_rotation_and_reuse_revokes_the_family() {
    let p = start().await;
    let t = p.tokens().await;
    let rt1 = t["refresh_token"].as_str().unwrap().to_owned();
    let (s, t2) = p.refresh(&rt1).await;
    assert_eq!(s, 200);
    let rt2 = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2, "rotated");
    let (s, t3) = p.refresh(&rt2).await;
    assert_eq!(s, 200);
    let rt3 = t3["refresh_token"].as_str().unwrap().to_owned();
    // rt1 again: refused, and the family (rt3 and the access tokens) is revoked.
    assert_eq!(p.refresh(&rt1).await.1["error"], "invalid_grant");
    assert_eq!(p.refresh(&rt3).await.1["error"], "invalid_grant");
    assert_eq!(p.userinfo(t3["access_token"].as_str().unwrap()).await, 401);

    // Two concurrent refreshes with one token: at most one succeeds.
    let t = p.tokens().await;
    let rt = t["refresh_token"].as_str().unwrap().to_owned();
    let attempts = (0..8).map(|_| p.refresh(&rt));
    let mut handles = Vec::new();
    for a in attempts {
        handles.push(a);
    }
    let results = portcullis::store::conformance::join_all(handles).await;
    let wins = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(
        wins, 1,
        "exactly one of eight concurrent refreshes with one token succeeds"
    );
}

#[tokio::test]
async fn a06_refresh_tokens_are_bound_to_their_client_and_scope_cannot_grow() {
    let p = start().await;
    let t = p.tokens().await;
    let rt = t["refresh_token"].as_str().unwrap().to_owned();
    assert_error(
        p.token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt),
                ("scope", "openid email profile offline_access"),
                ("client_id", "app"),
            ],
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    let t = p.tokens().await;
    let rt = t["refresh_token"].as_str().unwrap().to_owned();
    assert_error(
        p.token(
            &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
            Some(("conf", "conf-secret")),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    // A narrower scope is fine.
    let t = p.tokens().await;
    let (s, v) = p
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t["refresh_token"].as_str().unwrap()),
                ("scope", "openid"),
                ("client_id", "app"),
            ],
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["scope"], "openid");
}

#[tokio::test]
async fn a07_revocation_follows_rfc_7009() {
    let p = start().await;
    let t = p.tokens().await;
    let revoke = |token: String, client: &'static str| {
        let c = p.client.clone();
        let url = format!("{}/revoke", p.base);
        async move {
            c.post(url)
                .form(&[("token", token.as_str()), ("client_id", client)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Another client cannot revoke it (but is told 200, §2.2).
    let other = p
        .client
        .post(format!("{}/revoke", p.base))
        .basic_auth("conf", Some("conf-secret"))
        .form(&[("token", t["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(p.userinfo(t["access_token"].as_str().unwrap()).await, 200);
    assert_eq!(
        revoke(t["refresh_token"].as_str().unwrap().to_owned(), "app").await,
        200
    );
    assert_eq!(
        p.refresh(t["refresh_token"].as_str().unwrap()).await.1["error"],
        "invalid_grant"
    );
    assert_eq!(p.userinfo(t["access_token"].as_str().unwrap()).await, 401);
    assert_eq!(revoke("unknown-token".into(), "app").await, 200);
    // Client authentication still applies.
    let bad = p
        .client
        .post(format!("{}/revoke", p.base))
        .basic_auth("conf", Some("wrong"))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
}

#[tokio::test]
async fn a08_iss_on_every_response_s256_only_and_no_implicit_or_password() {
    let p = start().await;
    let (_, challenge) = pkce();
    let (_, login) = p.code("app", &challenge).await;
    assert_eq!(query(&login.location)["iss"], p.base);
    let r = p
        .client
        .get(
            p.authorize_url("app", Some(&challenge), &[])
                .replace("response_type=code", "response_type=token"),
        )
        .send()
        .await
        .unwrap();
    let q = query(r.headers()["location"].to_str().unwrap());
    assert_eq!(q["error"], "unsupported_response_type");
    assert_eq!(q["iss"], p.base);
    assert_error(
        p.token(
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "alice"),
                ("client_id", "app"),
            ],
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    // Client credentials only for a machine client (one that lists `resources`).
    assert_error(
        p.token(
            &[("grant_type", "client_credentials"), ("client_id", "app")],
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    let meta: Value = p
        .client
        .get(format!("{}/.well-known/openid-configuration", p.base))
        .send_json()
        .await;
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        meta["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(
        meta["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token", "client_credentials"])
    );
}

#[tokio::test]
async fn a09_the_form_answers_303_cannot_be_framed_and_needs_its_csrf_token() {
    let p = start().await;
    let (_, challenge) = pkce();
    let form = p
        .client
        .get(p.authorize_url("app", Some(&challenge), &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(form.headers()["x-frame-options"], "DENY");
    assert!(
        form.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let (resp, _) = p.sign_in("app", &challenge, "alice").await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (wrong, _) = p.sign_in("app", &challenge, "not-alice").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // Without the CSRF cookie the form is refused.
    let r = p
        .client
        .post(format!("{}/authorize", p.base))
        .form(&[
            ("client_id", "app"),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("csrf", "guess"),
            ("username", "alice"),
            ("password", "alice"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("location").is_none());
    // Nor with a cookie that differs from the form's token.
    let r = p
        .client
        .post(format!("{}/authorize", p.base))
        .header("cookie", "portcullis_idp_csrf=one-value")
        .form(&[
            ("client_id", "app"),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("csrf", "another-value"),
            ("username", "alice"),
            ("password", "alice"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Carried parameters survive the form unchanged, markup included (no XSS).
    let evil_state = "\"><script>alert(1)</script>\t";
    let form = p
        .client
        .get(p.authorize_url("app", Some(&challenge), &[]).replace(
            "state=st-1",
            &format!(
                "state={}",
                url::form_urlencoded::byte_serialize(evil_state.as_bytes()).collect::<String>()
            ),
        ))
        .send()
        .await
        .unwrap();
    let html = form.text().await.unwrap();
    assert!(!html.contains("<script>"), "{html}");
}

#[tokio::test]
async fn id_tokens_and_userinfo_carry_the_user() {
    let p = start().await;
    let t = p.tokens().await;
    let payload = t["id_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], p.base);
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims["sid"].is_string());
    let info: Value = p
        .client
        .get(format!("{}/userinfo", p.base))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send_json()
        .await;
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["name"], "Alice Example");
}

#[tokio::test]
async fn end_session_checks_the_redirect_and_sends_back_channel_logout() {
    let p = start().await;
    let (login, t) = p.signed_in().await;
    let hint = t["id_token"].as_str().unwrap();
    // A post-logout URI that is not registered: a page, no redirect.
    let bad = p
        .end_session(
            &[
                ("id_token_hint", hint),
                ("post_logout_redirect_uri", "https://evil.example.com/"),
            ],
            None,
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.headers().get("location").is_none());
    let ok = p
        .end_session(
            &[
                ("id_token_hint", hint),
                ("post_logout_redirect_uri", "http://127.0.0.1:8080/"),
                ("state", "bye"),
            ],
            Some(&login),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()["location"], "http://127.0.0.1:8080/?state=bye");
    assert_eq!(p.backchannel_hits.load(Ordering::SeqCst), 1);
    let token = p.backchannel_tokens.lock().unwrap()[0].clone();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["typ"], "logout+jwt");
    // The session's grant is gone too.
    assert_eq!(
        p.refresh(t["refresh_token"].as_str().unwrap()).await.1["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn a_non_loopback_listen_is_refused_without_allow_remote() {
    let config = portcullis_idp::IdpConfig::parse(
        "issuer = \"http://0.0.0.0:9100\"\nlisten = \"0.0.0.0:9100\"\n[[clients]]\nid = \"a\"\nredirect_uris = [\"http://x/cb\"]\n",
    )
    .unwrap();
    let err = portcullis_idp::run(config, false, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(matches!(err, portcullis_idp::StartError::RemoteRefused(_)));
}

#[tokio::test]
async fn confidential_clients_authenticate_with_basic_or_post_but_not_none() {
    let p = start().await;
    for (basic, post_secret) in [(true, false), (false, true)] {
        let (verifier, challenge) = pkce();
        let (code, _) = p.code("conf", &challenge).await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", verifier.as_str()),
            ("redirect_uri", REDIRECT),
        ];
        if post_secret {
            form.extend([("client_id", "conf"), ("client_secret", "conf-secret")]);
        }
        let (s, v) = p
            .token(&form, basic.then_some(("conf", "conf-secret")))
            .await;
        assert_eq!(s, 200, "basic={basic} post={post_secret}: {v}");
    }
    // Without its secret, a confidential client is refused (401 invalid_client).
    let (verifier, challenge) = pkce();
    let (code, _) = p.code("conf", &challenge).await;
    assert_error(
        p.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", &verifier),
                ("redirect_uri", REDIRECT),
                ("client_id", "conf"),
            ],
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    let (s, _) = p
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", "x")],
            Some(("conf", "wrong")),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A public client that sends a secret is not authenticated by it.
    let (s, _) = p
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", "x")],
            Some(("app", "anything")),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn grants_and_keys_survive_a_restart_and_rotation_keeps_old_keys_published() {
    let p = start().await;
    let t = p.tokens().await;
    let old_kid: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t["id_token"].as_str().unwrap().split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    // Rotate on the same database, then start a second instance on it.
    let config = portcullis_idp::IdpConfig::parse(&p.config_text).unwrap();
    portcullis_idp::rotate_keys(config.clone()).await.unwrap();
    let idp = portcullis_idp::Idp::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = format!("http://{}", listener.local_addr().unwrap());
    portcullis_test_support::serve_in_background(listener, portcullis_idp::router(idp));
    let jwks: Value = p.client.get(format!("{second}/jwks")).send_json().await;
    let kids = portcullis_test_support::kids(&jwks);
    assert_eq!(kids.len(), 4, "two retired, two current: {kids:?}");
    assert!(
        kids.contains(&old_kid["kid"].as_str().unwrap()),
        "the retired key is still published"
    );
    // The refresh token issued before the restart works on the new instance, signed by a new key.
    let (s, v) = p
        .client
        .post(format!("{second}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", t["refresh_token"].as_str().unwrap()),
            ("client_id", "app"),
        ])
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(s, 200);
    let v: Value = v.json().await.unwrap();
    let new_header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v["id_token"].as_str().unwrap().split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_ne!(new_header["kid"], old_kid["kid"]);
}

#[tokio::test]
async fn logout_tokens_carry_what_back_channel_logout_requires() {
    let p = start().await;
    let (login, t) = p.signed_in().await;
    let r = p
        .end_session(
            &[("id_token_hint", t["id_token"].as_str().unwrap())],
            Some(&login),
        )
        .await;
    assert_eq!(r.status(), 200);
    let token = p.backchannel_tokens.lock().unwrap()[0].clone();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let claims = p.verified_claims(&token).await;
    assert_eq!(claims["aud"], "app");
    let jwks = p.jwks().await;
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    assert_eq!(claims["sub"], "alice");
    assert!(claims["sid"].is_string() && claims["jti"].is_string() && claims["iat"].is_number());
    assert!(claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert!(claims.get("nonce").is_none());
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["alg"] == "ES256"),
        "an ES256 key is published"
    );
}

#[tokio::test]
async fn a_hint_for_another_session_does_not_sign_this_browser_out() {
    let p = start().await;
    // The attacker's own session and ID token.
    let (_, attacker) = p.signed_in().await;
    // The victim's browser session.
    let (victim, victim_tokens) = p.signed_in().await;
    let r = p
        .end_session(
            &[("id_token_hint", attacker["id_token"].as_str().unwrap())],
            Some(&victim),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        p.refresh(victim_tokens["refresh_token"].as_str().unwrap())
            .await
            .0,
        200,
        "the victim is still signed in"
    );
    // Without a hint, the user must confirm with the form.
    let confirm = p
        .client
        .get(format!("{}/end_session", p.base))
        .header("cookie", &victim.cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), 200);
    assert!(confirm.text().await.unwrap().contains("Sign out?"));
}

#[tokio::test]
async fn a_narrowed_refresh_narrows_userinfo_too() {
    let p = start().await;
    let t = p.tokens().await;
    let (s, v) = p
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t["refresh_token"].as_str().unwrap()),
                ("scope", "openid"),
                ("client_id", "app"),
            ],
            None,
        )
        .await;
    assert_eq!(s, 200);
    let info: Value = p
        .client
        .get(format!("{}/userinfo", p.base))
        .bearer_auth(v["access_token"].as_str().unwrap())
        .send_json()
        .await;
    assert_eq!(info["sub"], "alice");
    assert!(
        info.get("email").is_none() && info.get("name").is_none(),
        "{info}"
    );
}

#[tokio::test]
async fn a_refused_refresh_does_not_spend_the_token() {
    let p = start().await;
    let t = p.tokens().await;
    let rt = t["refresh_token"].as_str().unwrap();
    let (s, _) = p
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("scope", "openid offline_access"),
                ("client_id", "app"),
            ],
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = p
        .token(
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
            Some(("conf", "conf-secret")),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        p.refresh(rt).await.0,
        200,
        "the real client's refresh still works"
    );
}

/// RP-Initiated Logout §2: an expired `id_token_hint` is still a hint (it names the
/// client, so its registered redirect is accepted), but it never signs out without the
/// user's confirmation.
#[tokio::test]
async fn an_expired_id_token_hint_asks_before_signing_out() {
    let p = start().await;
    let (login, t) = p.signed_in().await;
    // The same ID token, expired, signed with the provider's own key.
    let payload = t["id_token"].as_str().unwrap().split('.').nth(1).unwrap();
    let mut claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["iat"] = (portcullis_idp::now() - 3600).into();
    claims["exp"] = (portcullis_idp::now() - 60).into();
    let config = portcullis_idp::IdpConfig::parse(&p.config_text).unwrap();
    let same_keys = portcullis_idp::Idp::open(config).await.unwrap();
    let expired = same_keys
        .keys
        .sign(jsonwebtoken::Algorithm::RS256, "JWT", &claims)
        .unwrap();
    let r = p
        .end_session(&[("id_token_hint", &expired)], Some(&login))
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Sign out?"),
        "the confirmation, not an error: {page}"
    );
    assert_eq!(
        p.backchannel_hits.load(Ordering::SeqCst),
        0,
        "nobody was signed out unasked"
    );
    assert_eq!(
        p.userinfo(t["access_token"].as_str().unwrap()).await,
        200,
        "the session's tokens still work"
    );
}

/// Password guessing is throttled per user (from any address) and per address (for any
/// user): once either has had its failures for the minute, attempts are refused before
/// a password is checked, with 429, `Retry-After` and a page. The rightful user's
/// correct password is refused too while her name is over its limit, but other users
/// and other addresses are not held up, and correct sign-ins are never counted.
#[tokio::test]
async fn password_attempts_are_throttled_per_user_and_per_address() {
    use portcullis_idp::throttle::{FAILURES_PER_ADDRESS_PER_MINUTE, FAILURES_PER_USER_PER_MINUTE};
    let p = start().await;
    let (_, challenge) = pkce();
    let regular = support::client_from("127.0.0.5");
    for _ in 0..FAILURES_PER_ADDRESS_PER_MINUTE + 2 {
        let (r, _) = p
            .sign_in_as(&regular, "app", &challenge, "alice", "alice")
            .await;
        assert_eq!(
            r.status(),
            StatusCode::SEE_OTHER,
            "correct sign-ins are not counted"
        );
    }
    let guesser = support::client_from("127.0.0.2");
    for _ in 0..FAILURES_PER_USER_PER_MINUTE {
        let (r, _) = p
            .sign_in_as(&guesser, "app", &challenge, "alice", "guess")
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let (r, _) = p
        .sign_in_as(&guesser, "app", &challenge, "alice", "guess")
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(r.text().await.unwrap().contains("too_many_attempts"));
    // Her name is over its rate from another address too (the guesser may have many).
    let (r, _) = p.sign_in("app", &challenge, "alice").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);

    // One address guessing many names: refused past its rate, whatever the name.
    let spray = support::client_from("127.0.0.3");
    for i in 0..FAILURES_PER_ADDRESS_PER_MINUTE {
        let (r, _) = p
            .sign_in_as(&spray, "app", &challenge, &format!("user{i}"), "guess")
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let (r, _) = p
        .sign_in_as(&spray, "app", &challenge, "someone", "guess")
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address is not held up by it.
    let other = support::client_from("127.0.0.4");
    let (r, _) = p
        .sign_in_as(&other, "app", &challenge, "someone", "guess")
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// Machine clients: `client_credentials` for a confidential client listing
/// `resources` only; an RFC 9068 token for the API named (RFC 8707), speaking for the
/// client, with the scopes asked among its own; bound to a DPoP proof's key when one
/// comes with the request, a proof used once.
#[tokio::test]
async fn client_credentials_for_machine_clients_only() {
    let p = start().await;
    let grant = [
        ("grant_type", "client_credentials"),
        ("resource", "https://api.example.com"),
        ("scope", "orders:read"),
    ];
    // Not a machine client.
    let (s, v) = p.token(&grant, Some(("conf", "conf-secret"))).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
    // A wrong secret.
    let (s, _) = p.token(&grant, Some(("machine", "nope"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // An API it may not call, a scope it was not given, no resource among two.
    assert_error(
        p.token(
            &[
                ("grant_type", "client_credentials"),
                ("resource", "https://evil.example"),
            ],
            Some(("machine", "machine-secret")),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    );
    assert_error(
        p.token(
            &[
                ("grant_type", "client_credentials"),
                ("resource", "https://api.example.com"),
                ("scope", "everything"),
            ],
            Some(("machine", "machine-secret")),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    assert_error(
        p.token(
            &[("grant_type", "client_credentials")],
            Some(("machine", "machine-secret")),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_target",
    );

    let (s, v) = p.token(&grant, Some(("machine", "machine-secret"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    let token = v["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let claims = p.verified_claims(token).await;
    assert_eq!(claims["aud"], "https://api.example.com");
    assert_eq!(
        (&claims["sub"], &claims["client_id"]),
        (&serde_json::json!("machine"), &serde_json::json!("machine"))
    );
    assert_eq!(claims["scope"], "orders:read");
    assert!(claims.get("cnf").is_none());

    // DPoP-bound.
    let (key, _) = portcullis::jose::dpop::DpopKey::generate().unwrap();
    let now = portcullis_test_support::now();
    let proof = key
        .proof("POST", &format!("{}/token", p.base), None, None, now)
        .unwrap();
    let bound = |proof: String| {
        let req = p
            .client
            .post(format!("{}/token", p.base))
            .basic_auth("machine", Some("machine-secret"))
            .header("dpop", proof)
            .form(&grant);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = bound(proof.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["token_type"], "DPoP");
    let claims = p.verified_claims(v["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["cnf"]["jkt"], key.jkt());
    let (s, v) = bound(proof).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_dpop_proof")),
        "a replayed proof"
    );
    let elsewhere = key
        .proof("POST", "http://127.0.0.1:1/token", None, None, now)
        .unwrap();
    let (s, _) = bound(elsewhere).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a proof for another endpoint");
}
