//! The client's own key for `private_key_jwt` (OIDC Core §9, RFC 7523 with
//! rfc7523bis's rules): read from a PEM file (`provider.client_key_file`), it signs one
//! fresh client assertion per request, and its public half is published at
//! `{prefix}/client-jwks.json` for providers that fetch the client's keys.
//!
//! Keys: EC P-256 (ES256), Ed25519 (EdDSA), RSA of at least 2048 bits (RS256; PS256
//! under the FAPI 2.0 profile). PKCS#8 (`PRIVATE KEY`), SEC 1 (`EC PRIVATE KEY`) and
//! PKCS#1 (`RSA PRIVATE KEY`) PEM are read; PEM by the `pem` crate, keys by aws-lc-rs,
//! signing by jsonwebtoken. A certificate (`provider.client_cert_file`, Entra ID), parsed
//! by rustls-webpki, adds `x5t#S256` to the header; its SubjectPublicKeyInfo must be the
//! key's.

use aws_lc_rs::encoding::{AsDer as _, PublicKeyX509Der};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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
    #[error("it is encrypted; give Portcullis an unencrypted key (keep the file mode 0600)")]
    Encrypted,
    #[error(
        "its PEM block is `{0}`, not a private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)"
    )]
    NotAPrivateKey(String),
    #[error("it is not an EC P-256, Ed25519 or RSA (at least 2048 bits) private key")]
    UnsupportedKey,
    #[error("the certificate file holds no readable X.509 CERTIFICATE")]
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
    /// The public key as an X.509 SubjectPublicKeyInfo (DER).
    spki: Vec<u8>,
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
    pem::parse_many(text)
        .map(|blocks| {
            blocks
                .into_iter()
                .map(|p| (p.tag().to_owned(), p.into_contents()))
                .collect()
        })
        .unwrap_or_default()
}

/// The DER of the first PEM block labelled `label`.
pub fn pem_block(text: &[u8], label: &str) -> Option<Vec<u8>> {
    pem_blocks(text)
        .into_iter()
        .find(|(l, _)| l == label)
        .map(|(_, der)| der)
}

/// Writes DER as a PEM block (LF line endings).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// An aws-lc-rs public key as SubjectPublicKeyInfo DER.
fn spki_of(
    public: &impl aws_lc_rs::encoding::AsDer<PublicKeyX509Der<'static>>,
) -> Result<Vec<u8>, ClientKeyError> {
    public
        .as_der()
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| ClientKeyError::Signer(e.to_string()))
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
        if label == "ENCRYPTED PRIVATE KEY" {
            return Err(ClientKeyError::Encrypted);
        }
        let signer = |e: aws_lc_rs::error::Unspecified| ClientKeyError::Signer(e.to_string());
        let (kind, encoding, spki) = match label.as_str() {
            "PRIVATE KEY" | "EC PRIVATE KEY" => {
                if let Ok(ec) =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                {
                    let pkcs8 = ec.to_pkcs8v1().map_err(signer)?;
                    (
                        KeyKind::EcP256,
                        EncodingKey::from_ec_der(pkcs8.as_ref()),
                        spki_of(ec.public_key())?,
                    )
                } else if label == "EC PRIVATE KEY" {
                    return Err(ClientKeyError::UnsupportedKey);
                } else if let Ok(ed) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    let pkcs8 = ed.to_pkcs8v1().map_err(signer)?;
                    (
                        KeyKind::Ed25519,
                        EncodingKey::from_ed_der(pkcs8.as_ref()),
                        spki_of(ed.public_key())?,
                    )
                } else if let Ok(rsa) = RsaKeyPair::from_pkcs8(der) {
                    // jsonwebtoken's signer takes PKCS#1; its PEM reader unwraps PKCS#8.
                    let encoding = EncodingKey::from_rsa_pem(to_pem("PRIVATE KEY", der).as_bytes())
                        .map_err(|_| ClientKeyError::UnsupportedKey)?;
                    (KeyKind::Rsa, encoding, spki_of(rsa.public_key())?)
                } else {
                    return Err(ClientKeyError::UnsupportedKey);
                }
            }
            "RSA PRIVATE KEY" => {
                let rsa = RsaKeyPair::from_der(der).map_err(|_| ClientKeyError::UnsupportedKey)?;
                (
                    KeyKind::Rsa,
                    EncodingKey::from_rsa_der(der),
                    spki_of(rsa.public_key())?,
                )
            }
            other => return Err(ClientKeyError::NotAPrivateKey(other.to_owned())),
        };
        let mut key = Self {
            kind,
            encoding,
            spki,
            kid: String::new(),
            x5t_s256: None,
        };
        let jwk = key.bare_jwk(key.default_algorithm())?;
        key.kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| ClientKeyError::Signer(e.to_string()))?;
        if let Some(cert_pem) = cert_pem {
            let cert = pem_block(cert_pem, "CERTIFICATE").ok_or(ClientKeyError::NotACertificate)?;
            let der = rustls::pki_types::CertificateDer::from(cert.as_slice());
            let parsed = webpki::EndEntityCert::try_from(&der)
                .map_err(|_| ClientKeyError::NotACertificate)?;
            if parsed.subject_public_key_info().as_ref() != key.spki.as_slice() {
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

    /// The public key as a bare JWK (no `kid`, no `use`): a DPoP proof's `jwk` header.
    pub fn public_jwk(&self) -> Result<Jwk, ClientKeyError> {
        self.bare_jwk(self.default_algorithm())
    }

    /// Signs `claims` under `header` with this key.
    pub fn sign(&self, header: &Header, claims: &Value) -> Result<String, ClientKeyError> {
        jsonwebtoken::encode(header, claims, &self.encoding)
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
mod tests;
