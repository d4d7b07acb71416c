//! Durations written `"30s"`, `"15m"`, `"24h"`, `"30d"`: the session lifetimes and any
//! other setting measured in time.

use std::time::Duration;

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

/// The duration setting `name`: `default` when unset, and when unparsable (with an error).
pub(super) fn duration_setting(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
