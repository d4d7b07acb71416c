//! The dev provider's configuration (TOML, exactly the keys of docs/idp.md
//! "Configuration"). Plaintext passwords are hashed with argon2id when loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Deserialize;
use url::Url;

/// All problems found, one sentence each.
#[derive(Debug, thiserror::Error)]
#[error("invalid idp configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: String,
    listen: String,
    store: Option<String>,
    access_token_ttl: Option<String>,
    id_token_ttl: Option<String>,
    refresh_token_ttl: Option<String>,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    secret: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    /// `client_credentials`: the APIs (RFC 8707 resource indicators) this client may get
    /// access tokens for, acting as itself. Without it the grant is refused.
    #[serde(default)]
    resources: Vec<String>,
    /// The scopes a client-credentials token may carry (all of them by default).
    #[serde(default)]
    scopes: Vec<String>,
    backchannel_logout_uri: Option<String>,
    /// A `private_key_jwt` client's public keys: a JWK set (what the gateway serves at
    /// `{prefix}/client-jwks.json`), as a TOML table or a JSON string.
    jwks: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password: Option<String>,
    password_hash: Option<String>,
    email: Option<String>,
    name: Option<String>,
}

/// A registered client.
#[derive(Clone)]
pub struct Client {
    pub id: String,
    /// `None` (and no `jwks`): a public client (PKCE only,
    /// `token_endpoint_auth_method=none`).
    pub secret: Option<String>,
    /// A `private_key_jwt` client's keys.
    pub jwks: Option<jsonwebtoken::jwk::JwkSet>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    /// A machine client's APIs (`client_credentials`); empty: the grant is refused.
    pub resources: Vec<String>,
    /// The scopes its tokens may carry.
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("confidential", &self.secret.is_some())
            .field("redirect_uris", &self.redirect_uris)
            .finish_non_exhaustive()
    }
}

/// A user who can sign in; `username` is also the `sub`.
#[derive(Clone)]
pub struct User {
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl User {
    /// Checks a password against the stored argon2 hash.
    pub fn password_matches(&self, password: &str) -> bool {
        PasswordHash::new(&self.password_hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// No trailing slash.
    pub issuer: String,
    pub listen: SocketAddr,
    pub store: PathBuf,
    pub access_token_ttl: Duration,
    pub id_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub clients: Vec<Client>,
    pub users: Vec<User>,
}

impl IdpConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", path.display())]))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![e.message().to_owned()]))?;
        let mut errors = Vec::new();
        let issuer = raw.issuer.trim_end_matches('/').to_owned();
        match Url::parse(&issuer) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.query().is_none() => {}
            _ => errors.push(format!("`issuer`: `{issuer}` is not an http(s) URL")),
        }
        let listen = raw.listen.parse().unwrap_or_else(|_| {
            errors.push(format!("`listen`: `{}` is not an address:port", raw.listen));
            SocketAddr::from(([127, 0, 0, 1], 9100))
        });
        let store = match raw
            .store
            .as_deref()
            .unwrap_or("sqlite:idp.db")
            .strip_prefix("sqlite:")
        {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                errors.push("`store` must be `sqlite:PATH`".into());
                PathBuf::from("idp.db")
            }
        };
        let mut ttl = |value: Option<String>, name: &str, default: u64| match value {
            None => Duration::from_secs(default),
            Some(v) => portcullis::config::parse_duration(&v).unwrap_or_else(|e| {
                errors.push(format!("`{name}`: {e}"));
                Duration::from_secs(default)
            }),
        };
        let access_token_ttl = ttl(raw.access_token_ttl, "access_token_ttl", 300);
        let id_token_ttl = ttl(raw.id_token_ttl, "id_token_ttl", 300);
        let refresh_token_ttl = ttl(raw.refresh_token_ttl, "refresh_token_ttl", 30 * 86_400);

        let clients = clients(raw.clients, &mut errors);
        let users = users(raw.users, &mut errors);
        if errors.is_empty() {
            Ok(Self {
                issuer,
                listen,
                store,
                access_token_ttl,
                id_token_ttl,
                refresh_token_ttl,
                clients,
                users,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    pub fn user(&self, username: &str) -> Option<&User> {
        self.users.iter().find(|u| u.username == username)
    }
}

/// The `[[clients]]` as written, checked: unique ids, redirect URIs, one authentication
/// method each.
fn clients(raw: Vec<RawClient>, errors: &mut Vec<String>) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for c in raw {
        if c.id.is_empty() || clients.iter().any(|x| x.id == c.id) {
            errors.push(format!(
                "client `{}`: ids must be unique and not empty",
                c.id
            ));
        }
        if c.secret.as_deref() == Some("") {
            errors.push(format!(
                "client `{}`: an empty `secret` is not a secret; omit it for a public client",
                c.id
            ));
        }
        if c.redirect_uris.is_empty() && c.resources.is_empty() {
            errors.push(format!(
                "client `{}`: at least one redirect_uri (or, for a machine client, one of `resources`) is required",
                c.id
            ));
        }
        if !c.resources.is_empty() && c.secret.is_none() && c.jwks.is_none() {
            errors.push(format!(
                "client `{}`: a machine client (`resources`) must authenticate: give it a `secret` or `jwks`",
                c.id
            ));
        }
        for r in &c.resources {
            match Url::parse(r) {
                Ok(u) if u.fragment().is_none() && matches!(u.scheme(), "http" | "https") => {}
                _ => errors.push(format!(
                    "client `{}`: resource `{r}` is not an absolute http(s) URL without fragment (RFC 8707)",
                    c.id
                )),
            }
        }
        for uri in c
            .redirect_uris
            .iter()
            .chain(&c.post_logout_redirect_uris)
            .chain(c.backchannel_logout_uri.iter())
        {
            match Url::parse(uri) {
                Ok(u) if u.fragment().is_none() && matches!(u.scheme(), "http" | "https") => {}
                _ => errors.push(format!(
                    "client `{}`: `{uri}` is not an absolute http(s) URL without fragment",
                    c.id
                )),
            }
        }
        let jwks = c.jwks.and_then(|v| client_jwks(&c.id, v, errors));
        if jwks.is_some() && c.secret.is_some() {
            errors.push(format!(
                "client `{}`: set `secret` or `jwks`, not both (one authentication method per client)",
                c.id
            ));
        }
        clients.push(Client {
            id: c.id,
            secret: c.secret,
            jwks,
            redirect_uris: c.redirect_uris,
            post_logout_redirect_uris: c.post_logout_redirect_uris,
            backchannel_logout_uri: c.backchannel_logout_uri.filter(|u| !u.is_empty()),
            resources: c.resources,
            scopes: c.scopes,
        });
    }
    clients
}

/// The `[[users]]` as written, checked: unique names, one password form (a plain one
/// is hashed here).
fn users(raw: Vec<RawUser>, errors: &mut Vec<String>) -> Vec<User> {
    let mut users: Vec<User> = Vec::new();
    for u in raw {
        if u.username.is_empty()
            || u.username.len() > 255
            || users.iter().any(|x| x.username == u.username)
        {
            errors.push(format!(
                "user `{}`: usernames must be unique, 1–255 characters",
                u.username
            ));
        }
        let password_hash = match (u.password, u.password_hash) {
            (Some(p), None) => match hash_password(&p) {
                Ok(h) => h,
                Err(e) => {
                    errors.push(format!("user `{}`: {e}", u.username));
                    continue;
                }
            },
            (None, Some(h))
                if PasswordHash::new(&h)
                    .is_ok_and(|p| p.algorithm.as_str().starts_with("argon2")) =>
            {
                h
            }
            (None, Some(_)) => {
                errors.push(format!(
                    "user `{}`: `password_hash` is not an argon2 PHC string",
                    u.username
                ));
                continue;
            }
            _ => {
                errors.push(format!(
                    "user `{}`: set exactly one of `password` and `password_hash`",
                    u.username
                ));
                continue;
            }
        };
        users.push(User {
            username: u.username,
            password_hash,
            email: u.email,
            name: u.name,
        });
    }
    users
}

/// A client's `jwks`: a JWK set with at least one key, as a TOML table or JSON text.
fn client_jwks(
    id: &str,
    value: toml::Value,
    errors: &mut Vec<String>,
) -> Option<jsonwebtoken::jwk::JwkSet> {
    let json = match value {
        toml::Value::String(text) => serde_json::from_str(&text).ok(),
        other => serde_json::to_value(other).ok(),
    };
    match json.and_then(|j| serde_json::from_value::<jsonwebtoken::jwk::JwkSet>(j).ok()) {
        Some(set) if !set.keys.is_empty() => Some(set),
        _ => {
            errors.push(format!(
                "client `{id}`: `jwks` is not a JWK set with at least one key"
            ));
            None
        }
    }
}

/// argon2id with the crate's defaults and a CSPRNG salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&portcullis::random::random_bytes::<16>())
        .map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
issuer = "http://127.0.0.1:9100"
listen = "127.0.0.1:9100"
[[clients]]
id = "app"
redirect_uris = ["http://127.0.0.1:8080/auth/callback"]
[[users]]
username = "alice"
password = "alice"
email = "alice@example.com"
name = "Alice Example"
"#;

    #[test]
    fn passwords_are_hashed_with_argon2id_at_load() {
        let c = IdpConfig::parse(GOOD).unwrap();
        let alice = c.user("alice").unwrap();
        assert!(alice.password_hash.starts_with("$argon2id$"));
        assert!(!alice.password_hash.contains("alice\""));
        assert!(alice.password_matches("alice"));
        assert!(!alice.password_matches("Alice"));
        assert_eq!(c.store, PathBuf::from("idp.db"));
        assert_eq!(c.access_token_ttl, Duration::from_secs(300));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(IdpConfig::parse(&format!("{GOOD}\nsurprise = 1\n")).is_err());
        let bad = GOOD.replace(
            "redirect_uris = [\"http://127.0.0.1:8080/auth/callback\"]",
            "redirect_uris = [\"/relative\"]",
        );
        assert!(IdpConfig::parse(&bad).is_err());
    }
}
