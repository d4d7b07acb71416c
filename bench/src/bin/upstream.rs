//! `upstream --listen ADDR`: the application behind every proxy in the benchmark. It
//! answers `200` with the same small body to every request, so that what is measured
//! is the proxies, not the app.

use std::net::SocketAddr;
use std::process::ExitCode;

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis_bench::args::Args;
use portcullis_bench::body::ReplyBody;
use tokio::net::TcpListener;

/// What every request gets.
const BODY: &[u8] = b"hello from upstream\n";

fn main() -> ExitCode {
    portcullis_bench::exit_with(run())
}

fn run() -> Result<(), String> {
    let args = Args::from_env("upstream", &["listen"])?;
    let listen: SocketAddr = args.required("listen")?;
    let runtime = tokio::runtime::Builder::new_multi_thread();
    portcullis_bench::block_on("upstream", runtime, serve(listen))
}

async fn serve(listen: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("upstream: cannot listen on {listen}: {e}"))?;
    eprintln!("upstream: listening on {listen}");
    portcullis_bench::serve::accept_loop("upstream", listener, |stream| async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service_fn(answer))
            .await;
    })
    .await;
    Ok(())
}

async fn answer(_req: Request<Incoming>) -> Result<Response<ReplyBody>, std::convert::Infallible> {
    let mut response = Response::new(ReplyBody::fixed(BODY));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}
