//! A small axum app protected by Portcullis embedded as a tower layer: the app's own
//! routes sit behind `GuardLayer`, handlers read the signed-in user through the
//! `CurrentUser` extractor, and the gateway's `/auth/*` routes are merged in beside.
//!
//! ```sh
//! PORTCULLIS_ISSUER=https://id.example.com PORTCULLIS_CLIENT_ID=my-app \
//!   cargo run -p portcullis --example axum_app
//! ```
//! Then open http://127.0.0.1:8080/ and sign in.

use std::sync::Arc;

use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use portcullis::http::guard::{CurrentUser, GuardLayer};
use serde_json::{Value, json};

async fn home(user: CurrentUser) -> Html<String> {
    let name = portcullis::http::pages::escape(user.name.as_deref().unwrap_or("there"));
    Html(format!(
        "<!doctype html><title>Hello</title><h1>Hello, {name}</h1>\
         <form method=post action=/auth/logout><button>Sign out</button></form>"
    ))
}

async fn me(user: CurrentUser) -> Json<Value> {
    Json(json!({ "id": user.id.to_string(), "email": user.email, "name": user.name }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let config = portcullis::Config::load(None)?;
    let listen = config.listen;
    let gateway = Arc::new(portcullis::Gateway::start(config).await?);
    let app = Router::new()
        .route("/", get(home))
        .route("/api/me", get(me))
        // Everything above needs a session; the gateway's own routes below do not.
        .layer(GuardLayer::new(gateway.clone()))
        .merge(portcullis::http::auth_routes(gateway));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{listen}");
    // Header deadlines, a connection cap and connection info for trusted proxies.
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    portcullis::http::serve::serve(listener, app, Default::default(), shutdown).await?;
    Ok(())
}
