//! What a session is: ids, sealing, lifetimes, who may sign in, and the login flow that
//! creates one. [`Sessions`] owns the store, the cache, leases and the key ring; it sits
//! between `http` (above) and `store` / `provider` (below).

pub mod access;
pub mod admin;
pub mod assertion;
pub mod bearer;
pub mod cache;
pub mod claims;
pub mod dpop;
pub mod ends;
pub mod handover;
/// Session ids live with the records the store keeps (`store::id`).
pub use crate::store::id;
pub mod login;
pub mod logout;
pub mod lookup;
mod providers;
pub mod refresh;
pub mod reload;
pub mod return_to;
pub mod routes;
pub mod seal;
pub mod service;

use crate::provider::ProviderError;
use crate::store::StoreError;

pub use access::AccessDenied;
pub use ends::SessionEnd;
pub use id::{IdHash, SessionId};
pub use login::{CallbackParams, LoginOutcome};
pub use logout::SignOut;
pub use lookup::ActiveSession;
pub use return_to::ReturnTo;
pub use seal::{KeyRing, SealError, Sealed};
pub use service::{SecurityEvents, Sessions};

pub use crate::random::new_uuid;

/// Everything that can stop a login or a session lookup. Each has a stable code;
/// `http::error` maps them to status codes and pages in one place.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the sign-in link is incomplete: it has no state")]
    StateMissing,
    #[error("this sign-in was already used, has expired, or was not started here")]
    StateUnknown,
    #[error("this sign-in was started in another browser")]
    BrowserMismatch,
    #[error("this sign-in took too long and expired")]
    LoginExpired,
    #[error("the sign-in answer came from an unexpected identity provider")]
    IssuerMismatch,
    #[error("the identity provider did not complete the sign-in: {error}")]
    ProviderDenied {
        error: String,
        description: Option<String>,
    },
    #[error("the sign-in answer has no authorization code")]
    CodeMissing,
    #[error("too many sign-ins are in progress; retry shortly")]
    SignInsFull,
    #[error("the identity provider does not accept the scopes `{scopes}`")]
    ScopeRefused { scopes: String },
    #[error("the request repeats the parameter `{0}`")]
    DuplicateParameter(&'static str),
    #[error("access denied: {0}")]
    AccessDenied(#[from] AccessDenied),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a sealed value could not be opened")]
    Unsealable,
    #[error("the session's tokens cannot be refreshed right now; retry in {retry_after} s")]
    RefreshUnavailable { retry_after: u64 },
    #[error("the gateway's DPoP key is unavailable: {0}")]
    DpopKey(String),
    /// Not shown back: the id came from the request (no attacker text on our origin).
    #[error("there is no such identity provider here")]
    UnknownProvider,
    #[error(
        "the sign-in answer arrived at another identity provider's address than the sign-in was sent to"
    )]
    ProviderMismatch,
}

impl SessionError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::StateMissing => "state_missing",
            Self::StateUnknown => "state_mismatch",
            Self::BrowserMismatch => "browser_mismatch",
            Self::LoginExpired => "login_expired",
            Self::IssuerMismatch => "issuer_mismatch",
            Self::ProviderDenied { .. } => "provider_denied",
            Self::CodeMissing => "code_missing",
            Self::ScopeRefused { .. } => "invalid_scope",
            Self::SignInsFull => "too_many_sign_ins",
            Self::DuplicateParameter(_) => "duplicate_parameter",
            Self::AccessDenied(a) => a.code(),
            Self::Provider(p) => p.code(),
            Self::Store(s) => s.code(),
            Self::Unsealable => "unsealable",
            Self::RefreshUnavailable { .. } => "refresh_unavailable",
            Self::DpopKey(_) => "dpop_key_unavailable",
            Self::UnknownProvider => "unknown_provider",
            Self::ProviderMismatch => "provider_mismatch",
        }
    }
}
