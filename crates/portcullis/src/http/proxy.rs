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

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use url::Url;

use super::error::HttpError;
use super::guard::{Checked, CurrentUser};
use super::headers;
use super::path::normalize_path;
use crate::session::SessionEnd;

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

        // The response-header timeout starts once the request body is sent: an upload
        // takes as long as it needs, under the idle timeout.
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
        let mut resp = match answer {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream request failed");
                return HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "The application is not reachable right now.",
                )
                .into_response();
            }
            None => {
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
            let Some(client_upgrade) = client_upgrade else {
                return HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_bad_upgrade",
                    "The application switched protocols unasked.",
                )
                .into_response();
            };
            let accepted = resp.headers().get(SEC_WEBSOCKET_ACCEPT);
            if expected_accept.is_none()
                || accepted.map(HeaderValue::as_bytes)
                    != expected_accept.as_ref().map(String::as_bytes)
            {
                tracing::warn!(
                    "the upstream switched protocols without a valid Sec-WebSocket-Accept"
                );
                return HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_bad_upgrade",
                    "The application's WebSocket answer was not valid.",
                )
                .into_response();
            }
            let Some(slot) = self.tunnels.take() else {
                return HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_tunnels",
                    "Too many open connections; try again shortly.",
                )
                .into_response();
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let idle = self.timeouts.idle;
            let closing = self.tunnels.closing.subscribe();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        tunnel(
                            TokioIo::new(client),
                            TokioIo::new(upstream),
                            idle,
                            session_ends,
                            session_end,
                            closing,
                        )
                        .await
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            let (mut parts, _) = resp.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers, true);
            headers::remove_gateway_set_cookies(&mut parts.headers);
            return Response::from_parts(parts, Body::empty());
        }

        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, false);
        headers::remove_gateway_set_cookies(&mut parts.headers);
        Response::from_parts(parts, Body::new(IdleTimeout::new(body, self.timeouts.idle)))
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

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2):
/// base64(SHA-1(key + the protocol's GUID)).
fn websocket_accept(key: &HeaderValue) -> String {
    use base64::Engine as _;
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A WebSocket handshake (RFC 6455 §4.1): `Connection: upgrade`, `Upgrade: websocket`.
/// Other upgrades (`h2c`, …) are not passed on.
fn wants_websocket(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The upgraded connections (WebSockets) open through an upstream: at most
/// [`MAX_TUNNELS`], waited for at shutdown (`ServeOptions::tunnels`) and closed at its
/// deadline.
#[derive(Debug, Clone)]
pub struct Tunnels {
    places: Arc<tokio::sync::Semaphore>,
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self {
            places: Arc::new(tokio::sync::Semaphore::new(MAX_TUNNELS)),
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl Tunnels {
    /// A place for one more tunnel, held until it closes; `None` at the bound.
    fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.places.clone().try_acquire_owned().ok()
    }

    /// How many are open.
    pub fn open(&self) -> usize {
        MAX_TUNNELS - self.places.available_permits()
    }

    /// Completes once none is open. While it waits, new tunnels are refused.
    pub async fn all_closed(&self) {
        let all = u32::try_from(MAX_TUNNELS).unwrap_or(u32::MAX);
        let _ = self.places.acquire_many(all).await;
    }

    /// Closes every open tunnel (both sides' connections).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }
}

/// Copies bytes both ways until either side closes, nothing moves for `idle`, the
/// session's lifetime is over (`session_ends`, Unix seconds) or it is ended elsewhere
/// (`session_end`: logout, revocation, on any instance).
async fn tunnel<A, B>(
    mut a: A,
    mut b: B,
    idle: Duration,
    session_ends: i64,
    mut session_end: Option<SessionEnd>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The session's deadline is Unix time; the timer needs wall-clock now.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let lifetime = Duration::from_secs(session_ends.saturating_sub(now).max(0) as u64);
    let session_end_at = tokio::time::sleep(lifetime);
    tokio::pin!(session_end_at);
    let (mut from_a, mut from_b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let quiet = tokio::time::sleep(idle);
        tokio::select! {
            n = a.read(&mut from_a) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if b.write_all(&from_a[..n]).await.is_err() { break },
            },
            n = b.read(&mut from_b) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if a.write_all(&from_b[..n]).await.is_err() { break },
            },
            () = quiet => {
                tracing::debug!("upgraded connection idle; closing");
                break;
            }
            () = &mut session_end_at => {
                tracing::debug!("session ended; closing its upgraded connection");
                break;
            }
            () = ended(&mut session_end) => {
                tracing::debug!("session ended elsewhere; closing its upgraded connection");
                break;
            }
            () = shutting_down(&mut closing) => {
                tracing::debug!("shutting down; closing an upgraded connection");
                break;
            }
        }
    }
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
}

/// Resolves once [`Tunnels::close_all`] was called.
async fn shutting_down(closing: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *closing.borrow_and_update() {
            return;
        }
        if closing.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves when the watched session ends; never without a watch.
async fn ended(watch: &mut Option<SessionEnd>) {
    match watch {
        Some(w) => w.ended().await,
        None => std::future::pending().await,
    }
}

/// A body that fails when no frame arrives for `idle`: streams may last forever, but
/// may not stall forever. The timer is armed only when the body waits: a body whose
/// frames are ready when asked for (most small answers) never touches the timer wheel.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    /// Armed at the first wait; re-armed at a wait that follows progress.
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was last armed.
    progressed: bool,
    /// Request bodies: signalled when the body has been sent in full (or failed).
    sent: Option<oneshot::Sender<()>>,
    /// Request bodies: trailers are dropped, so none can carry an identity header.
    drop_trailers: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: None,
            progressed: false,
            sent: None,
            drop_trailers: false,
        }
    }

    /// As a request body: reports its end on `sent` and drops trailers.
    pub fn for_request(mut self, sent: oneshot::Sender<()>) -> Self
    where
        B: HttpBody,
    {
        self.sent = Some(sent);
        self.drop_trailers = true;
        if self.inner.is_end_stream() {
            self.finished();
        }
        self
    }

    fn finished(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }

    /// Polls the idle timer, arming it (from now) when this is the first wait or a
    /// frame arrived since it was armed.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let progressed = std::mem::take(&mut self.progressed);
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if progressed {
                    sleep.as_mut().reset(Instant::now() + self.idle);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(self.idle))),
        };
        sleep.as_mut().poll(cx)
    }
}

impl<B> Drop for IdleTimeout<B> {
    /// A body hyper never polls (empty) or drops early also counts as sent.
    fn drop(&mut self) {
        self.finished();
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
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.progressed = true;
                    if this.drop_trailers && frame.is_trailers() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finished();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.finished();
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    return match this.poll_idle(cx) {
                        Poll::Ready(()) => {
                            this.finished();
                            Poll::Ready(Some(Err(Box::new(IdleTimeoutError))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
