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
//!   every [`RELOAD_EVERY`] seconds (in the background; on the request itself when its
//!   copy is older than [`ACTIVATION`], so that an instance idle through a rotation
//!   never signs with a key the others withdrew). A new key is published at once but
//!   signs only [`ACTIVATION`] seconds after it was made: by then every instance
//!   publishes it, and a verifier's cached key set (`jwks.json` is cacheable for
//!   [`JWKS_MAX_AGE`] s; libraries wait up to 30 s between two fetches) has it. A retired
//!   key stays published until the assertions it signed have expired.

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
/// How long `jwks.json` may be cached, seconds.
pub const JWKS_MAX_AGE: i64 = 60;
/// Seconds after its creation a new key starts signing: the keys' re-read interval,
/// `jwks.json`'s cache lifetime, the 30 s verifiers such as `jose` wait between two
/// fetches, and a margin.
pub const ACTIVATION: i64 = 120;
/// Bytes of assertions kept (one per session, reused until it is due again).
const CACHED_BYTES: u64 = 64 * 1024 * 1024;
/// The largest assertion sent: past it, `groups` (then `name`) are left out, so that
/// the header stays under the limits of common app servers.
pub const MAX_ASSERTION: usize = 8 * 1024;

const _: () = assert!(ACTIVATION >= RELOAD_EVERY + JWKS_MAX_AGE + 30);

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
    /// When `keys[i]` starts signing (see [`activation`]).
    fn activation(&self, i: usize) -> UnixTime {
        activation(&self.keys[i].record)
    }

    /// The key that signs at `now`: the newest active one.
    fn signing(&self, now: UnixTime) -> Option<&LoadedKey> {
        (0..self.keys.len())
            .rev()
            .find(|&i| self.activation(i) <= now)
            .map(|i| &self.keys[i])
    }

    /// The keys to publish at `now`: those in use ([`in_use`]: signing, about to, or
    /// retired with assertions still alive).
    fn published(&self, now: UnixTime) -> Vec<&Value> {
        let used = in_use(self.keys.iter().map(|k| &k.record), now);
        self.keys
            .iter()
            .filter(|k| used.iter().any(|r| r.kid == k.record.kid))
            .map(|k| &k.jwk)
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
    /// A keyed hash of the session's claims (the claims themselves may be 16 KiB).
    claims: u64,
}

/// The cache holds assertions up to [`CACHED_BYTES`].
#[derive(Clone)]
struct ByLength;

impl quick_cache::Weighter<Uuid, Arc<Signed>> for ByLength {
    fn weight(&self, _: &Uuid, s: &Arc<Signed>) -> u64 {
        (s.header.len() + s.id_hash.len() + 128) as u64
    }
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
    /// When the keys were last read.
    loaded_at: AtomicI64,
    reloading: AtomicBool,
    signed: Cache<Uuid, Arc<Signed>, ByLength>,
    hasher: std::hash::RandomState,
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
            loaded_at: AtomicI64::new(0),
            reloading: AtomicBool::new(false),
            signed: Cache::with_weighter((CACHED_BYTES / 2048) as usize, CACHED_BYTES, ByLength),
            hasher: std::hash::RandomState::new(),
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
        if !records.iter().any(|r| ring.holds_key_of(&r.sealed_key)) {
            add_first_or_emergency_key(store, ring, &records, now).await?;
            records = store.signing_keys().await?;
        }
        let current = self.key_set();
        let mut keys = Vec::with_capacity(records.len());
        for record in in_use(&records, now).into_iter().cloned() {
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
        // Keys read this recently need no reading on the request path (`too_old`).
        self.loaded_at.store(now, Ordering::Relaxed);
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

    /// Whether the keys at hand may lack a key that signs elsewhere by now: read them
    /// before signing rather than in the background.
    pub(crate) fn too_old(&self, now: UnixTime) -> bool {
        now - self.loaded_at.load(Ordering::Relaxed) >= ACTIVATION
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
    /// still good for this id, user, claims and session end, else a new one. It ends
    /// at most [`LIFETIME`] from now, never after `session_ends_at`, and never later
    /// than `idle` from now (the session's idle timeout).
    pub fn for_session(
        &self,
        record: &SessionRecord,
        session_ends_at: UnixTime,
        idle: i64,
        now: UnixTime,
    ) -> Result<HeaderValue, AssertionError> {
        let keys = self.key_set();
        let key = keys
            .signing(now)
            .ok_or_else(|| AssertionError::Key("no signing key is loaded yet".into()))?;
        let user = &record.user;
        let expires_at = (now + LIFETIME)
            .min(session_ends_at)
            .min(now + idle)
            .max(now + 1);
        let claims_hash = std::hash::BuildHasher::hash_one(&self.hasher, &record.claims);
        if let Some(s) = self.signed.get(&record.family_id)
            && now < s.expires_at
            // Signed afresh with under a minute left, unless a new one could not end
            // later (the session ends first).
            && (now + RESIGN_BEFORE < s.expires_at || s.expires_at >= expires_at)
            && s.expires_at <= session_ends_at
            && s.kid == key.record.kid
            && s.id_hash == record.id_hash.as_str()
            && s.user.0 == user.id
            && s.user.1 == user.email
            && s.user.2 == user.name
            && s.claims == claims_hash
        {
            return Ok(s.header.clone());
        }
        let subject = AssertedSubject {
            user,
            provider_id: &record.provider_id,
            groups: groups(&record.claims),
            auth_method: None,
        };
        let token = self.sign(key, &subject, now, expires_at)?;
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
                claims: claims_hash,
            }),
        );
        Ok(value)
    }

    /// A new assertion for the principal of an access token (a `[[bearer]]` request):
    /// it ends at most [`LIFETIME`] from now and never after the token. Callers keep it
    /// with the validated token and sign again when it is near its end.
    pub fn for_token(
        &self,
        subject: &AssertedSubject<'_>,
        token_expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<(HeaderValue, UnixTime), AssertionError> {
        let keys = self.key_set();
        let key = keys
            .signing(now)
            .ok_or_else(|| AssertionError::Key("no signing key is loaded yet".into()))?;
        let expires_at = (now + LIFETIME).min(token_expires_at).max(now + 1);
        let token = self.sign(key, subject, now, expires_at)?;
        let mut value =
            HeaderValue::from_str(&token).map_err(|e| AssertionError::Key(e.to_string()))?;
        value.set_sensitive(true);
        Ok((value, expires_at))
    }

    /// A new assertion for `subject`, signed by `key`: the optional claims are left
    /// out when it would not fit common header limits.
    fn sign(
        &self,
        key: &LoadedKey,
        subject: &AssertedSubject<'_>,
        now: UnixTime,
        expires_at: UnixTime,
    ) -> Result<String, AssertionError> {
        let user = subject.user;
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user.id.to_string(),
            "iat": now,
            "exp": expires_at,
            // The provider that signed the user in (`[[providers]]` id), or whose
            // issuer the access token is from.
            "idp": subject.provider_id,
        });
        if let Some(method) = subject.auth_method {
            // `bearer` or `dpop`; and a client is not a user.
            claims["auth_method"] = json!(method);
            claims["kind"] = json!(user.kind.as_str());
        }
        if let Some(email) = &user.email {
            claims["email"] = json!(email);
        }
        if let Some(name) = &user.name {
            claims["name"] = json!(name);
        }
        if let Some(groups) = subject.groups.clone() {
            claims["groups"] = groups;
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.record.kid.clone());
        let sign = |claims: &Value| {
            jsonwebtoken::encode(&header, claims, &key.encoding)
                .map_err(|e| AssertionError::Key(e.to_string()))
        };
        let mut token = sign(&claims)?;
        // Too large for common app servers' header limits: the optional claims go.
        for optional in ["groups", "name"] {
            if token.len() <= MAX_ASSERTION {
                break;
            }
            if let Some(map) = claims.as_object_mut()
                && map.remove(optional).is_some()
            {
                tracing::warn!(
                    user = %user.id,
                    claim = optional,
                    "the identity assertion would exceed 8 KiB; a claim was left out"
                );
                token = sign(&claims)?;
            }
        }
        Ok(token)
    }

    /// `{prefix}/jwks.json`: the keys that sign, will sign, or signed assertions that
    /// have not expired.
    pub fn jwks(&self, now: UnixTime) -> Value {
        json!({ "keys": self.key_set().published(now) })
    }
}

/// Whom an assertion speaks for.
#[derive(Debug)]
pub struct AssertedSubject<'a> {
    /// The identity row: `sub` is its id; `email` and `name` as the row has them.
    pub user: &'a crate::store::User,
    pub provider_id: &'a str,
    pub groups: Option<Value>,
    /// `bearer` or `dpop` for a token's principal; `None` for a session.
    pub auth_method: Option<&'static str>,
}

/// `groups` from the kept claims: a list of strings (a single string becomes a list).
fn groups(claims: &str) -> Option<Value> {
    let claims: serde_json::Map<String, Value> = serde_json::from_str(claims).ok()?;
    groups_of(&claims)
}

/// `groups` of a claims object (a single string becomes a list).
pub fn groups_of(claims: &serde_json::Map<String, Value>) -> Option<Value> {
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

/// When a key starts signing: the first key ever (generation 1) at once, as no instance
/// published anything before it; every later one [`ACTIVATION`] after it was made (an
/// emergency key is recorded as made [`ACTIVATION`] before it was: it signs at once).
fn activation(record: &SigningKeyRecord) -> UnixTime {
    if record.generation <= 1 {
        // The first key signs from the start, whatever the clock of the instance that
        // reads it says: instances' clocks differ a little, and one a second behind the
        // instance that made the key would otherwise have no key to sign with.
        UnixTime::MIN
    } else {
        record.created_at + ACTIVATION
    }
}

/// The first key of an empty store, or (G08) an emergency key: no stored key opens with
/// this ring — a new secret on a used store. Insert-if-absent: of several instances
/// starting at once, one key wins and every one reads it back.
async fn add_first_or_emergency_key(
    store: &dyn Store,
    ring: &KeyRing,
    records: &[SigningKeyRecord],
    now: UnixTime,
) -> Result<(), AssertionError> {
    // The first key of an empty store, or (G08) an emergency key: no stored key
    // opens with this ring — a new secret on a used store. Insert-if-absent: of
    // several instances starting at once, one key wins and every one reads it
    // back. An emergency key signs at once: the keys that signed before are
    // gone with the old secret, and verifiers fetch `jwks.json` again when they
    // meet an unknown `kid`.
    let next = records.last().map_or(1, |r| r.generation + 1);
    // Not while an instance on another key ring is running (heard on the change
    // feed): that is a misconfigured instance (a mistyped secret, another
    // deployment on this store), not a replaced secret, and an emergency key
    // would take every other instance out of the load balancer. This one stays
    // unready instead. Nor before the feed could have heard one.
    if next > 1 {
        match store.feed().another_ring_is_running() {
            Some(false) => {}
            Some(true) => {
                return Err(AssertionError::Key(
                    "no signing key in the store opens with this key ring, and an instance with another key ring is running: this instance stays out of service (give it the same secret, or stop the others first: docs/deployment.md, \"If the secret leaked\")".into(),
                ));
            }
            None => {
                return Err(AssertionError::Key(
                    "no signing key in the store opens with this key ring; an emergency key is made once no instance with another key ring has been heard for a few seconds".into(),
                ));
            }
        }
    }
    let mut key = new_key(next, ring, now)?;
    if next > 1 {
        key.created_at = now - ACTIVATION;
        tracing::warn!(
            generation = next,
            kid = %key.kid,
            "no assertion signing key in the store opens with this key ring (a new secret?): an emergency key signs from now; instances on the old ring are stale and fail /readyz"
        );
    }
    store.add_signing_key(&key).await?;
    Ok(())
}

/// The stored keys in use at `now`, oldest first: the newest, and every older one until
/// the assertions it signed have expired after its successor took over (a minute of
/// clock skew included). Retired keys are never opened again, so a key ring may drop
/// the key that sealed them.
fn in_use<'a>(
    records: impl IntoIterator<Item = &'a SigningKeyRecord>,
    now: UnixTime,
) -> Vec<&'a SigningKeyRecord> {
    let mut records: Vec<&SigningKeyRecord> = records.into_iter().collect();
    records.sort_by_key(|r| r.generation);
    (0..records.len())
        .filter(|&i| i + 1 == records.len() || now < activation(records[i + 1]) + LIFETIME + 60)
        .map(|i| records[i])
        .collect()
}

/// G08: whether the store holds a signing key newer than any `ring` opens — another
/// instance made it with a ring this one lacks, so this instance is stale (its
/// `/readyz` fails and it leaves the load balancer).
pub(crate) fn stale_ring(records: &[SigningKeyRecord], ring: &KeyRing) -> bool {
    let newest = records.iter().map(|r| r.generation).max();
    let newest_opened = records
        .iter()
        .filter(|r| ring.holds_key_of(&r.sealed_key))
        .map(|r| r.generation)
        .max();
    newest.is_some() && newest_opened < newest
}

/// The stored keys no entry of `ring` opens: what `portcullis keys prune` removes.
pub fn unreadable_keys<'a>(
    records: &'a [SigningKeyRecord],
    ring: &KeyRing,
) -> Vec<&'a SigningKeyRecord> {
    records
        .iter()
        .filter(|r| !ring.holds_key_of(&r.sealed_key))
        .collect()
}

/// The first stored key in use at `now` that `ring` cannot open: a ring without it
/// would leave a restarted instance unable to sign or publish it.
pub(crate) fn unopenable_key_in_use<'a>(
    records: &'a [SigningKeyRecord],
    ring: &KeyRing,
    now: UnixTime,
) -> Option<&'a SigningKeyRecord> {
    in_use(records, now)
        .into_iter()
        .find(|r| ring.open(&r.sealed_key, &seal_context(&r.kid)).is_err())
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

#[cfg(test)]
mod tests;
