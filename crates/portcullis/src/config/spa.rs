//! The `[spa]` section: the single-page-app code exchange contract (the seed's
//! `/api/auth/callback`; docs/spa.md).

use serde::Deserialize;
use url::Url;

/// The single-page-app code exchange contract (the seed's `/api/auth/callback`).
#[derive(Debug, Clone)]
pub struct SpaSettings {
    pub code_exchange: bool,
    pub code_exchange_path: String,
    pub redirect_uri: Option<Url>,
}

/// The `[spa]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpa {
    code_exchange: Option<bool>,
    code_exchange_path: Option<String>,
    redirect_uri: Option<String>,
}

impl RawSpa {
    /// The exchange path must not collide with the gateway's own endpoints under
    /// `prefix` or with the health checks.
    pub(super) fn validate(self, prefix: &str, errors: &mut Vec<String>) -> SpaSettings {
        let spa = SpaSettings {
            code_exchange: self.code_exchange.unwrap_or(false),
            code_exchange_path: self
                .code_exchange_path
                .unwrap_or_else(|| "/api/auth/callback".into()),
            redirect_uri: self.redirect_uri.and_then(|u| match Url::parse(&u) {
                Ok(url) => Some(url),
                Err(_) => {
                    errors.push(format!("`spa.redirect_uri`: `{u}` is not a URL"));
                    None
                }
            }),
        };
        if spa.code_exchange && spa.redirect_uri.is_none() {
            errors.push("`spa.redirect_uri` is required when `spa.code_exchange` is true".into());
        }
        let exchange_path = &spa.code_exchange_path;
        if crate::http::path::PathPattern::parse(exchange_path).is_none()
            || exchange_path.ends_with('*')
            || exchange_path == prefix
            || exchange_path.starts_with(&format!("{prefix}/"))
            || exchange_path == "/healthz"
            || exchange_path == "/readyz"
        {
            errors.push(format!(
                "`spa.code_exchange_path`: `{exchange_path}` must be a normalised path outside `{prefix}` and not /healthz or /readyz"
            ));
        }
        spa
    }
}
