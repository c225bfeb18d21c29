//! The public keys as JSON Web Key Sets (RFC 7517): the SPIFFE bundle form (`use:
//! "jwt-svid"`, what the Workload API's FetchJWTBundles sends) and the OIDC form (`use: "sig"`,
//! what OIDC verifiers such as Vault/OpenBao's JWT auth method read from a `jwks_uri`), and the
//! OIDC discovery document that points at it.

use serde_json::{Value, json};

use super::keys::KeySet;

/// What the keys are published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// A SPIFFE trust bundle's JWT authorities.
    JwtSvid,
    /// An OIDC provider's signing keys.
    Signature,
}

/// The key set as a JWKS.
pub fn jwks(keys: &KeySet, usage: KeyUse) -> Value {
    let keys: Vec<Value> = keys
        .keys()
        .iter()
        .map(|key| {
            let (x, y) = key.coordinates();
            let mut jwk = json!({
                "kty": "EC",
                "crv": "P-256",
                "x": x,
                "y": y,
                "kid": key.kid(),
            });
            match usage {
                KeyUse::JwtSvid => jwk["use"] = json!("jwt-svid"),
                KeyUse::Signature => {
                    jwk["use"] = json!("sig");
                    jwk["alg"] = json!("ES256");
                }
            }
            jwk
        })
        .collect();
    json!({ "keys": keys })
}

/// The path the JWKS is served at, below the issuer URL.
pub const KEYS_PATH: &str = "/keys";
/// The OIDC discovery document's path.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// The OIDC discovery document for `issuer` (an `https://` or `http://` URL without a trailing
/// slash).
pub fn discovery(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{KEYS_PATH}"),
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::keys::KeyPolicy;
    use super::*;

    #[test]
    fn each_key_is_a_p256_jwk_without_private_parts() {
        let policy = KeyPolicy {
            rotation_interval: Duration::from_secs(3600),
            activation_delay: Duration::ZERO,
            retention: Duration::from_secs(600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let keys = KeySet::default().plan(now, &policy).unwrap().unwrap();
        let set = jwks(&keys, KeyUse::Signature);
        let jwk = &set["keys"][0];
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["kid"], keys.keys()[0].kid());
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
        assert!(jwk.get("d").is_none());
        assert_eq!(jwks(&keys, KeyUse::JwtSvid)["keys"][0]["use"], "jwt-svid");
        let doc = discovery("https://meshca.example");
        assert_eq!(doc["jwks_uri"], "https://meshca.example/keys");
    }
}
