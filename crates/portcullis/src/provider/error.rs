//! What can go wrong talking to the provider, with the stable codes logs and error
//! pages use (`http::error` turns them into answers).

use super::id_token::IdTokenError;
use super::logout_token;

/// What can go wrong talking to the provider.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider did not answer in time")]
    Timeout,
    #[error("the identity provider answered with HTTP {0}")]
    ServerError(u16),
    #[error("the identity provider's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the identity provider's answer is not usable: {0}")]
    BadResponse(String),
    #[error("issuer mismatch: expected `{expected}`, got `{found}`")]
    IssuerMismatch { expected: String, found: String },
    #[error("the token endpoint refused the request: {0}")]
    TokenRejected(String),
    #[error("the ID token is not valid: {0}")]
    IdToken(#[from] IdTokenError),
    #[error("the UserInfo `sub` differs from the ID token's")]
    UserinfoSubjectMismatch,
    #[error("the client assertion could not be signed: {0}")]
    ClientAssertion(String),
    #[error("the provider refused the pushed authorization request: {0}")]
    ParRefused(String),
    #[error("no DPoP proof could be made: {0}")]
    DpopProof(String),
    #[error("the provider cannot support provider.profile = fapi2: {0}")]
    NotFapi2(String),
}

impl ProviderError {
    /// Stable code for logs and error pages.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "provider_unreachable",
            Self::Timeout => "provider_timeout",
            Self::ServerError(_) => "provider_error",
            Self::TooLarge(_) => "provider_response_too_large",
            Self::BadResponse(_) => "provider_bad_response",
            Self::IssuerMismatch { .. } => "issuer_mismatch",
            Self::TokenRejected(_) => "token_rejected",
            Self::IdToken(_) => "id_token_invalid",
            Self::UserinfoSubjectMismatch => "userinfo_sub_mismatch",
            Self::ClientAssertion(_) => "client_assertion_failed",
            Self::ParRefused(_) => "par_refused",
            Self::DpopProof(_) => "dpop_proof_failed",
            Self::NotFapi2(_) => "provider_not_fapi2",
        }
    }

    /// A network fault or provider outage, as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_) | Self::Timeout | Self::ServerError(_)
        )
    }

    /// RFC 6749 §5.2 `invalid_grant`: the grant is dead.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::TokenRejected(e) if e == "invalid_grant")
    }
}

/// Why a logout token was not accepted: the token, or the provider's keys.
#[derive(Debug, thiserror::Error)]
pub enum LogoutError {
    #[error(transparent)]
    Token(#[from] logout_token::LogoutTokenError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}
