//! ID-token validation, OIDC Core §3.1.3.7, with RFC 8725 (JWT BCP) hardening.
//!
//! The compact serialization is taken apart here only to apply policy before any
//! cryptography (size cap, exactly three segments, no duplicate members, algorithm on
//! the allow-list, no keys or `crit` in the header); the signature itself is verified
//! by `jsonwebtoken` with aws-lc-rs, with the algorithm pinned from our allow-list,
//! never taken from the token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::Algorithm;
use super::jwks::VerificationKey;
use crate::clock::UnixTime;

/// Cap on a JWT's length, checked before decoding or crypto (R03).
pub const MAX_JWT_BYTES: usize = 16 * 1024;
/// Allowed clock skew for `exp`, `iat` and `nbf` (J08: ≤120 s).
pub const LEEWAY_SECONDS: i64 = 60;
/// OIDC Core §2: `sub` is at most 255 ASCII characters.
pub const MAX_SUB_LEN: usize = 255;
/// Longest `kid` we will look up (J04).
pub const MAX_KID_LEN: usize = 256;

/// Why an ID token was refused. `code()` is stable and goes to logs; users see one
/// generic sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdTokenError {
    #[error("the token is larger than {MAX_JWT_BYTES} bytes")]
    TooLarge,
    #[error("the token is not a compact JWS with three segments")]
    Malformed,
    #[error("the token has a duplicate member `{0}`")]
    DuplicateMember(String),
    #[error("algorithm `{0}` is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("the header carries its own key material (`{0}`)")]
    EmbeddedKey(&'static str),
    #[error("the header has critical extensions we do not understand")]
    CriticalHeader,
    #[error("the token type `{0}` is not an ID token")]
    WrongType(String),
    #[error("the key id is not acceptable")]
    BadKeyId,
    #[error("no provider key fits the token")]
    UnknownKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the issuer does not match")]
    WrongIssuer,
    #[error("the token's tenant is not one this gateway accepts")]
    TenantNotAllowed,
    #[error("the audience does not match")]
    WrongAudience,
    #[error("the authorized party does not match")]
    WrongAuthorizedParty,
    #[error("the token has expired")]
    Expired,
    #[error("the token has no valid `exp`")]
    MissingExpiry,
    #[error("the token has no valid `iat`")]
    MissingIssuedAt,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the nonce does not match this login")]
    NonceMismatch,
    #[error("the subject is missing or too long")]
    BadSubject,
    #[error("the token is a logout token")]
    LogoutToken,
}

impl IdTokenError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge => "jwt_too_large",
            Self::Malformed => "jwt_malformed",
            Self::DuplicateMember(_) => "jwt_duplicate_member",
            Self::AlgorithmNotAllowed(_) => "jwt_alg_not_allowed",
            Self::EmbeddedKey(_) => "jwt_embedded_key",
            Self::CriticalHeader => "jwt_crit",
            Self::WrongType(_) => "jwt_wrong_type",
            Self::BadKeyId => "jwt_bad_kid",
            Self::UnknownKey => "jwt_unknown_key",
            Self::BadSignature => "jwt_bad_signature",
            Self::WrongIssuer => "jwt_wrong_issuer",
            Self::TenantNotAllowed => "jwt_tenant_not_allowed",
            Self::WrongAudience => "jwt_wrong_audience",
            Self::WrongAuthorizedParty => "jwt_wrong_azp",
            Self::Expired => "jwt_expired",
            Self::MissingExpiry => "jwt_no_exp",
            Self::MissingIssuedAt => "jwt_no_iat",
            Self::IssuedInFuture => "jwt_iat_future",
            Self::NotYetValid => "jwt_nbf_future",
            Self::NonceMismatch => "jwt_nonce_mismatch",
            Self::BadSubject => "jwt_bad_sub",
            Self::LogoutToken => "jwt_logout_token",
        }
    }
}

/// A JWT taken apart for policy checks, not yet verified. `Debug` omits the token.
pub struct UnverifiedJwt<'a> {
    pub token: &'a str,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
}

impl std::fmt::Debug for UnverifiedJwt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnverifiedJwt")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("typ", &self.typ)
            .finish_non_exhaustive()
    }
}

/// Splits and checks the structure and header of a compact JWS (J02–J05, J14, R03).
pub fn parse_unverified<'a>(
    token: &'a str,
    allowed: &[Algorithm],
) -> Result<UnverifiedJwt<'a>, IdTokenError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(IdTokenError::TooLarge);
    }
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 || segments[..2].iter().any(|s| s.is_empty()) {
        return Err(IdTokenError::Malformed);
    }
    let header = decode_object(segments[0])?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(IdTokenError::Malformed)?;
    // RFC 8725 §3.1: only algorithms on our list; `none` never is. Judged before the
    // (empty) signature of an `alg: none` token, so that it is reported as what it is.
    let alg = Algorithm::parse(alg_name)
        .filter(|a| allowed.contains(a))
        .ok_or_else(|| {
            IdTokenError::AlgorithmNotAllowed(super::discovery::truncate(alg_name, 32))
        })?;
    let claims = decode_object(segments[1])?;
    if segments[2].is_empty() || URL_SAFE_NO_PAD.decode(segments[2]).is_err() {
        return Err(IdTokenError::Malformed);
    }
    // J03: keys must come from the provider's JWKS, never from the token.
    for member in ["jwk", "jku", "x5u", "x5c"] {
        if header.contains_key(member) {
            return Err(IdTokenError::EmbeddedKey(member));
        }
    }
    // RFC 7515 §4.1.11: we understand no extensions, so any `crit` is unknown.
    if header.contains_key("crit") {
        return Err(IdTokenError::CriticalHeader);
    }
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(IdTokenError::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k))
            if !k.is_empty() && k.len() <= MAX_KID_LEN && k.chars().all(|c| !c.is_control()) =>
        {
            Some(k.clone())
        }
        Some(_) => return Err(IdTokenError::BadKeyId),
    };
    Ok(UnverifiedJwt {
        token,
        alg,
        kid,
        typ,
        claims,
    })
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, IdTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| IdTokenError::Malformed)?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let object = StrictObject::deserialize_from(&mut de).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix("duplicate member ") {
            Some(rest) => IdTokenError::DuplicateMember(super::discovery::truncate(
                rest.split(" at ").next().unwrap_or(rest),
                64,
            )),
            None => IdTokenError::Malformed,
        }
    })?;
    de.end().map_err(|_| IdTokenError::Malformed)?;
    Ok(object)
}

/// A JSON object that refuses duplicate member names (J14: parser differentials).
struct StrictObject;

impl StrictObject {
    fn deserialize_from<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Map<String, Value>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut out = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate member {key}")));
                    }
                    out.insert(key, value);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// What a valid ID token must say.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// Audiences trusted besides the client id (`provider.trusted_audiences`).
    pub trusted_audiences: &'a [String],
    /// The nonce of this login; `None` only for the SPA code exchange (no nonce sent).
    pub nonce: Option<&'a str>,
    pub now: UnixTime,
}

/// The claims of a verified ID token.
#[derive(Debug, Clone)]
pub struct IdTokenClaims {
    /// The token's `iss`: the issuer, or a multi-tenant provider's concrete one.
    pub issuer: String,
    pub subject: String,
    pub expires_at: UnixTime,
    pub sid: Option<String>,
    pub claims: Map<String, Value>,
}

/// Verifies the signature with one of `keys` (already chosen for the token's kid and
/// alg), then the claims.
pub fn verify(
    jwt: &UnverifiedJwt<'_>,
    keys: &[VerificationKey],
    hmac_secret: Option<&[u8]>,
    expect: &Expectations<'_>,
) -> Result<IdTokenClaims, IdTokenError> {
    // J13: typed tokens that are not ID tokens (logout+jwt, at+jwt, …) are refused.
    if let Some(typ) = &jwt.typ
        && !typ.eq_ignore_ascii_case("JWT")
    {
        return Err(IdTokenError::WrongType(super::discovery::truncate(typ, 32)));
    }
    verify_signature(jwt, keys, hmac_secret)?;
    check_claims(&jwt.claims, expect)
}

pub(crate) fn verify_signature(
    jwt: &UnverifiedJwt<'_>,
    keys: &[VerificationKey],
    hmac_secret: Option<&[u8]>,
) -> Result<(), IdTokenError> {
    let mut validation = jsonwebtoken::Validation::new(jwt.alg.to_jsonwebtoken());
    // Claims are checked by `check_claims` with our injected clock.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let verify_with = |key: &jsonwebtoken::DecodingKey| {
        jsonwebtoken::decode::<Value>(jwt.token, key, &validation).is_ok()
    };
    let ok = if jwt.alg.is_hmac() {
        // Only when HS* was configured explicitly; keyed by the client secret (J02).
        hmac_secret.is_some_and(|s| verify_with(&jsonwebtoken::DecodingKey::from_secret(s)))
    } else {
        if keys.is_empty() {
            return Err(IdTokenError::UnknownKey);
        }
        keys.iter()
            .filter(|k| k.fits(jwt.alg))
            .any(|k| verify_with(&k.key))
    };
    if ok {
        Ok(())
    } else {
        Err(IdTokenError::BadSignature)
    }
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    match claims.get(name)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    }
}

/// OIDC Core §3.1.3.7 steps 2–11 and §2 claim rules.
pub fn check_claims(
    claims: &Map<String, Value>,
    expect: &Expectations<'_>,
) -> Result<IdTokenClaims, IdTokenError> {
    // J13: a back-channel logout token carries `events`.
    if claims.contains_key("events") {
        return Err(IdTokenError::LogoutToken);
    }
    // Step 2: exact issuer (J06).
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(IdTokenError::WrongIssuer);
    }
    // Step 3: aud contains our client id, and no audience the client does not trust:
    // by default none other (J07); `provider.trusted_audiences` names the exceptions.
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().ok_or(IdTokenError::WrongAudience))
            .collect::<Result<_, _>>()?,
        _ => return Err(IdTokenError::WrongAudience),
    };
    let others = audiences.iter().filter(|a| **a != expect.client_id).count();
    if others == audiences.len()
        || audiences
            .iter()
            .any(|a| *a != expect.client_id && !expect.trusted_audiences.iter().any(|t| t == a))
    {
        return Err(IdTokenError::WrongAudience);
    }
    // Steps 4–5: azp, when present, is our client id; with other audiences it must be
    // present (the token was issued to us, not to one of them).
    match claims.get("azp") {
        Some(azp) if azp.as_str() != Some(expect.client_id) => {
            return Err(IdTokenError::WrongAuthorizedParty);
        }
        None if others > 0 => return Err(IdTokenError::WrongAuthorizedParty),
        _ => {}
    }
    // Steps 9–10 (J08).
    let exp = numeric(claims, "exp").ok_or(IdTokenError::MissingExpiry)?;
    if expect.now > exp.saturating_add(LEEWAY_SECONDS) {
        return Err(IdTokenError::Expired);
    }
    let iat = numeric(claims, "iat").ok_or(IdTokenError::MissingIssuedAt)?;
    if iat > expect.now.saturating_add(LEEWAY_SECONDS) {
        return Err(IdTokenError::IssuedInFuture);
    }
    if claims.contains_key("nbf") {
        let nbf = numeric(claims, "nbf").ok_or(IdTokenError::Malformed)?;
        if nbf > expect.now.saturating_add(LEEWAY_SECONDS) {
            return Err(IdTokenError::NotYetValid);
        }
    }
    // Step 11 (J09): the nonce of this browser's login.
    if let Some(expected) = expect.nonce {
        let found = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
        if !crate::random::secrets_equal(found.as_bytes(), expected.as_bytes()) {
            return Err(IdTokenError::NonceMismatch);
        }
    }
    // §2 / J10: sub present, at most 255 characters.
    let subject = match claims.get("sub") {
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= MAX_SUB_LEN && !s.chars().any(char::is_control) =>
        {
            s.clone()
        }
        _ => return Err(IdTokenError::BadSubject),
    };
    let sid = claims.get("sid").and_then(Value::as_str).map(str::to_owned);
    Ok(IdTokenClaims {
        issuer: expect.issuer.to_owned(),
        subject,
        expires_at: exp,
        sid,
        claims: claims.clone(),
    })
}

#[cfg(test)]
mod tests;
