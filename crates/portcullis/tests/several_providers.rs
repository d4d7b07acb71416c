//! Several identity providers behind one gateway (docs/providers/several.md, case G12):
//! choosing, the mix-up defence both ways (a code, state or `iss` from one provider at
//! another's callback; a logout token signed by another provider), nOAuth (an address
//! in a domain another provider owns is never verified), users kept apart by issuer,
//! routes limited to providers, multi-tenant issuers, and every session served by its
//! own provider. Two scriptable providers stand for "corp" and "partner".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use base64::Engine as _;
use serde_json::{Value, json};
use support::browser::Resp;
use support::gateway::{Options, callback_query, follow_sign_in};
use support::oidc_provider::RealProvider;
use support::upstream::echoed;
use support::{Browser, HostileProvider, TestGateway, TestUpstream};

const JSON: &[(&str, &str)] = &[("accept", "application/json")];

struct Two {
    corp: HostileProvider,
    partner: HostileProvider,
    gw: TestGateway,
    up: TestUpstream,
}

/// The configuration of corp (owns example.com) and partner (owns partner.example, and
/// `partner_extra` in its entry), with two routes.
fn config(corp: &str, partner: &str, partner_extra: &str) -> String {
    format!(
        r#"
[[providers]]
id = "corp"
name = "Example Corp"
issuer = "{corp}"
client_id = "app"
email_domains = ["example.com"]
[[providers]]
id = "partner"
name = "Partner"
issuer = "{partner}"
client_id = "app"
email_domains = ["partner.example"]
{partner_extra}
[[routes]]
path = "/staff/*"
providers = ["corp"]
[[routes]]
path = "/example-only/*"
allowed_email_domains = ["example.com"]
"#
    )
}

async fn two_with(options: impl FnOnce(Options) -> Options) -> Two {
    let (corp, partner) = (
        HostileProvider::start().await,
        HostileProvider::start().await,
    );
    let up = TestUpstream::start().await;
    let mut o = options(Options::default().env("PORTCULLIS_UPSTREAM", &up.url));
    o.config_file = Some(config(&corp.issuer, &partner.issuer, ""));
    let gw = TestGateway::start_with("", o).await;
    Two {
        corp,
        partner,
        gw,
        up,
    }
}

async fn two() -> Two {
    two_with(|o| o).await
}

impl Two {
    fn provider(&self, id: &str) -> &HostileProvider {
        match id {
            "corp" => &self.corp,
            _ => &self.partner,
        }
    }

    /// A sign-in started at provider `id`, and the code its provider issued for it (the
    /// standard user, claims patched).
    async fn code_from(
        &self,
        browser: &Browser,
        id: &str,
        patch: impl FnOnce(&mut Value),
    ) -> (support::gateway::Authorize, String) {
        let p = self.provider(id);
        let auth = self
            .gw
            .start_login_at(browser, &format!("/auth/login?provider={id}"))
            .await;
        assert!(auth.url.as_str().starts_with(&p.issuer), "{}", auth.url);
        assert_eq!(
            auth.redirect_uri,
            format!("{}/auth/callback/{id}", self.gw.url)
        );
        let mut claims = p.claims(&auth.nonce);
        patch(&mut claims);
        p.set_userinfo(Some(json!({
            "sub": claims["sub"], "email": claims["email"],
            "email_verified": claims["email_verified"], "name": claims["name"],
        })));
        let token = p.keys.sign_rs256(&p.keys.rs256_header(), &claims);
        let code = p.issue_code(&auth.challenge, HostileProvider::token_response(&token));
        (auth, code)
    }

    /// Signs `browser` in at provider `id` as the standard user, claims patched; the
    /// callback's answer.
    async fn sign_in(&self, browser: &Browser, id: &str, patch: impl FnOnce(&mut Value)) -> Resp {
        let p = self.provider(id);
        let (auth, code) = self.code_from(browser, id, patch).await;
        self.gw
            .callback_of(
                browser,
                id,
                &callback_query(&code, &auth.state, Some(&p.issuer)),
            )
            .await
    }

    /// Delivers `code` and the sign-in's state to provider `at`'s callback, with
    /// `iss`'s issuer as the RFC 9207 `iss`.
    async fn deliver(
        &self,
        browser: &Browser,
        at: &str,
        (auth, code): &(support::gateway::Authorize, String),
        iss: &HostileProvider,
    ) -> Resp {
        self.gw
            .callback_of(
                browser,
                at,
                &callback_query(code, &auth.state, Some(&iss.issuer)),
            )
            .await
    }

    async fn session(&self, browser: &Browser) -> Resp {
        browser.get(&self.gw.at("/auth/session"), JSON).await
    }

    fn token_calls(&self) -> usize {
        self.corp.token_calls() + self.partner.token_calls()
    }
}

/// The assertion's claims, read without verifying (what an app would verify).
fn assertion_claims(v: &Value) -> Value {
    let token = echoed(v, "x-portcullis-jwt-assertion").pop().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

// --- choosing -----------------------------------------------------------------------

#[tokio::test]
async fn the_chooser_links_and_login_hint_pick_the_provider() {
    let t = two().await;
    let b = Browser::new();
    // No choice: the chooser, with a link per provider that keeps return_to, and an
    // email field (the providers list their domains).
    let page = b
        .navigate(&t.gw.at("/auth/login?return_to=%2Freports"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("href=\"/auth/login?provider=corp&amp;return_to=%2Freports\""),
        "{}",
        page.body
    );
    assert!(page.body.contains(">Continue with Example Corp</a>"));
    assert!(page.body.contains(">Continue with Partner</a>"));
    assert!(page.body.contains("<label for=\"login_hint\">"));
    assert!(!page.body.contains("<script"), "no JavaScript needed");
    assert_eq!(t.token_calls(), 0);

    // An address routes by its domain, and goes along as login_hint.
    let auth =
        t.gw.start_login_at(&b, "/auth/login?login_hint=carol%40Partner.Example")
            .await;
    assert!(auth.url.as_str().starts_with(&t.partner.issuer));
    assert_eq!(
        auth.param("login_hint").as_deref(),
        Some("carol@Partner.Example")
    );
    // An address no provider owns: the chooser again, saying so.
    let page = b
        .navigate(&t.gw.at("/auth/login?login_hint=eve%40elsewhere.test"))
        .await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("role=\"alert\""), "{}", page.body);
    // A provider that does not exist.
    let r = b.get(&t.gw.at("/auth/login?provider=ghost"), JSON).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("unknown_provider"), "{}", r.body);
    assert!(
        !r.body.contains("ghost"),
        "nothing of the request is shown back"
    );
    // The default callback is not a second address of any provider.
    let r = b.navigate(&t.gw.at("/auth/callback/default?state=x")).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn default_provider_skips_the_chooser() {
    let (corp, partner) = (
        HostileProvider::start().await,
        HostileProvider::start().await,
    );
    let o = Options {
        config_file: Some(format!(
            "default_provider = \"partner\"\n{}",
            config(&corp.issuer, &partner.issuer, "")
        )),
        ..Options::default()
    };
    let gw = TestGateway::start_with("", o).await;
    let auth = gw.start_login(&Browser::new(), None).await;
    assert!(
        auth.url.as_str().starts_with(&partner.issuer),
        "{}",
        auth.url
    );
}

// --- G12: mix-up ----------------------------------------------------------------------

#[tokio::test]
async fn g12_a_code_and_state_from_corp_at_partners_callback_are_refused_before_any_token_request()
{
    let t = two().await;
    let b = Browser::new();
    let sign_in = t.code_from(&b, "corp", |_| {}).await;
    // Delivered to partner's callback (with partner's iss, as an attacker who controls
    // the partner's provider would send it).
    let r = t.deliver(&b, "partner", &sign_in, &t.partner).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("provider_mismatch"), "{}", r.body);
    assert_eq!(t.token_calls(), 0, "no token request anywhere");
    assert_eq!(t.session(&b).await.status, 401, "nobody signed in");
    // The sign-in is spent: the right callback cannot finish it afterwards.
    let r = t.deliver(&b, "corp", &sign_in, &t.corp).await;
    assert_eq!(r.status, 400);
    assert_eq!(t.token_calls(), 0);
    assert_eq!(
        t.gw.gateway.security_events().snapshot()["provider_mismatch"],
        1
    );
}

#[tokio::test]
async fn g12_partners_iss_at_corps_callback_is_refused_before_any_token_request() {
    let t = two().await;
    let b = Browser::new();
    let sign_in = t.code_from(&b, "corp", |_| {}).await;
    let r = t.deliver(&b, "corp", &sign_in, &t.partner).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("issuer_mismatch"), "{}", r.body);
    assert_eq!(t.token_calls(), 0);
    assert_eq!(t.session(&b).await.status, 401);
}

#[tokio::test]
async fn g12_a_logout_token_signed_by_partner_naming_a_corp_session_ends_nothing() {
    let t = two().await;
    let b = Browser::new();
    let r = t
        .sign_in(&b, "corp", |c| c["sid"] = json!("corp-session-1"))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let logout = |iss: &str, signer: &HostileProvider| {
        let claims = json!({
            "iss": iss, "aud": "app", "iat": support::now(),
            "jti": portcullis::random::random_token(), "sub": "alice", "sid": "corp-session-1",
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        let mut header = signer.keys.rs256_header();
        header["typ"] = json!("logout+jwt");
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", &signer.keys.sign_rs256(&header, &claims))
            .finish()
    };
    let post = |body: String| {
        reqwest::Client::new()
            .post(t.gw.at("/auth/backchannel-logout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // Corp's iss, partner's key (the same kid, another key): refused.
    let r = post(logout(&t.corp.issuer, &t.partner)).await.unwrap();
    assert_eq!(r.status(), 400);
    // Partner's own token naming corp's sid and sub: valid for partner, whose users
    // have neither.
    let r = post(logout(&t.partner.issuer, &t.partner)).await.unwrap();
    assert_eq!(r.status(), 200);
    // An issuer nobody configured.
    let r = post(logout("https://nobody.example", &t.partner))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(t.session(&b).await.status, 200, "alice is still signed in");
    assert_eq!(t.token_calls(), 1, "only the sign-in's");
    // Corp's own token ends it.
    let r = post(logout(&t.corp.issuer, &t.corp)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(t.session(&b).await.status, 401);
}

// --- G12: nOAuth and identity ----------------------------------------------------------

#[tokio::test]
async fn g12_noauth_partner_asserting_a_verified_corp_address_is_not_verified_anywhere() {
    let t = two().await;
    let mallory = Browser::new();
    let r = t
        .sign_in(&mallory, "partner", |c| {
            c["sub"] = json!("mallory");
            c["email"] = json!("alice@EXAMPLE.com");
            c["email_verified"] = json!(true);
            c["name"] = json!("Not Alice");
        })
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // /auth/session
    let session = t.session(&mallory).await.json();
    assert_eq!(session["user"]["email"], Value::Null, "{session}");
    assert_eq!(session["provider"], "partner");
    // Headers and the assertion.
    let v = mallory.get(&t.gw.at("/app/x"), JSON).await.json();
    assert!(echoed(&v, "x-user-email").is_empty(), "{v}");
    assert_eq!(echoed(&v, "x-user-provider"), ["partner"]);
    let assertion = assertion_claims(&v);
    assert!(assertion.get("email").is_none(), "{assertion}");
    assert_eq!(assertion["idp"], "partner");
    // Rules: an email rule for example.com refuses.
    let r = mallory.get(&t.gw.at("/example-only/x"), JSON).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        t.gw.gateway.security_events().snapshot()["email_domain_not_owned"],
        1
    );

    // The provider that owns the domain vouches for it.
    let alice = Browser::new();
    assert_eq!(t.sign_in(&alice, "corp", |_| {}).await.status, 303);
    let v = alice.get(&t.gw.at("/app/x"), JSON).await.json();
    assert_eq!(echoed(&v, "x-user-email"), ["alice@example.com"]);
    assert_eq!(
        alice.get(&t.gw.at("/example-only/x"), JSON).await.status,
        200
    );
}

#[tokio::test]
async fn the_same_address_at_two_providers_is_two_users_and_a_corp_route_refuses_the_partner() {
    let t = two().await;
    let (at_corp, at_partner) = (Browser::new(), Browser::new());
    assert_eq!(t.sign_in(&at_corp, "corp", |_| {}).await.status, 303);
    // The same subject and address, from the partner's provider.
    assert_eq!(t.sign_in(&at_partner, "partner", |_| {}).await.status, 303);
    let corp_user = t.session(&at_corp).await.json()["user"]["id"].clone();
    let partner_user = t.session(&at_partner).await.json()["user"]["id"].clone();
    assert_ne!(corp_user, partner_user, "never linked by email or subject");
    let calls = t.up.calls();
    assert_eq!(at_corp.get(&t.gw.at("/staff/x"), JSON).await.status, 200);
    let r = at_partner.get(&t.gw.at("/staff/x"), JSON).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "route_refused");
    assert_eq!(t.up.calls(), calls + 1, "the app saw corp's request only");
}

// --- every session is its provider's ------------------------------------------------------

#[tokio::test]
async fn a_providers_own_rules_apply_to_its_users_only_and_sign_out_revokes_there() {
    let (corp, partner) = (
        HostileProvider::start().await,
        HostileProvider::start().await,
    );
    let o = Options {
        config_file: Some(config(
            &corp.issuer,
            &partner.issuer,
            "required_claims = { groups = [\"partners\"] }",
        )),
        ..Options::default()
    };
    let t = Two {
        gw: TestGateway::start_with("", o).await,
        up: TestUpstream::start().await,
        corp,
        partner,
    };
    // The partner's rule refuses a partner user without the group…
    let r = t.sign_in(&Browser::new(), "partner", |_| {}).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("claim_required"), "{}", r.body);
    // …admits one with it, and does not apply to corp's users.
    let carol = Browser::new();
    let r = t
        .sign_in(&carol, "partner", |c| c["groups"] = json!(["partners"]))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let alice = Browser::new();
    assert_eq!(t.sign_in(&alice, "corp", |_| {}).await.status, 303);
    // Signing out revokes at the session's own provider.
    let revocations = |p: &HostileProvider| {
        p.counters
            .revocations
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(t.gw.sign_out_api(&carol).await.status, 200);
    assert_eq!((revocations(&t.partner), revocations(&t.corp)), (1, 0));
    assert_eq!(t.gw.sign_out_api(&alice).await.status, 200);
    assert_eq!((revocations(&t.partner), revocations(&t.corp)), (1, 1));
}

#[tokio::test]
async fn a_partner_session_refreshes_at_partner_on_another_instance() {
    let t = two_with(|mut o| {
        o.file_store = true;
        o
    })
    .await;
    let b = Browser::new();
    assert_eq!(t.sign_in(&b, "partner", |_| {}).await.status, 303);
    let mut o = Options::default().env("PORTCULLIS_UPSTREAM", &t.up.url);
    o.config_file = Some(config(&t.corp.issuer, &t.partner.issuer, ""));
    o.db_path = t.gw.db_path.clone();
    o.secret = Some(t.gw.secret);
    let other = TestGateway::start_with("", o).await;
    t.partner
        .answer_refreshes([support::hostile::RefreshAnswer::Json(
            200,
            support::hostile::refreshed_tokens(),
        )]);
    other.clock.advance(250);
    let r = b.get(&other.at("/auth/session"), JSON).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["provider"], "partner");
    assert_eq!(t.partner.refresh_calls(), 1, "refreshed at partner");
    assert_eq!(t.corp.refresh_calls(), 0);
}

#[tokio::test]
async fn a_session_of_a_removed_provider_ends_at_its_next_request() {
    let t = two_with(|mut o| {
        o.file_store = true;
        o
    })
    .await;
    let b = Browser::new();
    assert_eq!(t.sign_in(&b, "partner", |_| {}).await.status, 303);
    // The same store, partner no longer configured.
    let o = Options {
        config_file: Some(format!(
            "[[providers]]\nid = \"corp\"\nissuer = \"{}\"\nclient_id = \"app\"\n",
            t.corp.issuer
        )),
        db_path: t.gw.db_path.clone(),
        secret: Some(t.gw.secret),
        ..Options::default()
    };
    let without = TestGateway::start_with("", o).await;
    assert_eq!(b.get(&without.at("/auth/session"), JSON).await.status, 401);
    let store = without.gateway.store();
    assert!(
        store
            .list_sessions(None, portcullis::clock::Clock::now(&without.clock))
            .await
            .unwrap()
            .is_empty(),
        "the session was ended, not kept"
    );
}

// --- multi-tenant issuers ------------------------------------------------------------------

#[tokio::test]
async fn g12_a_tenant_outside_allowed_tenants_is_refused() {
    let p = HostileProvider::start().await;
    let template = format!("{}/{{tenantid}}/v2.0", p.issuer);
    // No `iss` promised: the ID token's check is then what stands (tried last).
    p.patch_metadata(
        json!({ "issuer": template, "authorization_response_iss_parameter_supported": false }),
    );
    let o = Options {
        config_file: Some(format!(
            r#"
[[providers]]
id = "entra"
issuer = "{template}"
discovery_url = "{base}/.well-known/openid-configuration"
allowed_tenants = ["tenant-a"]
client_id = "app"
"#,
            base = p.issuer
        )),
        ..Options::default()
    };
    let gw = TestGateway::start_with("", o).await;
    let attempt = |tenant: &'static str, iss_param: bool| {
        let (gw, p) = (&gw, &p);
        async move {
            let b = Browser::new();
            let auth = gw.start_login(&b, None).await;
            let iss = format!("{}/{tenant}/v2.0", p.issuer);
            let mut claims = p.claims(&auth.nonce);
            claims["iss"] = json!(iss);
            claims["tid"] = json!(tenant);
            let token = p.keys.sign_rs256(&p.keys.rs256_header(), &claims);
            let code = p.issue_code(&auth.challenge, HostileProvider::token_response(&token));
            let query = callback_query(&code, &auth.state, iss_param.then_some(iss.as_str()));
            (gw.callback_of(&b, "entra", &query).await, b)
        }
    };
    // The allowed tenant: signed in, the user keyed by the concrete issuer.
    let (r, b) = attempt("tenant-a", true).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let user = b.get(&gw.at("/auth/session"), JSON).await.json()["user"]["id"].clone();
    let user = uuid::Uuid::parse_str(user.as_str().unwrap()).unwrap();
    let stored = gw.gateway.store().get_user(user).await.unwrap().unwrap();
    assert_eq!(stored.issuer, format!("{}/tenant-a/v2.0", p.issuer));
    // Another tenant: refused at the callback by its `iss`, before any token request…
    let calls = p.token_calls();
    let (r, _) = attempt("tenant-b", true).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("issuer_mismatch"), "{}", r.body);
    assert_eq!(p.token_calls(), calls);
    // …and by the ID token when the provider sends no `iss` parameter.
    let (r, b) = attempt("tenant-b", false).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("id_token_invalid"), "{}", r.body);
    assert_eq!(b.get(&gw.at("/auth/session"), JSON).await.status, 401);
}

// --- real providers ---------------------------------------------------------------------

/// Two real npm `oidc-provider` instances (corp owns example.com, partner example.org)
/// and the dev provider (no domains) behind one gateway: a sign-in through each, by a
/// `provider=` link and by `login_hint`; the same person at corp and at the dev provider
/// is two users, and the dev provider's "verified" example.com address is not believed.
#[tokio::test]
async fn interop_two_npm_providers_and_the_dev_provider_behind_one_gateway() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw_url = format!("http://{}", listener.local_addr().unwrap());
    let client = |id: &str| {
        json!([{
            "client_id": "app",
            "redirect_uris": [format!("{gw_url}/auth/callback/{id}")],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }])
    };
    let Some(corp) = RealProvider::start(client("corp"), &[]).await else {
        return;
    };
    let Some(partner) = RealProvider::start(client("partner"), &[]).await else {
        return;
    };
    let dev = support::dev_provider::start_for_callback(&gw_url, "", "/auth/callback/dev").await;
    let o = Options {
        listener: Some(listener),
        config_file: Some(format!(
            r#"
[[providers]]
id = "corp"
name = "Example Corp"
issuer = "{}"
client_id = "app"
email_domains = ["example.com"]
[[providers]]
id = "partner"
name = "Partner"
issuer = "{}"
client_id = "app"
email_domains = ["example.org"]
[[providers]]
id = "dev"
name = "Dev"
issuer = "{dev}"
client_id = "app"
"#,
            corp.issuer, partner.issuer
        )),
        ..Options::default()
    };
    let gw = TestGateway::start_with("", o).await;
    let sign_in = |start: String, user: &'static str, id: &'static str| {
        let gw = &gw;
        async move {
            let b = Browser::new();
            let (_, r) = follow_sign_in(
                &b,
                &gw.at(&start),
                user,
                user,
                &gw.at(&format!("/auth/callback/{id}")),
            )
            .await;
            assert_eq!(r.status, 303, "{id}: {}", r.body);
            let session = b.get(&gw.at("/auth/session"), JSON).await.json();
            assert_eq!(session["provider"], id, "{session}");
            session
        }
    };
    // A link names the provider; an address picks it by its domain.
    let at_corp = sign_in("/auth/login?provider=corp".into(), "alice", "corp").await;
    assert_eq!(at_corp["user"]["email"], "alice@example.com");
    let at_partner = sign_in(
        "/auth/login?login_hint=bob%40example.org".into(),
        "bob",
        "partner",
    )
    .await;
    assert_eq!(at_partner["user"]["email"], "bob@example.org");
    // The dev provider's alice is another user, and corp's domain is not its to vouch for.
    let at_dev = sign_in("/auth/login?provider=dev".into(), "alice", "dev").await;
    assert_ne!(at_dev["user"]["id"], at_corp["user"]["id"]);
    assert_eq!(at_dev["user"]["email"], Value::Null, "{at_dev}");
    // Each provider redeemed its own codes only.
    for p in [&corp, &partner] {
        assert_eq!(p.events().await["grants"]["authorization_code"], 1);
    }
}
