//! `portcullis idp` in process, on a free loopback port, with one client for a gateway
//! at `gateway_url` and the users the npm provider also has (alice, bob).

/// Starts the dev provider; its issuer. The data lives in a fresh temporary folder.
pub async fn start(gateway_url: &str, secret: Option<&str>) -> String {
    let secret_line = secret
        .map(|s| format!("secret = \"{s}\"\n"))
        .unwrap_or_default();
    start_with_client(gateway_url, &secret_line).await
}

/// Starts the dev provider with `client_lines` (TOML: `secret = …` or `jwks = …`) in
/// its client's entry.
pub async fn start_with_client(gateway_url: &str, client_lines: &str) -> String {
    start_for_callback(gateway_url, client_lines, "/auth/callback").await
}

/// Starts the dev provider for a gateway whose callback for it is `callback` (a path:
/// `/auth/callback/dev` for one of several providers).
pub async fn start_for_callback(gateway_url: &str, client_lines: &str, callback: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let dir =
        std::env::temp_dir().join(format!("pc-dev-idp-{}", portcullis::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        r#"
issuer = "{issuer}"
listen = "{addr}"
store = "sqlite:{db}"
[[clients]]
id = "app"
{client_lines}
redirect_uris = ["{gateway_url}{callback}"]
backchannel_logout_uri = "{gateway_url}/auth/backchannel-logout"
[[users]]
username = "alice"
password = "alice"
email = "alice@example.com"
name = "Alice Example"
[[users]]
username = "bob"
password = "bob"
email = "bob@example.org"
name = "Bob Builder"
"#,
        addr = issuer.trim_start_matches("http://"),
        db = dir.join("idp.db").display()
    );
    let idp = portcullis_idp::Idp::open(portcullis_idp::IdpConfig::parse(&config).unwrap())
        .await
        .unwrap();
    let app = portcullis_idp::router(idp);
    crate::serve_in_background(listener, app);
    issuer
}
