use super::*;
use jsonwebtoken::{DecodingKey, Validation};

fn verify(key: &ClientKey, token: &str, fapi2: bool) -> Value {
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(key.public_jwks(fapi2)).unwrap();
    let decoding = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = Validation::new(key.algorithm(fapi2));
    validation.set_audience(&["https://op.example"]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    jsonwebtoken::decode::<Value>(token, &decoding, &validation)
        .unwrap()
        .claims
}

#[test]
fn every_kind_signs_assertions_its_public_jwk_verifies() {
    for kind in [KeyKind::EcP256, KeyKind::Ed25519, KeyKind::Rsa] {
        let key = ClientKey::from_pem(generate_pem(kind).unwrap().as_bytes(), None).unwrap();
        assert_eq!(key.kind(), kind);
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        let a = key
            .assertion("app", "https://op.example", Some(ASSERTION_TYP), false, now)
            .unwrap();
        let b = key
            .assertion("app", "https://op.example", None, false, now)
            .unwrap();
        let (ca, cb) = (verify(&key, &a, false), verify(&key, &b, false));
        assert_eq!(ca["iss"], "app");
        assert_eq!(ca["sub"], "app");
        assert_eq!(
            ca["exp"].as_i64().unwrap() - ca["iat"].as_i64().unwrap(),
            60
        );
        assert_ne!(ca["jti"], cb["jti"], "every assertion has its own jti");
        let header = jsonwebtoken::decode_header(&a).unwrap();
        assert_eq!(header.typ.as_deref(), Some(ASSERTION_TYP));
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert_eq!(jsonwebtoken::decode_header(&b).unwrap().typ, None);
    }
    let rsa = ClientKey::from_pem(generate_pem(KeyKind::Rsa).unwrap().as_bytes(), None).unwrap();
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let ps = rsa
        .assertion("app", "https://op.example", None, true, now)
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&ps).unwrap().alg,
        Algorithm::PS256
    );
    verify(&rsa, &ps, true);
}

#[test]
fn other_files_are_refused_with_a_reason() {
    assert_eq!(
        ClientKey::from_pem(b"hello", None).unwrap_err(),
        ClientKeyError::NotPem
    );
    let cert = to_pem("CERTIFICATE", b"\x30\x03\x02\x01\x00");
    assert!(matches!(
        ClientKey::from_pem(cert.as_bytes(), None),
        Err(ClientKeyError::NotAPrivateKey(_))
    ));
    let p384 = EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING)
        .unwrap()
        .to_pkcs8v1()
        .unwrap();
    assert_eq!(
        ClientKey::from_pem(to_pem("PRIVATE KEY", p384.as_ref()).as_bytes(), None).unwrap_err(),
        ClientKeyError::UnsupportedKey
    );
}

#[test]
fn rsa_keys_under_2048_bits_are_refused() {
    // Made by `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024` for
    // this test only.
    const RSA_1024: &str = "-----BEGIN PRIVATE KEY-----\n\
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAKwSkdwpe8a6Qg9N\n\
32/uW9RVzKmF3dtDrBNThZ3ipeM7zqILzG4iVMDk8t17W+3OR3oq/IaCVEGSGUsI\n\
F5jBSztmaFbz69irX+MM4UynsDAAohaPaeF3cpFRkUklX82sH5ETobtK6JEjxsBR\n\
qFMmAlNkVzfKDdTZBL2YY5+v8d8HAgMBAAECgYAo+N78UnBjmHQkWsGKUHJTM/7g\n\
mryB+jIeA/Q77PzdB5+jHDYYP1p498sQi9AO5uBEKbopeR0A4/3bzNh5igUUgnnO\n\
/T393oVsjm+qnJ1IU40gNSQfN3Dq9Eb0WfIdt/Yfr58d5eN4hSsPaYGiQY94JuJA\n\
hhMZIkEbnl8XeEMSAQJBAOP6BQXG8sJwrAQauYwyLvsV/XmIQSR2SkTxLs63E9hR\n\
XHVRn/LtLu4B78mF7syKqcx580MSp1gjqRdeO6qgPgcCQQDBOVtpWJJuz5GGy5PO\n\
5iTWJVMbBvEX195M2jtdCHAq6yqIlFwHS8+FwAPJwOrZ0xvQwA9i2N8ZIUqVWgKi\n\
iRcBAkBSteXWl7yBgOFXx95jl91lqS/CRQXlValSY/JoexGPHM2fntKaDyVEop09\n\
jwL5YKGEFwaD4iOmnaF+Yejh2atHAkEAlGmb3uSbROXF34VKeKapMJrmpGHGmQvD\n\
wb/1zNWIYk7TEqjxruD5+r+rqTG2sazHNqXuq3vskH7TrLfAQluOAQJAO03Uga3H\n\
hVqVHRFqHledsmIgLIISIkMP6lhnM5thvnWu7b+drGiVoIPlxekXd1aRgggpSxc/\n\
AAwONWN13xqQcA==\n\
-----END PRIVATE KEY-----\n";
    assert_eq!(
        ClientKey::from_pem(RSA_1024.as_bytes(), None).unwrap_err(),
        ClientKeyError::UnsupportedKey
    );
}

/// A self-signed certificate for `key_pem`, made by rcgen (as `keys client-new`).
fn certificate_for(key_pem: &str) -> String {
    let der = pem_block(key_pem.as_bytes(), "PRIVATE KEY").unwrap();
    let pair = rcgen::KeyPair::try_from(der.as_slice()).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&pair)
        .unwrap();
    to_pem("CERTIFICATE", cert.der())
}

#[test]
fn a_certificate_must_hold_the_key() {
    for kind in [KeyKind::EcP256, KeyKind::Ed25519, KeyKind::Rsa] {
        let pem = generate_pem(kind).unwrap();
        let cert = certificate_for(&pem);
        let with = ClientKey::from_pem(pem.as_bytes(), Some(cert.as_bytes())).unwrap();
        let thumbprint = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &pem_block(cert.as_bytes(), "CERTIFICATE").unwrap(),
        );
        assert_eq!(
            with.x5t_s256.as_deref(),
            Some(URL_SAFE_NO_PAD.encode(thumbprint.as_ref()).as_str())
        );
        assert_eq!(
            with.public_jwks(false)["keys"][0]["x5t#S256"],
            json!(with.x5t_s256)
        );
        let assertion = with
            .assertion("app", "https://op.example", None, false, 0)
            .unwrap();
        let header = jsonwebtoken::decode_header(assertion).unwrap();
        assert_eq!(header.x5t_s256, with.x5t_s256);
        // Another key's certificate, or something that is no certificate: refused.
        let other = certificate_for(&generate_pem(kind).unwrap());
        assert_eq!(
            ClientKey::from_pem(pem.as_bytes(), Some(other.as_bytes())).unwrap_err(),
            ClientKeyError::CertificateMismatch
        );
        let mut fake = vec![0x30, 0x82, 0x01, 0x00];
        fake.extend_from_slice(&with.spki);
        assert_eq!(
            ClientKey::from_pem(
                pem.as_bytes(),
                Some(to_pem("CERTIFICATE", &fake).as_bytes())
            )
            .unwrap_err(),
            ClientKeyError::NotACertificate
        );
    }
}

#[test]
fn an_encrypted_key_is_named() {
    let encrypted = to_pem("ENCRYPTED PRIVATE KEY", b"\x30\x03\x02\x01\x00");
    assert_eq!(
        ClientKey::from_pem(encrypted.as_bytes(), None).unwrap_err(),
        ClientKeyError::Encrypted
    );
}
