//! The `[csrf]` section: the header that marks a state-changing request as same-origin
//! for the CSRF guard.

use serde::Deserialize;

/// The `[csrf]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCsrf {
    pub(super) header: Option<String>,
}

/// `csrf.header`, default `X-CSRF`: a header name of letters, digits and `-`.
pub(super) fn header(value: Option<String>, errors: &mut Vec<String>) -> String {
    let csrf_header = value.unwrap_or_else(|| "X-CSRF".into());
    if csrf_header.is_empty()
        || !csrf_header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        errors.push(format!(
            "`csrf.header`: `{csrf_header}` is not a header name"
        ));
    }
    csrf_header
}
