//! The `[limits]` section (PRODUCT.md "Interfaces added in this round"). So far:
//! `max_transactions`, the live login transactions kept at once.

use serde::Deserialize;

/// Bounds against floods.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Live login transactions at once; at the bound a new sign-in gets 503 (D01).
    pub max_transactions: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_transactions: crate::store::MAX_LIVE_TRANSACTIONS,
        }
    }
}

/// The `[limits]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_transactions: Option<u32>,
}

impl RawLimits {
    pub(super) fn validate(self, errors: &mut Vec<String>) -> LimitSettings {
        let defaults = LimitSettings::default();
        let max_transactions = self.max_transactions.unwrap_or(defaults.max_transactions);
        if max_transactions == 0 {
            errors.push("`limits.max_transactions` must be at least 1".into());
        }
        LimitSettings { max_transactions }
    }
}
