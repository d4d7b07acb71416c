//! A test upstream application: echoes what it received, streams large bodies both
//! ways without holding them, answers WebSocket handshakes with a one-frame echo, and
//! counts every request so tests can prove the gateway never called it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine as _;
use http_body::{Body as HttpBody, Frame};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Default)]
pub struct TestUpstream {
    pub url: String,
    pub calls: Arc<AtomicUsize>,
}

impl TestUpstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/upload", post(upload))
            .route("/download", get(download))
            .route("/ws", get(websocket))
            .route("/ws-forged", get(forged_websocket))
            .route("/set-cookies", get(set_cookies))
            .route("/cors", any(cors))
            .fallback(echo)
            .with_state(upstream.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        upstream
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// `{method, uri, headers: [[name, value], …]}` of the request as received.
/// `?answer_dpop_nonce=N` answers with `DPoP-Nonce: N`, as a resource server that
/// wants its own nonce in the next proof (RFC 9449 §9).
async fn echo(State(u): State<TestUpstream>, req: Request) -> Response {
    u.calls.fetch_add(1, Ordering::SeqCst);
    let nonce = req
        .uri()
        .query()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "answer_dpop_nonce")
        })
        .map(|(_, v)| v.into_owned());
    let mut r = axum::Json(received(&req)).into_response();
    if let Some(nonce) = nonce.and_then(|n| n.parse().ok()) {
        r.headers_mut().insert("dpop-nonce", nonce);
    }
    r
}

/// What an app received: `{method, uri, headers: [[name, value], …]}`.
pub fn received(req: &Request) -> Value {
    let headers: Vec<Value> = req
        .headers()
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers,
    })
}

/// Counts the bytes of a streamed upload without keeping them.
async fn upload(State(u): State<TestUpstream>, req: Request) -> Response {
    u.calls.fetch_add(1, Ordering::SeqCst);
    let mut body = req.into_body();
    let mut total: u64 = 0;
    let mut trailers: Vec<String> = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        match frame {
            Ok(f) => {
                total += f.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(t) = f.trailers_ref() {
                    trailers.extend(t.keys().map(|k| k.as_str().to_owned()));
                }
            }
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    axum::Json(json!({ "bytes": total, "trailers": trailers })).into_response()
}

/// A body of `remaining` bytes made 64 KiB at a time.
pub struct Generated {
    pub remaining: u64,
}

impl HttpBody for Generated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(64 * 1024);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n as usize])))))
    }
}

async fn download(State(u): State<TestUpstream>, req: Request) -> Response {
    u.calls.fetch_add(1, Ordering::SeqCst);
    let bytes: u64 = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("bytes="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Response::new(Body::new(Generated { remaining: bytes }))
}

/// Reflects the Origin with credentials allowed: what a careless app might do.
async fn cors(State(u): State<TestUpstream>, headers: HeaderMap) -> Response {
    u.calls.fetch_add(1, Ordering::SeqCst);
    let origin = headers
        .get("origin")
        .cloned()
        .unwrap_or(axum::http::HeaderValue::from_static("*"));
    let mut r = axum::Json(json!({"ok": true})).into_response();
    r.headers_mut()
        .insert("access-control-allow-origin", origin);
    r.headers_mut().insert(
        "access-control-allow-credentials",
        axum::http::HeaderValue::from_static("true"),
    );
    r
}

/// RFC 6455 handshake, then echoes one client text frame as an unmasked server frame.
async fn websocket(State(u): State<TestUpstream>, mut req: Request) -> Response {
    u.calls.fetch_add(1, Ordering::SeqCst);
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        loop {
            let mut head = [0u8; 2];
            if io.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = (head[1] & 0x7f) as usize; // short frames only (test)
            let mut mask = [0u8; 4];
            let mut payload = vec![0u8; len];
            if io.read_exact(&mut mask).await.is_err() || io.read_exact(&mut payload).await.is_err()
            {
                return;
            }
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            let mut frame = vec![0x81, len as u8];
            frame.extend_from_slice(&payload);
            if io.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(Body::empty())
        .unwrap()
}

/// Tries to set the gateway's cookies, and one of its own (C01).
async fn set_cookies(State(u): State<TestUpstream>) -> Response {
    u.calls.fetch_add(1, Ordering::SeqCst);
    Response::builder()
        .header("set-cookie", "portcullis=planted; Path=/")
        .header("set-cookie", "__Host-Portcullis=planted; Path=/; Secure")
        .header("set-cookie", "portcullis_tx=planted; Path=/")
        .header("set-cookie", "app=1; Path=/")
        .body(Body::from("cookies"))
        .unwrap()
}

/// Switches protocols with an accept value for some other key (W03).
async fn forged_websocket(State(u): State<TestUpstream>) -> Response {
    u.calls.fetch_add(1, Ordering::SeqCst);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        .body(Body::empty())
        .unwrap()
}

/// The headers the echo endpoint saw, lower-cased names, in order.
pub fn echoed_headers(v: &Value) -> Vec<(String, String)> {
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn echoed(v: &Value, name: &str) -> Vec<String> {
    echoed_headers(v)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}
