//! What a provider's metadata must offer for `provider.profile = "fapi2"` (FAPI 2.0
//! Security Profile §5.3; docs/fapi.md). Checked at every discovery: metadata that
//! cannot support the profile counts as no metadata — sign-ins are refused with the
//! reason, `/readyz` fails and `doctor` exits 2 — until the provider offers it.

use super::discovery::Metadata;
use crate::config::FAPI2_ALGORITHMS;

/// Every reason `metadata` cannot support the profile for a client whose assertions
/// are signed with `assertion_alg`; empty when it can.
pub fn problems(metadata: &Metadata, assertion_alg: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let lists = |list: &Option<Vec<String>>, value: &str| {
        list.as_ref().is_some_and(|l| l.iter().any(|v| v == value))
    };
    if metadata.pushed_authorization_request_endpoint.is_none() {
        problems.push("no pushed_authorization_request_endpoint (PAR)".to_owned());
    }
    if !lists(&metadata.dpop_signing_alg_values_supported, "ES256") {
        problems.push("dpop_signing_alg_values_supported does not list ES256 (DPoP)".to_owned());
    }
    if !lists(&metadata.code_challenge_methods_supported, "S256") {
        problems.push("code_challenge_methods_supported does not list S256".to_owned());
    }
    if !metadata.authorization_response_iss_parameter_supported {
        problems.push(
            "authorization_response_iss_parameter_supported is not true (RFC 9207)".to_owned(),
        );
    }
    if !lists(
        &metadata.token_endpoint_auth_methods_supported,
        "private_key_jwt",
    ) {
        problems
            .push("token_endpoint_auth_methods_supported does not list private_key_jwt".to_owned());
    }
    if metadata
        .token_endpoint_auth_signing_alg_values_supported
        .as_ref()
        .is_some_and(|l| !l.iter().any(|a| a == assertion_alg))
    {
        problems.push(format!(
            "token_endpoint_auth_signing_alg_values_supported does not list {assertion_alg} (the client key's algorithm)"
        ));
    }
    if !metadata
        .id_token_signing_alg_values_supported
        .iter()
        .any(|a| FAPI2_ALGORITHMS.iter().any(|f| f.name() == a))
    {
        problems.push(
            "id_token_signing_alg_values_supported lists none of PS256, ES256, EdDSA".to_owned(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(patch: serde_json::Value) -> Metadata {
        let mut m = json!({
            "issuer": "https://op.example",
            "authorization_endpoint": "https://op.example/auth",
            "token_endpoint": "https://op.example/token",
            "jwks_uri": "https://op.example/jwks",
            "pushed_authorization_request_endpoint": "https://op.example/par",
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256", "PS256"],
            "id_token_signing_alg_values_supported": ["PS256"],
        });
        for (k, v) in patch.as_object().unwrap() {
            m[k] = v.clone();
        }
        serde_json::from_value(m).unwrap()
    }

    #[test]
    fn a_fapi2_provider_has_no_problem() {
        assert!(problems(&metadata(json!({})), "ES256").is_empty());
    }

    #[test]
    fn each_missing_capability_is_named() {
        for (patch, named) in [
            (
                json!({"pushed_authorization_request_endpoint": null}),
                "pushed_authorization_request_endpoint",
            ),
            (
                json!({"dpop_signing_alg_values_supported": ["RS256"]}),
                "dpop_signing_alg_values_supported",
            ),
            (
                json!({"code_challenge_methods_supported": ["plain"]}),
                "code_challenge_methods_supported",
            ),
            (
                json!({"authorization_response_iss_parameter_supported": false}),
                "authorization_response_iss_parameter_supported",
            ),
            (
                json!({"token_endpoint_auth_methods_supported": ["client_secret_basic"]}),
                "token_endpoint_auth_methods_supported",
            ),
            (
                json!({"token_endpoint_auth_signing_alg_values_supported": ["RS256"]}),
                "token_endpoint_auth_signing_alg_values_supported",
            ),
            (
                json!({"id_token_signing_alg_values_supported": ["RS256"]}),
                "id_token_signing_alg_values_supported",
            ),
        ] {
            let found = problems(&metadata(patch.clone()), "ES256");
            assert_eq!(found.len(), 1, "{patch}: {found:?}");
            assert!(found[0].contains(named), "{patch}: {found:?}");
        }
    }
}
