//! The `[session]` section: how long a session lasts and when its tokens are refreshed
//! (docs/sessions.md "Lifetimes" and "Refresh").

use std::time::Duration;

use serde::Deserialize;

use super::duration::duration_setting;

/// Session lifetimes (docs/sessions.md "Lifetimes").
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub idle_timeout: Duration,
    pub absolute_lifetime: Duration,
    pub refresh_before: Duration,
    pub rotation_grace: Duration,
    /// Sessions the in-process cache may hold (0: no cache).
    pub cache_entries: u32,
    /// The cache's memory bound, MiB.
    pub cache_mb: u32,
}

/// The `[session]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
    idle_timeout: Option<String>,
    absolute_lifetime: Option<String>,
    refresh_before: Option<String>,
    rotation_grace: Option<String>,
    cache_entries: Option<u32>,
    cache_mb: Option<u32>,
}

impl RawSession {
    /// Defaults: idle 24h, absolute 30d, refresh 60s before expiry, rotation grace 30s,
    /// a cache of 100,000 sessions within 256 MiB.
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
            cache_entries: self.cache_entries.unwrap_or(100_000),
            cache_mb: self.cache_mb.unwrap_or(256),
        };
        if session.cache_entries > 0 && session.cache_mb == 0 {
            errors.push(
                "`session.cache_mb` must be more than 0 while the session cache is on (`session.cache_entries = 0` turns it off)"
                    .into(),
            );
        }
        if session.idle_timeout.is_zero() || session.absolute_lifetime.is_zero() {
            errors.push(
                "`session.idle_timeout` and `session.absolute_lifetime` must be more than 0s"
                    .into(),
            );
        }
        session
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::test_support::{env, minimal};

    #[test]
    fn the_cache_is_on_by_default_and_can_be_turned_off() {
        let c = Config::load_from(None, minimal()).unwrap();
        assert_eq!(
            (c.session.cache_entries, c.session.cache_mb),
            (100_000, 256)
        );
        let mut vars = minimal();
        vars.extend(env(&[
            ("PORTCULLIS_SESSION_CACHE_ENTRIES", "0"),
            ("PORTCULLIS_SESSION_CACHE_MB", "16"),
        ]));
        let c = Config::load_from(None, vars).unwrap();
        assert_eq!((c.session.cache_entries, c.session.cache_mb), (0, 16));
        for bad in ["-1", "many", "1.5"] {
            let mut vars = minimal();
            vars.extend(env(&[("PORTCULLIS_SESSION_CACHE_ENTRIES", bad)]));
            let e = Config::load_from(None, vars).unwrap_err();
            assert!(e.to_string().contains("whole number"), "{bad}: {e}");
        }
        let mut vars = minimal();
        vars.extend(env(&[("PORTCULLIS_SESSION_CACHE_MB", "0")]));
        assert!(Config::load_from(None, vars).is_err());
    }
}
