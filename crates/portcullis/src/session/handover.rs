//! Handing a rotated session's new id to the holders of its old one.
//!
//! The store keeps only hashes of ids, so after a rotation it cannot say what the new
//! id is. Instead it keeps the new id sealed (AES-256-GCM-SIV) under a key derived by
//! HKDF-SHA256 from the *old* id: whoever presents the old id can be given the new
//! cookie, while a store dump, even with the gateway's key ring, reveals no live id.

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use super::id::SessionId;

const SALT: &[u8] = b"portcullis session handover v1";
const AAD: &[u8] = b"portcullis next session id";

fn key_for(old: &SessionId) -> RandomizedNonceKey {
    let mut key = Zeroizing::new([0u8; 32]);
    // HKDF cannot fail for a 32-byte output, and the key length is AES-256's.
    #[allow(clippy::expect_used)]
    hkdf::Salt::new(hkdf::HKDF_SHA256, SALT)
        .extract(old.expose().as_bytes())
        .expand(&[b"aes-256-gcm-siv"], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut key[..]))
        .expect("HKDF-SHA256 expands to 32 bytes");
    #[allow(clippy::expect_used)]
    RandomizedNonceKey::new(&AES_256_GCM_SIV, &key[..]).expect("a 32-byte AES-256 key")
}

/// Seals `new` for holders of `old`.
pub fn seal(old: &SessionId, new: &SessionId) -> String {
    let mut in_out = new.expose().as_bytes().to_vec();
    #[allow(clippy::expect_used)]
    let nonce = key_for(old)
        .seal_in_place_append_tag(Aad::from(AAD), &mut in_out)
        .expect("AES-256-GCM-SIV sealing cannot fail for 43 bytes");
    let mut blob = nonce.as_ref().to_vec();
    blob.extend_from_slice(&in_out);
    URL_SAFE_NO_PAD.encode(blob)
}

/// The id sealed by [`seal`] for `old`, or `None` if `sealed` was not sealed for it.
pub fn open(old: &SessionId, sealed: &str) -> Option<SessionId> {
    let blob = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if blob.len() < NONCE_LEN + AES_256_GCM_SIV.tag_len() {
        return None;
    }
    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut in_out = Zeroizing::new(ciphertext.to_vec());
    let plain = key_for(old)
        .open_in_place(nonce, Aad::from(AAD), &mut in_out)
        .ok()?;
    SessionId::parse(std::str::from_utf8(plain).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_old_id_opens_the_handover() {
        let old = SessionId::generate();
        let new = SessionId::generate();
        let sealed = seal(&old, &new);
        assert_eq!(open(&old, &sealed), Some(new.clone()));
        assert!(!sealed.contains(new.expose()));
        assert_eq!(open(&SessionId::generate(), &sealed), None);
        assert_eq!(open(&new, &sealed), None);
        let mut forged = sealed.into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(open(&old, std::str::from_utf8(&forged).unwrap()), None);
        assert_eq!(open(&old, ""), None);
        assert_eq!(open(&old, "***"), None);
    }
}
