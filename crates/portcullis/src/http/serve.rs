//! Serving the gateway: HTTP/1.1 on hyper with the protections `axum::serve` leaves
//! out — a deadline for request headers (slow-loris), a cap on open connections — and
//! graceful shutdown that lets requests in flight finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::Service;

use super::guard::Cidr;
use super::limits::ClientKey;

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time a connection may wait for a request's headers to arrive in full, counted
    /// from when it opened or its previous answer was sent: hyper runs one timer for
    /// both, so this is the idle keep-alive timeout and the slow-header (slow-loris)
    /// deadline at once (`limits.keepalive_timeout`).
    pub keepalive_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold at once; more are closed
    /// as they arrive (D02), so that one client cannot take every place.
    pub connections_per_peer: usize,
    /// Peers exempt from `connections_per_peer`: the trusted proxies, behind which
    /// every client shares one address.
    pub trusted_peers: Arc<[Cidr]>,
    /// Time given at shutdown to requests in flight and open WebSockets; then the
    /// WebSockets still open are closed.
    pub shutdown_grace: Duration,
    /// The app's WebSockets ([`crate::http::App::tunnels`]), waited for at shutdown.
    pub tunnels: Option<crate::http::proxy::Tunnels>,
}

/// How long a shutdown waits for requests in flight and open WebSockets: under the
/// 30 s most supervisors (Kubernetes, systemd) give before they kill.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            keepalive_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            connections_per_peer: 256,
            trusted_peers: Arc::from(Vec::new()),
            shutdown_grace: SHUTDOWN_GRACE,
            tunnels: None,
        }
    }
}

impl ServeOptions {
    /// The limits `[limits]` and `proxy.trusted_proxies` configure.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_connections: config.limits.max_connections,
            connections_per_peer: config.limits.connections_per_peer,
            keepalive_timeout: config.limits.keepalive_timeout,
            trusted_peers: config.trusted_proxies.clone().into(),
            ..Self::default()
        }
    }
}

/// How many connections each client address holds.
#[derive(Debug, Default)]
struct PeerCounts(std::sync::Mutex<std::collections::HashMap<ClientKey, usize>>);

/// A connection's place under its peer's cap; given back when dropped.
struct PeerSlot {
    counts: Arc<PeerCounts>,
    key: ClientKey,
}

impl PeerCounts {
    /// A place for one more connection from `ip`, or `None` when it holds its share
    /// (`Some(None)`: exempt).
    fn take(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        options: &ServeOptions,
    ) -> Option<Option<PeerSlot>> {
        let ip = ip.to_canonical();
        if options.trusted_peers.iter().any(|c| c.contains(ip)) {
            return Some(None);
        }
        let key = ClientKey::of(ip);
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_default();
        if *count >= options.connections_per_peer {
            return None;
        }
        *count += 1;
        Some(Some(PeerSlot {
            counts: self.clone(),
            key,
        }))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains. Connections run
/// on the calling runtime.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let keepalive_timeout = options.keepalive_timeout;
    let accepted = accept_until(&listener, &permits, &options, shutdown, |connection| {
        tokio::spawn(connection.run(app.clone(), stop_rx.clone(), keepalive_timeout));
    })
    .await;
    drop(listener);
    drain(stop_tx, &permits, &options).await;
    accepted
}

/// [`serve`] on `threads` threads, each with its own single-threaded runtime and its own
/// `make_app()`: the calling runtime accepts and hands connections out in turn, and a
/// connection stays on its thread, with the upstream connections it opens. No request
/// crosses threads on the way (tokio's multi-threaded scheduler moves tasks between
/// cores and wakes across them: measured in `docs/BENCHMARKS.md`, a quarter of the
/// proxy path's CPU on two cores).
pub async fn serve_on_threads<S, F>(
    listener: TcpListener,
    threads: usize,
    make_app: F,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn() -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let make_app = Arc::new(make_app);
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Set once every connection on every thread is done (or the grace time is over).
    // Until then each thread keeps its runtime: connections to the store, the provider
    // and the upstream opened on one thread, and tasks spawned there (a refresh whose
    // client left), may be in use by another thread's requests.
    let (drained_tx, drained_rx) = watch::channel(false);
    let mut workers = Vec::new();
    let mut handles = Vec::new();
    for n in 0..threads.max(1) {
        let (handle, tx) = spawn_worker(
            n,
            make_app.clone(),
            stop_rx.clone(),
            drained_rx.clone(),
            &options,
        )?;
        handles.push(handle);
        workers.push(tx);
    }
    let mut next = 0;
    let accepted = accept_until(&listener, &permits, &options, shutdown, |connection| {
        // A stream registered with this runtime is handed over unregistered.
        let Accepted {
            stream,
            peer,
            permit,
            slot,
        } = connection;
        match stream.into_std() {
            Ok(stream) => {
                let worker = &workers[next % workers.len()];
                next = next.wrapping_add(1);
                if worker
                    .send(Accepted {
                        stream,
                        peer,
                        permit,
                        slot,
                    })
                    .is_err()
                {
                    tracing::warn!("a serving thread is gone; connection dropped");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand over a connection"),
        }
    })
    .await;
    drop(listener);
    drop(workers);
    drain(stop_tx, &permits, &options).await;
    let _ = drained_tx.send(true);
    // The threads end promptly now (each waits at most the grace time in all).
    let _ = tokio::task::spawn_blocking(move || {
        for handle in handles {
            let _ = handle.join();
        }
    })
    .await;
    accepted
}

/// Starts serving thread `n`: a single-threaded runtime that serves the connections it
/// is handed until the sender is dropped, then lets them finish within the grace time
/// (and keeps its runtime until every thread's connections are done: `drained_rx`).
fn spawn_worker<S, F>(
    n: usize,
    make_app: Arc<F>,
    stop_rx: watch::Receiver<bool>,
    mut drained_rx: watch::Receiver<bool>,
    options: &ServeOptions,
) -> std::io::Result<(
    std::thread::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedSender<Accepted<std::net::TcpStream>>,
)>
where
    F: Fn() -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Accepted<std::net::TcpStream>>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (keepalive_timeout, shutdown_grace) = (options.keepalive_timeout, options.shutdown_grace);
    let handle = std::thread::Builder::new()
        .name(format!("portcullis-http-{n}"))
        .spawn(move || {
            crate::threads::mark_serving_thread();
            runtime.block_on(async move {
                let app = make_app();
                let mut connections = tokio::task::JoinSet::new();
                while let Some(accepted) = rx.recv().await {
                    while connections.try_join_next().is_some() {}
                    match TcpStream::from_std(accepted.stream) {
                        Ok(stream) => {
                            let connection = Accepted {
                                stream,
                                peer: accepted.peer,
                                permit: accepted.permit,
                                slot: accepted.slot,
                            };
                            connections.spawn(connection.run(
                                app.clone(),
                                stop_rx.clone(),
                                keepalive_timeout,
                            ));
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot take over a connection"),
                    }
                }
                // Accepting stopped; `drain` tells the connections to finish and
                // says when all threads' connections are done.
                let _ = tokio::time::timeout(shutdown_grace, async {
                    while connections.join_next().await.is_some() {}
                    let _ = drained_rx.wait_for(|drained| *drained).await;
                })
                .await;
            });
        })?;

    Ok((handle, tx))
}

/// One accepted connection and its places under the connection caps.
struct Accepted<T> {
    stream: T,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    slot: Option<PeerSlot>,
}

/// Accepts connections (each once a place under the cap is free, so that excess
/// clients queue in the backlog) until `shutdown` completes.
async fn accept_until(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    options: &ServeOptions,
    shutdown: impl Future<Output = ()>,
    mut handle: impl FnMut(Accepted<TcpStream>),
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let peers = Arc::new(PeerCounts::default());
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
            () = &mut shutdown => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let Some(slot) = peers.take(peer.ip(), options) else {
            // D02: this address holds its share; the connection is closed at once.
            tracing::debug!("a client address is over its connection share; connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        handle(Accepted {
            stream,
            peer,
            permit,
            slot,
        });
    }
}

/// Tells every connection to finish its request in flight, then waits until all have
/// closed (each holds a permit) or the grace time is over.
async fn drain(stop_tx: watch::Sender<bool>, permits: &Semaphore, options: &ServeOptions) {
    let deadline = tokio::time::Instant::now() + options.shutdown_grace;
    let _ = stop_tx.send(true);
    let all = u32::try_from(options.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout_at(deadline, permits.acquire_many(all)).await;
    // WebSockets go on until they close or the deadline, when they are cut (the app
    // and its clients see the connection close and reconnect to another instance).
    if let Some(tunnels) = &options.tunnels {
        let open = tunnels.open();
        if open > 0 {
            tracing::info!(open, "waiting for open WebSockets to close before stopping");
            if tokio::time::timeout_at(deadline, tunnels.all_closed())
                .await
                .is_err()
            {
                tracing::warn!(
                    open = tunnels.open(),
                    "shutdown deadline reached: closing the WebSockets still open"
                );
                tunnels.close_all();
            }
        }
    }
}

impl Accepted<TcpStream> {
    /// Serves the connection until it closes, or until `stop` asks it to finish the
    /// request in flight.
    async fn run<S>(self, app: S, mut stop: watch::Receiver<bool>, keepalive_timeout: Duration)
    where
        S: Service<Request<Incoming>, Response = Response, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let _permit = self.permit;
        let _slot = self.slot;
        let service = TowerToHyperService::new(WithPeer {
            inner: app,
            peer: self.peer,
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(keepalive_timeout)
            .keep_alive(true);
        let conn = builder
            .serve_connection(TokioIo::new(self.stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    }
}

/// A connection's service: every request carries the peer's address
/// (`ConnectInfo<SocketAddr>`, as `axum::serve` would set it).
#[derive(Debug, Clone)]
struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S> Service<Request<Incoming>> for WithPeer<S>
where
    S: Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(self.peer));
        self.inner.call(req)
    }
}

// `Router` and `App` are `Service<Request<Incoming>>`s whose error is `Infallible`.
const _: fn() = || {
    fn assert_service<S: tower::Service<Request<Incoming>, Error = Infallible>>() {}
    assert_service::<Router>();
    assert_service::<super::App>();
};

#[cfg(test)]
mod tests;
