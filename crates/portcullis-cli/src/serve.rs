//! `portcullis serve`: the gateway with its log, metrics listener, reloads on SIGHUP,
//! the purge of expired records and a graceful stop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis::config::LogFormat;
use portcullis::{Config, Gateway};

use crate::{log_output, metrics_endpoint};

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("{0}")]
    Metrics(String),
    #[error("cannot listen for metrics: {0}")]
    MetricsListener(std::io::Error),
    #[error(transparent)]
    Start(#[from] portcullis::gateway::StartError),
    #[error("cannot handle SIGHUP: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Provider(portcullis::provider::ProviderError),
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    #[error(transparent)]
    Upstream(#[from] portcullis::http::proxy::UpstreamError),
    #[error("serving stopped: {0}")]
    Serve(std::io::Error),
}

/// The server's log: written in batches by a thread of its own (`log_output`).
pub(crate) fn init_logging(config: &Config) -> log_output::BatchedStderr {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let output = log_output::BatchedStderr::start();
    let json = config.log_format == LogFormat::Json;
    // Colours only on a terminal: escape sequences have no place in a log file.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(output.make_writer(json));
    // G06: text lines whose fields no request can forge (see `log_output`).
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.fmt_fields(log_output::SafeTextFields).init(),
    }
    output
}

pub(crate) async fn serve(config: Config, file: Option<PathBuf>) -> Result<(), ServeError> {
    let listen = config.listen;
    // Before the gateway: it registers its series with the recorder installed now.
    let metrics = match config.metrics_listen {
        Some(at) => Some((
            at,
            metrics_endpoint::install().map_err(ServeError::Metrics)?,
        )),
        None => None,
    };
    let gateway = Arc::new(Gateway::start(config).await?);
    if let Some((at, handle)) = metrics {
        metrics_endpoint::start(at, handle, gateway.clone())
            .await
            .map_err(ServeError::MetricsListener)?;
    }
    // Before the first log line, so that a SIGHUP sent once it appears is handled.
    spawn_reloader(gateway.clone(), file).map_err(ServeError::Signals)?;
    tracing::info!(
        %listen,
        public_url = %gateway.config().public_origin(),
        providers = gateway.config().providers.len(),
        store = %gateway.config().store.describe(),
        "portcullis starting"
    );
    for provider in gateway.providers().iter() {
        let (id, issuer) = (provider.id(), provider.issuer());
        match provider.metadata().await {
            Ok(_) => tracing::info!(provider = id, issuer, "provider metadata loaded"),
            // L10: a provider that names another issuer is a configuration error: refuse to start.
            Err(e @ portcullis::provider::ProviderError::IssuerMismatch { .. }) => {
                return Err(ServeError::Provider(e));
            }
            Err(e) => tracing::warn!(
                provider = id,
                issuer,
                error = %e,
                "provider not reachable yet; its sign-ins fail until it is (/readyz stays 503 while no provider is)"
            ),
        }
    }
    // Read (or, on an empty store, make) the assertion keys before serving: two
    // instances starting together agree on one, and jwks.json answers at once.
    if let Err(e) = gateway.sessions().prepare_assertion_keys().await {
        tracing::warn!(error = %e, "the assertion signing keys are not readable yet; tried again at the first request");
    }
    spawn_purger(gateway.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Listen(listen, e))?;
    let mut options = portcullis::http::serve::ServeOptions::from_config(gateway.config());
    let app = portcullis::http::router(gateway)?;
    options.tunnels = app.tunnels();
    let access_log = app.access_log_written();
    // One serving thread per core, each with its own single-threaded runtime: see
    // `serve_on_threads` and docs/BENCHMARKS.md.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    portcullis::http::serve::serve_on_threads(
        listener,
        threads,
        move || app.with_own_connections(),
        options,
        shutdown_signal(),
    )
    .await
    .map_err(ServeError::Serve)?;
    // Every serving thread and its copy of the app are gone: the access log thread
    // writes what is queued and ends.
    access_log.wait(Duration::from_secs(5)).await;
    tracing::info!("portcullis stopped");
    Ok(())
}

/// On SIGHUP: loads the configuration again (the file and `secret_file`; the
/// environment is the one the process started with) and applies the key ring, the
/// access rules and the routes. An invalid configuration changes nothing.
fn spawn_reloader(gateway: Arc<Gateway>, file: Option<PathBuf>) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        // Installed before serving: SIGHUP's default action would end the process.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                reload(&gateway, file.as_deref()).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (gateway, file);
    Ok(())
}

async fn reload(gateway: &Gateway, file: Option<&std::path::Path>) {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("reload refused, the running settings stay: {e}");
            return;
        }
    };
    match gateway.sessions().reload_settings(&config).await {
        Ok(report) => {
            tracing::info!(
                key_ring = report
                    .keys
                    .map_or("unchanged (no secret_file)".to_owned(), |n| format!(
                        "{n} keys"
                    )),
                "reloaded the key ring, the access rules and the routes"
            );
            if report.new_sealing_key {
                tracing::warn!(
                    "the key ring seals with a key the running one did not hold: an instance that has not reloaded yet cannot open what this one seals (with several instances, add a new key second everywhere first, then move it to the front)"
                );
            }
            if report.needs_restart {
                tracing::warn!(
                    "other settings differ from the running ones; they apply at the next restart"
                );
            }
        }
        Err(e) => tracing::error!("reload refused, the running settings stay: {e}"),
    }
}

/// Deletes expired records every few minutes.
fn spawn_purger(gateway: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        loop {
            tick.tick().await;
            match gateway.purge_expired().await {
                Ok(n) if n > 0 => tracing::debug!(purged = n, "expired records removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging expired records failed"),
            }
        }
    });
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
