//! `portcullis demo`: the gateway, the dev provider and a sample app in one process,
//! wired together on loopback, so that a newcomer sees a real sign-in with no account
//! anywhere. Gateway on N, provider on N+1, sample app on N+2.

mod app;

use std::path::PathBuf;
use std::sync::Arc;

use portcullis::{Config, Gateway};
use tokio::net::TcpListener;

/// The demo's client id at its provider.
const CLIENT_ID: &str = "portcullis-demo";

/// Where the demo keeps its databases: `--data`, or a temporary folder removed at exit.
struct DataDir {
    path: PathBuf,
    temporary: bool,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn bind(port: u16, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port} for the {what}: {e} (choose another base port with --port)"))
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    port: u16,
    data: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let idp_port = port.checked_add(1).ok_or("--port is too high")?;
    let app_port = port.checked_add(2).ok_or("--port is too high")?;
    let data = DataDir::new(data)?;

    let gateway_listener = bind(port, "gateway").await?;
    let idp_listener = bind(idp_port, "identity provider").await?;
    let app_listener = bind(app_port, "sample app").await?;
    let gateway_url = format!("http://127.0.0.1:{port}");
    let idp_url = format!("http://127.0.0.1:{idp_port}");

    let idp =
        portcullis_idp::Idp::open(idp_config(&idp_url, idp_port, &gateway_url, &data)?).await?;
    let gateway = Arc::new(Gateway::start(gateway_config(port, app_port, &idp_url, &data)?).await?);
    let gateway_app = portcullis::http::router(gateway)?;
    let app = app::router(app::Links {
        idp_logout: format!(
            "{idp_url}/end_session?client_id={CLIENT_ID}&post_logout_redirect_uri={}",
            url::form_urlencoded::byte_serialize(format!("{gateway_url}/signed-out").as_bytes())
                .collect::<String>()
        ),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let options = portcullis::http::serve::ServeOptions::default();
    let servers = [
        tokio::spawn(portcullis::http::serve::serve(
            idp_listener,
            portcullis_idp::router(idp),
            options.clone(),
            stopped(stop_rx.clone()),
        )),
        tokio::spawn(portcullis::http::serve::serve(
            app_listener,
            app,
            options.clone(),
            stopped(stop_rx.clone()),
        )),
        tokio::spawn(portcullis::http::serve::serve(
            gateway_listener,
            gateway_app,
            options,
            stopped(stop_rx),
        )),
    ];

    print_greeting(&gateway_url, &idp_url, app_port, &data);

    shutdown.await;
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

impl DataDir {
    /// The given folder, or a fresh one under the temporary folder (removed at exit).
    fn new(path: Option<PathBuf>) -> std::io::Result<Self> {
        let data = match path {
            Some(path) => DataDir {
                path,
                temporary: false,
            },
            None => DataDir {
                path: std::env::temp_dir().join(format!(
                    "portcullis-demo-{}",
                    &portcullis::random::random_token()[..12]
                )),
                temporary: true,
            },
        };
        std::fs::create_dir_all(&data.path)?;
        Ok(data)
    }
}

/// The provider: two users, one public client for the gateway.
fn idp_config(
    idp_url: &str,
    idp_port: u16,
    gateway_url: &str,
    data: &DataDir,
) -> Result<portcullis_idp::IdpConfig, Box<dyn std::error::Error>> {
    Ok(portcullis_idp::IdpConfig::parse(&format!(
        r#"
issuer = "{idp_url}"
listen = "127.0.0.1:{idp_port}"
store = "sqlite:{idp_db}"
[[clients]]
id = "{CLIENT_ID}"
redirect_uris = ["{gateway_url}/auth/callback"]
post_logout_redirect_uris = ["{gateway_url}/signed-out"]
backchannel_logout_uri = "{gateway_url}/auth/backchannel-logout"
[[users]]
username = "alice"
password = "alice"
email = "alice@example.com"
name = "Alice Example"
[[users]]
username = "bob"
password = "bob"
email = "bob@example.com"
name = "Bob Builder"
"#,
        idp_db = data.path.join("idp.db").display()
    ))?)
}

/// The gateway in front of the sample app.
fn gateway_config(
    port: u16,
    app_port: u16,
    idp_url: &str,
    data: &DataDir,
) -> Result<Config, Box<dyn std::error::Error>> {
    let env = [
        ("PORTCULLIS_ISSUER", idp_url.to_owned()),
        ("PORTCULLIS_CLIENT_ID", CLIENT_ID.to_owned()),
        ("PORTCULLIS_LISTEN", format!("127.0.0.1:{port}")),
        (
            "PORTCULLIS_UPSTREAM",
            format!("http://127.0.0.1:{app_port}"),
        ),
        (
            "PORTCULLIS_STORE",
            format!("sqlite:{}", data.path.join("portcullis.db").display()),
        ),
        (
            "PORTCULLIS_PUBLIC_PATHS",
            "/signed-out,/static/*".to_owned(),
        ),
    ];
    Ok(Config::load_from(
        None,
        env.into_iter().map(|(k, v)| (k.to_owned(), v)),
    )?)
}

fn print_greeting(gateway_url: &str, idp_url: &str, app_port: u16, data: &DataDir) {
    println!(
        "\nPortcullis demo is running.\n\n  Open   {gateway_url}/\n  Sign in as alice / alice  or  bob / bob\n\n  \
         gateway            {gateway_url}   (portcullis serve)\n  \
         identity provider  {idp_url}   (portcullis idp)\n  \
         sample app         http://127.0.0.1:{app_port}   (reached only through the gateway)\n  \
         data               {}{}\n\nPress Ctrl-C to stop.",
        data.path.display(),
        if data.temporary {
            " (removed at exit)"
        } else {
            ""
        }
    );
}
