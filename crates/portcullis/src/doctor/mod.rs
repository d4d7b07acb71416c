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

mod bearer;
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
    /// `fapi2`, `dpop`, `key ring`, `dpop key`, `providers`, `bearer`.
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
    pub register: Vec<(String, String)>,
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
    several_providers_check(config, &mut report);
    for entry in &config.providers {
        if config.several_providers() {
            report.push(
                Level::Note,
                "provider",
                format!("{} ({}): {}", entry.id, entry.name, entry.issuer),
            );
        }
        match ProviderHttp::new() {
            Ok(http) => provider_checks(config, entry, http, &mut report).await,
            Err(e) => report.problem(
                Level::Error,
                "discovery",
                format!("no HTTP client: {e}"),
                "report this as a bug",
            ),
        }
    }
    bearer::bearer_checks(config, &mut report).await;
    store_check(config, &mut report).await;
    upstream_check(config, &mut report).await;
    for (i, entry) in config.providers.iter().enumerate() {
        let what = if config.several_providers() {
            format!("redirect URI ({})", entry.id)
        } else {
            "redirect URI".to_owned()
        };
        report
            .register
            .insert(i, (what, config.redirect_uri(&entry.id)));
    }
    if let Some(spa) = config
        .spa
        .code_exchange
        .then_some(config.spa.redirect_uri.as_ref())
        .flatten()
    {
        report.register.insert(
            config.providers.len(),
            ("redirect URI (SPA)".to_owned(), spa.to_string()),
        );
    }
    // The same URI registered at every provider is listed once.
    let mut seen = std::collections::BTreeSet::new();
    report.register.retain(|entry| seen.insert(entry.clone()));
    report
}

/// G12 (nOAuth): two providers that list no `email_domains` could both assert the
/// same address as verified; each owned domain is vouched for by its owner only.
fn several_providers_check(config: &Config, report: &mut Report) {
    if !config.several_providers() {
        return;
    }
    let open: Vec<&str> = config
        .providers
        .iter()
        .filter(|p| p.email_domains.is_empty())
        .map(|p| p.id.as_str())
        .collect();
    if open.len() >= 2 {
        report.problem(
            Level::Warn,
            "providers",
            format!(
                "{} list no `email_domains`: each could assert any address as verified, the same address as another's user",
                open.join(", ")
            ),
            "give each provider the domains it owns (`email_domains`), and key the app on X-User-Id (or X-User-Provider with the email), never the email alone",
        );
    } else {
        report.push(
            Level::Ok,
            "providers",
            format!(
                "{} providers; an address counts as verified only from the provider owning its domain",
                config.providers.len()
            ),
        );
    }
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
