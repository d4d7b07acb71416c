//! Signing keys for the hostile provider, and a compact-JWS signer that lets tests
//! produce exactly the bytes they want (including broken ones).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub struct TestKeys {
    pub rsa: RsaKeyPair,
    pub rsa_kid: String,
    pub ec: EcdsaKeyPair,
    pub ec_kid: String,
}

impl TestKeys {
    pub fn generate(label: &str) -> Self {
        Self {
            rsa: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
            rsa_kid: format!("{label}-rsa"),
            ec: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            ec_kid: format!("{label}-ec"),
        }
    }

    pub fn rsa_jwk(&self) -> Value {
        let pk = self.rsa.public_key();
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.rsa_kid,
            "n": b64(pk.modulus().big_endian_without_leading_zero()),
            "e": b64(pk.exponent().big_endian_without_leading_zero()),
        })
    }

    pub fn ec_jwk(&self) -> Value {
        let point = self.ec.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.ec_kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        })
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.rsa_jwk(), self.ec_jwk()] })
    }

    /// The RSA public key in SubjectPublicKeyInfo DER (what an HS256-confusion attacker
    /// would use as the HMAC key).
    pub fn rsa_public_der(&self) -> Vec<u8> {
        use aws_lc_rs::encoding::AsDer as _;
        self.rsa.public_key().as_der().unwrap().as_ref().to_vec()
    }

    pub fn sign_rs256(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw_rs256(&header.to_string(), &claims.to_string())
    }

    pub fn sign_es256(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = self
            .ec
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    /// Signs header and payload JSON given as exact text (duplicate members, odd spacing).
    pub fn sign_raw_rs256(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let mut sig = vec![0u8; self.rsa.public_modulus_len()];
        self.rsa
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", b64(sig))
    }

    /// A standard RS256 ID token header.
    pub fn rs256_header(&self) -> Value {
        json!({ "alg": "RS256", "typ": "JWT", "kid": self.rsa_kid })
    }

    pub fn es256_header(&self) -> Value {
        json!({ "alg": "ES256", "typ": "JWT", "kid": self.ec_kid })
    }
}

/// HMAC-SHA256 signature, for algorithm-confusion tokens.
pub fn sign_hs256(key: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&k, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}
