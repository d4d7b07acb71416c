//! The `[session]` section: how long a session lasts and when its tokens are refreshed
//! (PRODUCT.md "Sessions: the rules").

use std::time::Duration;

use serde::Deserialize;

use super::duration::duration_setting;

/// Session lifetimes (PRODUCT.md "Sessions: the rules").
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub idle_timeout: Duration,
    pub absolute_lifetime: Duration,
    pub refresh_before: Duration,
    pub rotation_grace: Duration,
}

/// The `[session]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
    idle_timeout: Option<String>,
    absolute_lifetime: Option<String>,
    refresh_before: Option<String>,
    rotation_grace: Option<String>,
}

impl RawSession {
    /// Defaults: idle 24h, absolute 30d, refresh 60s before expiry, rotation grace 30s.
    pub(super) fn validate(self, errors: &mut Vec<String>) -> SessionSettings {
        let session = SessionSettings {
            idle_timeout: duration_setting(
                self.idle_timeout,
                "session.idle_timeout",
                Duration::from_secs(24 * 3600),
                errors,
            ),
            absolute_lifetime: duration_setting(
                self.absolute_lifetime,
                "session.absolute_lifetime",
                Duration::from_secs(30 * 86_400),
                errors,
            ),
            refresh_before: duration_setting(
                self.refresh_before,
                "session.refresh_before",
                Duration::from_secs(60),
                errors,
            ),
            rotation_grace: duration_setting(
                self.rotation_grace,
                "session.rotation_grace",
                Duration::from_secs(30),
                errors,
            ),
        };
        if session.idle_timeout.is_zero() || session.absolute_lifetime.is_zero() {
            errors.push(
                "`session.idle_timeout` and `session.absolute_lifetime` must be more than 0s"
                    .into(),
            );
        }
        session
    }
}
