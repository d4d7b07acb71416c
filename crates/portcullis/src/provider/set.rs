//! The configured providers, side by side: found by id (a session's, a callback's, a
//! login's choice) or by the issuer a token names (back-channel logout). Each keeps
//! its own metadata, keys, client authentication and DPoP nonces; nothing is shared
//! between them but the HTTP client's settings.

use super::Provider;

/// Every configured provider, in the order written (at least one).
#[derive(Debug)]
pub struct Providers {
    list: Vec<Provider>,
    /// `[[bearer]]` issuers that are not providers (`bearer-N`): their discovery and
    /// keys verify access tokens; they never sign anyone in.
    extra: Vec<Provider>,
}

impl Providers {
    /// The providers, in configuration order. Ids are unique and no two accept one
    /// issuer (the configuration checks both).
    pub fn new(list: Vec<Provider>) -> Self {
        Self {
            list,
            extra: Vec::new(),
        }
    }

    /// With the `[[bearer]]` entries' extra issuers.
    pub fn with_extra_issuers(mut self, extra: Vec<Provider>) -> Self {
        self.extra = extra;
        self
    }

    /// The provider or extra issuer `id` whose keys verify a `[[bearer]]` entry's tokens.
    pub fn token_issuer(&self, id: &str) -> Option<&Provider> {
        self.get(id)
            .or_else(|| self.extra.iter().find(|p| p.id() == id))
    }

    /// The provider `id`.
    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.id() == id)
    }

    /// The provider that speaks as `iss` (a multi-tenant one for any allowed tenant).
    pub fn by_issuer(&self, iss: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.settings().accepts_issuer(iss))
    }

    /// The provider a token names in its (not yet verified) `iss`, with that `iss`:
    /// whoever verifies the token next uses this provider's keys and rules only.
    pub fn for_token(&self, token: &str) -> Option<(&Provider, String)> {
        let jwt = super::id_token::parse_unverified(token, &super::Algorithm::ALL).ok()?;
        let iss = jwt.claims.get("iss")?.as_str()?.to_owned();
        Some((self.by_issuer(&iss)?, iss))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
