//! Where the gateway listens, the origin browsers see, the path prefix of its own
//! endpoints and the paths it lets through without a session (top-level keys
//! `listen`, `public_url`, `prefix`, `public_paths`).

use std::net::{IpAddr, SocketAddr};

use url::Url;

/// `listen`, default `127.0.0.1:8080`. `None` (with an error) when it is not an address.
pub(super) fn listen(value: Option<String>, errors: &mut Vec<String>) -> Option<SocketAddr> {
    let listen_text = value.unwrap_or_else(|| "127.0.0.1:8080".into());
    match listen_text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(format!(
                "`listen`: `{listen_text}` is not an address:port like 127.0.0.1:8080"
            ));
            None
        }
    }
}

/// `metrics.listen`: where `/metrics` is served, off when unset; never the public
/// listener's address.
pub(super) fn metrics_listen(
    value: Option<String>,
    listen: SocketAddr,
    errors: &mut Vec<String>,
) -> Option<SocketAddr> {
    let text = value.filter(|v| !v.trim().is_empty())?;
    match text.trim().parse::<SocketAddr>() {
        Ok(a)
            if a.port() == listen.port()
                && (a.ip() == listen.ip()
                    || a.ip().is_unspecified()
                    || listen.ip().is_unspecified()) =>
        {
            errors.push(format!(
                "`metrics.listen`: {a} is the public listener; metrics need an address of their own (e.g. 127.0.0.1:9464)"
            ));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(format!(
                "`metrics.listen`: `{text}` is not an address:port like 127.0.0.1:9464"
            ));
            None
        }
    }
}

/// `public_url`: an origin. Unset, it is derived from `listen`, which must then be a
/// loopback address; it is never taken from `Host` or `X-Forwarded-*` headers.
pub(super) fn public_url(
    value: Option<String>,
    listen: SocketAddr,
    errors: &mut Vec<String>,
) -> Option<Url> {
    match value {
        Some(text) => match parse_public_url(&text) {
            Ok(u) => Some(u),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => {
            if !listen.ip().is_loopback() {
                errors.push(format!(
                    "`public_url` is required when listening on the non-loopback address {listen} (set PORTCULLIS_PUBLIC_URL to the origin browsers use)"
                ));
            }
            let host = match listen.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            Url::parse(&format!("http://{host}:{}", listen.port())).ok()
        }
    }
}

fn parse_public_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|_| format!("`public_url`: `{text}` is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("`public_url` must be http:// or https://".into());
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err("`public_url` must be an origin like https://app.example.com".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "`public_url` must be an origin with no path, query or fragment (mount paths with `prefix`)".into(),
        );
    }
    Ok(url)
}

/// `prefix`, default `/auth`: where the gateway's own endpoints live.
pub(super) fn prefix(value: Option<String>, errors: &mut Vec<String>) -> String {
    let prefix = value.unwrap_or_else(|| "/auth".into());
    if !is_valid_prefix(&prefix) {
        errors.push(format!(
            "`prefix`: `{prefix}` must start with `/`, not end with `/`, and use only letters, digits, `-`, `_`, `.` and `/`"
        ));
    }
    prefix
}

fn is_valid_prefix(p: &str) -> bool {
    p.len() > 1
        && p.starts_with('/')
        && !p.ends_with('/')
        && !p.contains("//")
        && !p.split('/').any(|seg| seg == "." || seg == "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
}

/// `public_paths`: path patterns that pass without a session.
pub(super) fn public_paths(
    value: Option<Vec<String>>,
    errors: &mut Vec<String>,
) -> Vec<(String, crate::path::PathPattern)> {
    let mut parsed = Vec::new();
    for p in value.unwrap_or_default() {
        match crate::path::PathPattern::parse(&p) {
            Some(pattern) => parsed.push((p, pattern)),
            None => errors.push(format!(
                "`public_paths`: `{p}` must be a normalised path (`/health`) or a prefix ending in `/*` (`/static/*`)"
            )),
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::test_support::{env, minimal};

    #[test]
    fn public_url_must_be_an_origin() {
        for bad in [
            "ftp://x",
            "https://u:p@x.com",
            "https://x.com/app",
            "https://x.com/?a",
        ] {
            let mut e = minimal();
            e.push(("PORTCULLIS_PUBLIC_URL".into(), bad.into()));
            assert!(Config::load_from(None, e).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_never_share_the_public_listener() {
        let mut e = minimal();
        e.extend(env(&[("PORTCULLIS_METRICS_LISTEN", "127.0.0.1:9464")]));
        let c = Config::load_from(None, e).unwrap();
        assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9464");
        assert!(
            Config::load_from(None, minimal())
                .unwrap()
                .metrics_listen
                .is_none()
        );
        for bad in ["127.0.0.1:8080", "0.0.0.0:8080", "localhost"] {
            let mut e = minimal();
            e.extend(env(&[("PORTCULLIS_METRICS_LISTEN", bad)]));
            let errors = Config::load_from(None, e).unwrap_err().0;
            assert!(
                errors.iter().any(|e| e.contains("`metrics.listen`")),
                "{bad}: {errors:?}"
            );
        }
    }
}
