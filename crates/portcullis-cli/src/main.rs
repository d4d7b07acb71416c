//! The `portcullis` binary: argument parsing and wiring only. Everything it runs lives
//! in the `portcullis` library.

use std::path::PathBuf;
use std::process::ExitCode;

mod admin;
mod args;
mod client_key;
mod demo;
mod log_output;
mod metrics_endpoint;
mod serve;

/// mimalloc rather than the system allocator: a proxy allocates and frees small buffers
/// on every request, and glibc malloc showed as ~12% of the gateway's CPU under load
/// (`docs/BENCHMARKS.md`). Library users choose their own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use admin::{check_config, doctor, keys_prune, keys_rotate, sessions, store_copy};
use args::{Cli, Command, KeysCommand, StoreCommand};
use clap::Parser;
use portcullis::Config;
use serve::{init_logging, serve, shutdown_signal};

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

fn run_demo(port: u16, data: Option<PathBuf>) -> ExitCode {
    init_plain_logging("warn");
    run_async("portcullis demo", demo::run(port, data, shutdown_signal()))
}

/// Logs to stderr, filtered by `PORTCULLIS_LOG` (else `default`).
pub(crate) fn init_plain_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `work` on a multi-threaded runtime; failures are one line on stderr.
pub(crate) fn run_async<E: std::fmt::Display>(
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
