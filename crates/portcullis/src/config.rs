//! Typed settings, parsed and validated once at start-up.
//!
//! Sources, later wins: built-in defaults, the TOML file, then the environment
//! (`PORTCULLIS_<SECTION>_<KEY>`, top-level keys without a section). Every problem is
//! collected and reported as one line, so `portcullis check-config` shows them all.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

/// All problems found in a configuration, one human sentence each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

/// Where sessions, users and login transactions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
    Redis(String),
}

impl StoreLocation {
    fn parse(s: &str) -> Result<Self, String> {
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

    /// A description safe for logs: no password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite:{}", p.display()),
            Self::Postgres(u) | Self::Redis(u) => match Url::parse(u) {
                Ok(mut url) => {
                    let _ = url.set_password(None);
                    url.to_string()
                }
                Err(_) => "(unparsable url)".into(),
            },
        }
    }
}

/// Text or JSON log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Session lifetimes (PRODUCT.md "Sessions: the rules").
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub idle_timeout: Duration,
    pub absolute_lifetime: Duration,
    pub refresh_before: Duration,
    pub rotation_grace: Duration,
}

/// Who may sign in. Checked at login and at every refresh.
#[derive(Debug, Clone, Default)]
pub struct AccessSettings {
    /// Lower-cased domains; an email matches when the part after its last `@` is equal.
    pub allowed_email_domains: Vec<String>,
    /// Lower-cased full addresses.
    pub allowed_emails: Vec<String>,
    /// Claim name → accepted values (any one suffices).
    pub required_claims: BTreeMap<String, Vec<String>>,
    pub require_email_verified: bool,
}

/// Provider-specific knobs.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    pub extra_authorize_params: BTreeMap<String, String>,
    /// `None`: the provider's advertised asymmetric algorithms.
    pub allowed_algorithms: Option<Vec<String>>,
}

/// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0).
#[derive(Debug, Clone)]
pub struct LogoutSettings {
    /// After the local sign-out, continue to the provider's `end_session_endpoint`.
    pub provider_logout: bool,
    /// Send the session's last ID token as `id_token_hint` (it then passes through the
    /// browser in the redirect URL; off by default: SECURITY-CASES S02).
    pub id_token_hint: bool,
    /// Where the provider may send the browser back (exact URLs; the first is the
    /// default). Empty: the gateway's own `{prefix}/logged-out`.
    pub post_logout_redirect_uris: Vec<Url>,
}

/// The single-page-app code exchange contract (the seed's `/api/auth/callback`).
#[derive(Debug, Clone)]
pub struct SpaSettings {
    pub code_exchange: bool,
    pub code_exchange_path: String,
    pub redirect_uri: Option<Url>,
}

/// A client secret: never printed.
#[derive(Clone)]
pub struct ClientSecret(pub Zeroizing<String>);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
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

/// The validated configuration of a gateway.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Origin the browser sees, without a trailing slash, e.g. `https://app.example.com`.
    pub public_url: Url,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<ClientSecret>,
    pub scopes: Vec<String>,
    pub upstream: Option<Url>,
    pub store: StoreLocation,
    pub secret: Option<SecretKeys>,
    pub log: String,
    pub log_format: LogFormat,
    /// Path prefix of the gateway's own endpoints, e.g. `/auth`.
    pub prefix: String,
    pub public_paths: Vec<String>,
    pub session: SessionSettings,
    pub access: AccessSettings,
    pub provider: ProviderSettings,
    pub trusted_proxies: Vec<String>,
    /// Path patterns whose upstream requests carry `Authorization: Bearer <access token>`.
    pub token_relay: Vec<String>,
    pub csrf_header: String,
    pub spa: SpaSettings,
    pub logout: LogoutSettings,
}

impl Config {
    /// `https` public URL: cookies get `Secure` and the `__Host-` prefix.
    pub fn is_https(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// The redirect URI registered at the provider: public URL + prefix + `/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("{}{}/callback", self.public_origin(), self.prefix)
    }

    /// `scheme://host[:port]`, no trailing slash.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }

    /// Loads the file (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigErrors> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the file (if any) and the given environment variables.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigErrors(vec![format!(
                        "cannot read config file {}: {e}",
                        path.display()
                    )])
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigErrors(vec![format!(
                        "config file {} is not valid TOML: {}",
                        path.display(),
                        e.message()
                    )])
                })?
            }
            None => toml::Table::new(),
        };
        let mut errors = Vec::new();
        overlay_environment(&mut table, env, &mut errors);
        let raw: RawConfig = match toml::Value::Table(table).try_into() {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(format!("configuration: {}", e.message()));
                return Err(ConfigErrors(errors));
            }
        };
        let config = validate(raw, &mut errors);
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

// ---------------------------------------------------------------------------
// Raw, unvalidated shape of the file.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    public_url: Option<String>,
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Option<String>,
    upstream: Option<String>,
    store: Option<String>,
    secret: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    prefix: Option<String>,
    public_paths: Option<Vec<String>>,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    provider: RawProvider,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    csrf: RawCsrf,
    #[serde(default)]
    spa: RawSpa,
    #[serde(default)]
    logout: RawLogout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    idle_timeout: Option<String>,
    absolute_lifetime: Option<String>,
    refresh_before: Option<String>,
    rotation_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    allowed_email_domains: Option<Vec<String>>,
    allowed_emails: Option<Vec<String>>,
    required_claims: Option<BTreeMap<String, ClaimValues>>,
    require_email_verified: Option<bool>,
}

/// `required_claims` values: one string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClaimValues {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    extra_authorize_params: Option<BTreeMap<String, String>>,
    allowed_algorithms: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogout {
    provider_logout: Option<bool>,
    id_token_hint: Option<bool>,
    post_logout_redirect_uris: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    trusted_proxies: Option<Vec<String>>,
    token_relay: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsrf {
    header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpa {
    code_exchange: Option<bool>,
    code_exchange_path: Option<String>,
    redirect_uri: Option<String>,
}

// ---------------------------------------------------------------------------
// Environment overlay.

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
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
    ("", "upstream", Kind::Text),
    ("", "store", Kind::Text),
    ("", "secret", Kind::Text),
    ("", "log", Kind::Text),
    ("", "log_format", Kind::Text),
    ("", "prefix", Kind::Text),
    ("", "public_paths", Kind::List),
    ("session", "idle_timeout", Kind::Text),
    ("session", "absolute_lifetime", Kind::Text),
    ("session", "refresh_before", Kind::Text),
    ("session", "rotation_grace", Kind::Text),
    ("access", "allowed_email_domains", Kind::List),
    ("access", "allowed_emails", Kind::List),
    ("access", "required_claims", Kind::Map),
    ("access", "require_email_verified", Kind::Bool),
    ("provider", "extra_authorize_params", Kind::Map),
    ("provider", "allowed_algorithms", Kind::List),
    ("proxy", "trusted_proxies", Kind::List),
    ("proxy", "token_relay", Kind::List),
    ("logout", "provider_logout", Kind::Bool),
    ("logout", "id_token_hint", Kind::Bool),
    ("logout", "post_logout_redirect_uris", Kind::List),
    ("csrf", "header", Kind::Text),
    ("spa", "code_exchange", Kind::Bool),
    ("spa", "code_exchange_path", Kind::Text),
    ("spa", "redirect_uri", Kind::Text),
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

fn overlay_environment(
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

// ---------------------------------------------------------------------------
// Validation.

/// Parses `"30s"`, `"15m"`, `"24h"`, `"30d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("`{s}` has no unit; write e.g. \"30s\", \"15m\", \"24h\", \"30d\"")
    })?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like \"30s\", \"15m\", \"24h\", \"30d\""))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: unknown unit `{unit}`; use s, m, h or d")),
    };
    // Ten years bounds every lifetime; larger values are typos, and would overflow
    // timestamp arithmetic.
    const MAX_SECONDS: u64 = 10 * 365 * 86_400;
    n.checked_mul(seconds)
        .filter(|total| *total <= MAX_SECONDS)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too large (at most 3650d)"))
}

fn duration_setting(
    value: Option<String>,
    name: &str,
    default: Duration,
    errors: &mut Vec<String>,
) -> Duration {
    match value {
        None => default,
        Some(v) => parse_duration(&v).unwrap_or_else(|e| {
            errors.push(format!("`{name}`: {e}"));
            default
        }),
    }
}

fn required(value: Option<String>, name: &str, env: &str, errors: &mut Vec<String>) -> String {
    match value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
        Some(v) => v,
        None => {
            errors.push(format!("`{name}` is required (or set {env})"));
            String::new()
        }
    }
}

fn validate(raw: RawConfig, errors: &mut Vec<String>) -> Option<Config> {
    let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen: SocketAddr = match listen_text.parse() {
        Ok(a) => a,
        Err(_) => {
            errors.push(format!(
                "`listen`: `{listen_text}` is not an address:port like 127.0.0.1:8080"
            ));
            return None;
        }
    };

    let public_url = match raw.public_url {
        Some(text) => match parse_public_url(&text) {
            Ok(u) => u,
            Err(e) => {
                errors.push(e);
                return None;
            }
        },
        None => {
            if !listen.ip().is_loopback() {
                errors.push(format!(
                    "`public_url` is required when listening on the non-loopback address {listen} (set PORTCULLIS_PUBLIC_URL to the origin browsers use)"
                ));
            }
            let host = match listen.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            Url::parse(&format!("http://{host}:{}", listen.port())).ok()?
        }
    };

    let issuer = required(raw.issuer, "issuer", "PORTCULLIS_ISSUER", errors);
    if !issuer.is_empty() {
        match Url::parse(&issuer) {
            Ok(u) if u.scheme() == "https" || is_loopback_http(&u) => {
                if u.query().is_some() || u.fragment().is_some() {
                    errors.push("`issuer` must not have a query or fragment".into());
                }
            }
            Ok(_) => errors.push(
                "`issuer` must be an https URL (http is allowed only for loopback development providers)".into(),
            ),
            Err(_) => errors.push(format!("`issuer`: `{issuer}` is not a URL")),
        }
    }
    let client_id = required(raw.client_id, "client_id", "PORTCULLIS_CLIENT_ID", errors);
    let client_secret = raw
        .client_secret
        .filter(|s| !s.is_empty())
        .map(|s| ClientSecret(Zeroizing::new(s)));

    let scopes: Vec<String> = raw
        .scopes
        .unwrap_or_else(|| "openid email profile offline_access".into())
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        errors.push("`scopes` must include `openid`".into());
    }

    let upstream = raw
        .upstream
        .filter(|s| !s.is_empty())
        .and_then(|u| match Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            _ => {
                errors.push(format!("`upstream`: `{u}` is not an http(s) URL"));
                None
            }
        });

    let store = match StoreLocation::parse(raw.store.as_deref().unwrap_or("sqlite:portcullis.db")) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            StoreLocation::Sqlite(PathBuf::from("portcullis.db"))
        }
    };

    let secret = raw
        .secret
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| SecretKeys::parse(&s).map_err(|e| errors.push(e)).ok());
    if secret.is_none() && !matches!(store, StoreLocation::Sqlite(_)) {
        errors.push(
            "`secret` is required with a postgres or redis store, so that every instance shares the key ring (set PORTCULLIS_SECRET)".into(),
        );
    }

    let log = raw.log.unwrap_or_else(|| "info".into());
    let log_format = match raw.log_format.as_deref() {
        None | Some("text") | Some("") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errors.push(format!(
                "`log_format`: `{other}` is neither `text` nor `json`"
            ));
            LogFormat::Text
        }
    };

    let prefix = raw.prefix.unwrap_or_else(|| "/auth".into());
    if !is_valid_prefix(&prefix) {
        errors.push(format!(
            "`prefix`: `{prefix}` must start with `/`, not end with `/`, and use only letters, digits, `-`, `_`, `.` and `/`"
        ));
    }

    let public_paths = raw.public_paths.unwrap_or_default();
    for p in &public_paths {
        if crate::http::path::PathPattern::parse(p).is_none() {
            errors.push(format!(
                "`public_paths`: `{p}` must be a normalised path (`/health`) or a prefix ending in `/*` (`/static/*`)"
            ));
        }
    }

    let session = SessionSettings {
        idle_timeout: duration_setting(
            raw.session.idle_timeout,
            "session.idle_timeout",
            Duration::from_secs(24 * 3600),
            errors,
        ),
        absolute_lifetime: duration_setting(
            raw.session.absolute_lifetime,
            "session.absolute_lifetime",
            Duration::from_secs(30 * 86_400),
            errors,
        ),
        refresh_before: duration_setting(
            raw.session.refresh_before,
            "session.refresh_before",
            Duration::from_secs(60),
            errors,
        ),
        rotation_grace: duration_setting(
            raw.session.rotation_grace,
            "session.rotation_grace",
            Duration::from_secs(30),
            errors,
        ),
    };
    if session.idle_timeout.is_zero() || session.absolute_lifetime.is_zero() {
        errors.push(
            "`session.idle_timeout` and `session.absolute_lifetime` must be more than 0s".into(),
        );
    }

    let allowed_email_domains: Vec<String> = raw
        .access
        .allowed_email_domains
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
        .collect();
    for d in &allowed_email_domains {
        if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
            errors.push(format!(
                "`access.allowed_email_domains`: `{d}` is not a domain"
            ));
        }
    }
    let allowed_emails: Vec<String> = raw
        .access
        .allowed_emails
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.trim().to_ascii_lowercase())
        .collect();
    for e in &allowed_emails {
        if e.matches('@').count() != 1 {
            errors.push(format!(
                "`access.allowed_emails`: `{e}` is not an email address"
            ));
        }
    }
    let required_claims = raw
        .access
        .required_claims
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            ClaimValues::One(s) => (k, vec![s]),
            ClaimValues::Many(list) => (k, list),
        })
        .collect();
    let email_rules = !allowed_email_domains.is_empty() || !allowed_emails.is_empty();
    let access = AccessSettings {
        require_email_verified: raw.access.require_email_verified.unwrap_or(email_rules),
        allowed_email_domains,
        allowed_emails,
        required_claims,
    };

    let extra_authorize_params = raw.provider.extra_authorize_params.unwrap_or_default();
    for key in extra_authorize_params.keys() {
        if RESERVED_AUTHORIZE_PARAMS.contains(&key.as_str()) {
            errors.push(format!(
                "`provider.extra_authorize_params`: `{key}` is set by the gateway itself and cannot be overridden"
            ));
        }
    }
    let allowed_algorithms = raw.provider.allowed_algorithms;
    if let Some(algs) = &allowed_algorithms {
        if algs.is_empty() {
            errors.push("`provider.allowed_algorithms` must not be empty".into());
        }
        for a in algs {
            if crate::provider::Algorithm::parse(a).is_none() {
                errors.push(format!(
                    "`provider.allowed_algorithms`: `{a}` is not a supported JWS algorithm (`none` never is)"
                ));
            } else if a.starts_with("HS") && client_secret.is_none() {
                errors.push(format!(
                    "`provider.allowed_algorithms`: `{a}` needs `client_secret` (HMAC ID tokens are keyed by it)"
                ));
            }
        }
    }

    let trusted_proxies = raw.proxy.trusted_proxies.unwrap_or_default();
    for cidr in &trusted_proxies {
        if !is_cidr(cidr) {
            errors.push(format!(
                "`proxy.trusted_proxies`: `{cidr}` is not an address or CIDR like 10.0.0.0/8"
            ));
        }
    }

    let token_relay = raw.proxy.token_relay.unwrap_or_default();
    for p in &token_relay {
        if crate::http::path::PathPattern::parse(p).is_none() {
            errors.push(format!(
                "`proxy.token_relay`: `{p}` must be a normalised path (`/api`) or a prefix ending in `/*` (`/api/*`)"
            ));
        }
    }

    let csrf_header = raw.csrf.header.unwrap_or_else(|| "X-CSRF".into());
    if csrf_header.is_empty()
        || !csrf_header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        errors.push(format!(
            "`csrf.header`: `{csrf_header}` is not a header name"
        ));
    }

    let mut post_logout_redirect_uris = Vec::new();
    for u in raw.logout.post_logout_redirect_uris.unwrap_or_default() {
        match Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "https" | "http") && url.fragment().is_none() => {
                post_logout_redirect_uris.push(url)
            }
            _ => errors.push(format!(
                "`logout.post_logout_redirect_uris`: `{u}` is not an absolute http(s) URL without a fragment"
            )),
        }
    }
    let logout = LogoutSettings {
        provider_logout: raw.logout.provider_logout.unwrap_or(false),
        id_token_hint: raw.logout.id_token_hint.unwrap_or(false),
        post_logout_redirect_uris,
    };

    let spa = SpaSettings {
        code_exchange: raw.spa.code_exchange.unwrap_or(false),
        code_exchange_path: raw
            .spa
            .code_exchange_path
            .unwrap_or_else(|| "/api/auth/callback".into()),
        redirect_uri: raw.spa.redirect_uri.and_then(|u| match Url::parse(&u) {
            Ok(url) => Some(url),
            Err(_) => {
                errors.push(format!("`spa.redirect_uri`: `{u}` is not a URL"));
                None
            }
        }),
    };
    if spa.code_exchange && spa.redirect_uri.is_none() {
        errors.push("`spa.redirect_uri` is required when `spa.code_exchange` is true".into());
    }
    let exchange_path = &spa.code_exchange_path;
    if crate::http::path::PathPattern::parse(exchange_path).is_none()
        || exchange_path.ends_with('*')
        || exchange_path == &prefix
        || exchange_path.starts_with(&format!("{prefix}/"))
        || exchange_path == "/healthz"
        || exchange_path == "/readyz"
    {
        errors.push(format!(
            "`spa.code_exchange_path`: `{exchange_path}` must be a normalised path outside `{prefix}` and not /healthz or /readyz"
        ));
    }

    Some(Config {
        listen,
        public_url,
        issuer,
        client_id,
        client_secret,
        scopes,
        upstream,
        store,
        secret,
        log,
        log_format,
        prefix,
        public_paths,
        session,
        access,
        provider: ProviderSettings {
            extra_authorize_params,
            allowed_algorithms,
        },
        trusted_proxies,
        token_relay,
        csrf_header,
        spa,
        logout,
    })
}

/// Authorize parameters the gateway sets itself; configuration may not replace them.
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "request",
    "request_uri",
];

fn is_loopback_http(u: &Url) -> bool {
    u.scheme() == "http"
        && match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        }
}

fn parse_public_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|_| format!("`public_url`: `{text}` is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("`public_url` must be http:// or https://".into());
    }
    if url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err("`public_url` must be an origin like https://app.example.com".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "`public_url` must be an origin with no path, query or fragment (mount paths with `prefix`)".into(),
        );
    }
    Ok(url)
}

fn is_valid_prefix(p: &str) -> bool {
    p.len() > 1
        && p.starts_with('/')
        && !p.ends_with('/')
        && !p.contains("//")
        && !p.split('/').any(|seg| seg == "." || seg == "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
}

fn is_cidr(s: &str) -> bool {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    match bits {
        None => true,
        Some(b) => b
            .parse::<u8>()
            .is_ok_and(|n| n <= if ip.is_ipv4() { 32 } else { 128 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> Vec<(String, String)> {
        env(&[
            ("PORTCULLIS_ISSUER", "https://id.example.com"),
            ("PORTCULLIS_CLIENT_ID", "app"),
        ])
    }

    #[test]
    fn defaults_follow_the_product_table() {
        let c = Config::load_from(None, minimal()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.public_origin(), "http://127.0.0.1:8080");
        assert_eq!(c.redirect_uri(), "http://127.0.0.1:8080/auth/callback");
        assert_eq!(c.scopes, ["openid", "email", "profile", "offline_access"]);
        assert_eq!(c.store, StoreLocation::Sqlite("portcullis.db".into()));
        assert_eq!(c.prefix, "/auth");
        assert_eq!(c.session.idle_timeout, Duration::from_secs(86_400));
        assert_eq!(
            c.session.absolute_lifetime,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(c.session.refresh_before, Duration::from_secs(60));
        assert_eq!(c.session.rotation_grace, Duration::from_secs(30));
        assert_eq!(c.csrf_header, "X-CSRF");
        assert_eq!(c.spa.code_exchange_path, "/api/auth/callback");
        assert!(!c.access.require_email_verified);
        assert!(!c.is_https());
    }

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
        assert_eq!(c.provider.extra_authorize_params["access_type"], "offline");
        assert!(c.is_https());
        assert_eq!(c.redirect_uri(), "https://app.example.com/auth/callback");
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
        assert_eq!(c.client_id, "y");
        assert_eq!(c.session.idle_timeout, Duration::from_secs(3600));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = Config::load_from(
            None,
            env(&[
                ("PORTCULLIS_LISTEN", "0.0.0.0:8080"),
                ("PORTCULLIS_SESSION_IDLE_TIMEOUT", "ten minutes"),
                ("PORTCULLIS_PROVIDER_ALLOWED_ALGORITHMS", "none"),
                ("PORTCULLIS_STORE", "redis://127.0.0.1"),
                ("PORTCULLIS_TYPO", "1"),
            ]),
        )
        .unwrap_err()
        .0;
        let all = errs.join("\n");
        for needle in [
            "public_url",
            "issuer",
            "client_id",
            "idle_timeout",
            "allowed_algorithms",
            "`secret` is required",
            "PORTCULLIS_TYPO",
        ] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(2_592_000)
        );
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("3651d").is_err());
        assert!(parse_duration("3650d").is_ok());
    }

    #[test]
    fn public_url_must_be_an_origin() {
        for bad in [
            "ftp://x",
            "https://u:p@x.com",
            "https://x.com/app",
            "https://x.com/?a",
        ] {
            let mut e = minimal();
            e.push(("PORTCULLIS_PUBLIC_URL".into(), bad.into()));
            assert!(Config::load_from(None, e).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_keys_must_be_32_bytes() {
        assert!(SecretKeys::parse("c2hvcnQ=").is_err());
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(
            SecretKeys::parse(&format!("{good},{good}"))
                .unwrap()
                .0
                .len(),
            2
        );
    }

    #[test]
    fn reserved_authorize_params_cannot_be_overridden() {
        let mut e = minimal();
        e.push((
            "PORTCULLIS_PROVIDER_EXTRA_AUTHORIZE_PARAMS".into(),
            r#"{ redirect_uri = "https://evil" }"#.into(),
        ));
        assert!(Config::load_from(None, e).is_err());
    }
}

#[cfg(test)]
mod documentation_tests {
    use super::*;

    fn repo_file(path: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path)
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

    #[test]
    fn the_example_configurations_are_valid() {
        for name in ["keycloak", "auth0", "google"] {
            let path = repo_file(&format!("examples/{name}.toml"));
            let config = Config::load_from(Some(&path), Vec::new())
                .unwrap_or_else(|e| panic!("examples/{name}.toml: {e}"));
            assert!(config.is_https());
        }
    }
}
