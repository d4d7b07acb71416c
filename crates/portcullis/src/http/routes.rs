//! The gateway's own endpoints under the prefix: `/login`, `/callback`, `/session`,
//! and `/healthz`, `/readyz` at the root.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::cookies::{CookieJar, CookieKind};
use super::error::HttpError;
use super::request::{is_navigation, is_same_origin_write, user_agent};
use crate::gateway::Gateway;
use crate::random::{random_token, secrets_equal};
use crate::session::Sessions;
use crate::session::login::LOGIN_TTL_SECONDS;
use crate::session::{CallbackParams, ReturnTo, SessionError, SessionId, SignOut};

/// Shared state of the routes.
#[derive(Debug, Clone)]
pub struct Routes {
    pub gateway: Arc<Gateway>,
    pub cookies: CookieJar,
}

impl Routes {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let cookies = CookieJar::new(gateway.config().is_https());
        Self { gateway, cookies }
    }

    fn sessions(&self) -> &Arc<Sessions> {
        self.gateway.sessions()
    }

    /// The body of a request the gateway reads itself (the SPA code exchange,
    /// back-channel logout): at most [`MAX_OWN_BODY`] bytes, in full within
    /// `limits.body_timeout` (D02: a client that trickles its body, or stops, does not
    /// hold the handler).
    async fn read_body(&self, body: axum::body::Body) -> Result<axum::body::Bytes, Response> {
        let deadline = self.gateway.config().limits.body_timeout;
        let refusal = match tokio::time::timeout(deadline, read_at_most(body, MAX_OWN_BODY)).await {
            Ok(Ok(bytes)) => return Ok(bytes),
            Err(_) => HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "The request body did not arrive in time.",
            ),
            Ok(Err(BodyRefused::TooLarge)) => HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "The request body is larger than this endpoint accepts.",
            ),
            Ok(Err(BodyRefused::Unreadable)) => {
                HttpError::bad_request("body_unreadable", "The request body could not be read.")
            }
        };
        Err(no_store(refusal.into_response()))
    }

    fn login_path(&self) -> String {
        format!("{}/login", self.gateway.config().prefix)
    }

    /// The `post_logout_redirect_uri` for the provider: the one asked for if it is on
    /// the allow-list (exactly), else the first on the list, else our `/logged-out`.
    fn post_logout_redirect_uri(&self, query: Option<&str>) -> String {
        let config = self.gateway.config();
        let allowed = &config.logout.post_logout_redirect_uris;
        let asked = query_params(query, &["post_logout_redirect_uri"])
            .ok()
            .and_then(|mut q| q.remove("post_logout_redirect_uri"));
        if let Some(asked) = asked {
            if let Some(hit) = allowed.iter().find(|u| u.as_str() == asked) {
                return hit.to_string();
            }
            tracing::warn!(
                "a post_logout_redirect_uri off the allow-list was asked for; the default is used"
            );
        }
        allowed
            .first()
            .map(|u| u.to_string())
            .unwrap_or_else(|| format!("{}{}/logged-out", config.public_origin(), config.prefix))
    }

    /// The 403 for a state-changing call that did not come from this site (S06, O02).
    fn refuse_cross_site(&self, headers: &HeaderMap, what: &str, page: bool) -> Option<Response> {
        let config = self.gateway.config();
        if is_same_origin_write(
            headers,
            &config.public_origin(),
            &config.csrf_header.to_ascii_lowercase(),
        ) {
            return None;
        }
        tracing::warn!(what, "cross-site request refused");
        Some(no_store(
            HttpError::new(
                StatusCode::FORBIDDEN,
                "csrf_refused",
                format!("{what} must come from this site."),
            )
            .page(page)
            .into_response(),
        ))
    }

    /// Absolute login URL for API clients, from the configured public URL only (L08).
    fn login_url(&self) -> String {
        format!(
            "{}{}",
            self.gateway.config().public_origin(),
            self.login_path()
        )
    }
}

/// Splits a query string; a repeated parameter among `keys` is refused (R02).
fn query_params(
    raw: Option<&str>,
    keys: &[&'static str],
) -> Result<HashMap<&'static str, String>, SessionError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if let Some(key) = keys.iter().find(|key| **key == k)
            && out.insert(*key, v.into_owned()).is_some()
        {
            return Err(SessionError::DuplicateParameter(key));
        }
    }
    Ok(out)
}

fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn redirect(
    status: StatusCode,
    location: &str,
    set_cookie: Option<String>,
) -> Result<Response, HttpError> {
    let mut response = status.into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(location).map_err(|_| {
            HttpError::bad_request("bad_redirect", "The redirect target is not valid.")
        })?,
    );
    if let Some(cookie) = set_cookie {
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).map_err(|_| {
                HttpError::bad_request("bad_cookie", "The cookie could not be set.")
            })?,
        );
    }
    Ok(no_store(response))
}

/// `GET /auth/login?return_to=/path`: starts a login transaction and sends the browser
/// to the provider.
pub async fn login(
    State(routes): State<Routes>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let page = is_navigation(&method, &headers) || method == Method::GET;
    let result = async {
        let params = query_params(query.as_deref(), &["return_to"])?;
        let return_to = ReturnTo::parse(params.get("return_to").map(String::as_str));
        // Reuse this browser's binding so that several tabs share one cookie.
        let binding = routes
            .cookies
            .read(&headers, CookieKind::LoginBinding)
            .value()
            .filter(|v| SessionId::parse(v).is_some())
            .map(str::to_owned)
            .unwrap_or_else(random_token);
        let url = routes.sessions().begin_login(&binding, return_to).await?;
        let cookie = routes
            .cookies
            .set(CookieKind::LoginBinding, &binding, LOGIN_TTL_SECONDS);
        Ok::<_, SessionError>((url, cookie))
    }
    .await;
    match result {
        Ok((url, cookie)) => {
            redirect(StatusCode::FOUND, url.as_str(), Some(cookie)).into_response()
        }
        Err(e) => no_store(HttpError::from(e).page(page).into_response()),
    }
}

/// `GET /auth/callback`: finishes the login and sets the session cookie.
pub async fn callback(
    State(routes): State<Routes>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let mut p = query_params(
            query.as_deref(),
            &["state", "code", "iss", "error", "error_description"],
        )?;
        let params = CallbackParams {
            state: p.remove("state"),
            code: p.remove("code"),
            iss: p.remove("iss"),
            error: p.remove("error"),
            error_description: p.remove("error_description"),
        };
        let binding = routes.cookies.read(&headers, CookieKind::LoginBinding);
        let replaced = routes
            .cookies
            .read(&headers, CookieKind::Session)
            .value()
            .and_then(SessionId::parse);
        routes
            .sessions()
            .complete_login(
                params,
                binding.value(),
                replaced.as_ref(),
                user_agent(&headers),
            )
            .await
    }
    .await;
    match result {
        Ok(outcome) => {
            let cookie = routes.cookies.set(
                CookieKind::Session,
                outcome.session_id.expose(),
                outcome.max_age,
            );
            let mut response = match redirect(
                StatusCode::SEE_OTHER,
                outcome.return_to.as_str(),
                Some(cookie),
            ) {
                Ok(r) => r,
                Err(e) => return e.page(true).into_response(),
            };
            response.headers_mut().insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        Err(e) => {
            let retry = routes.login_path();
            no_store(HttpError::from(e).page(true).retry(retry).into_response())
        }
    }
}

/// `GET /auth/session`: who is signed in, for single-page apps. Never a token.
pub async fn session(State(routes): State<Routes>, headers: HeaderMap) -> Response {
    let signed_out = || {
        let body = json!({ "authenticated": false, "login_url": routes.login_url() });
        no_store((StatusCode::UNAUTHORIZED, axum::Json(body)).into_response())
    };
    let Some(value) = routes
        .cookies
        .read(&headers, CookieKind::Session)
        .value()
        .map(str::to_owned)
    else {
        return signed_out();
    };
    match routes.sessions().authenticate(&value).await {
        Ok(Some(active)) => {
            let body = json!({
                "authenticated": true,
                "user": {
                    "id": active.user.id.to_string(),
                    "email": active.user.email,
                    "name": active.user.name,
                },
                "expires_at": active.expires_at,
            });
            let mut response = no_store(axum::Json(body).into_response());
            // A rotated id: this answer carries the new cookie.
            if let Some(cookie) = active
                .new_cookie
                .as_ref()
                .map(|id| {
                    routes
                        .cookies
                        .set(CookieKind::Session, id.expose(), active.max_age)
                })
                .and_then(|c| HeaderValue::from_str(&c).ok())
            {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            response
        }
        Ok(None) => signed_out(),
        Err(e) => no_store(HttpError::from(e).into_response()),
    }
}

/// `POST /auth/logout`: same-origin only (O02). Deletes the session, revokes its
/// refresh token at the provider when offered, and clears both cookies with the
/// attributes they were set with. A navigation (form post) is sent to `/`; an API call
/// gets `{"ok":true}`.
pub async fn logout(
    State(routes): State<Routes>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let config = routes.gateway.config();
    let page = is_navigation(&method, &headers);
    if let Some(refusal) = routes.refuse_cross_site(&headers, "Sign-out", page) {
        return refusal;
    }
    let cookie = routes
        .cookies
        .read(&headers, CookieKind::Session)
        .value()
        .map(str::to_owned);
    let id_token = match cookie {
        Some(cookie) => match routes.sessions().sign_out(&cookie).await {
            Ok(SignOut::Ended { id_token, .. }) => id_token,
            Ok(SignOut::NoSession) => None,
            Err(e) => return no_store(HttpError::from(e).page(page).into_response()),
        },
        None => None,
    };
    let mut set_cookies = vec![
        routes.cookies.clear(CookieKind::Session),
        routes.cookies.clear(CookieKind::LoginBinding),
    ];
    // RP-initiated logout: on to the provider, with a state only this browser holds.
    // The ID token goes along only when configured, and never into a JSON body.
    let mut provider_url = None;
    if config.logout.provider_logout {
        let state = random_token();
        let target = routes.post_logout_redirect_uri(query.as_deref());
        let hint = id_token
            .as_deref()
            .filter(|_| config.logout.id_token_hint && page)
            .map(|t| t.as_str());
        match routes
            .gateway
            .provider()
            .end_session_url(hint, &state, &target)
            .await
        {
            Ok(Some(url)) => {
                set_cookies.push(
                    routes
                        .cookies
                        .set(CookieKind::Logout, &state, LOGIN_TTL_SECONDS),
                );
                provider_url = Some(url.to_string());
            }
            Ok(None) => tracing::warn!(
                "logout.provider_logout is on, but the provider has no end_session_endpoint"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                code = e.code(),
                "could not reach the provider for its sign-out; signed out here only"
            ),
        }
    }
    let mut response = match (&provider_url, page) {
        (Some(url), true) => redirect_to(url),
        (None, true) => redirect_to("/"),
        (Some(url), false) => axum::Json(json!({ "ok": true, "redirect": url })).into_response(),
        (None, false) => axum::Json(json!({ "ok": true })).into_response(),
    };
    for c in set_cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    no_store(response)
}

fn redirect_to(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `GET /auth/logged-out?state=…`: where the provider returns the browser after its
/// sign-out. The `state` must be the one this browser was given (its `portcullis_logout`
/// cookie); any other return is ignored (docs/security.md O03).
pub async fn logged_out(
    State(routes): State<Routes>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let state = query_params(query.as_deref(), &["state"])
        .ok()
        .and_then(|mut q| q.remove("state"));
    let expected = routes.cookies.read(&headers, CookieKind::Logout);
    let matched = match (state.as_deref(), expected.value()) {
        (Some(s), Some(e)) => secrets_equal(s.as_bytes(), e.as_bytes()),
        _ => false,
    };
    let login = routes.login_path();
    if !matched {
        tracing::warn!("a post-logout return with a state this browser was not given; ignored");
        let mut e = HttpError::bad_request(
            "logout_state_mismatch",
            "This sign-out answer was not started in this browser, so it was ignored.",
        )
        .page(true);
        e.retry_url = None;
        return no_store(e.into_response());
    }
    let html = super::pages::message_page(
        "Signed out",
        "You are signed out, here and at your identity provider.",
        None,
        "signed_out",
        Some((&login, "Sign in again")),
    );
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&routes.cookies.clear(CookieKind::Logout)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    no_store(r)
}

/// The largest body the gateway reads itself: a logout token or a code and verifier
/// are a few kilobytes.
const MAX_OWN_BODY: usize = 64 * 1024;

/// Why a body was not read.
enum BodyRefused {
    TooLarge,
    Unreadable,
}

/// The whole body, or a refusal as soon as it passes `limit` bytes.
async fn read_at_most(
    mut body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, BodyRefused> {
    use http_body::Body as _;
    let mut read = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|_| BodyRefused::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > limit {
                return Err(BodyRefused::TooLarge);
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(read.into())
}

/// The seed's JSON body for `POST {spa.code_exchange_path}`.
#[derive(serde::Deserialize)]
struct SpaExchange {
    code: Option<String>,
    verifier: Option<String>,
    code_verifier: Option<String>,
    nonce: Option<String>,
}

/// RFC 7636 §4.1: 43–128 unreserved characters.
fn is_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `POST {spa.code_exchange_path}` (only with `spa.code_exchange = true`): the seed's
/// front-end contract. JSON `{code, verifier}` (or `code_verifier`; `nonce` optional)
/// from this site only; answers `{"ok":true}` with the session cookie.
pub async fn spa_code_exchange(
    State(routes): State<Routes>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some(refusal) = routes.refuse_cross_site(&headers, "The code exchange", false) {
        return refusal;
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return no_store(
            HttpError::bad_request("not_json", "Send the code and verifier as JSON.")
                .into_response(),
        );
    }
    let body = match routes.read_body(body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let Ok(req) = serde_json::from_slice::<SpaExchange>(&body) else {
        return no_store(
            HttpError::bad_request(
                "bad_json",
                "The body must be a JSON object with `code` and `verifier`.",
            )
            .into_response(),
        );
    };
    let verifier = match (req.verifier, req.code_verifier) {
        (Some(a), Some(b)) if a != b => None,
        (Some(v), _) | (None, Some(v)) => Some(v),
        (None, None) => None,
    };
    let (Some(code), Some(verifier)) = (
        req.code.filter(|c| !c.is_empty() && c.len() <= 2048),
        verifier.filter(|v| is_verifier(v)),
    ) else {
        return no_store(
            HttpError::bad_request(
                "code_or_verifier_invalid",
                "Send one `code` and one PKCE `verifier` (43 to 128 unreserved characters).",
            )
            .into_response(),
        );
    };
    let replaced = routes
        .cookies
        .read(&headers, CookieKind::Session)
        .value()
        .and_then(SessionId::parse);
    let outcome = routes
        .sessions()
        .complete_spa_login(
            &code,
            &verifier,
            req.nonce.as_deref().filter(|n| !n.is_empty()),
            replaced.as_ref(),
            user_agent(&headers),
        )
        .await;
    match outcome {
        Ok(outcome) => {
            let cookie = routes.cookies.set(
                CookieKind::Session,
                outcome.session_id.expose(),
                outcome.max_age,
            );
            let mut r = axum::Json(json!({ "ok": true })).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            no_store(r)
        }
        Err(e) => no_store(HttpError::from(e).into_response()),
    }
}

/// `POST /auth/backchannel-logout`: OIDC Back-Channel Logout 1.0 §2.5–2.8. The body is
/// a form with one `logout_token`. 200 when it was valid (whether or not a session was
/// still there), 400 with a JSON error otherwise; never cached.
pub async fn backchannel_logout(
    State(routes): State<Routes>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let refuse = |description: &str| {
        no_store(
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": "invalid_request", "error_description": description })),
            )
                .into_response(),
        )
    };
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !form {
        return refuse("The body must be a form (application/x-www-form-urlencoded).");
    }
    let body = match routes.read_body(body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let tokens: Vec<String> = url::form_urlencoded::parse(&body)
        .filter(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
        .collect();
    let [token] = tokens.as_slice() else {
        return refuse("Send exactly one logout_token.");
    };
    match routes.sessions().backchannel_logout(token).await {
        Ok(_) => no_store(StatusCode::OK.into_response()),
        Err(crate::session::logout::BackchannelError::Store(e)) => {
            no_store(HttpError::from(e).into_response())
        }
        // The provider's keys are out of reach for now: a 5xx invites a retry.
        Err(crate::session::logout::BackchannelError::Provider(e)) if e.is_transient() => {
            tracing::warn!(
                code = e.code(),
                "back-channel logout could not be checked now"
            );
            no_store(
                HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "provider_unavailable",
                    "The identity provider's keys could not be fetched; try again.",
                )
                .into_response(),
            )
        }
        Err(e) => {
            tracing::warn!(code = e.code(), reason = %e, "back-channel logout refused");
            refuse(&format!("The logout token was refused ({}).", e.code()))
        }
    }
}

/// Any method but POST on `/auth/logout`: signing out by GET would let any page sign
/// users out with an image tag.
pub async fn method_not_allowed() -> Response {
    let mut r = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Use a POST request here.",
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

/// `GET {prefix}/jwks.json`: the public keys of the identity assertions
/// (`X-Portcullis-Jwt-Assertion`), for apps to verify them. Cacheable for a minute;
/// a verifier that meets an unknown `kid` should fetch again (new keys are published
/// two minutes before they sign).
pub async fn jwks(State(routes): State<Routes>) -> Response {
    match routes.sessions().assertion_jwks().await {
        Ok(keys) => {
            let mut r = axum::Json(keys).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "public, max-age={}",
                crate::session::assertion::JWKS_MAX_AGE
            )) {
                r.headers_mut().insert(header::CACHE_CONTROL, v);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "the assertion keys cannot be read");
            let mut refusal = HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keys_unavailable",
                "The signing keys cannot be read right now; try again shortly.",
            );
            refusal.retry_after = Some(5);
            no_store(refusal.into_response())
        }
    }
}

/// `GET {prefix}/client-jwks.json`: the public half of `provider.client_key_file`,
/// for providers that fetch a `private_key_jwt` client's keys from a `jwks_uri`
/// (others are given the same set at registration). 404 without a client key.
pub async fn client_jwks(State(routes): State<Routes>) -> Response {
    let Some(key) = routes
        .sessions()
        .provider()
        .settings()
        .client_key
        .as_deref()
    else {
        return HttpError::new(
            StatusCode::NOT_FOUND,
            "no_client_key",
            "This gateway signs no client assertions (provider.client_key_file is not set).",
        )
        .into_response();
    };
    let mut r = axum::Json(key.public_jwks(false)).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Response {
    no_store((StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response())
}

/// `GET /readyz`: the store answers and the provider's metadata is loaded.
pub async fn readyz(State(routes): State<Routes>) -> Response {
    let r = routes.gateway.readiness().await;
    let status = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": r.is_ready(),
        "store": r.store,
        "provider": r.provider,
        "key_ring": r.key_ring,
    });
    no_store((status, axum::Json(body)).into_response())
}

/// Anything the gateway does not serve (the reverse proxy arrives later).
pub async fn not_found(method: Method, headers: HeaderMap) -> Response {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "There is nothing here.")
        .page(is_navigation(&method, &headers))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r02_duplicate_parameters_are_refused() {
        assert!(matches!(
            query_params(Some("state=a&state=b"), &["state"]),
            Err(SessionError::DuplicateParameter("state"))
        ));
        let ok = query_params(Some("state=a&x=1&x=2"), &["state"]).unwrap();
        assert_eq!(ok["state"], "a");
    }
}
