//! The client's own key for `private_key_jwt` (OIDC Core §9, RFC 7523 with
//! rfc7523bis's rules): read from a PEM file (`provider.client_key_file`), it signs one
//! fresh client assertion per request, and its public half is published at
//! `{prefix}/client-jwks.json` for providers that fetch the client's keys.
//!
//! Keys: EC P-256 (ES256), Ed25519 (EdDSA), RSA of at least 2048 bits (RS256; PS256
//! under the FAPI 2.0 profile). PKCS#8 (`PRIVATE KEY`), SEC 1 (`EC PRIVATE KEY`) and
//! PKCS#1 (`RSA PRIVATE KEY`) PEM are read; the parsing and signing are aws-lc-rs's and
//! jsonwebtoken's. A certificate (`provider.client_cert_file`, Entra ID) adds
//! `x5t#S256` to the header and must hold the key's public half.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::clock::UnixTime;

/// The longest an assertion lives (rfc7523bis: short-lived; PRODUCT's `exp` ≤ 60 s).
pub const ASSERTION_LIFETIME_SECS: i64 = 60;

/// The `typ` rfc7523bis defines for client assertions.
pub const ASSERTION_TYP: &str = "client-authentication+jwt";

/// Why a key or certificate file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientKeyError {
    #[error("it holds no PEM block")]
    NotPem,
    #[error(
        "its PEM block is `{0}`, not a private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)"
    )]
    NotAPrivateKey(String),
    #[error("it is not an EC P-256, Ed25519 or RSA (at least 2048 bits) private key")]
    UnsupportedKey,
    #[error("the certificate file holds no CERTIFICATE PEM block")]
    NotACertificate,
    #[error("the certificate does not hold the key's public key")]
    CertificateMismatch,
    #[error("the key could not be used by the signer: {0}")]
    Signer(String),
}

/// The key's family, which decides the signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    Ed25519,
    Rsa,
}

/// A loaded client key (and certificate thumbprint).
pub struct ClientKey {
    kind: KeyKind,
    encoding: EncodingKey,
    /// The public key bytes (EC point, Ed25519 key, RSA `RSAPublicKey` DER).
    public: Vec<u8>,
    /// RFC 7638 thumbprint of the public JWK: the `kid`.
    kid: String,
    /// `x5t#S256` of the configured certificate.
    x5t_s256: Option<String>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The kid is public (a thumbprint of the public key); a new key changes it.
        f.debug_struct("ClientKey")
            .field("kind", &self.kind)
            .field("kid", &self.kid)
            .field("x5t#S256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

/// Every PEM block in `text`: (label, DER).
fn pem_blocks(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let text = String::from_utf8_lossy(text);
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_owned(), String::new()));
        } else if line.starts_with("-----END ") {
            if let Some((label, body)) = current.take()
                && let Ok(der) = STANDARD.decode(body.as_bytes())
            {
                blocks.push((label, der));
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    blocks
}

/// The DER of the first PEM block labelled `label`.
pub fn pem_block(text: &[u8], label: &str) -> Option<Vec<u8>> {
    pem_blocks(text)
        .into_iter()
        .find(|(l, _)| l == label)
        .map(|(_, der)| der)
}

/// Writes DER as a PEM block.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl ClientKey {
    /// Reads a PEM private key, and optionally a PEM certificate for it.
    pub fn from_pem(key_pem: &[u8], cert_pem: Option<&[u8]>) -> Result<Self, ClientKeyError> {
        let blocks = pem_blocks(key_pem);
        let (label, der) = blocks
            .iter()
            .find(|(label, _)| label.ends_with("PRIVATE KEY"))
            .or(blocks.first())
            .ok_or(ClientKeyError::NotPem)?;
        let signer = |e: aws_lc_rs::error::Unspecified| ClientKeyError::Signer(e.to_string());
        let (kind, encoding, public) = match label.as_str() {
            "PRIVATE KEY" | "EC PRIVATE KEY" => {
                if let Ok(ec) =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                {
                    let pkcs8 = ec.to_pkcs8v1().map_err(signer)?;
                    (
                        KeyKind::EcP256,
                        EncodingKey::from_ec_der(pkcs8.as_ref()),
                        ec.public_key().as_ref().to_vec(),
                    )
                } else if label == "EC PRIVATE KEY" {
                    return Err(ClientKeyError::UnsupportedKey);
                } else if let Ok(ed) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    let pkcs8 = ed.to_pkcs8v1().map_err(signer)?;
                    (
                        KeyKind::Ed25519,
                        EncodingKey::from_ed_der(pkcs8.as_ref()),
                        ed.public_key().as_ref().to_vec(),
                    )
                } else if let Ok(rsa) = RsaKeyPair::from_pkcs8(der) {
                    let pkcs1 = rsa_pkcs1_of_pkcs8(der).ok_or(ClientKeyError::UnsupportedKey)?;
                    rsa_parts(&rsa, pkcs1)?
                } else {
                    return Err(ClientKeyError::UnsupportedKey);
                }
            }
            "RSA PRIVATE KEY" => {
                let rsa = RsaKeyPair::from_der(der).map_err(|_| ClientKeyError::UnsupportedKey)?;
                rsa_parts(&rsa, der)?
            }
            other => return Err(ClientKeyError::NotAPrivateKey(other.to_owned())),
        };
        let mut key = Self {
            kind,
            encoding,
            public,
            kid: String::new(),
            x5t_s256: None,
        };
        let jwk = key.bare_jwk(key.default_algorithm())?;
        key.kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| ClientKeyError::Signer(e.to_string()))?;
        if let Some(cert_pem) = cert_pem {
            let cert = pem_blocks(cert_pem)
                .into_iter()
                .find(|(label, _)| label == "CERTIFICATE")
                .ok_or(ClientKeyError::NotACertificate)?
                .1;
            // The certificate's SubjectPublicKeyInfo holds these bytes verbatim.
            if !cert.windows(key.public.len()).any(|w| w == key.public) {
                return Err(ClientKeyError::CertificateMismatch);
            }
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert);
            key.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(digest.as_ref()));
        }
        Ok(key)
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The RFC 7638 thumbprint, used as `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing algorithm: ES256, EdDSA, RS256 (PS256 under `fapi2`).
    pub fn algorithm(&self, fapi2: bool) -> Algorithm {
        match (self.kind, fapi2) {
            (KeyKind::EcP256, _) => Algorithm::ES256,
            (KeyKind::Ed25519, _) => Algorithm::EdDSA,
            (KeyKind::Rsa, false) => Algorithm::RS256,
            (KeyKind::Rsa, true) => Algorithm::PS256,
        }
    }

    fn default_algorithm(&self) -> Algorithm {
        self.algorithm(false)
    }

    fn bare_jwk(&self, alg: Algorithm) -> Result<Jwk, ClientKeyError> {
        Jwk::from_encoding_key(&self.encoding, alg)
            .map_err(|e| ClientKeyError::Signer(e.to_string()))
    }

    /// The public JWK set served at `{prefix}/client-jwks.json`.
    pub fn public_jwks(&self, fapi2: bool) -> Value {
        let Ok(mut jwk) = self.bare_jwk(self.algorithm(fapi2)) else {
            return json!({ "keys": [] });
        };
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let mut value = serde_json::to_value(&jwk).unwrap_or(Value::Null);
        if let (Some(x5t), Some(map)) = (&self.x5t_s256, value.as_object_mut()) {
            map.insert("x5t#S256".into(), Value::String(x5t.clone()));
        }
        json!({ "keys": [value] })
    }

    /// A fresh client assertion: `iss` = `sub` = the client id, `aud` as configured, a
    /// random `jti`, `iat` now and `exp` [`ASSERTION_LIFETIME_SECS`] later. `now` is the
    /// system clock's: the provider judges the assertion by its own clock.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        typ: Option<&str>,
        fapi2: bool,
        now: UnixTime,
    ) -> Result<String, ClientKeyError> {
        let mut header = Header::new(self.algorithm(fapi2));
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(str::to_owned);
        header.x5t_s256 = self.x5t_s256.clone();
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": crate::random::random_token(),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| ClientKeyError::Signer(e.to_string()))
    }
}

/// An RSA key's parts (aws-lc-rs reads no RSA key under 2048 bits).
fn rsa_parts(
    rsa: &RsaKeyPair,
    pkcs1: &[u8],
) -> Result<(KeyKind, EncodingKey, Vec<u8>), ClientKeyError> {
    Ok((
        KeyKind::Rsa,
        EncodingKey::from_rsa_der(pkcs1),
        rsa.public_key().as_ref().to_vec(),
    ))
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (RFC 5208 §5: a
/// SEQUENCE of version, algorithm, and the key as an OCTET STRING). Only called on
/// bytes aws-lc-rs has already accepted as a PKCS#8 RSA key; the result is checked
/// again by the caller's signer.
fn rsa_pkcs1_of_pkcs8(der: &[u8]) -> Option<&[u8]> {
    /// One DER element at the start of `input`: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (0x30, info, _) = element(der)? else {
        return None;
    };
    let (0x02, _version, rest) = element(info)? else {
        return None;
    };
    let (0x30, _algorithm, rest) = element(rest)? else {
        return None;
    };
    let (0x04, key, _) = element(rest)? else {
        return None;
    };
    RsaKeyPair::from_der(key).ok().map(|_| key)
}

/// A new private key of `kind`, as PKCS#8 PEM (for `portcullis keys client-new`).
pub fn generate_pem(kind: KeyKind) -> Result<String, ClientKeyError> {
    let signer = |e: aws_lc_rs::error::Unspecified| ClientKeyError::Signer(e.to_string());
    let der = match kind {
        KeyKind::EcP256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .and_then(|k| k.to_pkcs8v1())
            .map_err(signer)?
            .as_ref()
            .to_vec(),
        KeyKind::Ed25519 => Ed25519KeyPair::generate()
            .and_then(|k| k.to_pkcs8v1())
            .map_err(signer)?
            .as_ref()
            .to_vec(),
        KeyKind::Rsa => RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .and_then(|k| k.as_der())
            .map_err(signer)?
            .as_ref()
            .to_vec(),
    };
    Ok(to_pem("PRIVATE KEY", &der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn verify(key: &ClientKey, token: &str, fapi2: bool) -> Value {
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(key.public_jwks(fapi2)).unwrap();
        let decoding = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut validation = Validation::new(key.algorithm(fapi2));
        validation.set_audience(&["https://op.example"]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<Value>(token, &decoding, &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn every_kind_signs_assertions_its_public_jwk_verifies() {
        for kind in [KeyKind::EcP256, KeyKind::Ed25519, KeyKind::Rsa] {
            let key = ClientKey::from_pem(generate_pem(kind).unwrap().as_bytes(), None).unwrap();
            assert_eq!(key.kind(), kind);
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let a = key
                .assertion("app", "https://op.example", Some(ASSERTION_TYP), false, now)
                .unwrap();
            let b = key
                .assertion("app", "https://op.example", None, false, now)
                .unwrap();
            let (ca, cb) = (verify(&key, &a, false), verify(&key, &b, false));
            assert_eq!(ca["iss"], "app");
            assert_eq!(ca["sub"], "app");
            assert_eq!(
                ca["exp"].as_i64().unwrap() - ca["iat"].as_i64().unwrap(),
                60
            );
            assert_ne!(ca["jti"], cb["jti"], "every assertion has its own jti");
            let header = jsonwebtoken::decode_header(&a).unwrap();
            assert_eq!(header.typ.as_deref(), Some(ASSERTION_TYP));
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(jsonwebtoken::decode_header(&b).unwrap().typ, None);
        }
        let rsa =
            ClientKey::from_pem(generate_pem(KeyKind::Rsa).unwrap().as_bytes(), None).unwrap();
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        let ps = rsa
            .assertion("app", "https://op.example", None, true, now)
            .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&ps).unwrap().alg,
            Algorithm::PS256
        );
        verify(&rsa, &ps, true);
    }

    #[test]
    fn other_files_are_refused_with_a_reason() {
        assert_eq!(
            ClientKey::from_pem(b"hello", None).unwrap_err(),
            ClientKeyError::NotPem
        );
        let cert = to_pem("CERTIFICATE", b"\x30\x03\x02\x01\x00");
        assert!(matches!(
            ClientKey::from_pem(cert.as_bytes(), None),
            Err(ClientKeyError::NotAPrivateKey(_))
        ));
        let p384 = EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING)
            .unwrap()
            .to_pkcs8v1()
            .unwrap();
        assert_eq!(
            ClientKey::from_pem(to_pem("PRIVATE KEY", p384.as_ref()).as_bytes(), None).unwrap_err(),
            ClientKeyError::UnsupportedKey
        );
    }

    #[test]
    fn rsa_keys_under_2048_bits_are_refused() {
        // Made by `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024` for
        // this test only.
        const RSA_1024: &str = "-----BEGIN PRIVATE KEY-----\n\
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAKwSkdwpe8a6Qg9N\n\
32/uW9RVzKmF3dtDrBNThZ3ipeM7zqILzG4iVMDk8t17W+3OR3oq/IaCVEGSGUsI\n\
F5jBSztmaFbz69irX+MM4UynsDAAohaPaeF3cpFRkUklX82sH5ETobtK6JEjxsBR\n\
qFMmAlNkVzfKDdTZBL2YY5+v8d8HAgMBAAECgYAo+N78UnBjmHQkWsGKUHJTM/7g\n\
mryB+jIeA/Q77PzdB5+jHDYYP1p498sQi9AO5uBEKbopeR0A4/3bzNh5igUUgnnO\n\
/T393oVsjm+qnJ1IU40gNSQfN3Dq9Eb0WfIdt/Yfr58d5eN4hSsPaYGiQY94JuJA\n\
hhMZIkEbnl8XeEMSAQJBAOP6BQXG8sJwrAQauYwyLvsV/XmIQSR2SkTxLs63E9hR\n\
XHVRn/LtLu4B78mF7syKqcx580MSp1gjqRdeO6qgPgcCQQDBOVtpWJJuz5GGy5PO\n\
5iTWJVMbBvEX195M2jtdCHAq6yqIlFwHS8+FwAPJwOrZ0xvQwA9i2N8ZIUqVWgKi\n\
iRcBAkBSteXWl7yBgOFXx95jl91lqS/CRQXlValSY/JoexGPHM2fntKaDyVEop09\n\
jwL5YKGEFwaD4iOmnaF+Yejh2atHAkEAlGmb3uSbROXF34VKeKapMJrmpGHGmQvD\n\
wb/1zNWIYk7TEqjxruD5+r+rqTG2sazHNqXuq3vskH7TrLfAQluOAQJAO03Uga3H\n\
hVqVHRFqHledsmIgLIISIkMP6lhnM5thvnWu7b+drGiVoIPlxekXd1aRgggpSxc/\n\
AAwONWN13xqQcA==\n\
-----END PRIVATE KEY-----\n";
        assert_eq!(
            ClientKey::from_pem(RSA_1024.as_bytes(), None).unwrap_err(),
            ClientKeyError::UnsupportedKey
        );
    }

    #[test]
    fn a_certificate_must_hold_the_key() {
        let pem = generate_pem(KeyKind::EcP256).unwrap();
        let key = ClientKey::from_pem(pem.as_bytes(), None).unwrap();
        // A stand-in DER that embeds the public key, as a certificate's SPKI does.
        let mut fake = vec![0x30, 0x00];
        fake.extend_from_slice(&key.public);
        let with = ClientKey::from_pem(
            pem.as_bytes(),
            Some(to_pem("CERTIFICATE", &fake).as_bytes()),
        )
        .unwrap();
        assert!(with.x5t_s256.is_some());
        assert_eq!(
            with.public_jwks(false)["keys"][0]["x5t#S256"],
            json!(with.x5t_s256)
        );
        let other =
            ClientKey::from_pem(generate_pem(KeyKind::EcP256).unwrap().as_bytes(), None).unwrap();
        let mut wrong = vec![0x30, 0x00];
        wrong.extend_from_slice(&other.public);
        assert_eq!(
            ClientKey::from_pem(
                pem.as_bytes(),
                Some(to_pem("CERTIFICATE", &wrong).as_bytes())
            )
            .unwrap_err(),
            ClientKeyError::CertificateMismatch
        );
    }
}
