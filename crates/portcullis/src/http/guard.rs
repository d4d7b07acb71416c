//! The guard: the door of the reverse proxy and of the embeddable tower [`Layer`]. It
//! reads each request into the one decision's view (`decision`) and carries out the
//! answer: the app gets only requests that pass — a public path, or a live session the
//! rules allow — and gets them under the decided, normalised path, never the raw one
//! (docs/security.md G01, G11, P03), with the signed-in user handed on.
//!
//! Every request that passes, public or not, of any method, first loses client-sent
//! identity headers and routing headers (`X-Original-URL`, `Forwarded`, …), and,
//! unless from a trusted proxy, the other forwarding headers (P01, P02, P04, G05).
//! Without a session a page navigation is redirected to sign in and an API call gets
//! 401 JSON (S04, S05).
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::{Layer, Service};
use uuid::Uuid;

use super::decision::{Decider, Decision, Door, Identity, RequestView, Target, Who};
use super::error::HttpError;
use super::headers;
use super::path::NormalizedPath;
use super::request::{is_websocket_handshake, method_overrides};
use crate::gateway::Gateway;

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

/// What the guard decided on, for the reverse proxy behind it: whether the peer is a
/// configured trusted proxy, and the decided path (normalised, and encoded as the
/// request URI now carries it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub trusted_peer: bool,
    /// The decided path as written into the request URI: the proxy forwards it as it
    /// is while the request still has it (a layer in between may rewrite the path).
    pub forwarded_path: String,
    pub path: NormalizedPath,
}

pub use crate::net::Cidr;

/// The reverse proxy's and the embeddable layer's door: reads each request into a
/// [`RequestView`], asks the one decision (`decision`), and carries it out — the app
/// (upstream or inner service) gets the request only when it passes, and then under
/// the decided path, never the raw one (G01, G11).
#[derive(Debug)]
pub struct Guard {
    decider: Arc<Decider>,
    door: Door,
}

impl Guard {
    /// The guard of an axum app ([`GuardLayer`]).
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self::at(
            Arc::new(Decider::new(gateway.sessions().clone())),
            Door::Layer,
        )
    }

    /// The guard of `door`, deciding with `decider`.
    pub fn at(decider: Arc<Decider>, door: Door) -> Self {
        Self { decider, door }
    }

    pub fn decider(&self) -> &Arc<Decider> {
        &self.decider
    }

    /// 302 to sign in for a page navigation, else 401 JSON (S04, S05).
    fn sign_in(&self, page: bool, path_and_query: &str) -> Response {
        let mut r = if page {
            let mut r = StatusCode::FOUND.into_response();
            let login = self.decider.login_url(Some(path_and_query));
            if let Ok(v) = HeaderValue::from_str(&login) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        } else {
            let body = json!({
                "authenticated": false,
                "error": "not_signed_in",
                "message": "Sign in to continue.",
                "login_url": format!("{}{}", self.decider.public_origin(), self.decider.login_url(None)),
            });
            (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
        };
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
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
    pub async fn check_then<F, Fut>(&self, req: Request<Body>, next: F) -> Response
    where
        F: FnOnce(Request<Body>) -> Fut,
        Fut: Future<Output = Response>,
    {
        // R01: oversized headers are refused before any cookie is read.
        if let Some(refusal) = super::headers_too_large(req.headers()) {
            return refusal;
        }
        let peer = super::request::peer(&req);
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let view = RequestView {
            door: self.door,
            method: req.method().clone(),
            overrides: method_overrides(req.headers(), req.uri().query()),
            target: Target::of_raw_path(req.uri().path()),
            return_to: Some(&path_and_query),
            headers: req.headers(),
            websocket: is_websocket_handshake(req.headers()),
            peer,
            trusted_peer: self.decider.peer_is_trusted(peer),
        };
        let verdict = self.decider.decide(&view).await;
        let (page, websocket, trusted) = (view.is_page(), view.websocket, view.trusted_peer);
        let target = view.target;
        let mut response = match (verdict.decision, target) {
            (Decision::Public, Target::Path { path, .. }) => {
                self.pass(req, next, None, &path, trusted, websocket).await
            }
            (Decision::SignedIn(identity), Target::Path { path, .. }) => {
                self.pass(req, next, Some(*identity), &path, trusted, websocket)
                    .await
            }
            (Decision::SignIn, _) => self.sign_in(page, &path_and_query),
            (Decision::Refuse(refusal), _) => refused(refusal),
            // The guard's views always carry a path: nothing else passes.
            (Decision::Public | Decision::SignedIn(_), _) => refused(HttpError::bad_request(
                "ambiguous_path",
                "This address cannot be served.",
            )),
        };
        response.extensions_mut().insert(verdict.note);
        if let Some(cookie) = verdict.set_cookie {
            let h = response.headers_mut();
            h.append(header::SET_COOKIE, cookie);
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        response
    }

    /// A request that passes: what the app receives — the decided path (G01), no
    /// client-sent identity or routing header (P01, G05), our identity headers and
    /// assertion, the relayed token — then the call.
    async fn pass<F, Fut>(
        &self,
        mut req: Request<Body>,
        next: F,
        identity: Option<Identity>,
        path: &NormalizedPath,
        trusted: bool,
        websocket: bool,
    ) -> Response
    where
        F: FnOnce(Request<Body>) -> Fut,
        Fut: Future<Output = Response>,
    {
        headers::remove_client_claims(req.headers_mut(), trusted);
        if let Err(refusal) = forward_decided_path(&mut req, path, trusted) {
            return refused(refusal);
        }
        let Some(identity) = identity else {
            return next(req).await;
        };
        let Identity {
            who,
            assertion,
            relay,
        } = identity;
        let dpop_relayed = relay.is_some_and(|relay| put_relay(req.headers_mut(), relay));
        let user = current_user(&who);
        set_identity(req.headers_mut(), &user, &who, assertion);
        let foreign = self.decider.is_foreign_origin(req.headers());
        self.for_principal(&mut req, &who, websocket);
        req.extensions_mut().insert(user);
        let mut response = next(req).await;
        if dpop_relayed
            && let Some(nonce) = response
                .headers()
                .get(headers::DPOP_NONCE)
                .and_then(|v| v.to_str().ok())
        {
            // RFC 9449 §9: the upstream's nonce goes into the next relayed proof.
            self.decider.sessions().upstream_dpop_nonce(nonce);
        }
        if foreign {
            response
                .headers_mut()
                .remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
        response
    }

    /// What the principal adds: a session's WebSocket closes when the session ends
    /// (W02); a token-decided request is never relayed, and the app gets the client's
    /// `Authorization` and `DPoP` unless the entry strips them.
    fn for_principal(&self, req: &mut Request<Body>, who: &Who, websocket: bool) {
        match who {
            Who::Session(active) if websocket => {
                let end = self
                    .decider
                    .sessions()
                    .watch_end(active.family_id, active.record.id_hash.clone());
                req.extensions_mut().insert(end);
            }
            Who::Token(token) if token.strip_authorization => {
                req.headers_mut().remove(header::AUTHORIZATION);
                req.headers_mut()
                    .remove(HeaderName::from_static(headers::DPOP));
            }
            _ => {}
        }
    }
}

/// The signed-in principal as handlers see it (an extension of the request).
fn current_user(who: &Who) -> CurrentUser {
    CurrentUser {
        id: who.user().id,
        email: who.user().email.clone(),
        name: who.user().name.clone(),
        session_expires_at: match who {
            Who::Session(active) => active.expires_at,
            Who::Token(token) => token.expires_at,
        },
    }
}

/// Our identity headers and the signed assertion (P01: the client's were removed).
fn set_identity(request: &mut HeaderMap, user: &CurrentUser, who: &Who, assertion: HeaderValue) {
    headers::set_identity(
        request,
        headers::IdentityValues {
            id: user
                .id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer()),
            email: user.email.as_deref(),
            name: user.name.as_deref(),
            provider: who.provider_id(),
            auth_method: who.auth_method(),
        },
    );
    request.insert(HeaderName::from_static(headers::JWT_ASSERTION), assertion);
}

/// G01: the app gets the decided path, never the raw one, and learns what was checked.
fn forward_decided_path(
    req: &mut Request<Body>,
    path: &NormalizedPath,
    trusted: bool,
) -> Result<(), HttpError> {
    let forwarded_path = path.encoded();
    if forwarded_path != req.uri().path() {
        let Some(uri) = with_path(req.uri(), &forwarded_path) else {
            return Err(HttpError::bad_request(
                "bad_request_target",
                "The request target is not valid.",
            ));
        };
        *req.uri_mut() = uri;
    }
    req.extensions_mut().insert(Checked {
        trusted_peer: trusted,
        forwarded_path,
        path: path.clone(),
    });
    Ok(())
}

/// Token relay: our token replaces every `Authorization` the client sent, and a
/// client's `DPoP` proof never goes along with it; whether a proof of ours did.
fn put_relay(headers: &mut axum::http::HeaderMap, relay: super::decision::RelayHeaders) -> bool {
    headers.insert(header::AUTHORIZATION, relay.authorization);
    let dpop = HeaderName::from_static(super::headers::DPOP);
    match relay.dpop {
        Some(proof) => {
            headers.insert(dpop, proof);
            true
        }
        None => {
            headers.remove(dpop);
            false
        }
    }
}

/// A refusal as the guard answers it (405s name the methods it allows).
fn refused(refusal: HttpError) -> Response {
    let method_not_allowed = refusal.status == StatusCode::METHOD_NOT_ALLOWED;
    let mut r = refusal.into_response();
    if method_not_allowed {
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"),
        );
    }
    r
}

/// `uri` with its path replaced by `path` (already encoded), the query kept.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
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
