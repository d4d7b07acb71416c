//! Facts about an incoming request the gateway decides on.

use axum::http::{HeaderMap, Method, header};

/// PRODUCT.md "Page or API": a page navigation when `Sec-Fetch-Mode: navigate`, or,
/// without any `Sec-Fetch-*` header, a GET/HEAD whose `Accept` lists `text/html`.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if let Some(mode) = headers.get("sec-fetch-mode") {
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
