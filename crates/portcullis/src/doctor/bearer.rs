//! `doctor`'s `[[bearer]]` checks (docs/machine-clients.md): each entry's issuer answers
//! discovery (an extra issuer included), and an entry that introspects has an issuer
//! with an introspection endpoint.

use super::{Level, Report};
use crate::config::{BearerIssuer, Config};
use crate::provider::http::ProviderHttp;
use crate::provider::{Provider, ProviderSettings};

pub(super) async fn bearer_checks(config: &Config, report: &mut Report) {
    for entry in &config.bearer {
        let issuer = match &entry.issuer {
            BearerIssuer::Provider(id) => match config.provider(id) {
                Some(p) => p.clone(),
                None => continue,
            },
            BearerIssuer::Extra(p) => (**p).clone(),
        };
        let http = match ProviderHttp::new() {
            Ok(http) => http,
            Err(e) => {
                report.problem(
                    Level::Error,
                    "bearer",
                    format!("no HTTP client: {e}"),
                    "report this as a bug",
                );
                continue;
            }
        };
        let provider = Provider::new(ProviderSettings::from_config(config, &issuer), http);
        let label = &entry.label;
        match provider.metadata().await {
            Err(e) => report.problem(
                Level::Error,
                "bearer",
                format!(
                    "{label}: the issuer {} cannot be read ({e}): every token there is refused",
                    issuer.issuer
                ),
                "check `issuer`: its /.well-known/openid-configuration must answer",
            ),
            Ok(m) if entry.introspection && m.introspection_endpoint.is_none() => report.problem(
                Level::Error,
                "bearer",
                format!(
                    "{label}: `introspection` is on, but {} offers no introspection_endpoint: opaque tokens get 503",
                    issuer.issuer
                ),
                "turn `introspection` off (JWT access tokens need none), or use an issuer that offers RFC 7662",
            ),
            Ok(_) => report.push(
                Level::Ok,
                "bearer",
                format!(
                    "{label}: access tokens of {} for {}{}",
                    issuer.issuer,
                    entry.audiences.join(", "),
                    if entry.introspection {
                        ", opaque ones introspected"
                    } else {
                        ""
                    }
                ),
            ),
        }
    }
}
