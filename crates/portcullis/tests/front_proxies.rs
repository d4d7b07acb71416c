//! Forward-auth behind the real front proxies, with the configuration snippets of
//! `docs/forward-auth.md` as written there (only addresses replaced): Debian nginx and
//! Caddy, the real npm `oidc-provider`, the gateway in forward-auth-only mode
//! (`support/front_proxy.rs`). Every test runs against both proxies. Skips with one line
//! when the proxy or Node is missing; `.ci/run` installs them and requires it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_test_support as support;

use reqwest::Method;
use support::Browser;
use support::front_proxy::{Front, Proxy};
use support::upstream::echoed;

async fn anonymous_pages_go_to_sign_in_and_anonymous_api_calls_get_401(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let anonymous = Browser::new();
    let page = anonymous.navigate(&f.at("/app/page?x=1")).await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(
        page.location().unwrap(),
        format!("{}/auth/login?return_to=%2Fapp%2Fpage%3Fx%3D1", f.url)
    );
    let api = f.api(&anonymous, Method::GET, "/api/x", &[]).await;
    assert_eq!(api.status, 401);
    assert!(api.location().is_none());
    // Forged and truncated cookies are no better.
    for cookie in ["portcullis=forged", "portcullis=", "portcullis=AAAA%00"] {
        let r = f
            .api(&anonymous, Method::GET, "/api/x", &[("cookie", cookie)])
            .await;
        assert_eq!(r.status, 401, "{cookie}");
    }
    assert_eq!(f.up.calls(), 0, "the app never saw an anonymous request");
}

async fn a_sign_in_through_the_proxy_hands_the_app_only_our_identity(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let session = b.get(&f.at("/auth/session"), &[]).await.json();
    let id = session["user"]["id"].as_str().unwrap().to_owned();
    let r = b
        .get(
            &f.at("/app"),
            &[
                ("x-user-id", "admin"),
                ("x-auth-request-user", "admin"),
                ("x-portcullis-jwt-assertion", "forged"),
                ("x-user_id", "admin"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(echoed(&v, "x-user-id"), [id.as_str()]);
    assert_eq!(echoed(&v, "x-user-email"), ["alice@example.com"]);
    assert!(
        echoed(&v, "x-auth-request-user")
            .iter()
            .all(String::is_empty)
    );
    assert!(echoed(&v, "x-user_id").is_empty());
    let assertion = echoed(&v, "x-portcullis-jwt-assertion");
    assert_eq!(assertion.len(), 1);
    assert_ne!(assertion[0], "forged");
    let cookies = echoed(&v, "cookie").join("; ");
    assert!(!cookies.contains("portcullis="), "{cookies}");
}

async fn the_session_survives_three_refreshes(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let mut seen = vec![b.cookie("portcullis").unwrap()];
    for _ in 0..3 {
        // Past the refresh point (the provider's access tokens live 300 s).
        f.gw.clock.advance(250);
        let r = f.api(&b, Method::GET, "/app", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let cookie = b.cookie("portcullis").unwrap();
        match f.kind {
            // nginx passes the rotated id on.
            Proxy::Nginx => assert!(
                !seen.contains(&cookie),
                "the rotated id reached the browser"
            ),
            // Caddy 2.6 drops the auth answer's Set-Cookie: a lost rotation each time.
            Proxy::Caddy => assert_eq!(cookie, seen[0], "Caddy passes no Set-Cookie"),
        }
        seen.push(cookie);
        assert_eq!(f.api(&b, Method::GET, "/app", &[]).await.status, 200);
    }
    let refreshes = f.op.events().await["grants"]["refresh_token"]
        .as_u64()
        .unwrap();
    assert_eq!(refreshes, 3);
}

async fn browsers_never_use_verify_or_write_cross_site(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let calls = f.up.calls();
    for (method, headers) in [
        (Method::GET, vec![]),
        (
            Method::GET,
            vec![("x-original-uri", "/app"), ("x-original-method", "GET")],
        ),
        (
            Method::POST,
            vec![("x-forwarded-uri", "/app"), ("x-forwarded-method", "GET")],
        ),
    ] {
        let r = f.api(&b, method, "/auth/verify", &headers).await;
        assert!(r.status >= 400, "{}: {}", r.status, r.body);
        assert!(r.headers.get("x-portcullis-jwt-assertion").is_none());
        assert!(!r.body.contains("eyJ"), "no token in {}", r.body);
    }
    // S06: a cross-site write is refused before the app.
    let r = f
        .api(
            &b,
            Method::POST,
            "/app/transfer",
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, 403);
    let own = f.url.clone();
    let r = f
        .api(
            &b,
            Method::POST,
            "/app/transfer",
            &[("origin", own.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.up.calls(), calls + 1);
}

/// A public path, and a user whose email is not verified, give the app every identity
/// header it copies empty — never the client's value, never placeholder text (Debian's
/// Caddy 2.6.2 copies a header missing from the auth answer as a literal placeholder).
async fn missing_values_reach_the_app_empty(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let anonymous = Browser::new();
    let r = anonymous
        .get(
            &f.at("/public/app.js"),
            &[
                ("x-user-id", "admin"),
                ("x-user-email", "admin@example.com"),
                ("x-user-provider", "corp"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    for name in [
        "x-user-id",
        "x-user-email",
        "x-user-name",
        "x-user-provider",
        "x-portcullis-jwt-assertion",
    ] {
        let seen = echoed(&v, name);
        assert!(seen.iter().all(String::is_empty), "{name}: {seen:?}");
    }
    let carol = f.signed_in("carol").await;
    let r = carol
        .get(
            &f.at("/app"),
            &[
                ("x-user-email", "admin@example.com"),
                ("x-user-provider", "corp"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(
        echoed(&v, "x-user-email").iter().all(String::is_empty),
        "an unverified address never reaches the app: {:?}",
        echoed(&v, "x-user-email")
    );
    assert_eq!(echoed(&v, "x-user-name"), ["Carol Unverified"]);
    assert_eq!(
        echoed(&v, "x-user-provider"),
        ["default"],
        "the session's provider, never the client's copy"
    );
    assert!(
        !r.body.contains('{') || !r.body.contains("{http."),
        "no placeholder: {}",
        r.body
    );
}

/// G05 and P01 behind the front proxy: routing headers and client copies of the
/// gateway's identity names never reach the app (the snippets clear or set every one),
/// and the app sees the scheme and host the browser used.
async fn routing_and_identity_headers_never_reach_the_app(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let routing = support::ROUTING_HEADERS;
    let identity = [
        "x-user-provider",
        "x-user-auth-method",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-preferred-username",
        "x-auth-request-groups",
    ];
    let mut headers: Vec<(&str, &str)> = routing
        .iter()
        .chain(identity.iter())
        .map(|name| (*name, "/admin"))
        .collect();
    headers.push(("x-forwarded-host", "evil.example"));
    headers.push(("x-forwarded-proto", "https"));
    for who in [&b, &Browser::new()] {
        let r = f.api(who, Method::GET, "/public/x", &headers).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        for name in routing.iter().chain(identity.iter()) {
            let seen = echoed(&v, name);
            assert!(
                seen.iter().all(String::is_empty),
                "{name} reached the app: {seen:?}"
            );
        }
        let host = f.url.trim_start_matches("http://");
        assert_eq!(echoed(&v, "x-forwarded-host"), [host]);
        assert_eq!(echoed(&v, "x-forwarded-proto"), ["http"]);
    }
    // Signed in, through a protected path, the same.
    let r = f.api(&b, Method::GET, "/app", &headers).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    for name in routing.iter().chain(identity.iter()) {
        if *name == "x-user-provider" {
            // Ours, from the session: never the client's copy.
            assert_eq!(echoed(&v, name), ["default"], "{name}");
            continue;
        }
        if *name == "x-user-auth-method" {
            assert_eq!(echoed(&v, name), ["session"], "{name}");
            continue;
        }
        assert!(echoed(&v, name).iter().all(String::is_empty), "{name}");
    }
}

/// G02 behind the front proxy with WebSocket proxying on: a handshake from our own
/// origin opens a working WebSocket to the app; one from another origin is refused
/// although the proxy strips `Upgrade` from the question it asks the gateway.
async fn websockets_pass_from_our_origin_only(kind: Proxy) {
    let Some(f) = Front::start(kind).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let cookie = b.cookie("portcullis").unwrap();
    for (origin, opens) in [
        (f.url.clone(), true),
        ("https://evil.example".to_owned(), false),
        (format!("{}0", f.url), false),
    ] {
        let calls = f.up.calls();
        let (mut tcp, head) = support::browser::websocket_handshake(
            &f.url,
            "/ws",
            "dGhlIHNhbXBsZSBub25jZQ==",
            Some(&origin),
            &format!("portcullis={cookie}"),
        )
        .await;
        if opens {
            assert!(head.starts_with("HTTP/1.1 101"), "{origin}: {head}");
            // One masked text frame "hi"; the app echoes it.
            support::browser::echo_hi(&mut tcp).await;
            assert_eq!(f.up.calls(), calls + 1);
        } else {
            assert!(head.starts_with("HTTP/1.1 403"), "{origin}: {head}");
            assert_eq!(f.up.calls(), calls, "{origin}: the app was called");
        }
    }
}

/// Token relay through the proxy: on a relay path the app gets the gateway's token (a
/// DPoP-bound one with its proof for the request the browser made, a bearer one with
/// no `DPoP` at all), never the client's; elsewhere the client's own headers pass.
async fn relayed_tokens_and_their_proofs_reach_the_app(kind: Proxy) {
    for dpop in ["on", "off"] {
        let Some(f) = Front::start_with_env(
            kind,
            None,
            &[
                ("PORTCULLIS_PROVIDER_DPOP", dpop),
                ("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*"),
            ],
        )
        .await
        else {
            return;
        };
        let b = f.signed_in("alice").await;
        let forged = [("authorization", "Bearer forged"), ("dpop", "forged.proof")];
        let r = f.api(&b, Method::GET, "/api/orders?x=1", &forged).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let got = r.json();
        let authorization = echoed(&got, "authorization");
        let proofs = echoed(&got, "dpop");
        assert_eq!(authorization.len(), 1, "{got}");
        if dpop == "on" {
            let token = authorization[0].strip_prefix("DPoP ").expect("DPoP scheme");
            assert_eq!(proofs.len(), 1, "{got}");
            let header = jsonwebtoken::decode_header(&proofs[0]).unwrap();
            let key = jsonwebtoken::DecodingKey::from_jwk(header.jwk.as_ref().unwrap()).unwrap();
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let claims = jsonwebtoken::decode::<serde_json::Value>(&proofs[0], &key, &v)
                .unwrap()
                .claims;
            assert_eq!(claims["htm"], "GET");
            assert_eq!(claims["htu"], f.at("/api/orders"));
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            use base64::Engine as _;
            assert_eq!(
                claims["ath"],
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
            );
        } else {
            assert!(authorization[0].starts_with("Bearer "), "{got}");
            assert_ne!(authorization[0], "Bearer forged");
            assert!(
                proofs.iter().all(String::is_empty),
                "the client's proof is cleared: {got}"
            );
        }
        let r = f.api(&b, Method::GET, "/x", &forged).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let got = r.json();
        assert_eq!(
            echoed(&got, "authorization"),
            vec!["Bearer forged".to_owned()]
        );
        assert_eq!(echoed(&got, "dpop"), vec!["forged.proof".to_owned()]);
    }
}

/// G13 behind the proxy: on a `[[bearer]]` path a refused token gets the gateway's
/// RFC 6750 answer (401 with one `WWW-Authenticate`, never a `Location`, the app never
/// called), and a session's request reaches the app as `X-User-Auth-Method: session`,
/// never the client's copy.
async fn refused_tokens_get_the_challenge_and_the_auth_method_is_ours(kind: Proxy) {
    let config = "[[bearer]]\nissuer = \"default\"\naudiences = [\"https://api.example.com\"]\npaths = [\"/api/*\"]\n";
    let Some(f) = Front::start_with(kind, Some(config.to_owned())).await else {
        return;
    };
    let anonymous = Browser::new();
    for accept in ["application/json", "text/html"] {
        let r = anonymous
            .get(
                &f.at("/api/orders"),
                &[
                    ("authorization", "Bearer not.a-valid.token"),
                    ("accept", accept),
                ],
            )
            .await;
        assert_eq!(r.status, 401, "{accept}: {}", r.body);
        assert!(r.location().is_none(), "{accept}: never a sign-in");
        let challenges: Vec<_> = r.headers.get_all("www-authenticate").iter().collect();
        assert_eq!(challenges.len(), 1, "{accept}: {challenges:?}");
        assert!(
            challenges[0]
                .to_str()
                .unwrap()
                .starts_with("Bearer error=\"invalid_token\""),
            "{challenges:?}"
        );
    }
    assert_eq!(f.up.calls(), 0, "the app was never called");
    let b = f.signed_in("alice").await;
    let r = f
        .api(
            &b,
            Method::GET,
            "/api/orders",
            &[("x-user-auth-method", "dpop")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        echoed(&r.json(), "x-user-auth-method"),
        vec!["session".to_owned()]
    );
}

macro_rules! behind_each_proxy {
    ($($name:ident),* $(,)?) => {
        mod nginx {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Proxy::Nginx).await
                }
            )*
        }
        mod caddy {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Proxy::Caddy).await
                }
            )*
        }
    };
}

behind_each_proxy!(
    anonymous_pages_go_to_sign_in_and_anonymous_api_calls_get_401,
    a_sign_in_through_the_proxy_hands_the_app_only_our_identity,
    the_session_survives_three_refreshes,
    browsers_never_use_verify_or_write_cross_site,
    missing_values_reach_the_app_empty,
    routing_and_identity_headers_never_reach_the_app,
    websockets_pass_from_our_origin_only,
    relayed_tokens_and_their_proofs_reach_the_app,
    refused_tokens_get_the_challenge_and_the_auth_method_is_ours,
);
