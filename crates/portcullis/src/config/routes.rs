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
}

/// Checks every route, and that none overlaps a public path (a public path is never
/// checked, so the route could never apply there: a configuration mistake to say so).
pub(super) fn validate(
    raw: Option<Vec<RawRoute>>,
    public: &[(String, PathPattern)],
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
                // First match wins: a route inside an earlier, broader one never applies
                // (`/admin/*` before `/admin/billing/*` would open billing to admins'
                // rules only) — always a mistake, so an error.
                if let Some((before, _)) =
                    earlier.iter().find(|(_, e)| e.covers_ignoring_case(&pattern))
                {
                    errors.push(format!(
                        "`{name}` (`{path}`) can never apply: {before} comes first and matches every path it does; put the narrower route first"
                    ));
                }
                earlier.push((format!("`routes[{i}]` (`{path}`)"), pattern.clone()));
                for (p, public) in public {
                    if pattern.overlaps_ignoring_case(public) {
                        errors.push(format!(
                            "`{name}` (`{path}`) overlaps the public path `{p}`: public paths are never checked, so the route could not apply there; narrow one of them"
                        ));
                    }
                }
            }
        }
        let methods = raw.methods.map(|list| {
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
        });
        let access = RawAccess {
            allowed_email_domains: raw.allowed_email_domains,
            allowed_emails: raw.allowed_emails,
            required_claims: raw.required_claims,
            require_email_verified: None,
        }
        .validate_as(&name, errors);
        routes.push(RouteSettings {
            path,
            methods,
            access,
        });
    }
    routes
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::test_support::minimal;

    fn load(toml: &str) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!("pc-routes-{}", crate::random::random_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("portcullis.toml");
        std::fs::write(&file, toml).unwrap();
        let r = Config::load_from(Some(&file), minimal()).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn routes_are_read_in_order_with_their_rules() {
        let c = load(
            r#"
[[routes]]
path = "/admin/*"
methods = ["get", "POST"]
required_claims = { groups = ["admins"] }

[[routes]]
path = "/billing/*"
allowed_email_domains = ["Example.com"]
"#,
        )
        .unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].path, "/admin/*");
        assert_eq!(
            c.routes[0].methods.as_deref(),
            Some(&["GET".to_owned(), "POST".to_owned()][..])
        );
        assert_eq!(c.routes[0].access.required_claims["groups"], ["admins"]);
        assert_eq!(c.routes[1].access.allowed_email_domains, ["example.com"]);
        // Email rules count verified addresses only, as in `[access]`.
        assert!(c.routes[1].access.require_email_verified);
        assert!(!c.routes[0].access.require_email_verified);
    }

    #[test]
    fn narrow_routes_may_come_before_broad_ones() {
        let c = load(
            "[[routes]]\npath = \"/admin/billing/*\"\n[[routes]]\npath = \"/admin\"\n[[routes]]\npath = \"/admin/*\"\n[[routes]]\npath = \"/administration/*\"",
        )
        .unwrap();
        assert_eq!(c.routes.len(), 4);
    }

    #[test]
    fn bad_routes_are_configuration_errors() {
        for (toml, expected) in [
            (
                "public_paths = [\"/admin/login\"]\n[[routes]]\npath = \"/Admin/*\"",
                "overlaps the public path `/admin/login`",
            ),
            (
                "public_paths = [\"/*\"]\n[[routes]]\npath = \"/x\"",
                "overlaps the public path",
            ),
            (
                "[[routes]]\npath = \"/a\"\nallowed_group = [\"x\"]",
                "unknown field",
            ),
            ("[[routes]]\npath = \"admin\"", "`routes[0].path`"),
            ("[[routes]]\npath = \"/a/../b\"", "`routes[0].path`"),
            (
                "[[routes]]\nmethods = [\"GET\"]",
                "`routes[0]` has no `path`",
            ),
            (
                "[[routes]]\npath = \"/a\"\nmethods = []",
                "`routes[0].methods` is empty",
            ),
            (
                "[[routes]]\npath = \"/a\"\nmethods = [\"GE T\"]",
                "not an HTTP method",
            ),
            (
                "[[routes]]\npath = \"/a\"\nallowed_emails = [\"nobody\"]",
                "`routes[0].allowed_emails`",
            ),
            (
                "[[routes]]\npath = \"/admin/*\"\n[[routes]]\npath = \"/Admin/billing/*\"",
                "`routes[1]` (`/Admin/billing/*`) can never apply: `routes[0]` (`/admin/*`)",
            ),
            (
                "[[routes]]\npath = \"/*\"\n[[routes]]\npath = \"/x\"",
                "`routes[1]` (`/x`) can never apply",
            ),
            (
                "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/A\"",
                "`routes[1]` (`/A`) can never apply",
            ),
        ] {
            let e = load(toml).unwrap_err();
            assert!(e.contains(expected), "{toml}: {e}");
        }
    }
}
