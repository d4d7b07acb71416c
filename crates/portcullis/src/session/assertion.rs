//! The signed identity assertion: `X-Portcullis-Jwt-Assertion` on every request to the
//! app, a compact JWS (ES256) the app verifies with `{prefix}/jwks.json`, so that a
//! request that did not pass the gateway cannot claim to be anyone.
//!
//! - Claims: `iss` (the public origin), `aud` (`assertion.audience`), `sub` (our user
//!   id), `email` (verified only), `name`, `groups` (when the provider sends them),
//!   `iat`, `exp` (at most five minutes later, never after the session ends).
//! - One signature per session, reused until a minute before it expires or until the
//!   session's id, user or claims change: no ECDSA signature per request.
//! - Keys live in the store (sealed like tokens), one per generation, written
//!   insert-if-absent: instances starting together on an empty store agree on one key.
//!   `portcullis keys rotate` adds the next generation. Every instance re-reads the keys
//!   every [`RELOAD_EVERY`] seconds; a new key is published at once but signs only
//!   [`ACTIVATION`] seconds after it was made, so every instance publishes it before
//!   anyone signs with it; a retired key stays published until the assertions it
//!   signed have expired.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use axum::http::HeaderValue;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use quick_cache::sync::Cache;
use serde_json::{Value, json};
use uuid::Uuid;

use super::seal::KeyRing;
use crate::clock::UnixTime;
use crate::store::{SessionRecord, SigningKeyRecord, Store, StoreError};

/// The longest an assertion lives, seconds.
pub const LIFETIME: i64 = 300;
/// An assertion is signed afresh when it has less than this left.
const RESIGN_BEFORE: i64 = 60;
/// Seconds between two reads of the keys from the store, on every instance.
pub const RELOAD_EVERY: i64 = 10;
/// Seconds after its creation a new key starts signing: every instance has re-read the
/// keys (and publishes it) by then.
pub const ACTIVATION: i64 = 3 * RELOAD_EVERY;
/// Sessions whose assertion is kept; more are signed again when they come back.
const CACHED_SESSIONS: usize = 100_000;

/// A signing key, opened.
struct LoadedKey {
    record: SigningKeyRecord,
    encoding: EncodingKey,
    jwk: Value,
}

/// The keys as last read from the store, oldest first.
#[derive(Default)]
struct KeySet {
    keys: Vec<LoadedKey>,
}

impl KeySet {
    /// When `keys[i]` starts signing: the first key ever at once (no instance published
    /// anything before it), every later one [`ACTIVATION`] after it was made.
    fn activation(&self, i: usize) -> UnixTime {
        let created = self.keys[i].record.created_at;
        if i == 0 {
            created
        } else {
            created + ACTIVATION
        }
    }

    /// The key that signs at `now`: the newest active one.
    fn signing(&self, now: UnixTime) -> Option<&LoadedKey> {
        (0..self.keys.len())
            .rev()
            .find(|&i| self.activation(i) <= now)
            .map(|i| &self.keys[i])
    }

    /// The keys to publish at `now`: those that sign or will, and retired ones until
    /// every assertion they signed has expired (a minute of clock skew included).
    fn published(&self, now: UnixTime) -> Vec<&Value> {
        (0..self.keys.len())
            .filter(|&i| i + 1 == self.keys.len() || now < self.activation(i + 1) + LIFETIME + 60)
            .map(|i| &self.keys[i].jwk)
            .collect()
    }
}

/// One session's assertion and what it was signed for.
struct Signed {
    header: HeaderValue,
    expires_at: UnixTime,
    kid: String,
    id_hash: String,
    user: (Uuid, Option<String>, Option<String>),
    claims: String,
}

/// Why no assertion could be made.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the assertion signing keys cannot be used: {0}")]
    Key(String),
}

/// The signer of one gateway.
pub struct Assertions {
    issuer: String,
    audience: String,
    keys: RwLock<Arc<KeySet>>,
    /// When the keys are next read from the store (0: never read yet).
    next_reload: AtomicI64,
    reloading: AtomicBool,
    signed: Cache<Uuid, Arc<Signed>>,
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Assertions {
    pub fn new(issuer: String, audience: String) -> Self {
        Self {
            issuer,
            audience,
            keys: RwLock::new(Arc::new(KeySet::default())),
            next_reload: AtomicI64::new(0),
            reloading: AtomicBool::new(false),
            signed: Cache::new(CACHED_SESSIONS),
        }
    }

    fn key_set(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the keys from the store, making the first one if there is none.
    pub async fn reload(
        &self,
        store: &dyn Store,
        ring: &KeyRing,
        now: UnixTime,
    ) -> Result<(), AssertionError> {
        let mut records = store.signing_keys().await?;
        if records.is_empty() {
            // Insert-if-absent: of several instances starting at once, one key wins and
            // every one reads it back.
            store.add_signing_key(&new_key(1, ring, now)?).await?;
            records = store.signing_keys().await?;
        }
        let current = self.key_set();
        let mut keys = Vec::with_capacity(records.len());
        for record in records {
            // Opening a key is costly: reuse the ones already open.
            if let Some(open) = current.keys.iter().find(|k| k.record == record) {
                keys.push(LoadedKey {
                    record,
                    encoding: open.encoding.clone(),
                    jwk: open.jwk.clone(),
                });
                continue;
            }
            match open_key(&record, ring) {
                Ok((encoding, jwk)) => keys.push(LoadedKey {
                    record,
                    encoding,
                    jwk,
                }),
                // A key sealed under a secret this instance lacks: never signs here.
                Err(e) => tracing::warn!(
                    kid = %record.kid,
                    error = %e,
                    "an assertion signing key cannot be opened with this key ring; it is skipped"
                ),
            }
        }
        if keys.is_empty() {
            return Err(AssertionError::Key(
                "no signing key in the store opens with this key ring (is PORTCULLIS_SECRET the one the other instances use?)".into(),
            ));
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(KeySet { keys });
        self.next_reload
            .store(now + RELOAD_EVERY, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the keys are due to be read again (or were never read).
    pub(crate) fn stale(&self, now: UnixTime) -> bool {
        now >= self.next_reload.load(Ordering::Relaxed)
    }

    /// Whether any key was read yet.
    pub(crate) fn has_keys(&self) -> bool {
        !self.key_set().keys.is_empty()
    }

    /// Claims the one background reading; `false` when one is running already.
    pub(crate) fn begin_reload(&self) -> bool {
        !self.reloading.swap(true, Ordering::AcqRel)
    }

    /// Ends a background reading; after a failure the next is tried an interval later
    /// rather than on every request.
    pub(crate) fn end_reload(&self, failed_at: Option<UnixTime>) {
        if let Some(now) = failed_at {
            self.next_reload
                .store(now + RELOAD_EVERY, Ordering::Relaxed);
        }
        self.reloading.store(false, Ordering::Release);
    }

    /// The assertion for this session's request: the one signed before while it is
    /// still good for this id, user and claims, else a new one.
    pub fn for_session(
        &self,
        record: &SessionRecord,
        session_ends_at: UnixTime,
        now: UnixTime,
    ) -> Result<HeaderValue, AssertionError> {
        let keys = self.key_set();
        let key = keys
            .signing(now)
            .ok_or_else(|| AssertionError::Key("no signing key is loaded yet".into()))?;
        let user = &record.user;
        if let Some(s) = self.signed.get(&record.family_id)
            && now < s.expires_at - RESIGN_BEFORE
            && s.kid == key.record.kid
            && s.id_hash == record.id_hash.as_str()
            && s.user.0 == user.id
            && s.user.1 == user.email
            && s.user.2 == user.name
            && s.claims == record.claims
        {
            return Ok(s.header.clone());
        }
        let expires_at = (now + LIFETIME).min(session_ends_at).max(now + 1);
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user.id.to_string(),
            "iat": now,
            "exp": expires_at,
        });
        if let Some(email) = &user.email {
            claims["email"] = json!(email);
        }
        if let Some(name) = &user.name {
            claims["name"] = json!(name);
        }
        if let Some(groups) = groups(&record.claims) {
            claims["groups"] = groups;
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.record.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| AssertionError::Key(e.to_string()))?;
        let mut value =
            HeaderValue::from_str(&token).map_err(|e| AssertionError::Key(e.to_string()))?;
        value.set_sensitive(true);
        self.signed.insert(
            record.family_id,
            Arc::new(Signed {
                header: value.clone(),
                expires_at,
                kid: key.record.kid.clone(),
                id_hash: record.id_hash.as_str().to_owned(),
                user: (user.id, user.email.clone(), user.name.clone()),
                claims: record.claims.clone(),
            }),
        );
        Ok(value)
    }

    /// `{prefix}/jwks.json`: the keys that sign, will sign, or signed assertions that
    /// have not expired.
    pub fn jwks(&self, now: UnixTime) -> Value {
        json!({ "keys": self.key_set().published(now) })
    }
}

/// `groups` from the kept claims: a list of strings (a single string becomes a list).
fn groups(claims: &str) -> Option<Value> {
    let claims: serde_json::Map<String, Value> = serde_json::from_str(claims).ok()?;
    match claims.get("groups")? {
        Value::String(s) => Some(json!([s])),
        Value::Array(items) => Some(Value::Array(
            items.iter().filter(|v| v.is_string()).cloned().collect(),
        )),
        _ => None,
    }
}

fn seal_context(kid: &str) -> Vec<u8> {
    format!("signing-key:{kid}").into_bytes()
}

/// A new P-256 key of `generation`, sealed.
pub fn new_key(
    generation: i64,
    ring: &KeyRing,
    now: UnixTime,
) -> Result<SigningKeyRecord, AssertionError> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|e| AssertionError::Key(e.to_string()))?;
    let kid = format!("pc-{}", &crate::random::random_token()[..16]);
    Ok(SigningKeyRecord {
        generation,
        sealed_key: ring.seal(pkcs8.as_ref(), &seal_context(&kid)),
        kid,
        created_at: now,
    })
}

/// Opens a stored key: its signing half and its public JWK.
fn open_key(record: &SigningKeyRecord, ring: &KeyRing) -> Result<(EncodingKey, Value), String> {
    let der = ring
        .open(&record.sealed_key, &seal_context(&record.kid))
        .map_err(|e| e.to_string())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        .map_err(|e| e.to_string())?;
    let point = pair.public_key().as_ref();
    // Uncompressed SEC1: 0x04, x, y.
    if point.len() != 65 || point[0] != 4 {
        return Err("unexpected public key encoding".into());
    }
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "use": "sig",
        "alg": "ES256",
        "kid": record.kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    Ok((EncodingKey::from_ec_der(&der), jwk))
}

/// `portcullis keys rotate`: adds the next generation. Every instance publishes it
/// within [`RELOAD_EVERY`] seconds and signs with it [`ACTIVATION`] seconds from now.
pub async fn rotate(
    store: &dyn Store,
    ring: &KeyRing,
    now: UnixTime,
) -> Result<SigningKeyRecord, AssertionError> {
    // Bounded: each failed attempt means another writer added a generation meanwhile.
    for _ in 0..5 {
        let next = store
            .signing_keys()
            .await?
            .last()
            .map_or(1, |k| k.generation + 1);
        let key = new_key(next, ring, now)?;
        if store.add_signing_key(&key).await? {
            return Ok(key);
        }
        // Someone added this generation meanwhile: the next one, then.
    }
    Err(AssertionError::Key(
        "other writers keep adding signing keys; try again".into(),
    ))
}
