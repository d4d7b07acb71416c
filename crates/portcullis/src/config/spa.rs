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
    /// `spa.provider`: the provider whose codes the exchange redeems (required with
    /// several providers; the one there is otherwise).
    pub provider: Option<String>,
}

/// The `[spa]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpa {
    code_exchange: Option<bool>,
    code_exchange_path: Option<String>,
    redirect_uri: Option<String>,
    provider: Option<String>,
}

impl RawSpa {
    /// The exchange path must not collide with the gateway's own endpoints under
    /// `prefix` or with the health checks.
    pub(super) fn validate(
        self,
        prefix: &str,
        providers: &[super::ProviderConfig],
        errors: &mut Vec<String>,
    ) -> SpaSettings {
        let code_exchange = self.code_exchange.unwrap_or(false);
        let provider = match self.provider.map(|p| p.trim().to_owned()) {
            Some(id) if providers.iter().any(|p| p.id == id) => Some(id),
            Some(id) => {
                errors.push(format!(
                    "`spa.provider`: `{id}` is not the id of a provider"
                ));
                None
            }
            None if providers.len() == 1 => Some(providers[0].id.clone()),
            None => {
                if code_exchange {
                    errors.push(
                        "`spa.provider` is required with several providers: the exchange must know whose code it redeems (a code from another provider is a mix-up)".into(),
                    );
                }
                None
            }
        };
        let spa = SpaSettings {
            provider,
            code_exchange,
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
        // Plain characters only: the router reads `{…}` as a capture, and the gateway
        // recognises its own paths by exact comparison.
        let plain = exchange_path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'));
        if crate::path::PathPattern::parse(exchange_path).is_none()
            || !plain
            || exchange_path.ends_with('*')
            || exchange_path == prefix
            || exchange_path.starts_with(&format!("{prefix}/"))
            || exchange_path == "/healthz"
            || exchange_path == "/readyz"
        {
            errors.push(format!(
                "`spa.code_exchange_path`: `{exchange_path}` must be a normalised path of letters, digits and `/-_.~`, outside `{prefix}` and not /healthz or /readyz"
            ));
        }
        spa
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::test_support::{env, minimal};

    fn errors_for(path: &str) -> Vec<String> {
        let mut e = minimal();
        e.extend(env(&[("PORTCULLIS_SPA_CODE_EXCHANGE_PATH", path)]));
        Config::load_from(None, e)
            .err()
            .map(|e| e.0)
            .unwrap_or_default()
    }

    #[test]
    fn the_exchange_path_is_plain_and_outside_the_gateway() {
        assert!(errors_for("/api/v1/auth-callback_x.json").is_empty());
        // `{x}` would be a router capture, not the literal path the gateway compares.
        for bad in [
            "/api/{x}",
            "/api/{",
            "/api/a b",
            "/auth/exchange",
            "/healthz",
            "/api/*",
        ] {
            let errors = errors_for(bad);
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with("`spa.code_exchange_path`")),
                "{bad}: {errors:?}"
            );
        }
    }
}
