//! Facts about an incoming request the gateway decides on.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, Method, Request, header};

const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Page or API (docs/proxy.md, rule 5): a page navigation when
/// `Sec-Fetch-Mode: navigate`, or, without any `Sec-Fetch-*` header, a GET/HEAD whose
/// `Accept` lists `text/html`.
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

/// docs/security.md S06/O02: a state-changing request must come from our own origin. A
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

/// Header names frameworks read as the request's real method (Express
/// `method-override`, Laravel, Symfony, ASP.NET), compared in canonical spelling.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// G04 (docs/security.md): every other method a request may be read as — override
/// headers in any spelling (`X_HTTP_METHOD_OVERRIDE`, `x.http.method.override`: judged
/// by their canonical form, as identity headers are) and a `_method` query parameter
/// (Rails, Laravel, Express). `None` for a value that is no method: the framework's
/// reading of it cannot be known. Body overrides (`_method` in a form) are the app's
/// to disable (docs/proxy.md).
pub fn method_overrides(headers: &HeaderMap, query: Option<&str>) -> Vec<Option<Method>> {
    let as_method = |v: &[u8]| {
        let v = std::str::from_utf8(v).ok()?.trim().to_ascii_uppercase();
        Method::from_bytes(v.as_bytes()).ok()
    };
    let mut found = Vec::new();
    for (name, value) in headers {
        if METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|o| super::headers::canonical_is(name.as_str(), o))
        {
            found.push(as_method(value.as_bytes()));
        }
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        // PHP reads `.`, ` ` and `[` in a parameter name as `_` (`?.method=` is
        // `_method` to Laravel and Symfony): any character but a letter or digit counts
        // as `_`, and case is ignored.
        let is_method_key = |key: &str| {
            key.len() == 7
                && key.chars().zip("_method".chars()).all(|(k, m)| {
                    if m == '_' {
                        !k.is_ascii_alphanumeric()
                    } else {
                        k.eq_ignore_ascii_case(&m)
                    }
                })
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if is_method_key(&key) {
                found.push(as_method(value.as_bytes()));
            }
        }
    }
    found
}

/// G02 (docs/security.md): whether a request is a WebSocket handshake, by any of its
/// signals: front proxies strip the hop-by-hop `Upgrade` from the auth subrequests
/// they send (nginx, Traefik), but pass `Sec-WebSocket-Key` and `-Version`.
pub fn is_websocket_handshake(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        || headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.contains_key(header::SEC_WEBSOCKET_VERSION)
}

/// The direct peer's address, when the server recorded it.
pub fn peer<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// The `User-Agent`, if it is printable text.
pub fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests;
