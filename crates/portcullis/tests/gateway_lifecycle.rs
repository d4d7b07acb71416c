//! Start-up: the generated key ring beside the SQLite file, private and kept across
//! restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_test_support as support;

use std::sync::Arc;

use portcullis::{Config, Gateway};
use support::gateway::callback_query;
use support::{Browser, HostileProvider};

async fn serve(gateway: Arc<Gateway>, listener: tokio::net::TcpListener) {
    let app = portcullis::http::router(gateway).unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                std::net::SocketAddr,
            >(app),
        )
        .await;
    });
}

#[tokio::test]
async fn generated_key_ring_is_private_and_survives_restarts() {
    let p = HostileProvider::start().await;
    let dir = std::env::temp_dir().join(format!(
        "portcullis-start-{}",
        portcullis::random::random_token()
    ));
    let db = dir.join("data").join("portcullis.db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let env = vec![
        ("PORTCULLIS_ISSUER".to_owned(), p.issuer.clone()),
        ("PORTCULLIS_CLIENT_ID".to_owned(), "app".to_owned()),
        ("PORTCULLIS_LISTEN".to_owned(), addr.to_string()),
        (
            "PORTCULLIS_STORE".to_owned(),
            format!("sqlite:{}", db.display()),
        ),
    ];
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let first = Arc::new(
        Gateway::start(Config::load_from(None, env.clone()).unwrap())
            .await
            .unwrap(),
    );
    let secret_file = portcullis::gateway::secret_file_for(&db);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&secret_file)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    serve(first.clone(), listener).await;

    // Sign in against the first instance.
    let browser = Browser::new();
    let resp = browser.navigate(&format!("http://{addr}/auth/login")).await;
    let url = url::Url::parse(&resp.location().unwrap()).unwrap();
    let q = |n: &str| {
        url.query_pairs()
            .find(|(k, _)| k == n)
            .unwrap()
            .1
            .into_owned()
    };
    let token = p
        .keys
        .sign_rs256(&p.keys.rs256_header(), &p.claims(&q("nonce")));
    let code = p.issue_code(
        &q("code_challenge"),
        HostileProvider::token_response(&token),
    );
    let resp = browser
        .navigate(&format!(
            "http://{addr}/auth/callback?{}",
            callback_query(&code, &q("state"), Some(&p.issuer))
        ))
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let cookie = browser.cookie("portcullis").unwrap();

    // A second instance on the same file reuses the key ring: the session and its
    // sealed tokens are still usable.
    let second = std::sync::Arc::new(
        Gateway::start(Config::load_from(None, env).unwrap())
            .await
            .unwrap(),
    );
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);
    let active = second
        .sessions()
        .authenticate(&cookie)
        .await
        .unwrap()
        .expect("session survives");
    assert!(
        second
            .sessions()
            .session_tokens(&active.record)
            .unwrap()
            .refresh_token
            .is_some()
    );
    drop(first);
    std::fs::remove_dir_all(dir).unwrap();
}
