//! The sign-in core against real providers: npm `oidc-provider` (OpenID certified) and
//! `portcullis idp`, each test against both: the real sign-in form, PKCE S256 required,
//! RFC 9207 `iss`, refresh tokens with rotation. The npm half skips with one line when
//! Node or `npm ci` is missing; `.ci/run` requires it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use serde_json::json;
use support::gateway::{Options, callback_query};
use support::oidc_provider::RealProvider;
use support::{Browser, TestGateway};

/// Which real provider the gateway talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// npm `oidc-provider` (OpenID certified).
    OidcProvider,
    /// `portcullis idp`, the dev provider of this workspace.
    PortcullisIdp,
}

/// The running provider.
struct Provider {
    issuer: String,
    node: Option<RealProvider>,
}

impl Provider {
    /// Authorization-code grants the provider saw, where it can tell.
    async fn code_grants(&self) -> Option<u64> {
        match &self.node {
            Some(n) => n.events().await["grants"]["authorization_code"].as_u64(),
            None => None,
        }
    }
}

/// A provider with one client for a gateway on a pre-bound port, and that gateway.
async fn setup(op: Op, secret: Option<&str>, options: Options) -> Option<(Provider, TestGateway)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let provider = match op {
        Op::OidcProvider => {
            let mut client = json!({
                "client_id": "app",
                "redirect_uris": [format!("{gateway_url}/auth/callback")],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "backchannel_logout_uri": format!("{gateway_url}/auth/backchannel-logout"),
                "backchannel_logout_session_required": true,
            });
            match secret {
                Some(s) => {
                    client["client_secret"] = json!(s);
                    client["token_endpoint_auth_method"] = json!("client_secret_basic");
                }
                None => client["token_endpoint_auth_method"] = json!("none"),
            }
            let node = RealProvider::start(json!([client]), &[]).await?;
            Provider {
                issuer: node.issuer.clone(),
                node: Some(node),
            }
        }
        Op::PortcullisIdp => Provider {
            issuer: support::dev_provider::start(&gateway_url, secret).await,
            node: None,
        },
    };
    let mut options = Options {
        listener: Some(listener),
        ..options
    };
    if let Some(s) = secret {
        options = options.env("PORTCULLIS_CLIENT_SECRET", s);
    }
    let gw = TestGateway::start_with(&provider.issuer, options).await;
    Some((provider, gw))
}

/// Runs an interop test against both providers, as `<name>::oidc_provider` and
/// `<name>::portcullis_idp`.
macro_rules! against_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn oidc_provider() {
                super::$name(super::Op::OidcProvider).await
            }
            #[tokio::test]
            async fn portcullis_idp() {
                super::$name(super::Op::PortcullisIdp).await
            }
        }
    )*};
}

against_both!(
    interop_public_client_signs_in_through_the_real_form,
    interop_confidential_client_authenticates_with_client_secret_basic,
    interop_same_user_keeps_one_user_id_across_logins,
    interop_replayed_callback_is_refused_l02,
    interop_real_provider_refuses_a_code_without_its_verifier_l04,
    interop_access_rules_refuse_an_unverified_email_ar1,
    interop_readiness_follows_the_provider,
);

async fn interop_public_client_signs_in_through_the_real_form(op: Op) {
    let Some((provider, gw)) = setup(op, None, Options::default()).await else {
        return;
    };
    let browser = Browser::new();
    let resp = gw
        .sign_in_through_form(&browser, "alice", "alice", "/welcome?x=1")
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    assert_eq!(resp.location().as_deref(), Some("/welcome?x=1"));
    let session = browser
        .get(&gw.at("/auth/session"), &[("accept", "application/json")])
        .await;
    assert_eq!(session.status, 200);
    let v = session.json();
    assert_eq!(v["authenticated"], true);
    assert_eq!(v["user"]["email"], "alice@example.com");
    assert_eq!(v["user"]["name"], "Alice Example");

    // What the store holds: one session, tokens sealed (refresh included), provider sid.
    let sessions = gw
        .gateway
        .store()
        .list_sessions(None, gw.clock_now())
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s.user.subject, "alice");
    assert_eq!(s.user.issuer, provider.issuer);
    assert!(
        s.provider_sid.is_some(),
        "the provider's sid is recorded for back-channel logout"
    );
    assert!(s.tokens.refresh_token.is_some(), "a refresh token is kept");
    assert!(s.tokens.access_expires_at.is_some());
    let open = gw.gateway.sessions().session_tokens(s).unwrap();
    assert!(open.refresh_token.is_some() && open.access_token.is_some() && open.id_token.is_some());

    if let Some(grants) = provider.code_grants().await {
        assert_eq!(grants, 1);
    }
}

async fn interop_confidential_client_authenticates_with_client_secret_basic(op: Op) {
    let Some((provider, gw)) = setup(op, Some("s3cret-app"), Options::default()).await else {
        return;
    };
    let browser = Browser::new();
    let resp = gw.sign_in_through_form(&browser, "bob", "bob", "/").await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let v = browser.get(&gw.at("/auth/session"), &[]).await.json();
    assert_eq!(v["user"]["email"], "bob@example.org");
    if let Some(grants) = provider.code_grants().await {
        assert_eq!(grants, 1);
    }
}

async fn interop_same_user_keeps_one_user_id_across_logins(op: Op) {
    let Some((_provider, gw)) = setup(op, None, Options::default()).await else {
        return;
    };
    let a = Browser::new();
    let b = Browser::new();
    gw.sign_in_through_form(&a, "alice", "alice", "/").await;
    gw.sign_in_through_form(&b, "alice", "alice", "/").await;
    let ida = a.get(&gw.at("/auth/session"), &[]).await.json()["user"]["id"].clone();
    let idb = b.get(&gw.at("/auth/session"), &[]).await.json()["user"]["id"].clone();
    assert_eq!(ida, idb);
    assert_eq!(gw.session_count().await, 2);
}

async fn interop_replayed_callback_is_refused_l02(op: Op) {
    let Some((provider, gw)) = setup(op, None, Options::default()).await else {
        return;
    };
    let browser = Browser::new();
    assert_eq!(
        gw.sign_in_through_form(&browser, "alice", "alice", "/")
            .await
            .status,
        303
    );
    let callback = browser
        .history
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| r.location())
        .find(|l| l.contains("/auth/callback?"))
        .unwrap();
    let again = browser.navigate(&callback).await;
    assert_eq!(again.status, 400);
    assert!(again.body.contains("state_mismatch"));
    assert_eq!(gw.session_count().await, 1);
    if let Some(grants) = provider.code_grants().await {
        assert_eq!(grants, 1);
    }
}

async fn interop_real_provider_refuses_a_code_without_its_verifier_l04(op: Op) {
    // A code issued for one login, injected into another login's callback.
    let Some((provider, gw)) = setup(op, None, Options::default()).await else {
        return;
    };
    let attacker = Browser::new();
    let victim = Browser::new();
    // The attacker runs a login to the point where the provider hands out a code…
    let start = gw.start_login(&attacker, None).await;
    let mut url = start.url.clone();
    let mut resp = attacker.navigate(url.as_str()).await;
    let code = loop {
        match resp.status {
            302 | 303 => {
                url = url.join(&resp.location().unwrap()).unwrap();
                if url.path() == "/auth/callback" {
                    break url
                        .query_pairs()
                        .find(|(k, _)| k == "code")
                        .unwrap()
                        .1
                        .into_owned();
                }
                resp = attacker.navigate(url.as_str()).await;
            }
            200 => {
                url = url
                    .join(&support::browser::form_action(&resp.body))
                    .unwrap();
                let body = support::browser::login_form_body(&resp.body, "bob", "bob");
                resp = attacker
                    .request(
                        reqwest::Method::POST,
                        url.as_str(),
                        &[],
                        Some((body, "application/x-www-form-urlencoded")),
                    )
                    .await;
            }
            s => panic!("unexpected {s}"),
        }
    };
    // …and plants it in the victim's callback, with the victim's own state.
    let victim_login = gw.start_login(&victim, None).await;
    let resp = gw
        .callback(
            &victim,
            &callback_query(&code, &victim_login.state, Some(&provider.issuer)),
        )
        .await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.body.contains("code_rejected"));
    assert_eq!(
        gw.session_count().await,
        0,
        "nobody is signed in as the attacker"
    );
}

async fn interop_access_rules_refuse_an_unverified_email_ar1(op: Op) {
    let options = Options::default().env("PORTCULLIS_ACCESS_ALLOWED_EMAIL_DOMAINS", "example.com");
    let Some((_provider, gw)) = setup(op, None, options).await else {
        return;
    };
    // The npm provider has a user with an unverified address; the dev provider's users
    // are all verified.
    if op == Op::OidcProvider {
        let carol = Browser::new();
        let resp = gw.sign_in_through_form(&carol, "carol", "carol", "/").await;
        assert_eq!(resp.status, 403);
        assert!(resp.body.contains("email_not_verified"));
    }
    let bob = Browser::new();
    let resp = gw.sign_in_through_form(&bob, "bob", "bob", "/").await;
    assert_eq!(resp.status, 403, "bob@example.org is outside example.com");
    assert!(resp.body.contains("email_not_allowed"));
    assert_eq!(gw.session_count().await, 0);
    let alice = Browser::new();
    assert_eq!(
        gw.sign_in_through_form(&alice, "alice", "alice", "/")
            .await
            .status,
        303
    );
}

async fn interop_readiness_follows_the_provider(op: Op) {
    let Some((_provider, gw)) = setup(op, None, Options::default()).await else {
        return;
    };
    let r = Browser::new().get(&gw.at("/readyz"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ready"], true);
}

/// A provider that does not offer `offline_access` (Google answers `invalid_scope` to
/// it): the gateway does not ask for it, the sign-in works, and the session lives
/// without a refresh token.
#[tokio::test]
async fn interop_a_provider_without_offline_access_signs_in() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let client = json!({
        "client_id": "app",
        "token_endpoint_auth_method": "none",
        "redirect_uris": [format!("{gateway_url}/auth/callback")],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    });
    let Some(node) =
        RealProvider::start(json!([client]), &[("SCOPES", "openid email profile")]).await
    else {
        return;
    };
    let gw = TestGateway::start_with(
        &node.issuer,
        Options {
            listener: Some(listener),
            ..Options::default()
        },
    )
    .await;
    let browser = Browser::new();
    let login = browser.navigate(&gw.at("/auth/login")).await;
    let authorize = login.location().unwrap();
    assert!(!authorize.contains("offline_access"), "{authorize}");
    let resp = gw
        .sign_in_through_form(&browser, "alice", "alice", "/")
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let v = browser.get(&gw.at("/auth/session"), &[]).await.json();
    assert_eq!(v["user"]["email"], "alice@example.com");
    let sessions = gw
        .gateway
        .store()
        .list_sessions(None, gw.clock_now())
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].tokens.refresh_token.is_none());
}
