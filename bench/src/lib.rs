//! Helpers for `bench/run.sh`: the reference reverse proxy, the upstream every row
//! forwards to, and the store seeder share their argument parsing and response body
//! here. None of this is part of the gateway; see `docs/BENCHMARKS.md`.

pub mod args;
pub mod body;
pub mod serve;

/// The process's exit status: success, or the error printed to stderr.
pub fn exit_with<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs `main` to the end on a runtime from `builder` (I/O and time enabled); `name`
/// labels a runtime that cannot start.
pub fn block_on<E: std::fmt::Display>(
    name: &str,
    mut builder: tokio::runtime::Builder,
    main: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| format!("{name}: cannot start the runtime: {e}"))?;
    runtime.block_on(main).map_err(|e| e.to_string())
}
