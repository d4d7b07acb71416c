//! The edges: the gateway's routes, cookies, pages and the mapping of errors to HTTP.

pub mod cookies;
pub mod error;
pub mod pages;
pub mod request;
pub mod routes;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;

use crate::gateway::Gateway;
use routes::Routes;

/// Headers on every answer of the gateway itself.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The gateway's own URLs carry codes and states: never send them as a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

/// The gateway's router: its endpoints under the configured prefix, plus health.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let prefix = gateway.config().prefix.clone();
    let routes = Routes::new(gateway);
    Router::new()
        .route(&format!("{prefix}/login"), get(routes::login))
        .route(&format!("{prefix}/callback"), get(routes::callback))
        .route(&format!("{prefix}/session"), get(routes::session))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .fallback(routes::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(routes)
}
