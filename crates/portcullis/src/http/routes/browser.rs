//! The browser's endpoints: sign-in, the provider's callback, the session's state and
//! sign-out.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Routes, no_store, query_params, redirect, redirect_to};
use crate::http::cookies::CookieKind;
use crate::http::error::HttpError;
use crate::http::request::{is_navigation, user_agent};
use crate::random::{random_token, secrets_equal};
use crate::session::login::LOGIN_TTL_SECONDS;
use crate::session::{CallbackParams, ReturnTo, SessionError, SessionId, SignOut};

/// `GET /auth/login?return_to=/path[&provider=ID][&login_hint=EMAIL]`: starts a login
/// transaction and sends the browser to the provider — the one named, else the one
/// whose `email_domains` hold the hint's domain, else `default_provider`, else the only
/// one; with several and no choice, the chooser page.
pub async fn login(
    State(routes): State<Routes>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let page = is_navigation(&method, &headers) || method == Method::GET;
    let result = async {
        let params = query_params(query.as_deref(), &["return_to", "provider", "login_hint"])?;
        let return_to = ReturnTo::parse(params.get("return_to").map(String::as_str));
        let hint = params
            .get("login_hint")
            .map(|h| h.trim())
            .filter(|h| !h.is_empty() && h.len() <= 320 && !h.chars().any(char::is_control));
        let Some(provider) = super::choose::provider(
            routes.gateway.config(),
            params.get("provider").map(String::as_str),
            hint,
        )?
        else {
            return Ok(Err(super::choose::chooser(
                routes.gateway.config(),
                &return_to,
                hint.is_some(),
            )));
        };
        // Reuse this browser's binding so that several tabs share one cookie.
        let binding = routes
            .cookies
            .read(&headers, CookieKind::LoginBinding)
            .value()
            .filter(|v| SessionId::parse(v).is_some())
            .map(str::to_owned)
            .unwrap_or_else(random_token);
        let url = routes
            .sessions()
            .begin_login(&provider, &binding, return_to, hint)
            .await?;
        let cookie = routes
            .cookies
            .set(CookieKind::LoginBinding, &binding, LOGIN_TTL_SECONDS);
        Ok::<_, SessionError>(Ok((url, cookie)))
    }
    .await;
    match result {
        Ok(Ok((url, cookie))) => {
            redirect(StatusCode::FOUND, url.as_str(), Some(cookie)).into_response()
        }
        Ok(Err(chooser)) => no_store(chooser),
        Err(e) => no_store(HttpError::from(e).page(page).into_response()),
    }
}

/// `GET /auth/callback`: the `default` provider's callback (the top-level form's).
pub async fn callback(
    State(routes): State<Routes>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    finish_login(routes, crate::config::DEFAULT_PROVIDER_ID, headers, query).await
}

/// `GET /auth/callback/{provider}`: another provider's callback. Each provider has its
/// own, so an answer at the wrong one is told apart (G12).
pub async fn provider_callback(
    State(routes): State<Routes>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // `default`'s callback is `{prefix}/callback`, and only that.
    if provider == crate::config::DEFAULT_PROVIDER_ID {
        return no_store(
            HttpError::new(
                StatusCode::NOT_FOUND,
                "unknown_callback",
                "There is no such sign-in address.",
            )
            .page(true)
            .into_response(),
        );
    }
    finish_login(routes, &provider, headers, query).await
}

/// Finishes the login that `provider`'s callback received and sets the session cookie.
async fn finish_login(
    routes: Routes,
    provider: &str,
    headers: HeaderMap,
    query: Option<String>,
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
                provider,
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
                "provider": active.record.provider_id,
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
    let (id_token, provider_id) = match cookie {
        Some(cookie) => match routes.sessions().sign_out(&cookie).await {
            Ok(SignOut::Ended {
                id_token,
                provider_id,
                ..
            }) => (id_token, Some(provider_id)),
            Ok(SignOut::NoSession) => (None, None),
            Err(e) => return no_store(HttpError::from(e).page(page).into_response()),
        },
        None => (None, None),
    };
    let mut set_cookies = vec![
        routes.cookies.clear(CookieKind::Session),
        routes.cookies.clear(CookieKind::LoginBinding),
    ];
    // RP-initiated logout: on to the provider, with a state only this browser holds.
    // The ID token goes along only when configured, and never into a JSON body.
    let mut provider_url = None;
    if config.logout.provider_logout {
        let hint = id_token
            .as_deref()
            .filter(|_| config.logout.id_token_hint && page)
            .map(|t| t.as_str());
        if let Some((url, state)) = routes
            .provider_sign_out(provider_id.as_deref(), hint, query.as_deref())
            .await
        {
            let cookie = routes
                .cookies
                .set(CookieKind::Logout, &state, LOGIN_TTL_SECONDS);
            set_cookies.push(cookie);
            provider_url = Some(url);
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

impl Routes {
    /// Where the browser signs out at the provider (the session's; without a session,
    /// the only or default one), and the state it will come back with; `None` when the
    /// provider offers no sign-out or cannot be reached (signed out here only).
    async fn provider_sign_out(
        &self,
        provider_id: Option<&str>,
        id_token_hint: Option<&str>,
        query: Option<&str>,
    ) -> Option<(String, String)> {
        let config = self.gateway.config();
        let provider = match provider_id {
            Some(id) => self.gateway.providers().get(id),
            None => config
                .default_provider
                .as_deref()
                .or_else(|| (config.providers.len() == 1).then(|| config.providers[0].id.as_str()))
                .and_then(|id| self.gateway.providers().get(id)),
        }?;
        let state = random_token();
        let target = self.post_logout_redirect_uri(query);
        match provider
            .end_session_url(id_token_hint, &state, &target)
            .await
        {
            Ok(Some(url)) => Some((url.to_string(), state)),
            Ok(None) => {
                tracing::warn!(
                    "logout.provider_logout is on, but the provider has no end_session_endpoint"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    code = e.code(),
                    "could not reach the provider for its sign-out; signed out here only"
                );
                None
            }
        }
    }
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
    let html = crate::http::pages::message_page(
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
