//! The `portcullis` binary: argument parsing and wiring only. Everything it runs lives
//! in the `portcullis` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod client_key;
mod demo;
mod log_output;
mod metrics_endpoint;

/// mimalloc rather than the system allocator: a proxy allocates and frees small buffers
/// on every request, and glibc malloc showed as ~12% of the gateway's CPU under load
/// (`docs/BENCHMARKS.md`). Library users choose their own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use portcullis::config::LogFormat;
use portcullis::{Config, Gateway};

/// Sign-in gateway for web apps: OpenID Connect with PKCE, tokens kept on the server,
/// an opaque session cookie in the browser, a verified user handed to your app.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the gateway, the dev provider and a sample app together: sign in as
    /// alice/alice or bob/bob with no account anywhere.
    Demo {
        /// Base port: gateway on N, provider on N+1, sample app on N+2.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Keep the demo's data in this folder (default: a temporary folder).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// Run the development OpenID provider (users and clients from a TOML file).
    Idp {
        /// The provider's TOML configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Allow listening on a non-loopback address.
        #[arg(long)]
        allow_remote: bool,
        /// Retire the current signing keys and make new ones, then exit. Retired keys stay
        /// in the JWKS until every token they signed has expired.
        #[arg(long)]
        rotate_keys: bool,
    },
    /// See and end sessions in the configured store (the same settings as `serve`).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Work on the store as a whole.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The keys that sign the identity assertion (X-Portcullis-Jwt-Assertion), and the
    /// client's own key for private_key_jwt.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Validate the configuration, print every problem, exit non-zero if there is one.
    CheckConfig {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check the configuration against the live provider, store and upstream: one line
    /// per finding with its fix, then the URIs to register. Exit 0 (all well), 1
    /// (warnings) or 2 (errors).
    Doctor {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List live sessions: handle, user id, email, created, last seen, expires, user agent.
    List {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Only this user's sessions.
        #[arg(long, value_name = "USER_ID")]
        user: Option<uuid::Uuid>,
    },
    /// End sessions now, for every running instance; their refresh tokens are revoked at
    /// the provider (except with --all).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["handle", "user", "all"])))]
    Revoke {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// The session's handle, as `sessions list` shows it.
        handle: Option<String>,
        /// Every session of this user.
        #[arg(long, value_name = "USER_ID")]
        user: Option<uuid::Uuid>,
        /// Every session.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new signing key to the configured store. Every running instance publishes
    /// it at {prefix}/jwks.json within 10 s and signs with it 2 minutes from now; the old key
    /// stays published until the assertions it signed have expired.
    Rotate {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List the signing keys in the store that no key of the configured key ring
    /// (PORTCULLIS_SECRET) opens — left by a secret that was replaced — and, with --yes,
    /// remove them. Keys the ring opens are never touched.
    Prune {
        /// TOML configuration file; every key can also come from PORTCULLIS_* variables.
        #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Remove them (without it: only list them).
        #[arg(long)]
        yes: bool,
    },
    /// Make a private key for `private_key_jwt` client authentication (and, with
    /// --self-signed, a certificate for it), print its public JWK set and the settings.
    /// Never overwrites a file.
    ClientNew {
        /// The kind of key.
        #[arg(long = "type", value_enum, default_value = "ec")]
        key_type: client_key::KeyType,
        /// Where to write the private key (PEM, mode 0600).
        #[arg(long, value_name = "FILE", default_value = "client-key.pem")]
        out: PathBuf,
        /// Also make a self-signed certificate (for providers that register
        /// certificates, such as Entra ID).
        #[arg(long)]
        self_signed: bool,
        /// Where to write the certificate (with --self-signed).
        #[arg(long, value_name = "FILE", default_value = "client-cert.pem")]
        cert_out: PathBuf,
        /// The certificate's subject common name (with --self-signed).
        #[arg(long, value_name = "NAME", default_value = "portcullis client")]
        subject: String,
        /// Days the certificate is valid (with --self-signed), 1 to 3650.
        #[arg(long, value_name = "DAYS", default_value_t = 365,
              value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy users (with their ids) and live sessions to another store, e.g. from SQLite
    /// to PostgreSQL: no X-User-Id changes and nobody is signed out. The gateways on
    /// the new store need the same PORTCULLIS_SECRET. Safe to run again.
    Copy {
        /// The store to read: sqlite:PATH, postgres://… or redis://…
        #[arg(long, value_name = "URL")]
        from: String,
        /// The store to write (created and migrated if needed).
        #[arg(long, value_name = "URL")]
        to: String,
        /// Table or key prefix on PostgreSQL and Redis, on both sides.
        #[arg(
            long,
            value_name = "PREFIX",
            env = "PORTCULLIS_STORE_PREFIX",
            default_value = "portcullis"
        )]
        prefix: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Doctor { config } => doctor(config),
        Command::Sessions { command } => sessions(command),
        Command::Store {
            command: StoreCommand::Copy { from, to, prefix },
        } => store_copy(&from, &to, &prefix),
        Command::Keys {
            command: KeysCommand::Rotate { config },
        } => keys_rotate(config),
        Command::Keys {
            command: KeysCommand::Prune { config, yes },
        } => keys_prune(config, yes),
        Command::Keys {
            command:
                KeysCommand::ClientNew {
                    key_type,
                    out,
                    self_signed,
                    cert_out,
                    subject,
                    days,
                },
        } => client_key::client_new(&client_key::ClientNew {
            key_type,
            key_out: &out,
            self_signed: self_signed.then_some((cert_out.as_path(), subject.as_str(), days)),
        }),
        Command::Demo { port, data } => run_demo(port, data),
        Command::Idp {
            config,
            allow_remote,
            rotate_keys,
        } => run_idp(&config, allow_remote, rotate_keys),
        Command::Serve { config: file } => {
            let config = match Config::load(file.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    return ExitCode::from(2);
                }
            };
            let output = init_logging(&config);
            let code = run_async("portcullis", async {
                serve(config, file)
                    .await
                    .inspect_err(|e| tracing::error!("{e}"))
            });
            output.finish();
            code
        }
    }
}

fn doctor(file: Option<PathBuf>) -> ExitCode {
    let report = match Config::load(file.as_deref()) {
        Ok(config) => {
            println!(
                "portcullis doctor: {} (client {})",
                printable(&config.issuer),
                printable(&config.client_id)
            );
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("portcullis doctor: cannot start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(portcullis::doctor::run(&config))
        }
        Err(e) => {
            println!("portcullis doctor: the configuration does not load");
            portcullis::doctor::config_errors(&e.0)
        }
    };
    print!("{}", printable_lines(&report.render()));
    ExitCode::from(report.exit_status())
}

fn check_config(file: Option<PathBuf>) -> ExitCode {
    match Config::load(file.as_deref()) {
        Ok(c) => {
            println!("configuration is valid");
            println!("  listen        {}", c.listen);
            println!("  public_url    {}", c.public_origin());
            println!("  redirect_uri  {}", c.redirect_uri());
            println!("  issuer        {}", c.issuer);
            println!(
                "  client        {} ({})",
                c.client_id,
                if c.client_secret.is_some() {
                    "confidential"
                } else {
                    "public, PKCE only"
                }
            );
            println!("  store         {}", c.store.describe());
            println!(
                "  upstream      {}",
                c.upstream
                    .as_ref()
                    .map_or("(none)".to_string(), |u| u.to_string())
            );
            match &c.upstream {
                Some(_) => println!(
                    "  mode          reverse proxy (forward-auth at {}/verify too)",
                    c.prefix
                ),
                None => println!(
                    "  mode          forward-auth only: {}/verify answers your proxy; every path outside {} but /healthz and /readyz answers 404",
                    c.prefix, c.prefix
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            for problem in &e.0 {
                eprintln!("error: {problem}");
            }
            eprintln!("{} problem(s) found", e.0.len());
            ExitCode::from(2)
        }
    }
}

fn sessions(command: SessionsCommand) -> ExitCode {
    let file = match &command {
        SessionsCommand::List { config, .. } | SessionsCommand::Revoke { config, .. } => {
            config.clone()
        }
    };
    let config = match Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis sessions: {e}");
            return ExitCode::from(2);
        }
    };
    init_plain_logging("warn");
    run_async("portcullis sessions", async move {
        let gateway = Gateway::start(config).await?;
        match command {
            SessionsCommand::List { user, .. } => {
                let sessions = gateway.sessions().live_sessions(user).await?;
                println!("HANDLE\tUSER ID\tEMAIL\tCREATED\tLAST SEEN\tEXPIRES\tUSER AGENT");
                for s in &sessions {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        s.id_hash.short(),
                        s.user.id,
                        printable(s.user.email.as_deref().unwrap_or("-")),
                        rfc3339(s.created_at),
                        rfc3339(s.last_seen_at),
                        rfc3339(s.expires_at()),
                        printable(s.user_agent.as_deref().unwrap_or("-")),
                    );
                }
                eprintln!("{} live session(s)", sessions.len());
            }
            SessionsCommand::Revoke {
                handle, user, all, ..
            } => {
                use portcullis::session::admin::Revoke;
                let which = match (handle, user, all) {
                    (Some(h), _, _) => Revoke::Handle(h),
                    (None, Some(u), _) => Revoke::User(u),
                    _ => Revoke::All,
                };
                let ended = gateway.sessions().revoke_sessions(&which).await?;
                println!("{ended} session(s) revoked");
            }
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

fn keys_rotate(file: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis keys rotate: {e}");
            return ExitCode::from(2);
        }
    };
    init_plain_logging("warn");
    run_async("portcullis keys rotate", async move {
        let gateway = Gateway::start(config).await?;
        let key = gateway.sessions().rotate_assertion_key().await?;
        println!(
            "added signing key {} (generation {}): every instance publishes it within {} s and signs with it from {}",
            key.kid,
            key.generation,
            portcullis::session::assertion::RELOAD_EVERY,
            rfc3339(key.created_at + portcullis::session::assertion::ACTIVATION),
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

fn keys_prune(file: Option<PathBuf>, delete: bool) -> ExitCode {
    let config = match Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis keys prune: {e}");
            return ExitCode::from(2);
        }
    };
    init_plain_logging("warn");
    run_async("portcullis keys prune", async move {
        let gateway = Gateway::start(config).await?;
        let Some(keys) = gateway.sessions().prune_signing_keys(delete).await? else {
            return Err("the store holds a signing key newer than any this key ring opens: this is not the secret the running instances use, so nothing is pruned (use their secret)".into());
        };
        if keys.is_empty() {
            println!("every signing key in the store opens with this key ring: nothing to prune");
        }
        for key in &keys {
            println!(
                "{} signing key {} (generation {}, made {}): no key of this key ring opens it",
                if delete { "removed" } else { "would remove" },
                key.kid,
                key.generation,
                rfc3339(key.created_at),
            );
        }
        if !delete && !keys.is_empty() {
            println!("run again with --yes to remove them");
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

fn store_copy(from: &str, to: &str, prefix: &str) -> ExitCode {
    use portcullis::config::StoreLocation;
    let parse = |which: &str, value: &str| {
        StoreLocation::parse(value).map_err(|e| format!("--{which}: {e}"))
    };
    let (source, target) = match (parse("from", from), parse("to", to)) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("portcullis store copy: {e}");
            return ExitCode::from(2);
        }
    };
    if source == target {
        eprintln!("portcullis store copy: --from and --to are the same store");
        return ExitCode::from(2);
    }
    if let StoreLocation::Sqlite(path) = &source
        && !path.exists()
    {
        eprintln!(
            "portcullis store copy: --from: {} does not exist",
            path.display()
        );
        return ExitCode::from(2);
    }
    init_plain_logging("warn");
    run_async("portcullis store copy", async move {
        portcullis::install_crypto_provider();
        let from = portcullis::store::open(&source, prefix).await?;
        let to = portcullis::store::open(&target, prefix).await?;
        let now = portcullis::clock::Clock::now(&portcullis::clock::SystemClock);
        let report = portcullis::store::copy::copy(&*from, &*to, now).await?;
        println!(
            "copied {} user(s) ({} already there), {} signing key(s) ({} already there) and {} live session(s) ({} already there) from {} to {}",
            report.users_copied,
            report.users_present,
            report.signing_keys_copied,
            report.signing_keys_present,
            report.sessions_copied,
            report.sessions_present,
            source.describe(),
            target.describe()
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// A value from the store, safe to print on a terminal: control characters become `?`.
/// Each line [`printable`]: what providers and stores said cannot move the cursor.
fn printable_lines(s: &str) -> String {
    s.lines().map(|l| printable(l) + "\n").collect()
}

fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Unix seconds as RFC 3339 UTC (civil-from-days, H. Hinnant's algorithm).
fn rfc3339(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn run_demo(port: u16, data: Option<PathBuf>) -> ExitCode {
    init_plain_logging("warn");
    run_async("portcullis demo", demo::run(port, data, shutdown_signal()))
}

/// Logs to stderr, filtered by `PORTCULLIS_LOG` (else `default`).
fn init_plain_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `work` on a multi-threaded runtime; failures are one line on stderr.
fn run_async<E: std::fmt::Display>(
    what: &str,
    work: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{what}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_idp(file: &std::path::Path, allow_remote: bool, rotate_keys: bool) -> ExitCode {
    let config = match portcullis_idp::IdpConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis idp: {e}");
            return ExitCode::from(2);
        }
    };
    init_plain_logging("info");
    run_async("portcullis idp", async {
        if rotate_keys {
            portcullis_idp::rotate_keys(config).await?;
            println!("signing keys rotated");
            Ok(())
        } else {
            portcullis_idp::run(config, allow_remote, shutdown_signal()).await
        }
    })
}

/// The server's log: written in batches by a thread of its own (`log_output`).
fn init_logging(config: &Config) -> log_output::BatchedStderr {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let output = log_output::BatchedStderr::start();
    let json = config.log_format == LogFormat::Json;
    // Colours only on a terminal: escape sequences have no place in a log file.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(output.make_writer(json));
    // G06: text lines whose fields no request can forge (see `log_output`).
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.fmt_fields(log_output::SafeTextFields).init(),
    }
    output
}

async fn serve(config: Config, file: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let listen = config.listen;
    // Before the gateway: it registers its series with the recorder installed now.
    let metrics = match config.metrics_listen {
        Some(at) => Some((at, metrics_endpoint::install()?)),
        None => None,
    };
    let gateway = Arc::new(Gateway::start(config).await?);
    if let Some((at, handle)) = metrics {
        metrics_endpoint::start(at, handle, gateway.clone()).await?;
    }
    // Before the first log line, so that a SIGHUP sent once it appears is handled.
    spawn_reloader(gateway.clone(), file)?;
    tracing::info!(
        %listen,
        public_url = %gateway.config().public_origin(),
        issuer = %gateway.config().issuer,
        store = %gateway.config().store.describe(),
        "portcullis starting"
    );
    match gateway.provider().metadata().await {
        Ok(_) => tracing::info!("provider metadata loaded"),
        // L10: a provider that names another issuer is a configuration error: refuse to start.
        Err(e @ portcullis::provider::ProviderError::IssuerMismatch { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "provider not reachable yet; /readyz stays 503 until it is")
        }
    }
    // Read (or, on an empty store, make) the assertion keys before serving: two
    // instances starting together agree on one, and jwks.json answers at once.
    if let Err(e) = gateway.sessions().prepare_assertion_keys().await {
        tracing::warn!(error = %e, "the assertion signing keys are not readable yet; tried again at the first request");
    }
    spawn_purger(gateway.clone());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let mut options = portcullis::http::serve::ServeOptions::from_config(gateway.config());
    let app = portcullis::http::router(gateway)?;
    options.tunnels = app.tunnels();
    // One serving thread per core, each with its own single-threaded runtime: see
    // `serve_on_threads` and docs/BENCHMARKS.md.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    portcullis::http::serve::serve_on_threads(
        listener,
        threads,
        move || app.with_own_connections(),
        options,
        shutdown_signal(),
    )
    .await?;
    tracing::info!("portcullis stopped");
    Ok(())
}

/// On SIGHUP: loads the configuration again (the file and `secret_file`; the
/// environment is the one the process started with) and applies the key ring, the
/// access rules and the routes. An invalid configuration changes nothing.
fn spawn_reloader(gateway: Arc<Gateway>, file: Option<PathBuf>) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        // Installed before serving: SIGHUP's default action would end the process.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                reload(&gateway, file.as_deref()).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (gateway, file);
    Ok(())
}

async fn reload(gateway: &Gateway, file: Option<&std::path::Path>) {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("reload refused, the running settings stay: {e}");
            return;
        }
    };
    match gateway.sessions().reload_settings(&config).await {
        Ok(report) => {
            tracing::info!(
                key_ring = report
                    .keys
                    .map_or("unchanged (no secret_file)".to_owned(), |n| format!(
                        "{n} keys"
                    )),
                "reloaded the key ring, the access rules and the routes"
            );
            if report.new_sealing_key {
                tracing::warn!(
                    "the key ring seals with a key the running one did not hold: an instance that has not reloaded yet cannot open what this one seals (with several instances, add a new key second everywhere first, then move it to the front)"
                );
            }
            if report.needs_restart {
                tracing::warn!(
                    "other settings differ from the running ones; they apply at the next restart"
                );
            }
        }
        Err(e) => tracing::error!("reload refused, the running settings stay: {e}"),
    }
}

/// Deletes expired records every few minutes.
fn spawn_purger(gateway: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        loop {
            tick.tick().await;
            match gateway.purge_expired().await {
                Ok(n) if n > 0 => tracing::debug!(purged = n, "expired records removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging expired records failed"),
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_741_199), "2026-11-27T00:59:59Z");
        assert_eq!(super::printable("a\u{1b}[2Jb"), "a?[2Jb");
    }
}
