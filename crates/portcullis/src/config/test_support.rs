//! Helpers shared by the configuration tests.

/// Environment pairs as `Config::load_from` takes them.
pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The smallest valid environment: an issuer and a client id.
pub(crate) fn minimal() -> Vec<(String, String)> {
    env(&[
        ("PORTCULLIS_ISSUER", "https://id.example.com"),
        ("PORTCULLIS_CLIENT_ID", "app"),
    ])
}

/// A file of the repository, e.g. `docs/configuration.md`.
pub(super) fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}
