//! The reverse proxy to `PORTCULLIS_UPSTREAM` on hyper-util's pooled client: bodies
//! stream both ways (never buffered whole), hop-by-hop headers are removed, WebSocket
//! upgrades are passed through, and every call has a connect and a response-header
//! timeout plus an idle timeout on bodies and tunnels instead of a total one (streams,
//! SSE, WebSockets). Requests that fail on a stale pooled connection before being
//! written are retried by the client (`retry_canceled_requests`), safe for any method.
//!
//! The upstream receives the **normalised** path the guard decided on, re-encoded, so
//! that no upstream can route `..`, `;` or `//` differently (docs/security.md P03,
//! G01), and `X-Forwarded-Proto`/`-Host` of the public URL whoever sent others (G05).

mod idle;
mod websocket;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body::Body as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use url::Url;

use super::error::HttpError;
use super::guard::{Checked, CurrentUser};
use super::headers;
use super::path::normalize_path;
use crate::session::SessionEnd;
pub use idle::{IdleTimeout, IdleTimeoutError};
pub use websocket::Tunnels;
use websocket::{SEC_WEBSOCKET_KEY, Upgrade, wants_websocket, websocket_accept};

/// Time to open a connection to the upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time from the end of the request body to the upstream's response headers.
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause in a body or an upgraded connection before it is cut.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Most upgraded connections (WebSockets) open at once.
pub const MAX_TUNNELS: usize = 10_000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Timeouts of the proxy (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct ProxyTimeouts {
    pub connect: Duration,
    pub response_header: Duration,
    pub idle: Duration,
}

impl Default for ProxyTimeouts {
    fn default() -> Self {
        Self {
            connect: CONNECT_TIMEOUT,
            response_header: RESPONSE_HEADER_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// The upstream application and the client that reaches it.
#[derive(Debug, Clone)]
pub struct Upstream {
    scheme: String,
    authority: String,
    base_path: String,
    client: Client<HttpConnector, Body>,
    timeouts: ProxyTimeouts,
    /// `X-Forwarded-Proto` and `-Host` as the browser sees the gateway: made once.
    forwarded_proto: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
    tunnels: Tunnels,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Headers that name the request's scheme besides `X-Forwarded-Proto`.
const SCHEME_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("front-end-https"),
];

/// Why an upstream URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("only http:// upstreams are supported (got {0}://)")]
    Scheme(String),
    #[error("the upstream URL has no host")]
    NoHost,
}

impl Upstream {
    /// `base` must be an `http://` URL (TLS to the upstream is not supported yet).
    pub fn new(
        base: &Url,
        public_url: &Url,
        timeouts: ProxyTimeouts,
    ) -> Result<Self, UpstreamError> {
        if base.scheme() != "http" {
            return Err(UpstreamError::Scheme(base.scheme().to_owned()));
        }
        let host = base.host_str().ok_or(UpstreamError::NoHost)?;
        let authority = match base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let client = client(timeouts);
        let forwarded_host = public_url.host_str().and_then(|host| {
            let host = match public_url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_owned(),
            };
            HeaderValue::from_str(&host).ok()
        });
        Ok(Self {
            scheme: base.scheme().to_owned(),
            authority,
            base_path: base.path().trim_end_matches('/').to_owned(),
            client,
            timeouts,
            forwarded_proto: HeaderValue::from_str(public_url.scheme()).ok(),
            forwarded_host,
            tunnels: Tunnels::default(),
        })
    }

    /// Its open tunnels (shared with every copy made by [`Upstream::with_own_pool`]).
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// The same upstream with a connection pool of its own (one per serving thread, so
    /// that a pooled connection is used on the thread that runs it).
    pub fn with_own_pool(&self) -> Self {
        Self {
            client: client(self.timeouts),
            ..self.clone()
        }
    }

    /// The upstream URI: the base, the decided path (the guard's, already encoded in
    /// the request URI; or normalised and re-encoded here when no guard decided on this
    /// path), the original query.
    fn target(&self, uri: &Uri, decided: Option<&str>) -> Result<Uri, HttpError> {
        let normalized;
        let encoded = match decided {
            Some(path) => path,
            None => {
                normalized = normalize_path(uri.path())
                    .map_err(|e| {
                        HttpError::bad_request(
                            "ambiguous_path",
                            format!("This address cannot be served: {e}."),
                        )
                    })?
                    .encoded();
                &normalized
            }
        };
        let query = uri.query().unwrap_or("");
        let mut target = String::with_capacity(
            self.scheme.len()
                + 3
                + self.authority.len()
                + self.base_path.len()
                + encoded.len()
                + query.len()
                + 1,
        );
        for part in [
            self.scheme.as_str(),
            "://",
            &self.authority,
            &self.base_path,
            encoded,
        ] {
            target.push_str(part);
        }
        if uri.query().is_some() {
            target.push('?');
            target.push_str(query);
        }
        target.parse().map_err(|_| {
            HttpError::bad_request("bad_request_target", "The request target is not valid.")
        })
    }

    /// Forwards one request (already checked by the guard, identity headers set).
    pub async fn forward(&self, mut req: Request<Body>) -> Response {
        let checked = req.extensions_mut().remove::<Checked>();
        let peer_trusted = checked.as_ref().is_some_and(|c| c.trusted_peer);
        let peer = super::request::peer(&req);
        let is_websocket = wants_websocket(req.headers());
        // W03: the answer a genuine WebSocket server gives to this key.
        let expected_accept = is_websocket
            .then(|| req.headers().get(SEC_WEBSOCKET_KEY).map(websocket_accept))
            .flatten();
        let client_upgrade = is_websocket.then(|| hyper::upgrade::on(&mut req));
        // A tunnel lives no longer than the session that opened it.
        let session_ends = req
            .extensions()
            .get::<CurrentUser>()
            .map_or(0, |u| u.session_expires_at);
        let session_end = req.extensions_mut().remove::<SessionEnd>();

        let decided = checked
            .as_ref()
            .filter(|c| c.forwarded_path == req.uri().path())
            .map(|c| c.forwarded_path.as_str());
        let target = match self.target(req.uri(), decided) {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = target;
        parts.version = axum::http::Version::HTTP_11;
        let h = &mut parts.headers;
        headers::remove_hop_by_hop(h, is_websocket);
        headers::remove_gateway_cookies(h);
        self.set_forwarding(h, peer, peer_trusted);
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            h.insert(header::HOST, host);
        }
        // A request without a body (most GETs) has nothing to time out or to strip.
        let (body, body_sent) = if body.is_end_stream() {
            (body, None)
        } else {
            let (sent, body_sent) = oneshot::channel();
            let body = Body::new(IdleTimeout::new(body, self.timeouts.idle).for_request(sent));
            (body, Some(body_sent))
        };
        let upstream_req = Request::from_parts(parts, body);
        let resp = match self.send(upstream_req, body_sent).await {
            Ok(resp) => resp,
            Err(refusal) => return refusal,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upgrade = Upgrade {
                client: client_upgrade,
                expected_accept,
                session_ends,
                session_end,
            };
            return self.open_tunnel(resp, upgrade);
        }
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false);
        headers::remove_gateway_set_cookies(&mut parts.headers);
        Response::from_parts(parts, Body::new(IdleTimeout::new(body, self.timeouts.idle)))
    }

    /// Sends the request upstream. The response-header timeout starts once the request
    /// body is sent (`body_sent`): an upload takes as long as it needs, under the idle
    /// timeout.
    async fn send(
        &self,
        upstream_req: Request<Body>,
        body_sent: Option<oneshot::Receiver<()>>,
    ) -> Result<Response<hyper::body::Incoming>, Response> {
        let header_timeout = self.timeouts.response_header;
        let deadline = async move {
            if let Some(body_sent) = body_sent {
                let _ = body_sent.await;
            }
            tokio::time::sleep(header_timeout).await;
        };
        let answer = tokio::select! {
            r = self.client.request(upstream_req) => Some(r),
            () = deadline => None,
        };
        match answer {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream request failed");
                Err(HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "The application is not reachable right now.",
                )
                .into_response())
            }
            None => {
                tracing::warn!("upstream did not answer in time");
                Err(HttpError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "The application did not answer in time.",
                )
                .into_response())
            }
        }
    }

    /// `X-Forwarded-For/Proto/Host` for the upstream: a trusted proxy's
    /// `X-Forwarded-For` is kept with the peer appended, else it is the peer; `-Proto`
    /// and `-Host` are always the public URL's (G05: the app sees the origin the
    /// decision was made for, whoever sent what).
    fn set_forwarding(&self, h: &mut HeaderMap, peer: Option<SocketAddr>, peer_trusted: bool) {
        if let Some(peer) = peer {
            let ip = peer.ip().to_canonical().to_string();
            let value = if peer_trusted && h.contains_key(&X_FORWARDED_FOR) {
                let chain: Vec<&str> = h
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                format!("{}, {ip}", chain.join(", "))
            } else {
                ip
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(X_FORWARDED_FOR, v);
            }
        }
        // Other names for the scheme (Rack, Django, IIS read them) would contradict it.
        for name in SCHEME_HEADERS {
            h.remove(name);
        }
        for (name, value) in [
            (X_FORWARDED_PROTO, &self.forwarded_proto),
            (X_FORWARDED_HOST, &self.forwarded_host),
        ] {
            match value {
                Some(v) => h.insert(name, v.clone()),
                None => h.remove(name),
            };
        }
    }
}

/// The pooled HTTP/1.1 client to the upstream.
fn client(timeouts: ProxyTimeouts) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .retry_canceled_requests(true)
        .build(connector)
}
