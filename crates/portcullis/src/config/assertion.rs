//! The `[assertion]` section: the audience of the signed identity assertion
//! (`X-Portcullis-Jwt-Assertion`).

use serde::Deserialize;
use url::Url;

/// The `[assertion]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAssertion {
    pub(super) audience: Option<String>,
}

/// `assertion.audience`: as written; by default the upstream's origin, or the public
/// origin when there is no upstream (forward-auth only). Origins have no trailing slash.
pub(super) fn audience(
    value: Option<String>,
    upstream: Option<&Url>,
    public_url: &Url,
    errors: &mut Vec<String>,
) -> String {
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if v.is_empty() || v.chars().any(char::is_control) => {
            errors.push("`assertion.audience` must be a non-empty string".into());
            v
        }
        Some(v) => v,
        None => upstream
            .unwrap_or(public_url)
            .origin()
            .ascii_serialization(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::test_support::{env, minimal};

    #[test]
    fn the_audience_defaults_to_the_upstream_then_the_public_origin() {
        let c = Config::load_from(None, minimal()).unwrap();
        assert_eq!(c.assertion_audience, c.public_origin());
        let mut e = minimal();
        e.extend(env(&[(
            "PORTCULLIS_UPSTREAM",
            "http://app.internal:3000/base/",
        )]));
        let c = Config::load_from(None, e.clone()).unwrap();
        assert_eq!(c.assertion_audience, "http://app.internal:3000");
        e.extend(env(&[("PORTCULLIS_ASSERTION_AUDIENCE", "urn:example:app")]));
        let c = Config::load_from(None, e.clone()).unwrap();
        assert_eq!(c.assertion_audience, "urn:example:app");
        e.extend(env(&[("PORTCULLIS_ASSERTION_AUDIENCE", " ")]));
        assert!(Config::load_from(None, e).is_err());
    }
}
