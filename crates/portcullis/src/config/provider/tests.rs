use crate::config::Config;
use crate::config::test_support::minimal;

#[test]
fn a_client_key_is_read_at_load_and_its_settings_need_it() {
    use crate::config::{AssertionAudience, AuthMethodSetting};
    use crate::jose::client_key::{KeyKind, generate_pem};
    let dir = std::env::temp_dir().join(format!("pc-key-config-{}", crate::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, generate_pem(KeyKind::Ed25519).unwrap()).unwrap();
    let key = key.to_str().unwrap().to_owned();
    let load = |pairs: &[(&str, &str)]| {
        let mut e = minimal();
        e.extend(
            pairs
                .iter()
                .map(|(k, v)| (format!("PORTCULLIS_PROVIDER_{k}"), (*v).to_owned())),
        );
        Config::load_from(None, e)
    };
    let c = load(&[
        ("CLIENT_KEY_FILE", &key),
        ("CLIENT_ASSERTION_AUD", "token_endpoint"),
    ])
    .unwrap();
    assert!(c.providers[0].settings.client_key.is_some());
    assert_eq!(
        c.providers[0].settings.client_assertion_aud,
        AssertionAudience::TokenEndpoint
    );
    assert_eq!(
        c.providers[0].settings.token_endpoint_auth_method,
        AuthMethodSetting::Auto
    );
    let refused = |pairs: &[(&str, &str)], says: &str| {
        let e = load(pairs).unwrap_err().0.join("\n");
        assert!(e.contains(says), "{pairs:?}: {e}");
    };
    refused(
        &[("CLIENT_KEY_FILE", "/nonexistent/key.pem")],
        "cannot read",
    );
    refused(
        &[("TOKEN_ENDPOINT_AUTH_METHOD", "private_key_jwt")],
        "needs `provider.client_key_file`",
    );
    refused(
        &[("CLIENT_CERT_FILE", &key)],
        "needs `provider.client_key_file`",
    );
    refused(
        &[("CLIENT_ASSERTION_AUD", "issuer")],
        "need `provider.client_key_file`",
    );
    refused(
        &[
            ("CLIENT_KEY_FILE", &key),
            ("CLIENT_ASSERTION_AUD", "audience"),
        ],
        "neither `issuer` nor `token_endpoint`",
    );
    refused(
        &[("CLIENT_KEY_FILE", &key), ("CLIENT_ASSERTION_TYP", "JWT")],
        "`client-authentication+jwt`",
    );
    refused(
        &[
            ("CLIENT_KEY_FILE", &key),
            ("TOKEN_ENDPOINT_AUTH_METHOD", "none"),
        ],
        "not `private_key_jwt` or `auto`",
    );
    refused(
        &[("CLIENT_KEY_FILE", &key), ("CLIENT_CERT_FILE", &key)],
        "`provider.client_cert_file`",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn token_endpoint_auth_methods_read_and_fit_the_secret() {
    use crate::config::AuthMethodSetting;
    let with = |method: &str, secret: bool| {
        let mut e = minimal();
        e.push((
            "PORTCULLIS_PROVIDER_TOKEN_ENDPOINT_AUTH_METHOD".into(),
            method.into(),
        ));
        if secret {
            e.push(("PORTCULLIS_CLIENT_SECRET".into(), "s3cr+t/==".into()));
        }
        Config::load_from(None, e).map(|c| c.providers[0].settings.token_endpoint_auth_method)
    };
    assert_eq!(
        with("client_secret_post", true).unwrap(),
        AuthMethodSetting::ClientSecretPost
    );
    assert_eq!(with("auto", false).unwrap(), AuthMethodSetting::Auto);
    assert_eq!(with("none", false).unwrap(), AuthMethodSetting::None);
    assert!(with("client_secret_basic", false).is_err());
    assert!(with("none", true).is_err());
    assert!(with("client_secret_jwt", true).is_err());
}

#[test]
fn reserved_authorize_params_cannot_be_overridden() {
    let mut e = minimal();
    e.push((
        "PORTCULLIS_PROVIDER_EXTRA_AUTHORIZE_PARAMS".into(),
        r#"{ redirect_uri = "https://evil" }"#.into(),
    ));
    assert!(Config::load_from(None, e).is_err());
}

#[test]
fn par_is_auto_always_or_never() {
    use crate::config::ParSetting;
    let load = |value: Option<&str>| {
        let mut e = minimal();
        if let Some(v) = value {
            e.push(("PORTCULLIS_PROVIDER_PAR".to_owned(), v.to_owned()));
        }
        Config::load_from(None, e)
    };
    assert_eq!(
        load(None).unwrap().providers[0].settings.par,
        ParSetting::Auto
    );
    assert_eq!(
        load(Some("always")).unwrap().providers[0].settings.par,
        ParSetting::Always
    );
    assert_eq!(
        load(Some("never")).unwrap().providers[0].settings.par,
        ParSetting::Never
    );
    let e = load(Some("sometimes")).unwrap_err().0.join("\n");
    assert!(e.contains("`provider.par`: `sometimes`"), "{e}");
}

#[test]
fn dpop_is_off_or_on() {
    let load = |value: Option<&str>| {
        let mut e = minimal();
        if let Some(v) = value {
            e.push(("PORTCULLIS_PROVIDER_DPOP".to_owned(), v.to_owned()));
        }
        Config::load_from(None, e)
    };
    assert!(!load(None).unwrap().providers[0].settings.dpop);
    assert!(!load(Some("off")).unwrap().providers[0].settings.dpop);
    assert!(load(Some("on")).unwrap().providers[0].settings.dpop);
    let e = load(Some("yes")).unwrap_err().0.join("\n");
    assert!(e.contains("`provider.dpop`: `yes`"), "{e}");
    let mut e = minimal();
    e.push((
        "PORTCULLIS_PROVIDER_EXTRA_AUTHORIZE_PARAMS".into(),
        r#"{ dpop_jkt = "someone-elses" }"#.into(),
    ));
    assert!(Config::load_from(None, e).is_err());
}

/// `provider.profile = "fapi2"` sets what it requires and refuses what contradicts it.
#[test]
fn fapi2_requires_the_whole_profile() {
    use crate::config::{AuthMethodSetting, FAPI2_ALGORITHMS, ParSetting};
    use crate::jose::client_key::{KeyKind, generate_pem};
    let dir =
        std::env::temp_dir().join(format!("pc-fapi2-config-{}", crate::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, generate_pem(KeyKind::EcP256).unwrap()).unwrap();
    let key = key.to_str().unwrap().to_owned();
    let load = |pairs: &[(&str, &str)]| {
        let mut e = minimal();
        e.push(("PORTCULLIS_PROVIDER_PROFILE".into(), "fapi2".into()));
        e.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Config::load_from(None, e)
    };
    let c = load(&[("PORTCULLIS_PROVIDER_CLIENT_KEY_FILE", &key)]).unwrap();
    assert!(c.providers[0].settings.fapi2);
    assert_eq!(
        c.providers[0].settings.token_endpoint_auth_method,
        AuthMethodSetting::PrivateKeyJwt
    );
    assert_eq!(c.providers[0].settings.par, ParSetting::Always);
    assert!(c.providers[0].settings.dpop);
    assert_eq!(
        c.providers[0].settings.allowed_algorithms.as_deref(),
        Some(&FAPI2_ALGORITHMS[..])
    );
    for (pairs, says) in [
        (vec![], "needs `provider.client_key_file`"),
        (
            vec![("PORTCULLIS_CLIENT_SECRET", "s")],
            "`client_secret` is not used",
        ),
        (
            vec![("PORTCULLIS_PROVIDER_TOKEN_ENDPOINT_AUTH_METHOD", "auto")],
            "must be `private_key_jwt`",
        ),
        (
            vec![("PORTCULLIS_PROVIDER_CLIENT_ASSERTION_AUD", "token_endpoint")],
            "`provider.client_assertion_aud` must be `issuer`",
        ),
        (
            vec![("PORTCULLIS_PROVIDER_PAR", "never")],
            "`provider.par` cannot be `never`",
        ),
        (
            vec![("PORTCULLIS_PROVIDER_DPOP", "off")],
            "`provider.dpop` cannot be `off`",
        ),
        (
            vec![("PORTCULLIS_PROVIDER_ALLOWED_ALGORITHMS", "ES256,RS256")],
            "PS256, ES256 and EdDSA only",
        ),
        (
            vec![("PORTCULLIS_SPA_CODE_EXCHANGE", "true")],
            "`spa.code_exchange` cannot be used",
        ),
        (
            vec![("PORTCULLIS_PUBLIC_URL", "http://app.example.com")],
            "needs an https `public_url`",
        ),
    ] {
        let mut pairs = pairs;
        if !says.contains("client_key_file") {
            pairs.push(("PORTCULLIS_PROVIDER_CLIENT_KEY_FILE", &key));
        }
        let e = load(&pairs).unwrap_err().0.join("\n");
        assert!(e.contains(says), "{pairs:?}: {e}");
    }
    let mut e = minimal();
    e.push(("PORTCULLIS_PROVIDER_PROFILE".into(), "fapi1".into()));
    let e = Config::load_from(None, e).unwrap_err().0.join("\n");
    assert!(e.contains("`provider.profile`: `fapi1`"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
