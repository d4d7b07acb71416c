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
use crate::random::random_token;
use crate::session::login::LOGIN_TTL_SECONDS;
use crate::session::{CallbackParams, ReturnTo, SessionError, SessionId};

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

    fn login_path(&self) -> String {
        format!("{}/login", self.gateway.config().prefix)
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
        let url = routes.gateway.begin_login(&binding, return_to).await?;
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
            .gateway
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
    match routes.gateway.authenticate(&value).await {
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
pub async fn logout(State(routes): State<Routes>, method: Method, headers: HeaderMap) -> Response {
    let config = routes.gateway.config();
    let page = is_navigation(&method, &headers);
    if !is_same_origin_write(
        &headers,
        &config.public_origin(),
        &config.csrf_header.to_ascii_lowercase(),
    ) {
        tracing::warn!("cross-site sign-out refused");
        return no_store(
            HttpError::new(
                StatusCode::FORBIDDEN,
                "csrf_refused",
                "Sign-out must come from this site.",
            )
            .page(page)
            .into_response(),
        );
    }
    let cookie = routes
        .cookies
        .read(&headers, CookieKind::Session)
        .value()
        .map(str::to_owned);
    if let Some(cookie) = cookie
        && let Err(e) = routes.gateway.sign_out(&cookie).await
    {
        return no_store(HttpError::from(e).page(page).into_response());
    }
    let mut response = if page {
        let mut r = StatusCode::SEE_OTHER.into_response();
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/"));
        r
    } else {
        axum::Json(json!({ "ok": true })).into_response()
    };
    for kind in [CookieKind::Session, CookieKind::LoginBinding] {
        if let Ok(v) = HeaderValue::from_str(&routes.cookies.clear(kind)) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    no_store(response)
}

/// Any method but POST on `/auth/logout`: signing out by GET would let any page sign
/// users out with an image tag.
pub async fn method_not_allowed() -> Response {
    let mut r = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Sign out with a POST request.",
    )
    .into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
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
    let body = json!({ "ready": r.is_ready(), "store": r.store, "provider": r.provider });
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
