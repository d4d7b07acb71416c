//! Checking a DPoP proof a client sends with a bound access token (RFC 9449 §4.3, §7):
//! one compact JWS of type `dpop+jwt`, signed with an asymmetric algorithm by the
//! public key in its own `jwk` header (never a private one), naming this request's
//! method (`htm`) and URI (`htu`, compared without query and fragment after RFC 3986
//! normalisation), issued within the window around now (`iat`), for this token
//! (`ath`), by the key the token is bound to (`cnf.jkt` = the key's RFC 7638
//! thumbprint), with the server's nonce when one is required. The `jti` replay check is
//! the caller's (it needs the store, shared by instances).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use serde_json::{Map, Value};

use crate::clock::UnixTime;

/// Longest proof read at all.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// How far a proof's `iat` may be from now, either way (seconds).
pub const PROOF_WINDOW_SECONDS: i64 = 60;

/// The algorithms a proof may use: asymmetric only (RFC 9449 §4.3 step 5).
const PROOF_ALGORITHMS: [jsonwebtoken::Algorithm; 8] = [
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::PS384,
    jsonwebtoken::Algorithm::EdDSA,
];

/// Members of a JWK that only a private key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// What the proof must match.
#[derive(Debug, Clone)]
pub struct ProofExpectations<'a> {
    /// The request's method.
    pub htm: &'a str,
    /// The request's URI as the server names it (public origin + the decided path).
    pub htu: &'a str,
    /// The access token that came with it (`ath`).
    pub access_token: &'a str,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
    /// The nonce the server requires now, if it requires one.
    pub nonce: Option<&'a str>,
    pub now: UnixTime,
}

/// A proof that passed, for the replay check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    pub jti: String,
    pub iat: UnixTime,
}

/// Why a proof was refused; the code is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the DPoP proof is not a well-formed JWT")]
    Malformed,
    #[error("the DPoP proof's type is not dpop+jwt")]
    WrongType,
    #[error("the DPoP proof's algorithm is not allowed")]
    Algorithm,
    #[error("the DPoP proof carries no usable public key")]
    NoKey,
    #[error("the DPoP proof carries a private key")]
    PrivateKey,
    #[error("the DPoP proof's signature does not verify")]
    BadSignature,
    #[error("the DPoP proof names another method")]
    WrongMethod,
    #[error("the DPoP proof names another URI")]
    WrongUri,
    #[error("the DPoP proof is too old or from the future")]
    Stale,
    #[error("the DPoP proof is for another access token")]
    WrongToken,
    #[error("the DPoP proof's key is not the one the token is bound to")]
    WrongKey,
    #[error("the DPoP proof lacks the server's current nonce")]
    NonceRequired,
    #[error("the DPoP proof was used before")]
    Replayed,
}

impl ProofError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "dpop_malformed",
            Self::WrongType => "dpop_wrong_type",
            Self::Algorithm => "dpop_alg_not_allowed",
            Self::NoKey => "dpop_no_key",
            Self::PrivateKey => "dpop_private_key",
            Self::BadSignature => "dpop_bad_signature",
            Self::WrongMethod => "dpop_wrong_htm",
            Self::WrongUri => "dpop_wrong_htu",
            Self::Stale => "dpop_stale",
            Self::WrongToken => "dpop_wrong_ath",
            Self::WrongKey => "dpop_wrong_key",
            Self::NonceRequired => "use_dpop_nonce",
            Self::Replayed => "dpop_replayed",
        }
    }
}

fn object(segment: &str) -> Result<Map<String, Value>, ProofError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| ProofError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| ProofError::Malformed)
}

/// A URI as RFC 9449 §4.3 step 9 compares it: scheme and host (lower case), port (the
/// default one filled in), path; no query, no fragment.
fn comparable(uri: &str) -> Option<(String, String, u16, String)> {
    let url = url::Url::parse(uri).ok()?;
    Some((
        url.scheme().to_owned(),
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?,
        url.path().to_owned(),
    ))
}

/// Checks `proof` against `expect` (RFC 9449 §4.3 steps 2–12, the `jti` aside).
pub fn verify_proof(
    proof: &str,
    expect: &ProofExpectations<'_>,
) -> Result<VerifiedProof, ProofError> {
    let (verified, claims, jwk) =
        check_request(proof, expect.htm, expect.htu, expect.nonce, expect.now)?;
    let ath = super::dpop::ath(expect.access_token);
    let given = claims.get("ath").and_then(Value::as_str);
    if !given.is_some_and(|a| crate::random::secrets_equal(a.as_bytes(), ath.as_bytes())) {
        return Err(ProofError::WrongToken);
    }
    let thumbprint = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| ProofError::NoKey)?;
    if !crate::random::secrets_equal(thumbprint.as_bytes(), expect.jkt.as_bytes()) {
        return Err(ProofError::WrongKey);
    }
    Ok(verified)
}

/// A proof at a token endpoint (RFC 9449 §5), as an authorization server checks it (the
/// dev provider): for this request, no access token yet. Returns it and the thumbprint
/// of its key, which the issued token is bound to (`cnf.jkt`).
pub fn verify_token_request_proof(
    proof: &str,
    htu: &str,
    now: UnixTime,
) -> Result<(VerifiedProof, String), ProofError> {
    let (verified, _, jwk) = check_request(proof, "POST", htu, None, now)?;
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| ProofError::NoKey)?;
    Ok((verified, jkt))
}

/// RFC 9449 §4.3 steps 2–10: the proof itself, for this method and URI, within the
/// window, with the nonce when one is required.
fn check_request(
    proof: &str,
    htm: &str,
    expected_htu: &str,
    nonce: Option<&str>,
    now: UnixTime,
) -> Result<(VerifiedProof, Map<String, Value>, Jwk), ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let segments: Vec<&str> = proof.split('.').collect();
    let [header, claims, signature] = segments.as_slice() else {
        return Err(ProofError::Malformed);
    };
    if header.is_empty() || claims.is_empty() || signature.is_empty() {
        return Err(ProofError::Malformed);
    }
    let raw_header = object(header)?;
    if raw_header.get("typ").and_then(Value::as_str) != Some(super::dpop::PROOF_TYP) {
        return Err(ProofError::WrongType);
    }
    let jwk_value = raw_header.get("jwk").ok_or(ProofError::NoKey)?;
    let jwk_members = jwk_value.as_object().ok_or(ProofError::NoKey)?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk_members.contains_key(*m)) {
        return Err(ProofError::PrivateKey);
    }
    let parsed = jsonwebtoken::decode_header(proof).map_err(|_| ProofError::Malformed)?;
    if !PROOF_ALGORITHMS.contains(&parsed.alg) {
        return Err(ProofError::Algorithm);
    }
    let jwk: Jwk = serde_json::from_value(jwk_value.clone()).map_err(|_| ProofError::NoKey)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|_| ProofError::NoKey)?;
    let mut validation = jsonwebtoken::Validation::new(parsed.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(proof, &key, &validation)
        .map_err(|_| ProofError::BadSignature)?
        .claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(ProofError::Malformed)?;
    if text("htm") != Some(htm) {
        return Err(ProofError::WrongMethod);
    }
    let htu = text("htu").ok_or(ProofError::Malformed)?;
    if comparable(htu).is_none() || comparable(htu) != comparable(expected_htu) {
        return Err(ProofError::WrongUri);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(ProofError::Malformed)?;
    if (iat - now).abs() > PROOF_WINDOW_SECONDS {
        return Err(ProofError::Stale);
    }
    if let Some(nonce) = nonce
        && !text("nonce")
            .is_some_and(|n| crate::random::secrets_equal(n.as_bytes(), nonce.as_bytes()))
    {
        return Err(ProofError::NonceRequired);
    }
    let verified = VerifiedProof {
        jti: jti.to_owned(),
        iat,
    };
    Ok((verified, claims, jwk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::dpop::DpopKey;

    const NOW: UnixTime = 1_900_000_000;
    const URI: &str = "https://app.example.com/api/orders";

    fn expect<'a>(key: &'a DpopKey, token: &'a str) -> ProofExpectations<'a> {
        ProofExpectations {
            htm: "GET",
            htu: URI,
            access_token: token,
            jkt: key.jkt(),
            nonce: None,
            now: NOW,
        }
    }

    #[test]
    fn g13_a_proof_for_this_request_token_and_key_passes() {
        let (key, _) = DpopKey::generate().unwrap();
        let proof = key.proof("GET", URI, None, Some("tok"), NOW).unwrap();
        let ok = verify_proof(&proof, &expect(&key, "tok")).unwrap();
        assert_eq!(ok.iat, NOW);
        // The query and fragment of the request do not count; scheme and host case and
        // the default port are normalised.
        let mut e = expect(&key, "tok");
        e.htu = "HTTPS://App.Example.com:443/api/orders?page=2";
        assert!(verify_proof(&proof, &e).is_ok());
        // Within the window, either way.
        let late = key.proof("GET", URI, None, Some("tok"), NOW - 60).unwrap();
        assert!(verify_proof(&late, &expect(&key, "tok")).is_ok());
    }

    #[test]
    fn g13_mismatched_proofs_are_refused() {
        let (key, _) = DpopKey::generate().unwrap();
        let (other, _) = DpopKey::generate().unwrap();
        let e = expect(&key, "tok");
        for (proof, want) in [
            (
                key.proof("POST", URI, None, Some("tok"), NOW),
                ProofError::WrongMethod,
            ),
            (
                key.proof(
                    "GET",
                    "https://app.example.com/api/other",
                    None,
                    Some("tok"),
                    NOW,
                ),
                ProofError::WrongUri,
            ),
            (
                key.proof(
                    "GET",
                    "https://evil.example.com/api/orders",
                    None,
                    Some("tok"),
                    NOW,
                ),
                ProofError::WrongUri,
            ),
            (
                key.proof("GET", URI, None, Some("tok"), NOW - 61),
                ProofError::Stale,
            ),
            (
                key.proof("GET", URI, None, Some("tok"), NOW + 61),
                ProofError::Stale,
            ),
            (
                key.proof("GET", URI, None, Some("other"), NOW),
                ProofError::WrongToken,
            ),
            (
                key.proof("GET", URI, None, None, NOW),
                ProofError::WrongToken,
            ),
            (
                other.proof("GET", URI, None, Some("tok"), NOW),
                ProofError::WrongKey,
            ),
        ] {
            assert_eq!(verify_proof(&proof.unwrap(), &e).unwrap_err(), want);
        }
        let mut nonce = expect(&key, "tok");
        nonce.nonce = Some("n-1");
        let without = key.proof("GET", URI, None, Some("tok"), NOW).unwrap();
        assert_eq!(
            verify_proof(&without, &nonce).unwrap_err(),
            ProofError::NonceRequired
        );
        let with = key
            .proof("GET", URI, Some("n-1"), Some("tok"), NOW)
            .unwrap();
        assert!(verify_proof(&with, &nonce).is_ok());
    }

    #[test]
    fn g13_forged_shapes_are_refused() {
        let (key, _) = DpopKey::generate().unwrap();
        let e = expect(&key, "tok");
        let proof = key.proof("GET", URI, None, Some("tok"), NOW).unwrap();
        let parts: Vec<&str> = proof.split('.').collect();
        let with_header = |h: Value| {
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(h.to_string()),
                parts[1],
                parts[2]
            )
        };
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        // Another type, `alg: none` or HS256, a private key in the header, no key, a
        // changed payload.
        let mut typ = header.clone();
        typ["typ"] = "JWT".into();
        let mut none = header.clone();
        none["alg"] = "none".into();
        let mut hs = header.clone();
        hs["alg"] = "HS256".into();
        let mut private = header.clone();
        private["jwk"]["d"] = "AAAA".into();
        let mut keyless = header.clone();
        keyless.as_object_mut().unwrap().remove("jwk");
        for (forged, want) in [
            (with_header(typ), ProofError::WrongType),
            (with_header(none), ProofError::Malformed),
            (with_header(hs), ProofError::Algorithm),
            (with_header(private), ProofError::PrivateKey),
            (with_header(keyless), ProofError::NoKey),
            (
                format!(
                    "{}.{}.{}",
                    parts[0],
                    URL_SAFE_NO_PAD.encode(b"{\"htm\":\"GET\"}"),
                    parts[2]
                ),
                ProofError::BadSignature,
            ),
            ("a.b".to_owned(), ProofError::Malformed),
            ("x".repeat(MAX_PROOF_BYTES + 1), ProofError::Malformed),
        ] {
            assert_eq!(verify_proof(&forged, &e).unwrap_err(), want, "{forged:.60}");
        }
    }
}
