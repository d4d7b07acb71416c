//! `[[routes]]` against the real npm `oidc-provider` (its users carry a `groups` claim):
//! who may reach which paths, with which methods; P03 path tricks and case variants
//! cannot reach a route around its rule; a group removed at the provider takes effect
//! at the next refresh. Skips with one line when Node or `npm ci` is missing; `.ci/run`
//! requires it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::json;
use support::gateway::Options;
use support::oidc_provider::RealProvider;
use support::{Browser, TestGateway, TestUpstream};

const ROUTES: &str = r#"
public_paths = ["/public/*"]

[[routes]]
path = "/admin/reports/*"
methods = ["GET"]
required_claims = { groups = ["admins", "staff"] }

[[routes]]
path = "/admin/*"
methods = ["GET", "POST"]
required_claims = { groups = ["admins"] }

[[routes]]
path = "/billing/*"
allowed_email_domains = ["example.com"]
"#;

struct Setup {
    op: RealProvider,
    up: TestUpstream,
    gw: TestGateway,
}

async fn setup() -> Option<Setup> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let client = json!([{
        "client_id": "app",
        "token_endpoint_auth_method": "none",
        "redirect_uris": [format!("{gateway_url}/auth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    }]);
    let op = RealProvider::start(client, &[("ID_TOKEN_TTL", "86400")]).await?;
    let up = TestUpstream::start().await;
    let options = Options {
        listener: Some(listener),
        config_file: Some(ROUTES.to_owned()),
        ..Options::default()
    }
    .env("PORTCULLIS_UPSTREAM", &up.url);
    let gw = TestGateway::start_with(&op.issuer, options).await;
    Some(Setup { op, up, gw })
}

impl Setup {
    async fn signed_in(&self, user: &str) -> Browser {
        let b = Browser::new();
        let r = self.gw.sign_in_through_form(&b, user, user, "/").await;
        assert_eq!(r.status, 303, "{}", r.body);
        b
    }

    /// `method path` as an API call from this site; the status and whether the
    /// upstream was called.
    async fn call(&self, b: &Browser, method: Method, path: &str) -> (u16, bool, String) {
        let before = self.up.calls();
        let origin = self.gw.url.clone();
        let r = b
            .request(
                method,
                &self.gw.at(path),
                &[("accept", "application/json"), ("origin", &origin)],
                None,
            )
            .await;
        (r.status, self.up.calls() > before, r.body)
    }

    fn refusals(&self) -> u64 {
        self.gw
            .gateway
            .sessions()
            .security_events()
            .snapshot()
            .get("route_refused")
            .copied()
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn routes_admit_the_group_and_refuse_everyone_else() {
    let Some(s) = setup().await else { return };
    let alice = s.signed_in("alice").await; // admins, staff
    let bob = s.signed_in("bob").await; // staff
    assert_eq!(s.call(&alice, Method::GET, "/admin/users").await.0, 200);
    assert_eq!(s.call(&alice, Method::POST, "/admin/users").await.0, 200);
    let (status, reached, body) = s.call(&bob, Method::GET, "/admin/users").await;
    assert_eq!((status, reached), (403, false), "{body}");
    assert!(body.contains("route_refused"), "{body}");
    // First match wins: the reports route before `/admin/*` admits staff.
    assert_eq!(s.call(&bob, Method::GET, "/admin/reports/q3").await.0, 200);
    // No route: the global rules only.
    assert_eq!(s.call(&bob, Method::GET, "/elsewhere").await.0, 200);
    // Email rules count verified addresses: bob's is at example.org.
    assert_eq!(s.call(&alice, Method::GET, "/billing/x").await.0, 200);
    assert_eq!(s.call(&bob, Method::GET, "/billing/x").await.0, 403);
    // A page navigation gets the 403 page.
    let page = bob.navigate(&s.gw.at("/admin/users")).await;
    assert_eq!(page.status, 403);
    assert!(
        page.body.contains("<html") || page.body.contains("<!doctype"),
        "{}",
        page.body
    );
    assert_eq!(s.refusals(), 3);
}

#[tokio::test]
async fn routes_refuse_methods_they_do_not_list() {
    let Some(s) = setup().await else { return };
    let alice = s.signed_in("alice").await;
    for (method, path, expected) in [
        (Method::DELETE, "/admin/users", 403),
        (Method::PUT, "/admin/users", 403),
        (Method::HEAD, "/admin/users", 200), // HEAD counts as GET
        (Method::POST, "/admin/reports/q3", 403),
        (Method::HEAD, "/admin/reports/q3", 200),
        (Method::DELETE, "/elsewhere", 200),
    ] {
        let (status, reached, body) = s.call(&alice, method.clone(), path).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert_eq!(reached, expected == 200, "{method} {path}");
        if expected == 403 {
            assert!(body.contains("method_refused"), "{body}");
        }
    }
}

/// P03 and case variants: every spelling that reaches `/admin` at the upstream is
/// judged by the `/admin/*` route (or refused as ambiguous), never passed around it.
#[tokio::test]
async fn routes_cannot_be_reached_around_their_rule() {
    let Some(s) = setup().await else { return };
    let bob = s.signed_in("bob").await;
    for path in [
        "/Admin/users",
        "/ADMIN",
        "/admin",
        "/admin/",
        "/%61dmin/users",
        "/%41DMIN/users",
        "//admin/users",
        "/x/../admin/users",
        "/./admin/users",
        "/admin;x=1/users",
        "/admin/reports/../users",
        "/admin/Reports/..;/users",
        "/admin%2fusers",
        "/admin%252fusers",
        "/admin/reports%2f..%2fusers",
    ] {
        let (status, reached, body) = s.call(&bob, Method::GET, path).await;
        assert!(!reached, "{path} reached the upstream ({status}): {body}");
        assert!(matches!(status, 400 | 403), "{path}: {status} {body}");
    }
    // Staff may read reports in any case; the upstream sees the path we judged.
    let (status, reached, body) = s.call(&bob, Method::GET, "/ADMIN/Reports/q3").await;
    assert_eq!((status, reached), (200, true), "{body}");
}

/// The claims a route reads follow the provider: a group removed there takes effect
/// at the next refresh, without signing the user out.
#[tokio::test]
async fn a_group_removed_at_the_provider_takes_effect_at_the_next_refresh() {
    let Some(s) = setup().await else { return };
    let alice = s.signed_in("alice").await;
    assert_eq!(s.call(&alice, Method::GET, "/admin/users").await.0, 200);
    let r = reqwest::Client::new()
        .post(format!("{}/test/groups/alice", s.op.issuer))
        .body(r#"["staff"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Until the access token is due for refresh, the kept claims decide.
    assert_eq!(s.call(&alice, Method::GET, "/admin/users").await.0, 200);
    // Past the refresh point: access tokens live 300 s at this provider, and are
    // refreshed within `session.refresh_before` (60 s) of their end.
    s.gw.clock.advance(250);
    let (status, reached, body) = s.call(&alice, Method::GET, "/admin/users").await;
    assert_eq!((status, reached), (403, false), "{body}");
    // Still signed in, still staff.
    assert_eq!(
        s.call(&alice, Method::GET, "/admin/reports/q3").await.0,
        200
    );
    assert_eq!(s.call(&alice, Method::GET, "/elsewhere").await.0, 200);
}
