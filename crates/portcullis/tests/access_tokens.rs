//! JWT access tokens as a resource server checks them (RFC 9068; case G13), against the
//! scriptable provider's real keys: the engine's validation of a machine client's
//! token, before any door uses it. A valid token; `alg: none`; HS256 keyed with the
//! provider's public key; an unknown key; another audience; an ID token offered as an
//! access token; a client whose id equals a user's `sub`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use portcullis::provider::access_token::{Principal, TokenRefused, TokenType};
use serde_json::{Value, json};
use support::keys::{b64, sign_hs256};
use support::{HostileProvider, TestGateway};

const API: &str = "https://api.example.com";

struct Setup {
    p: HostileProvider,
    gw: TestGateway,
}

async fn setup() -> Setup {
    let p = HostileProvider::start().await;
    let gw = TestGateway::start(&p.issuer).await;
    Setup { p, gw }
}

impl Setup {
    fn claims(&self, patch: Value) -> Value {
        let now = support::now();
        let mut c = json!({
            "iss": self.p.issuer, "aud": API, "exp": now + 300, "iat": now,
            "client_id": "cli", "sub": "alice", "scope": "orders:read",
        });
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn at_header(&self) -> Value {
        let mut h = self.p.keys.rs256_header();
        h["typ"] = json!("at+jwt");
        h
    }

    async fn validate(
        &self,
        token: &str,
        types: &[TokenType],
    ) -> Result<portcullis::provider::access_token::AccessTokenClaims, TokenRefused> {
        let provider = self.gw.gateway.providers().get("default").unwrap();
        let now = portcullis::clock::Clock::now(&self.gw.clock);
        provider
            .validate_access_token(token, &[API.to_owned()], types, now)
            .await
    }
}

#[tokio::test]
async fn g13_a_valid_access_token_passes_and_forgeries_do_not() {
    let s = setup().await;
    let now = portcullis::clock::Clock::now(&s.gw.clock);
    let mut c = s.claims(json!({}));
    c["exp"] = json!(now + 300);
    c["iat"] = json!(now);
    let good = s.p.keys.sign_rs256(&s.at_header(), &c);
    let t = s.validate(&good, &[TokenType::AtJwt]).await.unwrap();
    assert_eq!(
        (t.principal, t.subject.as_str()),
        (Principal::User, "alice")
    );
    assert_eq!(t.scopes, ["orders:read"]);

    // `alg: none`, unsigned.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
        b64(c.to_string())
    );
    assert!(matches!(
        s.validate(&none, &[TokenType::AtJwt]).await,
        Err(TokenRefused::Jwt(_))
    ));
    // HS256 keyed with the provider's public key (algorithm confusion).
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": s.p.keys.rsa_kid});
    let confused = sign_hs256(&s.p.keys.rsa_public_der(), &header, &c);
    assert!(matches!(
        s.validate(&confused, &[TokenType::AtJwt]).await,
        Err(TokenRefused::Jwt(_))
    ));
    // A key the provider does not publish.
    let stranger = support::keys::TestKeys::generate("stranger");
    let mut h = stranger.rs256_header();
    h["typ"] = json!("at+jwt");
    let unknown = stranger.sign_rs256(&h, &c);
    assert!(matches!(
        s.validate(&unknown, &[TokenType::AtJwt]).await,
        Err(TokenRefused::Jwt(_))
    ));
    // Another audience.
    let mut other = c.clone();
    other["aud"] = json!("https://other.example.com");
    let other = s.p.keys.sign_rs256(&s.at_header(), &other);
    assert_eq!(
        s.validate(&other, &[TokenType::AtJwt])
            .await
            .unwrap_err()
            .code(),
        "at_wrong_audience"
    );
    // The gateway's own ID token, even where plain JWTs are accepted.
    let mut id = c.clone();
    id["aud"] = json!(["app", API]);
    id["nonce"] = json!("n");
    let id = s.p.keys.sign_rs256(&s.p.keys.rs256_header(), &id);
    for types in [
        &[TokenType::AtJwt][..],
        &[TokenType::AtJwt, TokenType::Jwt][..],
    ] {
        assert!(s.validate(&id, types).await.is_err(), "{types:?}");
    }
    // A client whose id is a user's `sub`: a client, never that user.
    let mut client = c.clone();
    client["client_id"] = json!("alice");
    let client = s.p.keys.sign_rs256(&s.at_header(), &client);
    let t = s.validate(&client, &[TokenType::AtJwt]).await.unwrap();
    assert_eq!(
        (t.principal, t.subject.as_str()),
        (Principal::Client, "alice")
    );
}
