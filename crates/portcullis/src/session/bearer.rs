//! Machine clients (docs/machine-clients.md; docs/security.md G13): on a `[[bearer]]`
//! path a request that carries `Authorization: Bearer …` or `Authorization: DPoP …` is
//! decided by its access token, never by a cookie and never with a sign-in redirect.
//!
//! - The entry: the first `[[bearer]]` entry covering the path whose issuer accepts the
//!   token's `iss` and whose `audiences` meet its `aud` (read before verifying, only to
//!   choose whose keys and rules verify it; nothing is believed until verified).
//! - The token: verified by the ID-token rules with the entry's issuer's keys only
//!   (`Provider::validate_access_token`), then cached by its SHA-256 until it expires
//!   (bounded); a token that fails is never cached.
//! - DPoP (RFC 9449 §7): a bound token (`cnf.jkt`) needs the DPoP scheme and a proof
//!   checked on every request, cached token or not; the proof's (jkt, jti) is
//!   remembered in the store for its window, so a proof replayed at another instance
//!   fails too. A bound token sent as Bearer, or an unbound one as DPoP, is refused.
//! - The principal: a user (`sub`) or the client itself (no `sub`, or `sub` =
//!   `client_id`), an identity row each, keyed apart (`IdentityKind`).
//! - The entry's `required_scopes`, then `[access]` and the provider's own rules on the
//!   token's claims (unless `access = false`), failing closed: a client has no email.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, header};
use quick_cache::sync::Cache;
use serde_json::{Map, Value};

use super::Sessions;
use super::access::AccessDenied;
use super::assertion::{AssertedSubject, AssertionError};
use crate::clock::UnixTime;
use crate::config::BearerSettings;
use crate::path::NormalizedPath;
use crate::provider::access_token::{AccessTokenClaims, Principal, TokenRefused};
use crate::store::{IdentityKind, User, UserProfile};

mod proof;

/// Validated tokens kept at most (each entry is small: claims and an identity).
const CACHED_TOKENS: usize = 10_000;

/// Introspection requests per second at most (cache misses), and the burst above it.
const INTROSPECTIONS_PER_SECOND: std::num::NonZeroU32 =
    std::num::NonZeroU32::MIN.saturating_add(49);
const INTROSPECTIONS_BURST: std::num::NonZeroU32 = std::num::NonZeroU32::MIN.saturating_add(199);

/// Longest `Authorization` token read at all.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The authorization scheme a token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

impl Scheme {
    /// `X-User-Auth-Method` and the assertion's `auth_method`.
    pub fn auth_method(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Dpop => "dpop",
        }
    }

    /// The `WWW-Authenticate` challenge's scheme.
    pub fn challenge(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer",
            Self::Dpop => "DPoP",
        }
    }
}

/// Why a token request does not pass. Each becomes one RFC 6750 / RFC 9449 answer
/// (`http::error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    /// 400 `invalid_request`: the request is malformed (two `Authorization` headers,
    /// an empty token, two proofs).
    Malformed(&'static str),
    /// 401 `invalid_token`; `code` says why (for logs and the JSON body).
    Invalid { code: &'static str, scheme: Scheme },
    /// 401 `invalid_dpop_proof`, or `use_dpop_nonce` with the nonce to use.
    Proof {
        code: &'static str,
        nonce: Option<String>,
    },
    /// 403 `insufficient_scope`.
    Scope { scope: String, scheme: Scheme },
    /// 403: `[access]` or the provider's own rules refuse the token's principal.
    Access(AccessDenied),
    /// 503: the issuer's keys or the store could not be reached (never a pass).
    Unavailable { code: &'static str },
}

/// A token as presented.
#[derive(Debug)]
struct Presented<'a> {
    scheme: Scheme,
    token: &'a str,
}

/// The request a token came with, as the decision read it.
#[derive(Debug)]
pub struct TokenRequest<'a> {
    pub method: &'a str,
    pub path: &'a NormalizedPath,
    /// The URI a DPoP proof must name: the public origin and the decided path.
    pub htu: &'a str,
    /// The same with the path as the client wrote it, when that was in normal form and
    /// differs only in its escapes (`%40` where the decided path has `@`): a client
    /// signs the URI it sent, and RFC 3986 normalisation keeps reserved escapes.
    pub htu_as_sent: Option<String>,
    pub headers: &'a HeaderMap,
}

/// The principal of a valid token, as every door hands it on.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    /// The identity row (`X-User-Id` is its id), with the token's email and name for a
    /// user (verified as the session rules decide) and none for a client.
    pub user: User,
    /// The provider id (or `bearer-N` for an extra issuer).
    pub provider_id: String,
    pub scheme: Scheme,
    /// The claims the rules read (a client's without email or name).
    pub claims: Arc<Map<String, Value>>,
    pub scopes: Arc<[String]>,
    pub expires_at: UnixTime,
    /// `strip_authorization`: the app does not get the client's `Authorization`.
    pub strip_authorization: bool,
    /// `X-Portcullis-Jwt-Assertion`.
    pub assertion: HeaderValue,
}

/// A token verified for one entry, kept until it expires.
#[derive(Debug)]
struct Validated {
    identity: TokenIdentity,
    /// `cnf.jkt`.
    jkt: Option<String>,
    /// `exp` plus the leeway the verification allowed.
    valid_until: UnixTime,
    /// The assertion signed for it and when that ends.
    assertion: Mutex<Option<(HeaderValue, UnixTime)>>,
}

/// The `[[bearer]]` entries and the cache of tokens they validated.
#[derive(Debug)]
pub struct BearerTokens {
    entries: Vec<BearerSettings>,
    /// SHA-256 of the token → the entries whose issuer and audiences it names.
    matches: Cache<[u8; 32], Arc<[usize]>>,
    /// (SHA-256 of the token, entry) → the token as that entry validated it.
    validated: Cache<([u8; 32], usize), Arc<Validated>>,
    /// Introspection requests (cache misses) the gateway makes at most.
    introspections: governor::DefaultDirectRateLimiter,
}

impl BearerTokens {
    pub fn new(entries: Vec<BearerSettings>) -> Self {
        Self {
            entries,
            matches: Cache::new(CACHED_TOKENS),
            validated: Cache::new(CACHED_TOKENS),
            introspections: governor::RateLimiter::direct(
                governor::Quota::per_second(INTROSPECTIONS_PER_SECOND)
                    .allow_burst(INTROSPECTIONS_BURST),
            ),
        }
    }

    /// Whether any entry accepts tokens on `path`.
    pub fn covers(&self, path: &NormalizedPath) -> bool {
        self.entries.iter().any(|e| e.covers(path))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every validated token: after a reload the rules judge each token again
    /// (a tightened `[access]` refuses a token that passed before, at its next request).
    pub fn forget_validated(&self) {
        self.validated.clear();
        self.matches.clear();
    }
}

/// The token of the request's one `Authorization` header: `Ok(None)` when there is none
/// or it is another scheme (Basic: the session decides).
fn presented(headers: &HeaderMap) -> Result<Option<Presented<'_>>, TokenRefusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return match headers.contains_key(header::AUTHORIZATION) {
            true => Err(TokenRefusal::Malformed(
                "The request carries more than one Authorization header.",
            )),
            false => Ok(None),
        };
    };
    let Ok(text) = value.to_str() else {
        return Err(TokenRefusal::Malformed(
            "The Authorization header is not valid text.",
        ));
    };
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Ok(None);
    };
    let token = token.trim_matches(' ');
    // RFC 6750 §2.1 token68.
    let token68 = |t: &str| {
        let body = t.trim_end_matches('=');
        !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    };
    if token.len() > MAX_TOKEN_BYTES || !token68(token) {
        return Err(TokenRefusal::Invalid {
            code: "token_malformed",
            scheme,
        });
    }
    Ok(Some(Presented { scheme, token }))
}

/// Three dot-separated parts: a JWS, which is verified and never introspected.
fn is_jws_shaped(token: &str) -> bool {
    token.split('.').count() == 3
}

fn hash_bytes(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hash(token: &str) -> [u8; 32] {
    hash_bytes(token.as_bytes())
}

/// The token's `iss` and `aud`, read without verifying: only to choose the entry whose
/// issuer's keys and rules then verify it.
fn peek(token: &str) -> Option<(String, Vec<String>)> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    let iss = claims.get("iss")?.as_str()?.to_owned();
    let aud = match claims.get("aud")? {
        Value::String(a) => vec![a.clone()],
        Value::Array(list) => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => return None,
    };
    Some((iss, aud))
}

impl Sessions {
    /// Whether `[[bearer]]` accepts tokens on `path` (a token there is decided by it).
    pub fn is_token_path(&self, path: &NormalizedPath) -> bool {
        !self.bearer.is_empty() && self.bearer.covers(path)
    }

    /// The principal of the request's access token on a `[[bearer]]` path: `Ok(None)`
    /// when the request carries none (a browser: the session decides).
    pub async fn authenticate_token(
        self: &Arc<Self>,
        request: &TokenRequest<'_>,
    ) -> Result<Option<TokenIdentity>, TokenRefusal> {
        let Some(presented) = presented(request.headers)? else {
            return Ok(None);
        };
        let refused = |code| TokenRefusal::Invalid {
            code,
            scheme: presented.scheme,
        };
        let now = self.now();
        let key = hash(presented.token);
        if !is_jws_shaped(presented.token) {
            return self.by_introspection(request, &presented, key, now).await;
        }
        let matches = match self.bearer.matches.get(&key) {
            Some(m) => m,
            None => {
                let Some((iss, aud)) = peek(presented.token) else {
                    return Err(refused("token_malformed"));
                };
                let m: Arc<[usize]> = self
                    .bearer
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        e.audiences.iter().any(|a| aud.contains(a))
                            && self
                                .providers
                                .token_issuer(e.issuer_id())
                                .is_some_and(|p| p.settings().accepts_issuer(&iss))
                    })
                    .map(|(i, _)| i)
                    .collect();
                self.bearer.matches.insert(key, m.clone());
                m
            }
        };
        // The first entry covering the path whose issuer and audience match decides.
        let Some(index) = self
            .bearer
            .entries
            .iter()
            .enumerate()
            .find(|(i, e)| e.covers(request.path) && matches.contains(i))
            .map(|(i, _)| i)
        else {
            self.token_refused("token_issuer_or_audience_not_accepted");
            return Err(refused("token_issuer_or_audience_not_accepted"));
        };
        let validated = match self.bearer.validated.get(&(key, index)) {
            Some(v) if now < v.valid_until => v,
            Some(_) => {
                self.bearer.validated.remove(&(key, index));
                return Err(refused("at_expired"));
            }
            None => {
                let v = Arc::new(self.validate(index, &presented, now).await?);
                self.bearer.validated.insert((key, index), v.clone());
                v
            }
        };
        self.pass_token(request, &presented, &validated, index, now)
            .await
            .map(Some)
    }

    /// RFC 7662 for a token that is not a JWS: only at the one introspecting entry that
    /// covers the path (the configuration allows one), so a token never goes to another
    /// entry's server. Answers are kept until the token expires, at most
    /// `introspection_cache`; misses are rate-limited (503 past the limit, never a pass).
    async fn by_introspection(
        self: &Arc<Self>,
        request: &TokenRequest<'_>,
        presented: &Presented<'_>,
        key: [u8; 32],
        now: UnixTime,
    ) -> Result<Option<TokenIdentity>, TokenRefusal> {
        let scheme = presented.scheme;
        let Some(index) = self
            .bearer
            .entries
            .iter()
            .position(|e| e.introspection && e.covers(request.path))
        else {
            self.token_refused("token_not_a_jwt");
            return Err(TokenRefusal::Invalid {
                code: "token_not_a_jwt",
                scheme,
            });
        };
        let validated = match self.bearer.validated.get(&(key, index)) {
            Some(v) if now < v.valid_until => v,
            _ => {
                self.bearer.validated.remove(&(key, index));
                if self.bearer.introspections.check().is_err() {
                    tracing::warn!("introspection requests are over their rate; answering 503");
                    return Err(TokenRefusal::Unavailable {
                        code: "introspection_rate_limited",
                    });
                }
                let entry = &self.bearer.entries[index];
                let mut v = self.validate(index, presented, now).await?;
                v.valid_until = v
                    .valid_until
                    .min(v.identity.expires_at)
                    .min(now + entry.introspection_cache.as_secs() as i64);
                let v = Arc::new(v);
                self.bearer.validated.insert((key, index), v.clone());
                v
            }
        };
        self.pass_token(request, presented, &validated, index, now)
            .await
            .map(Some)
    }

    /// What every valid token goes through on every request, cached or not: DPoP,
    /// then the assertion.
    async fn pass_token(
        self: &Arc<Self>,
        request: &TokenRequest<'_>,
        presented: &Presented<'_>,
        validated: &Validated,
        index: usize,
        now: UnixTime,
    ) -> Result<TokenIdentity, TokenRefusal> {
        let refused = |code| TokenRefusal::Invalid {
            code,
            scheme: presented.scheme,
        };
        // DPoP (RFC 9449 §7.1): on every request, cached token or not.
        match (&validated.jkt, presented.scheme) {
            (Some(jkt), Scheme::Dpop) => {
                self.check_proof(request, presented.token, jkt, index, now)
                    .await?;
            }
            (Some(_), Scheme::Bearer) => {
                self.token_refused("dpop_bound_token_as_bearer");
                return Err(refused("dpop_bound_token_as_bearer"));
            }
            (None, Scheme::Dpop) => return Err(refused("token_not_dpop_bound")),
            (None, Scheme::Bearer) => {}
        }
        let mut identity = validated.identity.clone();
        identity.scheme = presented.scheme;
        identity.assertion = self
            .token_assertion(validated, presented.scheme, now)
            .await?;
        Ok(identity)
    }

    /// Verifies the token for entry `index` and makes its principal.
    async fn validate(
        self: &Arc<Self>,
        index: usize,
        presented: &Presented<'_>,
        now: UnixTime,
    ) -> Result<Validated, TokenRefusal> {
        let entry = &self.bearer.entries[index];
        let scheme = presented.scheme;
        let Some(provider) = self.providers.token_issuer(entry.issuer_id()) else {
            return Err(TokenRefusal::Invalid {
                code: "token_issuer_not_accepted",
                scheme,
            });
        };
        let claims = self.check_token(index, provider, presented, now).await?;
        if let Some(scope) = entry
            .required_scopes
            .iter()
            .find(|s| !claims.scopes.contains(s))
        {
            return Err(TokenRefusal::Scope {
                scope: scope.clone(),
                scheme,
            });
        }
        let (kind, mut rule_claims) = match claims.principal {
            Principal::User => (IdentityKind::User, claims.claims.clone()),
            Principal::Client => {
                // A client has no email or name: email rules refuse it.
                let mut c = claims.claims.clone();
                for k in ["email", "email_verified", "name", "preferred_username"] {
                    c.remove(k);
                }
                (IdentityKind::Client, c)
            }
        };
        if kind == IdentityKind::User {
            self.email_trust(provider, &mut rule_claims);
        }
        if entry.access
            && let Some(denied) = self
                .provider_access_refusals(entry.issuer_id(), &rule_claims)
                .into_iter()
                .next()
        {
            self.token_refused(denied.code());
            return Err(TokenRefusal::Access(denied));
        }
        let user = self.token_user(&claims, kind, &rule_claims, now).await?;
        Ok(Validated {
            identity: TokenIdentity {
                user,
                provider_id: entry.issuer_id().to_owned(),
                scheme,
                scopes: claims.scopes.clone().into(),
                claims: Arc::new(rule_claims),
                expires_at: claims.expires_at,
                strip_authorization: entry.strip_authorization,
                assertion: HeaderValue::from_static(""),
            },
            valid_until: claims.expires_at + crate::provider::id_token::LEEWAY_SECONDS,
            jkt: claims.jkt,
            assertion: Mutex::new(None),
        })
    }

    /// The token verified (or introspected) at entry `index`'s issuer: its claims.
    async fn check_token(
        &self,
        index: usize,
        provider: &crate::provider::Provider,
        presented: &Presented<'_>,
        now: UnixTime,
    ) -> Result<AccessTokenClaims, TokenRefusal> {
        let entry = &self.bearer.entries[index];
        let scheme = presented.scheme;
        let checked = if entry.introspection && !is_jws_shaped(presented.token) {
            provider
                .introspect_access_token(presented.token, &entry.audiences, now)
                .await
        } else {
            provider
                .validate_access_token(presented.token, &entry.audiences, &entry.token_types, now)
                .await
        };
        checked.map_err(|e| match e {
                TokenRefused::Unavailable(e) => {
                    tracing::warn!(entry = entry.label.as_str(), error = %e, "an access token could not be checked: its issuer (keys or introspection endpoint) did not answer");
                    TokenRefusal::Unavailable { code: e.code() }
                }
                other => {
                    self.token_refused(other.code());
                    TokenRefusal::Invalid {
                        code: other.code(),
                        scheme,
                    }
                }
            })
    }

    /// The identity row of a token's principal (created at its first token, as a
    /// sign-in creates a user's), carrying the token's own email and name for a user
    /// (the email only when verified) and none for a client.
    async fn token_user(
        &self,
        claims: &AccessTokenClaims,
        kind: IdentityKind,
        rule_claims: &Map<String, Value>,
        now: UnixTime,
    ) -> Result<User, TokenRefusal> {
        let text = |k: &str| {
            rule_claims
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let profile = UserProfile {
            email: text("email"),
            name: text("name"),
        };
        let given =
            kind == IdentityKind::User && (profile.email.is_some() || profile.name.is_some());
        let mut user = self
            .store
            .upsert_identity(
                &claims.issuer,
                kind,
                &claims.subject,
                given.then_some(&profile),
                now,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "the store could not record a token's identity");
                TokenRefusal::Unavailable {
                    code: "store_unavailable",
                }
            })?;
        user.email = profile
            .email
            .filter(|_| kind == IdentityKind::User && super::claims::email_verified(rule_claims));
        user.name = profile.name.filter(|_| kind == IdentityKind::User);
        Ok(user)
    }

    /// The assertion for a token's principal: the one signed before while it has more
    /// than a minute left, else a new one.
    async fn token_assertion(
        self: &Arc<Self>,
        validated: &Validated,
        scheme: Scheme,
        now: UnixTime,
    ) -> Result<HeaderValue, TokenRefusal> {
        let unavailable = |e: AssertionError| {
            tracing::warn!(error = %e, "no identity assertion could be signed for a token");
            TokenRefusal::Unavailable {
                code: "assertion_unavailable",
            }
        };
        if let Ok(slot) = validated.assertion.lock()
            && let Some((value, until)) = slot.as_ref()
            && now + 60 < *until
            && validated.identity.scheme == scheme
        {
            return Ok(value.clone());
        }
        self.prepare_assertion_keys().await.map_err(unavailable)?;
        let identity = &validated.identity;
        let subject = AssertedSubject {
            user: &identity.user,
            provider_id: &identity.provider_id,
            groups: super::assertion::groups_of(&identity.claims),
            auth_method: Some(scheme.auth_method()),
        };
        let (value, until) = self
            .assertions
            .for_token(&subject, identity.expires_at, now)
            .map_err(unavailable)?;
        if let Ok(mut slot) = validated.assertion.lock() {
            *slot = Some((value.clone(), until));
        }
        Ok(value)
    }

    /// A refused token is a security event (never its text, only why).
    fn token_refused(&self, reason: &'static str) {
        self.events.count("token_refused");
        tracing::warn!(
            event = "token_refused",
            reason,
            "security event: an access token was refused"
        );
    }
}
