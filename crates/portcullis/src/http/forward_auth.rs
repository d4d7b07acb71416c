//! `{prefix}/verify` (any method): forward-auth for proxies that ask before they
//! forward — nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`, Envoy
//! `ext_authz` (PRODUCT.md "Forward-auth", SECURITY-CASES P05).
//!
//! - The original request is read only from a trusted proxy, from exactly one URI header
//!   (`X-Forwarded-Uri`, `X-Original-URI`, or the absolute `X-Original-URL`) and exactly
//!   one method header (`X-Forwarded-Method`, `X-Original-Method`): anything else is
//!   400, never 2xx. A trusted `X-Forwarded-Host` must be the public host (403).
//! - From any other peer the answer depends on the session alone; and while routes or
//!   token relay are configured, such a peer gets 403 `untrusted_forwarder` (a forgotten
//!   `trusted_proxies` fails closed).
//! - The same session path as the guard: refresh, rotation, access rules, routes, the
//!   theft rule, the CSRF and WebSocket `Origin` rules on the original method and
//!   headers, the session cache, the signed assertion.
//! - 200 with every identity header (empty when there is no value); 401 (with
//!   `Location` for page navigations, or a 302 with `?redirect=1`); 403; 503 with
//!   `Retry-After` on outages. Never a body a browser could read a token from.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::cookies::CookieKind;
use super::error::HttpError;
use super::guard::Guard;
use super::headers::{self, identity_value};
use super::path::{NormalizedPath, normalize_path};
use super::request::{is_navigation, is_same_origin_write};
use crate::session::routes::RouteRefusal;

/// The headers a proxy may name the original URI in.
const URI_HEADERS: [&str; 3] = ["x-forwarded-uri", "x-original-uri", "x-original-url"];
/// The headers a proxy may name the original method in.
const METHOD_HEADERS: [&str; 2] = ["x-forwarded-method", "x-original-method"];

/// Every identity header of a forward-auth answer, in this order.
pub const ANSWER_HEADERS: [&str; 8] = [
    headers::USER_ID,
    headers::USER_EMAIL,
    headers::USER_NAME,
    headers::JWT_ASSERTION,
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
];

/// The request the proxy asks about.
struct Original {
    method: Method,
    /// `None` from an untrusted peer: no path is believed.
    path: Option<NormalizedPath>,
    path_and_query: Option<String>,
}

/// A refusal: status, stable code, one sentence.
type Refusal = (StatusCode, &'static str, String);

fn refuse(status: StatusCode, code: &'static str, message: &str) -> Response {
    no_store(HttpError::new(status, code, message.to_owned()).into_response())
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

impl Guard {
    /// `{prefix}/verify`: see the module text. `redirect`: `?redirect=1` (the answer
    /// reaches the browser as it is: page navigations get the 302 directly).
    pub async fn verify(&self, req: Request<Body>, redirect: bool) -> Response {
        if let Some(refusal) = super::headers_too_large(req.headers()) {
            return refusal;
        }
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let trusted = self.peer_is_trusted(peer);
        let original = if trusted {
            match self.original_request(req.headers()) {
                Ok(o) => o,
                Err((status, code, message)) => return refuse(status, code, &message),
            }
        } else {
            if self.sessions().has_routes() || self.relays_tokens() {
                tracing::warn!(
                    event = "untrusted_forwarder",
                    "a forward-auth request came from a peer outside proxy.trusted_proxies"
                );
                self.sessions()
                    .security_events()
                    .count("untrusted_forwarder");
                return refuse(
                    StatusCode::FORBIDDEN,
                    "untrusted_forwarder",
                    "This gateway answers forward-auth requests only from its trusted proxies.",
                );
            }
            Original {
                method: req.method().clone(),
                path: None,
                path_and_query: None,
            }
        };
        let headers = req.headers();
        let method = &original.method;
        let page = is_navigation(method, headers);
        if matches!(*method, Method::TRACE | Method::CONNECT) {
            return refuse(
                StatusCode::FORBIDDEN,
                "method_not_allowed",
                "This method is not allowed.",
            );
        }
        if let Some(path) = &original.path
            && self.is_public(path)
        {
            return self.identity_answer(None, None, None);
        }
        // A CORS preflight carries no cookie: from a foreign origin it is refused, and
        // otherwise it is judged like any request (no session: 401, never forwarded).
        if *method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            && self.is_foreign_origin(headers)
        {
            return refuse(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "Cross-origin requests are not allowed here.",
            );
        }
        let cookie = self
            .cookies()
            .read(headers, CookieKind::Session)
            .value()
            .map(str::to_owned);
        let active = match cookie {
            None => None,
            Some(c) => match self.sessions().authenticate(&c).await {
                Ok(a) => a,
                Err(e) => return no_store(HttpError::from(e).into_response()),
            },
        };
        let Some(active) = active else {
            return self.not_signed_in_answer(&original, page, redirect);
        };
        let new_cookie = active.new_cookie.as_ref().map(|id| {
            self.cookies()
                .set(CookieKind::Session, id.expose(), active.max_age)
        });
        let mut answer = self.signed_in_answer(&original, headers, &active).await;
        if let Some(cookie) = new_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            answer.headers_mut().append(header::SET_COOKIE, cookie);
        }
        answer.extensions_mut().insert(super::access::AccessNote {
            kind: super::access::Kind::Verify,
            path: None,
            user: Some(active.user.id),
            session: Some(active.record.id_hash.short().to_owned()),
        });
        answer
    }

    /// The original request from a trusted proxy's headers (see the module text), or
    /// the refusal: status, code, sentence.
    fn original_request(&self, headers: &HeaderMap) -> Result<Original, Refusal> {
        let bad = |message: &str| {
            Err((
                StatusCode::BAD_REQUEST,
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
                .is_ok_and(|h| h.eq_ignore_ascii_case(self.public_host())) => {}
            [_] => {
                return Err((
                    StatusCode::FORBIDDEN,
                    "wrong_host",
                    "This gateway answers for its public host only.".to_owned(),
                ));
            }
            _ => return bad("Send X-Forwarded-Host once."),
        }
        let Ok(uri) = uri.to_str() else {
            return bad("The original URI is not readable.");
        };
        let path_and_query = if uri.starts_with('/') {
            uri.to_owned()
        } else {
            // The absolute form (X-Original-URL): only for this gateway's public origin.
            match url::Url::parse(uri) {
                Ok(u) if u.origin().ascii_serialization() == self.public_origin() => {
                    match u.query() {
                        Some(q) => format!("{}?{q}", u.path()),
                        None => u.path().to_owned(),
                    }
                }
                _ => return bad("The original URI is not a path on this gateway's public origin."),
            }
        };
        if path_and_query.contains('#') {
            return bad("The original URI carries a fragment.");
        }
        let raw_path = path_and_query.split('?').next().unwrap_or("/");
        let path = match normalize_path(raw_path) {
            Ok(p) => p,
            Err(e) => return bad(&format!("This address cannot be served: {e}.")),
        };
        Ok(Original {
            method,
            path: Some(path),
            path_and_query: Some(path_and_query),
        })
    }

    /// 401 (JSON), with the login URL in `Location` for a page navigation; with
    /// `?redirect=1` a page navigation gets the 302 itself.
    fn not_signed_in_answer(&self, original: &Original, page: bool, redirect: bool) -> Response {
        let return_to = original.path_and_query.as_deref().map(|target| {
            crate::session::ReturnTo::parse(Some(target))
                .as_str()
                .to_owned()
        });
        let login = format!(
            "{}{}",
            self.public_origin(),
            self.login_url(return_to.as_deref())
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

    /// The signed-in part: the CSRF and WebSocket rules on the original request,
    /// routes, token relay, then 200 with every identity header.
    async fn signed_in_answer(
        &self,
        original: &Original,
        headers: &HeaderMap,
        active: &crate::session::ActiveSession,
    ) -> Response {
        let method = &original.method;
        let unsafe_method = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if unsafe_method && !is_same_origin_write(headers, self.public_origin(), self.csrf_header())
        {
            tracing::warn!(%method, "cross-site write refused (forward-auth)");
            return refuse(
                StatusCode::FORBIDDEN,
                "csrf_refused",
                "This request did not come from this site, so it was refused.",
            );
        }
        if headers.contains_key(header::UPGRADE) && self.is_foreign_origin(headers) {
            tracing::warn!("cross-origin WebSocket refused (forward-auth)");
            return refuse(
                StatusCode::FORBIDDEN,
                "cross_origin_websocket",
                "This connection did not come from this site, so it was refused.",
            );
        }
        if let Some(path) = &original.path
            && self.sessions().has_routes()
            && let Err(refusal) = self
                .sessions()
                .check_route(method, headers, path, &active.record)
        {
            let code = match refusal {
                RouteRefusal::Method => "method_refused",
                RouteRefusal::Access(_) => "route_refused",
            };
            return refuse(
                StatusCode::FORBIDDEN,
                code,
                "You may not open this address.",
            );
        }
        let mut bearer = None;
        if let Some(path) = &original.path
            && self.relays_token_for(path)
        {
            let Some(mut value) = self
                .sessions()
                .relay_token(&active.record)
                .and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.as_str())).ok())
            else {
                return self.not_signed_in_answer(original, is_navigation(method, headers), false);
            };
            value.set_sensitive(true);
            bearer = Some(value);
        }
        let assertion = match self.sessions().assertion(active).await {
            Ok(a) => a,
            Err(e) => return no_store(HttpError::from(e).into_response()),
        };
        let mut r = self.identity_answer(Some(active), Some(assertion), bearer);
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Cookie"));
        r
    }

    /// 200, empty, with every identity header: values from the session, empty ones
    /// without (a public path, a missing claim), so a proxy that copies a header
    /// missing from the answer never copies anything of the client's or a placeholder.
    fn identity_answer(
        &self,
        active: Option<&crate::session::ActiveSession>,
        assertion: Option<HeaderValue>,
        bearer: Option<HeaderValue>,
    ) -> Response {
        let user = active.map(|a| &a.user);
        let claims: serde_json::Map<String, Value> = active
            .and_then(|a| serde_json::from_str(&a.record.claims).ok())
            .unwrap_or_default();
        let id = user.map(|u| u.id.to_string());
        let groups = match claims.get("groups") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        };
        let preferred = claims
            .get("preferred_username")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let email = user.and_then(|u| u.email.clone());
        let name = user.and_then(|u| u.name.clone());
        let values: [Option<String>; 8] = [
            id.clone(),
            email.clone(),
            name,
            None,
            id,
            email,
            preferred,
            groups,
        ];
        let mut r = StatusCode::OK.into_response();
        let h = r.headers_mut();
        for (name, value) in ANSWER_HEADERS.iter().zip(values) {
            let value = value
                .as_deref()
                .and_then(identity_value)
                .unwrap_or(HeaderValue::from_static(""));
            h.insert(HeaderName::from_static(name), value);
        }
        if let Some(a) = assertion {
            h.insert(HeaderName::from_static(headers::JWT_ASSERTION), a);
        }
        if let Some(b) = bearer {
            h.insert(header::AUTHORIZATION, b);
        }
        no_store(r)
    }
}
