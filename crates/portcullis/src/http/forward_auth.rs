//! `{prefix}/verify` (any method): the forward-auth door, for proxies that ask before
//! they forward — nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`,
//! Envoy `ext_authz` (docs/forward-auth.md; docs/security.md P05, G01–G03, G11).
//!
//! - The original request is read only from a trusted proxy, from exactly one URI header
//!   (`X-Forwarded-Uri`, `X-Original-URI`, or the absolute `X-Original-URL`, split by
//!   hand, never resolved by a URL parser) and exactly one method header
//!   (`X-Forwarded-Method`, `X-Original-Method`): anything else is 400, never 2xx. A
//!   trusted `X-Forwarded-Host` must be the public host (403).
//! - The front proxy forwards the client's raw target to the app, which this door cannot
//!   rewrite: so the decision (`decision`) refuses a target not in normal form (400
//!   `bad_original_request`, G01), and decides on exactly the path the app will see.
//! - A peer outside `proxy.trusted_proxies` that names an original request gets 403
//!   `untrusted_forwarder` (G03); one that does not is answered on its session alone
//!   (403 while routes or token relay are configured).
//! - 200 with every identity header (empty when there is no value); 401 (with
//!   `Location` for page navigations, or a 302 with `?redirect=1`); 403; 503 with
//!   `Retry-After` on outages. Never a body a browser could read a token from.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::decision::{Decider, Decision, Door, Identity, RequestView, Target, Who};
use super::error::HttpError;
use super::headers::{self, identity_list_value, identity_value};
use super::request::{is_websocket_handshake, method_overrides};

/// The headers a proxy may name the original URI in.
const URI_HEADERS: [&str; 3] = ["x-forwarded-uri", "x-original-uri", "x-original-url"];
/// The headers a proxy may name the original method in.
const METHOD_HEADERS: [&str; 2] = ["x-forwarded-method", "x-original-method"];

/// Every identity header of a forward-auth answer, in this order.
pub const ANSWER_HEADERS: [&str; 10] = [
    headers::USER_ID,
    headers::USER_EMAIL,
    headers::USER_NAME,
    headers::USER_PROVIDER,
    headers::USER_AUTH_METHOD,
    headers::JWT_ASSERTION,
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
];

/// The request the proxy asks about.
struct Original {
    method: Method,
    target: Target,
    /// The original path and query, as the app will receive them.
    path_and_query: Option<String>,
}

impl Original {
    fn query(&self) -> Option<&str> {
        self.path_and_query
            .as_deref()
            .and_then(|pq| pq.split_once('?'))
            .map(|(_, q)| q)
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The one value of the one header among `names` that is present, or why not.
fn exactly_one<'a>(headers: &'a HeaderMap, names: &[&str]) -> Result<&'a HeaderValue, ()> {
    let mut found = names.iter().flat_map(|n| headers.get_all(*n).iter());
    match (found.next(), found.next()) {
        (Some(v), None) => Ok(v),
        _ => Err(()),
    }
}

/// G03: whether a request names an original request, in any spelling.
fn names_original(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        URI_HEADERS
            .iter()
            .chain(METHOD_HEADERS.iter())
            .any(|o| headers::canonical_is(name.as_str(), o))
    })
}

/// `scheme://authority` and the rest (path and query) of an absolute URL, split by
/// hand: a URL parser would resolve dot segments before anyone could see them (G01).
fn split_absolute(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(url.split_at(scheme.len() + 3 + authority_len))
}

/// `{prefix}/verify`: see the module text. `redirect`: `?redirect=1` (the answer
/// reaches the browser as it is: page navigations get the 302 directly).
pub async fn verify(decider: &Decider, req: Request<Body>, redirect: bool) -> Response {
    if let Some(refusal) = super::headers_too_large(req.headers()) {
        return refusal;
    }
    let peer = super::request::peer(&req);
    let trusted = decider.peer_is_trusted(peer);
    let headers = req.headers();
    let original = if trusted {
        match original_request(decider, headers) {
            Ok(o) => o,
            Err(refusal) => return no_store(refusal.into_response()),
        }
    } else {
        Original {
            method: req.method().clone(),
            target: Target::Untrusted {
                named: names_original(headers),
            },
            path_and_query: None,
        }
    };
    let view = RequestView {
        door: Door::ForwardAuth,
        method: original.method.clone(),
        overrides: method_overrides(headers, original.query()),
        target: original.target.clone(),
        return_to: original.path_and_query.as_deref(),
        headers,
        websocket: is_websocket_handshake(headers),
        peer,
        trusted_peer: trusted,
    };
    let verdict = decider.decide(&view).await;
    let page = view.is_page();
    let mut answer = match verdict.decision {
        Decision::Public => identity_answer(None, None, None, headers),
        Decision::SignedIn(identity) => {
            let Identity {
                who,
                assertion,
                relay,
            } = *identity;
            let mut r = identity_answer(Some(&who), Some(assertion), relay, headers);
            r.headers_mut().insert(
                header::VARY,
                HeaderValue::from_static("Cookie, Authorization, DPoP"),
            );
            r
        }
        Decision::SignIn => not_signed_in_answer(decider, &original, page, redirect),
        // The answer goes to a proxy (or, with `?redirect=1`, as it is to the browser):
        // JSON, never a page.
        Decision::Refuse(refusal) => no_store(refusal.page(false).into_response()),
    };
    if let Some(cookie) = verdict.set_cookie {
        answer.headers_mut().append(header::SET_COOKIE, cookie);
    }
    let mut note = verdict.note;
    note.kind = super::access::Kind::Verify;
    answer.extensions_mut().insert(note);
    answer
}

/// The original request from a trusted proxy's headers (see the module text), or the
/// refusal.
fn original_request(decider: &Decider, headers: &HeaderMap) -> Result<Original, HttpError> {
    let bad = |message: &str| {
        Err(HttpError::bad_request(
            "bad_original_request",
            message.to_owned(),
        ))
    };
    let Ok(uri) = exactly_one(headers, &URI_HEADERS) else {
        return bad(
            "Send the original URI in exactly one of X-Forwarded-Uri, X-Original-URI or X-Original-URL, once.",
        );
    };
    let Ok(method) = exactly_one(headers, &METHOD_HEADERS) else {
        return bad(
            "Send the original method in exactly one of X-Forwarded-Method or X-Original-Method, once.",
        );
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return bad("The original method is not an HTTP method.");
    };
    let host: Vec<&HeaderValue> = headers.get_all("x-forwarded-host").iter().collect();
    match host.as_slice() {
        [] => {}
        [h] if h
            .to_str()
            .is_ok_and(|h| h.eq_ignore_ascii_case(decider.public_host())) => {}
        [_] => {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "wrong_host",
                "This gateway answers for its public host only.",
            ));
        }
        _ => return bad("Send X-Forwarded-Host once."),
    }
    let Ok(uri) = uri.to_str() else {
        return bad("The original URI is not readable.");
    };
    let path_and_query = if uri.starts_with('/') {
        uri
    } else {
        // The absolute form (X-Original-URL): only for this gateway's public origin.
        match split_absolute(uri) {
            Some((origin, rest)) if origin.eq_ignore_ascii_case(decider.public_origin()) => rest,
            _ => return bad("The original URI is not a path on this gateway's public origin."),
        }
    };
    if path_and_query.contains('#') {
        return bad("The original URI carries a fragment.");
    }
    let raw_path = match path_and_query.split('?').next() {
        Some("") | None => "/",
        Some(path) => path,
    };
    Ok(Original {
        method,
        target: Target::of_raw_path(raw_path),
        path_and_query: Some(if path_and_query.starts_with('/') {
            path_and_query.to_owned()
        } else {
            format!("/{path_and_query}")
        }),
    })
}

/// 401 (JSON), with the login URL in `Location` for a page navigation; with
/// `?redirect=1` a page navigation gets the 302 itself.
fn not_signed_in_answer(
    decider: &Decider,
    original: &Original,
    page: bool,
    redirect: bool,
) -> Response {
    let return_to = original.path_and_query.as_deref().map(|target| {
        crate::session::ReturnTo::parse(Some(target))
            .as_str()
            .to_owned()
    });
    let login = format!(
        "{}{}",
        decider.public_origin(),
        decider.login_url(return_to.as_deref())
    );
    let mut r = if page && redirect {
        StatusCode::FOUND.into_response()
    } else {
        let body = json!({
            "authenticated": false,
            "error": "not_signed_in",
            "message": "Sign in to continue.",
            "login_url": login,
        });
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    };
    if page && let Ok(v) = HeaderValue::from_str(&login) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    no_store(r)
}

/// 200, empty, with every identity header: values from the session, empty ones
/// without (a public path, a missing claim), so a proxy that copies a header
/// missing from the answer never copies anything of the client's or a placeholder.
fn identity_answer(
    who: Option<&Who>,
    assertion: Option<HeaderValue>,
    relay: Option<super::decision::RelayHeaders>,
    client: &HeaderMap,
) -> Response {
    let user = who.map(Who::user);
    let claims: serde_json::Map<String, Value> = match who {
        Some(Who::Session(a)) => serde_json::from_str(&a.record.claims).unwrap_or_default(),
        Some(Who::Token(t)) => (*t.claims).clone(),
        None => Default::default(),
    };
    let id = user.map(|u| u.id.to_string());
    // G10: each group percent-encoded, so that a name with `,` never splits in two.
    let groups = match claims.get("groups") {
        Some(Value::String(s)) => identity_list_value([s.as_str()]),
        Some(Value::Array(items)) => identity_list_value(items.iter().filter_map(Value::as_str)),
        _ => None,
    };
    let preferred = claims
        .get("preferred_username")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let email = user.and_then(|u| u.email.clone());
    let name = user.and_then(|u| u.name.clone());
    let value = |v: Option<String>| v.as_deref().and_then(identity_value);
    let provider = who.map(|w| w.provider_id().to_owned());
    let method = who.map(|w| w.auth_method().to_owned());
    let values: [Option<HeaderValue>; 10] = [
        value(id.clone()),
        value(email.clone()),
        value(name),
        value(provider),
        value(method),
        None,
        value(id),
        value(email),
        value(preferred),
        groups,
    ];
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    for (name, value) in ANSWER_HEADERS.iter().zip(values) {
        let value = value.unwrap_or(HeaderValue::from_static(""));
        h.insert(HeaderName::from_static(name), value);
    }
    if let Some(a) = assertion {
        h.insert(HeaderName::from_static(headers::JWT_ASSERTION), a);
    }
    // `Authorization` and `DPoP` are always answered, for proxies that copy a header
    // only as answered (Caddy copies a missing one as its placeholder's text): on a
    // relay path the gateway's token and, for a DPoP-bound one, its proof (RFC 9449
    // §7.1; empty for a bearer token, so that the client's is cleared); elsewhere the
    // client's own, which the app would get without the gateway.
    let dpop = HeaderName::from_static(headers::DPOP);
    match relay {
        Some(relay) => {
            h.insert(header::AUTHORIZATION, relay.authorization);
            h.insert(dpop, relay.dpop.unwrap_or(HeaderValue::from_static("")));
        }
        // `strip_authorization`: the app gets neither.
        None if matches!(who, Some(Who::Token(t)) if t.strip_authorization) => {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(""));
            h.insert(dpop, HeaderValue::from_static(""));
        }
        None => {
            for name in [header::AUTHORIZATION, dpop] {
                let value = client
                    .get(&name)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static(""));
                h.insert(name, value);
            }
        }
    }
    no_store(r)
}
