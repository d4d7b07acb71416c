//! `GET /metrics` on `metrics.listen`, its own listener (never the public one), in the
//! Prometheus text format rendered by `metrics-exporter-prometheus`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use portcullis::Gateway;

/// How often recorded histogram samples are folded into their buckets between scrapes
/// (bounds the memory they hold).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// Scrapers connected at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 16;

/// Installs the process's Prometheus recorder (histograms with the product's buckets).
/// Must run before the gateway is built: it resolves its series against the recorder.
pub fn install() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&portcullis::metrics::BUCKETS)
        .map_err(|e| format!("metrics: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| "metrics: a recorder is already installed".to_owned())?;
    Ok(handle)
}

/// Binds `listen` and serves `/metrics` there until the process ends.
pub async fn start(
    listen: SocketAddr,
    handle: PrometheusHandle,
    gateway: Arc<Gateway>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, gateway) = (handle.clone(), gateway.clone());
            async move {
                gateway.sessions().observe();
                (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    );
    tracing::info!(%listen, "metrics at /metrics");
    // The gateway's own server: header and keep-alive timeouts, bounded connections.
    let options = portcullis::http::serve::ServeOptions {
        max_connections: MAX_CONNECTIONS,
        connections_per_peer: MAX_CONNECTIONS,
        ..Default::default()
    };
    tokio::spawn(async move {
        let stop = std::future::pending();
        if let Err(e) = portcullis::http::serve::serve(listener, app, options, stop).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}
