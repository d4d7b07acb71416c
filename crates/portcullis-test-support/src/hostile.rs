//! A scriptable OpenID provider for faults a real one will not produce: forged
//! signatures, `alg: none`, wrong claims, oversized or stalled answers. It checks PKCE
//! like a real provider so that code injection fails the way it should.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::keys::TestKeys;

/// What the token endpoint answers for one code.
#[derive(Clone)]
pub struct IssuedCode {
    pub challenge: String,
    pub response: Value,
}

#[derive(Default)]
pub struct Script {
    /// Merged into the discovery document.
    pub metadata_patch: Value,
    pub jwks: Value,
    pub codes: HashMap<String, IssuedCode>,
    /// Replaces the token endpoint's answer entirely.
    pub token_override: Option<(u16, String)>,
    pub token_delay: Option<Duration>,
    /// UserInfo answer; `None`: `{"sub": <the code's id token sub>}` is not known, so
    /// tests set it explicitly when they need it.
    pub userinfo: Option<Value>,
    /// Tokens the revocation endpoint received.
    pub revoked: Vec<String>,
    /// The revocation endpoint answers this status instead of 200.
    pub revoke_status: Option<u16>,
    /// Answers to `grant_type=refresh_token`, in order; when none is left, a fresh
    /// access and refresh token (no ID token), valid 300 s.
    pub refresh_answers: std::collections::VecDeque<RefreshAnswer>,
    /// Refresh tokens presented to the token endpoint, in order.
    pub refresh_tokens_used: Vec<String>,
    /// UserInfo answers this status instead.
    pub userinfo_status: Option<u16>,
    /// When set, the token endpoint authenticates the client `app` with this secret
    /// the way some providers do: Basic credentials compared *without* form-decoding
    /// them (so a secret with `+`, `/` or `=` fails over Basic), or the form's
    /// `client_secret`; a mismatch is 401 `invalid_client`.
    pub client_secret: Option<String>,
    /// Per token request: how the client authenticated (`basic`, `post`, `none`) and
    /// the code it presented (probes present made-up codes).
    pub token_requests: Vec<(&'static str, String)>,
    /// The PAR endpoint's answer (`/par`, listed once `metadata_patch` names it);
    /// `None`: 201 with a fresh `request_uri`, valid 60 s.
    pub par_answer: Option<(u16, Value)>,
    /// The forms pushed to `/par`, in order.
    pub pushed: Vec<HashMap<String, String>>,
    /// DPoP (RFC 9449) at the token endpoint and UserInfo; `None`: proofs are ignored.
    pub dpop: Option<DpopScript>,
    /// Every `DPoP` header received: where (`token`, `userinfo`), the proof, and the
    /// `Authorization` scheme (UserInfo).
    pub dpop_seen: Vec<DpopSeen>,
    /// The introspection endpoint's answer (RFC 7662); `None`: `{"active": false}`.
    pub introspection: Option<Value>,
    /// The introspection endpoint answers this status instead.
    pub introspection_status: Option<u16>,
    /// Tokens the introspection endpoint received, in order.
    pub introspected: Vec<String>,
}

/// How the provider plays DPoP.
#[derive(Clone, Debug)]
pub struct DpopScript {
    /// The nonce the token endpoint asks for (400 `use_dpop_nonce` until a proof has it).
    pub nonce: String,
    /// Ask for a new nonce at every token request, forever.
    pub endless: bool,
    /// The `token_type` answered (`DPoP`; `Bearer` plays a provider that ignored the proof).
    pub token_type: &'static str,
    /// The nonce UserInfo asks for (401 `use_dpop_nonce`), if any.
    pub userinfo_nonce: Option<String>,
}

impl DpopScript {
    pub fn with_nonce(nonce: &str) -> Self {
        Self {
            nonce: nonce.to_owned(),
            endless: false,
            token_type: "DPoP",
            userinfo_nonce: None,
        }
    }
}

/// One request that came with a `DPoP` header (or should have).
#[derive(Clone, Debug)]
pub struct DpopSeen {
    pub endpoint: &'static str,
    pub proof: Option<String>,
    pub scheme: Option<String>,
}

/// The claims of a proof, read without checking it (the tests verify it).
pub fn proof_claims(proof: &str) -> Value {
    let payload = proof.split('.').nth(1).unwrap_or_default();
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// A `use_dpop_nonce` answer: 400 for the token endpoint, 401 for a resource.
fn use_dpop_nonce(status: StatusCode, nonce: &str) -> Response {
    let mut r = (status, Json(json!({"error": "use_dpop_nonce"}))).into_response();
    let h = r.headers_mut();
    h.insert("dpop-nonce", nonce.parse().unwrap());
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            "www-authenticate",
            r#"DPoP error="use_dpop_nonce", algs="ES256""#.parse().unwrap(),
        );
    }
    r
}

/// Checks a token request's proof as the script says: the `token_type` to answer, or
/// (`Err`) the nonce to ask for.
fn token_dpop(p: &HostileProvider, headers: &HeaderMap) -> Result<Option<&'static str>, String> {
    let proof = headers
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut s = p.script.lock().unwrap();
    let Some(script) = s.dpop.clone() else {
        return Ok(None);
    };
    s.dpop_seen.push(DpopSeen {
        endpoint: "token",
        proof: proof.clone(),
        scheme: None,
    });
    let given = proof.as_deref().map(proof_claims);
    let nonce = given.as_ref().and_then(|c| c["nonce"].as_str());
    if script.endless {
        return Err(format!("n-{}", portcullis::random::random_token()));
    }
    if nonce != Some(script.nonce.as_str()) {
        return Err(script.nonce);
    }
    Ok(Some(script.token_type))
}

/// A token answer with the `token_type` DPoP asks for.
fn with_token_type(mut body: Value, token_type: Option<&str>) -> Value {
    if let Some(t) = token_type {
        body["token_type"] = json!(t);
    }
    body
}

/// One scripted answer to a refresh request.
#[derive(Clone, Debug)]
pub enum RefreshAnswer {
    Json(u16, Value),
    /// Headers are sent, then the connection breaks mid-body.
    Reset,
    /// No answer for this long.
    Stall(Duration),
}

/// A body that fails at once: hyper aborts the connection after the headers.
struct Broken;

impl http_body::Body for Broken {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other("connection reset"))))
    }
}

/// A token answer to a refresh: new access and refresh tokens, valid 300 s.
pub fn refreshed_tokens() -> Value {
    json!({
        "access_token": format!("at-{}", portcullis::random::random_token()),
        "refresh_token": format!("rt-{}", portcullis::random::random_token()),
        "token_type": "Bearer",
        "expires_in": 300,
    })
}

#[derive(Default)]
pub struct Counters {
    pub token_calls: AtomicUsize,
    pub jwks_fetches: AtomicUsize,
    pub userinfo_calls: AtomicUsize,
    pub evil_fetches: AtomicUsize,
    pub revocations: AtomicUsize,
    pub refresh_calls: AtomicUsize,
}

#[derive(Clone)]
pub struct HostileProvider {
    pub issuer: String,
    pub keys: Arc<TestKeys>,
    pub script: Arc<Mutex<Script>>,
    pub counters: Arc<Counters>,
}

impl HostileProvider {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(TestKeys::generate("k1"));
        let script = Script {
            jwks: keys.jwks(),
            metadata_patch: json!({}),
            ..Default::default()
        };
        let provider = Self {
            issuer,
            keys,
            script: Arc::new(Mutex::new(script)),
            counters: Arc::new(Counters::default()),
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/evil-jwks", get(evil_jwks))
            .route("/redirect-to-evil", get(redirect_to_evil))
            .route("/token", post(token))
            .route("/par", post(par))
            .route("/userinfo", get(userinfo))
            .route("/revoke", post(revoke))
            .route("/introspect", post(introspect))
            .with_state(provider.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        provider
    }

    pub fn metadata(&self) -> Value {
        let mut m = json!({
            "issuer": self.issuer,
            "authorization_endpoint": format!("{}/authorize", self.issuer),
            "token_endpoint": format!("{}/token", self.issuer),
            "userinfo_endpoint": format!("{}/userinfo", self.issuer),
            "jwks_uri": format!("{}/jwks", self.issuer),
            "revocation_endpoint": format!("{}/revoke", self.issuer),
            "introspection_endpoint": format!("{}/introspect", self.issuer),
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
        });
        let patch = self.script.lock().unwrap().metadata_patch.clone();
        if let (Some(m), Some(p)) = (m.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    pub fn patch_metadata(&self, patch: Value) {
        self.script.lock().unwrap().metadata_patch = patch;
    }

    /// Registers a code the token endpoint redeems once, for the holder of `challenge`'s
    /// verifier, answering `response`.
    pub fn issue_code(&self, challenge: &str, response: Value) -> String {
        let code = format!("code-{}", portcullis::random::random_token());
        self.script.lock().unwrap().codes.insert(
            code.clone(),
            IssuedCode {
                challenge: challenge.to_owned(),
                response,
            },
        );
        code
    }

    /// The code for the sign-in `auth` started: an ID token with the standard claims,
    /// signed RS256, redeemable once by the holder of its verifier.
    pub fn code_for(&self, auth: &super::gateway::Authorize) -> String {
        let token = self
            .keys
            .sign_rs256(&self.keys.rs256_header(), &self.claims(&auth.nonce));
        self.issue_code(&auth.challenge, Self::token_response(&token))
    }

    /// Completes the sign-in `auth` started: the browser comes back to the gateway's
    /// callback with a good code for it ([`Self::code_for`]) and this provider's `iss`.
    pub async fn complete(
        &self,
        gw: &super::TestGateway,
        browser: &super::Browser,
        auth: &super::gateway::Authorize,
    ) -> super::browser::Resp {
        self.answer_with(gw, browser, auth, &self.code_for(auth))
            .await
    }

    /// The browser comes back to the gateway's callback for `auth` with `code`.
    pub async fn answer_with(
        &self,
        gw: &super::TestGateway,
        browser: &super::Browser,
        auth: &super::gateway::Authorize,
        code: &str,
    ) -> super::browser::Resp {
        let query = super::gateway::callback_query(code, &auth.state, Some(&self.issuer));
        gw.callback(browser, &query).await
    }

    /// Standard claims for an ID token answering a login with `nonce`.
    pub fn claims(&self, nonce: &str) -> Value {
        let now = super::now();
        json!({
            "iss": self.issuer, "aud": "app", "sub": "alice", "exp": now + 300, "iat": now,
            "nonce": nonce, "email": "alice@example.com", "email_verified": true, "name": "Alice Example",
        })
    }

    /// A token response carrying `id_token`.
    pub fn token_response(id_token: &str) -> Value {
        json!({
            "access_token": format!("at-{}", portcullis::random::random_token()),
            "refresh_token": format!("rt-{}", portcullis::random::random_token()),
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": 300,
        })
    }

    pub fn set_userinfo(&self, v: Option<Value>) {
        self.script.lock().unwrap().userinfo = v;
    }

    /// Signs `browser` in at `gw` with standard claims, patched by `patch`; returns the
    /// token response the provider gave.
    pub async fn sign_in_with(
        &self,
        gw: &super::TestGateway,
        browser: &super::Browser,
        patch: impl FnOnce(&mut Value),
    ) -> Value {
        let auth = gw.start_login(browser, None).await;
        let mut claims = self.claims(&auth.nonce);
        patch(&mut claims);
        if let Some(name) = claims.get("name").cloned() {
            self.set_userinfo(Some(json!({"sub": claims["sub"], "email": claims["email"], "email_verified": true, "name": name})));
        }
        let token = self.keys.sign_rs256(&self.keys.rs256_header(), &claims);
        let response = Self::token_response(&token);
        let code = self.issue_code(&auth.challenge, response.clone());
        let resp = self.answer_with(gw, browser, &auth, &code).await;
        assert_eq!(resp.status, 303, "sign-in failed: {}", resp.body);
        response
    }

    pub async fn sign_in(&self, gw: &super::TestGateway, browser: &super::Browser) -> Value {
        self.sign_in_with(gw, browser, |_| {}).await
    }

    pub fn refresh_calls(&self) -> usize {
        self.counters.refresh_calls.load(Ordering::SeqCst)
    }

    /// Queues answers to the next refresh requests.
    pub fn answer_refreshes(&self, answers: impl IntoIterator<Item = RefreshAnswer>) {
        self.script.lock().unwrap().refresh_answers.extend(answers);
    }

    /// An ID token for a refresh: standard claims without a nonce, patched.
    pub fn refreshed_id_token(&self, patch: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims("");
        claims.as_object_mut().unwrap().remove("nonce");
        patch(&mut claims);
        self.keys.sign_rs256(&self.keys.rs256_header(), &claims)
    }

    pub fn token_calls(&self) -> usize {
        self.counters.token_calls.load(Ordering::SeqCst)
    }

    pub fn jwks_fetches(&self) -> usize {
        self.counters.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn discovery(State(p): State<HostileProvider>) -> Json<Value> {
    Json(p.metadata())
}

async fn jwks(State(p): State<HostileProvider>) -> Json<Value> {
    p.counters.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(p.script.lock().unwrap().jwks.clone())
}

async fn evil_jwks(State(p): State<HostileProvider>) -> Json<Value> {
    p.counters.evil_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({"keys": []}))
}

async fn redirect_to_evil(State(p): State<HostileProvider>) -> Response {
    (
        StatusCode::FOUND,
        [("location", format!("{}/evil-jwks", p.issuer))],
    )
        .into_response()
}

/// RFC 9126 §2: records the pushed form and answers as scripted. A parameter sent twice
/// is refused, as RFC 6749 §3.2 asks (and the npm provider does).
async fn par(State(p): State<HostileProvider>, body: String) -> Response {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let form: HashMap<String, String> = pairs.iter().cloned().collect();
    if form.len() != pairs.len() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "a parameter was sent twice"})),
        )
            .into_response();
    }
    let answer = {
        let mut s = p.script.lock().unwrap();
        s.pushed.push(form);
        s.par_answer.clone()
    };
    let (status, body) = answer.unwrap_or_else(|| {
        (
            201,
            json!({
                "request_uri": format!(
                    "urn:ietf:params:oauth:request_uri:{}",
                    portcullis::random::random_token()
                ),
                "expires_in": 60,
            }),
        )
    });
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

/// Whether the request authenticated as client `app` with `secret`: Basic credentials
/// compared without form-decoding them (as some providers do), or the form's.
fn client_is(secret: &str, basic: Option<&str>, form: &HashMap<String, String>) -> bool {
    match (basic, form.get("client_secret")) {
        (Some(pair), None) => pair == format!("app:{secret}"),
        (None, Some(given)) => {
            given == secret && form.get("client_id").map(String::as_str) == Some("app")
        }
        _ => false,
    }
}

/// `grant_type=refresh_token`: the next scripted answer, else fresh tokens.
async fn refresh(
    p: &HostileProvider,
    form: &HashMap<String, String>,
    token_type: Option<&str>,
) -> Response {
    p.counters.refresh_calls.fetch_add(1, Ordering::SeqCst);
    let answer = {
        let mut s = p.script.lock().unwrap();
        s.refresh_tokens_used
            .push(form.get("refresh_token").cloned().unwrap_or_default());
        s.refresh_answers.pop_front()
    };
    match answer {
        None => Json(with_token_type(refreshed_tokens(), token_type)).into_response(),
        Some(RefreshAnswer::Json(status, body)) => (
            StatusCode::from_u16(status).unwrap(),
            Json(with_token_type(body, token_type)),
        )
            .into_response(),
        Some(RefreshAnswer::Reset) => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", "100")
            .body(axum::body::Body::new(Broken))
            .unwrap(),
        Some(RefreshAnswer::Stall(d)) => {
            tokio::time::sleep(d).await;
            Json(refreshed_tokens()).into_response()
        }
    }
}

async fn token(
    State(p): State<HostileProvider>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    p.counters.token_calls.fetch_add(1, Ordering::SeqCst);
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(|b| {
            let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b)
                .unwrap_or_default();
            String::from_utf8_lossy(&decoded).into_owned()
        });
    let method = match (&basic, form.get("client_secret")) {
        (Some(_), _) => "basic",
        (None, Some(_)) => "post",
        (None, None) => "none",
    };
    let (delay, over, secret) = {
        let mut s = p.script.lock().unwrap();
        s.token_requests
            .push((method, form.get("code").cloned().unwrap_or_default()));
        (
            s.token_delay,
            s.token_override.clone(),
            s.client_secret.clone(),
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let token_type = match token_dpop(&p, &headers) {
        Ok(t) => t,
        Err(nonce) => return use_dpop_nonce(StatusCode::BAD_REQUEST, &nonce),
    };
    if let Some((status, body)) = over {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response();
    }
    if let Some(secret) = secret
        && !client_is(&secret, basic.as_deref(), &form)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let invalid_grant = || {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        return refresh(&p, &form, token_type).await;
    }
    let Some(code) = form.get("code") else {
        return invalid_grant();
    };
    let Some(issued) = p.script.lock().unwrap().codes.remove(code) else {
        return invalid_grant();
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if portcullis::provider::authorize::s256(&verifier) != issued.challenge {
        return invalid_grant();
    }
    Json(with_token_type(issued.response, token_type)).into_response()
}

async fn revoke(
    State(p): State<HostileProvider>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    p.counters.revocations.fetch_add(1, Ordering::SeqCst);
    let mut script = p.script.lock().unwrap();
    if let Some(status) = script.revoke_status {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    script
        .revoked
        .push(form.get("token").cloned().unwrap_or_default());
    StatusCode::OK.into_response()
}

async fn introspect(
    State(p): State<HostileProvider>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut script = p.script.lock().unwrap();
    script
        .introspected
        .push(form.get("token").cloned().unwrap_or_default());
    if let Some(status) = script.introspection_status {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let answer = script
        .introspection
        .clone()
        .unwrap_or_else(|| json!({"active": false}));
    axum::Json(answer).into_response()
}

async fn userinfo(State(p): State<HostileProvider>, headers: HeaderMap) -> Response {
    p.counters.userinfo_calls.fetch_add(1, Ordering::SeqCst);
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let dpop = p.script.lock().unwrap().dpop.clone();
    // With DPoP the bound token must come as `DPoP` with a proof (RFC 9449 §7.2).
    let scheme = if dpop.is_some() { "DPoP " } else { "Bearer " };
    if let Some(script) = dpop {
        let proof = headers
            .get("dpop")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        p.script.lock().unwrap().dpop_seen.push(DpopSeen {
            endpoint: "userinfo",
            proof: proof.clone(),
            scheme: authorization.split(' ').next().map(str::to_owned),
        });
        if let Some(wanted) = script.userinfo_nonce {
            let given = proof.as_deref().map(proof_claims);
            if given.as_ref().and_then(|c| c["nonce"].as_str()) != Some(wanted.as_str()) {
                return use_dpop_nonce(StatusCode::UNAUTHORIZED, &wanted);
            }
        }
    }
    if !authorization.starts_with(scheme) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if let Some(status) = p.script.lock().unwrap().userinfo_status {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    match p.script.lock().unwrap().userinfo.clone() {
        Some(v) => Json(v).into_response(),
        None => Json(json!({"sub": "alice", "email": "alice@example.com", "email_verified": true, "name": "Alice Example"})).into_response(),
    }
}
