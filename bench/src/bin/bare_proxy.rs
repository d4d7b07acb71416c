//! `bare-proxy --listen ADDR --upstream http://HOST:PORT [--shape multi|per-core]`: the
//! benchmark's reference, a minimal hyper 1.x reverse proxy with no authentication.
//! Two shapes: `multi` (one multi-threaded tokio runtime, the usual way) and `per-core`
//! (one single-threaded runtime per core, each with its own upstream pool, the accepting
//! thread handing connections out in turn — how `portcullis serve` runs); `bench/run.sh`
//! measures both and compares the gateway with the faster. It does what any reverse
//! proxy must (hop-by-hop headers removed, RFC 9110 §7.6.1; bodies streamed both ways;
//! pooled upstream connections) and nothing else, so that the gap between it and the
//! gateway's public path is the gateway's own proxy cost.

use std::net::SocketAddr;
use std::process::ExitCode;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_bench::args::Args;
use portcullis_bench::body::ReplyBody;
use tokio::net::TcpListener;

type UpstreamClient = Client<HttpConnector, Incoming>;

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn main() -> ExitCode {
    portcullis_bench::exit_with(run())
}

fn run() -> Result<(), String> {
    let args = Args::from_env("bare-proxy", &["listen", "upstream", "shape"])?;
    let listen: SocketAddr = args.required("listen")?;
    let upstream: Uri = args.required("upstream")?;
    let authority = match (upstream.scheme_str(), upstream.authority()) {
        (Some("http"), Some(a)) => a.clone(),
        _ => return Err("bare-proxy: `--upstream` must be http://HOST:PORT".into()),
    };
    match args.optional::<String>("shape")?.as_deref() {
        None | Some("multi") => {
            let runtime = tokio::runtime::Builder::new_multi_thread();
            portcullis_bench::block_on("bare-proxy", runtime, serve(listen, authority))
        }
        Some("per-core") => serve_per_core(listen, authority),
        Some(other) => Err(format!("bare-proxy: `--shape {other}`: multi or per-core")),
    }
}

/// One single-threaded runtime per core; this thread accepts and deals connections out
/// in turn, and a connection stays on its thread with that thread's upstream pool.
fn serve_per_core(listen: SocketAddr, upstream: hyper::http::uri::Authority) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("bare-proxy: cannot listen on {listen}: {e}"))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut workers = Vec::new();
    for _ in 0..threads {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let upstream = upstream.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("bare-proxy: cannot start a runtime: {e}"))?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let client = upstream_client();
                while let Some(stream) = rx.recv().await {
                    let _ = stream.set_nonblocking(true);
                    let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                        continue;
                    };
                    // On this thread's runtime, which runs nothing else.
                    tokio::spawn(connection(stream, client.clone(), upstream.clone()));
                }
            });
        });
        workers.push(tx);
    }
    eprintln!(
        "bare-proxy: listening on {listen} ({threads} single-threaded runtimes), forwarding to http://{upstream}"
    );
    let mut next = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let _ = workers[next % workers.len()].send(stream);
                next += 1;
            }
            Err(e) => {
                eprintln!("bare-proxy: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One client connection, kept alive.
async fn connection(
    stream: tokio::net::TcpStream,
    client: UpstreamClient,
    upstream: hyper::http::uri::Authority,
) {
    let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
    // A client that goes away mid-request is not an error worth reporting.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn serve(listen: SocketAddr, upstream: hyper::http::uri::Authority) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bare-proxy: cannot listen on {listen}: {e}"))?;
    let client = upstream_client();
    eprintln!("bare-proxy: listening on {listen}, forwarding to http://{upstream}");
    portcullis_bench::serve::accept_loop("bare-proxy", listener, |stream| {
        connection(stream, client.clone(), upstream.clone())
    })
    .await;
    Ok(())
}

/// Sends the request on to the upstream and streams its answer back; 502 when the
/// upstream cannot be reached.
async fn forward(
    client: UpstreamClient,
    upstream: hyper::http::uri::Authority,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, std::convert::Infallible> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    let target = Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(path)
        .build();
    let Ok(target) = target else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    parts.uri = target;
    strip_hop_by_hop(&mut parts.headers);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, ReplyBody::Upstream(body)))
        }
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

/// Removes the hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn status(code: StatusCode) -> Response<ReplyBody> {
    let mut response = Response::new(ReplyBody::empty());
    *response.status_mut() = code;
    response
}
