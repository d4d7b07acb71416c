//! The guard: a tower [`Layer`] that lets through only requests with a live session
//! (or to a public path), hands the signed-in user to what it wraps, and enforces the
//! CSRF rule on state-changing calls.
//!
//! Every request, public or not, of any method, first loses client-sent identity
//! headers and (unless from a trusted proxy) forwarding headers (SECURITY-CASES P01,
//! P02, P04). Path decisions use the normalised path only (P03). Without a session a
//! page navigation is redirected to sign in and an API call gets 401 JSON (S04, S05).
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use portcullis::http::guard::{CurrentUser, GuardLayer};
//!
//! async fn hello(user: CurrentUser) -> String {
//!     format!("hello {}", user.email.as_deref().unwrap_or("stranger"))
//! }
//!
//! # async fn build(gateway: Arc<portcullis::Gateway>) -> Router {
//! Router::new()
//!     .route("/", get(hello))
//!     .layer(GuardLayer::new(gateway.clone()))
//!     .merge(portcullis::http::auth_routes(gateway))
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::{Layer, Service};
use uuid::Uuid;

use super::access::{AccessNote, Kind as AccessKind};
use super::cookies::{CookieJar, CookieKind};
use super::error::HttpError;
use super::headers;
use super::path::{NormalizedPath, PathPattern, normalize_path};
use super::request::{is_navigation, is_same_origin_write};
use crate::gateway::Gateway;
use crate::session::ActiveSession;
use crate::session::Sessions;
use crate::session::routes::RouteRefusal;

/// The signed-in user, put into request extensions by the guard; also an axum
/// extractor (401 when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentUser {
    /// Our stable user id (`X-User-Id`).
    pub id: Uuid,
    pub email: Option<String>,
    pub name: Option<String>,
    /// When the session ends at the latest (Unix seconds).
    pub session_expires_at: i64,
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or_else(|| {
                HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    "not_signed_in",
                    "Sign in to continue.",
                )
                .into_response()
            })
    }
}

/// What the guard found out about a request that the reverse proxy needs again: whether
/// the peer is a configured trusted proxy, and the normalised path it decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub trusted_peer: bool,
    /// The request path as the guard read it: the normalised one below is reused only
    /// while the request still has this path (a layer in between may rewrite it).
    pub raw_path: String,
    pub path: NormalizedPath,
}

/// A parsed `proxy.trusted_proxies` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Self { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.bits))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.bits))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The guard's fixed settings, derived once from the configuration.
#[derive(Debug)]
pub struct Guard {
    sessions: Arc<Sessions>,
    cookies: CookieJar,
    public_paths: Vec<PathPattern>,
    token_relay: Vec<PathPattern>,
    trusted_proxies: Vec<Cidr>,
    csrf_header: HeaderName,
    public_origin: String,
    login_path: String,
    /// The gateway's own prefix when the guard stands in front of the gateway's router
    /// (not when embedded): any other path under it answers 404 (D03).
    own_prefix: Option<String>,
}

impl Guard {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let config = gateway.config();
        let csrf_header =
            HeaderName::from_bytes(config.csrf_header.to_ascii_lowercase().as_bytes())
                .unwrap_or(HeaderName::from_static("x-csrf"));
        Self {
            cookies: CookieJar::new(config.is_https()),
            public_paths: config
                .public_paths
                .iter()
                .filter_map(|p| PathPattern::parse(p))
                .collect(),
            token_relay: config
                .token_relay
                .iter()
                .filter_map(|p| PathPattern::parse(p))
                .collect(),
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
            csrf_header,
            public_origin: config.public_origin(),
            login_path: format!("{}/login", config.prefix),
            sessions: gateway.sessions().clone(),
            own_prefix: None,
        }
    }

    /// The guard of the gateway's own router: a path under `prefix` that none of the
    /// gateway's endpoints answered gets the gateway's 404, with or without a session,
    /// and never reaches the upstream (D03), however it is spelled.
    pub fn owning_prefix(mut self, prefix: &str) -> Self {
        self.own_prefix = Some(prefix.to_owned());
        self
    }

    /// Whether a normalised path lies under the gateway's own prefix (ignoring ASCII
    /// case: `/AUTH/x` is not the app's either).
    fn is_own(&self, path: &NormalizedPath) -> bool {
        let Some(prefix) = &self.own_prefix else {
            return false;
        };
        let (p, prefix) = (path.as_str().as_bytes(), prefix.as_bytes());
        p.len() >= prefix.len()
            && p[..prefix.len()].eq_ignore_ascii_case(prefix)
            && (p.len() == prefix.len() || p[prefix.len()] == b'/')
    }

    pub(super) fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    pub(super) fn cookies(&self) -> &CookieJar {
        &self.cookies
    }

    pub(super) fn csrf_header(&self) -> &str {
        self.csrf_header.as_str()
    }

    /// The public URL's `host[:port]`, as a trusted `X-Forwarded-Host` must name it.
    pub(super) fn public_host(&self) -> &str {
        self.public_origin
            .split_once("://")
            .map_or(self.public_origin.as_str(), |(_, host)| host)
    }

    pub(super) fn is_public(&self, path: &NormalizedPath) -> bool {
        self.public_paths.iter().any(|p| p.matches(path))
    }

    /// Whether any path relays the access token.
    pub(super) fn relays_tokens(&self) -> bool {
        !self.token_relay.is_empty()
    }

    pub(super) fn relays_token_for(&self, path: &NormalizedPath) -> bool {
        self.token_relay.iter().any(|p| p.matches(path))
    }

    /// Whether the direct peer is a configured trusted proxy.
    pub fn peer_is_trusted(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| self.trusted_proxies.iter().any(|c| c.contains(p.ip())))
    }

    /// The browser-visible origin of the gateway.
    pub fn public_origin(&self) -> &str {
        &self.public_origin
    }

    pub(super) fn login_url(&self, return_to: Option<&str>) -> String {
        match return_to {
            Some(r) => format!(
                "{}?return_to={}",
                self.login_path,
                url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
            ),
            None => self.login_path.clone(),
        }
    }

    pub(super) fn is_foreign_origin(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::ORIGIN)
            .is_some_and(|o| o.as_bytes() != self.public_origin.as_bytes())
    }

    fn not_signed_in(
        &self,
        method: &Method,
        headers: &HeaderMap,
        path_and_query: &str,
    ) -> Response {
        if is_navigation(method, headers) {
            let mut r = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(&self.login_url(Some(path_and_query))) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        } else {
            let body = json!({
                "authenticated": false,
                "error": "not_signed_in",
                "message": "Sign in to continue.",
                "login_url": format!("{}{}", self.public_origin, self.login_path),
            });
            let mut r = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
    }

    /// Decides one request; calls `inner` when it may pass.
    pub async fn check<S>(&self, req: Request<Body>, mut inner: S) -> Response
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>,
    {
        self.check_then(req, |req| call(&mut inner, req)).await
    }

    /// [`Guard::check`] with the next step as a function: called at most once, with
    /// the request as it may go on.
    pub async fn check_then<F, Fut>(&self, mut req: Request<Body>, next: F) -> Response
    where
        F: FnOnce(Request<Body>) -> Fut,
        Fut: Future<Output = Response>,
    {
        // R01: oversized headers are refused before any cookie is read.
        if let Some(refusal) = super::headers_too_large(req.headers()) {
            return refusal;
        }
        // TRACE echoes requests (cookies included); CONNECT would turn the gateway into a
        // tunnel to anywhere.
        if matches!(*req.method(), Method::TRACE | Method::CONNECT) {
            let mut r = HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This method is not allowed.",
            )
            .into_response();
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"),
            );
            return r;
        }
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let trusted = self.peer_is_trusted(peer);
        headers::remove_client_claims(req.headers_mut(), trusted);
        let page = is_navigation(req.method(), req.headers());

        let path = match normalize_path(req.uri().path()) {
            Ok(p) => p,
            Err(e) => {
                return HttpError::bad_request(
                    "ambiguous_path",
                    format!("This address cannot be served: {e}."),
                )
                .page(page)
                .into_response();
            }
        };
        let checked = Checked {
            trusted_peer: trusted,
            raw_path: req.uri().path().to_owned(),
            path: path.clone(),
        };
        req.extensions_mut().insert(checked);
        if self.is_own(&path) {
            return super::routes::not_found(req.method().clone(), req.headers().clone()).await;
        }
        if self.public_paths.iter().any(|p| p.matches(&path)) {
            let mut response = next(req).await;
            response.extensions_mut().insert(AccessNote {
                kind: AccessKind::Public,
                path: Some(path.as_str().to_owned()),
                user: None,
                session: None,
            });
            return response;
        }

        // A CORS preflight carries no cookie; one from a foreign origin is answered here,
        // with no CORS headers, so no foreign site is granted credentialed access.
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            if self.is_foreign_origin(req.headers()) {
                return HttpError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    "Cross-origin requests are not allowed here.",
                )
                .into_response();
            }
            // Same-origin requests need no preflight, so a same-origin (or Origin-less)
            // one is a probe: answered here too, never forwarded without a session.
            return (
                StatusCode::NO_CONTENT,
                [(header::CACHE_CONTROL, "no-store")],
            )
                .into_response();
        }

        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let Some(cookie) = self
            .cookies
            .read(req.headers(), CookieKind::Session)
            .value()
            .map(str::to_owned)
        else {
            return self.not_signed_in(req.method(), req.headers(), &path_and_query);
        };
        let active = match self.sessions.authenticate(&cookie).await {
            Ok(Some(a)) => a,
            Ok(None) => return self.not_signed_in(req.method(), req.headers(), &path_and_query),
            Err(e) => return HttpError::from(e).page(page).into_response(),
        };
        // A rotated id: every answer to this request carries the new cookie, refusals
        // included. Never cached by a shared cache with someone's cookie in it.
        let new_cookie = active.new_cookie.as_ref().map(|id| {
            self.cookies
                .set(CookieKind::Session, id.expose(), active.max_age)
        });
        let note = AccessNote {
            kind: if req.headers().contains_key(header::UPGRADE) {
                AccessKind::Websocket
            } else {
                AccessKind::Protected
            },
            path: Some(path.as_str().to_owned()),
            user: Some(active.user.id),
            session: Some(active.record.id_hash.short().to_owned()),
        };
        let mut response = self
            .pass(req, next, active, page, &path, &path_and_query)
            .await;
        response.extensions_mut().insert(note);
        if let Some(cookie) = new_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            let h = response.headers_mut();
            h.append(header::SET_COOKIE, cookie);
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        response
    }

    /// The signed-in part: the CSRF rule, token relay, identity headers, the call.
    async fn pass<F, Fut>(
        &self,
        mut req: Request<Body>,
        next: F,
        active: ActiveSession,
        page: bool,
        path: &NormalizedPath,
        path_and_query: &str,
    ) -> Response
    where
        F: FnOnce(Request<Body>) -> Fut,
        Fut: Future<Output = Response>,
    {
        let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if unsafe_method
            && !is_same_origin_write(
                req.headers(),
                &self.public_origin,
                self.csrf_header.as_str(),
            )
        {
            tracing::warn!(method = %req.method(), path = path.as_str(), "cross-site write refused");
            return HttpError::new(
                StatusCode::FORBIDDEN,
                "csrf_refused",
                "This request did not come from this site, so it was refused.",
            )
            .page(page)
            .into_response();
        }

        // W01: a WebSocket (any upgrade) carries the session like a write does, and no
        // CORS rule stops a page elsewhere from opening one: only our own origin may.
        // (Browsers always send `Origin` on a WebSocket handshake; a client without one
        // is not a browser a foreign page could drive.)
        if req.headers().contains_key(header::UPGRADE) && self.is_foreign_origin(req.headers()) {
            tracing::warn!(path = path.as_str(), "cross-origin WebSocket refused");
            return HttpError::new(
                StatusCode::FORBIDDEN,
                "cross_origin_websocket",
                "This connection did not come from this site, so it was refused.",
            )
            .page(page)
            .into_response();
        }

        // `[[routes]]`: who may reach this path, with which methods.
        if self.sessions.has_routes()
            && let Err(refusal) =
                self.sessions
                    .check_route(req.method(), req.headers(), path, &active.record)
        {
            let (code, message) = match refusal {
                RouteRefusal::Method => (
                    "method_refused",
                    format!("This address does not accept {} requests.", req.method()),
                ),
                RouteRefusal::Access(denied) => (
                    "route_refused",
                    format!("You may not open this address: {denied}."),
                ),
            };
            return HttpError::new(StatusCode::FORBIDDEN, code, message)
                .page(page)
                .into_response();
        }

        if self.token_relay.iter().any(|p| p.matches(path)) {
            // Token relay: the upstream gets our access token, never the client's header
            // (`insert` replaces every `Authorization` the client sent).
            let bearer = self
                .sessions
                .relay_token(&active.record)
                .and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.as_str())).ok());
            let Some(mut bearer) = bearer else {
                tracing::info!(
                    session = active.record.id_hash.short(),
                    "no valid access token to relay; treated as signed out"
                );
                return self.not_signed_in(req.method(), req.headers(), path_and_query);
            };
            bearer.set_sensitive(true);
            req.headers_mut().insert(header::AUTHORIZATION, bearer);
        }

        let user = CurrentUser {
            id: active.user.id,
            email: active.user.email.clone(),
            name: active.user.name.clone(),
            session_expires_at: active.expires_at,
        };
        headers::set_identity(
            req.headers_mut(),
            user.id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer()),
            user.email.as_deref(),
            user.name.as_deref(),
        );
        // The signed assertion: an app that verifies it trusts no request that did not
        // pass here. Without one the request does not go on (an app may depend on it).
        match self.sessions.assertion(&active).await {
            Ok(value) => {
                req.headers_mut()
                    .insert(HeaderName::from_static(headers::JWT_ASSERTION), value);
            }
            Err(e) => return HttpError::from(e).page(page).into_response(),
        }
        let foreign = self.is_foreign_origin(req.headers());
        if req.headers().contains_key(header::UPGRADE) {
            // W02: a tunnel this request opens closes when the session ends.
            let end = self
                .sessions
                .watch_end(active.family_id, active.record.id_hash.clone());
            req.extensions_mut().insert(end);
        }
        req.extensions_mut().insert(user);
        let mut response = next(req).await;
        if foreign {
            response
                .headers_mut()
                .remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
        response
    }
}

async fn call<S>(inner: &mut S, req: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    match inner.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// The guard as a tower layer.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    guard: Arc<Guard>,
}

impl GuardLayer {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            guard: Arc::new(Guard::new(gateway)),
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardService {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// The guard wrapped around a service.
#[derive(Debug, Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> Service<Request<Body>> for GuardService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was polled ready goes to this request (tower's usual dance).
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let guard = self.guard.clone();
        Box::pin(async move { Ok(guard.check(req, inner).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }
}
