//! The endpoints that read a POSTed body themselves, bounded: the SPA's code exchange
//! and OIDC back-channel logout.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Routes, no_store};
use crate::http::cookies::CookieKind;
use crate::http::error::HttpError;
use crate::http::request::user_agent;
use crate::session::SessionId;

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
