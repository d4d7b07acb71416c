//! `portcullis doctor`: the configuration checked against the live provider, store and
//! upstream, one finding per line with its fix (README.md "Run it in front of your
//! identity provider").
//!
//! Every check runs even when an earlier one failed (a wrong secret and a missing
//! `offline_access` are both worth knowing at once), except those that need the
//! provider's metadata when discovery failed. Nothing here logs in or changes anything
//! at the provider: the client credentials are tried with a bogus code, which a
//! provider refuses with `invalid_grant` once it has accepted the client.

use std::fmt::Write as _;

use crate::config::Config;
use crate::provider::http::ProviderHttp;

mod client;
mod deployment;
mod provider;
mod quirks;

use deployment::{store_check, upstream_check};
use provider::provider_checks;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Worth knowing; nothing to change.
    Note,
    /// Works, but not as well as it could: exit status 1.
    Warn,
    /// Sign-ins or sessions will fail: exit status 2.
    Error,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Note => "note",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    /// The check's name: `config`, `discovery`, `jwks`, `pkce`, `iss`, `refresh`,
    /// `logout`, `backchannel`, `clock`, `client`, `store`, `upstream`, `quirk`, `par`,
    /// `fapi2`, `dpop`, `key ring`, `dpop key`.
    pub check: &'static str,
    pub message: String,
    /// What to change, for a warning or an error.
    pub fix: Option<String>,
}

/// Everything `doctor` found, and the URIs to register at the provider.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// (what, URI) to register at the provider.
    pub register: Vec<(&'static str, String)>,
}

impl Report {
    fn push(&mut self, level: Level, check: &'static str, message: impl Into<String>) {
        self.findings.push(Finding {
            level,
            check,
            message: message.into(),
            fix: None,
        });
    }

    fn problem(
        &mut self,
        level: Level,
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.findings.push(Finding {
            level,
            check,
            message: message.into(),
            fix: Some(fix.into()),
        });
    }

    fn count(&self, level: Level) -> usize {
        self.findings.iter().filter(|f| f.level == level).count()
    }

    /// 0 when all is well, 1 with warnings, 2 with errors.
    pub fn exit_status(&self) -> u8 {
        match self.findings.iter().map(|f| f.level).max() {
            Some(Level::Error) => 2,
            Some(Level::Warn) => 1,
            _ => 0,
        }
    }

    /// The report as `doctor` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = write!(out, "{:<5} {:<12} {}", f.level.label(), f.check, f.message);
            if let Some(fix) = &f.fix {
                let _ = write!(out, " — fix: {fix}");
            }
            out.push('\n');
        }
        if !self.register.is_empty() {
            out.push_str("register at the provider:\n");
            for (what, uri) in &self.register {
                let _ = writeln!(out, "  {what:<25} {uri}");
            }
        }
        let (errors, warnings) = (self.count(Level::Error), self.count(Level::Warn));
        let _ = writeln!(
            out,
            "{errors} error{}, {warnings} warning{}",
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" }
        );
        out
    }
}

/// Runs every check against `config` (already valid: the caller reports configuration
/// errors itself, [`config_errors`]).
pub async fn run(config: &Config) -> Report {
    crate::install_crypto_provider();
    let mut report = Report::default();
    report.push(Level::Ok, "config", "configuration is valid");
    match ProviderHttp::new() {
        Ok(http) => provider_checks(config, http, &mut report).await,
        Err(e) => report.problem(
            Level::Error,
            "discovery",
            format!("no HTTP client: {e}"),
            "report this as a bug",
        ),
    }
    store_check(config, &mut report).await;
    upstream_check(config, &mut report).await;
    report
        .register
        .insert(0, ("redirect URI", config.redirect_uri()));
    if let Some(spa) = config
        .spa
        .code_exchange
        .then_some(config.spa.redirect_uri.as_ref())
        .flatten()
    {
        report
            .register
            .insert(1, ("redirect URI (SPA)", spa.to_string()));
    }
    report
}

/// The report for a configuration that does not load: one error per problem.
pub fn config_errors(errors: &[String]) -> Report {
    let mut report = Report::default();
    for e in errors {
        report.problem(
            Level::Error,
            "config",
            e.clone(),
            "see docs/configuration.md; `portcullis check-config` lists the same",
        );
    }
    report
}
