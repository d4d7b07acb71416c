use super::*;
use crate::config::Config;
use crate::config::test_support::{env, minimal};

fn store_prefix_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let prefix = prefix(Some(value.into()), &mut errors);
    assert_eq!(prefix, value);
    errors
}

#[test]
fn store_prefix_defaults_to_portcullis() {
    let c = Config::load_from(None, minimal()).unwrap();
    assert_eq!(c.store_prefix, "portcullis");
}

#[test]
fn store_prefix_comes_from_the_environment() {
    let mut e = minimal();
    e.extend(env(&[("PORTCULLIS_STORE_PREFIX", "tenant_a")]));
    let c = Config::load_from(None, e).unwrap();
    assert_eq!(c.store_prefix, "tenant_a");
}

#[test]
fn store_prefix_accepts_lower_case_letters_digits_and_underscores() {
    for good in ["a", "portcullis", "gw_2", "a_b_c", &"p".repeat(30)] {
        assert_eq!(store_prefix_errors(good), Vec::<String>::new(), "{good}");
    }
}

#[test]
fn store_prefix_refuses_anything_else() {
    for bad in [
        "Portcullis",
        "my-gateway",
        "",
        &"p".repeat(31),
        "1gateway",
        "_gateway",
        "gw.a",
        "gw a",
        "prefixé",
    ] {
        assert_eq!(
            store_prefix_errors(bad),
            [format!(
                "`store_prefix`: `{bad}` must be 1–30 characters of a–z, 0–9 and `_`, starting with a letter"
            )],
            "{bad}"
        );
    }
}

#[test]
fn an_invalid_store_prefix_fails_the_whole_configuration() {
    let mut e = minimal();
    e.extend(env(&[("PORTCULLIS_STORE_PREFIX", "My-Gateway")]));
    let errors = Config::load_from(None, e).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("`store_prefix`: `My-Gateway` must be"));
}

#[test]
fn secret_keys_must_be_32_bytes() {
    assert!(SecretKeys::parse("c2hvcnQ=").is_err());
    let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    assert_eq!(
        SecretKeys::parse(&format!("{good},{good}"))
            .unwrap()
            .0
            .len(),
        2
    );
}

#[test]
fn secret_file_holds_the_key_ring_and_excludes_secret() {
    let dir =
        std::env::temp_dir().join(format!("pc-secret-file-{}", crate::random::random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys");
    let key = || {
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            crate::random::random_bytes::<32>(),
        )
    };
    let (a, b) = (key(), key());
    std::fs::write(&path, format!("{}\n{}\n", &*a, &*b)).unwrap();
    let mut e = minimal();
    e.extend(env(&[
        ("PORTCULLIS_STORE", "redis://127.0.0.1"),
        ("PORTCULLIS_SECRET_FILE", path.to_str().unwrap()),
    ]));
    let c = Config::load_from(None, e.clone()).unwrap();
    assert_eq!(c.secret.unwrap().0.len(), 2, "one key per line");
    assert_eq!(c.secret_file.as_deref(), Some(path.as_path()));

    let mut both = e.clone();
    both.extend(env(&[("PORTCULLIS_SECRET", a.as_str())]));
    let errors = Config::load_from(None, both).unwrap_err().0;
    assert!(errors.iter().any(|e| e.contains("both set")), "{errors:?}");

    std::fs::write(&path, "not base64!").unwrap();
    let errors = Config::load_from(None, e.clone()).unwrap_err().0;
    assert!(
        errors.iter().any(|e| e.contains("`secret_file`")),
        "{errors:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let errors = Config::load_from(None, e).unwrap_err().0;
    assert!(
        errors.iter().any(|e| e.contains("cannot read")),
        "{errors:?}"
    );
    assert_eq!(
        errors.len(),
        1,
        "no second complaint about `secret`: {errors:?}"
    );
}
