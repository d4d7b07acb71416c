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
fn g04_overrides_in_every_spelling_and_the_query() {
    let headers = h(&[
        ("x-http-method-override", "delete"),
        ("X_HTTP_METHOD_OVERRIDE", " PUT "),
        ("x.method.override", "PATCH"),
        ("x-http-method", "not a method"),
        ("x-http-methods", "POST"),
    ]);
    let found = method_overrides(
        &headers,
        Some("a=1&_method=DELETE&%5Fmethod=put&.method=get&+METHOD=post"),
    );
    assert_eq!(
        found,
        [
            Some(Method::DELETE),
            Some(Method::PUT),
            Some(Method::PATCH),
            None,
            Some(Method::DELETE),
            Some(Method::PUT),
            Some(Method::GET),
            Some(Method::POST),
        ]
    );
    assert!(method_overrides(&h(&[]), Some("method=DELETE&x_method=1")).is_empty());
    assert!(method_overrides(&h(&[]), None).is_empty());
}

#[test]
fn g02_a_handshake_by_any_signal() {
    assert!(is_websocket_handshake(&h(&[("upgrade", "websocket")])));
    assert!(is_websocket_handshake(&h(&[("sec-websocket-key", "x")])));
    assert!(is_websocket_handshake(&h(&[(
        "sec-websocket-version",
        "13"
    )])));
    assert!(!is_websocket_handshake(&h(&[(
        "sec-websocket-protocol",
        "x"
    )])));
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
