//! OpenID Connect Back-Channel Logout 1.0 §2.6: validating a logout token
//! (docs/security.md O04). The same policy parser and signature check as ID tokens
//! (algorithm allow-list, keys only from the provider's JWKS, no embedded keys, no
//! `crit`), then the logout token's own claim rules.

use serde_json::{Map, Value};

use super::id_token::{IdTokenError, UnverifiedJwt, verify_signature};
use super::jwks::VerificationKey;
use crate::clock::UnixTime;

/// The event a logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Logout tokens older than this are refused as stale (their `jti` is remembered for
/// this long, plus the leeway, so a replay is always caught one way or the other).
pub const MAX_AGE_SECONDS: i64 = 300;

/// Clock leeway for `iat` in the future and `exp`.
const LEEWAY_SECONDS: i64 = 60;

/// What a valid logout token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub jti: String,
    pub iat: UnixTime,
}

/// Why a logout token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogoutTokenError {
    #[error("the token type `{0}` is not a logout token's")]
    WrongType(String),
    #[error("the logout token names another issuer")]
    WrongIssuer,
    #[error("the logout token is for another audience")]
    WrongAudience,
    #[error("the logout token has no usable `iat`")]
    MissingIssuedAt,
    #[error("the logout token is too old or from the future")]
    Stale,
    #[error("the logout token has expired")]
    Expired,
    #[error("the logout token does not carry the back-channel logout event")]
    MissingEvent,
    #[error("the logout token names neither a session (`sid`) nor a user (`sub`)")]
    NoSubject,
    #[error("the logout token carries a `nonce` (an ID token, not a logout token)")]
    HasNonce,
    #[error("the logout token has no `jti`")]
    MissingJti,
    #[error(transparent)]
    Jwt(#[from] IdTokenError),
}

impl LogoutTokenError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::WrongType(_) => "logout_token_type",
            Self::WrongIssuer => "logout_token_issuer",
            Self::WrongAudience => "logout_token_audience",
            Self::MissingIssuedAt => "logout_token_iat",
            Self::Stale => "logout_token_stale",
            Self::Expired => "logout_token_expired",
            Self::MissingEvent => "logout_token_event",
            Self::NoSubject => "logout_token_no_subject",
            Self::HasNonce => "logout_token_nonce",
            Self::MissingJti => "logout_token_jti",
            Self::Jwt(e) => e.code(),
        }
    }
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    match claims.get(name)? {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .map(str::to_owned)
}

/// Verifies the signature with `keys`, then the claims (§2.6 steps 3–7; the `jti`
/// replay check is the caller's, against the store).
pub fn verify(
    jwt: &UnverifiedJwt<'_>,
    keys: &[VerificationKey],
    hmac_secret: Option<&[u8]>,
    issuer: &str,
    client_id: &str,
    now: UnixTime,
) -> Result<LogoutToken, LogoutTokenError> {
    // §2.4: `logout+jwt` is the type to use; untyped (or plain JWT) tokens are accepted
    // as providers still send them, and the `events` rule below tells them apart from
    // ID tokens. Any other type (at+jwt, …) is refused.
    if let Some(typ) = &jwt.typ {
        let t = typ.to_ascii_lowercase();
        let t = t.strip_prefix("application/").unwrap_or(&t);
        if t != "logout+jwt" && t != "jwt" {
            return Err(LogoutTokenError::WrongType(super::discovery::truncate(
                typ, 32,
            )));
        }
    }
    verify_signature(jwt, keys, hmac_secret)?;
    check_claims(&jwt.claims, issuer, client_id, now)
}

/// The claim rules of §2.4 and §2.6.
pub fn check_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
    now: UnixTime,
) -> Result<LogoutToken, LogoutTokenError> {
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(LogoutTokenError::WrongIssuer);
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let aud_count = match claims.get("aud") {
        Some(Value::Array(items)) => items.len(),
        _ => audiences.len(),
    };
    if audiences.is_empty()
        || audiences.len() != aud_count
        || audiences.iter().any(|a| *a != client_id)
    {
        return Err(LogoutTokenError::WrongAudience);
    }
    let iat = numeric(claims, "iat").ok_or(LogoutTokenError::MissingIssuedAt)?;
    if iat > now + LEEWAY_SECONDS || iat < now - MAX_AGE_SECONDS {
        return Err(LogoutTokenError::Stale);
    }
    if let Some(exp) = claims.get("exp") {
        match exp.as_i64() {
            Some(exp) if exp + LEEWAY_SECONDS > now => {}
            _ => return Err(LogoutTokenError::Expired),
        }
    }
    let event_ok = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !event_ok {
        return Err(LogoutTokenError::MissingEvent);
    }
    if claims.contains_key("nonce") {
        return Err(LogoutTokenError::HasNonce);
    }
    let sid = text(claims, "sid");
    let sub = text(claims, "sub");
    if sid.is_none() && sub.is_none() {
        return Err(LogoutTokenError::NoSubject);
    }
    let jti = text(claims, "jti").ok_or(LogoutTokenError::MissingJti)?;
    Ok(LogoutToken { sid, sub, jti, iat })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn good() -> Value {
        json!({
            "iss": "https://id.example.com", "aud": "app", "iat": NOW, "jti": "j1",
            "sid": "s1", "sub": "alice",
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
        })
    }

    fn check(v: Value) -> Result<LogoutToken, LogoutTokenError> {
        check_claims(v.as_object().unwrap(), "https://id.example.com", "app", NOW)
    }

    fn without(member: &str) -> Value {
        let mut v = good();
        v.as_object_mut().unwrap().remove(member);
        v
    }

    fn with(member: &str, value: Value) -> Value {
        let mut v = good();
        v[member] = value;
        v
    }

    #[test]
    fn o04_claim_faults_are_refused() {
        assert_eq!(check(good()).unwrap().sid.as_deref(), Some("s1"));
        assert!(check(without("sid")).is_ok());
        assert!(check(without("sub")).is_ok());
        let mut neither = without("sid");
        neither.as_object_mut().unwrap().remove("sub");
        use LogoutTokenError as E;
        for (v, err) in [
            (neither, E::NoSubject),
            (
                with("iss", json!("https://id.example.com/")),
                E::WrongIssuer,
            ),
            (without("iss"), E::WrongIssuer),
            (with("aud", json!("other")), E::WrongAudience),
            (with("aud", json!(["app", "other"])), E::WrongAudience),
            (with("aud", json!(["app", 7])), E::WrongAudience),
            (without("aud"), E::WrongAudience),
            (without("iat"), E::MissingIssuedAt),
            (with("iat", json!("now")), E::MissingIssuedAt),
            (with("iat", json!(NOW - MAX_AGE_SECONDS - 1)), E::Stale),
            (with("iat", json!(NOW + 120)), E::Stale),
            (with("exp", json!(NOW - 120)), E::Expired),
            (without("events"), E::MissingEvent),
            (
                with(
                    "events",
                    json!({"http://schemas.openid.net/event/other": {}}),
                ),
                E::MissingEvent,
            ),
            (
                with("events", json!({ BACKCHANNEL_LOGOUT_EVENT: "yes" })),
                E::MissingEvent,
            ),
            (
                with("events", json!([BACKCHANNEL_LOGOUT_EVENT])),
                E::MissingEvent,
            ),
            (with("nonce", json!("n")), E::HasNonce),
            (without("jti"), E::MissingJti),
            (with("jti", json!("")), E::MissingJti),
        ] {
            assert_eq!(check(v.clone()).unwrap_err(), err, "{v}");
        }
    }
}
