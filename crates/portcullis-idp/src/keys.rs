//! The provider's signing keys: an RS256 and an ES256 key, generated with aws-lc-rs on
//! first start and kept in the store. `portcullis idp --rotate-keys` retires the current
//! pair and makes a new one; retired keys stay in the JWKS until every token they
//! signed has expired.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};

/// One signing key with its public half.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub jwk: Value,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("signing key: {0}")]
pub struct KeyError(String);

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl SigningKey {
    /// A new key of `alg` (RS256 or ES256), as PKCS#8 DER.
    pub fn generate_der(alg: Algorithm) -> Result<Vec<u8>, KeyError> {
        match alg {
            Algorithm::RS256 => {
                let key =
                    RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| KeyError(e.to_string()))?;
                let der = key.as_der().map_err(|e| KeyError(e.to_string()))?;
                Ok(der.as_ref().to_vec())
            }
            Algorithm::ES256 => {
                let doc = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &aws_lc_rs::rand::SystemRandom::new(),
                )
                .map_err(|e| KeyError(e.to_string()))?;
                Ok(doc.as_ref().to_vec())
            }
            other => Err(KeyError(format!("{other:?} keys are not supported"))),
        }
    }

    /// Loads a stored key.
    pub fn from_der(
        kid: &str,
        alg: Algorithm,
        der: &[u8],
        created_at: i64,
        retired_at: Option<i64>,
    ) -> Result<Self, KeyError> {
        let (encoding, jwk, decoding) = match alg {
            Algorithm::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| KeyError(e.to_string()))?;
                let public = pair.public_key();
                let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
                let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
                let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der).as_bytes())
                    .map_err(|e| KeyError(e.to_string()))?;
                let decoding = DecodingKey::from_rsa_components(&n, &e)
                    .map_err(|e| KeyError(e.to_string()))?;
                let jwk =
                    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e});
                (encoding, jwk, decoding)
            }
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| KeyError(e.to_string()))?;
                let point = pair.public_key().as_ref();
                if point.len() != 65 {
                    return Err(KeyError("unexpected EC point encoding".into()));
                }
                let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
                let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
                let encoding = EncodingKey::from_ec_der(der);
                let decoding =
                    DecodingKey::from_ec_components(&x, &y).map_err(|e| KeyError(e.to_string()))?;
                let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid, "x": x, "y": y});
                (encoding, jwk, decoding)
            }
            other => return Err(KeyError(format!("{other:?} keys are not supported"))),
        };
        Ok(Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            decoding,
            jwk,
            created_at,
            retired_at,
        })
    }
}

/// The provider's keys, current and retired.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<SigningKey>,
}

impl KeySet {
    /// The newest unretired key of `alg`.
    pub fn current(&self, alg: Algorithm) -> Option<&SigningKey> {
        self.keys
            .iter()
            .filter(|k| k.alg == alg && k.retired_at.is_none())
            .max_by_key(|k| k.created_at)
    }

    /// The JWKS: unretired keys, and retired ones for `keep_for` seconds after retirement.
    pub fn jwks(&self, now: i64, keep_for: i64) -> Value {
        let keys: Vec<&Value> = self
            .keys
            .iter()
            .filter(|k| k.retired_at.is_none_or(|r| r + keep_for > now))
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// Signs `claims` with the current key of `alg`; `typ` as given (e.g. `logout+jwt`).
    pub fn sign(
        &self,
        alg: Algorithm,
        typ: &str,
        claims: &impl Serialize,
    ) -> Result<String, KeyError> {
        let key = self
            .current(alg)
            .ok_or_else(|| KeyError(format!("no current {alg:?} key")))?;
        let mut header = Header::new(alg);
        header.kid = Some(key.kid.clone());
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|e| KeyError(e.to_string()))
    }

    /// Verifies a token this provider signed (any published key), ignoring expiry: used
    /// for `id_token_hint`, which may be expired (OIDC RP-Initiated Logout §2).
    pub fn verify_own(&self, token: &str, issuer: &str) -> Option<Value> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        // Only ID tokens are hints; a logout token is not.
        if header.typ.as_deref() != Some("JWT") {
            return None;
        }
        let kid = header.kid?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid && k.alg == header.alg)?;
        let mut validation = jsonwebtoken::Validation::new(key.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[issuer]);
        jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .ok()
            .map(|t| t.claims)
    }
}
