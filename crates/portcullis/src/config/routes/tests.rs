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
