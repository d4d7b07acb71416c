//! `[[routes]]` on a signed-in request: the first route whose path matches the
//! normalised path (ignoring ASCII case) decides which methods pass and which rules the
//! user must meet, judged on the claims the session keeps (updated at every refresh).
//! No route matches: the global `[access]` rules, checked at sign-in and refresh, suffice.

use axum::http::Method;
use serde_json::{Map, Value};

use super::access::{AccessDenied, access_refusals};
use crate::config::{AccessSettings, RouteSettings};
use crate::path::{NormalizedPath, PathPattern};
use crate::store::SessionRecord;

/// Why a route refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteRefusal {
    /// The route does not allow this method.
    Method,
    /// The user does not meet the route's rules.
    Access(AccessDenied),
    /// A scope the route requires was not granted (RFC 6750 `insufficient_scope`).
    Scope(String),
}

/// Whom a route judges: a session's user, or the principal of an access token.
pub struct Caller<'a> {
    /// The provider that signed the user in, or whose issuer the token is from.
    pub provider_id: &'a str,
    /// The claims the rules read, made only when a rule needs them.
    pub claims: &'a dyn Fn() -> Map<String, Value>,
    /// The scope granted: a token's `scope`, or a session's.
    pub scopes: &'a [String],
}

impl Caller<'_> {
    /// The first scope of `required` that was not granted.
    pub fn missing_scope<'r>(&self, required: &'r [String]) -> Option<&'r String> {
        required.iter().find(|s| !self.scopes.contains(s))
    }
}

#[derive(Debug)]
struct Route {
    pattern: PathPattern,
    /// `None`: every method.
    methods: Option<Vec<Method>>,
    access: AccessSettings,
    /// Whether `access` has any rule (else the claims need not be read).
    has_rules: bool,
    /// The providers whose users may pass; `None`: any.
    providers: Option<Vec<String>>,
    /// Scopes the caller must have been granted.
    required_scopes: Vec<String>,
}

/// The configured routes, in order.
#[derive(Debug, Default)]
pub struct RouteRules(Vec<Route>);

impl RouteRules {
    pub fn new(settings: &[RouteSettings]) -> Self {
        Self(
            settings
                .iter()
                .filter_map(|r| {
                    // HEAD is judged as GET, in the list as in requests.
                    let methods = r.methods.as_ref().map(|list| {
                        list.iter()
                            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                            .map(|m| as_get(&m))
                            .collect()
                    });
                    let a = &r.access;
                    Some(Route {
                        pattern: PathPattern::parse(&r.path)?,
                        methods,
                        has_rules: a.require_email_verified
                            || !a.allowed_emails.is_empty()
                            || !a.allowed_email_domains.is_empty()
                            || !a.required_claims.is_empty(),
                        access: a.clone(),
                        providers: r.providers.clone(),
                        required_scopes: r.required_scopes.clone(),
                    })
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The verdict of the first route matching `path` for this caller (`Ok` when no
    /// route matches). Every other method the request may be read as (`overrides`:
    /// method-override headers and `_method`, which Express, Rails, Laravel and Symfony
    /// obey; `None` for an unreadable one) must be allowed too (G04).
    pub fn check(
        &self,
        method: &Method,
        overrides: &[Option<Method>],
        path: &NormalizedPath,
        caller: &Caller<'_>,
    ) -> Result<(), RouteRefusal> {
        let Some(route) = self
            .0
            .iter()
            .find(|r| r.pattern.matches_ignoring_case(path))
        else {
            return Ok(());
        };
        if let Some(methods) = &route.methods {
            let allowed = |m: &Method| methods.contains(&as_get(m));
            if !allowed(method) {
                return Err(RouteRefusal::Method);
            }
            // Unreadable: refused, as the framework's reading cannot be known.
            if !overrides.iter().all(|o| o.as_ref().is_some_and(allowed)) {
                return Err(RouteRefusal::Method);
            }
        }
        // G12: a route limited to some providers refuses every other provider's users,
        // whatever their claims say.
        if let Some(ids) = &route.providers
            && !ids.iter().any(|id| id == caller.provider_id)
        {
            return Err(RouteRefusal::Access(AccessDenied::ProviderNotAllowed));
        }
        // Never skipped, for sessions as for tokens.
        if let Some(scope) = caller.missing_scope(&route.required_scopes) {
            return Err(RouteRefusal::Scope(scope.clone()));
        }
        if !route.has_rules {
            return Ok(());
        }
        match access_refusals(&route.access, &(caller.claims)())
            .into_iter()
            .next()
        {
            Some(denied) => Err(RouteRefusal::Access(denied)),
            None => Ok(()),
        }
    }
}

/// HEAD is a GET without the body.
fn as_get(m: &Method) -> Method {
    if m == Method::HEAD {
        Method::GET
    } else {
        m.clone()
    }
}

/// The claims a session keeps, with `email_verified` as the gateway decided it at the
/// last sign-in or refresh (`provider.assume_email_verified` included). Unreadable
/// claims count as none, so every claim rule refuses.
pub(crate) fn session_claims(record: &SessionRecord) -> Map<String, Value> {
    let mut claims: Map<String, Value> = serde_json::from_str(&record.claims).unwrap_or_default();
    claims.insert(
        "email_verified".to_owned(),
        Value::Bool(record.email_verified),
    );
    claims
}
