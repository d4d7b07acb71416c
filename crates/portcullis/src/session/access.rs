//! Who may sign in: `access.*` rules, checked at login and at every refresh.
//! Email rules compare the exact domain after the single `@` (no suffix matching), and
//! count only addresses the provider says are verified when so configured.

use serde_json::{Map, Value};

use crate::config::AccessSettings;

/// Why a user was refused. The code is stable; the sentence is for the 403 page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    #[error("your email address is not verified with the identity provider")]
    EmailNotVerified,
    #[error("your account has no usable email address, which this application requires")]
    NoEmail,
    #[error("your email address is not allowed to use this application")]
    EmailNotAllowed,
    #[error("your account lacks a required `{0}` value")]
    MissingClaim(String),
    #[error("accounts from your identity provider may not use this part of the application")]
    ProviderNotAllowed,
}

impl AccessDenied {
    pub fn code(&self) -> &'static str {
        match self {
            Self::EmailNotVerified => "email_not_verified",
            Self::NoEmail => "email_missing",
            Self::EmailNotAllowed => "email_not_allowed",
            Self::MissingClaim(_) => "claim_required",
            Self::ProviderNotAllowed => "provider_not_allowed",
        }
    }
}

/// Applies the rules to the user's claims (ID token merged with userinfo).
pub fn check_access(
    rules: &AccessSettings,
    claims: &Map<String, Value>,
) -> Result<(), AccessDenied> {
    match access_refusals(rules, claims).into_iter().next() {
        Some(denied) => Err(denied),
        None => Ok(()),
    }
}

/// Every rule the claims fail, in the order `check_access` reports them.
pub fn access_refusals(rules: &AccessSettings, claims: &Map<String, Value>) -> Vec<AccessDenied> {
    let mut refusals = Vec::new();
    let email_rules = !rules.allowed_email_domains.is_empty() || !rules.allowed_emails.is_empty();
    if rules.require_email_verified || email_rules {
        match claims.get("email").and_then(Value::as_str) {
            None => refusals.push(AccessDenied::NoEmail),
            Some(email) => {
                if rules.require_email_verified && !is_true(claims.get("email_verified")) {
                    refusals.push(AccessDenied::EmailNotVerified);
                }
                if email_rules && !email_is_allowed(rules, email) {
                    refusals.push(AccessDenied::EmailNotAllowed);
                }
            }
        }
    }
    for (claim, accepted) in &rules.required_claims {
        let values = claim_values(claims.get(claim));
        if !values.iter().any(|v| accepted.iter().any(|a| a == v)) {
            refusals.push(AccessDenied::MissingClaim(claim.clone()));
        }
    }
    refusals
}

/// `true`, or the string `"true"` (some providers, e.g. Cognito, send strings).
fn is_true(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The domain of a well-formed address (exactly one `@`, non-empty on both sides),
/// lower-cased. `a@b@example.com` has none.
fn email_domain(email: &str) -> Option<String> {
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    if email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}

fn email_is_allowed(rules: &AccessSettings, email: &str) -> bool {
    let Some(domain) = email_domain(email) else {
        return false;
    };
    let email = email.to_ascii_lowercase();
    rules.allowed_emails.contains(&email) || rules.allowed_email_domains.contains(&domain)
}

/// A claim as a list of strings: a string, an array of strings, or a scalar.
fn claim_values(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Bool(_) | Value::Number(_) => Some(i.to_string()),
                _ => None,
            })
            .collect(),
        Some(Value::Bool(_) | Value::Number(_)) => {
            v.map(|x| vec![x.to_string()]).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
