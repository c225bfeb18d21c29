//! `jwtSvid.*`: meshca's JWT-SVID signing keys (kept with the CA store: `tresor.store`), the
//! tokens' lifetime and issuer, and the key schedule. The keys are published as a JWKS with
//! OIDC discovery on the admin listener.

use std::time::Duration;

use meshca_provider::duration::serde_go;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::jwt_svid::KeyPolicy;

/// `jwtSvid.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct JwtSvidConfig {
    /// Keep JWT-SVID signing keys and publish them (off by default).
    pub enabled: bool,
    /// How long a JWT-SVID is valid. Go duration, default `5m`.
    #[serde(with = "serde_go")]
    pub ttl: Duration,
    /// The `iss` claim and the OIDC issuer URL verifiers are given (`https://…`, no trailing
    /// slash): discovery is served at `<issuer>/.well-known/openid-configuration` and the
    /// keys at `<issuer>/keys`. Empty: tokens carry no `iss` and no discovery document is
    /// served (the keys are, at `/keys`).
    pub issuer: String,
    /// How long a key is the newest before the next is made. Default `24h`.
    #[serde(with = "serde_go")]
    pub key_rotation_interval: Duration,
    /// How long a new key is published before it signs, so verifiers that cache the keys
    /// have it first. Default `10m`.
    #[serde(with = "serde_go")]
    pub key_activation_delay: Duration,
    /// How often the daemon re-reads the keys from the store (another replica may have
    /// rotated them) and applies the schedule. Default `1m`.
    #[serde(with = "serde_go")]
    pub key_refresh_interval: Duration,
}

impl Default for JwtSvidConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: Duration::from_secs(300),
            issuer: String::new(),
            key_rotation_interval: Duration::from_secs(24 * 3600),
            key_activation_delay: Duration::from_secs(600),
            key_refresh_interval: Duration::from_secs(60),
        }
    }
}

/// Added to the token lifetime for how long a retired key stays published: a token signed
/// just before its key retired, checked by a verifier whose clock runs a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

impl JwtSvidConfig {
    /// The key schedule: a retired key stays published for a token's lifetime, one refresh
    /// (a replica may sign with it until it re-reads the store) and clock skew.
    pub fn key_policy(&self) -> KeyPolicy {
        KeyPolicy {
            rotation_interval: self.key_rotation_interval,
            activation_delay: self.key_activation_delay,
            retention: self.ttl + self.key_refresh_interval + CLOCK_SKEW,
        }
    }

    /// The issuer, when one is configured.
    pub fn issuer(&self) -> Option<&str> {
        (!self.issuer.is_empty()).then_some(self.issuer.as_str())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::InvalidValue { key, reason };
        const MIN_TTL: Duration = Duration::from_secs(30);
        const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            return Err(invalid(
                "jwtSvid.ttl",
                "must be between 30s and 24h (default 5m): JWT-SVIDs are meant to be short-lived"
                    .to_owned(),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.key_refresh_interval)
        {
            return Err(invalid(
                "jwtSvid.keyRefreshInterval",
                "must be between 1s and 1h (default 1m)".to_owned(),
            ));
        }
        if self.key_rotation_interval < Duration::from_secs(3600) {
            return Err(invalid(
                "jwtSvid.keyRotationInterval",
                "must be at least 1h (default 24h)".to_owned(),
            ));
        }
        if self.key_activation_delay < self.key_refresh_interval
            || self.key_activation_delay >= self.key_rotation_interval
        {
            return Err(invalid(
                "jwtSvid.keyActivationDelay",
                "must be at least jwtSvid.keyRefreshInterval (every replica has read a new key \
                 before it signs) and shorter than jwtSvid.keyRotationInterval (default 10m)"
                    .to_owned(),
            ));
        }
        if let Some(issuer) = self.issuer()
            && let Err(reason) = check_issuer(issuer)
        {
            return Err(invalid(
                "jwtSvid.issuer",
                format!(
                    "{:?} {reason}; write the URL verifiers reach meshca at, such as \
                     https://meshca.example.com",
                    quote(issuer)
                ),
            ));
        }
        Ok(())
    }
}

fn check_issuer(issuer: &str) -> Result<(), &'static str> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .ok_or("is not an https:// (or http://) URL")?;
    if issuer.len() > 512 {
        return Err("is longer than 512 bytes");
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host");
    }
    if issuer.ends_with('/') {
        return Err("ends with '/'");
    }
    if issuer.contains(['?', '#']) || issuer.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has a query, a fragment, spaces or control characters");
    }
    Ok(())
}

fn quote(text: &str) -> String {
    text.chars().take(128).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn error(change: impl FnOnce(&mut JwtSvidConfig)) -> String {
        let mut config = JwtSvidConfig::default();
        change(&mut config);
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_the_retention_covers_a_token() {
        let config = JwtSvidConfig::default();
        config.validate().unwrap();
        let policy = config.key_policy();
        assert!(policy.retention > config.ttl);
        assert_eq!(config.issuer(), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(error(|c| c.ttl = Duration::from_secs(1)).contains("jwtSvid.ttl"));
        assert!(
            error(|c| c.key_activation_delay = Duration::from_secs(1))
                .contains("jwtSvid.keyActivationDelay")
        );
        assert!(
            error(|c| c.key_rotation_interval = Duration::from_secs(60))
                .contains("jwtSvid.keyRotationInterval")
        );
        for (issuer, reason) in [
            ("meshca.example", "https://"),
            ("https://", "no host"),
            ("https://meshca.example/", "ends with '/'"),
            ("https://meshca.example/?a", "query"),
        ] {
            let message = error(|c| c.issuer = issuer.to_owned());
            assert!(
                message.contains("jwtSvid.issuer") && message.contains(reason),
                "{message}"
            );
        }
        let config = JwtSvidConfig {
            issuer: "https://meshca.example/oidc".to_owned(),
            ..JwtSvidConfig::default()
        };
        config.validate().unwrap();
    }
}
