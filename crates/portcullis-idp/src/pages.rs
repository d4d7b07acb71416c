//! The provider's HTML: the sign-in form, the sign-out confirmation and error pages.
//! Everything interpolated is escaped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis::http::pages::escape;

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#eef1f6;color:#1d2330;display:flex;\
min-height:100vh;align-items:center;justify-content:center;margin:0}\
main{background:#fff;border-radius:12px;box-shadow:0 2px 16px #0002;padding:2rem 2.5rem;width:20rem}\
h1{font-size:1.25rem;margin:0 0 1rem}label{display:block;margin:.6rem 0 .2rem;font-size:.9rem}\
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #bbc;border-radius:6px}\
button{margin-top:1rem;width:100%;padding:.6rem;border:0;border-radius:6px;background:#2454c5;color:#fff;font-size:1rem}\
.error{color:#b00020}.hint{color:#667;font-size:.8rem;margin-top:1rem}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title>\
<style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        escape(title)
    );
    let mut r = (status, html).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The sign-in form. `hidden` are the authorization parameters carried through.
pub fn login_form(
    status: StatusCode,
    client: &str,
    hidden: &[(&str, &str)],
    csrf: &str,
    error: Option<&str>,
) -> Response {
    let fields = hidden_fields(hidden);
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1><p>to continue to <b>{}</b></p>{error}\
<form method=\"post\" action=\"/authorize\">{fields}\
<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" autofocus required>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form>\
<p class=\"hint\">portcullis idp — a development identity provider</p>",
        escape(client),
        escape(csrf)
    );
    page(status, "Sign in", &body)
}

/// `hidden` as hidden form fields, escaped.
fn hidden_fields(hidden: &[(&str, &str)]) -> String {
    hidden
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(k),
                escape(v)
            )
        })
        .collect()
}

/// An error shown to the user instead of a redirect (unknown client, bad redirect URI).
pub fn error_page(status: StatusCode, code: &str, message: &str) -> Response {
    page(
        status,
        "Sign-in error",
        &format!(
            "<h1>Sign-in error</h1><p>{}</p><p class=\"hint\">error: {}</p>",
            escape(message),
            escape(code)
        ),
    )
}

/// Asks before signing out when the request did not prove where it came from.
pub fn confirm_logout(hidden: &[(&str, &str)], csrf: &str) -> Response {
    let fields = hidden_fields(hidden);
    page(
        StatusCode::OK,
        "Sign out",
        &format!(
            "<h1>Sign out?</h1><form method=\"post\" action=\"/end_session\">{fields}\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
            escape(csrf)
        ),
    )
}

pub fn signed_out() -> Response {
    page(
        StatusCode::OK,
        "Signed out",
        "<h1>Signed out</h1><p>You are signed out of the identity provider.</p>",
    )
}
