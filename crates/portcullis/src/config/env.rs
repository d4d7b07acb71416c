//! The environment overlay: every key's `PORTCULLIS_*` variable, and how its text
//! becomes a TOML value laid over the file before the file is checked.
//!
//! `KEYS` is the one list of settable keys; the variable names, `all_keys` (for the
//! reference and its test) and the overlay all derive from it.

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
    /// A whole number, at least 0.
    Count,
    List,
    Map,
}

/// Every settable key: (section, key, kind). The environment name is derived from it.
const KEYS: &[(&str, &str, Kind)] = &[
    ("", "listen", Kind::Text),
    ("", "public_url", Kind::Text),
    ("", "issuer", Kind::Text),
    ("", "client_id", Kind::Text),
    ("", "client_secret", Kind::Text),
    ("", "scopes", Kind::Text),
    ("", "default_provider", Kind::Text),
    ("", "upstream", Kind::Text),
    ("", "store", Kind::Text),
    ("", "store_prefix", Kind::Text),
    ("", "secret", Kind::Text),
    ("", "secret_file", Kind::Text),
    ("", "log", Kind::Text),
    ("", "log_format", Kind::Text),
    ("", "prefix", Kind::Text),
    ("", "public_paths", Kind::List),
    ("session", "idle_timeout", Kind::Text),
    ("session", "absolute_lifetime", Kind::Text),
    ("session", "refresh_before", Kind::Text),
    ("session", "rotation_grace", Kind::Text),
    ("session", "cache_entries", Kind::Count),
    ("session", "cache_mb", Kind::Count),
    ("access", "allowed_email_domains", Kind::List),
    ("access", "allowed_emails", Kind::List),
    ("access", "required_claims", Kind::Map),
    ("access", "require_email_verified", Kind::Bool),
    ("provider", "extra_authorize_params", Kind::Map),
    ("provider", "allowed_algorithms", Kind::List),
    ("provider", "assume_email_verified", Kind::Bool),
    ("provider", "trusted_audiences", Kind::List),
    ("provider", "token_endpoint_auth_method", Kind::Text),
    ("provider", "client_key_file", Kind::Text),
    ("provider", "client_cert_file", Kind::Text),
    ("provider", "client_assertion_aud", Kind::Text),
    ("provider", "client_assertion_typ", Kind::Text),
    ("provider", "par", Kind::Text),
    ("provider", "dpop", Kind::Text),
    ("provider", "profile", Kind::Text),
    ("proxy", "trusted_proxies", Kind::List),
    ("proxy", "token_relay", Kind::List),
    ("logout", "provider_logout", Kind::Bool),
    ("logout", "id_token_hint", Kind::Bool),
    ("logout", "post_logout_redirect_uris", Kind::List),
    ("csrf", "header", Kind::Text),
    ("limits", "login_per_minute", Kind::Count),
    ("limits", "callback_per_minute", Kind::Count),
    ("limits", "spa_exchange_per_minute", Kind::Count),
    ("limits", "backchannel_per_minute", Kind::Count),
    ("limits", "max_transactions", Kind::Count),
    ("limits", "connections_per_peer", Kind::Count),
    ("limits", "max_connections", Kind::Count),
    ("limits", "body_timeout", Kind::Text),
    ("limits", "keepalive_timeout", Kind::Text),
    ("assertion", "audience", Kind::Text),
    ("metrics", "listen", Kind::Text),
    ("spa", "code_exchange", Kind::Bool),
    ("spa", "code_exchange_path", Kind::Text),
    ("spa", "redirect_uri", Kind::Text),
    ("spa", "provider", Kind::Text),
];

/// The environment variable name of a key.
pub fn env_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("PORTCULLIS_{}", key.to_ascii_uppercase())
    } else {
        format!(
            "PORTCULLIS_{}_{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    }
}

/// Every configuration key with its environment variable, for documentation and tests.
pub fn all_keys() -> Vec<(String, String)> {
    KEYS.iter()
        .map(|(section, key, _)| {
            let dotted = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            (dotted, env_name(section, key))
        })
        .collect()
}

/// Variables that belong to the process, not to the gateway's settings.
const NON_SETTING_VARIABLES: &[&str] = &["PORTCULLIS_CONFIG"];

/// Lays every `PORTCULLIS_*` variable over `table`; unknown variables and unparsable
/// values become errors.
pub(super) fn overlay_environment(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    errors: &mut Vec<String>,
) {
    for (name, value) in env {
        if !name.starts_with("PORTCULLIS_") || NON_SETTING_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        let Some((section, key, kind)) = KEYS
            .iter()
            .find(|(section, key, _)| env_name(section, key) == name)
        else {
            // Test-suite variables (PORTCULLIS_TEST_*) are not settings either.
            if !name.starts_with("PORTCULLIS_TEST_") {
                errors.push(format!("unknown environment variable {name}"));
            }
            continue;
        };
        let parsed = match kind {
            Kind::Text => Ok(toml::Value::String(value)),
            Kind::Bool => match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
                "false" | "0" | "no" | "off" | "" => Ok(toml::Value::Boolean(false)),
                _ => Err(format!("{name} must be true or false")),
            },
            Kind::Count => value
                .trim()
                .parse::<u32>()
                .map(|n| toml::Value::Integer(i64::from(n)))
                .map_err(|_| format!("{name} must be a whole number")),
            Kind::List => Ok(toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )),
            Kind::Map => format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(toml::Value::is_table)
                .ok_or_else(|| {
                    format!("{name} must be a TOML inline table, e.g. {{ key = \"value\" }}")
                }),
        };
        match parsed {
            Ok(v) => {
                let target = if section.is_empty() {
                    &mut *table
                } else {
                    let entry = table
                        .entry(section.to_string())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    match entry.as_table_mut() {
                        Some(t) => t,
                        None => {
                            errors.push(format!("`{section}` must be a table"));
                            continue;
                        }
                    }
                };
                target.insert(key.to_string(), v);
            }
            Err(e) => errors.push(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::config::test_support::{env, minimal, repo_file};

    #[test]
    fn section_variables_reach_their_keys() {
        let mut e = minimal();
        e.extend(env(&[
            ("PORTCULLIS_SESSION_IDLE_TIMEOUT", "15m"),
            (
                "PORTCULLIS_ACCESS_ALLOWED_EMAIL_DOMAINS",
                "Example.com, example.org",
            ),
            (
                "PORTCULLIS_ACCESS_REQUIRED_CLAIMS",
                r#"{ groups = ["admin", "ops"] }"#,
            ),
            (
                "PORTCULLIS_PROVIDER_EXTRA_AUTHORIZE_PARAMS",
                r#"{ access_type = "offline" }"#,
            ),
            ("PORTCULLIS_PUBLIC_URL", "https://app.example.com"),
        ]));
        let c = Config::load_from(None, e).unwrap();
        assert_eq!(c.session.idle_timeout, Duration::from_secs(900));
        assert_eq!(
            c.access.allowed_email_domains,
            ["example.com", "example.org"]
        );
        assert_eq!(c.access.required_claims["groups"], ["admin", "ops"]);
        assert!(c.access.require_email_verified);
        assert_eq!(
            c.providers[0].settings.extra_authorize_params["access_type"],
            "offline"
        );
        assert!(c.is_https());
        assert_eq!(
            c.redirect_uri("default"),
            "https://app.example.com/auth/callback"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("pc-cfg-{}", crate::random::random_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(
            &file,
            "issuer = \"https://a.example.com\"\nclient_id = \"x\"\n[session]\nidle_timeout = \"1h\"\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&file), env(&[("PORTCULLIS_CLIENT_ID", "y")])).unwrap();
        assert_eq!(c.providers[0].client_id, "y");
        assert_eq!(c.session.idle_timeout, Duration::from_secs(3600));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_key_and_variable_is_documented() {
        let doc = std::fs::read_to_string(repo_file("docs/configuration.md")).unwrap();
        for (dotted, env) in all_keys() {
            let key = dotted.rsplit('.').next().unwrap();
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/configuration.md lacks `{key}`"
            );
            assert!(
                doc.contains(&format!("`{env}`")),
                "docs/configuration.md lacks `{env}`"
            );
        }
    }
}
