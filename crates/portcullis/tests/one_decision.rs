//! G11 (docs/security.md): one table of requests — dot segments raw and encoded, empty
//! segments, `;`, backslashes, method overrides in several spellings and `_method`,
//! WebSocket handshakes from foreign origins with and without `Upgrade`, public and
//! routed paths, anonymous, signed in and with access tokens (`[[bearer]]`) — sent
//! exactly as written (no client-side normalisation) through every door: the reverse proxy, the embeddable layer (an axum
//! app with wildcard routes), `/auth/verify` asked directly (with `X-Original-URI`,
//! `X-Forwarded-Uri` and the absolute `X-Original-URL`), and the real nginx and Caddy
//! with the snippets of docs/forward-auth.md, WebSocket proxying on. For each: the
//! decision, and what the app actually received. No case may reach an app under a path
//! other than the decided one (G01), and the app never gets a method signal the
//! decision did not judge (G04).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis::http::path::{is_normal_form, normalize_path};
use serde_json::Value;
use support::front_proxy::{Front, Proxy};
use support::gateway::Options;
use support::serve_app;
use support::upstream::{echoed, received};
use support::{Browser, HostileProvider, TestGateway, TestUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gateway's rules, the same at every door.
const CONFIG: &str = r#"
public_paths = ["/public/*"]

[[routes]]
path = "/admin/*"
methods = ["GET"]

[[routes]]
path = "/staff/*"
required_claims = { groups = ["nobody-has-this"] }

[[routes]]
path = "/api/admin/*"
required_scopes = ["orders:admin"]

[[bearer]]
issuer = "default"
audiences = ["https://api.example.com"]
paths = ["/api/*"]
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    ReverseProxy,
    Layer,
    VerifyOriginalUri,
    VerifyForwardedUri,
    VerifyOriginalUrl,
    Nginx,
    Caddy,
}

impl Door {
    /// Only normal form passes: forward-auth, where the app gets the client's raw
    /// target, and the layer, which runs after axum has routed on the raw path. The
    /// reverse proxy normalises and forwards the decided path.
    fn is_strict(self) -> bool {
        self != Door::ReverseProxy
    }

    fn is_front_proxy(self) -> bool {
        matches!(self, Door::Nginx | Door::Caddy)
    }

    fn asks_verify_directly(self) -> bool {
        matches!(
            self,
            Door::VerifyOriginalUri | Door::VerifyForwardedUri | Door::VerifyOriginalUrl
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    SignedIn,
    /// An access token for the API (`[[bearer]]`), and no cookie.
    Bearer,
    /// A token no issuer signed, and no cookie.
    ForgedBearer,
}

/// A decision, as the table expects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Passes; the app reads this path and query.
    Pass(&'static str),
    /// Sign in first (these are API calls: 401).
    SignIn,
    /// Refused with this code.
    Refuse(&'static str),
    /// A target the door cannot pass on: 400 (`ambiguous_path` at the normalising doors,
    /// `bad_original_request` at forward-auth).
    BadTarget,
    /// RFC 6750: 401 `invalid_token` with a challenge, never a sign-in.
    InvalidToken,
}

struct Case {
    name: &'static str,
    who: Who,
    method: &'static str,
    target: &'static str,
    /// `{own}` stands for the public origin.
    headers: &'static [(&'static str, &'static str)],
    /// At the reverse proxy (which normalises).
    normalising: Outcome,
    /// At forward-auth and the layer (which refuse what is not in normal form).
    strict: Outcome,
    /// Behind nginx and Caddy, when they change the request first (both drop header
    /// names with `_`, before the gateway and the app see them).
    front: Option<Outcome>,
}

/// The headers of an upgrade to a WebSocket, without which a client may still ask for
/// one (by [`WS`] alone).
const UPGRADE: [(&str, &str); 2] = [("upgrade", "websocket"), ("connection", "Upgrade")];

const WS: [(&str, &str); 2] = [
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
];

/// What a same-origin fetch sends: the CSRF rule lets its writes through, so the
/// route's own rule is what decides.
const SAME_ORIGIN: (&str, &str) = ("sec-fetch-site", "same-origin");
const SAME_SITE: &[(&str, &str)] = &[SAME_ORIGIN];

fn cases() -> Vec<Case> {
    use Outcome::*;
    use Who::*;
    let c = |name, who, method, target, headers, normalising, strict| Case {
        name,
        who,
        method,
        target,
        headers,
        normalising,
        strict,
        front: None,
    };
    vec![
        c(
            "a public path",
            Anonymous,
            "GET",
            "/public/x",
            &[],
            Pass("/public/x"),
            Pass("/public/x"),
        ),
        c(
            "dot segments into a public path",
            Anonymous,
            "GET",
            "/admin/../public/x",
            &[],
            Pass("/public/x"),
            BadTarget,
        ),
        c(
            "dot segments, signed in, around a route",
            SignedIn,
            "GET",
            "/public/../staff/x",
            &[],
            Refuse("route_refused"),
            BadTarget,
        ),
        c(
            "encoded dot segments out of a public path",
            Anonymous,
            "GET",
            "/public/%2e%2e/admin/x",
            &[],
            SignIn,
            BadTarget,
        ),
        c(
            "encoded dot segments, signed in",
            SignedIn,
            "GET",
            "/public/%2E%2E/staff/x",
            &[],
            Refuse("route_refused"),
            BadTarget,
        ),
        c(
            "a single dot",
            SignedIn,
            "GET",
            "/admin/./x",
            &[],
            Pass("/admin/x"),
            BadTarget,
        ),
        c(
            "empty segments",
            SignedIn,
            "GET",
            "//admin//x",
            &[],
            Pass("/admin/x"),
            BadTarget,
        ),
        c(
            "`;` parameters",
            SignedIn,
            "GET",
            "/staff;jsessionid=1/x",
            &[],
            Refuse("route_refused"),
            BadTarget,
        ),
        c(
            "`;` parameters into a public path",
            Anonymous,
            "GET",
            "/public;x=1/y",
            &[],
            Pass("/public/y"),
            BadTarget,
        ),
        c(
            "an encoded slash",
            Anonymous,
            "GET",
            "/public/..%2Fadmin/x",
            &[],
            BadTarget,
            BadTarget,
        ),
        c(
            "a backslash",
            SignedIn,
            "GET",
            "/public/..\\staff/x",
            &[],
            BadTarget,
            BadTarget,
        ),
        c(
            "an escaped letter is normal form",
            SignedIn,
            "GET",
            "/%61dmin/x?_method=DELETE",
            SAME_SITE,
            Refuse("method_refused"),
            Refuse("method_refused"),
        ),
        c(
            "the gateway's own prefix, another case",
            Anonymous,
            "GET",
            "/AUTH/x",
            &[],
            Refuse("not_found"),
            Refuse("not_found"),
        ),
        c(
            "an allowed method",
            SignedIn,
            "GET",
            "/admin/x?q=1",
            &[],
            Pass("/admin/x?q=1"),
            Pass("/admin/x?q=1"),
        ),
        c(
            "a route, ignoring case",
            SignedIn,
            "GET",
            "/STAFF/x",
            &[],
            Refuse("route_refused"),
            Refuse("route_refused"),
        ),
        c(
            "an override header",
            SignedIn,
            "GET",
            "/admin/x",
            &[("x-http-method-override", "DELETE"), SAME_ORIGIN],
            Refuse("method_refused"),
            Refuse("method_refused"),
        ),
        c(
            "another override header, path case",
            SignedIn,
            "GET",
            "/Admin/x",
            &[("x-method-override", "put"), SAME_ORIGIN],
            Refuse("method_refused"),
            Refuse("method_refused"),
        ),
        c(
            "an unreadable override",
            SignedIn,
            "GET",
            "/admin/x",
            &[("x-http-method", "not a method"), SAME_ORIGIN],
            Refuse("method_refused"),
            Refuse("method_refused"),
        ),
        Case {
            front: Some(Pass("/admin/x")),
            ..c(
                "an override header with underscores",
                SignedIn,
                "GET",
                "/admin/x",
                &[("x_http_method_override", "DELETE"), SAME_ORIGIN],
                Refuse("method_refused"),
                Refuse("method_refused"),
            )
        },
        c(
            "`_method` in the query",
            SignedIn,
            "GET",
            "/admin/x?_method=DELETE",
            SAME_SITE,
            Refuse("method_refused"),
            Refuse("method_refused"),
        ),
        c(
            "`_method` escaped in the query",
            SignedIn,
            "GET",
            "/admin/x?%5Fmethod=delete",
            SAME_SITE,
            Refuse("method_refused"),
            Refuse("method_refused"),
        ),
        c(
            "anonymous, protected",
            Anonymous,
            "GET",
            "/app/x",
            &[],
            SignIn,
            SignIn,
        ),
        c(
            "signed in, escapes kept",
            SignedIn,
            "GET",
            "/app/caf%C3%A9?x=%2F",
            &[],
            Pass("/app/caf%C3%A9?x=%2F"),
            Pass("/app/caf%C3%A9?x=%2F"),
        ),
        c(
            "a cross-site write",
            SignedIn,
            "POST",
            "/app/x",
            &[("origin", "https://evil.example")],
            Refuse("csrf_refused"),
            Refuse("csrf_refused"),
        ),
        c(
            "a cross-site write by `_method`",
            SignedIn,
            "GET",
            "/app/x?_method=POST",
            &[("sec-fetch-site", "cross-site")],
            Refuse("csrf_refused"),
            Refuse("csrf_refused"),
        ),
        c(
            "a foreign WebSocket with Upgrade",
            SignedIn,
            "GET",
            "/app/socket",
            &[
                UPGRADE[0],
                UPGRADE[1],
                WS[0],
                WS[1],
                ("origin", "https://evil.example"),
            ],
            Refuse("cross_origin_websocket"),
            Refuse("cross_origin_websocket"),
        ),
        c(
            "a foreign WebSocket without Upgrade",
            SignedIn,
            "GET",
            "/app/socket",
            &[WS[0], WS[1], ("origin", "https://evil.example")],
            Refuse("cross_origin_websocket"),
            Refuse("cross_origin_websocket"),
        ),
        c(
            "a sibling-port WebSocket by its version alone",
            SignedIn,
            "GET",
            "/app/socket",
            &[WS[1], ("origin", "{own}0")],
            Refuse("cross_origin_websocket"),
            Refuse("cross_origin_websocket"),
        ),
        c(
            "our own WebSocket",
            SignedIn,
            "GET",
            "/app/socket",
            &[UPGRADE[0], UPGRADE[1], WS[0], WS[1], ("origin", "{own}")],
            Pass("/app/socket"),
            Pass("/app/socket"),
        ),
        // Machine clients (G13): decided by the token on a token path, the same at
        // every door.
        c(
            "a bearer token on a token path",
            Bearer,
            "GET",
            "/api/orders?page=2",
            &[],
            Pass("/api/orders?page=2"),
            Pass("/api/orders?page=2"),
        ),
        c(
            "a bearer token, dot segments into a token path",
            Bearer,
            "GET",
            "/public/../api/orders",
            &[],
            Pass("/api/orders"),
            BadTarget,
        ),
        c(
            "a bearer token writing cross-site (no CSRF rule for tokens)",
            Bearer,
            "POST",
            "/api/orders",
            &[("origin", "https://evil.example")],
            Pass("/api/orders"),
            Pass("/api/orders"),
        ),
        c(
            "a bearer token without the route's scope",
            Bearer,
            "GET",
            "/api/admin/users",
            &[],
            Refuse("insufficient_scope"),
            Refuse("insufficient_scope"),
        ),
        c(
            "a bearer token off the token paths",
            Bearer,
            "GET",
            "/admin/x",
            &[],
            SignIn,
            SignIn,
        ),
        c(
            "a forged token on a token path",
            ForgedBearer,
            "GET",
            "/api/orders",
            &[],
            InvalidToken,
            InvalidToken,
        ),
        c(
            "a forged token, encoded dot segments into a token path",
            ForgedBearer,
            "GET",
            "/public/%2e%2e/api/orders",
            &[],
            InvalidToken,
            BadTarget,
        ),
    ]
}

/// One answer read off the wire.
struct Answer {
    status: u16,
    body: String,
    /// The `Location` header, if any.
    location: Option<String>,
}

/// Sends `method target` exactly as written over a new connection and reads one
/// answer (Content-Length or chunked), with a deadline.
async fn send(base: &str, method: &str, target: &str, headers: &[(String, String)]) -> Answer {
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), read_answer(&mut tcp))
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} {target}"))
}

async fn read_answer(tcp: &mut tokio::net::TcpStream) -> Answer {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the head");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap();
    let mut body = data[head_end..].to_vec();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let complete = |body: &[u8]| match (length, chunked) {
        (Some(n), _) => body.len() >= n,
        (None, true) => body.ends_with(b"0\r\n\r\n"),
        (None, false) => false,
    };
    while !complete(&body) {
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        location: head
            .lines()
            .find_map(|l| l.strip_prefix("location:"))
            .map(|v| v.trim().to_owned()),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
    out
}

/// Where a door is reached, and what it takes to be signed in there.
struct Entrance {
    door: Door,
    /// The base URL requests go to.
    base: String,
    /// The public origin (`{own}`).
    own: String,
    cookie: String,
    /// A valid access token for the API (the scriptable provider's in process, a
    /// client-credentials token from the npm provider behind the front proxies);
    /// `None`: the bearer rows are skipped.
    token: Option<String>,
    /// How many requests the app has received.
    calls: Arc<AtomicUsize>,
}

/// The app of the layer door: an axum app with wildcard routes behind the guard, which
/// answers what it received (as the test upstream does).
async fn layered_app(gw: &TestGateway) -> (String, Arc<AtomicUsize>) {
    use axum::routing::any;
    use portcullis::http::guard::GuardLayer;
    let calls = Arc::new(AtomicUsize::new(0));
    // Each route says which handler axum chose: the one the decided path names.
    let record = |handler: &'static str| {
        let calls = calls.clone();
        move |req: axum::extract::Request| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut v = received(&req);
                v["handler"] = handler.into();
                axum::Json(v)
            }
        }
    };
    let app = axum::Router::new()
        .route("/", any(record("any")))
        .route("/admin/{*rest}", any(record("admin")))
        .route("/public/{*rest}", any(record("public")))
        .route("/staff/{*rest}", any(record("staff")))
        .route("/{*rest}", any(record("any")))
        .layer(GuardLayer::new(gw.gateway.clone()))
        .merge(portcullis::http::auth_routes(gw.gateway.clone()));
    let base = serve_app(app).await;
    (base, calls)
}

/// The in-process doors: one gateway (reverse proxy to a test app, forward-auth for its
/// trusted 127.0.0.1) and an axum app embedding the same gateway as a layer.
async fn in_process(doors: &[Door]) -> (Vec<Entrance>, (HostileProvider, TestGateway)) {
    let p = HostileProvider::start().await;
    let up = TestUpstream::start().await;
    let gw = TestGateway::start_with(
        &p.issuer,
        Options {
            config_file: Some(CONFIG.to_owned()),
            ..Options::default()
        }
        .env("PORTCULLIS_UPSTREAM", &up.url)
        .env("PORTCULLIS_PROXY_TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    let b = Browser::new();
    p.sign_in(&gw, &b).await;
    let cookie = format!("portcullis={}", b.cookie("portcullis").unwrap());
    let now = gw.clock_now();
    let mut header = p.keys.rs256_header();
    header["typ"] = serde_json::json!("at+jwt");
    let token = p.keys.sign_rs256(
        &header,
        &serde_json::json!({
            "iss": p.issuer, "aud": "https://api.example.com", "sub": "alice",
            "client_id": "cli", "scope": "orders:read", "iat": now, "exp": now + 3600,
        }),
    );
    let (layer_base, layer_calls) = layered_app(&gw).await;
    let entrances = doors
        .iter()
        .map(|&door| Entrance {
            door,
            base: match door {
                Door::Layer => layer_base.clone(),
                _ => gw.url.clone(),
            },
            own: gw.url.clone(),
            cookie: cookie.clone(),
            token: Some(token.clone()),
            calls: match door {
                Door::Layer => layer_calls.clone(),
                _ => up.calls.clone(),
            },
        })
        .collect();
    (entrances, (p, gw))
}

/// The status a door answers an outcome with (these are API calls).
fn expected_status(door: Door, outcome: Outcome) -> &'static [u16] {
    let status: u16 = match outcome {
        Outcome::Pass(_) => 200,
        Outcome::SignIn | Outcome::InvalidToken => 401,
        Outcome::Refuse("not_found") => 404,
        Outcome::Refuse(_) => 403,
        Outcome::BadTarget => 400,
    };
    match (door, status) {
        // nginx passes 2xx, 401 and 403 of an auth answer; anything else is its 500.
        (Door::Nginx, 400 | 404) => &[500],
        (_, 200) => &[200],
        (_, 401) => &[401],
        (_, 403) => &[403],
        (_, 404) => &[404],
        _ => &[400],
    }
}

/// Runs every case through one door and checks the decision and what the app got.
async fn run_table(entrance: &Entrance) -> Vec<String> {
    let door = entrance.door;
    let mut report = Vec::new();
    for case in cases() {
        let expected = match (door.is_front_proxy(), case.front) {
            (true, Some(front)) => front,
            _ if door.is_strict() => case.strict,
            _ => case.normalising,
        };
        let mut headers: Vec<(String, String)> = vec![("accept".into(), "application/json".into())];
        headers.extend(
            case.headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.replace("{own}", &entrance.own))),
        );
        match case.who {
            Who::SignedIn => headers.push(("cookie".into(), entrance.cookie.clone())),
            Who::Bearer => {
                let Some(token) = &entrance.token else {
                    continue;
                };
                headers.push(("authorization".into(), format!("Bearer {token}")));
            }
            Who::ForgedBearer => headers.push((
                "authorization".into(),
                "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".into(),
            )),
            Who::Anonymous => {}
        }
        let (method, target) = if door.asks_verify_directly() {
            let (uri_header, uri) = match door {
                Door::VerifyOriginalUri => ("x-original-uri", case.target.to_owned()),
                Door::VerifyForwardedUri => ("x-forwarded-uri", case.target.to_owned()),
                _ => ("x-original-url", format!("{}{}", entrance.own, case.target)),
            };
            headers.push((uri_header.into(), uri));
            headers.push(("x-original-method".into(), case.method.into()));
            ("GET", "/auth/verify")
        } else {
            (case.method, case.target)
        };
        let before = entrance.calls.load(Ordering::SeqCst);
        let answer = send(&entrance.base, method, target, &headers).await;
        let calls = entrance.calls.load(Ordering::SeqCst) - before;
        let what = format!("{door:?}: {} ({} {})", case.name, case.method, case.target);
        assert!(
            expected_status(door, expected).contains(&answer.status),
            "{what}: expected {expected:?}, got {} {}",
            answer.status,
            answer.body
        );
        // The refusal's stable code, where the door hands the gateway's answer on.
        if let Outcome::Refuse(code) = expected
            && door != Door::Nginx
        {
            assert!(answer.body.contains(code), "{what}: {}", answer.body);
        }
        if expected == Outcome::InvalidToken && door != Door::Nginx {
            assert!(
                answer.body.contains("invalid_token"),
                "{what}: {}",
                answer.body
            );
        }
        if matches!(expected, Outcome::InvalidToken | Outcome::Refuse(_)) {
            assert!(answer.location.is_none(), "{what}: never a sign-in");
        }
        if expected == Outcome::BadTarget && door.asks_verify_directly() {
            assert!(
                answer.body.contains("bad_original_request"),
                "{what}: {}",
                answer.body
            );
        }
        let received = match expected {
            Outcome::Pass(decided) if !door.asks_verify_directly() => {
                assert_eq!(calls, 1, "{what}: the app is called once");
                let v: Value = serde_json::from_str(&answer.body)
                    .unwrap_or_else(|_| panic!("{what}: {}", answer.body));
                let uri = v["uri"].as_str().unwrap().to_owned();
                let (decided_path, decided_query) =
                    decided.split_once('?').unwrap_or((decided, ""));
                let (path, query) = uri.split_once('?').unwrap_or((uri.as_str(), ""));
                // G01: the app reads exactly the decided path, and cannot resolve it to
                // another (it is in normal form, so any reader decodes it alike).
                assert!(is_normal_form(path), "{what}: the app received {uri}");
                assert_eq!(
                    normalize_path(path).unwrap(),
                    normalize_path(decided_path).unwrap(),
                    "{what}: the app received {uri}"
                );
                assert_eq!(query, decided_query, "{what}");
                // The layer's app routed by itself: on the decided path's handler.
                if door == Door::Layer {
                    let handler = ["admin", "public", "staff"]
                        .into_iter()
                        .find(|h| decided_path.starts_with(&format!("/{h}/")))
                        .unwrap_or("any");
                    assert_eq!(v["handler"], handler, "{what}: {uri}");
                }
                // G04: no method signal the decision did not judge (here: the names
                // with `_` the front proxies drop before the gateway sees them).
                for (name, _) in case.headers.iter().filter(|(n, _)| n.contains("method")) {
                    assert!(
                        echoed(&v, name).is_empty(),
                        "{what}: {name} reached the app"
                    );
                }
                uri
            }
            _ => {
                assert_eq!(calls, 0, "{what}: the app was called");
                "—".to_owned()
            }
        };
        report.push(format!(
            "| {} | `{} {}` | {} | {} |",
            case.name, case.method, case.target, answer.status, received
        ));
    }
    report
}

#[tokio::test]
async fn g11_the_table_at_the_in_process_doors() {
    let doors = [
        Door::ReverseProxy,
        Door::Layer,
        Door::VerifyOriginalUri,
        Door::VerifyForwardedUri,
        Door::VerifyOriginalUrl,
    ];
    let (entrances, _running) = in_process(&doors).await;
    for entrance in entrances {
        let report = run_table(&entrance).await;
        eprintln!("{:?}\n{}", entrance.door, report.join("\n"));
    }
}

async fn behind(kind: Proxy) {
    let Some(f) = Front::start_with(kind, Some(CONFIG.to_owned())).await else {
        return;
    };
    let b = f.signed_in("alice").await;
    let entrance = Entrance {
        door: match kind {
            Proxy::Nginx => Door::Nginx,
            Proxy::Caddy => Door::Caddy,
        },
        base: f.url.clone(),
        own: f.url.clone(),
        cookie: format!("portcullis={}", b.cookie("portcullis").unwrap()),
        token: Some(f.machine_token().await),
        calls: f.up.calls.clone(),
    };
    let report = run_table(&entrance).await;
    eprintln!("{:?}\n{}", entrance.door, report.join("\n"));
}

#[tokio::test]
async fn g11_the_table_behind_nginx() {
    behind(Proxy::Nginx).await;
}

#[tokio::test]
async fn g11_the_table_behind_caddy() {
    behind(Proxy::Caddy).await;
}
