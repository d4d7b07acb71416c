//! The reverse proxy to `PORTCULLIS_UPSTREAM` on hyper-util's pooled client: bodies
//! stream both ways (never buffered whole), hop-by-hop headers are removed, WebSocket
//! upgrades are passed through, and every call has a connect and a response-header
//! timeout plus an idle timeout on bodies instead of a total one (streams, SSE).
//! Requests that fail on a stale pooled connection before being written are retried by
//! the client (`retry_canceled_requests`), which is safe for any method.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::{Instant, Sleep};
use url::Url;

use super::error::HttpError;
use super::headers;

/// Time to open a connection to the upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time from sending the request to the upstream's response headers.
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause in a request or response body before the stream is cut.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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
    public_url: Url,
}

impl Upstream {
    /// `base` must be an `http://` URL (TLS to the upstream is not supported yet).
    pub fn new(base: &Url, public_url: &Url, timeouts: ProxyTimeouts) -> Result<Self, String> {
        if base.scheme() != "http" {
            return Err("only http:// upstreams are supported".into());
        }
        let host = base.host_str().ok_or("the upstream URL has no host")?;
        let authority = match base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .retry_canceled_requests(true)
            .build(connector);
        Ok(Self {
            scheme: base.scheme().to_owned(),
            authority,
            base_path: base.path().trim_end_matches('/').to_owned(),
            client,
            timeouts,
            public_url: public_url.clone(),
        })
    }

    fn target(&self, uri: &Uri) -> Result<Uri, HttpError> {
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        format!(
            "{}://{}{}{}",
            self.scheme, self.authority, self.base_path, pq
        )
        .parse()
        .map_err(|_| {
            HttpError::bad_request("bad_request_target", "The request target is not valid.")
        })
    }

    /// Forwards one request (already checked by the guard, identity headers set).
    pub async fn forward(&self, mut req: Request<Body>) -> Response {
        let peer_trusted = req
            .extensions()
            .get::<super::guard::TrustedPeer>()
            .is_some_and(|t| t.0);
        let is_upgrade = wants_upgrade(req.headers());
        let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);

        let target = match self.target(req.uri()) {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = target;
        parts.version = axum::http::Version::HTTP_11;
        let h = &mut parts.headers;
        headers::remove_hop_by_hop(h, is_upgrade);
        headers::remove_gateway_cookies(h);
        self.set_forwarding(h, peer, peer_trusted);
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            h.insert(header::HOST, host);
        }
        let body = Body::new(IdleTimeout::new(body, self.timeouts.idle));
        let upstream_req = Request::from_parts(parts, body);

        let mut resp = match tokio::time::timeout(
            self.timeouts.response_header,
            self.client.request(upstream_req),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upstream request failed");
                return HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "The application is not reachable right now.",
                )
                .into_response();
            }
            Err(_) => {
                tracing::warn!("upstream did not answer in time");
                return HttpError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "The application did not answer in time.",
                )
                .into_response();
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((client, upstream)) => {
                            let mut client = TokioIo::new(client);
                            let mut upstream = TokioIo::new(upstream);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
            }
            let (mut parts, _) = resp.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, Body::empty());
        }

        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false);
        Response::from_parts(parts, Body::new(IdleTimeout::new(body, self.timeouts.idle)))
    }

    /// `X-Forwarded-For/Proto/Host` for the upstream: appended to a trusted proxy's
    /// values, else set from the peer and the configured public URL.
    fn set_forwarding(
        &self,
        h: &mut axum::http::HeaderMap,
        peer: Option<SocketAddr>,
        peer_trusted: bool,
    ) {
        if let Some(peer) = peer {
            let ip = peer.ip().to_string();
            let value = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(chain) if peer_trusted => format!("{chain}, {ip}"),
                _ => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert("x-forwarded-for", v);
            }
        }
        if !(peer_trusted && h.contains_key("x-forwarded-proto"))
            && let Ok(v) = HeaderValue::from_str(self.public_url.scheme())
        {
            h.insert("x-forwarded-proto", v);
        }
        if !(peer_trusted && h.contains_key("x-forwarded-host"))
            && let Some(host) = self.public_url.host_str()
        {
            let host = match self.public_url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_owned(),
            };
            if let Ok(v) = HeaderValue::from_str(&host) {
                h.insert("x-forwarded-host", v);
            }
        }
    }
}

/// A WebSocket (or other) upgrade request: `Connection: upgrade` and `Upgrade`.
fn wants_upgrade(h: &axum::http::HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// A body that fails when no frame arrives for `idle`: streams may last forever, but
/// may not stall forever.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// The body stalled longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the body stalled for longer than the idle timeout")]
pub struct IdleTimeoutError;

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeoutError)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;
