//! The one place where errors become HTTP answers: a status, a stable code and one
//! human sentence; an HTML page for navigations and JSON for API calls. Nothing from a
//! token, code or session id ever appears here.
//!
//! Converting an error (`From`) has no side effect: what the log should say of it
//! travels with the answer ([`HttpError::log`]) and is written once, when the answer is
//! made (`IntoResponse`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::pages::message_page;
use crate::provider::ProviderError;
use crate::session::SessionError;
use crate::session::bearer::{Scheme, TokenRefusal};
use crate::store::StoreError;

/// An error ready to be answered.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Shown on pages only (e.g. the provider's escaped `error_description`).
    pub detail: Option<Box<str>>,
    /// Answer with HTML (navigation) rather than JSON.
    pub page: bool,
    /// Where a "try again" link points, for pages.
    pub retry_url: Option<String>,
    /// `Retry-After` seconds of a 503 (5 when unset).
    pub retry_after: Option<u64>,
    /// The log line written when this error is answered.
    pub log: Option<Box<LogLine>>,
    /// For an access token's request: `WWW-Authenticate` and a `DPoP-Nonce`.
    pub challenge: Option<Box<Challenge>>,
}

/// What an answer to a token request carries besides its status (RFC 6750 §3, RFC 9449
/// §7.1 and §9).
#[derive(Debug, Clone)]
pub struct Challenge {
    pub www_authenticate: String,
    pub dpop_nonce: Option<String>,
}

/// What the log says of an error when it is answered: a fixed sentence, the error's
/// stable code and, for operators, its description (never a token, code or id: errors
/// do not carry them).
#[derive(Debug, Clone)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: &'static str,
    pub code: &'static str,
    pub detail: Option<String>,
}

/// How loud a [`LogLine`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

impl LogLine {
    fn write(&self) {
        let detail = self.detail.as_deref();
        let code = self.code;
        match self.level {
            LogLevel::Info => tracing::info!(code, detail, "{}", self.message),
            LogLevel::Warn => tracing::warn!(code, detail, "{}", self.message),
            LogLevel::Error => tracing::error!(code, detail, "{}", self.message),
        }
    }
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
            log: None,
            challenge: None,
        }
    }

    /// 403 `insufficient_scope` naming the scope (RFC 6750 §3.1); with the token's
    /// scheme, a challenge too.
    pub fn insufficient_scope(scope: &str, scheme: Option<Scheme>) -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("This address needs the scope `{scope}`."),
        );
        if let Some(scheme) = scheme {
            e.challenge = Some(Box::new(Challenge {
                www_authenticate: format!(
                    "{} error=\"insufficient_scope\", scope=\"{scope}\"",
                    scheme.challenge()
                ),
                dpop_nonce: None,
            }));
        }
        e
    }

    /// Says what the log writes when this error is answered.
    fn logged(mut self, level: LogLevel, message: &'static str, detail: Option<String>) -> Self {
        self.log = Some(Box::new(LogLine {
            level,
            message,
            code: self.code,
            detail,
        }));
        self
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
        if let Some(line) = &self.log {
            line.write();
        }
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
        if let Some(c) = &self.challenge {
            if let Ok(v) = HeaderValue::from_str(&c.www_authenticate) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            if let Some(n) = c
                .dpop_nonce
                .as_deref()
                .and_then(|n| HeaderValue::from_str(n).ok())
            {
                response.headers_mut().insert(
                    axum::http::HeaderName::from_static(super::headers::DPOP_NONCE),
                    n,
                );
            }
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// The DPoP algorithms a proof may use, as a challenge names them (RFC 9449 §7.1).
const DPOP_ALGS: &str = "ES256 ES384 RS256 RS384 RS512 PS256 PS384 EdDSA";

/// RFC 6750 §3 and RFC 9449 §7.1: every refusal of a token names the scheme and the
/// error; never a sign-in redirect, never a page.
impl From<TokenRefusal> for HttpError {
    fn from(refusal: TokenRefusal) -> Self {
        let challenge = |scheme: Scheme, error: &str, nonce: Option<String>| {
            let algs = match scheme {
                Scheme::Dpop => format!(" algs=\"{DPOP_ALGS}\","),
                Scheme::Bearer => String::new(),
            };
            Some(Box::new(Challenge {
                www_authenticate: format!("{}{algs} error=\"{error}\"", scheme.challenge()),
                dpop_nonce: nonce,
            }))
        };
        let mut e = match refusal {
            TokenRefusal::Malformed(sentence) => {
                let mut e = Self::bad_request("invalid_request", sentence);
                e.challenge = challenge(Scheme::Bearer, "invalid_request", None);
                e
            }
            TokenRefusal::Invalid { code, scheme } => {
                let mut e = Self::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "The access token is not valid here.",
                )
                .logged(
                    LogLevel::Info,
                    "an access token was refused",
                    Some(code.to_owned()),
                );
                e.challenge = challenge(scheme, "invalid_token", None);
                e
            }
            TokenRefusal::Proof { code, nonce } => {
                let error = if nonce.is_some() {
                    "use_dpop_nonce"
                } else {
                    "invalid_dpop_proof"
                };
                let mut e = Self::new(
                    StatusCode::UNAUTHORIZED,
                    if nonce.is_some() {
                        "use_dpop_nonce"
                    } else {
                        "invalid_dpop_proof"
                    },
                    "The DPoP proof is not valid for this request.",
                )
                .logged(
                    LogLevel::Info,
                    "a DPoP proof was refused",
                    Some(code.to_owned()),
                );
                e.challenge = challenge(Scheme::Dpop, error, nonce);
                e
            }
            TokenRefusal::Scope { scope, scheme } => Self::insufficient_scope(&scope, Some(scheme)),
            TokenRefusal::Access(denied) => Self::new(
                StatusCode::FORBIDDEN,
                denied.code(),
                format!("This token may not be used here: {denied}."),
            ),
            TokenRefusal::Unavailable { code } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_check_unavailable",
                "Access tokens cannot be checked right now. Please try again in a moment.",
            )
            .logged(
                LogLevel::Warn,
                "an access token could not be checked",
                Some(code.to_owned()),
            ),
        };
        e.page = false;
        e
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        let detail = Some(format!("{} ({})", e, e.code()));
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "Sessions are temporarily unavailable. Please try again in a moment.",
        )
        .logged(LogLevel::Error, "session store failure", detail)
    }
}

impl From<ProviderError> for HttpError {
    fn from(e: ProviderError) -> Self {
        let code = e.code();
        let detail = Some(e.to_string());
        match &e {
            ProviderError::Timeout => HttpError::new(
                StatusCode::GATEWAY_TIMEOUT,
                code,
                "The identity provider did not answer in time. Please try again.",
            )
            .logged(LogLevel::Warn, "identity provider timed out", detail),
            ProviderError::Unreachable(_)
            | ProviderError::ServerError(_)
            | ProviderError::TooLarge(_)
            | ProviderError::BadResponse(_) => HttpError::new(
                StatusCode::BAD_GATEWAY,
                code,
                "The identity provider is not working right now. Please try again later.",
            )
            .logged(LogLevel::Warn, "identity provider failure", detail),
            ProviderError::IssuerMismatch { .. } => HttpError::new(
                StatusCode::BAD_GATEWAY,
                "provider_misconfigured",
                "The identity provider's configuration does not match this gateway's.",
            )
            .logged(
                LogLevel::Error,
                "the provider's discovery document names another issuer; refusing logins",
                detail,
            ),
            ProviderError::TokenRejected(_) => HttpError::bad_request(
                "code_rejected",
                "The identity provider refused this sign-in. Please sign in again.",
            )
            .logged(LogLevel::Warn, "token endpoint refused the code", detail),
            ProviderError::IdToken(inner) => HttpError::bad_request(
                "id_token_invalid",
                "The identity provider's answer could not be verified. Please sign in again.",
            )
            .logged(
                LogLevel::Warn,
                "ID token refused",
                Some(format!("{} ({inner})", inner.code())),
            ),
            ProviderError::NotFapi2(_)
            | ProviderError::DpopProof(_)
            | ProviderError::ClientAssertion(_)
            | ProviderError::ParRefused(_) => setup_refusal(&e, code, detail),
            ProviderError::UserinfoSubjectMismatch => HttpError::bad_request(
                code,
                "The identity provider's answer could not be verified. Please sign in again.",
            )
            .logged(
                LogLevel::Warn,
                "UserInfo answered for another subject",
                None,
            ),
        }
    }
}

/// The provider cannot be used as this gateway is set up (the profile, the client's
/// keys, a refused push): a problem for its administrator, not the user.
fn setup_refusal(e: &ProviderError, code: &'static str, detail: Option<String>) -> HttpError {
    match e {
        ProviderError::NotFapi2(reasons) => {
            let mut e = HttpError::new(
                StatusCode::BAD_GATEWAY,
                code,
                "The identity provider cannot meet this gateway's security profile (FAPI 2.0); its administrator must change the provider's or the gateway's configuration.",
            )
            .logged(
                LogLevel::Error,
                "the provider's metadata cannot support provider.profile = fapi2",
                detail,
            );
            e.detail = Some(format!("The provider's metadata: {reasons}.").into());
            e
        }
        ProviderError::DpopProof(_) => HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code,
            "The gateway could not prove its key to the identity provider.",
        )
        .logged(LogLevel::Error, "no DPoP proof could be made", detail),
        ProviderError::ClientAssertion(_) => HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            code,
            "The gateway could not authenticate itself to the identity provider.",
        )
        .logged(
            LogLevel::Error,
            "the client key could not sign an assertion",
            detail,
        ),
        ProviderError::ParRefused(_) => HttpError::new(
            StatusCode::BAD_GATEWAY,
            code,
            "The identity provider refused this gateway's sign-in request; its administrator must check the gateway's configuration.",
        )
        .logged(
            LogLevel::Warn,
            "the provider refused the pushed authorization request",
            detail,
        ),
        other => HttpError::new(
            StatusCode::BAD_GATEWAY,
            code,
            "The identity provider is not working right now. Please try again later.",
        )
        .logged(LogLevel::Warn, "identity provider failure", Some(other.to_string())),
    }
}

impl From<SessionError> for HttpError {
    fn from(e: SessionError) -> Self {
        let code = e.code();
        match e {
            SessionError::Store(s) => s.into(),
            SessionError::Provider(p) => p.into(),
            SessionError::AccessDenied(a) => HttpError::new(
                StatusCode::FORBIDDEN,
                a.code(),
                format!("You are signed in at the identity provider, but {a}."),
            )
            .logged(LogLevel::Info, "sign-in refused by access rules", None),
            SessionError::ProviderDenied { error, description } => {
                provider_denied(code, &error, description.as_deref())
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
            SessionError::ScopeRefused { scopes } => scope_refused(code, &scopes),
            SessionError::RefreshUnavailable { retry_after } => {
                let mut e = HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "Your session is fine, but the identity provider is not answering right now. Please try again in a moment.",
                );
                e.retry_after = Some(retry_after);
                e
            }
            SessionError::DpopKey(reason) => {
                let mut e = HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "The gateway cannot reach the identity provider securely right now. Please try again in a moment.",
                )
                .logged(
                    LogLevel::Error,
                    "the gateway's DPoP key could not be read or made",
                    Some(reason),
                );
                e.retry_after = Some(5);
                e
            }
            SessionError::ProviderMismatch => HttpError::bad_request(
                code,
                "This sign-in answer arrived at the wrong address. Please sign in again.",
            )
            .logged(
                LogLevel::Warn,
                "security event: a sign-in answer arrived at another provider's callback than its sign-in was sent to (mix-up); refused before any token request",
                None,
            ),
            SessionError::Unsealable => HttpError::bad_request(
                code,
                "This sign-in can no longer be completed. Please sign in again.",
            )
            .logged(
                LogLevel::Error,
                "a stored login transaction could not be opened (key ring changed?)",
                None,
            ),
            other => HttpError::bad_request(
                code,
                format!("Sign-in failed: {other}. Please sign in again."),
            )
            .logged(LogLevel::Info, "sign-in callback refused", None),
        }
    }
}

/// L09: the provider ended the sign-in with an error; its code and (escaped on the
/// page) description are shown once the state matched.
fn provider_denied(code: &'static str, error: &str, description: Option<&str>) -> HttpError {
    let error = crate::provider::discovery::truncate(error, 64);
    let mut e = HttpError::bad_request(code, "The identity provider did not complete the sign-in.")
        .logged(
            LogLevel::Info,
            "the provider ended the sign-in with an error",
            Some(error.clone()),
        );
    e.detail = Some(
        match description {
            Some(d) => format!("{error}: {}", crate::provider::discovery::truncate(d, 300)),
            None => error,
        }
        .into(),
    );
    e
}

/// `invalid_scope`: the configuration asks for scopes the provider does not offer.
fn scope_refused(code: &'static str, scopes: &str) -> HttpError {
    let mut e = HttpError::new(
        StatusCode::BAD_GATEWAY,
        code,
        "The identity provider does not accept the scopes this gateway asks for; its administrator must change the gateway's configuration.",
    )
    .logged(
        LogLevel::Warn,
        "the identity provider refused the requested scopes (invalid_scope); set `scopes` (PORTCULLIS_SCOPES) to scopes it supports",
        Some(scopes.to_owned()),
    );
    e.detail = Some(
        format!(
            "The provider answered invalid_scope to `{scopes}`. Set `scopes` (PORTCULLIS_SCOPES) to scopes the provider supports, for example without `offline_access`."
        )
        .into(),
    );
    e
}

impl From<crate::session::assertion::AssertionError> for HttpError {
    /// No assertion could be signed: the request does not go on (an app may depend on
    /// it). The log line keeps the cause.
    fn from(e: crate::session::assertion::AssertionError) -> Self {
        let mut refusal = HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "assertion_unavailable",
            "The gateway cannot vouch for you right now; try again shortly.",
        )
        .logged(
            LogLevel::Error,
            "no identity assertion could be signed",
            Some(e.to_string()),
        );
        refusal.retry_after = Some(5);
        refusal
    }
}
