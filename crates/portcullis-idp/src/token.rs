//! The token endpoint (RFC 6749 §4.1.3, §6; RFC 7636 §4.6), UserInfo (OIDC Core §5.3)
//! and revocation (RFC 7009).
//!
//! Codes are single use: a second redemption revokes everything the first one issued
//! (A04). Refresh tokens rotate: presenting a rotated-away token revokes its whole
//! family (A05); a refresh token works only for its client and its scope cannot grow
//! (A06). Both rules rest on atomic use counters, so two concurrent refreshes with one
//! token cannot both succeed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawForm, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use portcullis::random::{random_token, secrets_equal, sha256_hex};
use serde_json::{Value, json};

use crate::config::Client;
use crate::store::GrantRow;
use crate::{Idp, now};

/// An OAuth error answer (RFC 6749 §5.2).
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    pub(crate) fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            status,
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portcullis-idp\""),
            );
        }
        r
    }
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "the provider's store failed".into(),
        }
    }
}

fn form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(OAuthError::new(
                "invalid_request",
                format!("the parameter {k} is repeated"),
            ));
        }
    }
    Ok(out)
}

/// RFC 7523 §2.2's `client_assertion_type`.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Client authentication: `client_secret_basic`, `client_secret_post`,
/// `private_key_jwt`, or `none` for public clients (RFC 6749 §2.3.1; one method per
/// request).
fn authenticate<'a>(
    idp: &'a Idp,
    headers: &HeaderMap,
    f: &HashMap<String, String>,
) -> Result<&'a Client, OAuthError> {
    if f.contains_key("client_assertion") || f.contains_key("client_assertion_type") {
        if headers.contains_key(header::AUTHORIZATION) || f.contains_key("client_secret") {
            return Err(OAuthError::new(
                "invalid_request",
                "use one client authentication method",
            ));
        }
        return authenticate_assertion(idp, f);
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..6)
                .filter(|p| p.eq_ignore_ascii_case("basic "))
                .map(|_| &v[6..])
        })
        .map(|b64| {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| OAuthError::new("invalid_client", "malformed Basic credentials"))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| OAuthError::new("invalid_client", "malformed Basic credentials"))?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
            Ok::<_, OAuthError>((form_decode(id), form_decode(secret)))
        })
        .transpose()?;
    let post_secret = f.get("client_secret");
    let form_id = f.get("client_id");
    let (id, secret) = match (basic, post_secret) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::new(
                "invalid_request",
                "use one client authentication method",
            ));
        }
        (Some((id, secret)), None) => {
            if form_id.is_some_and(|f| *f != id) {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id does not match the credentials",
                ));
            }
            (id, Some(secret))
        }
        (None, Some(secret)) => (form_id.cloned().unwrap_or_default(), Some(secret.clone())),
        (None, None) => (form_id.cloned().unwrap_or_default(), None),
    };
    let client = idp
        .config
        .client(&id)
        .ok_or_else(|| OAuthError::new("invalid_client", "unknown client"))?;
    match (&client.secret, secret) {
        (Some(expected), Some(given)) if secrets_equal(expected.as_bytes(), given.as_bytes()) => {
            Ok(client)
        }
        (None, None) if client.jwks.is_none() => Ok(client),
        _ => Err(OAuthError::new(
            "invalid_client",
            "client authentication failed",
        )),
    }
}

/// `private_key_jwt` (OIDC Core §9, RFC 7523 §3): the assertion is signed by one of the
/// client's registered keys with an asymmetric algorithm, `iss` = `sub` = the client,
/// `aud` names this issuer (or its token endpoint), it expires within five minutes
/// and its `jti` has not been seen before.
fn authenticate_assertion<'a>(
    idp: &'a Idp,
    f: &HashMap<String, String>,
) -> Result<&'a Client, OAuthError> {
    let refused =
        |why: &str| OAuthError::new("invalid_client", format!("client assertion refused: {why}"));
    if f.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
        return Err(OAuthError::new(
            "invalid_request",
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let assertion = f
        .get("client_assertion")
        .ok_or_else(|| OAuthError::new("invalid_request", "client_assertion is required"))?;
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| refused("not a JWS"))?;
    if !matches!(
        header.alg,
        Algorithm::ES256 | Algorithm::EdDSA | Algorithm::RS256 | Algorithm::PS256
    ) {
        return Err(refused("algorithm not allowed"));
    }
    let claimed = claimed_client(f, assertion)?;
    let client = idp
        .config
        .client(&claimed)
        .ok_or_else(|| OAuthError::new("invalid_client", "unknown client"))?;
    let key = assertion_key(client, &header)?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    let issuer = &idp.config.issuer;
    validation.set_audience(&[issuer.clone(), format!("{issuer}/token")]);
    validation.set_issuer(&[&client.id]);
    validation.sub = Some(client.id.clone());
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.leeway = ASSERTION_LEEWAY as u64;
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
        .map_err(|e| refused(&e.to_string()))?
        .claims;
    // rfc7523bis: one audience, as a string.
    if !claims["aud"].is_string() {
        return Err(refused("aud must be a single string"));
    }
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if exp > now() + 300 {
        return Err(refused("expires more than five minutes from now"));
    }
    if claims["iat"]
        .as_i64()
        .is_some_and(|iat| iat > now() + ASSERTION_LEEWAY)
    {
        return Err(refused("issued in the future"));
    }
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| refused("no jti"))?;
    if !idp
        .assertions
        .first_use(&client.id, jti, exp + ASSERTION_LEEWAY)
    {
        return Err(refused("jti already used"));
    }
    Ok(client)
}

/// The client an assertion is for: `client_id`, or without it the assertion's `sub`
/// (read unverified only to find the keys; verified by the caller).
fn claimed_client(f: &HashMap<String, String>, assertion: &str) -> Result<String, OAuthError> {
    let refused =
        |why: &str| OAuthError::new("invalid_client", format!("client assertion refused: {why}"));
    Ok(match f.get("client_id") {
        Some(id) => id.clone(),
        None => {
            let payload = assertion.split('.').nth(1).unwrap_or("");
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["sub"].as_str().map(str::to_owned))
                .ok_or_else(|| refused("no client named"))?
        }
    })
}

/// The registered key an assertion names (its `kid`, or the client's only key), usable
/// only for the algorithm it was registered for.
fn assertion_key(
    client: &Client,
    header: &jsonwebtoken::Header,
) -> Result<jsonwebtoken::DecodingKey, OAuthError> {
    let refused =
        |why: &str| OAuthError::new("invalid_client", format!("client assertion refused: {why}"));
    let jwks = client
        .jwks
        .as_ref()
        .ok_or_else(|| refused("the client has no registered keys"))?;
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
    .ok_or_else(|| refused("unknown key"))?;
    // A key registered for one algorithm verifies only that one.
    if let Some(registered) = jwk.common.key_algorithm
        && format!("{registered:?}") != format!("{:?}", header.alg)
    {
        return Err(refused("the key is registered for another algorithm"));
    }
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| refused("unusable key"))?;
    Ok(key)
}

/// Clock leeway for client assertions, in seconds.
const ASSERTION_LEEWAY: i64 = 30;

/// `jti`s of client assertions still within their lifetime and leeway (RFC 7523 §3
/// item 7): an entry is kept until the assertion could no longer be accepted.
#[derive(Debug, Default)]
pub struct SeenAssertions(std::sync::Mutex<HashMap<String, i64>>);

impl SeenAssertions {
    /// True the first time (client, jti) is presented before `until` (its expiry plus
    /// the leeway).
    pub(crate) fn first_use(&self, client: &str, jti: &str, until: i64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = now();
        if seen.len() > 10_000 {
            seen.retain(|_, until| *until >= now);
        }
        seen.insert(format!("{client}\n{jti}"), until).is_none()
    }
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a
/// byte; an invalid escape stays as it is.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if hex(b.get(i + 1)).is_some() && hex(b.get(i + 2)).is_some() => {
                out.push(
                    (hex(b.get(i + 1)).unwrap_or(0) * 16 + hex(b.get(i + 2)).unwrap_or(0)) as u8,
                );
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn s256(verifier: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

fn ok_json(v: Value) -> Response {
    let mut r = axum::Json(v).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// `POST /token`.
pub async fn token(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    RawForm(body): RawForm,
) -> Response {
    match token_inner(&idp, &headers, &body).await {
        Ok(v) => ok_json(v),
        Err(e) => e.into_response(),
    }
}

async fn token_inner(idp: &Idp, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    let f = form(body)?;
    let client = authenticate(idp, headers, &f)?;
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => redeem_code(idp, client, &f).await,
        Some("refresh_token") => refresh(idp, client, &f).await,
        // Only for a machine client, which lists the APIs it may call.
        Some("client_credentials") if !client.resources.is_empty() => {
            crate::client_credentials::grant(idp, client, &f, headers)
        }
        // A08: password, implicit, client credentials for other clients, anything else.
        Some(_) => Err(OAuthError::new(
            "unsupported_grant_type",
            "only authorization_code and refresh_token are supported (and client_credentials for machine clients)",
        )),
        None => Err(OAuthError::new("invalid_request", "grant_type is required")),
    }
}

/// Signs a token with the current RS256 key (`typ` as given); a failure is a 500.
pub(crate) fn sign(
    idp: &Idp,
    typ: &str,
    claims: &impl serde::Serialize,
) -> Result<String, OAuthError> {
    idp.keys.sign(Algorithm::RS256, typ, claims).map_err(|e| {
        tracing::error!(error = %e, typ, "cannot sign a token");
        OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: "signing failed".into(),
        }
    })
}

async fn redeem_code(
    idp: &Idp,
    client: &Client,
    f: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let code = f
        .get("code")
        .ok_or_else(|| OAuthError::new("invalid_request", "code is required"))?;
    // A02: an ill-formed verifier is a malformed request (RFC 7636 §4.1).
    let verifier = f.get("code_verifier");
    if verifier.is_some_and(|v| !is_verifier(v)) {
        return Err(OAuthError::new(
            "invalid_request",
            "code_verifier must be 43-128 unreserved characters",
        ));
    }
    let code_hash = sha256_hex(code.as_bytes());
    let reserved = random_token();
    let row = idp
        .store
        .present_code(&code_hash, &client.id, &reserved)
        .await?
        // Unknown, or issued to another client: either way not spent by this attempt.
        .ok_or_else(|| OAuthError::new("invalid_grant", "unknown code"))?;
    // A04: a second redemption revokes everything the first one issued.
    if row.uses > 1 {
        if let Some(g) = &row.grant_id {
            idp.store.revoke_grant(g).await?;
        }
        tracing::warn!(client = %client.id, "authorization code replayed; its grant is revoked");
        return Err(OAuthError::new(
            "invalid_grant",
            "the code was already used",
        ));
    }
    if now() >= row.expires_at {
        return Err(OAuthError::new("invalid_grant", "the code has expired"));
    }
    // A03: the exact redirect URI of the authorization request.
    if f.get("redirect_uri") != Some(&row.redirect_uri) {
        return Err(OAuthError::new(
            "invalid_grant",
            "redirect_uri does not match the authorization request",
        ));
    }
    // A01/A02: the verifier must hash to the challenge.
    let verifier =
        verifier.ok_or_else(|| OAuthError::new("invalid_grant", "code_verifier is required"))?;
    if !secrets_equal(s256(verifier).as_bytes(), row.challenge.as_bytes()) {
        return Err(OAuthError::new(
            "invalid_grant",
            "code_verifier does not match the code_challenge",
        ));
    }
    let grant = GrantRow {
        grant_id: row.grant_id.clone().unwrap_or(reserved),
        client_id: client.id.clone(),
        username: row.username.clone(),
        scope: row.scope.clone(),
        sid: row.sid.clone(),
        auth_time: row.auth_time,
        nonce: row.nonce.clone(),
        revoked: false,
    };
    idp.store.add_grant(&grant, now()).await?;
    let tokens = issue_tokens(idp, &grant, true).await?;
    // A04 without a race: a replay that arrived while this grant was being written
    // revoked an id with nothing under it yet; seen here, the grant revokes itself.
    if idp.store.code_uses(&code_hash).await? > 1 {
        idp.store.revoke_grant(&grant.grant_id).await?;
        return Err(OAuthError::new(
            "invalid_grant",
            "the code was already used",
        ));
    }
    Ok(tokens)
}

async fn refresh(
    idp: &Idp,
    client: &Client,
    f: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let token = f
        .get("refresh_token")
        .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is required"))?;
    let hash = sha256_hex(token.as_bytes());
    // Checked before the token is used, so that a refused request (another client,
    // expired, a wider scope) does not spend it and turn the real client's retry into a
    // "reuse".
    let (grant_id, expires_at) = idp
        .store
        .refresh_token(&hash)
        .await?
        .ok_or_else(|| OAuthError::new("invalid_grant", "unknown refresh token"))?;
    let grant = idp
        .store
        .grant(&grant_id)
        .await?
        .filter(|g| !g.revoked)
        .ok_or_else(|| OAuthError::new("invalid_grant", "the grant was revoked"))?;
    // A06: bound to its client.
    if grant.client_id != client.id {
        return Err(OAuthError::new(
            "invalid_grant",
            "the refresh token belongs to another client",
        ));
    }
    if now() >= expires_at {
        return Err(OAuthError::new(
            "invalid_grant",
            "the refresh token has expired",
        ));
    }
    // A06: the scope can only shrink (RFC 6749 §6).
    let mut granted = grant.clone();
    if let Some(requested) = f.get("scope") {
        let allowed: Vec<&str> = grant.scope.split_whitespace().collect();
        if requested.split_whitespace().any(|s| !allowed.contains(&s)) {
            return Err(OAuthError::new(
                "invalid_scope",
                "the scope may not grow on refresh",
            ));
        }
        granted.scope = requested.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    // A05: the atomic use counter; a rotated-away token presented again revokes the
    // whole family.
    let uses = idp
        .store
        .present_refresh(&hash)
        .await?
        .map_or(i64::MAX, |(_, _, uses)| uses);
    if uses > 1 {
        idp.store.revoke_grant(&grant_id).await?;
        tracing::warn!(client = %client.id, "refresh token reused; its family is revoked");
        return Err(OAuthError::new(
            "invalid_grant",
            "the refresh token was already used",
        ));
    }
    issue_tokens(idp, &granted, false).await
}

/// Claims about the user for the granted scopes.
fn user_claims(idp: &Idp, username: &str, scope: &str) -> serde_json::Map<String, Value> {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), json!(username));
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if let Some(user) = idp.config.user(username) {
        if scopes.contains(&"email")
            && let Some(email) = &user.email
        {
            claims.insert("email".into(), json!(email));
            claims.insert("email_verified".into(), json!(true));
        }
        if scopes.contains(&"profile")
            && let Some(name) = &user.name
        {
            claims.insert("name".into(), json!(name));
        }
    }
    claims
}

async fn issue_tokens(idp: &Idp, grant: &GrantRow, with_nonce: bool) -> Result<Value, OAuthError> {
    let now = now();
    let access = random_token();
    let refresh = random_token();
    let access_ttl = idp.config.access_token_ttl.as_secs() as i64;
    idp.store
        .add_access(
            &sha256_hex(access.as_bytes()),
            &grant.grant_id,
            &grant.scope,
            now + access_ttl,
        )
        .await?;
    idp.store
        .add_refresh(
            &sha256_hex(refresh.as_bytes()),
            &grant.grant_id,
            now + idp.config.refresh_token_ttl.as_secs() as i64,
        )
        .await?;
    let mut claims = user_claims(idp, &grant.username, &grant.scope);
    claims.insert("iss".into(), json!(idp.config.issuer));
    claims.insert("aud".into(), json!(grant.client_id));
    claims.insert("iat".into(), json!(now));
    claims.insert(
        "exp".into(),
        json!(now + idp.config.id_token_ttl.as_secs() as i64),
    );
    claims.insert("auth_time".into(), json!(grant.auth_time));
    claims.insert("sid".into(), json!(grant.sid));
    if with_nonce && let Some(n) = &grant.nonce {
        claims.insert("nonce".into(), json!(n));
    }
    let id_token = sign(idp, "JWT", &claims)?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": access_ttl,
        "refresh_token": refresh,
        "id_token": id_token,
        "scope": grant.scope,
    }))
}

fn bearer_error(description: &str) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "invalid_token", "error_description": description})),
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    r
}

/// `GET|POST /userinfo` with `Authorization: Bearer`.
pub async fn userinfo(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
    else {
        return bearer_error("a bearer token is required");
    };
    let found = match idp.store.access(&sha256_hex(token.trim().as_bytes())).await {
        Ok(f) => f,
        Err(e) => return OAuthError::from(e).into_response(),
    };
    let Some((grant_id, _, scope)) = found.filter(|(_, exp, _)| *exp > now()) else {
        return bearer_error("the access token is unknown or expired");
    };
    // The access token's own scope, which a refresh may have narrowed.
    match idp.store.grant(&grant_id).await {
        Ok(Some(g)) if !g.revoked => ok_json(Value::Object(user_claims(&idp, &g.username, &scope))),
        Ok(_) => bearer_error("the grant was revoked"),
        Err(e) => OAuthError::from(e).into_response(),
    }
}

/// `POST /revoke` (RFC 7009 §2): revoking a refresh token ends its whole grant; an
/// access token just stops working. Unknown tokens are not an error (§2.2).
pub async fn revoke(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    RawForm(body): RawForm,
) -> Response {
    let result = async {
        let f = form(&body)?;
        let client = authenticate(&idp, &headers, &f)?;
        let token = f
            .get("token")
            .ok_or_else(|| OAuthError::new("invalid_request", "token is required"))?;
        let hash = sha256_hex(token.as_bytes());
        if let Some(grant_id) = idp.store.refresh_grant(&hash).await? {
            if idp
                .store
                .grant(&grant_id)
                .await?
                .is_some_and(|g| g.client_id == client.id)
            {
                idp.store.revoke_grant(&grant_id).await?;
            }
        } else if let Some((grant_id, _, _)) = idp.store.access(&hash).await?
            && idp
                .store
                .grant(&grant_id)
                .await?
                .is_some_and(|g| g.client_id == client.id)
        {
            idp.store.delete_access(&hash).await?;
        }
        Ok::<_, OAuthError>(())
    }
    .await;
    match result {
        Ok(()) => ok_json(json!({})),
        Err(e) => e.into_response(),
    }
}
