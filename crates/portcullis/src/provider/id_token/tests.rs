use super::*;
use serde_json::json;

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn token(header: &Value, claims: &Value) -> String {
    format!("{}.{}.c2ln", b64(header), b64(claims))
}

const RS: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];

#[test]
fn j14_shapes_other_than_three_segments_are_refused() {
    let t = token(&json!({"alg": "RS256"}), &json!({}));
    assert!(parse_unverified(&t, RS).is_ok());
    for bad in [
        format!("{t}.extra"),
        t.rsplit_once('.').unwrap().0.to_string(),
        format!("{{\"payload\":\"{}\"}}", b64(&json!({}))),
        "..".to_string(),
        format!("{}.{}.", b64(&json!({"alg": "RS256"})), b64(&json!({}))),
    ] {
        assert_eq!(
            parse_unverified(&bad, RS).unwrap_err(),
            IdTokenError::Malformed,
            "{bad}"
        );
    }
}

#[test]
fn j14_duplicate_members_are_refused() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","alg":"none"}"#);
    let t = format!("{header}.{}.c2ln", b64(&json!({})));
    assert!(matches!(
        parse_unverified(&t, RS),
        Err(IdTokenError::DuplicateMember(_))
    ));
    let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","sub":"admin"}"#);
    let t = format!("{}.{claims}.c2ln", b64(&json!({"alg": "RS256"})));
    assert!(matches!(
        parse_unverified(&t, RS),
        Err(IdTokenError::DuplicateMember(_))
    ));
}

#[test]
fn r03_oversized_tokens_are_refused_before_parsing() {
    let t = "a".repeat(MAX_JWT_BYTES + 1);
    assert_eq!(
        parse_unverified(&t, RS).unwrap_err(),
        IdTokenError::TooLarge
    );
}

/// An unsigned token (`alg: none`, empty signature) is reported as a refused
/// algorithm, not as a malformed token.
#[test]
fn j02_an_unsigned_token_is_a_refused_algorithm() {
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&json!({})));
    assert_eq!(
        parse_unverified(&unsigned, RS).unwrap_err(),
        IdTokenError::AlgorithmNotAllowed("none".into())
    );
    let empty_signature = format!("{}.{}.", b64(&json!({"alg": "RS256"})), b64(&json!({})));
    assert_eq!(
        parse_unverified(&empty_signature, RS).unwrap_err(),
        IdTokenError::Malformed
    );
}

#[test]
fn j02_algorithms_off_the_list_are_refused() {
    for alg in ["none", "None", "HS256", "RS1", ""] {
        let t = token(&json!({"alg": alg}), &json!({}));
        assert!(
            matches!(
                parse_unverified(&t, RS),
                Err(IdTokenError::AlgorithmNotAllowed(_))
            ),
            "{alg}"
        );
    }
}

#[test]
fn j03_j05_header_keys_and_crit_are_refused() {
    for member in ["jwk", "jku", "x5u", "x5c"] {
        let t = token(&json!({"alg": "RS256", member: "x"}), &json!({}));
        assert_eq!(
            parse_unverified(&t, RS).unwrap_err(),
            IdTokenError::EmbeddedKey(member)
        );
    }
    let t = token(
        &json!({"alg": "RS256", "crit": ["exp"], "exp": 1}),
        &json!({}),
    );
    assert_eq!(
        parse_unverified(&t, RS).unwrap_err(),
        IdTokenError::CriticalHeader
    );
}

#[test]
fn j04_hostile_kids_are_refused() {
    for kid in [
        json!("x".repeat(8192)),
        json!("a\u{0000}b"),
        json!(""),
        json!(42),
        json!("a\nb"),
    ] {
        let t = token(&json!({"alg": "RS256", "kid": kid}), &json!({}));
        assert_eq!(
            parse_unverified(&t, RS).unwrap_err(),
            IdTokenError::BadKeyId
        );
    }
    // Odd but printable kids are only looked up in the JWKS, never elsewhere.
    let t = token(
        &json!({"alg": "RS256", "kid": "../../etc/passwd' OR 1=1"}),
        &json!({}),
    );
    assert!(parse_unverified(&t, RS).is_ok());
}

fn good_claims(now: i64) -> Value {
    json!({"iss": "https://id.example.com", "aud": "app", "sub": "alice",
               "exp": now + 300, "iat": now, "nonce": "n-1"})
}

fn expect(now: i64) -> Expectations<'static> {
    Expectations {
        issuer: "https://id.example.com",
        client_id: "app",
        trusted_audiences: &[],
        nonce: Some("n-1"),
        now,
    }
}

fn with(now: i64, patch: Value) -> Map<String, Value> {
    let mut c = good_claims(now).as_object().cloned().unwrap();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.remove(k);
        } else {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

#[test]
fn good_claims_pass() {
    let now = 1_800_000_000;
    let ok = check_claims(&with(now, json!({})), &expect(now)).unwrap();
    assert_eq!(ok.subject, "alice");
}

#[test]
fn j06_issuer_must_match_exactly() {
    let now = 1_800_000_000;
    for iss in [
        json!("https://id.example.com/"),
        json!("https://ID.example.com"),
        json!(null),
        json!(["https://id.example.com"]),
    ] {
        assert_eq!(
            check_claims(&with(now, json!({"iss": iss})), &expect(now)).unwrap_err(),
            IdTokenError::WrongIssuer
        );
    }
}

#[test]
fn j07_audience_and_azp() {
    let now = 1_800_000_000;
    for aud in [
        json!("other"),
        json!(null),
        json!(["app", "untrusted"]),
        json!([]),
        json!([1]),
    ] {
        assert_eq!(
            check_claims(&with(now, json!({"aud": aud})), &expect(now)).unwrap_err(),
            IdTokenError::WrongAudience
        );
    }
    assert!(check_claims(&with(now, json!({"aud": ["app"]})), &expect(now)).is_ok());
    assert_eq!(
        check_claims(&with(now, json!({"azp": "other"})), &expect(now)).unwrap_err(),
        IdTokenError::WrongAuthorizedParty
    );
}

#[test]
fn j07_trusted_audiences_need_azp_and_admit_only_themselves() {
    let now = 1_800_000_000;
    let trusted = ["project-1".to_owned()];
    let expect = Expectations {
        trusted_audiences: &trusted,
        ..expect(now)
    };
    let ok = json!({"aud": ["app", "project-1"], "azp": "app"});
    assert!(check_claims(&with(now, ok), &expect).is_ok());
    for (patch, error) in [
        // Without our client id, a trusted audience alone is not enough.
        (
            json!({"aud": "project-1", "azp": "app"}),
            IdTokenError::WrongAudience,
        ),
        (
            json!({"aud": ["project-1"], "azp": "app"}),
            IdTokenError::WrongAudience,
        ),
        // Any audience not trusted spoils it.
        (
            json!({"aud": ["app", "project-1", "other"], "azp": "app"}),
            IdTokenError::WrongAudience,
        ),
        // Several audiences: azp must say the token was issued to us.
        (
            json!({"aud": ["app", "project-1"]}),
            IdTokenError::WrongAuthorizedParty,
        ),
        (
            json!({"aud": ["app", "project-1"], "azp": "project-1"}),
            IdTokenError::WrongAuthorizedParty,
        ),
    ] {
        assert_eq!(
            check_claims(&with(now, patch.clone()), &expect).unwrap_err(),
            error,
            "{patch}"
        );
    }
    // Not configured: the same token is refused (J07).
    let ok = json!({"aud": ["app", "project-1"], "azp": "app"});
    assert_eq!(
        check_claims(&with(now, ok), &super::tests::expect(now)).unwrap_err(),
        IdTokenError::WrongAudience
    );
}

#[test]
fn j08_time_claims() {
    let now = 1_800_000_000;
    let e = expect(now);
    assert_eq!(
        check_claims(&with(now, json!({"exp": now - LEEWAY_SECONDS - 1})), &e).unwrap_err(),
        IdTokenError::Expired
    );
    assert!(check_claims(&with(now, json!({"exp": now - LEEWAY_SECONDS + 1})), &e).is_ok());
    assert_eq!(
        check_claims(&with(now, json!({"exp": null})), &e).unwrap_err(),
        IdTokenError::MissingExpiry
    );
    assert_eq!(
        check_claims(&with(now, json!({"iat": null})), &e).unwrap_err(),
        IdTokenError::MissingIssuedAt
    );
    assert_eq!(
        check_claims(&with(now, json!({"iat": now + 600})), &e).unwrap_err(),
        IdTokenError::IssuedInFuture
    );
    assert_eq!(
        check_claims(&with(now, json!({"nbf": now + 600})), &e).unwrap_err(),
        IdTokenError::NotYetValid
    );
}

#[test]
fn j09_nonce_must_match() {
    let now = 1_800_000_000;
    for nonce in [json!(null), json!("n-2"), json!(""), json!(1)] {
        assert_eq!(
            check_claims(&with(now, json!({"nonce": nonce})), &expect(now)).unwrap_err(),
            IdTokenError::NonceMismatch
        );
    }
}

#[test]
fn j10_subject_rules() {
    let now = 1_800_000_000;
    for sub in [
        json!(null),
        json!(""),
        json!("x".repeat(256)),
        json!(5),
        json!("a\nb"),
    ] {
        assert_eq!(
            check_claims(&with(now, json!({"sub": sub})), &expect(now)).unwrap_err(),
            IdTokenError::BadSubject
        );
    }
}

#[test]
fn j13_logout_tokens_and_typed_tokens_are_not_id_tokens() {
    let now = 1_800_000_000;
    let events = json!({"events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    assert_eq!(
        check_claims(&with(now, events), &expect(now)).unwrap_err(),
        IdTokenError::LogoutToken
    );
    for typ in ["logout+jwt", "at+jwt", "application/at+jwt"] {
        let t = token(&json!({"alg": "RS256", "typ": typ}), &good_claims(now));
        let jwt = parse_unverified(&t, RS).unwrap();
        assert!(matches!(
            verify(&jwt, &[], None, &expect(now)),
            Err(IdTokenError::WrongType(_))
        ));
    }
}
