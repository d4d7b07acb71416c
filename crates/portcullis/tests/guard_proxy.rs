//! The guard and the reverse proxy in front of a real (test) upstream: who gets
//! through, what the upstream sees, CSRF, logout, streaming and WebSockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::browser::Resp;
use support::gateway::Options;
use support::upstream::{echoed, echoed_headers};
use support::{Browser, HostileProvider, TestGateway, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        .env("PORTCULLIS_PUBLIC_PATHS", "/public/*,/healthcheck");
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

    async fn api(&self, b: &Browser, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut h = vec![("accept", "application/json")];
        h.extend_from_slice(headers);
        b.request(method, &self.gw.at(path), &h, None).await
    }

    async fn user_id(&self, b: &Browser) -> String {
        b.get(&self.gw.at("/auth/session"), &[]).await.json()["user"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

// --- S04, S05: no session ------------------------------------------------------------

#[tokio::test]
async fn s04_forged_truncated_and_deleted_ids_never_reach_the_upstream() {
    let s = setup().await;
    let real = s.signed_in().await;
    let id = real.cookie("portcullis").unwrap();
    let forged = portcullis::random::random_token();
    for value in [
        forged.as_str(),
        &id[..42],
        &id[1..],
        "",
        "deleted",
        &format!("{id}x"),
    ] {
        let b = Browser::new();
        b.set_cookie("portcullis", value);
        let api = s.api(&b, Method::GET, "/app/data", &[]).await;
        assert_eq!(api.status, 401, "cookie {value:?}");
        let page = b.navigate(&s.gw.at("/app/page")).await;
        assert_eq!(page.status, 302);
    }
    assert_eq!(s.up.calls(), 0, "the upstream was never called");
    assert_eq!(
        s.api(&real, Method::GET, "/app/data", &[]).await.status,
        200
    );
    assert_eq!(s.up.calls(), 1);
}

#[tokio::test]
async fn s05_navigations_are_redirected_and_api_calls_get_401_json() {
    let s = setup().await;
    let b = Browser::new();
    let page = b.navigate(&s.gw.at("/reports/q3?year=2026")).await;
    assert_eq!(page.status, 302);
    assert_eq!(
        page.location().unwrap(),
        "/auth/login?return_to=%2Freports%2Fq3%3Fyear%3D2026"
    );
    // Without Sec-Fetch-*: Accept text/html on GET is a page…
    let html = b.get(&s.gw.at("/x"), &[("accept", "text/html")]).await;
    assert_eq!(html.status, 302);
    // …while fetch/XHR and JSON are API calls.
    for headers in [
        vec![("accept", "application/json")],
        vec![("sec-fetch-mode", "cors"), ("accept", "text/html")],
        vec![("x-requested-with", "XMLHttpRequest")],
    ] {
        let r = b.get(&s.gw.at("/x"), &headers).await;
        assert_eq!(r.status, 401, "{headers:?}");
        let v = r.json();
        assert_eq!(v["error"], "not_signed_in");
        assert_eq!(v["login_url"], format!("{}/auth/login", s.gw.url));
    }
    let post = b
        .request(
            Method::POST,
            &s.gw.at("/x"),
            &[("accept", "text/html")],
            None,
        )
        .await;
    assert_eq!(
        post.status, 401,
        "a POST is never a navigation without Sec-Fetch-Mode"
    );
    assert_eq!(s.up.calls(), 0);
}

// --- S06: CSRF --------------------------------------------------------------------

#[tokio::test]
async fn s06_cross_site_writes_are_refused_before_the_upstream() {
    let s = setup().await;
    let b = s.signed_in().await;
    for headers in [
        vec![("origin", "https://evil.example.com")],
        vec![("origin", "https://evil.example.com"), ("x-csrf", "1")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![],
    ] {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let r = s.api(&b, method.clone(), "/app/items", &headers).await;
            assert_eq!(r.status, 403, "{method} {headers:?}");
            assert!(r.body.contains("csrf_refused"));
        }
    }
    assert_eq!(s.up.calls(), 0, "no cross-site write reached the upstream");
    let own_origin = s.gw.url.clone();
    for headers in [
        vec![("origin", own_origin.as_str())],
        vec![("sec-fetch-site", "same-origin")],
        vec![("x-csrf", "1")],
    ] {
        assert_eq!(
            s.api(&b, Method::POST, "/app/items", &headers).await.status,
            200,
            "{headers:?}"
        );
    }
}

#[tokio::test]
async fn s06_foreign_cors_preflights_get_no_credentials() {
    let s = setup().await;
    let b = s.signed_in().await;
    let pre = b
        .request(
            Method::OPTIONS,
            &s.gw.at("/cors"),
            &[
                ("origin", "https://evil.example.com"),
                ("access-control-request-method", "POST"),
            ],
            None,
        )
        .await;
    assert_eq!(pre.status, 403);
    assert!(
        pre.headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-"))
    );
    assert_eq!(s.up.calls(), 0);
    // A credentialed cross-origin read: the upstream's careless "allow credentials" is removed.
    let get = s
        .api(
            &b,
            Method::GET,
            "/cors",
            &[("origin", "https://evil.example.com")],
        )
        .await;
    assert!(
        get.headers
            .get("access-control-allow-credentials")
            .is_none()
    );
}

// --- P01, P02, P06, P07, P08: what the upstream sees --------------------------------

#[tokio::test]
async fn p01_spoofed_identity_headers_never_reach_the_upstream() {
    let s = setup().await;
    let b = s.signed_in().await;
    let ours = s.user_id(&b).await;
    let r = s
        .api(
            &b,
            Method::GET,
            "/app/whoami",
            &[
                ("x-user-id", "admin"),
                ("X-USER-ID", "root"),
                ("x_user_id", "admin"),
                ("X-User-Email", "ceo@example.com"),
                ("x-user-name", "Mallory"),
                ("x-user-role", "admin"),
                ("X-User-Provider", "corp"),
                ("X-User-Auth-Method", "dpop"),
            ],
        )
        .await;
    let v = r.json();
    assert_eq!(
        echoed(&v, "x-user-id"),
        vec![ours],
        "exactly one X-User-Id, ours"
    );
    assert_eq!(echoed(&v, "x-user-email"), vec!["alice@example.com"]);
    assert_eq!(echoed(&v, "x-user-name"), vec!["Alice Example"]);
    assert_eq!(
        echoed(&v, "x-user-provider"),
        vec!["default"],
        "exactly one X-User-Provider, the session's"
    );
    assert_eq!(
        echoed(&v, "x-user-auth-method"),
        vec!["session"],
        "exactly one X-User-Auth-Method, the gateway's"
    );
    for (name, _) in echoed_headers(&v) {
        let c = name.replace('_', "-");
        assert!(
            !c.starts_with("x-user-")
                || [
                    "x-user-id",
                    "x-user-email",
                    "x-user-name",
                    "x-user-provider",
                    "x-user-auth-method"
                ]
                .contains(&c.as_str()),
            "{name}"
        );
        assert!(name != "x_user_id" && name != "x-user-role");
    }
}

#[tokio::test]
async fn p02_identity_headers_are_stripped_on_public_paths_and_every_method() {
    let s = setup().await;
    let anonymous = Browser::new();
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
    ] {
        let r = s
            .api(
                &anonymous,
                method.clone(),
                "/public/info",
                &[("x-user-id", "admin"), ("x_user_email", "a@b.c")],
            )
            .await;
        assert_eq!(r.status, 200, "{method}");
        let v = r.json();
        assert!(echoed(&v, "x-user-id").is_empty(), "{method}");
        assert!(echoed(&v, "x_user_email").is_empty());
    }
    // Signed in, OPTIONS (not a preflight) is proxied with our identity only.
    let b = s.signed_in().await;
    let ours = s.user_id(&b).await;
    let r = s
        .api(&b, Method::OPTIONS, "/app/x", &[("x-user-id", "admin")])
        .await;
    assert_eq!(echoed(&r.json(), "x-user-id"), vec![ours]);
}

#[tokio::test]
async fn p06_no_bypass_by_user_agent_or_other_client_headers() {
    let s = setup().await;
    let b = Browser::new();
    for headers in [
        vec![(
            "user-agent",
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
        )],
        vec![("user-agent", "kube-probe/1.29")],
        vec![("x-forwarded-for", "127.0.0.1"), ("x-real-ip", "127.0.0.1")],
        vec![
            ("x-original-url", "/public/x"),
            ("x-rewrite-url", "/public/x"),
        ],
        vec![
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-prefix", "/public"),
        ],
        vec![("authorization", "Bearer anything")],
        vec![("x-user-id", "admin")],
    ] {
        let r = s.api(&b, Method::GET, "/app/secret", &headers).await;
        assert_eq!(r.status, 401, "{headers:?}");
    }
    assert_eq!(s.up.calls(), 0);
}

#[tokio::test]
async fn p07_claims_with_crlf_nul_or_huge_values_never_inject_headers() {
    let s = setup().await;
    let b = Browser::new();
    s.p.sign_in_with(&s.gw, &b, |c| {
        c["name"] = json!("Eve\r\nX-Injected: 1\u{0}Ünï")
    })
    .await;
    let v = s.api(&b, Method::GET, "/app/x", &[]).await.json();
    assert!(echoed(&v, "x-injected").is_empty());
    assert_eq!(
        echoed(&v, "x-user-name"),
        vec!["Eve%0D%0AX-Injected: 1%00%C3%9Cn%C3%AF"]
    );
    // Huge claims: the stored name is clipped to 256 characters; one that still encodes
    // to more than 1 KiB (multi-byte) is left out rather than sent.
    let huge = Browser::new();
    s.p.sign_in_with(&s.gw, &huge, |c| c["name"] = json!("n".repeat(5000)))
        .await;
    let v = s.api(&huge, Method::GET, "/app/x", &[]).await.json();
    assert_eq!(echoed(&v, "x-user-name"), vec!["n".repeat(256)]);
    let wide = Browser::new();
    s.p.sign_in_with(&s.gw, &wide, |c| c["name"] = json!("🦀".repeat(300)))
        .await;
    let v = s.api(&wide, Method::GET, "/app/x", &[]).await.json();
    assert!(
        echoed(&v, "x-user-name").is_empty(),
        "an oversized value is left out"
    );
    assert_eq!(echoed(&v, "x-user-id").len(), 1);
}

#[tokio::test]
async fn p08_the_gateway_cookies_are_removed_before_the_upstream() {
    let s = setup().await;
    let b = s.signed_in().await;
    b.set_cookie("app_pref", "dark");
    let v = s.api(&b, Method::GET, "/app/x", &[]).await.json();
    let cookies = echoed(&v, "cookie").join("; ");
    assert!(cookies.contains("app_pref=dark"));
    assert!(!cookies.contains("portcullis"), "{cookies}");
    assert!(!cookies.contains(&b.cookie("portcullis").unwrap()));
}

// --- P03: path confusion -----------------------------------------------------------

#[tokio::test]
async fn p03_decisions_and_forwarding_use_the_normalised_path_only() {
    use support::browser::raw_request;
    let s = setup().await;
    let json = [("accept", "application/json")];
    // Public, and forwarded in the normalised form the decision was made on.
    for (target, forwarded) in [
        ("/public/ok", "/public/ok"),
        ("/public//ok", "/public/ok"),
        ("/healthcheck;v=1", "/healthcheck"),
        ("/admin/../public/x", "/public/x"),
        ("/public/./a/%2e%2e/b?q=1", "/public/b?q=1"),
    ] {
        let (status, body) = raw_request(&s.gw.url, "GET", target, &json).await;
        assert_eq!(status, 200, "{target}");
        assert!(
            body.contains(&format!("\"uri\":\"{forwarded}\"")),
            "{target} was forwarded as: {body}"
        );
    }
    let public_calls = s.up.calls();
    // Not public once normalised: a session is needed.
    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "//admin",
        "/PUBLIC/x",
        "/publicx",
        "/healthcheck/../admin",
        "/public/../../public/x/../../admin",
    ] {
        let (status, _) = raw_request(&s.gw.url, "GET", target, &json).await;
        assert!(status == 401 || status == 400, "{target}: {status}");
    }
    // Read differently by different servers: refused outright.
    for target in [
        "/public/..;/admin",
        "/admin/..;/public/x",
        "/admin/..%3B/public/x",
        "/public%2f..%2fadmin",
        "/public/%252e%252e/admin",
        "/public/..%5cadmin",
        "/public/%00",
        "/public/%ff",
        "/../admin",
    ] {
        let (status, body) = raw_request(&s.gw.url, "GET", target, &json).await;
        assert_eq!(status, 400, "{target}");
        assert!(body.contains("ambiguous_path"), "{target}: {body}");
    }
    assert_eq!(
        s.up.calls(),
        public_calls,
        "nothing else reached the upstream"
    );
    // Signed in: the upstream gets the normalised path too.
    let b = s.signed_in().await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    let (status, body) = raw_request(
        &s.gw.url,
        "GET",
        "/app/./x/../y;jsessionid=1//z?a=b",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("\"uri\":\"/app/y/z?a=b\""), "{body}");
}

// --- P04: forwarded headers --------------------------------------------------------

#[tokio::test]
async fn p04_g05_forwarded_headers_are_trusted_only_from_configured_proxies() {
    let s = setup().await;
    let b = s.signed_in().await;
    let v = s
        .api(
            &b,
            Method::GET,
            "/app/x",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil.example.com"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=6.6.6.6;host=evil.example.com"),
                ("x-original-url", "/admin"),
            ],
        )
        .await
        .json();
    assert_eq!(echoed(&v, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(
        echoed(&v, "x-forwarded-host"),
        vec![s.gw.url.trim_start_matches("http://").to_owned()]
    );
    assert_eq!(echoed(&v, "x-forwarded-proto"), vec!["http"]);
    assert!(echoed(&v, "forwarded").is_empty() && echoed(&v, "x-original-url").is_empty());

    let trusted =
        setup_with(Options::default().env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1/32"))
            .await;
    let b = trusted.signed_in().await;
    let v = trusted
        .api(
            &b,
            Method::GET,
            "/app/x",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example.com"),
                ("x-real-ip", "203.0.113.9"),
                ("x-original-url", "/admin"),
                ("x-rewrite-url", "/admin"),
                ("x-original-uri", "/admin"),
                ("x-original-method", "DELETE"),
                ("x-forwarded-uri", "/admin"),
                ("x-forwarded-method", "DELETE"),
                ("forwarded", "for=6.6.6.6;host=evil.example.com"),
                ("x-forwarded-port", "8443"),
                ("x-forwarded-prefix", "/admin"),
                ("x-forwarded-server", "evil"),
                ("x_original_url", "/admin"),
                ("x_forwarded_host", "evil.example.com"),
                ("x-forwarded-scheme", "https"),
                ("x-forwarded-ssl", "on"),
            ],
        )
        .await
        .json();
    // A trusted proxy's chain is kept (the client address is its to tell) …
    assert_eq!(
        echoed(&v, "x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(echoed(&v, "x-real-ip"), vec!["203.0.113.9"]);
    // … but G05: the scheme and host are the public URL's, and no routing header
    // reaches the app from any peer, in any spelling.
    assert_eq!(echoed(&v, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        echoed(&v, "x-forwarded-host"),
        vec![trusted.gw.url.trim_start_matches("http://").to_owned()]
    );
    for name in support::ROUTING_HEADERS.iter().chain(&[
        "x_original_url",
        "x_forwarded_host",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
    ]) {
        assert!(echoed(&v, name).is_empty(), "{name} reached the app");
    }
}

// --- O01, O02, O06: logout ---------------------------------------------------------

#[tokio::test]
async fn o01_logout_deletes_the_session_clears_the_cookie_and_revokes() {
    let s = setup().await;
    let b = Browser::new();
    let tokens = s.p.sign_in(&s.gw, &b).await;
    let old = b.cookie("portcullis").unwrap();
    let r = s
        .api(&b, Method::POST, "/auth/logout", &[("x-csrf", "1")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], true);
    let cleared = r.set_cookie_named("portcullis").unwrap();
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("HttpOnly") && cleared.contains("Path=/")
    );
    assert_eq!(
        s.p.script.lock().unwrap().revoked,
        vec![tokens["refresh_token"].as_str().unwrap().to_owned()]
    );
    assert_eq!(s.gw.session_count().await, 0);
    let replay = Browser::new();
    replay.set_cookie("portcullis", &old);
    assert_eq!(s.api(&replay, Method::GET, "/app/x", &[]).await.status, 401);
    // A form post (navigation) is sent home.
    let b2 = s.signed_in().await;
    let nav = b2
        .request(
            Method::POST,
            &s.gw.at("/auth/logout"),
            &[
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-site", "same-origin"),
            ],
            None,
        )
        .await;
    assert_eq!(nav.status, 303);
    assert_eq!(nav.location().as_deref(), Some("/"));
}

#[tokio::test]
async fn o02_cross_site_logout_is_refused() {
    let s = setup().await;
    let b = s.signed_in().await;
    let get = b.navigate(&s.gw.at("/auth/logout")).await;
    assert_eq!(get.status, 405);
    for headers in [
        vec![("origin", "https://evil.example.com")],
        vec![("sec-fetch-site", "cross-site")],
        vec![],
    ] {
        let r = s.api(&b, Method::POST, "/auth/logout", &headers).await;
        assert_eq!(r.status, 403, "{headers:?}");
    }
    assert_eq!(s.gw.session_count().await, 1, "still signed in");
    assert_eq!(
        s.p.counters
            .revocations
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn o06_logout_signs_out_locally_when_revocation_fails() {
    let s = setup().await;
    let b = s.signed_in().await;
    s.p.script.lock().unwrap().revoke_status = Some(503);
    let r = s
        .api(&b, Method::POST, "/auth/logout", &[("x-csrf", "1")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.p.counters
            .revocations
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(s.gw.session_count().await, 0);
    assert_eq!(s.api(&b, Method::GET, "/app/x", &[]).await.status, 401);
}

// --- R01, R02, R06: robustness ------------------------------------------------------

#[tokio::test]
async fn r01_oversized_headers_are_refused_and_login_transactions_bounded() {
    let s = setup().await;
    let b = Browser::new();
    let big = "c".repeat(200 * 1024);
    for path in ["/app/x", "/auth/session", "/auth/login"] {
        let r = s
            .api(
                &b,
                Method::GET,
                path,
                &[("cookie", &format!("portcullis={big}"))],
            )
            .await;
        assert_eq!(r.status, 431, "{path}");
        let many: Vec<(String, String)> = (0..400)
            .map(|i| (format!("x-h{i}"), "v".repeat(100)))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(s.api(&b, Method::GET, path, &refs).await.status, 431);
    }
    assert_eq!(s.up.calls(), 0);
    // Hundreds of logins from one browser: only its newest 16 transactions are kept.
    let store = s.gw.gateway.store();
    let first = Browser::new();
    let a = s.gw.start_login(&first, None).await;
    for _ in 0..20 {
        first.navigate(&s.gw.at("/auth/login")).await;
    }
    let tx = store
        .take_transaction(&portcullis::random::sha256_hex(a.state.as_bytes()))
        .await
        .unwrap();
    assert!(tx.is_none(), "the oldest transaction was evicted");
}

#[tokio::test]
async fn r02_malformed_requests_are_answered_with_4xx() {
    let s = setup().await;
    let b = s.signed_in().await;
    for path in ["/app/%00", "/app/%ff%fe", "/app/%zz", "/app/a%2fb"] {
        let r = s.api(&b, Method::GET, path, &[]).await;
        assert_eq!(r.status, 400, "{path}");
        assert!(r.body.contains("ambiguous_path"));
    }
    let empty = Browser::new();
    let r = s
        .api(&empty, Method::GET, "/app/x", &[("cookie", "")])
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn r06_odd_session_ids_are_401_without_store_errors() {
    let s = setup().await;
    for value in [
        "*",
        "%",
        "%00",
        "a\u{7f}b",
        "' OR 1=1 --",
        "../../x",
        "\u{202e}abc",
        "AAAA=",
        "{}",
        &"A".repeat(4096),
    ] {
        let b = Browser::new();
        if reqwest::header::HeaderValue::from_str(&format!("portcullis={value}")).is_err() {
            continue;
        }
        b.set_cookie("portcullis", value);
        let r = s.api(&b, Method::GET, "/app/x", &[]).await;
        assert_eq!(r.status, 401, "{value:?}");
    }
    assert_eq!(s.up.calls(), 0);
}

// --- Streaming and upgrades ---------------------------------------------------------

fn rss_peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn fifty_megabytes_stream_both_ways_without_being_held_in_memory() {
    let s = setup().await;
    let b = s.signed_in().await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    let client = reqwest::Client::new();
    // Warm up, then measure the peak resident set across both transfers.
    let _ = client
        .get(s.gw.at("/download?bytes=1024"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    let before = rss_peak_kib();
    const SIZE: u64 = 50 * 1024 * 1024;

    let mut resp = client
        .get(s.gw.at(&format!("/download?bytes={SIZE}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, SIZE);

    let upload = reqwest::Body::wrap(support::upstream::Generated { remaining: SIZE });
    let resp = client
        .post(s.gw.at("/upload"))
        .header("cookie", &cookie)
        .header("x-csrf", "1")
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["bytes"],
        SIZE
    );

    let grown_mib = (rss_peak_kib().saturating_sub(before)) / 1024;
    eprintln!("peak RSS growth while streaming 2 x 50 MiB: {grown_mib} MiB");
    assert!(
        grown_mib < 25,
        "peak RSS grew by {grown_mib} MiB while moving 2 × 50 MiB"
    );
}

#[tokio::test]
async fn a_websocket_echo_passes_through_the_proxy() {
    let s = setup().await;
    let b = s.signed_in().await;
    let (mut tcp, head) =
        send_handshake(&s, &b, "/ws", "dGhlIHNhbXBsZSBub25jZQ==", Some(&s.gw.url)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A masked text frame "hello".
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
}

/// Sends a WebSocket handshake for `path` with the session of `b` (and `origin`, if
/// any); the connection and the answer's head.
async fn send_handshake(
    s: &Setup,
    b: &Browser,
    path: &str,
    key: &str,
    origin: Option<&str>,
) -> (tokio::net::TcpStream, String) {
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    support::browser::websocket_handshake(&s.gw.url, path, key, origin, &cookie).await
}

/// The head of the answer to a WebSocket handshake (see [`send_handshake`]).
async fn websocket_handshake(
    s: &Setup,
    b: &Browser,
    path: &str,
    key: &str,
    origin: Option<&str>,
) -> String {
    send_handshake(s, b, path, key, origin).await.1
}

#[tokio::test]
async fn c01_the_app_cannot_plant_or_replace_the_gateway_cookies() {
    let s = setup().await;
    let b = s.signed_in().await;
    let session = b.cookie("portcullis").unwrap();
    let r = b.get(&s.gw.at("/set-cookies"), &[]).await;
    assert_eq!(r.status, 200);
    let set: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set, ["app=1; Path=/"], "only the app's own cookie passes");
    assert_eq!(b.cookie("portcullis").unwrap(), session);
    assert_eq!(
        b.get(&s.gw.at("/x"), &[]).await.status,
        200,
        "still signed in"
    );
}

#[tokio::test]
async fn w01_cross_origin_websockets_are_refused_before_the_upstream() {
    let s = setup().await;
    let b = s.signed_in().await;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let port = s.gw.url.rsplit(':').next().unwrap().to_owned();
    for origin in [
        "https://evil.example".to_owned(),
        format!("http://sibling.localhost:{port}"),
        "http://127.0.0.1:1".to_owned(),
        format!("https://127.0.0.1:{port}"),
        "null".to_owned(),
    ] {
        let head = websocket_handshake(&s, &b, "/ws", key, Some(&origin)).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{origin}: {head}");
    }
    assert_eq!(
        s.up.calls(),
        0,
        "the upstream never saw a cross-origin handshake"
    );
    // Our own origin, and a client that sends none (not a browser), pass.
    let head = websocket_handshake(&s, &b, "/ws", key, Some(&s.gw.url)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let head = websocket_handshake(&s, &b, "/ws", key, None).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test]
async fn w03_a_switch_without_the_right_accept_is_not_a_tunnel() {
    let s = setup().await;
    let b = s.signed_in().await;
    // The upstream answers with the accept value of RFC 6455's sample key, not ours.
    let head = websocket_handshake(&s, &b, "/ws-forged", "b3RoZXIga2V5IGhlcmUhIQ==", None).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    // With the key that value belongs to, the same answer is believed.
    let head = websocket_handshake(&s, &b, "/ws-forged", "dGhlIHNhbXBsZSBub25jZQ==", None).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test]
async fn a_websocket_without_a_session_is_refused() {
    let s = setup().await;
    let addr = s.gw.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 12];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 401");
    assert_eq!(s.up.calls(), 0);
}

// --- Upstream faults ----------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_upstream_gives_502() {
    let p = HostileProvider::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start_with(
        &p.issuer,
        Options::default().env("PORTCULLIS_UPSTREAM", &format!("http://{closed}")),
    )
    .await;
    let b = Browser::new();
    p.sign_in(&gw, &b).await;
    let r = b.get(&gw.at("/x"), &[("accept", "application/json")]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
}

#[tokio::test]
async fn a_stalled_upstream_gives_504() {
    // An upstream that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let p = HostileProvider::start().await;
    let options = Options {
        proxy_timeouts: portcullis::http::proxy::ProxyTimeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_millis(500),
            idle: Duration::from_secs(1),
        },
        ..Default::default()
    }
    .env("PORTCULLIS_UPSTREAM", &format!("http://{addr}"));
    let gw = TestGateway::start_with(&p.issuer, options).await;
    let b = Browser::new();
    p.sign_in(&gw, &b).await;
    let r = b.get(&gw.at("/x"), &[("accept", "application/json")]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
}

// --- Embedding ----------------------------------------------------------------------

#[tokio::test]
async fn embedded_apps_read_the_user_through_the_extractor() {
    use axum::routing::get;
    use portcullis::http::guard::{CurrentUser, GuardLayer};

    let p = HostileProvider::start().await;
    let gw = TestGateway::start(&p.issuer).await;
    let app = axum::Router::new()
        .route(
            "/me",
            get(|u: CurrentUser| async move {
                axum::Json(json!({ "id": u.id.to_string(), "email": u.email }))
            }),
        )
        .route(
            "/header",
            get(|h: axum::http::HeaderMap| async move {
                let ids: Vec<String> = h
                    .get_all("x-user-id")
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                axum::Json(json!(ids))
            }),
        )
        .layer(GuardLayer::new(gw.gateway.clone()))
        .merge(portcullis::http::auth_routes(gw.gateway.clone()));
    let base = support::serve_app(app).await;

    let anonymous = Browser::new();
    assert_eq!(
        anonymous
            .get(&format!("{base}/me"), &[("accept", "application/json")])
            .await
            .status,
        401
    );
    assert_eq!(anonymous.navigate(&format!("{base}/me")).await.status, 302);
    assert_eq!(
        anonymous
            .get(&format!("{base}/auth/session"), &[])
            .await
            .status,
        401,
        "auth routes are merged in"
    );

    let b = Browser::new();
    p.sign_in(&gw, &b).await;
    let id = b.get(&gw.at("/auth/session"), &[]).await.json()["user"]["id"].clone();
    let me = b
        .get(&format!("{base}/me"), &[("accept", "application/json")])
        .await
        .json();
    assert_eq!(me["id"], id);
    assert_eq!(me["email"], "alice@example.com");
    let ids = b
        .get(
            &format!("{base}/header"),
            &[("accept", "application/json"), ("x-user-id", "admin")],
        )
        .await
        .json();
    assert_eq!(ids, json!([id]));
}

// --- Review hardening ---------------------------------------------------------------

/// A CORS preflight carries no cookie. One from a foreign origin is refused (403, no
/// CORS headers: `s06_foreign_cors_preflights_get_no_credentials`); any other is judged
/// like every request by the one decision: without a session, 401, never the upstream.
#[tokio::test]
async fn s06_preflights_are_never_forwarded_without_a_session() {
    let s = setup().await;
    let anonymous = Browser::new();
    let own = s.gw.url.clone();
    for origin in [None, Some(own.as_str())] {
        let mut headers = vec![("access-control-request-method", "DELETE")];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        let r = anonymous
            .request(
                Method::OPTIONS,
                &s.gw.at("/admin/delete?id=1"),
                &headers,
                None,
            )
            .await;
        assert_eq!(r.status, 401, "{origin:?}");
        assert!(
            r.headers
                .keys()
                .all(|k| !k.as_str().starts_with("access-control-"))
        );
    }
    assert_eq!(s.up.calls(), 0, "no preflight reached the upstream");
}

#[tokio::test]
async fn p01_connection_header_cannot_remove_our_identity_headers() {
    let s = setup().await;
    let b = s.signed_in().await;
    let ours = s.user_id(&b).await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    let (status, body) = support::browser::raw_request(
        &s.gw.url,
        "GET",
        "/app/x",
        &[
            ("cookie", &cookie),
            (
                "connection",
                "x-user-id, x-user-email, x-forwarded-for, keep-alive",
            ),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("[\"x-user-id\",\"{ours}\"]")),
        "{body}"
    );
    assert!(
        body.contains("[\"x-user-email\",\"alice@example.com\"]"),
        "{body}"
    );
}

#[tokio::test]
async fn trace_and_connect_are_refused() {
    let s = setup().await;
    let b = s.signed_in().await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    let (status, _) =
        support::browser::raw_request(&s.gw.url, "TRACE", "/app/x", &[("cookie", &cookie)]).await;
    assert_eq!(status, 405);
    let (status, _) = support::browser::raw_request(
        &s.gw.url,
        "CONNECT",
        "example.com:443",
        &[("cookie", &cookie)],
    )
    .await;
    assert!(status == 405 || status == 400, "{status}");
    assert_eq!(s.up.calls(), 0);
}

#[tokio::test]
async fn r01_many_headers_totalling_more_than_32_kib_get_431() {
    let s = setup().await;
    let b = Browser::new();
    let many: Vec<(String, String)> = (0..50)
        .map(|i| (format!("x-h{i}"), "v".repeat(800)))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(s.api(&b, Method::GET, "/public/x", &refs).await.status, 431);
    assert_eq!(
        s.api(&b, Method::GET, "/auth/session", &refs).await.status,
        431
    );
    assert_eq!(s.up.calls(), 0);
}

#[tokio::test]
async fn request_trailers_never_reach_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let b = s.signed_in().await;
    let addr = s.gw.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nCookie: portcullis={}\r\nX-CSRF: 1\r\n\
         Transfer-Encoding: chunked\r\nTrailer: X-User-Id\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nX-User-Id: admin\r\n\r\n",
        b.cookie("portcullis").unwrap()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"bytes\":5"), "{out}");
    assert!(out.contains("\"trailers\":[]"), "{out}");
}

/// A body that yields `chunks` pieces, one every `every`.
struct Slow {
    left: u32,
    every: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Slow {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let every = self.every;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        match timer.as_mut().poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(()) => {
                self.timer = None;
                self.left -= 1;
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
                    axum::body::Bytes::from_static(b"0123456789"),
                ))))
            }
        }
    }
}

#[tokio::test]
async fn uploads_may_outlast_the_response_header_timeout() {
    let options = Options {
        proxy_timeouts: portcullis::http::proxy::ProxyTimeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_millis(300),
            idle: Duration::from_secs(5),
        },
        ..Default::default()
    };
    let s = setup_with(options).await;
    let b = s.signed_in().await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    // Ten chunks 150 ms apart: 1.5 s of upload against a 300 ms header timeout.
    let body = reqwest::Body::wrap(Slow {
        left: 10,
        every: Duration::from_millis(150),
        timer: None,
    });
    let resp = reqwest::Client::new()
        .post(s.gw.at("/upload"))
        .header("cookie", cookie)
        .header("x-csrf", "1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["bytes"],
        100
    );
}

#[tokio::test]
async fn idle_websockets_are_closed() {
    let options = Options {
        proxy_timeouts: portcullis::http::proxy::ProxyTimeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_secs(5),
            idle: Duration::from_millis(300),
        },
        ..Default::default()
    };
    let s = setup_with(options).await;
    let b = s.signed_in().await;
    let addr = s.gw.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: portcullis={}\r\n\r\n",
        b.cookie("portcullis").unwrap()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = support::read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Say nothing: the gateway closes the tunnel after the idle timeout.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle tunnel was not closed");
}

#[tokio::test]
async fn other_upgrades_are_not_passed_on() {
    let s = setup().await;
    let b = s.signed_in().await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    let (status, body) = support::browser::raw_request(
        &s.gw.url,
        "GET",
        "/app/x",
        &[
            ("cookie", &cookie),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !body.contains("\"upgrade\"") && !body.contains("http2-settings"),
        "{body}"
    );
}

#[tokio::test]
async fn slow_header_senders_are_disconnected() {
    let (_p, _gw, mut tcp) = raw_connection(Duration::from_millis(500)).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        closed_by_gateway(&mut tcp).await.is_some(),
        "a slow-loris connection was kept open"
    );
}

/// A gateway that closes idle connections after `keepalive_timeout`, and a raw
/// connection to it.
async fn raw_connection(
    keepalive_timeout: Duration,
) -> (HostileProvider, TestGateway, tokio::net::TcpStream) {
    let p = HostileProvider::start().await;
    let serve = portcullis::http::serve::ServeOptions {
        keepalive_timeout,
        ..Default::default()
    };
    let options = Options {
        serve,
        ..Default::default()
    };
    let gw = TestGateway::start_with(&p.issuer, options).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    (p, gw, tcp)
}

/// What the gateway sent until it closed the connection; `None` if it kept it open
/// for ten seconds.
async fn closed_by_gateway(tcp: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    let read = tcp.read_to_end(&mut answer);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .map(|_| answer)
}

/// D02: a connection that stays idle after an answer is closed after
/// `limits.keepalive_timeout`, so idle keep-alive connections do not hold places.
#[tokio::test]
async fn d02_idle_keepalive_connections_are_closed() {
    let (_p, _gw, mut tcp) = raw_connection(Duration::from_secs(1)).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_by_gateway(&mut tcp)
        .await
        .expect("an idle keep-alive connection was kept open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request itself was answered: {answer}"
    );
}

/// D02: a body the gateway reads itself must arrive within `limits.body_timeout`
/// (408) and be small (413); a client that stops half-way does not hold the handler.
#[tokio::test]
async fn d02_slow_or_large_bodies_the_gateway_reads_are_refused() {
    let p = HostileProvider::start().await;
    let options = Options::default().env("PORTCULLIS_LIMITS_BODY_TIMEOUT", "1s");
    let gw = TestGateway::start_with(&p.issuer, options).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(
        b"POST /auth/backchannel-logout HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n\
          logout_token=",
    )
    .await
    .unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("a half-sent body held the handler");
    let answer = String::from_utf8_lossy(&answer[..read.unwrap()]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    let large = format!("logout_token={}", "a".repeat(70 * 1024));
    let r = reqwest::Client::new()
        .post(format!("{}/auth/backchannel-logout", gw.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(large)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("body_too_large"));
}

/// An embedder's layer between the guard and the proxy that rewrites the path (here: a
/// mount point replaced, carelessly) is honoured: the proxy reuses the guard's path only
/// while the request still has it, and normalises afresh otherwise.
#[tokio::test]
async fn p03_a_path_rewritten_after_the_guard_is_normalised_again() {
    use portcullis::http::guard::GuardLayer;
    use portcullis::http::proxy::{ProxyTimeouts, Upstream};
    use std::sync::Arc;
    use tower::Layer as _;

    let s = setup().await;
    let config = s.gw.gateway.config();
    let upstream = Arc::new(
        Upstream::new(
            &url::Url::parse(&s.up.url).unwrap(),
            &config.public_url,
            ProxyTimeouts::default(),
        )
        .unwrap(),
    );
    let forward = tower::service_fn(move |mut req: axum::http::Request<axum::body::Body>| {
        let upstream = upstream.clone();
        async move {
            // The mount point `/public/app` is replaced before forwarding, carelessly
            // (`/public/./x/y`): the proxy normalises what it forwards again.
            let rest = req
                .uri()
                .path()
                .trim_start_matches("/public/app")
                .to_owned();
            *req.uri_mut() = format!("/public/.{rest}").parse().unwrap();
            Ok::<_, std::convert::Infallible>(upstream.forward(req).await)
        }
    });
    let app = GuardLayer::new(s.gw.gateway.clone()).layer(forward);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(portcullis::http::serve::serve(
        listener,
        axum::Router::new().fallback_service(app),
        Default::default(),
        std::future::pending(),
    ));
    let r = Browser::new()
        .get(&format!("{base}/public/app/x/y"), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["uri"],
        "/public/x/y",
        "the rewritten path, normalised"
    );
}

// --- E01: unverified email ----------------------------------------------------------

/// Signs in with the ID token and UserInfo both saying `verified` about the email
/// (`None`: not saying anything) and returns what the app and `/auth/session` see.
async fn email_seen_with(verified: Option<bool>, assume: bool) -> (Vec<String>, serde_json::Value) {
    let options = if assume {
        Options::default().env("PORTCULLIS_PROVIDER_ASSUME_EMAIL_VERIFIED", "true")
    } else {
        Options::default()
    };
    let s = setup_with(options).await;
    let mut info = json!({"sub": "alice", "email": "alice@example.com", "name": "Alice Example"});
    if let Some(v) = verified {
        info["email_verified"] = json!(v);
    }
    s.p.set_userinfo(Some(info));
    let b = Browser::new();
    s.p.sign_in_with(&s.gw, &b, |claims| {
        let claims = claims.as_object_mut().unwrap();
        claims.remove("name"); // keeps the UserInfo set above
        match verified {
            Some(v) => claims.insert("email_verified".into(), json!(v)),
            None => claims.remove("email_verified"),
        };
    })
    .await;
    let echoed_email = echoed(&b.get(&s.gw.at("/x"), &[]).await.json(), "x-user-email");
    let session = b.get(&s.gw.at("/auth/session"), &[]).await.json();
    (echoed_email, session["user"]["email"].clone())
}

#[tokio::test]
async fn e01_an_unverified_email_never_reaches_the_app() {
    for verified in [None, Some(false)] {
        let (header, session) = email_seen_with(verified, false).await;
        assert!(header.is_empty(), "{verified:?}: {header:?}");
        assert_eq!(session, serde_json::Value::Null, "{verified:?}");
    }
    let (header, session) = email_seen_with(Some(true), false).await;
    assert_eq!(header, ["alice@example.com"]);
    assert_eq!(session, "alice@example.com");
}

#[tokio::test]
async fn e01_assume_email_verified_trusts_a_provider_that_does_not_say() {
    let (header, session) = email_seen_with(None, true).await;
    assert_eq!(header, ["alice@example.com"]);
    assert_eq!(session, "alice@example.com");
    // A provider that says `false` is believed all the same.
    let (header, _) = email_seen_with(Some(false), true).await;
    assert!(header.is_empty(), "{header:?}");
}

// --- W02: tunnels end with their session --------------------------------------------

/// Opens a WebSocket through `s.gw` with `b`'s session; the stream after the 101.
async fn open_websocket(s: &Setup, b: &Browser) -> tokio::net::TcpStream {
    let (tcp, head) = send_handshake(s, b, "/ws", "dGhlIHNhbXBsZSBub25jZQ==", None).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

#[tokio::test]
async fn a_shutdown_lets_open_websockets_work_until_its_deadline_then_closes_them() {
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let s = setup_with(Options {
        shutdown: Some(stopped),
        serve: portcullis::http::serve::ServeOptions {
            shutdown_grace: Duration::from_secs(2),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let b = s.signed_in().await;
    let mut tcp = open_websocket(&s, &b).await;
    support::browser::echo_hi(&mut tcp).await;
    let asked = tokio::time::Instant::now();
    stop.send(()).unwrap();
    // Draining: no new connection is taken, the open WebSocket still carries messages.
    let addr = s.gw.url.trim_start_matches("http://").to_owned();
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), refused)
        .await
        .expect("the listener closes at once");
    support::browser::echo_hi(&mut tcp).await;
    assert!(
        !s.gw.served.is_finished(),
        "the server waits for the WebSocket"
    );
    // At the deadline it is closed and the server returns.
    portcullis_test_support::closed_within(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        asked.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), s.gw.served)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn w02_a_websocket_closes_when_its_session_is_revoked_on_another_instance() {
    let s = setup_with(Options {
        file_store: true,
        ..Options::default()
    })
    .await;
    let b = s.signed_in().await;
    let other_b = s.signed_in().await;
    let user: uuid::Uuid = b.get(&s.gw.at("/auth/session"), &[]).await.json()["user"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut revoked = open_websocket(&s, &b).await;
    // A second instance on the same store ends one session of the user…
    let other = TestGateway::start_with(
        &s.p.issuer,
        Options {
            db_path: s.gw.db_path.clone(),
            ..Options::default()
        },
    )
    .await;
    let session = other
        .gateway
        .store()
        .list_sessions(Some(user), other.clock_now())
        .await
        .unwrap()
        .into_iter()
        .find(|r| {
            let id = portcullis::session::SessionId::parse(&b.cookie("portcullis").unwrap());
            id.is_some_and(|id| id.hash() == r.id_hash)
        })
        .unwrap();
    let mut kept = open_websocket(&s, &other_b).await;
    other
        .gateway
        .store()
        .delete_session(session.family_id)
        .await
        .unwrap();
    // …and its WebSocket on the first instance closes within seconds; the other stays.
    portcullis_test_support::closed_within(&mut revoked, Duration::from_secs(5)).await;
    support::browser::echo_hi(&mut kept).await;
}

#[tokio::test]
async fn w02_a_websocket_closes_at_logout() {
    let s = setup().await;
    let b = s.signed_in().await;
    let mut tcp = open_websocket(&s, &b).await;
    let r = b
        .request(
            Method::POST,
            &s.gw.at("/auth/logout"),
            &[("accept", "application/json"), ("x-csrf", "1")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    portcullis_test_support::closed_within(&mut tcp, Duration::from_secs(5)).await;
}
