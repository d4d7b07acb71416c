//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) and back-channel logout
//! tokens (OpenID Connect Back-Channel Logout 1.0 §2.4) to every client that took part
//! in the ended session.
//!
//! `post_logout_redirect_uri` must exactly match one registered for the client. With a
//! valid, unexpired `id_token_hint` the sign-out happens at once; without one, or with an
//! expired one (accepted as a hint for the client), the user confirms with a form that
//! carries its own CSRF token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawForm, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::Algorithm;
use portcullis::random::{random_token, secrets_equal, sha256_hex};
use serde_json::json;

use crate::authorize::{SESSION_COOKIE, secure};

/// The sign-out confirmation form's CSRF cookie (distinct from the sign-in form's).
const CSRF_COOKIE: &str = "portcullis_idp_logout_csrf";
use crate::{Idp, now, pages};

const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

struct Request {
    /// Sessions to end (from the hint and from the browser's cookie).
    sids: Vec<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    hinted: bool,
    params: HashMap<String, String>,
}

fn parse(raw: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

/// The sessions a logout ends. With a hint, only the hinted one: a hint for someone
/// else's session (a cross-site link carrying the attacker's own ID token) must not sign
/// this browser out. Without one, the confirmed form ends this browser's session.
async fn sessions_to_end(
    idp: &Idp,
    headers: &HeaderMap,
    hint: Option<&serde_json::Value>,
) -> Vec<String> {
    if let Some(hint) = hint {
        return hint
            .get("sid")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .into_iter()
            .collect();
    }
    let found = portcullis::http::cookies::find_cookie(headers, SESSION_COOKIE);
    let Some(cookie) = found.value() else {
        return Vec::new();
    };
    idp.store
        .session(&sha256_hex(cookie.as_bytes()), now())
        .await
        .ok()
        .flatten()
        .map(|(sid, _, _)| sid)
        .into_iter()
        .collect()
}

/// Checks the request; an error page when the redirect target cannot be trusted.
async fn check(
    idp: &Idp,
    headers: &HeaderMap,
    p: HashMap<String, String>,
) -> Result<Request, Response> {
    let hint = p
        .get("id_token_hint")
        .and_then(|t| idp.keys.verify_own(t, &idp.config.issuer));
    if p.contains_key("id_token_hint") && hint.is_none() {
        return Err(pages::error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The id_token_hint was not issued by this provider.",
        ));
    }
    let hinted_client = hint
        .as_ref()
        .and_then(|c| c.get("aud"))
        .and_then(|a| a.as_str())
        .map(str::to_owned);
    let client_id = match (hinted_client, p.get("client_id")) {
        (Some(h), Some(c)) if h != *c => {
            return Err(pages::error_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_id does not match the id_token_hint.",
            ));
        }
        (Some(h), _) => Some(h),
        (None, c) => c.cloned(),
    };
    let post_logout_redirect_uri = p.get("post_logout_redirect_uri").cloned();
    if let Some(uri) = &post_logout_redirect_uri {
        let registered = client_id
            .as_deref()
            .and_then(|c| idp.config.client(c))
            .is_some_and(|c| c.post_logout_redirect_uris.iter().any(|r| r == uri));
        if !registered {
            return Err(pages::error_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The post_logout_redirect_uri is not registered for this application.",
            ));
        }
    }
    let sids = sessions_to_end(idp, headers, hint.as_ref()).await;
    // An expired hint still names the client and checks the redirect (RP-Initiated
    // Logout §2: providers SHOULD accept it), but signs nobody out unasked.
    let fresh_hint = hint
        .as_ref()
        .and_then(|c| c.get("exp"))
        .and_then(serde_json::Value::as_i64)
        .is_some_and(|exp| now() < exp);
    Ok(Request {
        sids,
        post_logout_redirect_uri,
        state: p.get("state").cloned(),
        hinted: fresh_hint,
        params: p,
    })
}

/// `GET /end_session`.
pub async fn end_session(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let req = match check(&idp, &headers, parse(query.unwrap_or_default().as_bytes())).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    if req.hinted {
        return sign_out(&idp, req).await;
    }
    let csrf = random_token();
    let hidden: Vec<(&str, &str)> = ["post_logout_redirect_uri", "state", "client_id"]
        .iter()
        .filter_map(|k| req.params.get(*k).map(|v| (*k, v.as_str())))
        .collect();
    let mut r = pages::confirm_logout(&hidden, &csrf);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; SameSite=Strict; Max-Age=600{}",
        secure(&idp)
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `POST /end_session`: the confirmation form.
pub async fn end_session_confirmed(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    RawForm(body): RawForm,
) -> Response {
    let p = parse(&body);
    let sent = p.get("csrf").cloned().unwrap_or_default();
    let expected = portcullis::http::cookies::find_cookie(&headers, CSRF_COOKIE)
        .value()
        .unwrap_or("")
        .to_owned();
    if expected.is_empty() || !secrets_equal(sent.as_bytes(), expected.as_bytes()) {
        return pages::error_page(
            StatusCode::BAD_REQUEST,
            "csrf",
            "The sign-out form expired or did not come from this provider.",
        );
    }
    match check(&idp, &headers, p).await {
        Ok(req) => sign_out(&idp, req).await,
        Err(page) => page,
    }
}

async fn sign_out(idp: &Idp, req: Request) -> Response {
    for sid in &req.sids {
        let username = idp.store.session_by_sid(sid).await.ok().flatten();
        match idp.store.end_session(sid).await {
            Ok(clients) => {
                tracing::info!(
                    user = username.as_deref().unwrap_or("?"),
                    "signed out at the provider"
                );
                if let Some(user) = username {
                    send_backchannel_logout(idp, sid, &user, &clients).await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot end a session");
                return pages::error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "The provider could not sign you out. Please try again.",
                );
            }
        }
    }
    let mut r = match &req.post_logout_redirect_uri {
        Some(uri) => {
            let mut params = Vec::new();
            if let Some(s) = &req.state {
                params.push(("state", s.as_str()));
            }
            let mut url = match url::Url::parse(uri) {
                Ok(u) => u,
                Err(_) => {
                    return pages::error_page(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "Bad post_logout_redirect_uri.",
                    );
                }
            };
            if !params.is_empty() {
                url.query_pairs_mut().extend_pairs(params);
            }
            let mut r = StatusCode::SEE_OTHER.into_response();
            if let Ok(v) = HeaderValue::from_str(url.as_str()) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        None => pages::signed_out(),
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{}",
        secure(idp)
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Sends a logout token to each client of the session that registered a
/// `backchannel_logout_uri`. Failures are logged; sign-out at the provider stands.
pub async fn send_backchannel_logout(idp: &Idp, sid: &str, username: &str, clients: &[String]) {
    for client_id in clients {
        let Some(uri) = idp
            .config
            .client(client_id)
            .and_then(|c| c.backchannel_logout_uri.clone())
        else {
            continue;
        };
        let now = now();
        let claims = json!({
            "iss": idp.config.issuer,
            "aud": client_id,
            "iat": now,
            "exp": now + 120,
            "jti": random_token(),
            "sub": username,
            "sid": sid,
            "events": { LOGOUT_EVENT: {} },
        });
        let token = match idp.keys.sign(Algorithm::RS256, "logout+jwt", &claims) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a logout token");
                continue;
            }
        };
        match idp
            .http
            .post(&uri)
            .form(&[("logout_token", token.as_str())])
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                tracing::info!(client = %client_id, "back-channel logout delivered")
            }
            Ok(r) => {
                tracing::warn!(client = %client_id, status = r.status().as_u16(), "back-channel logout refused")
            }
            Err(e) => {
                tracing::warn!(client = %client_id, error = %e.without_url(), "back-channel logout failed")
            }
        }
    }
}
