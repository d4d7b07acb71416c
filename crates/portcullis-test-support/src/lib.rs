//! Test support shared by the integration tests of every crate: signing keys, a
//! scriptable hostile OpenID provider, the real npm provider and the dev provider, a
//! gateway on a free loopback port, a cookie-keeping browser, upstreams and front
//! proxies. A crate of its own (a dev-dependency), so that no suite includes another's
//! files by path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod dev_provider;
pub mod front_proxy;
pub mod gateway;
pub mod hostile;
pub mod keys;
pub mod oidc_provider;
pub mod upstream;

pub use browser::Browser;
pub use gateway::TestGateway;
pub use hostile::HostileProvider;
pub use keys::TestKeys;
pub use upstream::TestUpstream;

/// G05's routing headers: none of them may reach an app from any peer.
pub const ROUTING_HEADERS: [&str; 10] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-method",
    "x-forwarded-uri",
    "x-forwarded-method",
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
];

/// Serves `app` on a free loopback port (with the peer's address, as the gateway's
/// own server records it) until the test ends; its base URL.
pub async fn serve_app(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    base
}

/// A free loopback port: bound, then released for the caller (a server that can bind
/// port 0 itself should).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves `app` with the gateway's own server (`http::serve::serve`, default options)
/// on `listener` until the test ends.
pub fn serve_in_background<S>(listener: tokio::net::TcpListener, app: S)
where
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    tokio::spawn(async move {
        let _ = portcullis::http::serve::serve(
            listener,
            app,
            Default::default(),
            std::future::pending(),
        )
        .await;
    });
}

/// Reads an HTTP/1.1 answer's head (status line and headers), byte by byte so that
/// nothing after it (an upgraded connection's first frame) is consumed.
pub async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// `doctor`'s finding `check` for a client `app` of `issuer` configured by `env` (an
/// in-memory store): its level and its line, `— fix: …` included.
pub async fn doctor_finding(issuer: &str, env: &[(&str, &str)], check: &str) -> (String, String) {
    let mut vars: Vec<(String, String)> = vec![
        ("PORTCULLIS_ISSUER".into(), issuer.into()),
        ("PORTCULLIS_CLIENT_ID".into(), "app".into()),
        ("PORTCULLIS_STORE".into(), "sqlite::memory:".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let config = portcullis::Config::load_from(None, vars).unwrap();
    let report = portcullis::doctor::run(&config).await;
    let f = report
        .findings
        .iter()
        .find(|f| f.check == check)
        .unwrap_or_else(|| panic!("no {check} finding"));
    let line = match &f.fix {
        Some(fix) => format!("{} — fix: {fix}", f.message),
        None => f.message.clone(),
    };
    (format!("{:?}", f.level), line)
}

/// Seconds since the epoch, real time (what a real peer's clock says).
#[allow(clippy::disallowed_methods)]
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A new client key of `kind`, loaded, and its PEM written to a file of its own (for
/// `provider.client_key_file`).
pub fn client_key_file(
    kind: portcullis::provider::client_key::KeyKind,
) -> (
    portcullis::provider::client_key::ClientKey,
    std::path::PathBuf,
) {
    use portcullis::provider::client_key::{ClientKey, generate_pem};
    let pem = generate_pem(kind).unwrap();
    let key = ClientKey::from_pem(pem.as_bytes(), None).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "pc-client-key-{}",
        portcullis::random::random_token()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("client-key.pem");
    std::fs::write(&file, &pem).unwrap();
    (key, file)
}

/// The `name=` fields of a text log line, quoted values skipped (G06: a line parses
/// back to exactly the fields the log wrote).
pub fn log_text_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let (mut quoted, mut escaped, mut word) = (false, false, String::new());
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => word.clear(),
            '=' if !quoted && !word.is_empty() => {
                fields.push(std::mem::take(&mut word));
                word.push('\u{0}');
            }
            c if !quoted => word.push(c),
            _ => {}
        }
    }
    fields
        .into_iter()
        .filter(|f| !f.starts_with('\u{0}'))
        .collect()
}

/// Reads until the gateway closes the tunnel; fails if it is still open after `within`.
pub async fn closed_within(tcp: &mut tokio::net::TcpStream, within: std::time::Duration) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the WebSocket is still open after {within:?}"),
        }
    }
}

/// Sends a request whose answer must be JSON (tests: a failure is a panic).
pub trait SendJson {
    fn send_json(self) -> impl std::future::Future<Output = serde_json::Value> + Send;
}

impl SendJson for reqwest::RequestBuilder {
    async fn send_json(self) -> serde_json::Value {
        self.send().await.unwrap().json().await.unwrap()
    }
}

/// The `kid` of every key in a JWK set, in order.
pub fn kids(jwks: &serde_json::Value) -> Vec<&str> {
    let keys = jwks["keys"].as_array().expect("a JWK set");
    keys.iter().map(|k| k["kid"].as_str().unwrap()).collect()
}
