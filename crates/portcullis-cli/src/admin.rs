//! The administrative subcommands: `check-config`, `doctor`, `sessions`, `keys rotate`
//! and `keys prune`, `store copy`.

use std::path::PathBuf;
use std::process::ExitCode;

use portcullis::{Config, Gateway};

use crate::args::SessionsCommand;
use crate::{init_plain_logging, run_async};

pub(crate) fn doctor(file: Option<PathBuf>) -> ExitCode {
    let report = match Config::load(file.as_deref()) {
        Ok(config) => {
            for p in &config.providers {
                println!(
                    "portcullis doctor: {} (client {})",
                    printable(&p.issuer),
                    printable(&p.client_id)
                );
            }
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

pub(crate) fn check_config(file: Option<PathBuf>) -> ExitCode {
    match Config::load(file.as_deref()) {
        Ok(c) => {
            println!("configuration is valid");
            println!("  listen        {}", c.listen);
            println!("  public_url    {}", c.public_origin());
            for p in &c.providers {
                if c.several_providers() {
                    println!("  provider      {} ({})", p.id, p.name);
                }
                println!("  redirect_uri  {}", c.redirect_uri(&p.id));
                println!("  issuer        {}", p.issuer);
                println!(
                    "  client        {} ({})",
                    p.client_id,
                    if p.client_secret.is_some() {
                        "confidential"
                    } else {
                        "public, PKCE only"
                    }
                );
            }
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

pub(crate) fn sessions(command: SessionsCommand) -> ExitCode {
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
                println!(
                    "HANDLE\tUSER ID\tEMAIL\tPROVIDER\tCREATED\tLAST SEEN\tEXPIRES\tUSER AGENT"
                );
                for s in &sessions {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        s.id_hash.short(),
                        s.user.id,
                        printable(s.user.email.as_deref().unwrap_or("-")),
                        printable(&s.provider_id),
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

pub(crate) fn keys_rotate(file: Option<PathBuf>) -> ExitCode {
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

pub(crate) fn keys_prune(file: Option<PathBuf>, delete: bool) -> ExitCode {
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
        let dpop = gateway.sessions().prune_dpop_key(delete).await?;
        if dpop {
            println!(
                "{} the shared DPoP key: no key of this key ring opens it (this ring's own DPoP key, if it made one, takes its place)",
                if delete { "removed" } else { "would remove" },
            );
        }
        if !delete && (dpop || !keys.is_empty()) {
            println!("run again with --yes to remove them");
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

pub(crate) fn store_copy(from: &str, to: &str, prefix: &str) -> ExitCode {
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
