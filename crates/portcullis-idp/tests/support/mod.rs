//! Test support: a dev provider on a free loopback port with two clients and a
//! back-channel logout receiver, and an HTTP client that plays the browser.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support::SendJson as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::StatusCode;
use serde_json::Value;

#[allow(unused_imports)] // used by one of the two suites that share this module
pub use portcullis_test_support::oidc_provider;

pub struct Provider {
    pub base: String,
    pub db: std::path::PathBuf,
    pub client: reqwest::Client,
    pub backchannel_hits: Arc<AtomicUsize>,
    pub backchannel_tokens: Arc<std::sync::Mutex<Vec<String>>>,
    /// The configuration the provider was started with.
    pub config_text: String,
}

pub const REDIRECT: &str = "http://127.0.0.1:8080/auth/callback";

pub async fn start() -> Provider {
    // A receiver for back-channel logout tokens.
    let hits = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, t) = (hits.clone(), tokens.clone());
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_url = format!("http://{}/bcl", receiver.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/bcl",
        axum::routing::post(move |body: String| {
            let (h, t) = (h.clone(), t.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let token = url::form_urlencoded::parse(body.as_bytes())
                    .find(|(k, _)| k == "logout_token")
                    .map(|(_, v)| v.into_owned());
                t.lock().unwrap().extend(token);
                "ok"
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(receiver, app).await;
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let dir = std::env::temp_dir().join(format!("pc-idp-{}", portcullis::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("idp.db");
    let config = format!(
        r#"
issuer = "{base}"
listen = "{addr}"
store = "sqlite:{db}"
[[clients]]
id = "app"
redirect_uris = ["{REDIRECT}"]
post_logout_redirect_uris = ["http://127.0.0.1:8080/"]
backchannel_logout_uri = "{receiver_url}"
[[clients]]
id = "conf"
secret = "conf-secret"
redirect_uris = ["{REDIRECT}"]
[[clients]]
id = "machine"
secret = "machine-secret"
resources = ["https://api.example.com", "https://other.example.com"]
scopes = ["orders:read", "orders:admin"]
[[users]]
username = "alice"
password = "alice"
email = "alice@example.com"
name = "Alice Example"
"#,
        addr = base.trim_start_matches("http://"),
        db = db.display()
    );
    let config_text = config.clone();
    let config = portcullis_idp::IdpConfig::parse(&config).unwrap();
    let idp = portcullis_idp::Idp::open(config).await.unwrap();
    let app = portcullis_idp::router(idp);
    portcullis_test_support::serve_in_background(listener, app);
    Provider {
        base,
        db,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        backchannel_hits: hits,
        backchannel_tokens: tokens,
        config_text,
    }
}

/// A client that plays a browser on the loopback address `ip` (e.g. `127.0.0.2`).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

pub fn end_session_url(base: &str, params: &[(&str, &str)]) -> String {
    let mut u = url::Url::parse(&format!("{base}/end_session")).unwrap();
    u.query_pairs_mut().extend_pairs(params);
    u.to_string()
}

pub fn pkce() -> (String, String) {
    let verifier = portcullis::random::random_token();
    (
        verifier.clone(),
        portcullis::provider::authorize::s256(&verifier),
    )
}

pub fn query(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

pub struct Login {
    pub location: String,
    pub cookies: String,
}

impl Provider {
    pub fn authorize_url(
        &self,
        client: &str,
        challenge: Option<&str>,
        extra: &[(&str, &str)],
    ) -> String {
        let mut u = url::Url::parse(&format!("{}/authorize", self.base)).unwrap();
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("client_id", client)
                .append_pair("redirect_uri", REDIRECT)
                .append_pair("response_type", "code")
                .append_pair("scope", "openid email profile")
                .append_pair("state", "st-1")
                .append_pair("nonce", "n-1");
            if let Some(c) = challenge {
                q.append_pair("code_challenge", c)
                    .append_pair("code_challenge_method", "S256");
            }
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        u.to_string()
    }

    /// GET the form, POST credentials: the 303 back to the client.
    pub async fn sign_in(
        &self,
        client: &str,
        challenge: &str,
        password: &str,
    ) -> (reqwest::Response, Login) {
        self.sign_in_as(&self.client, client, challenge, "alice", password)
            .await
    }

    /// [`Self::sign_in`] as `username`, with `http` (e.g. bound to another loopback
    /// address).
    pub async fn sign_in_as(
        &self,
        http: &reqwest::Client,
        client: &str,
        challenge: &str,
        username: &str,
        password: &str,
    ) -> (reqwest::Response, Login) {
        let form = http
            .get(self.authorize_url(client, Some(challenge), &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(form.status(), 200);
        let csrf_cookie = form
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .find(|c| c.starts_with("portcullis_idp_csrf="))
            .unwrap();
        let html = form.text().await.unwrap();
        let mut fields: Vec<(String, String)> = Vec::new();
        for input in html.split("<input type=\"hidden\" ").skip(1) {
            let name = input
                .split("name=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_owned();
            let value = input
                .split("value=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .replace("&amp;", "&");
            fields.push((name, value));
        }
        fields.push(("username".into(), username.into()));
        fields.push(("password".into(), password.into()));
        let resp = http
            .post(format!("{}/authorize", self.base))
            .header("cookie", &csrf_cookie)
            .form(&fields)
            .send()
            .await
            .unwrap();
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let cookies = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .filter(|c| c.starts_with("portcullis_idp_session="))
            .collect::<Vec<_>>()
            .join("; ");
        (resp, Login { location, cookies })
    }

    pub async fn code(&self, client: &str, challenge: &str) -> (String, Login) {
        let (resp, login) = self.sign_in(client, challenge, "alice").await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let q = query(&login.location);
        (q["code"].clone(), login)
    }

    /// The claims of a token this provider signed, verified with its published keys
    /// (an independent library: jsonwebtoken), any audience, expiry checked.
    pub async fn verified_claims(&self, token: &str) -> Value {
        let jwks = self.jwks().await;
        let header = jsonwebtoken::decode_header(token).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == header.kid.clone().unwrap())
                .unwrap()
                .clone(),
        )
        .unwrap();
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.validate_aud = false;
        v.set_issuer(&[&self.base]);
        jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
            &v,
        )
        .unwrap()
        .claims
    }

    pub async fn token(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.post(format!("{}/token", self.base)).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let r = req.send().await.unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn redeem(&self, code: &str, verifier: &str) -> (StatusCode, Value) {
        self.token(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", verifier),
                ("redirect_uri", REDIRECT),
                ("client_id", "app"),
            ],
            None,
        )
        .await
    }

    pub async fn refresh(&self, rt: &str) -> (StatusCode, Value) {
        self.token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("client_id", "app"),
            ],
            None,
        )
        .await
    }

    pub async fn userinfo(&self, at: &str) -> StatusCode {
        self.client
            .get(format!("{}/userinfo", self.base))
            .bearer_auth(at)
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn tokens(&self) -> Value {
        self.signed_in().await.1
    }

    /// alice signed in at `app`: her browser's login and the tokens the code gave.
    pub async fn signed_in(&self) -> (Login, Value) {
        let (verifier, challenge) = pkce();
        let (code, login) = self.code("app", &challenge).await;
        let (status, v) = self.redeem(&code, &verifier).await;
        assert_eq!(status, 200, "{v}");
        (login, v)
    }

    /// The published keys.
    pub async fn jwks(&self) -> Value {
        let url = format!("{}/jwks", self.base);
        self.client.get(url).send_json().await
    }

    /// A browser with `login`'s cookies (none: `None`) at the end-session endpoint.
    pub async fn end_session(
        &self,
        params: &[(&str, &str)],
        login: Option<&Login>,
    ) -> reqwest::Response {
        let mut req = self.client.get(end_session_url(&self.base, params));
        if let Some(login) = login {
            req = req.header("cookie", &login.cookies);
        }
        req.send().await.unwrap()
    }
}

/// An OAuth error answer: `status` with `{"error": error}`.
pub fn assert_error((status, body): (StatusCode, Value), want: StatusCode, error: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (want, Some(error)),
        "{body}"
    );
}
