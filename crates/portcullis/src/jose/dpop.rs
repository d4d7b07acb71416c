//! DPoP proofs (RFC 9449 §4): the gateway's proof-of-possession key signs one proof per
//! request — `typ` `dpop+jwt`, ES256, the public key in the `jwk` header; `jti`, `htm`,
//! `htu` (the target URI without query and fragment), `iat`, the server's `nonce` when
//! it gave one, and `ath` (the access token's SHA-256) when a bound token goes along.
//! The key is an EC P-256 key; its RFC 7638 thumbprint is what tokens are bound to
//! (`jkt`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use zeroize::Zeroizing;

use super::client_key::{ClientKey, ClientKeyError, KeyKind, generate_pem};
use crate::clock::UnixTime;

/// The JWT `typ` of a DPoP proof (RFC 9449 §4.2).
pub const PROOF_TYP: &str = "dpop+jwt";

/// The gateway's DPoP key.
pub struct DpopKey {
    key: ClientKey,
    jwk: jsonwebtoken::jwk::Jwk,
    /// The PKCS#8 PEM it was read from, to seal it again under a new key ring.
    pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey")
            .field("jkt", &self.jkt())
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A new key, and its PKCS#8 PEM (to be sealed and stored).
    pub fn generate() -> Result<(Self, Zeroizing<String>), ClientKeyError> {
        let pem = Zeroizing::new(generate_pem(KeyKind::EcP256)?);
        Ok((Self::from_pem(pem.as_bytes())?, pem))
    }

    /// A stored key; only EC P-256 (ES256) is a DPoP key here.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ClientKeyError> {
        let key = ClientKey::from_pem(pem, None)?;
        if key.kind() != KeyKind::EcP256 {
            return Err(ClientKeyError::UnsupportedKey);
        }
        let jwk = key.public_jwk()?;
        Ok(Self {
            key,
            jwk,
            pem: Zeroizing::new(pem.to_vec()),
        })
    }

    /// The private key's PEM (to be sealed, never logged).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// The RFC 7638 thumbprint of the public key (`cnf.jkt`, `dpop_jkt`).
    pub fn jkt(&self) -> &str {
        self.key.kid()
    }

    /// A fresh proof for `htm` `htu` (its query and fragment are left out), with the
    /// server's `nonce` and, for a request that carries a bound token, `ath`.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        nonce: Option<&str>,
        access_token: Option<&str>,
        now: UnixTime,
    ) -> Result<String, ClientKeyError> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(PROOF_TYP.to_owned());
        header.jwk = Some(self.jwk.clone());
        let mut claims = json!({
            "jti": crate::random::random_token(),
            "htm": htm,
            "htu": target_uri(htu),
            "iat": now,
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        if let Some(token) = access_token {
            claims["ath"] = json!(ath(token));
        }
        self.key.sign(&header, &claims)
    }
}

/// `ath`: the base64url SHA-256 of the access token (RFC 9449 §4.2).
pub fn ath(access_token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// `htu`: the URI without its query and fragment.
fn target_uri(uri: &str) -> String {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    uri[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    fn decode(proof: &str) -> (Header, Value) {
        let header = jsonwebtoken::decode_header(proof).unwrap();
        let jwk = header
            .jwk
            .clone()
            .expect("the public key travels in the header");
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(proof, &key, &validation)
            .unwrap()
            .claims;
        (header, claims)
    }

    #[test]
    fn a_proof_names_the_request_and_verifies_with_its_own_jwk() {
        let (key, _) = DpopKey::generate().unwrap();
        let proof = key
            .proof(
                "POST",
                "https://id.example.com/token?x=1#f",
                Some("n-1"),
                None,
                1_900_000_000,
            )
            .unwrap();
        let (header, claims) = decode(&proof);
        assert_eq!(header.typ.as_deref(), Some(PROOF_TYP));
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk = serde_json::to_value(header.jwk.unwrap()).unwrap();
        assert!(jwk.get("d").is_none(), "never the private key: {jwk}");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://id.example.com/token");
        assert_eq!(claims["iat"], 1_900_000_000);
        assert_eq!(claims["nonce"], "n-1");
        assert!(claims.get("ath").is_none());
        let again = key
            .proof(
                "POST",
                "https://id.example.com/token",
                None,
                None,
                1_900_000_000,
            )
            .unwrap();
        assert_ne!(
            decode(&again).1["jti"],
            claims["jti"],
            "a fresh jti each time"
        );
    }

    #[test]
    fn a_proof_with_a_bound_token_carries_its_hash() {
        let (key, pem) = DpopKey::generate().unwrap();
        let proof = key
            .proof("GET", "https://api.example.com/x", None, Some("token-1"), 1)
            .unwrap();
        // RFC 9449 §4.2: base64url(SHA-256(ASCII(access token))).
        assert_eq!(decode(&proof).1["ath"], ath("token-1"));
        // RFC 9449 §7.1's example.
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
        // The stored form reads back as the same key.
        assert_eq!(DpopKey::from_pem(pem.as_bytes()).unwrap().jkt(), key.jkt());
    }

    #[test]
    fn only_ec_p256_keys_make_proofs() {
        for kind in [KeyKind::Ed25519, KeyKind::Rsa] {
            let pem = generate_pem(kind).unwrap();
            assert_eq!(
                DpopKey::from_pem(pem.as_bytes()).unwrap_err(),
                ClientKeyError::UnsupportedKey
            );
        }
    }
}
