//! WebSocket pass-through: the upgrade checked (W03), the two upgraded connections
//! joined in a tunnel that ends with its session, when idle, or at shutdown (`Tunnels`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::{MAX_TUNNELS, Upstream};
use crate::http::error::HttpError;
use crate::http::headers;
use crate::session::SessionEnd;

impl Upstream {
    /// The upstream switched protocols: checks that it was asked to and that it answered
    /// the client's key (W03), then joins the two upgraded connections in a tunnel.
    pub(super) fn open_tunnel(
        &self,
        mut resp: Response<hyper::body::Incoming>,
        upgrade: Upgrade,
    ) -> Response {
        let Upgrade {
            client: client_upgrade,
            expected_accept,
            session_ends,
            session_end,
        } = upgrade;
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
            || accepted.map(HeaderValue::as_bytes) != expected_accept.as_ref().map(String::as_bytes)
        {
            tracing::warn!("the upstream switched protocols without a valid Sec-WebSocket-Accept");
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
        Response::from_parts(parts, Body::empty())
    }
}

pub(super) const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2):
/// base64(SHA-1(key + the protocol's GUID)).
pub(super) fn websocket_accept(key: &HeaderValue) -> String {
    use base64::Engine as _;
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A WebSocket handshake (RFC 6455 §4.1): `Connection: upgrade`, `Upgrade: websocket`.
/// Other upgrades (`h2c`, …) are not passed on.
pub(super) fn wants_websocket(h: &HeaderMap) -> bool {
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
    pub(super) fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
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

/// What a WebSocket upgrade needs from the request, kept while the upstream answers.
pub(super) struct Upgrade {
    pub(super) client: Option<hyper::upgrade::OnUpgrade>,
    /// W03: the `Sec-WebSocket-Accept` a genuine WebSocket server gives to this key.
    pub(super) expected_accept: Option<String>,
    /// A tunnel lives no longer than the session that opened it.
    pub(super) session_ends: i64,
    pub(super) session_end: Option<SessionEnd>,
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
