//! Facts about an incoming request the gateway decides on.

use axum::http::{HeaderMap, HeaderName, Method, header};

const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// PRODUCT.md "Page or API": a page navigation when `Sec-Fetch-Mode: navigate`, or,
/// without any `Sec-Fetch-*` header, a GET/HEAD whose `Accept` lists `text/html`.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if let Some(mode) = headers.get(SEC_FETCH_MODE) {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    let has_fetch_metadata = headers.keys().any(|k| k.as_str().starts_with("sec-fetch-"));
    if has_fetch_metadata {
        return false;
    }
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|item| {
                item.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/html"))
            })
}

/// SECURITY-CASES S06/O02: a state-changing request must come from our own origin. A
/// foreign `Origin` is refused whatever else the request carries; without `Origin`,
/// `Sec-Fetch-Site: same-origin` or the custom CSRF header (which no cross-site form can
/// send, and no cross-site script can without a CORS preflight) is required.
pub fn is_same_origin_write(headers: &HeaderMap, public_origin: &str, csrf_header: &str) -> bool {
    match headers.get(header::ORIGIN) {
        Some(origin) => origin.as_bytes() == public_origin.as_bytes(),
        None => {
            let same_site = headers
                .get(SEC_FETCH_SITE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"same-origin"));
            let custom = headers.get(csrf_header).is_some_and(|v| !v.is_empty());
            same_site || custom
        }
    }
}

/// The `User-Agent`, if it is printable text.
pub fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn s06_same_origin_writes() {
        let o = "https://app.example.com";
        assert!(is_same_origin_write(
            &h(&[("origin", "https://app.example.com")]),
            o,
            "x-csrf"
        ));
        assert!(!is_same_origin_write(
            &h(&[("origin", "https://evil.example.com"), ("x-csrf", "1")]),
            o,
            "x-csrf"
        ));
        assert!(!is_same_origin_write(
            &h(&[("origin", "null")]),
            o,
            "x-csrf"
        ));
        assert!(is_same_origin_write(
            &h(&[("sec-fetch-site", "same-origin")]),
            o,
            "x-csrf"
        ));
        assert!(!is_same_origin_write(
            &h(&[("sec-fetch-site", "cross-site")]),
            o,
            "x-csrf"
        ));
        assert!(is_same_origin_write(&h(&[("x-csrf", "1")]), o, "x-csrf"));
        assert!(!is_same_origin_write(&h(&[]), o, "x-csrf"));
    }

    #[test]
    fn s05_page_or_api() {
        assert!(is_navigation(
            &Method::GET,
            &h(&[("sec-fetch-mode", "navigate")])
        ));
        assert!(!is_navigation(
            &Method::GET,
            &h(&[("sec-fetch-mode", "cors"), ("accept", "text/html")])
        ));
        assert!(!is_navigation(
            &Method::GET,
            &h(&[("sec-fetch-site", "same-origin"), ("accept", "text/html")])
        ));
        assert!(is_navigation(
            &Method::GET,
            &h(&[("accept", "text/html,application/xhtml+xml;q=0.9")])
        ));
        assert!(is_navigation(&Method::HEAD, &h(&[("accept", "TEXT/HTML")])));
        assert!(!is_navigation(
            &Method::POST,
            &h(&[("accept", "text/html")])
        ));
        assert!(!is_navigation(
            &Method::GET,
            &h(&[("accept", "application/json")])
        ));
        assert!(!is_navigation(&Method::GET, &h(&[])));
        assert!(!is_navigation(
            &Method::GET,
            &h(&[("accept", "text/htmlx")])
        ));
    }
}
