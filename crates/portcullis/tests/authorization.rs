//! Who may reach what, against the real npm `oidc-provider` (its users carry a
//! `groups` claim). `[[routes]]`: who may reach which paths, with which methods; P03
//! path tricks and case variants cannot reach a route around its rule; a group removed
//! at the provider takes effect at the next refresh. The signed assertion
//! (`X-Portcullis-Jwt-Assertion`), verified by an independent library (npm `jose`):
//! what it says, that nothing client-sent reaches the app, two instances on one store,
//! key rotation. Skips with one line when Node or `npm ci` is missing; `.ci/run`
//! requires it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use reqwest::Method;
use serde_json::json;
use support::gateway::Options;
use support::oidc_provider::{RealProvider, verify_assertion, verify_assertion_with_pyjwt};
use support::upstream::echoed;
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

[[routes]]
path = "/settings"
methods = ["HEAD"]
required_claims = { groups = ["admins"] }
"#;

struct Setup {
    op: RealProvider,
    up: TestUpstream,
    gw: TestGateway,
}

async fn setup() -> Option<Setup> {
    setup_with(Options::default(), &[]).await
}

async fn setup_with(options: Options, op_env: &[(&str, &str)]) -> Option<Setup> {
    let mut env = vec![("ID_TOKEN_TTL", "86400")];
    env.extend_from_slice(op_env);
    let up = TestUpstream::start().await;
    let options = Options {
        config_file: Some(ROUTES.to_owned()),
        ..options
    }
    .env("PORTCULLIS_UPSTREAM", &up.url);
    let extra = json!({"token_endpoint_auth_method": "none"});
    let (op, gw) = support::oidc_provider::start_with_gateway_options(extra, &env, options).await?;
    Some(Setup { op, up, gw })
}

impl Setup {
    /// A new assertion signing key, as `portcullis keys rotate` makes one.
    async fn rotate_assertion_key(&self) -> portcullis::store::SigningKeyRecord {
        let sessions = self.gw.gateway.sessions();
        sessions.rotate_assertion_key().await.unwrap()
    }

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

    /// What the upstream received for `GET path` from `b`: the assertion(s) and the
    /// user id.
    async fn seen(
        &self,
        b: &Browser,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Vec<String>, String) {
        let r = b.get(&self.gw.at(path), headers).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let user = echoed(&v, "x-user-id").join(",");
        (echoed(&v, "x-portcullis-jwt-assertion"), user)
    }

    /// Verifies `token` as the app would, with `gw`'s published keys at its clock.
    async fn verify_at(&self, gw: &TestGateway, token: &str) -> Result<serde_json::Value, String> {
        verify_assertion(
            &gw.at("/auth/jwks.json"),
            &self.gw.url,
            &self.up.url,
            gw.clock_now(),
            token,
        )
        .await
    }

    async fn verify(&self, token: &str) -> Result<serde_json::Value, String> {
        self.verify_at(&self.gw, token).await
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
        (Method::GET, "/settings", 200), // a route listing HEAD allows GET
    ] {
        let (status, reached, body) = s.call(&alice, method.clone(), path).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert_eq!(reached, expected == 200, "{method} {path}");
        if expected == 403 {
            assert!(body.contains("method_refused"), "{body}");
        }
    }
    // A method-override header that frameworks obey must name an allowed method too.
    for (name, value, expected) in [
        ("x-http-method-override", "DELETE", 403),
        ("X-HTTP-Method", "delete", 403),
        ("x-method-override", "PUT", 403),
        ("x-http-method-override", "not a method", 403),
        ("x-http-method-override", "get", 200),
    ] {
        let before = s.up.calls();
        let r = alice
            .request(
                Method::POST,
                &s.gw.at("/admin/users"),
                &[
                    ("accept", "application/json"),
                    ("origin", s.gw.url.as_str()),
                    (name, value),
                ],
                None,
            )
            .await;
        assert_eq!(r.status, expected, "{name}: {value}: {}", r.body);
        assert_eq!(s.up.calls() > before, expected == 200);
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
        "/settings/",
        "/SETTINGS/.",
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

// ---------------------------------------------------------------------------
// The signed assertion.

#[tokio::test]
async fn the_assertion_verifies_with_an_independent_library() {
    let Some(s) = setup().await else { return };
    let alice = s.signed_in("alice").await;
    let (assertions, user_id) = s.seen(&alice, "/x", &[]).await;
    let [token] = assertions.as_slice() else {
        panic!("one assertion expected: {assertions:?}")
    };
    let v = s.verify(token).await.unwrap();
    let (header, payload) = (&v["header"], &v["payload"]);
    assert_eq!(header["alg"], "ES256");
    assert!(header["kid"].is_string());
    assert_eq!(payload["sub"], user_id.as_str(), "sub is X-User-Id");
    assert_eq!(payload["iss"], s.gw.url.as_str());
    assert_eq!(payload["aud"], s.up.url.as_str());
    assert_eq!(payload["email"], "alice@example.com");
    assert_eq!(payload["name"], "Alice Example");
    assert_eq!(payload["groups"], json!(["admins", "staff"]));
    let (iat, exp) = (
        payload["iat"].as_i64().unwrap(),
        payload["exp"].as_i64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 300, "{payload}");
    // The Python snippet of docs/authorization.md agrees.
    if let Some(by_python) =
        verify_assertion_with_pyjwt(&s.gw.at("/auth/jwks.json"), &s.gw.url, &s.up.url, token).await
    {
        assert_eq!(by_python.unwrap()["sub"], user_id.as_str());
        let wrong = verify_assertion_with_pyjwt(
            &s.gw.at("/auth/jwks.json"),
            &s.gw.url,
            "http://another-app",
            token,
        )
        .await;
        assert!(wrong.is_some_and(|r| r.is_err()));
    }
    // Signed once per session: the next request carries the same assertion.
    let (again, _) = s.seen(&alice, "/y", &[]).await;
    assert_eq!(&again, &assertions);
    // Another audience, or a changed byte, does not verify.
    let wrong_aud = verify_assertion(
        &s.gw.at("/auth/jwks.json"),
        &s.gw.url,
        "http://another-app",
        s.gw.clock_now(),
        token,
    )
    .await;
    assert!(wrong_aud.is_err(), "{wrong_aud:?}");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('J', "K", 1);
    assert!(s.verify(&parts.join(".")).await.is_err());
    // Expired once its five minutes are over.
    s.gw.clock.advance(301);
    assert!(
        s.verify(token).await.unwrap_err().contains("exp"),
        "expired"
    );
}

/// An assertion is reused while it has more than a minute left, then signed afresh:
/// the app never receives an expired one from a live session.
#[tokio::test]
async fn assertions_are_signed_again_before_they_expire() {
    // Access tokens for an hour: no refresh (and so no new session id) meanwhile.
    let Some(s) = setup_with(Options::default(), &[("ACCESS_TOKEN_TTL", "3600")]).await else {
        return;
    };
    let alice = s.signed_in("alice").await;
    let (first, _) = s.seen(&alice, "/x", &[]).await;
    s.gw.clock.advance(200);
    assert_eq!(s.seen(&alice, "/x", &[]).await.0, first, "reused");
    s.gw.clock.advance(50);
    let (second, _) = s.seen(&alice, "/x", &[]).await;
    assert_ne!(second, first, "signed again with under a minute left");
    let exp = |v: serde_json::Value| v["payload"]["exp"].as_i64().unwrap();
    s.gw.clock.advance(60); // the first has expired now
    assert!(s.verify(&first[0]).await.is_err());
    assert!(exp(s.verify(&second[0]).await.unwrap()) > s.gw.clock_now());
}

/// A client-sent assertion — forged, replayed after it expired, or in another spelling
/// — never reaches the app: signed-in requests carry exactly ours, public paths none.
#[tokio::test]
async fn client_sent_assertions_never_reach_the_app() {
    let Some(s) = setup().await else { return };
    let alice = s.signed_in("alice").await;
    let bob = s.signed_in("bob").await;
    let (bobs, _) = s.seen(&bob, "/x", &[]).await;
    let (ours, _) = s.seen(&alice, "/x", &[]).await;
    s.gw.clock.advance(301); // bob's is expired now
    for forged in ["forged.jwt.value", bobs[0].as_str()] {
        for name in [
            "x-portcullis-jwt-assertion",
            "X-Portcullis-Jwt-Assertion",
            "x_portcullis_jwt_assertion",
        ] {
            let (seen, user) = s.seen(&alice, "/x", &[(name, forged)]).await;
            let [token] = seen.as_slice() else {
                panic!("{name}: {seen:?}")
            };
            assert_ne!(token, forged);
            let v = s.verify(token).await.unwrap();
            assert_eq!(v["payload"]["sub"], user.as_str());
            let (public, _) = s
                .seen(&Browser::new(), "/public/x", &[(name, forged)])
                .await;
            assert!(
                public.is_empty(),
                "{name} reached a public path: {public:?}"
            );
        }
    }
    assert_ne!(ours, bobs);
}

/// Two instances on one store publish the same keys and sign with them: an assertion
/// from either verifies with the keys of the other.
#[tokio::test]
async fn two_instances_on_one_store_publish_and_sign_with_the_same_keys() {
    let Some(s) = setup_with(
        Options {
            file_store: true,
            ..Options::default()
        },
        &[],
    )
    .await
    else {
        return;
    };
    let other = TestGateway::start_with(
        &s.op.issuer,
        Options {
            db_path: s.gw.db_path.clone(),
            secret: Some(s.gw.secret),
            config_file: Some(ROUTES.to_owned()),
            ..Options::default()
        }
        .env("PORTCULLIS_UPSTREAM", &s.up.url)
        .env("PORTCULLIS_PUBLIC_URL", &s.gw.url),
    )
    .await;
    // Two instances, one time: each test gateway's clock starts when it is made, and the
    // two may be made on either side of a second's boundary.
    other.clock.set(s.gw.clock_now());
    let alice = s.signed_in("alice").await;
    let jwks = |gw: &TestGateway| {
        let url = gw.at("/auth/jwks.json");
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let (a, b) = (jwks(&s.gw).await, jwks(&other).await);
    assert_eq!(a, b);
    assert_eq!(a["keys"].as_array().unwrap().len(), 1, "{a}");
    let (on_a, _) = s.seen(&alice, "/x", &[]).await;
    let cookie = format!("portcullis={}", alice.cookie("portcullis").unwrap());
    let r = Browser::new()
        .get(&other.at("/x"), &[("cookie", &cookie)])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let on_b = echoed(&r.json(), "x-portcullis-jwt-assertion");
    s.verify_at(&other, &on_a[0]).await.unwrap();
    s.verify_at(&s.gw, &on_b[0]).await.unwrap();
}

/// `keys rotate`: the new key is published at once and signs 2 min later; assertions of
/// the old key keep verifying until they expire, then the old key is withdrawn.
#[tokio::test]
async fn after_a_rotation_old_and_new_assertions_verify_until_the_old_ones_expire() {
    let Some(s) = setup().await else { return };
    let alice = s.signed_in("alice").await;
    let (old, _) = s.seen(&alice, "/x", &[]).await;
    let kid = |v: &serde_json::Value| v["header"]["kid"].as_str().unwrap().to_owned();
    let old_kid = kid(&s.verify(&old[0]).await.unwrap());
    let key = s.rotate_assertion_key().await;
    assert_ne!(key.kid, old_kid);
    let published = |s: &Setup| {
        let url = s.gw.at("/auth/jwks.json");
        async move {
            let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            let kids = support::kids(&v);
            kids.into_iter().map(str::to_owned).collect::<Vec<_>>()
        }
    };
    // Published by the next reading of the keys (every 10 s), before it signs.
    s.gw.clock.advance(11);
    assert_eq!(published(&s).await, [old_kid.clone(), key.kid.clone()]);
    let (still, _) = s.seen(&alice, "/x", &[]).await;
    assert_eq!(kid(&s.verify(&still[0]).await.unwrap()), old_kid);
    // Signing with it two minutes after it was made.
    s.gw.clock.advance(100);
    let (still, _) = s.seen(&alice, "/x", &[]).await;
    assert_eq!(kid(&s.verify(&still[0]).await.unwrap()), old_kid);
    s.gw.clock.advance(10);
    let (new, _) = s.seen(&alice, "/x", &[]).await;
    assert_eq!(kid(&s.verify(&new[0]).await.unwrap()), key.kid);
    assert_eq!(
        kid(&s.verify(&old[0]).await.unwrap()),
        old_kid,
        "the old one still verifies"
    );
    // Once every assertion of the old key has expired, it is withdrawn.
    s.gw.clock.advance(400);
    assert_eq!(published(&s).await, [key.kid]);
    assert!(s.verify(&old[0]).await.is_err());
}

/// An instance that saw no request through a rotation reads the keys before it signs
/// again: it never signs with a key the others have withdrawn.
#[tokio::test]
async fn an_instance_idle_through_a_rotation_reads_the_keys_before_signing() {
    let Some(s) = setup().await else { return };
    let alice = s.signed_in("alice").await;
    let (old, _) = s.seen(&alice, "/x", &[]).await;
    let key = s.rotate_assertion_key().await;
    // Idle until the old key has been withdrawn everywhere.
    s.gw.clock.advance(600);
    let (new, _) = s.seen(&alice, "/x", &[]).await;
    let v = s.verify(&new[0]).await.unwrap();
    assert_eq!(v["header"]["kid"], key.kid.as_str());
    assert!(s.verify(&old[0]).await.is_err());
}

/// An assertion never outlives its session's idle deadline, and a large `groups`
/// claim is left out rather than making the header too large for the app.
#[tokio::test]
async fn assertions_end_with_the_idle_deadline_and_stay_small() {
    let Some(s) = setup_with(
        Options::default().env("PORTCULLIS_SESSION_IDLE_TIMEOUT", "2m"),
        &[],
    )
    .await
    else {
        return;
    };
    let alice = s.signed_in("alice").await;
    let (token, _) = s.seen(&alice, "/x", &[]).await;
    let p = &s.verify(&token[0]).await.unwrap()["payload"];
    assert!(
        p["exp"].as_i64().unwrap() - p["iat"].as_i64().unwrap() <= 120,
        "{p}"
    );

    let groups: Vec<String> = (0..350).map(|i| format!("group-number-{i:04}")).collect();
    let r = reqwest::Client::new()
        .post(format!("{}/test/groups/bob", s.op.issuer))
        .body(serde_json::to_string(&groups).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bob = s.signed_in("bob").await;
    let (token, user) = s.seen(&bob, "/x", &[]).await;
    assert!(token[0].len() <= 8 * 1024, "{}", token[0].len());
    let p = &s.verify(&token[0]).await.unwrap()["payload"];
    assert_eq!(p["sub"], user.as_str());
    assert!(p.get("groups").is_none(), "{p}");
}
