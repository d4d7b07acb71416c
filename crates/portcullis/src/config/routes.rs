//! `[[routes]]` (file only): who may reach which paths once signed in. An ordered list;
//! the first route whose `path` matches the normalised request path (ignoring ASCII
//! case) decides; a request no route matches needs only the global `[access]` rules.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::access::{AccessSettings, ClaimValues, RawAccess};
use crate::path::PathPattern;

/// One route as configured.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// The pattern as written (same syntax as `public_paths`).
    pub path: String,
    /// Upper-case method names the route allows (`GET` allows `HEAD` too); `None`: any.
    pub methods: Option<Vec<String>>,
    /// The rules a user must pass on this route, on the claims the session keeps.
    pub access: AccessSettings,
    /// `providers`: the provider ids whose users may pass; `None`: any.
    pub providers: Option<Vec<String>>,
    /// `required_scopes`: each must be granted — to a token (`scope`/`scp`), or to a
    /// session (the scope its tokens were granted).
    pub required_scopes: Vec<String>,
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    path: Option<String>,
    methods: Option<Vec<String>>,
    required_claims: Option<BTreeMap<String, ClaimValues>>,
    allowed_emails: Option<Vec<String>>,
    allowed_email_domains: Option<Vec<String>>,
    providers: Option<Vec<String>>,
    required_scopes: Option<Vec<String>>,
}

/// Checks every route, and that none overlaps a public path (a public path is never
/// checked, so the route could never apply there: a configuration mistake to say so).
pub(super) fn validate(
    raw: Option<Vec<RawRoute>>,
    public: &[(String, PathPattern)],
    providers: &[super::ProviderConfig],
    errors: &mut Vec<String>,
) -> Vec<RouteSettings> {
    let mut routes = Vec::new();
    // The routes before this one, to find one that hides it.
    let mut earlier: Vec<(String, PathPattern)> = Vec::new();
    for (i, raw) in raw.unwrap_or_default().into_iter().enumerate() {
        let name = format!("routes[{i}]");
        let Some(path) = raw.path else {
            errors.push(format!("`{name}` has no `path`"));
            continue;
        };
        match PathPattern::parse(&path) {
            None => errors.push(format!(
                "`{name}.path`: `{path}` must be a normalised path (`/admin`) or a prefix ending in `/*` (`/admin/*`)"
            )),
            Some(pattern) => {
                check_placement(&name, &path, &pattern, &earlier, public, errors);
                earlier.push((format!("`{name}` (`{path}`)"), pattern));
            }
        }
        let methods = raw.methods.map(|list| methods(&name, list, errors));
        let access = RawAccess {
            allowed_email_domains: raw.allowed_email_domains,
            allowed_emails: raw.allowed_emails,
            required_claims: raw.required_claims,
            require_email_verified: None,
        }
        .validate_as(&name, errors);
        let route_providers = raw
            .providers
            .inspect(|list| check_providers(&name, list, providers, errors));
        let required_scopes = super::bearer::scopes(
            raw.required_scopes,
            &format!("{name}.required_scopes"),
            errors,
        );
        routes.push(RouteSettings {
            path,
            methods,
            access,
            providers: route_providers,
            required_scopes,
        });
    }
    routes
}

/// A route inside an earlier, broader one never applies (first match wins:
/// `/admin/*` before `/admin/billing/*` would open billing to admins' rules only), nor
/// one overlapping a public path: always a mistake, so an error.
fn check_placement(
    name: &str,
    path: &str,
    pattern: &PathPattern,
    earlier: &[(String, PathPattern)],
    public: &[(String, PathPattern)],
    errors: &mut Vec<String>,
) {
    if let Some((before, _)) = earlier
        .iter()
        .find(|(_, e)| e.covers_ignoring_case(pattern))
    {
        errors.push(format!(
            "`{name}` (`{path}`) can never apply: {before} comes first and matches every path it does; put the narrower route first"
        ));
    }
    for (p, public) in public {
        if pattern.overlaps_ignoring_case(public) {
            errors.push(format!(
                "`{name}` (`{path}`) overlaps the public path `{p}`: public paths are never checked, so the route could not apply there; narrow one of them"
            ));
        }
    }
}

/// A route's methods, upper-cased; each must be a token of letters.
fn methods(name: &str, list: Vec<String>, errors: &mut Vec<String>) -> Vec<String> {
    if list.is_empty() {
        errors.push(format!(
            "`{name}.methods` is empty: leave it out to allow every method"
        ));
    }
    list.into_iter()
        .map(|m| {
            let m = m.trim().to_ascii_uppercase();
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                errors.push(format!("`{name}.methods`: `{m}` is not an HTTP method"));
            }
            m
        })
        .collect()
}

/// A route's providers: each the id of a configured one.
fn check_providers(
    name: &str,
    list: &[String],
    providers: &[super::ProviderConfig],
    errors: &mut Vec<String>,
) {
    if list.is_empty() {
        errors.push(format!(
            "`{name}.providers` is empty: leave it out to allow every provider"
        ));
    }
    for id in list {
        if !providers.iter().any(|p| &p.id == id) {
            errors.push(format!(
                "`{name}.providers`: `{id}` is not the id of a provider"
            ));
        }
    }
}

#[cfg(test)]
mod tests;
