//! The `[access]` section: who may sign in, by email address, email domain and claims.
//! The rules themselves are applied by `session::access` at sign-in and every refresh.

use std::collections::BTreeMap;

use serde::Deserialize;

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

/// The `[access]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    pub(super) allowed_email_domains: Option<Vec<String>>,
    pub(super) allowed_emails: Option<Vec<String>>,
    pub(super) required_claims: Option<BTreeMap<String, ClaimValues>>,
    pub(super) require_email_verified: Option<bool>,
}

/// `required_claims` values: one string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ClaimValues {
    One(String),
    Many(Vec<String>),
}

impl RawAccess {
    /// Lower-cases the email rules; `require_email_verified` defaults to on when any
    /// email rule is set (an unverified address proves nothing).
    pub(super) fn validate(self, errors: &mut Vec<String>) -> AccessSettings {
        self.validate_as("access", errors)
    }

    /// [`RawAccess::validate`] for rules written under `section` (e.g. `routes[2]`).
    pub(super) fn validate_as(self, section: &str, errors: &mut Vec<String>) -> AccessSettings {
        let allowed_email_domains: Vec<String> = self
            .allowed_email_domains
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
            .collect();
        for d in &allowed_email_domains {
            if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                errors.push(format!(
                    "`{section}.allowed_email_domains`: `{d}` is not a domain"
                ));
            }
        }
        let allowed_emails: Vec<String> = self
            .allowed_emails
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.trim().to_ascii_lowercase())
            .collect();
        for e in &allowed_emails {
            if e.matches('@').count() != 1 {
                errors.push(format!(
                    "`{section}.allowed_emails`: `{e}` is not an email address"
                ));
            }
        }
        let required_claims = self
            .required_claims
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                ClaimValues::One(s) => (k, vec![s]),
                ClaimValues::Many(list) => (k, list),
            })
            .collect();
        let email_rules = !allowed_email_domains.is_empty() || !allowed_emails.is_empty();
        AccessSettings {
            require_email_verified: self.require_email_verified.unwrap_or(email_rules),
            allowed_email_domains,
            allowed_emails,
            required_claims,
        }
    }
}
