//! The edges: the gateway's routes, cookies, pages and the mapping of errors to HTTP.

pub mod access;
pub mod cookies;
pub mod decision;
pub mod error;
pub mod forward_auth;
pub mod guard;
pub mod headers;
pub mod limits;
pub mod pages;
/// The one normalised path (below `http`, so that `config` and `session` use it too).
pub use crate::path;
pub mod proxy;
pub mod request;
pub mod routes;
pub mod serve;

use std::sync::Arc;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, header};
use axum::response::Response;
use axum::routing::{get, post};
use tower::service_fn;

use crate::gateway::Gateway;
use routes::Routes;

/// Total size of request headers accepted (R01); larger requests get 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses requests whose headers are larger than [`MAX_HEADER_BYTES`] before any
/// cookie is parsed or any store is asked (RFC 6585 §5).
async fn limit_header_size(req: Request<Body>, next: axum::middleware::Next) -> Response {
    match headers_too_large(req.headers()) {
        Some(refusal) => refusal,
        None => next.run(req).await,
    }
}

/// The 431 answer when `headers` exceed [`MAX_HEADER_BYTES`].
pub(crate) fn headers_too_large(headers: &axum::http::HeaderMap) -> Option<Response> {
    use axum::response::IntoResponse as _;
    let size: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    (size > MAX_HEADER_BYTES).then(|| {
        error::HttpError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "The request headers are too large.",
        )
        .into_response()
    })
}

/// Headers on every answer of the gateway itself.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The gateway's own URLs carry codes and states: never send them as a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

/// The gateway's own endpoints under the prefix (`/login`, `/callback`, `/session`,
/// `/logout`) and `/healthz`, `/readyz`: merge these into an app protected by
/// [`guard::GuardLayer`].
pub fn auth_routes(gateway: Arc<Gateway>) -> Router {
    let config = gateway.config();
    let prefix = config.prefix.clone();
    let spa = config.spa.clone();
    let limits = Arc::new(limits::RateLimits::new(
        &config.limits,
        config.trusted_proxies.clone(),
        gateway.sessions().clone(),
    ));
    limits.start_upkeep();
    // D01: each limited endpoint checks its rate before anything else (its body included).
    let limited = |endpoint| {
        axum::middleware::from_fn_with_state((limits.clone(), endpoint), limits::enforce)
    };
    let routes = Routes::new(gateway.clone());
    let router = Router::new()
        .route(
            &format!("{prefix}/login"),
            get(routes::login).route_layer(limited(limits::Endpoint::Login)),
        )
        .route(
            &format!("{prefix}/callback"),
            get(routes::callback).route_layer(limited(limits::Endpoint::Callback)),
        )
        .route(
            &format!("{prefix}/callback/{{provider}}"),
            get(routes::provider_callback).route_layer(limited(limits::Endpoint::Callback)),
        )
        .route(&format!("{prefix}/session"), get(routes::session))
        .route(
            &format!("{prefix}/logout"),
            post(routes::logout).fallback(routes::method_not_allowed),
        )
        .route(&format!("{prefix}/logged-out"), get(routes::logged_out))
        .route(
            &format!("{prefix}/backchannel-logout"),
            post(routes::backchannel_logout)
                .fallback(routes::method_not_allowed)
                .route_layer(limited(limits::Endpoint::Backchannel)),
        )
        .route(&format!("{prefix}/jwks.json"), get(routes::jwks))
        .route(
            &format!("{prefix}/client-jwks.json"),
            get(routes::client_jwks),
        )
        .route(&format!("{prefix}/verify"), {
            let decider = Arc::new(decision::Decider::new(gateway.sessions().clone()));
            axum::routing::any(move |req: Request<Body>| {
                let decider = decider.clone();
                async move {
                    let redirect =
                        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                            .any(|(k, v)| k == "redirect" && v == "1");
                    forward_auth::verify(&decider, req, redirect).await
                }
            })
        })
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz));
    let router = if spa.code_exchange {
        router.route(
            &spa.code_exchange_path,
            post(routes::spa_code_exchange)
                .fallback(routes::method_not_allowed)
                .route_layer(limited(limits::Endpoint::SpaExchange)),
        )
    } else {
        router
    };
    router
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(limit_header_size))
        .with_state(routes)
}

/// The whole gateway: its endpoints, and everything else through the guard to the
/// upstream (or a 404 when there is none: forward-auth only). Unknown paths under the
/// prefix answer 404 (D03).
pub fn router(gateway: Arc<Gateway>) -> Result<App, proxy::UpstreamError> {
    let config = gateway.config();
    let upstream = match &config.upstream {
        Some(base) => Some(proxy::Upstream::new(
            base,
            &config.public_url,
            proxy::ProxyTimeouts::default(),
        )?),
        None => None,
    };
    Ok(router_with_upstream(gateway, upstream))
}

/// [`router`] with a given upstream client (tests use short timeouts).
pub fn router_with_upstream(gateway: Arc<Gateway>, upstream: Option<proxy::Upstream>) -> App {
    let decider = Arc::new(decision::Decider::new(gateway.sessions().clone()));
    let guard = Arc::new(guard::Guard::at(
        decider.clone(),
        decision::Door::ReverseProxy,
    ));
    let upstream = upstream.map(Arc::new);
    let fallback = {
        let (guard, upstream) = (guard.clone(), upstream.clone());
        service_fn(move |req: Request<Body>| {
            let (guard, upstream) = (guard.clone(), upstream.clone());
            async move { Ok::<_, Infallible>(protect(&guard, upstream.as_deref(), req).await) }
        })
    };
    let config = gateway.config();
    let verify_path = format!("{}/verify", config.prefix);
    let metrics = gateway.sessions().metrics().clone();
    let own = decider.own_paths().clone();
    let routes = auth_routes(gateway).fallback_service(fallback);
    App {
        inner: Arc::new(AppInner {
            routes,
            guard,
            upstream,
            own,
            verify_path,
            access: Arc::new(access::AccessLog::start()),
            metrics,
        }),
    }
}

/// A request outside the gateway's own endpoints: the guard, then the upstream. In
/// forward-auth-only mode (no upstream) there is nothing to guard: 404.
async fn protect(
    guard: &guard::Guard,
    upstream: Option<&proxy::Upstream>,
    req: Request<Body>,
) -> Response {
    let Some(upstream) = upstream else {
        return routes::not_found(req.method().clone(), req.headers().clone()).await;
    };
    guard
        .check_then(req, |req| async move { upstream.forward(req).await })
        .await
}

/// The gateway as one service (what [`router`] returns and [`serve::serve`] serves):
/// requests to its own endpoints go through their router; every other request goes
/// straight to the guard and the upstream, without a routing table on the way.
#[derive(Debug, Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

#[derive(Debug)]
struct AppInner {
    /// The gateway's endpoints, falling back to the guard like every other path.
    routes: Router,
    guard: Arc<guard::Guard>,
    upstream: Option<Arc<proxy::Upstream>>,
    /// Which paths the gateway's router answers (`decision::OwnPaths`).
    own: decision::OwnPaths,
    /// `{prefix}/verify`, logged as kind `verify`.
    verify_path: String,
    access: Arc<access::AccessLog>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl App {
    /// The WebSockets open through its upstream (none without one): what a shutdown
    /// waits for besides requests (`ServeOptions::tunnels`).
    /// Resolves once every request's access line is written, after the last copy of
    /// this app is dropped: `serve` waits for it before the process ends.
    pub fn access_log_written(&self) -> access::AllWritten {
        self.inner.access.all_written()
    }

    pub fn tunnels(&self) -> Option<proxy::Tunnels> {
        self.inner.upstream.as_ref().map(|u| u.tunnels().clone())
    }

    /// The same gateway with its own upstream connection pool: what each serving thread
    /// of [`serve::serve_on_threads`] gets.
    pub fn with_own_connections(&self) -> App {
        let inner = &self.inner;
        App {
            inner: Arc::new(AppInner {
                routes: inner.routes.clone(),
                guard: inner.guard.clone(),
                upstream: inner.upstream.as_ref().map(|u| Arc::new(u.with_own_pool())),
                own: inner.own.clone(),
                verify_path: inner.verify_path.clone(),
                access: inner.access.clone(),
                metrics: inner.metrics.clone(),
            }),
        }
    }
}

impl AppInner {
    /// One access-log line and the request metrics: what the guard noted, else the
    /// request as it came.
    fn log(
        &self,
        method: axum::http::Method,
        raw_path: String,
        response: &Response,
        start: tokio::time::Instant,
        kind: access::Kind,
    ) {
        let note = response.extensions().get::<access::AccessNote>();
        let path = note.and_then(|n| n.path.clone()).unwrap_or(raw_path);
        let (status, elapsed) = (response.status().as_u16(), start.elapsed());
        let kind = note.map_or(kind, |n| n.kind);
        self.metrics.request(kind.as_str(), status, elapsed);
        self.access
            .record(method, path, status, elapsed, note, kind);
    }
}

impl<B> tower::Service<Request<B>> for App
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let (start, method) = (tokio::time::Instant::now(), req.method().clone());
        let raw_path = req.uri().path().to_owned();
        if inner.own.may_route(&raw_path) {
            let kind = if raw_path == inner.verify_path {
                access::Kind::Verify
            } else {
                access::Kind::Gateway
            };
            let mut routes = inner.routes.clone();
            let answer = tower::Service::call(&mut routes, req);
            return Box::pin(async move {
                let response = answer.await?;
                inner.log(method, raw_path, &response, start, kind);
                Ok(response)
            });
        }
        let req = req.map(Body::new);
        Box::pin(async move {
            let response = protect(&inner.guard, inner.upstream.as_deref(), req).await;
            inner.log(method, raw_path, &response, start, access::Kind::Protected);
            Ok(response)
        })
    }
}
