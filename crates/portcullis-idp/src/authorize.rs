//! The authorization endpoint (RFC 6749 §4.1.1, OIDC Core §3.1.2) with its sign-in form.
//!
//! An unknown client or an unregistered redirect URI gets an error page, never a
//! redirect (docs/security.md A03). Every other answer goes back to the registered
//! redirect URI with `iss` (RFC 9207, A08): a code, or an error. PKCE S256 is mandatory
//! (A01). The form carries its own CSRF token (double submit), and a successful sign-in
//! answers 303 (A09).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawForm, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis::random::{random_token, secrets_equal, sha256_hex};

use crate::store::CodeRow;
use crate::throttle::{Peer, Refused};
use crate::{Idp, now, pages};

/// Lifetime of an authorization code (≤ 60 s).
pub const CODE_TTL: i64 = 60;
/// Lifetime of a sign-in at the provider.
pub const SESSION_TTL: i64 = 24 * 3600;
pub const SESSION_COOKIE: &str = "portcullis_idp_session";
pub const CSRF_COOKIE: &str = "portcullis_idp_csrf";

const SUPPORTED_SCOPES: &[&str] = &["openid", "email", "profile", "offline_access"];

/// A checked authorization request.
#[derive(Debug, Clone)]
pub struct AuthzRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub prompt: Option<String>,
}

impl AuthzRequest {
    fn hidden_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("response_type", "code".into()),
            ("scope", self.scope.clone()),
            ("code_challenge", self.code_challenge.clone()),
            ("code_challenge_method", "S256".into()),
        ];
        if let Some(s) = &self.state {
            f.push(("state", s.clone()));
        }
        if let Some(n) = &self.nonce {
            f.push(("nonce", n.clone()));
        }
        f
    }
}

/// How a bad request is answered.
pub enum Refusal {
    /// Shown to the user: the redirect URI cannot be trusted.
    Page(StatusCode, &'static str, String),
    /// Sent back to the client's redirect URI.
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

/// Splits form or query pairs; a repeated parameter is an error (RFC 6749 §3.1).
fn params(raw: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(k.into_owned());
        }
    }
    Ok(out)
}

fn is_pkce_value(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks an authorization request (shared by the GET and the form POST).
pub fn validate(
    idp: &Idp,
    p: &HashMap<String, String>,
    duplicate: Option<&str>,
) -> Result<AuthzRequest, Refusal> {
    let client_id = p.get("client_id").map(String::as_str).unwrap_or("");
    let Some(client) = idp.config.client(client_id) else {
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "This application is not registered with the identity provider.".into(),
        ));
    };
    let redirect_uri = p.get("redirect_uri").map(String::as_str).unwrap_or("");
    // A03: exact string match against a registered URI, nothing else.
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "The redirect URI is not registered for this application.".into(),
        ));
    }
    let state = p.get("state").cloned();
    let refuse = |error: &'static str, description: &str| Refusal::Redirect {
        redirect_uri: redirect_uri.to_owned(),
        error,
        description: description.to_owned(),
        state: state.clone(),
    };
    let (scopes, challenge) =
        check_request(p, duplicate).map_err(|(error, description)| refuse(error, &description))?;
    Ok(AuthzRequest {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        scope: scopes,
        state,
        nonce: p.get("nonce").cloned(),
        code_challenge: challenge,
        prompt: p.get("prompt").cloned(),
    })
}

/// The request's shape: no repeated parameter or request object, the code flow with
/// query responses, openid among supported scopes, PKCE S256 (A01, A08). The scope and
/// the challenge, or the OAuth error and its description.
fn check_request(
    p: &HashMap<String, String>,
    duplicate: Option<&str>,
) -> Result<(String, String), (&'static str, String)> {
    if let Some(d) = duplicate {
        return Err(("invalid_request", format!("the parameter {d} is repeated")));
    }
    if p.contains_key("request") || p.contains_key("request_uri") {
        return Err((
            "request_not_supported",
            "request objects are not supported".to_owned(),
        ));
    }
    // A08: only the code flow; implicit and hybrid are refused.
    if p.get("response_type").map(String::as_str) != Some("code") {
        return Err((
            "unsupported_response_type",
            "only response_type=code is supported".to_owned(),
        ));
    }
    if p.get("response_mode").is_some_and(|m| m != "query") {
        return Err((
            "invalid_request",
            "only response_mode=query is supported".to_owned(),
        ));
    }
    let scope = p.get("scope").cloned().unwrap_or_default();
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if !scopes.contains(&"openid") || scopes.iter().any(|s| !SUPPORTED_SCOPES.contains(s)) {
        return Err((
            "invalid_scope",
            "scope must include openid and only supported scopes".to_owned(),
        ));
    }
    // A01: PKCE is mandatory and S256 only (RFC 7636 §4.3, RFC 9700 §2.1.1).
    let Some(challenge) = p.get("code_challenge") else {
        return Err((
            "invalid_request",
            "PKCE is required: send code_challenge with code_challenge_method=S256".to_owned(),
        ));
    };
    if p.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return Err((
            "invalid_request",
            "code_challenge_method must be S256".to_owned(),
        ));
    }
    if !is_pkce_value(challenge) {
        return Err((
            "invalid_request",
            "code_challenge is not a base64url SHA-256".to_owned(),
        ));
    }
    Ok((scopes.join(" "), challenge.clone()))
}

/// 303 to `redirect_uri` with `params` and `iss` added to its query (RFC 9207 §2).
pub fn redirect_back(idp: &Idp, redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "The redirect URI is not valid.",
        );
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.append_pair("iss", &idp.config.issuer);
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn refuse(idp: &Idp, refusal: Refusal) -> Response {
    match refusal {
        Refusal::Page(status, code, message) => pages::error_page(status, code, &message),
        Refusal::Redirect {
            redirect_uri,
            error,
            description,
            state,
        } => {
            let mut params = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = &state {
                params.push(("state", s));
            }
            redirect_back(idp, &redirect_uri, &params)
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    portcullis::http::cookies::find_cookie(headers, name)
        .value()
        .map(str::to_owned)
}

pub(crate) fn secure(idp: &Idp) -> &'static str {
    if idp.config.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// Issues a code for a signed-in user and sends the browser back.
async fn issue_code(
    idp: &Idp,
    req: &AuthzRequest,
    username: &str,
    sid: &str,
    auth_time: i64,
) -> Response {
    let code = random_token();
    let row = CodeRow {
        client_id: req.client_id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        username: username.to_owned(),
        scope: req.scope.clone(),
        nonce: req.nonce.clone(),
        challenge: req.code_challenge.clone(),
        sid: sid.to_owned(),
        auth_time,
        expires_at: now() + CODE_TTL,
        uses: 0,
        grant_id: None,
    };
    if let Err(e) = idp.store.add_code(&sha256_hex(code.as_bytes()), &row).await {
        tracing::error!(error = %e, "cannot store a code");
        return refuse(
            idp,
            Refusal::Redirect {
                redirect_uri: req.redirect_uri.clone(),
                error: "server_error",
                description: "the provider could not store the code".into(),
                state: req.state.clone(),
            },
        );
    }
    let _ = idp.store.note_session_client(sid, &req.client_id).await;
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = &req.state {
        params.push(("state", s));
    }
    redirect_back(idp, &req.redirect_uri, &params)
}

fn login_form(idp: &Idp, req: &AuthzRequest, status: StatusCode, error: Option<&str>) -> Response {
    let csrf = random_token();
    let hidden = req.hidden_fields();
    let hidden: Vec<(&str, &str)> = hidden.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut r = pages::login_form(status, &req.client_id, &hidden, &csrf, error);
    let c = format!(
        "{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; SameSite=Strict; Max-Age=1800{}",
        secure(idp)
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `GET /authorize`: signs in with the form, or straight away with a live session.
pub async fn show(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let raw = query.unwrap_or_default();
    let (p, duplicate) = match params(raw.as_bytes()) {
        Ok(p) => (p, None),
        Err(d) => (
            url::form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
            Some(d),
        ),
    };
    let req = match validate(&idp, &p, duplicate.as_deref()) {
        Ok(r) => r,
        Err(refusal) => return refuse(&idp, refusal),
    };
    let session = match cookie(&headers, SESSION_COOKIE) {
        Some(c) => idp
            .store
            .session(&sha256_hex(c.as_bytes()), now())
            .await
            .ok()
            .flatten(),
        None => None,
    };
    match (session, req.prompt.as_deref()) {
        (Some((sid, username, auth_time)), p) if p != Some("login") => {
            issue_code(&idp, &req, &username, &sid, auth_time).await
        }
        (None, Some("none")) => refuse(
            &idp,
            Refusal::Redirect {
                redirect_uri: req.redirect_uri.clone(),
                error: "login_required",
                description: "the user is not signed in".into(),
                state: req.state.clone(),
            },
        ),
        _ => login_form(&idp, &req, StatusCode::OK, None),
    }
}

/// The answer to an attempt the throttle refused: 429 (with `Retry-After`) or 503.
fn throttled(req: &AuthzRequest, refused: Refused) -> Response {
    let (status, code, message, retry_after) = match refused {
        Refused::TooMany(seconds) => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "Too many sign-in attempts for this user or from your address. Wait a minute and try again.",
            seconds,
        ),
        Refused::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "The provider is checking too many passwords at once. Try again in a moment.",
            1,
        ),
    };
    tracing::warn!(client = %req.client_id, error = code, "sign-in attempt refused");
    let mut r = pages::error_page(status, code, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

/// `POST /authorize`: the sign-in form.
pub async fn submit(
    State(idp): State<Arc<Idp>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    RawForm(body): RawForm,
) -> Response {
    let (p, duplicate) = match params(&body) {
        Ok(p) => (p, None),
        Err(d) => (
            url::form_urlencoded::parse(&body).into_owned().collect(),
            Some(d),
        ),
    };
    let req = match validate(&idp, &p, duplicate.as_deref()) {
        Ok(r) => r,
        Err(refusal) => return refuse(&idp, refusal),
    };
    let sent = p.get("csrf").map(String::as_str).unwrap_or("");
    let expected = cookie(&headers, CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !secrets_equal(sent.as_bytes(), expected.as_bytes()) {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "csrf",
            "The sign-in form expired or did not come from this provider. Start again from the application.",
        );
    }
    let username = p.get("username").map(String::as_str).unwrap_or("");
    let password = p.get("password").map(String::as_str).unwrap_or("");
    if let Err(refusal) = check_password(&idp, &req, peer, username, password).await {
        return refusal;
    }
    signed_in(&idp, &req, &headers, username).await
}

/// The password check, throttled per user and address; the answer to give when it
/// fails.
async fn check_password(
    idp: &Idp,
    req: &AuthzRequest,
    peer: Option<std::net::IpAddr>,
    username: &str,
    password: &str,
) -> Result<(), Response> {
    let user = idp.config.user(username);
    // Counted before any password is checked, so guessing is slow and cheap to refuse.
    let name = user.map(|u| u.username.as_str());
    let turn = match idp.throttle.attempt(name, peer, now()) {
        Ok(()) => idp.throttle.turn().await,
        Err(refused) => Err(refused),
    };
    let turn = match turn {
        Ok(turn) => turn,
        Err(refused) => return Err(throttled(req, refused)),
    };
    // argon2 is deliberately slow: it runs off the async workers, a few at once, and
    // against a real hash even for unknown users, so timing does not tell.
    let candidate = user.or(idp.config.users.first()).cloned();
    let known = user.is_some();
    let password = password.to_owned();
    let matched = tokio::task::spawn_blocking(move || {
        // The turn is held until the hashing ends, even if the client goes away.
        let _turn = turn;
        candidate.is_some_and(|u| u.password_matches(&password))
    })
    .await
    .unwrap_or(false);
    let ok = matched && known;
    if !ok {
        idp.throttle.failed(name, peer, now());
        tracing::info!(client = %req.client_id, "sign-in failed");
        return Err(login_form(
            idp,
            req,
            StatusCode::UNAUTHORIZED,
            Some("Invalid username or password"),
        ));
    }
    Ok(())
}

/// A new provider session for `username` (ending this browser's previous one), its
/// cookie, and the code for the application.
async fn signed_in(idp: &Idp, req: &AuthzRequest, headers: &HeaderMap, username: &str) -> Response {
    let session = random_token();
    let sid = random_token()[..22].to_owned();
    let now = now();
    if let Err(e) = idp
        .store
        .create_session(
            &sha256_hex(session.as_bytes()),
            &sid,
            username,
            now,
            now + SESSION_TTL,
        )
        .await
    {
        tracing::error!(error = %e, "cannot store a session");
        return pages::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "The provider could not sign you in.",
        );
    }
    tracing::info!(user = username, client = %req.client_id, "signed in");
    // Signing in again replaces this browser's previous session: end it properly.
    if let Some(old) = cookie(headers, SESSION_COOKIE)
        && let Ok(Some((old_sid, old_user, _))) =
            idp.store.session(&sha256_hex(old.as_bytes()), now).await
        && let Ok(clients) = idp.store.end_session(&old_sid).await
    {
        crate::logout::send_backchannel_logout(idp, &old_sid, &old_user, &clients).await;
    }
    let mut r = issue_code(idp, req, username, &sid, now).await;
    let c = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_TTL}{}",
        secure(idp)
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Ok(v) =
        HeaderValue::from_str(&format!("{CSRF_COOKIE}=; Path=/; Max-Age=0{}", secure(idp)))
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
