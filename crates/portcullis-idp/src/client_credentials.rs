//! The client-credentials grant (RFC 6749 §4.4) for machine clients: an RFC 9068
//! access token (`typ: at+jwt`) for one of the client's `resources` (RFC 8707
//! `resource`; the only one when it has one), speaking for the client itself (`sub` =
//! `client_id`), with the scopes asked for among its own (all of them by default), and
//! bound to the key of a DPoP proof when the request carries one (RFC 9449 §5).

use std::collections::HashMap;

use axum::http::HeaderMap;
use portcullis::jose::dpop_proof::{PROOF_WINDOW_SECONDS, verify_token_request_proof};
use portcullis::random::random_token;
use serde_json::{Value, json};

use crate::config::Client;
use crate::token::{OAuthError, sign};
use crate::{Idp, now};

/// The token answer for an authenticated machine client.
pub(crate) fn grant(
    idp: &Idp,
    client: &Client,
    f: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Value, OAuthError> {
    let bound_to = dpop_binding(idp, headers)?;
    if client.secret.is_none() && client.jwks.is_none() {
        return Err(OAuthError::new(
            "unauthorized_client",
            "a public client cannot use client_credentials",
        ));
    }
    let resource = resource(client, f)?;
    let scope = scope(client, f)?.join(" ");
    let now = now();
    let ttl = idp.config.access_token_ttl.as_secs() as i64;
    let mut claims = json!({
        "iss": idp.config.issuer,
        "sub": client.id,
        "client_id": client.id,
        "aud": resource,
        "scope": scope,
        "iat": now,
        "exp": now + ttl,
        "jti": random_token(),
    });
    if let Some(jkt) = &bound_to {
        claims["cnf"] = json!({ "jkt": jkt });
    }
    let token = sign(idp, "at+jwt", &claims)?;
    Ok(json!({
        "access_token": token,
        "token_type": if bound_to.is_some() { "DPoP" } else { "Bearer" },
        "expires_in": ttl,
        "scope": scope,
    }))
}

/// The thumbprint of the key the request's DPoP proof binds the token to, if it has a
/// proof (checked for this endpoint, and used once).
fn dpop_binding(idp: &Idp, headers: &HeaderMap) -> Result<Option<String>, OAuthError> {
    let Some(proof) = headers.get("dpop") else {
        return Ok(None);
    };
    let refused = |why: &str| OAuthError::new("invalid_dpop_proof", why.to_owned());
    let proof = proof
        .to_str()
        .map_err(|_| refused("the proof is not text"))?;
    let token_endpoint = format!("{}/token", idp.config.issuer);
    let (verified, jkt) = verify_token_request_proof(proof, &token_endpoint, now())
        .map_err(|e| refused(&e.to_string()))?;
    let until = verified.iat + PROOF_WINDOW_SECONDS * 2;
    if !idp.assertions.first_use("dpop", &verified.jti, until) {
        return Err(refused("the proof was used before"));
    }
    Ok(Some(jkt))
}

/// The API the token is for: the `resource` asked for, among the client's.
fn resource(client: &Client, f: &HashMap<String, String>) -> Result<String, OAuthError> {
    match (f.get("resource"), client.resources.as_slice()) {
        (Some(r), listed) if listed.contains(r) => Ok(r.clone()),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(OAuthError::new(
            "invalid_target",
            "name the API with `resource`",
        )),
        (Some(_), _) => Err(OAuthError::new(
            "invalid_target",
            "this client may not get tokens for that resource",
        )),
    }
}

/// The scopes asked for, each one the client's; all of its own when none are asked.
fn scope<'a>(
    client: &'a Client,
    f: &'a HashMap<String, String>,
) -> Result<Vec<&'a str>, OAuthError> {
    let Some(asked) = f.get("scope") else {
        return Ok(client.scopes.iter().map(String::as_str).collect());
    };
    let asked: Vec<&str> = asked.split_whitespace().collect();
    if let Some(s) = asked
        .iter()
        .find(|s| !client.scopes.iter().any(|c| c == *s))
    {
        return Err(OAuthError::new(
            "invalid_scope",
            format!("scope `{s}` is not granted to this client"),
        ));
    }
    Ok(asked)
}
