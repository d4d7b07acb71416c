//! What a session keeps of its user's claims (the ID token's merged with UserInfo's):
//! enough for per-route rules and identity headers (`groups`, `preferred_username`,
//! verified email), never more than [`MAX_CLAIMS_BYTES`], never a token.

use serde_json::{Map, Value};

use crate::store::MAX_CLAIMS_BYTES;

/// Claims that only describe the token itself: not kept.
const TOKEN_CLAIMS: &[&str] = &[
    "aud",
    "azp",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "at_hash",
    "c_hash",
    "s_hash",
    "jti",
    "sid",
    "auth_time",
    "acr",
    "amr",
    "sid_hash",
];

/// Kept first when everything does not fit.
const ESSENTIAL: &[&str] = &[
    "sub",
    "iss",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "groups",
];

/// Whether the provider said the email address is verified (OIDC Core §5.1:
/// `email_verified`; some providers send the string `"true"`).
pub fn email_verified(claims: &Map<String, Value>) -> bool {
    match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// `provider.assume_email_verified`: a provider that releases verified addresses only
/// but never says so (Entra ID) is taken at its word. Only an absent `email_verified`
/// is filled in; a provider that says `false` is believed.
pub fn assume_email_verified(claims: &mut Map<String, Value>, assume: bool) {
    let unsaid = claims.contains_key("email") && !claims.contains_key("email_verified");
    if assume && unsaid {
        claims.insert("email_verified".to_owned(), Value::Bool(true));
    } else if unsaid {
        // Once per process: the address is dropped, which is easy to miss.
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "the provider sends email addresses without email_verified: they are not passed to the app (no X-User-Email) and the email rules refuse them; if this provider releases verified addresses only (Microsoft Entra ID does), set provider.assume_email_verified = true"
            );
        }
    }
}

/// The claims to store (a JSON object of at most [`MAX_CLAIMS_BYTES`]) and whether the
/// provider said the email address is verified (OIDC Core §5.1: `email_verified`; some
/// providers send the string `"true"`).
pub fn kept_claims(claims: &Map<String, Value>) -> (String, bool) {
    let email_verified = email_verified(claims);
    let kept: Map<String, Value> = claims
        .iter()
        .filter(|(k, _)| !TOKEN_CLAIMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let text = Value::Object(kept.clone()).to_string();
    if text.len() <= MAX_CLAIMS_BYTES {
        return (text, email_verified);
    }
    // Too much: the essential claims, each while it still fits.
    let mut essential = Map::new();
    for key in ESSENTIAL {
        if let Some(v) = kept.get(*key) {
            essential.insert((*key).to_owned(), v.clone());
            if Value::Object(essential.clone()).to_string().len() > MAX_CLAIMS_BYTES {
                essential.remove(*key);
            }
        }
    }
    tracing::warn!(
        bytes = text.len(),
        "the user's claims exceed 16 KiB; only the essential ones are kept"
    );
    (Value::Object(essential).to_string(), email_verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn token_claims_are_dropped_and_verification_read() {
        let (text, verified) = kept_claims(&map(json!({
            "sub": "alice", "nonce": "n", "exp": 1, "groups": ["admins"],
            "email": "a@example.com", "email_verified": true
        })));
        let back: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back["groups"], json!(["admins"]));
        assert!(back.get("nonce").is_none() && back.get("exp").is_none());
        assert!(verified);
        for (v, want) in [
            (json!(false), false),
            (json!("true"), true),
            (json!("TRUE"), true),
            (json!("no"), false),
            (json!(1), false),
        ] {
            assert_eq!(kept_claims(&map(json!({ "email_verified": v }))).1, want);
        }
        assert!(!kept_claims(&Map::new()).1, "absent is unverified");
    }

    #[test]
    fn oversized_claims_keep_the_essential_ones_within_the_bound() {
        let (text, _) = kept_claims(&map(json!({
            "sub": "alice", "email": "a@example.com", "groups": ["g"],
            "huge": "x".repeat(MAX_CLAIMS_BYTES * 2)
        })));
        assert!(text.len() <= MAX_CLAIMS_BYTES);
        let back: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back["sub"], json!("alice"));
        assert_eq!(back["groups"], json!(["g"]));
        assert!(back.get("huge").is_none());
        let (text, _) = kept_claims(&map(json!({
            "sub": "alice", "groups": ["y".repeat(MAX_CLAIMS_BYTES * 2)]
        })));
        assert!(
            text.len() <= MAX_CLAIMS_BYTES,
            "an oversized essential claim goes too"
        );
    }
}
