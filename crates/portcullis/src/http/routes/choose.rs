//! Which provider a sign-in goes to (docs/providers/several.md): `?provider=ID`, else
//! the provider whose `email_domains` hold the `login_hint`'s domain, else
//! `default_provider`, else the only one; with several and no choice, the chooser — a
//! server-rendered page (no JavaScript), one link per provider and, when any provider
//! lists `email_domains`, an email field that routes by domain.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::Config;
use crate::http::pages::escape;
use crate::session::{ReturnTo, SessionError};

/// The provider id a sign-in goes to; `None`: show the chooser.
pub(super) fn provider(
    config: &Config,
    asked: Option<&str>,
    hint: Option<&str>,
) -> Result<Option<String>, SessionError> {
    if let Some(id) = asked {
        return match config.provider(id) {
            Some(p) => Ok(Some(p.id.clone())),
            None => Err(SessionError::UnknownProvider),
        };
    }
    if let Some(domain) = hint
        .and_then(|h| h.rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase())
        && let Some(p) = config
            .providers
            .iter()
            .find(|p| p.email_domains.contains(&domain))
    {
        return Ok(Some(p.id.clone()));
    }
    if let Some(id) = &config.default_provider {
        return Ok(Some(id.clone()));
    }
    Ok(match config.providers.as_slice() {
        [only] => Some(only.id.clone()),
        _ => None,
    })
}

/// The chooser page (200). `unmatched`: an address was typed whose domain no provider
/// lists, said on the page.
pub(super) fn chooser(config: &Config, return_to: &ReturnTo, unmatched: bool) -> Response {
    let login = format!("{}/login", config.prefix);
    let back = return_to.as_str();
    let links: String = config
        .providers
        .iter()
        .map(|p| {
            let href = format!(
                "{login}?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("provider", &p.id)
                    .append_pair("return_to", back)
                    .finish()
            );
            format!(
                "<li><a class=\"provider\" href=\"{}\">Continue with {}</a></li>",
                escape(&href),
                escape(&p.name)
            )
        })
        .collect();
    let by_email = config.providers.iter().any(|p| !p.email_domains.is_empty());
    let notice = if unmatched {
        "<p class=\"notice\" role=\"alert\">No sign-in is set up for that address's domain; choose where your account is.</p>"
    } else {
        ""
    };
    let form = if by_email {
        format!(
            "<form method=\"get\" action=\"{}\"><label for=\"login_hint\">Work email</label>\
<input type=\"email\" id=\"login_hint\" name=\"login_hint\" autocomplete=\"email\" required>\
<input type=\"hidden\" name=\"return_to\" value=\"{}\"><button type=\"submit\">Continue</button></form>\
<p class=\"or\">or</p>",
            escape(&login),
            escape(back)
        )
    } else {
        String::new()
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Sign in</title><style>\
body{{font-family:system-ui,sans-serif;background:#f6f7f9;color:#1d2330;display:flex;\
min-height:100vh;align-items:center;justify-content:center;margin:0}}\
main{{background:#fff;border-radius:12px;box-shadow:0 2px 12px #0001;padding:2rem 2.5rem;width:min(24rem,90vw)}}\
h1{{font-size:1.3rem;margin:0 0 1.2rem}}ul{{list-style:none;padding:0;margin:0}}li{{margin:.5rem 0}}\
a.provider,button{{display:block;box-sizing:border-box;width:100%;padding:.7rem 1rem;border:1px solid #c9ced8;\
border-radius:8px;background:#fff;color:#1d2330;font:inherit;text-align:center;text-decoration:none;cursor:pointer}}\
a.provider:hover,button:hover{{background:#eef1f6}}a.provider:focus-visible,button:focus-visible,input:focus-visible\
{{outline:3px solid #2454c5;outline-offset:2px}}label{{display:block;margin:0 0 .3rem;font-weight:600}}\
input{{box-sizing:border-box;width:100%;padding:.6rem .8rem;border:1px solid #8a93a6;border-radius:8px;font:inherit;margin:0 0 .6rem}}\
.or{{text-align:center;color:#555;margin:1rem 0 .5rem}}.notice{{color:#8a1c1c}}</style></head>\
<body><main aria-labelledby=\"title\"><h1 id=\"title\">Sign in</h1>{notice}{form}\
<nav aria-label=\"Identity providers\"><ul>{links}</ul></nav></main></body></html>\n"
    );
    let mut r = (StatusCode::OK, html).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}
