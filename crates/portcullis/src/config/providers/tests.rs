use crate::config::Config;
use crate::config::test_support::{env, minimal};

/// A file holding `text`, for the configuration that names it.
fn file(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pc-providers-{}", crate::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
    Config::load_from(Some(&file(toml)), env(vars)).map_err(|e| e.0)
}

const TWO: &str = r#"
default_provider = "corp"
[[providers]]
id = "corp"
name = "Example Corp"
issuer = "https://login.example.com"
client_id = "gw"
email_domains = ["Example.com"]
allowed_email_domains = ["example.com"]
extra_authorize_params = { prompt = "select_account" }
[[providers]]
id = "partner"
name = "Partner"
issuer = "https://id.partner.example"
client_id = "gw-partner"
email_domains = ["partner.example"]
token_endpoint_auth_method = "client_secret_post"
client_secret = "s3cret"
"#;

#[test]
fn several_providers_each_with_their_own_settings_and_callback() {
    let c = load(TWO, &[]).unwrap();
    assert_eq!(c.providers.len(), 2);
    assert_eq!(c.default_provider.as_deref(), Some("corp"));
    let corp = c.provider("corp").unwrap();
    assert_eq!(corp.name, "Example Corp");
    assert_eq!(corp.email_domains, ["example.com"], "lower-cased");
    assert_eq!(corp.access.allowed_email_domains, ["example.com"]);
    assert!(corp.access.require_email_verified);
    assert_eq!(
        corp.settings.extra_authorize_params["prompt"],
        "select_account"
    );
    let partner = c.provider("partner").unwrap();
    assert_eq!(
        partner.settings.token_endpoint_auth_method,
        crate::config::AuthMethodSetting::ClientSecretPost
    );
    assert!(partner.client_secret.is_some());
    assert!(
        c.access.allowed_email_domains.is_empty(),
        "[access] is its own"
    );
    assert_eq!(
        c.redirect_uri("partner"),
        "http://127.0.0.1:8080/auth/callback/partner"
    );
    assert_eq!(
        c.redirect_uri("default"),
        "http://127.0.0.1:8080/auth/callback"
    );
}

#[test]
fn the_top_level_form_is_the_default_provider() {
    let c = Config::load_from(None, minimal()).unwrap();
    assert_eq!(c.providers.len(), 1);
    assert_eq!(c.providers[0].id, "default");
    assert_eq!(c.providers[0].issuer, "https://id.example.com");
    assert_eq!(
        c.redirect_uri("default"),
        "http://127.0.0.1:8080/auth/callback"
    );
}

#[test]
fn never_both_forms_environment_included() {
    for (before, after, vars) in [
        ("issuer = \"https://x.example\"\n", "", &[][..]),
        ("", "[provider]\ndpop = \"on\"\n", &[][..]),
        ("", "", &[("PORTCULLIS_CLIENT_ID", "x")][..]),
        ("", "", &[("PORTCULLIS_PROVIDER_PAR", "always")][..]),
    ] {
        let errors = load(&format!("{before}{TWO}{after}"), vars)
            .unwrap_err()
            .join("\n");
        assert!(
            errors.contains("cannot be used together"),
            "{before:?} {after:?} {vars:?}: {errors}"
        );
    }
}

#[test]
fn entries_are_checked_alone_and_together() {
    let bad = r#"
default_provider = "nobody"
[[providers]]
id = "Corp!"
issuer = "https://login.example.com"
client_id = "a"
email_domains = ["example.com"]
allowed_tenants = ["t1"]
[[providers]]
id = "partner"
issuer = "https://login.example.com"
client_id = "b"
email_domains = ["example.com", "not a domain"]
client_secret = "x"
client_secret_file = "/nonexistent"
dpop = "sometimes"
typo = 1
"#;
    let errors = load(bad, &[]).unwrap_err().join("\n");
    for needle in [
        "`providers[0].id`: `Corp!` must be",
        "`providers.partner`: unknown field `typo`",
        "`providers[0].allowed_tenants` is for a multi-tenant issuer",
        "`default_provider`: `nobody` is not the id of a provider",
    ] {
        assert!(errors.contains(needle), "missing {needle:?} in:\n{errors}");
    }
    // The unknown key stops that entry; the same entry without it is checked whole.
    let bad = bad.replace("typo = 1\n", "");
    let errors = load(&bad, &[]).unwrap_err().join("\n");
    for needle in [
        "both accept the issuer `https://login.example.com`",
        "both list `example.com` in `email_domains`",
        "`providers.partner.email_domains`: `not a domain` is not a domain",
        "`providers.partner`: set `client_secret` or `client_secret_file`, not both",
        "`providers.partner.dpop`: `sometimes`",
    ] {
        assert!(errors.contains(needle), "missing {needle:?} in:\n{errors}");
    }
    let twice = TWO.replace("id = \"partner\"", "id = \"corp\"");
    let errors = load(&twice, &[]).unwrap_err().join("\n");
    assert!(errors.contains("the id `corp` is used twice"), "{errors}");
}

#[test]
fn a_secret_file_per_entry() {
    let secret = file("from-a-file\n");
    let c = load(
        &TWO.replace(
            "client_secret = \"s3cret\"",
            &format!("client_secret_file = {:?}", secret.display().to_string()),
        ),
        &[],
    )
    .unwrap();
    let partner = c.provider("partner").unwrap();
    assert_eq!(
        partner.client_secret.as_ref().unwrap().0.as_str(),
        "from-a-file"
    );
}

const TENANTS: &str = r#"
[[providers]]
id = "entra"
issuer = "https://login.microsoftonline.com/{tenantid}/v2.0"
discovery_url = "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"
allowed_tenants = ["11111111-1111-1111-1111-111111111111"]
client_id = "gw"
"#;

#[test]
fn a_multi_tenant_issuer_needs_its_discovery_url_and_tenants() {
    let c = load(TENANTS, &[]).unwrap();
    let entra = c.provider("entra").unwrap();
    assert!(entra.is_multi_tenant());
    assert_eq!(
        entra.concrete_issuers(),
        ["https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111/v2.0"]
    );
    for (change, needle) in [
        (
            "allowed_tenants = [\"11111111-1111-1111-1111-111111111111\"]\n",
            "needs `allowed_tenants`",
        ),
        (
            "discovery_url = \"https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration\"\n",
            "needs `discovery_url`",
        ),
    ] {
        let errors = load(&TENANTS.replace(change, ""), &[])
            .unwrap_err()
            .join("\n");
        assert!(errors.contains(needle), "{errors}");
    }
    let assume = format!("{TENANTS}assume_email_verified = true\n");
    let errors = load(&assume, &[]).unwrap_err().join("\n");
    assert!(
        errors.contains("cannot be set on a multi-tenant issuer"),
        "{errors}"
    );
    // A fixed entry for one of the tenants could accept the same `iss`.
    let overlap = format!(
        "{TENANTS}[[providers]]\nid = \"one\"\nissuer = \"https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111/v2.0\"\nclient_id = \"x\"\n"
    );
    let errors = load(&overlap, &[]).unwrap_err().join("\n");
    assert!(errors.contains("could both accept the issuer"), "{errors}");
}

#[test]
fn routes_and_the_spa_exchange_name_providers_that_exist() {
    let routes =
        format!("{TWO}[[routes]]\npath = \"/staff/*\"\nproviders = [\"corp\", \"ghost\"]\n");
    let errors = load(&routes, &[]).unwrap_err().join("\n");
    assert!(
        errors.contains("`routes[0].providers`: `ghost` is not the id"),
        "{errors}"
    );
    let c = load(&routes.replace(", \"ghost\"", ""), &[]).unwrap();
    assert_eq!(
        c.routes[0].providers.as_deref(),
        Some(&["corp".to_owned()][..])
    );

    let spa = [
        ("PORTCULLIS_SPA_CODE_EXCHANGE", "true"),
        ("PORTCULLIS_SPA_REDIRECT_URI", "http://127.0.0.1:8080/cb"),
    ];
    let errors = load(TWO, &spa).unwrap_err().join("\n");
    assert!(
        errors.contains("`spa.provider` is required with several providers"),
        "{errors}"
    );
    let mut with = spa.to_vec();
    with.push(("PORTCULLIS_SPA_PROVIDER", "partner"));
    assert_eq!(
        load(TWO, &with).unwrap().spa.provider.as_deref(),
        Some("partner")
    );
    let single = Config::load_from(None, minimal()).unwrap();
    assert_eq!(single.spa.provider.as_deref(), Some("default"));
}
