//! DPoP proofs at the token paths (RFC 9449 §4.3, §7.1, §9): the request's one proof,
//! for this request and token, by the token's key, never seen before at any instance;
//! and the gateway's own nonces when an entry asks for them (`dpop_nonce`).

use serde_json::{Map, Value};

use super::{TokenRefusal, TokenRequest, hash_bytes};
use crate::clock::UnixTime;
use crate::jose::dpop_proof::{self, PROOF_WINDOW_SECONDS, ProofError, ProofExpectations};
use crate::session::Sessions;

/// How long a DPoP nonce is current (the previous one is accepted too).
const NONCE_WINDOW_SECONDS: i64 = 60;

/// The gateway's DPoP nonce of time window `window` (RFC 9449 §9): an HMAC, so any
/// instance holding the key makes the same one and none can be guessed.
fn nonce(key: &[u8; 32], window: i64) -> String {
    use base64::Engine as _;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&key, &window.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..24])
}

/// A string claim of a JWT's payload, read without verifying (the caller verified it).
fn claim_of(jwt: &str, name: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get(name)?.as_str().map(str::to_owned)
}

impl Sessions {
    /// RFC 9449 §4.3 and §7.1: the request's one proof, for this request and token, by
    /// the token's key, never seen before at any instance.
    pub(super) async fn check_proof(
        &self,
        request: &TokenRequest<'_>,
        token: &str,
        jkt: &str,
        index: usize,
        now: UnixTime,
    ) -> Result<(), TokenRefusal> {
        let proof_error = |e: ProofError| {
            self.token_refused(e.code());
            TokenRefusal::Proof {
                code: e.code(),
                nonce: None,
            }
        };
        let mut proofs = request.headers.get_all("dpop").iter();
        let (Some(proof), None) = (proofs.next(), proofs.next()) else {
            return Err(proof_error(ProofError::Malformed));
        };
        let proof = proof
            .to_str()
            .map_err(|_| proof_error(ProofError::Malformed))?;
        let verify = |htu: &str| {
            dpop_proof::verify_proof(
                proof,
                &ProofExpectations {
                    htm: request.method,
                    htu,
                    access_token: token,
                    jkt,
                    nonce: None,
                    now,
                },
            )
        };
        let verified = match (verify(request.htu), &request.htu_as_sent) {
            (Err(ProofError::WrongUri), Some(as_sent)) => verify(as_sent),
            (result, _) => result,
        }
        .map_err(proof_error)?;
        if self.bearer.entries[index].dpop_nonce {
            let key = self.nonce_key().await?;
            let given = claim_of(proof, "nonce");
            let window = now.div_euclid(NONCE_WINDOW_SECONDS);
            let fresh = |w: i64| {
                given.as_deref().is_some_and(|n| {
                    crate::random::secrets_equal(n.as_bytes(), nonce(&key, w).as_bytes())
                })
            };
            if !fresh(window) && !fresh(window - 1) {
                return Err(TokenRefusal::Proof {
                    code: ProofError::NonceRequired.code(),
                    nonce: Some(nonce(&key, window)),
                });
            }
        }
        // The replay cache, shared by instances through the store, for as long as the
        // proof could be accepted anywhere.
        let key = format!(
            "dpop-proof:{}",
            crate::random::sha256_hex(format!("{jkt}\n{}", verified.jti).as_bytes())
        );
        let until = verified.iat.max(now) + 2 * PROOF_WINDOW_SECONDS;
        match self.store.remember_once(&key, now, until).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(proof_error(ProofError::Replayed)),
            Err(e) => {
                tracing::warn!(error = %e, "the DPoP replay cache is unavailable");
                Err(TokenRefusal::Unavailable {
                    code: "store_unavailable",
                })
            }
        }
    }

    /// The key of the gateway's DPoP nonces (`dpop_nonce`): derived from the gateway's
    /// DPoP key, which every instance shares through the store (G08's rules), so a
    /// nonce one instance gave is good at every other.
    async fn nonce_key(&self) -> Result<[u8; 32], TokenRefusal> {
        let key = self.dpop_key_if(true).await.ok().flatten().ok_or_else(|| {
            tracing::warn!("the DPoP key for nonces is unavailable");
            TokenRefusal::Unavailable {
                code: "dpop_key_unavailable",
            }
        })?;
        Ok(hash_bytes(
            &[b"portcullis dpop nonce\n".as_slice(), key.pem()].concat(),
        ))
    }
}
