//! `bare-proxy --listen ADDR --upstream http://HOST:PORT`: the benchmark's reference, a
//! minimal hyper 1.x reverse proxy with no authentication. It does what any reverse
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
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = Args::from_env("bare-proxy", &["listen", "upstream"])?;
    let listen: SocketAddr = args.required("listen")?;
    let upstream: Uri = args.required("upstream")?;
    let authority = match (upstream.scheme_str(), upstream.authority()) {
        (Some("http"), Some(a)) => a.clone(),
        _ => return Err("bare-proxy: `--upstream` must be http://HOST:PORT".into()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("bare-proxy: cannot start the runtime: {e}"))?;
    runtime.block_on(serve(listen, authority))
}

async fn serve(listen: SocketAddr, upstream: hyper::http::uri::Authority) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bare-proxy: cannot listen on {listen}: {e}"))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: UpstreamClient = Client::builder(TokioExecutor::new()).build(connector);
    eprintln!("bare-proxy: listening on {listen}, forwarding to http://{upstream}");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("bare-proxy: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
            // A client that goes away mid-request is not an error worth reporting.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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
