//! The provider's signed tokens: which algorithms and keys may verify them, ID tokens
//! (OIDC Core §3.1.3.7) and back-channel logout tokens.

use serde_json::{Map, Value};

use super::discovery::{self, Metadata};
use super::{
    Algorithm, IdTokenClaims, IdTokenError, LogoutError, Provider, ProviderError, access_token,
    id_token, jwks, logout_token,
};
use crate::clock::UnixTime;

impl Provider {
    /// The algorithms ID tokens may use: configured, else the provider's asymmetric ones
    /// (RS256 when it names none, OIDC Core §3.1.3.7 step 7).
    fn allowed_algorithms(&self, metadata: &Metadata) -> Vec<Algorithm> {
        if let Some(configured) = &self.settings.allowed_algorithms {
            return configured.clone();
        }
        let advertised: Vec<Algorithm> = metadata
            .id_token_signing_alg_values_supported
            .iter()
            .filter_map(|a| Algorithm::parse(a))
            .filter(|a| !a.is_hmac())
            .collect();
        if advertised.is_empty() {
            vec![Algorithm::RS256]
        } else {
            advertised
        }
    }

    /// For `portcullis doctor`: the algorithms ID tokens may use, and how many keys of
    /// a freshly fetched JWKS can verify one of them.
    pub async fn usable_keys(&self) -> Result<(Vec<&'static str>, usize), ProviderError> {
        let metadata = self.metadata().await?;
        let allowed = self.allowed_algorithms(&metadata);
        let keys = jwks::JwksCache::new(std::time::Duration::ZERO);
        keys.set_uri(&metadata.jwks_uri).await;
        let keys = keys.refresh(&self.http).await?;
        let usable = keys
            .iter()
            .filter(|k| allowed.iter().any(|a| !a.is_hmac() && k.fits(*a)))
            .count();
        Ok((allowed.iter().map(|a| a.name()).collect(), usable))
    }

    /// The provider's keys that may have signed `jwt` (none for HMAC: the client secret
    /// is the key). Keys only ever come from the JWKS, never from the token (J03).
    async fn keys_for(
        &self,
        jwt: &id_token::UnverifiedJwt<'_>,
    ) -> Result<Vec<jwks::VerificationKey>, ProviderError> {
        if jwt.alg.is_hmac() {
            return Ok(Vec::new());
        }
        self.jwks
            .find(&self.http, jwt.kid.as_deref(), jwt.alg)
            .await
    }

    /// Validates an ID token (OIDC Core §3.1.3.7).
    pub async fn validate_id_token(
        &self,
        token: &str,
        nonce: Option<&str>,
        now: UnixTime,
    ) -> Result<IdTokenClaims, ProviderError> {
        let allowed = self.allowed_algorithms(&*self.metadata().await?);
        let jwt = id_token::parse_unverified(token, &allowed)?;
        let keys = self.keys_for(&jwt).await?;
        if !jwt.alg.is_hmac() && keys.is_empty() {
            tracing::warn!(
                kid = jwt.kid.as_deref().map(|k| discovery::truncate(k, 64)),
                alg = jwt.alg.name(),
                "no provider key fits this token"
            );
            return Err(IdTokenError::UnknownKey.into());
        }
        let secret = self.settings.client_secret.as_ref().map(|s| s.as_bytes());
        // A multi-tenant provider's tokens name their tenant: the issuer they must
        // carry is the template filled with it, when it is allowed (G12).
        let issuer = self
            .settings
            .expected_issuer(&jwt.claims)
            .ok_or(IdTokenError::TenantNotAllowed)?;
        let expect = id_token::Expectations {
            issuer: &issuer,
            client_id: &self.settings.client_id,
            trusted_audiences: &self.settings.trusted_audiences,
            nonce,
            now,
        };
        Ok(id_token::verify(&jwt, &keys, secret, &expect)?)
    }

    /// Validates a JWT access token this provider issued (RFC 9068): the ID tokens'
    /// algorithm allow-list and keys (never HMAC: the client secret keys the gateway's
    /// own tokens, not an API's), the issuer a multi-tenant provider's token must name,
    /// then [`access_token::check_claims`]. The provider's own client id counts as the
    /// gateway's: a token issued to it is an ID token.
    pub async fn validate_access_token(
        &self,
        token: &str,
        audiences: &[String],
        token_types: &[access_token::TokenType],
        now: UnixTime,
    ) -> Result<access_token::AccessTokenClaims, access_token::TokenRefused> {
        let allowed: Vec<Algorithm> = self
            .allowed_algorithms(&*self.metadata().await?)
            .into_iter()
            .filter(|a| !a.is_hmac())
            .collect();
        let jwt = id_token::parse_unverified(token, &allowed)?;
        let keys = self.keys_for(&jwt).await?;
        if keys.is_empty() {
            return Err(IdTokenError::UnknownKey.into());
        }
        id_token::verify_signature(&jwt, &keys, None)?;
        let issuer = self
            .settings
            .expected_issuer(&jwt.claims)
            .ok_or(access_token::AccessTokenError::WrongIssuer)?;
        let gateway = [self.settings.client_id.clone()];
        let expect = access_token::AccessExpectations {
            issuer: &issuer,
            audiences,
            token_types,
            gateway_client_ids: &gateway,
            now,
        };
        Ok(access_token::check_claims(
            jwt.typ.as_deref(),
            &jwt.claims,
            &expect,
        )?)
    }

    /// RFC 7662: asks this issuer's introspection endpoint about an opaque token, as
    /// this provider's client, and judges the answer (`check_introspection`). The
    /// server's failure, or an issuer without the endpoint, is `Unavailable`: never a
    /// pass.
    pub async fn introspect_access_token(
        &self,
        token: &str,
        audiences: &[String],
        now: UnixTime,
    ) -> Result<access_token::AccessTokenClaims, access_token::TokenRefused> {
        let metadata = self.metadata().await?;
        let Some(endpoint) = &metadata.introspection_endpoint else {
            return Err(ProviderError::BadResponse(
                "the issuer has no introspection_endpoint".into(),
            )
            .into());
        };
        let mut auth = self.client_auth(&metadata).await;
        auth.method = super::client_auth::at_endpoint(
            auth.method,
            metadata
                .introspection_endpoint_auth_methods_supported
                .as_deref(),
        );
        let answer = super::token::introspect(&self.http, endpoint, auth, token).await?;
        let gateway = [self.settings.client_id.clone()];
        let expect = access_token::AccessExpectations {
            issuer: &self.settings.issuer,
            audiences,
            token_types: &[],
            gateway_client_ids: &gateway,
            now,
        };
        Ok(access_token::check_introspection(&answer, &expect)?)
    }

    /// The claims of an ID token this gateway verified earlier (kept sealed with the
    /// session), read without verifying it again; `None` if it does not parse.
    pub fn stored_id_token_claims(&self, token: &str) -> Option<Map<String, Value>> {
        id_token::parse_unverified(token, &Algorithm::ALL)
            .ok()
            .map(|jwt| jwt.claims)
    }

    /// Validates a back-channel logout token (everything but the `jti` replay check).
    pub async fn validate_logout_token(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<logout_token::LogoutToken, LogoutError> {
        let allowed = self.allowed_algorithms(&*self.metadata().await?);
        let jwt = id_token::parse_unverified(token, &allowed)
            .map_err(logout_token::LogoutTokenError::from)?;
        let keys = self.keys_for(&jwt).await?;
        let secret = self.settings.client_secret.as_ref().map(|s| s.as_bytes());
        let issuer = self
            .settings
            .expected_issuer(&jwt.claims)
            .ok_or(logout_token::LogoutTokenError::WrongIssuer)?;
        Ok(logout_token::verify(
            &jwt,
            &keys,
            secret,
            &issuer,
            &self.settings.client_id,
            now,
        )?)
    }
}
