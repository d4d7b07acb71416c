//! Where sessions live and the keys that seal them: `store`, `store_prefix` and `secret`
//! (top level).

use std::path::PathBuf;

use base64::Engine as _;
use url::Url;
use zeroize::Zeroizing;

/// Where sessions, users and login transactions live. `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
    Redis(String),
}

impl StoreLocation {
    /// Parses a `store` value: `sqlite:PATH`, `postgres://…` or `redis://…`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err(
                    "`store`: `sqlite:` needs a file path, e.g. `sqlite:portcullis.db`".into(),
                );
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(s.to_owned()));
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            return Ok(Self::Redis(s.to_owned()));
        }
        Err("`store` must start with `sqlite:`, `postgres://` or `redis://`".into())
    }

    /// A description safe for logs: no password, no query.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite:{}", p.display()),
            Self::Postgres(u) | Self::Redis(u) => match Url::parse(u) {
                Ok(mut url) => {
                    let _ = url.set_password(None);
                    url.set_query(None);
                    url.to_string()
                }
                Err(_) => "(unparsable url)".into(),
            },
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreLocation({})", self.describe())
    }
}

/// Key ring material: the first key seals, all keys open.
#[derive(Clone)]
pub struct SecretKeys(pub Vec<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKeys({} keys, <redacted>)", self.0.len())
    }
}

impl SecretKeys {
    /// Parses `PORTCULLIS_SECRET`: comma-separated base64 (standard or url-safe) 32-byte keys.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, part) in s.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                continue;
            }
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(part)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part))
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(part))
                    .map_err(|_| format!("`secret`: key {} is not valid base64", i + 1))?,
            );
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                format!(
                    "`secret`: key {} is {} bytes; each key must be exactly 32 bytes (generate one with `openssl rand -base64 32`)",
                    i + 1,
                    bytes.len()
                )
            })?;
            keys.push(Zeroizing::new(key));
        }
        if keys.is_empty() {
            return Err("`secret` is set but holds no key".into());
        }
        Ok(Self(keys))
    }
}

/// `store`, default `sqlite:portcullis.db` (also what an unparsable value falls back to,
/// with an error, so the other checks can go on).
pub(super) fn location(value: Option<String>, errors: &mut Vec<String>) -> StoreLocation {
    match StoreLocation::parse(value.as_deref().unwrap_or("sqlite:portcullis.db")) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            StoreLocation::Sqlite(PathBuf::from("portcullis.db"))
        }
    }
}

/// `store_prefix`, default `portcullis`: prefixes table names on PostgreSQL and keys on
/// Redis, so several gateways can share one server. It is pasted into SQL identifiers,
/// hence the narrow alphabet (`^[a-z][a-z0-9_]{0,29}$`), well inside PostgreSQL's
/// 63-byte identifier limit once a table name is appended.
pub(super) fn prefix(value: Option<String>, errors: &mut Vec<String>) -> String {
    let prefix = value.unwrap_or_else(|| "portcullis".into());
    if !is_valid_store_prefix(&prefix) {
        errors.push(format!(
            "`store_prefix`: `{prefix}` must be 1–30 characters of a–z, 0–9 and `_`, starting with a letter"
        ));
    }
    prefix
}

/// Whether `p` may be used as `store_prefix` (it is pasted into SQL identifiers).
pub fn is_valid_store_prefix(p: &str) -> bool {
    p.len() <= 30
        && p.starts_with(|c: char| c.is_ascii_lowercase())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `secret`: optional with SQLite (the gateway generates a key beside the database),
/// required with a shared store so that every instance shares the key ring.
pub(super) fn secret(
    value: Option<String>,
    file: Option<&std::path::Path>,
    store: &StoreLocation,
    errors: &mut Vec<String>,
) -> Option<SecretKeys> {
    let value = value.filter(|s| !s.trim().is_empty());
    let given = value.is_some() || file.is_some();
    let secret = match (value, file) {
        (Some(_), Some(_)) => {
            errors.push(
                "`secret` and `secret_file` are both set; keep one (the file can be re-read on SIGHUP)".into(),
            );
            None
        }
        (Some(s), None) => SecretKeys::parse(&s).map_err(|e| errors.push(e)).ok(),
        (None, Some(path)) => match read_secret_file(path) {
            Ok(keys) => Some(keys),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        (None, None) => None,
    };
    if !given && !matches!(store, StoreLocation::Sqlite(_)) {
        errors.push(
            "`secret` is required with a postgres or redis store, so that every instance shares the key ring (set PORTCULLIS_SECRET or PORTCULLIS_SECRET_FILE)".into(),
        );
    }
    secret
}

/// Reads `secret_file`: the same comma- (or newline-) separated keys as `secret`.
pub fn read_secret_file(path: &std::path::Path) -> Result<SecretKeys, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("`secret_file`: cannot read {}: {e}", path.display()))?;
    let text = Zeroizing::new(text.replace(['\n', '\r'], ","));
    SecretKeys::parse(&text).map_err(|e| format!("`secret_file` {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
