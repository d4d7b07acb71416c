//! A certified relying-party library drives the dev provider: npm `openid-client`
//! (panva) runs discovery, code + PKCE through the real form, token, userinfo, refresh
//! with rotation, reuse detection, revocation and end_session (`tests/interop/rp.mjs`).
//! Skips with one line without Node; `.ci/run` requires it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::oidc_provider::{REQUIRE_VAR, interop_dir, unavailable};
use support::{REDIRECT, start};

#[tokio::test]
async fn openid_client_drives_the_whole_flow() {
    if let Some(reason) = unavailable() {
        if std::env::var_os(REQUIRE_VAR).is_some() {
            panic!("interop suite required ({REQUIRE_VAR}) but {reason}");
        }
        eprintln!("skipping openid-client test: {reason}");
        return;
    }
    let p = start().await;
    let out = tokio::process::Command::new("node")
        .arg("rp.mjs")
        .current_dir(interop_dir())
        .env("ISSUER", &p.base)
        .env("CLIENT_ID", "app")
        .env("REDIRECT_URI", REDIRECT)
        .env("POST_LOGOUT_REDIRECT_URI", "http://127.0.0.1:8080/")
        .env("USERNAME", "alice")
        .env("PASSWORD", "alice")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rp.mjs failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["issuer"], p.base);
    assert_eq!(v["form_status"], 303);
    assert_eq!(v["callback_has_iss"], true);
    assert_eq!(v["sub"], "alice");
    assert_eq!(v["email"], "alice@example.com");
    assert_eq!(v["userinfo_name"], "Alice Example");
    assert_eq!(v["rotated"], true);
    assert_eq!(v["rotated_again"], true);
    assert_eq!(
        v["reuse_error"], "invalid_grant",
        "a rotated-away token is refused"
    );
    assert_eq!(
        v["family_error"], "invalid_grant",
        "and its whole family is revoked"
    );
    assert_eq!(
        v["sso_status"], 303,
        "a live provider session signs in without the form"
    );
    assert_eq!(
        v["revoked_error"], "invalid_grant",
        "a revoked refresh token is refused"
    );
    assert_eq!(v["end_session_status"], 303);
    assert_eq!(
        v["end_session_location"],
        "http://127.0.0.1:8080/?state=bye"
    );
    assert_eq!(
        v["after_logout_status"], 200,
        "after end_session the form is shown again"
    );
}
