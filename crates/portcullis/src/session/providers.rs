//! What follows from a session's provider (docs/providers/several.md): which email
//! addresses it may vouch for (nOAuth), which access rules apply to its users, and
//! whether its tokens are DPoP-bound.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::access::{AccessDenied, access_refusals};
use super::{SessionError, Sessions};
use crate::jose::dpop::DpopKey;
use crate::provider::Provider;

impl Sessions {
    /// The email claims of `provider`'s user as the gateway believes them:
    /// `assume_email_verified` fills an absent `email_verified`, and (G12, nOAuth) an
    /// address in a domain another provider lists in `email_domains` is never verified
    /// here, whatever this provider says: only the provider that owns a domain vouches
    /// for its addresses. Headers, the assertion, `/auth/session` and every rule read
    /// the result.
    pub(crate) fn email_trust(&self, provider: &Provider, claims: &mut Map<String, Value>) {
        super::claims::assume_email_verified(claims, provider.settings().assume_email_verified);
        let Some(domain) = claims
            .get("email")
            .and_then(Value::as_str)
            .and_then(|e| e.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
        else {
            return;
        };
        let owner = self
            .config
            .providers
            .iter()
            .find(|p| p.email_domains.contains(&domain));
        if let Some(owner) = owner
            && owner.id != provider.id()
            && super::claims::email_verified(claims)
        {
            self.events.count("email_domain_not_owned");
            tracing::warn!(
                event = "email_domain_not_owned",
                provider = provider.id(),
                owner = owner.id.as_str(),
                domain = domain.as_str(),
                "security event: a provider asserted a verified address in a domain another provider owns (nOAuth); the address counts as unverified"
            );
            claims.insert("email_verified".to_owned(), Value::Bool(false));
        }
    }

    /// Every access rule `provider`'s user fails: `[access]`, then the provider's own.
    pub(crate) fn provider_access_refusals(
        &self,
        provider_id: &str,
        claims: &Map<String, Value>,
    ) -> Vec<AccessDenied> {
        let mut refusals = access_refusals(&self.access_rules(), claims);
        if let Some(own) = self.provider_access.load().get(provider_id) {
            refusals.extend(access_refusals(own, claims));
        }
        refusals
    }

    /// [`Sessions::provider_access_refusals`], the first refusal as an error.
    pub(crate) fn check_provider_access(
        &self,
        provider: &Provider,
        claims: &Map<String, Value>,
    ) -> Result<(), AccessDenied> {
        match self
            .provider_access_refusals(provider.id(), claims)
            .into_iter()
            .next()
        {
            Some(denied) => Err(denied),
            None => Ok(()),
        }
    }

    /// The gateway's DPoP key when `provider` binds its tokens (`provider.dpop`).
    pub(crate) async fn dpop_key_for(
        &self,
        provider: &Provider,
    ) -> Result<Option<Arc<DpopKey>>, SessionError> {
        self.dpop_key_if(provider.settings().dpop).await
    }
}

/// Each provider's own access rules, by id (replaced by a reload).
pub(crate) type ProviderAccess = std::collections::BTreeMap<String, crate::config::AccessSettings>;

/// The per-provider rules of `config`.
pub(crate) fn provider_access(config: &crate::config::Config) -> ProviderAccess {
    config
        .providers
        .iter()
        .map(|p| (p.id.clone(), p.access.clone()))
        .collect()
}

impl Sessions {
    /// The provider of a stored session (`UnknownProvider` once its entry is gone from
    /// the configuration: the session cannot be refreshed or ended there).
    pub(crate) fn session_provider(
        &self,
        record: &crate::store::SessionRecord,
    ) -> Result<&Provider, SessionError> {
        self.provider(&record.provider_id)
    }
}
