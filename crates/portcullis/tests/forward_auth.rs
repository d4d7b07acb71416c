//! `{prefix}/verify`, forward-auth (docs/forward-auth.md, docs/security.md P05),
//! asked the way nginx, Caddy and Traefik ask, from a trusted proxy (127.0.0.1) and
//! from an untrusted peer (127.0.0.2); and D03, unknown paths under the prefix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use reqwest::Method;
use support::browser::Resp;
use support::gateway::Options;
use support::{Browser, HostileProvider, TestGateway, TestUpstream};

const ANSWER_HEADERS: [&str; 9] = [
    "x-user-id",
    "x-user-email",
    "x-user-name",
    "x-user-provider",
    "x-portcullis-jwt-assertion",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
];

struct Setup {
    p: HostileProvider,
    gw: TestGateway,
    up: TestUpstream,
}

async fn setup_with(options: Options) -> Setup {
    let p = HostileProvider::start().await;
    let up = TestUpstream::start().await;
    let options = options
        .env("PORTCULLIS_UPSTREAM", &up.url)
        .env("PORTCULLIS_PUBLIC_PATHS", "/public/*")
        .env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1");
    let gw = TestGateway::start_with(&p.issuer, options).await;
    Setup { p, gw, up }
}

async fn setup() -> Setup {
    setup_with(Options::default()).await
}

impl Setup {
    async fn signed_in(&self) -> Browser {
        let b = Browser::new();
        self.p.sign_in(&self.gw, &b).await;
        b
    }

    /// `/auth/verify` as a proxy asks it: `b`'s cookie, these extra headers.
    async fn verify(&self, b: &Browser, query: &str, headers: &[(&str, &str)]) -> Resp {
        b.request(
            Method::GET,
            &self.gw.at(&format!("/auth/verify{query}")),
            headers,
            None,
        )
        .await
    }

    /// As nginx asks: `X-Original-URI` and `X-Original-Method`.
    async fn nginx(&self, b: &Browser, method: &str, uri: &str, extra: &[(&str, &str)]) -> Resp {
        let mut h = vec![("x-original-uri", uri), ("x-original-method", method)];
        h.extend_from_slice(extra);
        self.verify(b, "", &h).await
    }

    async fn user_id(&self, b: &Browser) -> String {
        b.get(&self.gw.at("/auth/session"), &[]).await.json()["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn header<'a>(r: &'a Resp, name: &str) -> Vec<&'a str> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test]
async fn signed_in_and_allowed_gets_200_with_every_identity_header() {
    let s = setup().await;
    let b = s.signed_in().await;
    let id = s.user_id(&b).await;
    let calls = s.up.calls();
    let r = s.nginx(&b, "GET", "/app/page?x=1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.is_empty());
    for name in ANSWER_HEADERS {
        assert_eq!(header(&r, name).len(), 1, "{name} exactly once");
    }
    assert_eq!(header(&r, "x-user-id"), [id.as_str()]);
    assert_eq!(header(&r, "x-auth-request-user"), [id.as_str()]);
    assert_eq!(header(&r, "x-user-provider"), ["default"]);
    assert!(header(&r, "x-portcullis-jwt-assertion")[0].len() > 100);
    assert_eq!(header(&r, "cache-control"), ["no-store"]);
    assert!(
        header(&r, "set-cookie").is_empty(),
        "no rotation, no cookie"
    );
    assert_eq!(s.up.calls(), calls, "forward-auth never calls the upstream");
}

#[tokio::test]
async fn not_signed_in_gets_401_with_a_login_location_for_pages() {
    let s = setup().await;
    let anonymous = Browser::new();
    let page = s
        .nginx(
            &anonymous,
            "GET",
            "/app/page?x=1&y=%2F",
            &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
        )
        .await;
    assert_eq!(page.status, 401, "{}", page.body);
    let location = page.location().unwrap();
    assert!(
        location.starts_with(&format!("{}/auth/login?return_to=", s.gw.url)),
        "{location}"
    );
    let return_to = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "return_to")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(return_to, "/app/page?x=1&y=%2F");
    let api = s
        .nginx(
            &anonymous,
            "GET",
            "/api/x",
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(api.status, 401);
    assert!(api.location().is_none(), "an API call is not redirected");
    assert_eq!(api.json()["error"], "not_signed_in");
    // `?redirect=1`: the page navigation gets the 302 itself, the API call the 401.
    let r = s
        .verify(
            &anonymous,
            "?redirect=1",
            &[
                ("x-forwarded-uri", "/app/page"),
                ("x-forwarded-method", "GET"),
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
            ],
        )
        .await;
    assert_eq!(r.status, 302);
    assert!(r.location().unwrap().contains("return_to=%2Fapp%2Fpage"));
    let r = s
        .verify(
            &anonymous,
            "?redirect=1",
            &[
                ("x-forwarded-uri", "/api/x"),
                ("x-forwarded-method", "GET"),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    // A return_to that would leave the site is not kept.
    let r = s
        .nginx(
            &anonymous,
            "GET",
            "//evil.example/x",
            &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
        )
        .await;
    assert_ne!(r.status, 200);
    if let Some(l) = r.location() {
        assert!(!l.contains("evil.example"), "{l}");
    }
}

/// P05: without exactly one URI and one method header, or with a host that is not
/// ours, the answer is never 2xx — even with a valid session.
#[tokio::test]
async fn p05_original_request_headers_must_be_exactly_one_of_each() {
    let s = setup().await;
    let b = s.signed_in().await;
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        ("no uri", vec![("x-original-method", "GET")], 400),
        ("no method", vec![("x-original-uri", "/x")], 400),
        (
            "two uri headers",
            vec![
                ("x-original-uri", "/x"),
                ("x-forwarded-uri", "/x"),
                ("x-original-method", "GET"),
            ],
            400,
        ),
        (
            "one uri header twice",
            vec![
                ("x-original-uri", "/public/x"),
                ("x-original-uri", "/admin"),
                ("x-original-method", "GET"),
            ],
            400,
        ),
        (
            "conflicting methods",
            vec![
                ("x-original-uri", "/x"),
                ("x-original-method", "GET"),
                ("x-forwarded-method", "POST"),
            ],
            400,
        ),
        (
            "garbled uri",
            vec![
                ("x-original-uri", "/a/%2e%2e/%2fb"),
                ("x-original-method", "GET"),
            ],
            400,
        ),
        (
            "not a path",
            vec![("x-original-uri", "x"), ("x-original-method", "GET")],
            400,
        ),
        (
            "absolute, another host",
            vec![
                ("x-original-url", "http://evil.example/public/x"),
                ("x-original-method", "GET"),
            ],
            400,
        ),
        (
            "garbled method",
            vec![("x-original-uri", "/x"), ("x-original-method", "G E T")],
            400,
        ),
        (
            "another host",
            vec![
                ("x-original-uri", "/x"),
                ("x-original-method", "GET"),
                ("x-forwarded-host", "evil.example"),
            ],
            403,
        ),
    ];
    for (what, headers, expected) in cases {
        for who in [&b, &Browser::new()] {
            let r = s.verify(who, "", &headers).await;
            assert_eq!(r.status, expected, "{what}: {}", r.body);
        }
    }
    // The absolute form for our own origin is fine.
    let own = format!("{}/x?y=1", s.gw.url);
    let r = s
        .verify(
            &b,
            "",
            &[("x-original-url", &own), ("x-original-method", "GET")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// P05: a public path passes with empty identity headers; forged, truncated or
/// malformed cookies never get a 2xx.
#[tokio::test]
async fn p05_public_paths_pass_empty_and_bad_cookies_never_pass() {
    let s = setup().await;
    let anonymous = Browser::new();
    let r = s
        .nginx(
            &anonymous,
            "GET",
            "/public/app.js",
            &[("x-user-id", "admin"), ("x-auth-request-user", "admin")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for name in ANSWER_HEADERS {
        assert_eq!(header(&r, name), [""], "{name} present and empty");
    }
    let real = s.signed_in().await;
    let cookie = real.cookie("portcullis").unwrap();
    for bad in [
        format!("portcullis={}", &cookie[..cookie.len() - 2]),
        format!("portcullis={cookie}x"),
        "portcullis=".to_owned(),
        "portcullis=%00%ff".to_owned(),
        format!("portcullis={}", "A".repeat(43)),
    ] {
        let r = s
            .nginx(&Browser::new(), "GET", "/x", &[("cookie", &bad)])
            .await;
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
    }
}

/// P05 and G03 from an untrusted peer: one that names an original request (any of the
/// five headers, in any spelling) gets 403 `untrusted_forwarder` naming itself and the
/// setting, whatever it holds — a forgotten `trusted_proxies` fails closed; one that
/// names none is answered on its session alone; with routes or token relay configured,
/// such a peer gets 403 whatever it holds.
#[tokio::test]
async fn p05_untrusted_peers_get_the_session_alone_or_403() {
    let s = setup().await;
    let stranger = Browser::from_address("127.0.0.2");
    let b = s.signed_in().await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    for (name, value) in [
        ("x-original-uri", "/public/x"),
        ("x-forwarded-uri", "/public/x"),
        ("x-original-url", "http://127.0.0.1/public/x"),
        ("x-original-method", "GET"),
        ("x-forwarded-method", "GET"),
        ("X_Original_URI", "/public/x"),
    ] {
        for who in [
            &[("accept", "application/json")][..],
            &[("cookie", &cookie)],
        ] {
            let mut headers = vec![(name, value)];
            headers.extend_from_slice(who);
            let r = s.verify(&stranger, "", &headers).await;
            assert_eq!(r.status, 403, "{name}: {}", r.body);
            let body = r.json();
            assert_eq!(body["error"], "untrusted_forwarder");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains("127.0.0.2") && message.contains("proxy.trusted_proxies"),
                "{message}"
            );
            assert!(header(&r, "x-user-id").is_empty());
        }
    }
    // Without them, the session alone.
    let r = s.verify(&stranger, "", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .verify(&stranger, "", &[("accept", "application/json")])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);

    let s = setup_with(Options::default().env("PORTCULLIS_PROXY_TOKEN_RELAY", "/api/*")).await;
    let b = s.signed_in().await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    let stranger = Browser::from_address("127.0.0.2");
    let r = s.verify(&stranger, "", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("untrusted_forwarder"), "{}", r.body);
    // From the trusted proxy, token relay hands the proxy the bearer for /api only.
    let r = s.nginx(&b, "GET", "/api/x", &[]).await;
    assert_eq!(r.status, 200);
    assert!(header(&r, "authorization")[0].starts_with("Bearer "));
    assert_eq!(
        header(&r, "dpop"),
        vec![""],
        "a bearer token clears the client's proof"
    );
    // Elsewhere the answer carries the client's own Authorization (none here).
    let r = s.nginx(&b, "GET", "/x", &[]).await;
    assert_eq!(header(&r, "authorization"), vec![""]);

    // The same with routes configured (and routes apply to the original path).
    let s = setup_with(Options {
        config_file: Some(
            "[[routes]]\npath = \"/admin/*\"\nrequired_claims = { groups = [\"admins\"] }\n".into(),
        ),
        ..Options::default()
    })
    .await;
    let b = s.signed_in().await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    let stranger = Browser::from_address("127.0.0.2");
    let r = s.verify(&stranger, "", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("untrusted_forwarder"), "{}", r.body);
    let r = s.nginx(&b, "GET", "/Admin/x", &[]).await;
    assert_eq!(r.status, 403, "the route applies to the original path");
    assert!(r.body.contains("route_refused"), "{}", r.body);
    assert_eq!(s.nginx(&b, "GET", "/x", &[]).await.status, 200);
}

/// S06 and W01 on the original request: a cross-site write or a cross-origin
/// WebSocket gets 403 even with a valid session.
#[tokio::test]
async fn cross_site_writes_and_websockets_are_refused() {
    let s = setup().await;
    let b = s.signed_in().await;
    let r = s
        .nginx(&b, "POST", "/x", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("csrf_refused"));
    let own = s.gw.url.clone();
    let r = s.nginx(&b, "POST", "/x", &[("origin", &own)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s
        .nginx(
            &b,
            "GET",
            "/ws",
            &[("upgrade", "websocket"), ("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("cross_origin_websocket"));
}

/// D03: unknown paths under the prefix get the gateway's 404, with or without a
/// session, however they are spelled; never the upstream.
#[tokio::test]
async fn d03_unknown_paths_under_the_prefix_never_reach_the_upstream() {
    let s = setup().await;
    let b = s.signed_in().await;
    let calls = s.up.calls();
    for who in [&b, &Browser::new()] {
        for path in [
            "/auth/not-a-route",
            "/auth/",
            "/auth",
            "/AUTH/login",
            "/%61uth/x",
            "//auth/x",
            "/x/../auth/y",
        ] {
            let r = who
                .get(&s.gw.at(path), &[("accept", "application/json")])
                .await;
            assert_eq!(r.status, 404, "{path}: {}", r.body);
        }
    }
    assert_eq!(s.up.calls(), calls);
    // Outside the prefix, as before.
    assert_eq!(b.get(&s.gw.at("/authority"), &[]).await.status, 200);
}

/// Forward-auth only (no upstream): every path outside the prefix answers 404, except
/// the health endpoints.
#[tokio::test]
async fn forward_auth_only_answers_404_outside_the_prefix() {
    let p = HostileProvider::start().await;
    let gw = TestGateway::start_with(
        &p.issuer,
        Options::default().env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    let anonymous = Browser::new();
    for path in ["/", "/app", "/public/x"] {
        let r = anonymous
            .get(&gw.at(path), &[("accept", "text/html")])
            .await;
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(anonymous.get(&gw.at("/healthz"), &[]).await.status, 200);
    let b = Browser::new();
    p.sign_in(&gw, &b).await;
    let r = b
        .get(
            &gw.at("/auth/verify"),
            &[("x-forwarded-uri", "/app"), ("x-forwarded-method", "GET")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Lost rotations (docs/forward-auth.md): a browser behind a proxy that drops the auth
/// answer's `Set-Cookie` (Caddy 2.6) keeps presenting its first id through every refresh
/// and is never signed out; the refreshes happen all the same.
#[tokio::test]
async fn a_browser_that_never_receives_a_rotated_cookie_stays_signed_in() {
    let s = setup().await;
    let b = s.signed_in().await;
    let held = format!("portcullis={}", b.cookie("portcullis").unwrap());
    // A client without a cookie store: only the first id, every time.
    let never_stores_cookies = reqwest::Client::new();
    let ask = || {
        never_stores_cookies
            .get(s.gw.at("/auth/verify"))
            .header("cookie", &held)
            .header("x-original-uri", "/app")
            .header("x-original-method", "GET")
            .send()
    };
    for round in 1..=3 {
        // Past the refresh point and the rotation grace window.
        s.gw.clock.advance(250);
        let r = ask().await.unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        assert_eq!(
            r.headers().get_all("set-cookie").iter().count(),
            1,
            "the new id is offered"
        );
        assert_eq!(s.p.refresh_calls(), round);
    }
    // The session is still one session, and the held id still works between refreshes.
    assert_eq!(ask().await.unwrap().status(), 200);
    assert_eq!(s.gw.session_count().await, 1);
}

/// G10: group names with `,` or `%` are percent-encoded in `X-Auth-Request-Groups`, so
/// a name never splits into extra groups an app could grant.
#[tokio::test]
async fn g10_group_names_never_split_into_extra_groups() {
    let s = setup().await;
    let b = Browser::new();
    s.p.sign_in_with(&s.gw, &b, |claims| {
        claims["groups"] = serde_json::json!(["staff,admins", "100%", "ops"]);
    })
    .await;
    let r = s.nginx(&b, "GET", "/app", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        header(&r, "x-auth-request-groups"),
        ["staff%2Cadmins,100%25,ops"]
    );
}
