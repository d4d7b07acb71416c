//! Tokens at rest: sealed with AES-256-GCM-SIV (aws-lc-rs `RandomizedNonceKey`, random
//! 96-bit nonce, nonce-misuse resistant) under a key ring. The first key seals, every
//! key opens, so keys rotate without signing anyone out. The associated data binds a
//! ciphertext to one session and one purpose: swapped ciphertexts fail to open.
//!
//! Format: `v1.<key id>.<base64url(nonce || ciphertext || tag)>`.

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::config::SecretKeys;
use crate::random;

pub use crate::store::Sealed;

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed with a key that is no longer in the key ring")]
    UnknownKey,
    #[error("sealed value failed authentication")]
    Forged,
}

struct RingKey {
    id: String,
    key: RandomizedNonceKey,
}

/// The keys that seal tokens at rest.
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        write!(f, "KeyRing({ids:?})")
    }
}

impl KeyRing {
    /// How many keys the ring holds (the first seals).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The sealing key's public id (what this ring seals under; names it in heartbeats).
    pub fn sealing_id(&self) -> &str {
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    /// Whether `other`'s sealing key (its first) is in this ring: what it sealed opens.
    pub fn opens_what_is_sealed_by(&self, other: &KeyRing) -> bool {
        other
            .keys
            .first()
            .is_some_and(|sealing| self.keys.iter().any(|k| k.id == sealing.id))
    }

    pub fn new(secret: &SecretKeys) -> Result<Self, SealError> {
        let keys = secret
            .0
            .iter()
            .map(|bytes| {
                Ok(RingKey {
                    id: key_id(bytes.as_ref()),
                    key: RandomizedNonceKey::new(&AES_256_GCM_SIV, bytes.as_ref())
                        .map_err(|_| SealError::Malformed)?,
                })
            })
            .collect::<Result<Vec<_>, SealError>>()?;
        if keys.is_empty() {
            return Err(SealError::UnknownKey);
        }
        Ok(Self { keys })
    }

    /// A fresh random key in the `PORTCULLIS_SECRET` format.
    pub fn generate_secret() -> Zeroizing<String> {
        Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(random::random_bytes::<32>()),
        )
    }

    /// Seals `plaintext`, bound to `context` (e.g. the session-id hash and field name).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Sealed {
        let current = &self.keys[0];
        let mut in_out = plaintext.to_vec();
        #[allow(clippy::expect_used)]
        let nonce = current
            .key
            .seal_in_place_append_tag(Aad::from(context), &mut in_out)
            .expect("AES-256-GCM-SIV sealing cannot fail for inputs under 64 GiB");
        let mut blob = Vec::with_capacity(NONCE_LEN + in_out.len());
        blob.extend_from_slice(nonce.as_ref());
        blob.extend_from_slice(&in_out);
        Sealed::from_stored(format!(
            "v1.{}.{}",
            current.id,
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    /// Opens a sealed value; fails unless the key is in the ring and `context` matches.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let mut parts = sealed.as_stored().splitn(3, '.');
        let (Some("v1"), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(SealError::UnknownKey)?;
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        if blob.len() < NONCE_LEN + AES_256_GCM_SIV.tag_len() {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut in_out = Zeroizing::new(ciphertext.to_vec());
        let len = key
            .key
            .open_in_place(nonce, Aad::from(context), &mut in_out)
            .map_err(|_| SealError::Forged)?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }

    /// Whether `sealed` names a key of this ring (it may still fail to open if it was
    /// tampered with). A cheap check, no decryption: G08 — a value sealed under a key
    /// the ring lacks counts as absent, and is left for an instance that has the key.
    pub fn holds_key_of(&self, sealed: &Sealed) -> bool {
        let mut parts = sealed.as_stored().splitn(3, '.');
        match (parts.next(), parts.next()) {
            (Some("v1"), Some(kid)) => self.keys.iter().any(|k| k.id == kid),
            _ => false,
        }
    }

    /// Whether `sealed` was sealed under this ring's sealing key (not an older one).
    pub fn sealed_with_sealing_key(&self, sealed: &Sealed) -> bool {
        let mut parts = sealed.as_stored().splitn(3, '.');
        matches!((parts.next(), parts.next()), (Some("v1"), Some(kid)) if kid == self.sealing_id())
    }

    /// Seals a UTF-8 string.
    pub fn seal_str(&self, plaintext: &str, context: &[u8]) -> Sealed {
        self.seal(plaintext.as_bytes(), context)
    }

    /// Opens a value sealed by `seal_str`.
    pub fn open_str(
        &self,
        sealed: &Sealed,
        context: &[u8],
    ) -> Result<Zeroizing<String>, SealError> {
        let bytes = self.open(sealed, context)?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| SealError::Malformed)
    }
}

/// A key's public name: 8 hex digits of SHA-256 over a label and the key. Reveals
/// nothing useful about the key, and is stable across restarts.
fn key_id(key: &[u8]) -> String {
    let mut input = b"portcullis key id v1:".to_vec();
    input.extend_from_slice(key);
    random::sha256_hex(&input)[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(keys: &[[u8; 32]]) -> KeyRing {
        KeyRing::new(&SecretKeys(
            keys.iter().map(|k| Zeroizing::new(*k)).collect(),
        ))
        .unwrap()
    }

    #[test]
    fn g08_a_ring_knows_which_values_it_holds_the_key_of() {
        let (a, b, both) = (
            ring(&[[1; 32]]),
            ring(&[[2; 32]]),
            ring(&[[2; 32], [1; 32]]),
        );
        let sealed = a.seal_str("x", b"ctx");
        assert!(a.holds_key_of(&sealed) && both.holds_key_of(&sealed));
        assert!(!b.holds_key_of(&sealed));
        assert!(!a.holds_key_of(&Sealed::from_stored("garbage".into())));
    }

    #[test]
    fn seal_then_open() {
        let r = ring(&[[1; 32]]);
        let s = r.seal_str("refresh-token", b"ctx");
        assert!(!s.as_stored().contains("refresh-token"));
        assert_eq!(r.open_str(&s, b"ctx").unwrap().as_str(), "refresh-token");
    }

    #[test]
    fn other_context_fails() {
        let r = ring(&[[1; 32]]);
        let s = r.seal_str("t", b"session-a");
        assert_eq!(r.open_str(&s, b"session-b"), Err(SealError::Forged));
    }

    #[test]
    fn old_keys_still_open_after_rotation() {
        let old = ring(&[[1; 32]]);
        let s = old.seal_str("t", b"c");
        let rotated = ring(&[[2; 32], [1; 32]]);
        assert_eq!(rotated.open_str(&s, b"c").unwrap().as_str(), "t");
        let dropped = ring(&[[2; 32]]);
        assert_eq!(dropped.open_str(&s, b"c"), Err(SealError::UnknownKey));
    }

    #[test]
    fn nonces_differ() {
        let r = ring(&[[1; 32]]);
        assert_ne!(r.seal_str("t", b"c"), r.seal_str("t", b"c"));
    }

    proptest! {
        #[test]
        fn round_trips_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512), ctx in proptest::collection::vec(any::<u8>(), 0..64)) {
            let r = ring(&[[9; 32]]);
            let s = r.seal(&data, &ctx);
            prop_assert_eq!(r.open(&s, &ctx).unwrap().to_vec(), data);
        }

        #[test]
        fn any_flipped_byte_is_refused(data in proptest::collection::vec(any::<u8>(), 1..64), pos in any::<usize>()) {
            let r = ring(&[[9; 32]]);
            let s = r.seal(&data, b"c");
            let mut bytes = s.as_stored().as_bytes().to_vec();
            let start = "v1.".len() + 8 + 1;
            let i = start + pos % (bytes.len() - start);
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = Sealed::from_stored(String::from_utf8(bytes).unwrap());
            prop_assume!(tampered != s);
            prop_assert!(r.open(&tampered, b"c").is_err());
        }

        #[test]
        fn open_never_panics(s in ".{0,200}") {
            let r = ring(&[[9; 32]]);
            let _ = r.open(&Sealed::from_stored(s), b"c");
        }
    }
}
