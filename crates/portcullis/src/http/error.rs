//! The one place where errors become HTTP answers: a status, a stable code and one
//! human sentence; an HTML page for navigations and JSON for API calls. Nothing from a
//! token, code or session id ever appears here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::pages::message_page;
use crate::provider::ProviderError;
use crate::session::SessionError;
use crate::store::StoreError;

/// An error ready to be answered.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Shown on pages only (e.g. the provider's escaped `error_description`).
    pub detail: Option<String>,
    /// Answer with HTML (navigation) rather than JSON.
    pub page: bool,
    /// Where a "try again" link points, for pages.
    pub retry_url: Option<String>,
    /// `Retry-After` seconds of a 503 (5 when unset).
    pub retry_after: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            detail: None,
            page: false,
            retry_url: None,
            retry_after: None,
        }
    }

    pub fn page(mut self, page: bool) -> Self {
        self.page = page;
        self
    }

    pub fn retry(mut self, url: String) -> Self {
        self.retry_url = Some(url);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        403 => "Access denied",
        400..=499 => "Sign-in could not be completed",
        503 => "Temporarily unavailable",
        _ => "The identity provider is not responding",
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = if self.page {
            let link = self
                .retry_url
                .as_deref()
                .map(|u| (u, "Try signing in again"));
            let html = message_page(
                title(self.status),
                &self.message,
                self.detail.as_deref(),
                self.code,
                link,
            );
            let mut r = (self.status, html).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        } else {
            let body = serde_json::json!({ "error": self.code, "message": self.message });
            (self.status, axum::Json(body)).into_response()
        };
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.retry_after.unwrap_or(5)),
            );
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, code = e.code(), "session store failure");
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "Sessions are temporarily unavailable. Please try again in a moment.",
        )
    }
}

impl From<ProviderError> for HttpError {
    fn from(e: ProviderError) -> Self {
        let code = e.code();
        match &e {
            ProviderError::Timeout => {
                tracing::warn!(error = %e, code, "identity provider timed out");
                HttpError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    code,
                    "The identity provider did not answer in time. Please try again.",
                )
            }
            ProviderError::Unreachable(_)
            | ProviderError::ServerError(_)
            | ProviderError::TooLarge(_)
            | ProviderError::BadResponse(_) => {
                tracing::warn!(error = %e, code, "identity provider failure");
                HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    code,
                    "The identity provider is not working right now. Please try again later.",
                )
            }
            ProviderError::IssuerMismatch { .. } => {
                tracing::error!(error = %e, code, "the provider's discovery document names another issuer; refusing logins");
                HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_misconfigured",
                    "The identity provider's configuration does not match this gateway's.",
                )
            }
            ProviderError::TokenRejected(_) => {
                tracing::warn!(error = %e, code, "token endpoint refused the code");
                HttpError::bad_request(
                    "code_rejected",
                    "The identity provider refused this sign-in. Please sign in again.",
                )
            }
            ProviderError::IdToken(inner) => {
                tracing::warn!(reason = inner.code(), detail = %inner, "ID token refused");
                HttpError::bad_request(
                    "id_token_invalid",
                    "The identity provider's answer could not be verified. Please sign in again.",
                )
            }
            ProviderError::ClientAssertion(_) => {
                tracing::error!(error = %e, code, "the client key could not sign an assertion");
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    code,
                    "The gateway could not authenticate itself to the identity provider.",
                )
            }
            ProviderError::UserinfoSubjectMismatch => {
                tracing::warn!(code, "UserInfo answered for another subject");
                HttpError::bad_request(
                    code,
                    "The identity provider's answer could not be verified. Please sign in again.",
                )
            }
        }
    }
}

impl From<SessionError> for HttpError {
    fn from(e: SessionError) -> Self {
        let code = e.code();
        match e {
            SessionError::Store(s) => s.into(),
            SessionError::Provider(p) => p.into(),
            SessionError::AccessDenied(a) => {
                tracing::info!(reason = a.code(), "sign-in refused by access rules");
                HttpError::new(
                    StatusCode::FORBIDDEN,
                    a.code(),
                    format!("You are signed in at the identity provider, but {a}."),
                )
            }
            SessionError::ProviderDenied { error, description } => {
                let error = crate::provider::discovery::truncate(&error, 64);
                tracing::info!(provider_error = %error, "the provider ended the sign-in with an error");
                let mut e = HttpError::bad_request(
                    code,
                    "The identity provider did not complete the sign-in.",
                );
                e.detail = Some(match description {
                    Some(d) => {
                        format!("{error}: {}", crate::provider::discovery::truncate(&d, 300))
                    }
                    None => error,
                });
                e
            }
            SessionError::SignInsFull => {
                let mut e = HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "Too many sign-ins are in progress right now. Please try again in a moment.",
                );
                e.retry_after = Some(10);
                e
            }
            SessionError::ScopeRefused { scopes } => {
                tracing::warn!(%scopes, "the identity provider refused the requested scopes (invalid_scope); set `scopes` (PORTCULLIS_SCOPES) to scopes it supports");
                let mut e = HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    code,
                    "The identity provider does not accept the scopes this gateway asks for; its administrator must change the gateway's configuration.",
                );
                e.detail = Some(format!(
                    "The provider answered invalid_scope to `{scopes}`. Set `scopes` (PORTCULLIS_SCOPES) to scopes the provider supports, for example without `offline_access`."
                ));
                e
            }
            SessionError::RefreshUnavailable { retry_after } => {
                let mut e = HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "Your session is fine, but the identity provider is not answering right now. Please try again in a moment.",
                );
                e.retry_after = Some(retry_after);
                e
            }
            SessionError::Unsealable => {
                tracing::error!(
                    code,
                    "a stored login transaction could not be opened (key ring changed?)"
                );
                HttpError::bad_request(
                    code,
                    "This sign-in can no longer be completed. Please sign in again.",
                )
            }
            other => {
                tracing::info!(code, "sign-in callback refused");
                HttpError::bad_request(
                    code,
                    format!("Sign-in failed: {other}. Please sign in again."),
                )
            }
        }
    }
}

impl From<crate::session::assertion::AssertionError> for HttpError {
    /// No assertion could be signed: the request does not go on (an app may depend on
    /// it). Logged here, where the cause is still known.
    fn from(e: crate::session::assertion::AssertionError) -> Self {
        tracing::error!(error = %e, "no identity assertion could be signed");
        let mut refusal = HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "assertion_unavailable",
            "The gateway cannot vouch for you right now; try again shortly.",
        );
        refusal.retry_after = Some(5);
        refusal
    }
}
