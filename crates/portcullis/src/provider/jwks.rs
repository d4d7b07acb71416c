//! The provider's signing keys (RFC 7517), cached. An unknown `kid` triggers one
//! refetch, rate-limited so that random kids cannot make us hammer the provider
//! (docs/security.md J12); a failed fetch keeps the last good set. Keys of unknown types,
//! encryption keys and symmetric keys are skipped one by one, never failing the set.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use tokio::sync::{Mutex, RwLock};

use super::http::ProviderHttp;
use super::{Algorithm, ProviderError};

/// Cap on the JWKS document (R03).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Least time between two fetches caused by unknown kids.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// A key set older than this is refetched before use, so that keys the provider has
/// withdrawn stop being trusted.
pub const MAX_KEY_SET_AGE: Duration = Duration::from_secs(3600);

/// Key families: which algorithms a key may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyFamily {
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Self::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Self::EcP256, ES256)
                | (Self::EcP384, ES384)
                | (Self::Ed25519, EdDSA)
        )
    }
}

/// One usable verification key.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    /// The key's own `alg`, when it names one.
    pub alg: Option<String>,
    pub family: KeyFamily,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish()
    }
}

impl VerificationKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.family.verifies(alg) && self.alg.as_deref().is_none_or(|a| a == alg.name())
    }
}

/// Parses a JWKS document, keeping only the keys we can use for signatures.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<VerificationKey>, ProviderError> {
    let doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ProviderError::BadResponse("JWKS is not JSON".into()))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| ProviderError::BadResponse("JWKS has no `keys` array".into()))?;
    Ok(keys.iter().filter_map(parse_key).collect())
}

fn parse_key(value: &serde_json::Value) -> Option<VerificationKey> {
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyFamily::EcP256,
            EllipticCurve::P384 => KeyFamily::EcP384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyFamily::Ed25519
        }
        // Symmetric keys never come from a JWKS (J02); anything else is unknown.
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        alg: value.get("alg").and_then(|a| a.as_str()).map(str::to_owned),
        family,
        key,
    })
}

/// The cached key set.
#[derive(Debug)]
pub struct JwksCache {
    jwks_uri: RwLock<String>,
    keys: RwLock<Arc<Vec<VerificationKey>>>,
    /// When the current key set was fetched.
    fetched_at: RwLock<Option<Instant>>,
    /// Serialises fetches and remembers when the last one happened.
    last_fetch: Mutex<Option<Instant>>,
    min_refetch_interval: Duration,
}

impl JwksCache {
    pub fn new(min_refetch_interval: Duration) -> Self {
        Self {
            jwks_uri: RwLock::new(String::new()),
            keys: RwLock::new(Arc::new(Vec::new())),
            fetched_at: RwLock::new(None),
            last_fetch: Mutex::new(None),
            min_refetch_interval,
        }
    }

    /// Points the cache at a (new) JWKS URI from discovery.
    pub async fn set_uri(&self, uri: &str) {
        let mut current = self.jwks_uri.write().await;
        if *current != uri {
            *current = uri.to_owned();
            *self.last_fetch.lock().await = None;
        }
    }

    pub async fn keys(&self) -> Arc<Vec<VerificationKey>> {
        self.keys.read().await.clone()
    }

    /// Fetches the key set unless one was fetched within the rate limit. Returns the
    /// current keys either way; a failed fetch keeps the last good set.
    pub async fn refresh(
        &self,
        http: &ProviderHttp,
    ) -> Result<Arc<Vec<VerificationKey>>, ProviderError> {
        let mut last = self.last_fetch.lock().await;
        if let Some(at) = *last
            && at.elapsed() < self.min_refetch_interval
        {
            return Ok(self.keys().await);
        }
        *last = Some(Instant::now());
        let uri = self.jwks_uri.read().await.clone();
        let answer = http.get("jwks", &uri, None, MAX_JWKS_BYTES).await?;
        if !answer.status.is_success() {
            return Err(ProviderError::BadResponse(format!(
                "JWKS answered HTTP {}",
                answer.status.as_u16()
            )));
        }
        let parsed = Arc::new(parse_jwks(&answer.body)?);
        *self.keys.write().await = parsed.clone();
        *self.fetched_at.write().await = Some(Instant::now());
        Ok(parsed)
    }

    /// Keys that may verify a token with this `kid` and `alg`: from the cache, else after
    /// one (rate-limited) refetch.
    pub async fn find(
        &self,
        http: &ProviderHttp,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<VerificationKey>, ProviderError> {
        let pick = |keys: &[VerificationKey]| -> Vec<VerificationKey> {
            match kid {
                Some(kid) => keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid) && k.fits(alg))
                    .cloned()
                    .collect(),
                // J11: no kid is fine when exactly one key fits.
                None => {
                    let fitting: Vec<_> = keys.iter().filter(|k| k.fits(alg)).cloned().collect();
                    if fitting.len() == 1 {
                        fitting
                    } else {
                        Vec::new()
                    }
                }
            }
        };
        let fresh = self
            .fetched_at
            .read()
            .await
            .is_some_and(|at| at.elapsed() < MAX_KEY_SET_AGE);
        if fresh {
            let found = pick(&self.keys().await);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        match self.refresh(http).await {
            Ok(keys) => Ok(pick(&keys)),
            Err(e) => {
                let found = pick(&self.keys().await);
                if found.is_empty() {
                    // The provider's fault, not the token's: a 502, not a refusal.
                    Err(e)
                } else {
                    tracing::warn!(error = %e, "JWKS refetch failed; using the last good key set");
                    Ok(found)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn j11_unknown_key_types_are_skipped_not_fatal() {
        let doc = serde_json::json!({"keys": [
            {"kty": "weird", "kid": "x"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"},
            {"kty": "EC", "crv": "P-256", "kid": "sig",
             "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        assert!(keys[0].fits(Algorithm::ES256));
        assert!(!keys[0].fits(Algorithm::RS256));
    }
}
