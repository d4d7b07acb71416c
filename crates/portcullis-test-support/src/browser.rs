//! A minimal browser: keeps cookies per name (host-only, as the gateway sets them),
//! never follows redirects, and records every response for leak checks.

use std::collections::BTreeMap;
use std::sync::Mutex;

use reqwest::header::{COOKIE, HeaderMap, HeaderName, HeaderValue, SET_COOKIE};

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn location(&self) -> Option<String> {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    pub fn set_cookie_named(&self, name: &str) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Everything a browser (or its history) could see of this response.
    pub fn visible_text(&self) -> String {
        let mut s = format!("{}\n", self.status);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        s.push_str(&self.body);
        s
    }
}

pub struct Browser {
    client: reqwest::Client,
    pub cookies: Mutex<BTreeMap<String, String>>,
    pub history: Mutex<Vec<Resp>>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Mutex::new(BTreeMap::new()),
            history: Mutex::new(Vec::new()),
        }
    }

    /// A browser whose connections come from `ip` (another loopback address: another
    /// client, as far as per-address limits go).
    pub fn from_address(ip: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .local_address(ip.parse::<std::net::IpAddr>().unwrap())
                .build()
                .unwrap(),
            cookies: Mutex::new(BTreeMap::new()),
            history: Mutex::new(Vec::new()),
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().unwrap().get(name).cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.cookies
            .lock()
            .unwrap()
            .insert(name.into(), value.into());
    }

    fn cookie_header(&self) -> Option<String> {
        let jar = self.cookies.lock().unwrap();
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// A top-level navigation (what a user's click does).
    pub async fn navigate(&self, url: &str) -> Resp {
        self.request(
            reqwest::Method::GET,
            url,
            &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
            None,
        )
        .await
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(reqwest::Method::GET, url, headers, None).await
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(String, &str)>,
    ) -> Resp {
        let mut req = self.client.request(method, url);
        if let Some(c) = self.cookie_header() {
            req = req.header(COOKIE, c);
        }
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        if let Some((body, content_type)) = body {
            req = req.header("content-type", content_type).body(body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap_or_default();
        let resp = Resp {
            status,
            headers,
            body,
        };
        self.absorb(&resp);
        self.history.lock().unwrap().push(resp.clone());
        resp
    }

    fn absorb(&self, resp: &Resp) {
        let mut jar = self.cookies.lock().unwrap();
        for c in resp.set_cookies() {
            let first = c.split(';').next().unwrap_or("");
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            if c.contains("Max-Age=0") || value.is_empty() {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// Concatenation of everything this browser received.
    pub fn everything_seen(&self) -> String {
        self.history
            .lock()
            .unwrap()
            .iter()
            .map(Resp::visible_text)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Sends one request exactly as written (no client-side path normalisation) over a new
/// connection; returns the status and the body.
pub async fn raw_request(
    base: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Bodies may be chunked; callers only search them.
    (status, body)
}

/// Sends a WebSocket handshake for `path` to `base` with `cookie` (the session's
/// `name=value`) and `origin`, if any; the connection and the answer's head.
pub async fn websocket_handshake(
    base: &str,
    path: &str,
    key: &str,
    origin: Option<&str>,
    cookie: &str,
) -> (tokio::net::TcpStream, String) {
    use tokio::io::AsyncWriteExt;
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{origin}\
         Cookie: {cookie}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = crate::read_head(&mut tcp).await;
    (tcp, head)
}

/// The body of a sign-in form post: its hidden fields (CSRF tokens, carried
/// parameters) plus the credentials.
pub fn login_form_body(html: &str, username: &str, password: &str) -> String {
    let mut s = hidden_fields(html);
    s.append_pair("username", username)
        .append_pair("password", password);
    s.finish()
}

/// The `action` of the first form in `html`, unescaped.
pub fn form_action(html: &str) -> String {
    html.split("action=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&")
}

/// The hidden inputs of `html`, form-encoded so far.
pub fn hidden_fields(html: &str) -> url::form_urlencoded::Serializer<'static, String> {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for input in html.split("<input type=\"hidden\" ").skip(1) {
        let attr = |name: &str| {
            input
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .map(|v| {
                    v.replace("&quot;", "\"")
                        .replace("&#x27;", "'")
                        .replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&amp;", "&")
                })
        };
        if let (Some(n), Some(v)) = (attr("name"), attr("value")) {
            s.append_pair(&n, &v);
        }
    }
    s
}

/// Follows redirects from `start` through a real provider's login form (posting
/// `username`/`password`) until the browser is sent to a URL starting with `stop`;
/// returns that URL and the answer to it (a navigation to it).
pub async fn follow_sign_in(
    browser: &Browser,
    start: &str,
    username: &str,
    password: &str,
    stop: &str,
) -> (url::Url, Resp) {
    let mut url = url::Url::parse(start).unwrap();
    let mut resp = browser.navigate(url.as_str()).await;
    for _ in 0..20 {
        if url.as_str().starts_with(stop) {
            return (url, resp);
        }
        match resp.status {
            302 | 303 => {
                url = url.join(&resp.location().unwrap()).unwrap();
                resp = browser.navigate(url.as_str()).await;
            }
            200 if resp.body.contains("name=\"password\"") => {
                url = url.join(&form_action(&resp.body)).unwrap();
                let body = login_form_body(&resp.body, username, password);
                resp = browser
                    .request(
                        reqwest::Method::POST,
                        url.as_str(),
                        &[("accept", "text/html")],
                        Some((body, "application/x-www-form-urlencoded")),
                    )
                    .await;
            }
            _ => panic!("unexpected answer at {url}: {} {}", resp.status, resp.body),
        }
    }
    panic!("too many redirects");
}

/// Sends a masked text frame "hi" through an open WebSocket and expects the app's echo
/// within five seconds.
pub async fn echo_hi(tcp: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"\x81\x02hi");
}
