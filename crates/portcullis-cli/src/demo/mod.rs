//! `portcullis demo`: the gateway, the dev provider and a sample app in one process,
//! wired together on loopback, so that a newcomer sees a real sign-in with no account
//! anywhere. Two dev providers sign people in through one gateway, as an organisation
//! with staff and partners would: "Example Corp" (alice, bob) and "Partner" (carol).
//! Gateway on N, Example Corp's provider on N+1, sample app on N+2, Partner's provider
//! on N+3.

mod app;

use std::path::PathBuf;
use std::sync::Arc;

use portcullis::{Config, Gateway};
use tokio::net::TcpListener;

/// The demo's client id at its providers.
const CLIENT_ID: &str = "portcullis-demo";

/// The demo's machine client at Example Corp (client credentials), and its secret: a
/// demo's, printed at start. Its tokens are for `{gateway}/api` (`[[bearer]]`).
const MACHINE_CLIENT: &str = "reporting";
const MACHINE_SECRET: &str = "reporting-secret";

/// One of the demo's providers: its id at the gateway, its name, its users.
struct DemoProvider {
    id: &'static str,
    name: &'static str,
    domain: &'static str,
    /// (username = password, display name)
    users: &'static [(&'static str, &'static str)],
}

const PROVIDERS: [DemoProvider; 2] = [
    DemoProvider {
        id: "corp",
        name: "Example Corp",
        domain: "example.com",
        users: &[("alice", "Alice Example"), ("bob", "Bob Builder")],
    },
    DemoProvider {
        id: "partner",
        name: "Partner",
        domain: "partner.example",
        users: &[("carol", "Carol Partner")],
    },
];

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
    let app_port = port.checked_add(2).ok_or("--port is too high")?;
    let idp_ports = [
        port.checked_add(1).ok_or("--port is too high")?,
        port.checked_add(3).ok_or("--port is too high")?,
    ];
    let data = DataDir::new(data)?;

    let gateway_listener = bind(port, "gateway").await?;
    let app_listener = bind(app_port, "sample app").await?;
    let gateway_url = format!("http://127.0.0.1:{port}");
    let mut idps = Vec::new();
    for (provider, idp_port) in PROVIDERS.iter().zip(idp_ports) {
        let listener = bind(idp_port, provider.name).await?;
        let url = format!("http://127.0.0.1:{idp_port}");
        let config = idp_config(provider, &url, idp_port, &gateway_url, &data)?;
        idps.push((listener, url, portcullis_idp::Idp::open(config).await?));
    }
    let idp_urls: Vec<&str> = idps.iter().map(|(_, url, _)| url.as_str()).collect();
    let config = gateway_config(port, app_port, &idp_urls, &data)?;
    let gateway = Arc::new(Gateway::start(config).await?);
    let gateway_app = portcullis::http::router(gateway)?;
    let app = app::router(sample_app_links(&gateway_url, &idp_urls));
    let idp_urls: Vec<String> = idp_urls.into_iter().map(str::to_owned).collect();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let options = portcullis::http::serve::ServeOptions::default();
    let mut servers: Vec<_> = idps
        .into_iter()
        .map(|(listener, _, idp)| {
            tokio::spawn(portcullis::http::serve::serve(
                listener,
                portcullis_idp::router(idp),
                options.clone(),
                stopped(stop_rx.clone()),
            ))
        })
        .collect();
    servers.extend([
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
    ]);

    print_greeting(&gateway_url, &idp_urls, app_port, &data);

    shutdown.await;
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

/// The sample app's sign-out links: one per provider, through its end-session endpoint
/// and back to the gateway's signed-out page.
fn sample_app_links(gateway_url: &str, idp_urls: &[&str]) -> app::Links {
    let signed_out =
        url::form_urlencoded::byte_serialize(format!("{gateway_url}/signed-out").as_bytes())
            .collect::<String>();
    app::Links {
        idp_logouts: PROVIDERS
            .iter()
            .zip(idp_urls)
            .map(|(p, url)| {
                (
                    p.name.to_owned(),
                    format!(
                        "{url}/end_session?client_id={CLIENT_ID}&post_logout_redirect_uri={signed_out}"
                    ),
                )
            })
            .collect(),
    }
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

/// A provider: its users, one public client for the gateway.
fn idp_config(
    provider: &DemoProvider,
    idp_url: &str,
    idp_port: u16,
    gateway_url: &str,
    data: &DataDir,
) -> Result<portcullis_idp::IdpConfig, Box<dyn std::error::Error>> {
    let users: String = provider
        .users
        .iter()
        .map(|(user, name)| {
            format!(
                "[[users]]\nusername = \"{user}\"\npassword = \"{user}\"\nemail = \"{user}@{}\"\nname = \"{name}\"\n",
                provider.domain
            )
        })
        .collect();
    Ok(portcullis_idp::IdpConfig::parse(&format!(
        r#"
issuer = "{idp_url}"
listen = "127.0.0.1:{idp_port}"
store = "sqlite:{idp_db}"
[[clients]]
id = "{CLIENT_ID}"
redirect_uris = ["{gateway_url}/auth/callback/{id}"]
post_logout_redirect_uris = ["{gateway_url}/signed-out"]
backchannel_logout_uri = "{gateway_url}/auth/backchannel-logout"
{machine}
{users}"#,
        machine = if provider.id == "corp" {
            format!(
                "[[clients]]\nid = \"{MACHINE_CLIENT}\"\nsecret = \"{MACHINE_SECRET}\"\nresources = [\"{gateway_url}/api\"]\nscopes = [\"orders:read\"]\n"
            )
        } else {
            String::new()
        },
        id = provider.id,
        idp_db = data.path.join(format!("idp-{}.db", provider.id)).display()
    ))?)
}

/// The gateway in front of the sample app, with both providers and no default: the
/// chooser first.
fn gateway_config(
    port: u16,
    app_port: u16,
    idp_urls: &[&str],
    data: &DataDir,
) -> Result<Config, Box<dyn std::error::Error>> {
    let providers: String = PROVIDERS
        .iter()
        .zip(idp_urls)
        .map(|(p, url)| {
            format!(
                "[[providers]]\nid = \"{}\"\nname = \"{}\"\nissuer = \"{url}\"\nclient_id = \"{CLIENT_ID}\"\nemail_domains = [\"{}\"]\n",
                p.id, p.name, p.domain
            )
        })
        .collect();
    // The machine client's tokens count on the app's API.
    let bearer = format!(
        "[[bearer]]\nissuer = \"corp\"\naudiences = [\"http://127.0.0.1:{port}/api\"]\npaths = [\"/api/*\"]\nrequired_scopes = [\"orders:read\"]\n"
    );
    let file = data.path.join("portcullis.toml");
    std::fs::write(&file, providers + &bearer)?;
    let env = [
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
        Some(&file),
        env.into_iter().map(|(k, v)| (k.to_owned(), v)),
    )?)
}

fn print_greeting(gateway_url: &str, idp_urls: &[String], app_port: u16, data: &DataDir) {
    let (corp, partner) = (&idp_urls[0], &idp_urls[1]);
    println!(
        "\nPortcullis demo is running.\n\n  Open   {gateway_url}/\n  \
         Choose Example Corp and sign in as alice / alice  or  bob / bob,\n  \
         or Partner and sign in as carol / carol\n\n  \
         gateway            {gateway_url}   (portcullis serve)\n  \
         Example Corp       {corp}   (portcullis idp)\n  \
         Partner            {partner}   (portcullis idp)\n  \
         sample app         http://127.0.0.1:{app_port}   (reached only through the gateway)\n  \
         data               {}{}\n\n  \
         A machine client (docs/machine-clients.md):\n    \
         TOKEN=$(curl -s -u {MACHINE_CLIENT}:{MACHINE_SECRET} -d grant_type=client_credentials {corp}/token | jq -r .access_token)\n    \
         curl -H \"Authorization: Bearer $TOKEN\" {gateway_url}/api/orders\n\nPress Ctrl-C to stop.",
        data.path.display(),
        if data.temporary {
            " (removed at exit)"
        } else {
            ""
        }
    );
}
