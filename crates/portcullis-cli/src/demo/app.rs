//! The demo's sample app: one page that shows who is signed in (from `/auth/session`
//! in the browser, and from the `X-User-*` headers the app received), an API route, and
//! a sign-out button. It trusts the identity headers because only the gateway can reach
//! it (it listens on loopback behind the gateway).

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use portcullis::http::pages::escape;
use serde_json::json;

const PAGE: &str = include_str!("app.html");
const SIGNED_OUT: &str = include_str!("signed_out.html");
const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

/// Links the pages need: each provider's name and its sign-out page.
#[derive(Clone)]
pub struct Links {
    pub idp_logouts: Vec<(String, String)>,
}

/// Percent-decoding of an `X-User-*` value (non-ASCII arrives percent-encoded).
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let raw = headers.get(name)?.to_str().ok()?;
    let bytes: Vec<u8> =
        url::form_urlencoded::parse(format!("v={}", raw.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned().into_bytes())?;
    String::from_utf8(bytes).ok()
}

async fn home(headers: HeaderMap) -> Html<String> {
    let name = header_text(&headers, "x-user-name")
        .or_else(|| header_text(&headers, "x-user-email"))
        .unwrap_or_else(|| "stranger".into());
    let received: Vec<String> = [
        "x-user-id",
        "x-user-email",
        "x-user-name",
        "x-user-provider",
    ]
    .iter()
    .map(|h| {
        format!(
            "{h}: {}",
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
        )
    })
    .collect();
    Html(
        PAGE.replace("{{NAME}}", &escape(&name))
            .replace("{{HEADERS}}", &escape(&received.join("\n"))),
    )
}

async fn hello(headers: HeaderMap) -> Response {
    let name = header_text(&headers, "x-user-name").unwrap_or_default();
    axum::Json(json!({
        "message": format!("Hello, {name}! This answer came from the app, through the gateway."),
        "user_id": header_text(&headers, "x-user-id"),
        "email": header_text(&headers, "x-user-email"),
    }))
    .into_response()
}

/// `GET /api/orders`: what a machine client (or a signed-in browser) calls; says who
/// the gateway let through, and how.
async fn orders(headers: HeaderMap) -> Response {
    axum::Json(json!({
        "orders": [{"id": 1, "item": "portcullis", "quantity": 1}],
        "caller": {
            "user_id": header_text(&headers, "x-user-id"),
            "auth_method": header_text(&headers, "x-user-auth-method"),
            "provider": header_text(&headers, "x-user-provider"),
            "email": header_text(&headers, "x-user-email"),
        },
    }))
    .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn router(links: Links) -> Router {
    let buttons: String = links
        .idp_logouts
        .iter()
        .map(|(name, url)| {
            format!(
                "\n       <a class=\"button secondary\" href=\"{}\">Sign out of {} too</a>",
                escape(url),
                escape(name)
            )
        })
        .collect();
    let signed_out = SIGNED_OUT.replace("{{IDP_LOGOUTS}}", &buttons);
    Router::new()
        .route("/", get(home))
        .route("/api/hello", post(hello))
        .route("/api/orders", get(orders))
        .route(
            "/signed-out",
            get(move || async move { Html(signed_out.clone()) }),
        )
        .route(
            "/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
}
