use super::*;
use serde_json::json;

fn claims(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn domain_rule(d: &str) -> AccessSettings {
    AccessSettings {
        allowed_email_domains: vec![d.into()],
        require_email_verified: true,
        ..Default::default()
    }
}

#[test]
fn no_rules_admit_everyone() {
    assert_eq!(
        check_access(&AccessSettings::default(), &claims(json!({}))),
        Ok(())
    );
}

#[test]
fn ar2_domain_rules_match_the_exact_domain_only() {
    let rules = domain_rule("example.com");
    let ok = |e: &str| check_access(&rules, &claims(json!({"email": e, "email_verified": true})));
    assert_eq!(ok("alice@example.com"), Ok(()));
    assert_eq!(ok("Alice@EXAMPLE.com"), Ok(()));
    for bad in [
        "mallory@evil-example.com",
        "mallory@example.com.evil.net",
        "a@b@example.com",
        "mallory@sub.example.com",
        "@example.com",
        "example.com",
        "mallory@example.com ",
    ] {
        assert_eq!(ok(bad), Err(AccessDenied::EmailNotAllowed), "{bad}");
    }
}

#[test]
fn ar1_unverified_email_is_refused_when_required() {
    let rules = domain_rule("example.com");
    for v in [json!(false), json!("false"), Value::Null] {
        let c = claims(json!({"email": "alice@example.com", "email_verified": v}));
        assert_eq!(
            check_access(&rules, &c),
            Err(AccessDenied::EmailNotVerified)
        );
    }
    let c = claims(json!({"email": "alice@example.com", "email_verified": "true"}));
    assert_eq!(check_access(&rules, &c), Ok(()));
}

#[test]
fn ar1_allowed_emails_are_exact() {
    let rules = AccessSettings {
        allowed_emails: vec!["alice@example.com".into()],
        ..Default::default()
    };
    let c = |e: &str| claims(json!({"email": e}));
    assert_eq!(check_access(&rules, &c("alice@example.com")), Ok(()));
    assert_eq!(
        check_access(&rules, &c("bob@example.com")),
        Err(AccessDenied::EmailNotAllowed)
    );
    assert_eq!(
        check_access(&rules, &claims(json!({}))),
        Err(AccessDenied::NoEmail)
    );
}

#[test]
fn ar1_required_claims_need_one_accepted_value() {
    let mut rules = AccessSettings::default();
    rules
        .required_claims
        .insert("groups".into(), vec!["admin".into(), "ops".into()]);
    assert_eq!(
        check_access(&rules, &claims(json!({"groups": ["dev", "ops"]}))),
        Ok(())
    );
    assert_eq!(
        check_access(&rules, &claims(json!({"groups": "admin"}))),
        Ok(())
    );
    for bad in [
        json!({"groups": ["dev"]}),
        json!({}),
        json!({"groups": "administrators"}),
    ] {
        assert_eq!(
            check_access(&rules, &claims(bad)),
            Err(AccessDenied::MissingClaim("groups".into()))
        );
    }
}
