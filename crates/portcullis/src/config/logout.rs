//! The `[logout]` section: whether sign-out continues to the provider, and where the
//! provider may send the browser back (OpenID Connect RP-Initiated Logout 1.0).

use serde::Deserialize;
use url::Url;

/// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0).
#[derive(Debug, Clone)]
pub struct LogoutSettings {
    /// After the local sign-out, continue to the provider's `end_session_endpoint`.
    pub provider_logout: bool,
    /// Send the session's last ID token as `id_token_hint` (it then passes through the
    /// browser in the redirect URL; off by default: docs/security.md S02).
    pub id_token_hint: bool,
    /// Where the provider may send the browser back (exact URLs; the first is the
    /// default). Empty: the gateway's own `{prefix}/logged-out`.
    pub post_logout_redirect_uris: Vec<Url>,
}

/// The `[logout]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogout {
    provider_logout: Option<bool>,
    id_token_hint: Option<bool>,
    post_logout_redirect_uris: Option<Vec<String>>,
}

impl RawLogout {
    /// Both switches default to off; each redirect URI must be an absolute http(s) URL
    /// without a fragment.
    pub(super) fn validate(self, errors: &mut Vec<String>) -> LogoutSettings {
        let mut post_logout_redirect_uris = Vec::new();
        for u in self.post_logout_redirect_uris.unwrap_or_default() {
            match Url::parse(&u) {
                Ok(url) if matches!(url.scheme(), "https" | "http") && url.fragment().is_none() => {
                    post_logout_redirect_uris.push(url)
                }
                _ => errors.push(format!(
                    "`logout.post_logout_redirect_uris`: `{u}` is not an absolute http(s) URL without a fragment"
                )),
            }
        }
        LogoutSettings {
            provider_logout: self.provider_logout.unwrap_or(false),
            id_token_hint: self.id_token_hint.unwrap_or(false),
            post_logout_redirect_uris,
        }
    }
}
