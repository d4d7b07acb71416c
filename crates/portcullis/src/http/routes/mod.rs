//! The gateway's own endpoints under the prefix: `/login`, `/callback`, `/session`,
//! and `/healthz`, `/readyz` at the root. The browser's endpoints are in `browser`, the
//! ones that read a POSTed body (the SPA exchange, back-channel logout) in `posted`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::cookies::CookieJar;
use super::error::HttpError;
use super::request::{is_navigation, is_same_origin_write};
use crate::gateway::Gateway;
use crate::session::SessionError;
use crate::session::Sessions;

mod browser;
mod choose;
mod posted;

pub use browser::{callback, logged_out, login, logout, provider_callback, session};
pub use posted::{backchannel_logout, spa_code_exchange};

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
pub(super) fn query_params(
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

pub(super) fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

pub(super) fn redirect(
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

pub(super) fn redirect_to(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
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
    // Every provider's client key, once each (entries may share one).
    let mut keys: Vec<serde_json::Value> = Vec::new();
    for provider in routes.sessions().providers().iter() {
        let settings = provider.settings();
        let Some(key) = settings.client_key.as_deref() else {
            continue;
        };
        let set = key.public_jwks(settings.fapi2);
        for jwk in set["keys"].as_array().into_iter().flatten() {
            if !keys.contains(jwk) {
                keys.push(jwk.clone());
            }
        }
    }
    if keys.is_empty() {
        return HttpError::new(
            StatusCode::NOT_FOUND,
            "no_client_key",
            "This gateway signs no client assertions (provider.client_key_file is not set).",
        )
        .into_response();
    }
    let mut r = axum::Json(json!({ "keys": keys })).into_response();
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

/// The largest body the gateway reads itself: a logout token or a code and verifier
/// are a few kilobytes.
pub(super) const MAX_OWN_BODY: usize = 64 * 1024;

/// Why a body was not read.
pub(super) enum BodyRefused {
    TooLarge,
    Unreadable,
}

/// The whole body, or a refusal as soon as it passes `limit` bytes.
pub(super) async fn read_at_most(
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
