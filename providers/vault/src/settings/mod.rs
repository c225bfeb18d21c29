//! The provider's settings, named like meshca's Helm values (`vault.host`, `vault.pkiPath`, …),
//! and the Vault credentials they resolve to.
//!
//! This file is the `vault:` schema and its defaults; `secret.rs` holds [`Secret`] (a redacted
//! string), `credentials.rs` the credentials the settings resolve to ([`VaultAuth`]), and
//! `validate.rs` the checks of the address, paths and names.

mod credentials;
mod secret;
mod validate;

use std::path::PathBuf;
use std::time::Duration;

use meshca_provider::KeyType;
use meshca_provider::duration::serde_go;
use serde::{Deserialize, Serialize};

pub use credentials::{SecretIdSource, SharedTokenSource, TokenSource, VaultAuth};
pub use secret::Secret;

/// Vault's default API port.
pub const DEFAULT_PORT: u16 = 8200;
/// Default mount path of the PKI secrets engine.
pub const DEFAULT_PKI_PATH: &str = "pki";
/// Default PKI role meshca signs with.
pub const DEFAULT_ROLE: &str = "meshca";
/// Default mount path of the AppRole auth method.
pub const DEFAULT_APPROLE_MOUNT: &str = "approle";
/// Default limit on one HTTP call to Vault.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The environment variable a token is taken from when no credential is configured.
pub const TOKEN_ENV: &str = "VAULT_TOKEN";

/// Settings of the Vault / OpenBao provider: the `vault:` section of meshca's configuration.
///
/// The address is either `protocol` + `host` + `port` (the Helm values' shape) or one
/// `address` URL. Exactly one credential — `token`, `tokenFile` or `appRole` — may be set; with
/// none, the token comes from `VAULT_TOKEN`. Empty strings count as unset, so Helm defaults
/// such as `token: ""` mean "not configured".
///
/// ```yaml
/// vault:
///   protocol: https
///   host: vault.vault.svc
///   port: 8200
///   pkiPath: pki
///   role: meshca
///   caFile: /etc/meshca/vault-ca.pem
///   appRole: { roleId: 4f1c…, secretIdFile: /var/run/secrets/meshca/secret-id }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VaultSettings {
    /// `http` or `https`.
    pub protocol: Protocol,
    /// Host name or IP address of Vault.
    pub host: String,
    /// Port of Vault's API.
    pub port: u16,
    /// The whole address instead of protocol/host/port, e.g. `https://vault.vault.svc:8200`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Mount path of the PKI secrets engine.
    pub pki_path: String,
    /// PKI role to sign with.
    pub role: String,
    /// Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// PEM file with the CA certificate(s) that sign Vault's own TLS certificate. Without it
    /// the system's trust store is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A Vault token. Serialised redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding a Vault token (a Vault Agent sink), re-read when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// AppRole login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_role: Option<AppRoleSettings>,
    /// Kubernetes auth method login with the pod's service-account token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuthSettings>,
    /// A token kept in a Kubernetes Secret (`vault.secret.name` / `vault.secret.key`), re-read
    /// when it changes. Read by meshca's Kubernetes integration: see [`TokenSource`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<TokenSecretRef>,
    /// `sign`, the only mode: a CSR over a key meshca or its caller holds. `issue` is refused
    /// when the settings are read (see [`IssueMode`]).
    pub issue_mode: IssueMode,
    /// Longest one HTTP call to Vault may take.
    #[serde(with = "serde_go")]
    pub request_timeout: Duration,
    /// `sign` (Vault signs every leaf, the default) or `upstream` (Vault signs a short-lived
    /// intermediate whose key meshca makes, and meshca signs leaves with it): see [`VaultMode`].
    pub mode: VaultMode,
    /// `vault.upstream.*`: the intermediate of `mode: upstream`.
    pub upstream: UpstreamSettings,
}

impl Default for VaultSettings {
    fn default() -> Self {
        Self {
            protocol: Protocol::Http,
            host: String::new(),
            port: DEFAULT_PORT,
            address: None,
            pki_path: DEFAULT_PKI_PATH.to_owned(),
            role: DEFAULT_ROLE.to_owned(),
            namespace: None,
            ca_file: None,
            token: None,
            token_file: None,
            app_role: None,
            kubernetes: None,
            secret: None,
            issue_mode: IssueMode::Sign,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            mode: VaultMode::Sign,
            upstream: UpstreamSettings::default(),
        }
    }
}

/// What Vault signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultMode {
    /// Vault signs every leaf through `<pkiPath>/sign/<role>`.
    #[default]
    Sign,
    /// Vault signs meshca's intermediate (`<pkiPath>/root/sign-intermediate`, or
    /// `<pkiPath>/issuer/<ref>/sign-intermediate`), renewed before it ends; meshca signs the
    /// leaves itself with it. Vault-rooted trust at local signing speed, and leaves keep
    /// flowing through a Vault outage shorter than the intermediate's remaining life.
    Upstream,
}

/// Default lifetime of the intermediate Vault signs in upstream mode: 72h, the shortest that
/// covers the default 24h leaves at the latest renewal point (60% of its life with the default
/// renewal settings); with 1h leaves 24h is enough.
pub const DEFAULT_INTERMEDIATE_TTL: Duration = Duration::from_secs(72 * 3600);
/// Default subject common name of the intermediate Vault signs in upstream mode.
pub const DEFAULT_INTERMEDIATE_COMMON_NAME: &str = "meshca intermediate";

/// `vault.upstream`: the intermediate meshca holds in `mode: upstream`.
///
/// ```yaml
/// vault:
///   mode: upstream
///   upstream: { intermediateTtl: 72h, issuer: "", commonName: meshca intermediate, keyType: p256 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// The intermediate's lifetime as asked of Vault (cut short where Vault's issuer ends).
    /// Must leave, at the latest renewal point, room for the longest leaf.
    #[serde(with = "serde_go")]
    pub intermediate_ttl: Duration,
    /// The issuer that signs (a name or ID, `issuer/<ref>/sign-intermediate`); empty: the
    /// mount's default issuer (`root/sign-intermediate`).
    pub issuer: String,
    /// The intermediate's subject common name.
    pub common_name: String,
    /// The intermediate's key type.
    pub key_type: KeyType,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            intermediate_ttl: DEFAULT_INTERMEDIATE_TTL,
            issuer: String::new(),
            common_name: DEFAULT_INTERMEDIATE_COMMON_NAME.to_owned(),
            key_type: KeyType::P256,
        }
    }
}

/// `vault.appRole`: log in with a role ID and a secret ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AppRoleSettings {
    /// The role ID (not secret on its own).
    pub role_id: String,
    /// The secret ID. Serialised redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<Secret>,
    /// A file holding the secret ID, read at every login (so it can be rotated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_id_file: Option<PathBuf>,
    /// Mount path of the AppRole auth method.
    pub mount: String,
}

impl Default for AppRoleSettings {
    fn default() -> Self {
        Self {
            role_id: String::new(),
            secret_id: None,
            secret_id_file: None,
            mount: DEFAULT_APPROLE_MOUNT.to_owned(),
        }
    }
}

/// Default mount path of the Kubernetes auth method.
pub const DEFAULT_KUBERNETES_MOUNT: &str = "kubernetes";
/// Where Kubernetes mounts a pod's service-account token.
pub const DEFAULT_SERVICE_ACCOUNT_TOKEN_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `vault.kubernetes`: log in through Vault's Kubernetes auth method, which checks the pod's
/// service-account token with a TokenReview and maps it to a Vault role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubernetesAuthSettings {
    /// The Vault role bound to meshca's service account.
    pub role: String,
    /// Mount path of the Kubernetes auth method.
    pub mount: String,
    /// The service-account token (JWT) file, read at every login: projected tokens rotate.
    pub token_file: PathBuf,
}

impl Default for KubernetesAuthSettings {
    fn default() -> Self {
        Self {
            role: String::new(),
            mount: DEFAULT_KUBERNETES_MOUNT.to_owned(),
            token_file: PathBuf::from(DEFAULT_SERVICE_ACCOUNT_TOKEN_FILE),
        }
    }
}

/// `vault.secret`: the Kubernetes Secret holding a Vault token (FSM's `vault.secret.name` /
/// `vault.secret.key`). The Secret is in meshca's namespace unless `namespace` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TokenSecretRef {
    /// The Secret's name.
    pub name: String,
    /// The key holding the token.
    pub key: String,
    /// The Secret's namespace (empty: meshca's own).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The scheme of Vault's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain HTTP (development only).
    #[default]
    Http,
    /// HTTPS.
    Https,
}

impl Protocol {
    fn scheme(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// Which PKI endpoint issues certificates: `<pkiPath>/sign/<role>`, always.
///
/// meshca's contract is that meshca, or the caller behind a CSR, holds the private key, and the
/// backend certifies that key. `<pkiPath>/issue/<role>` makes Vault generate the key instead,
/// so `issueMode: issue` cannot honour the contract: it is refused when the settings are read
/// ([`ISSUE_MODE_ISSUE_REFUSED`] says what to use instead), not accepted and then failing
/// every issuance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueMode {
    /// `<pkiPath>/sign/<role>` with a CSR over a key meshca or its caller holds. The private
    /// key never leaves its holder.
    #[default]
    Sign,
}

/// Why `vault.issueMode: issue` is refused, and what to use instead.
pub const ISSUE_MODE_ISSUE_REFUSED: &str = "vault.issueMode: issue is not supported: it makes \
    Vault generate the private key (pki/issue), but meshca certifies only keys that meshca or \
    the caller holds; use vault.issueMode: sign (the default; or remove the setting), with a \
    Vault policy granting update on <pkiPath>/sign/<role>";

impl<'de> Deserialize<'de> for IssueMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "sign" => Ok(IssueMode::Sign),
            "issue" => Err(D::Error::custom(ISSUE_MODE_ISSUE_REFUSED)),
            other => Err(D::Error::custom(format!(
                "unknown vault.issueMode {other:?}: the only mode is sign (the default)"
            ))),
        }
    }
}

/// Why the settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A setting has a value that cannot work.
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        /// The setting, e.g. `vault.port`.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// Neither a host nor an address.
    #[error(
        "no Vault address: set vault.host (with vault.port and vault.protocol) or vault.address, \
         e.g. https://vault.vault.svc:8200"
    )]
    MissingAddress,
    /// Both `address` and `host`.
    #[error(
        "both vault.address ({address}) and vault.host ({host}) are set: keep only one of them"
    )]
    ConflictingAddress {
        /// `vault.address`.
        address: String,
        /// `vault.host`.
        host: String,
    },
    /// No credential at all.
    #[error(
        "no Vault credentials: set vault.token (or the {TOKEN_ENV} environment variable), \
         vault.tokenFile, vault.appRole, vault.kubernetes.role or vault.secret.name"
    )]
    MissingCredentials,
    /// `vault.secret` is set but nothing reads Kubernetes Secrets for the provider.
    #[error(
        "vault.secret names a Kubernetes Secret, which only meshca's Kubernetes integration can \
         read: run meshca with Kubernetes credentials (in a pod, or with KUBECONFIG), or use \
         vault.token / vault.tokenFile"
    )]
    NeedsTokenSource,
    /// More than one credential.
    #[error("set only one Vault credential, but {} are set", .keys.join(", "))]
    ConflictingCredentials {
        /// The settings that are set.
        keys: Vec<&'static str>,
    },
}

impl TokenSecretRef {
    /// Whether `vault.secret` is configured.
    pub fn is_set(&self) -> bool {
        !self.name.trim().is_empty() || !self.key.trim().is_empty()
    }
}

/// Settings the unit tests of this module share.
#[cfg(test)]
mod testing {
    use super::VaultSettings;

    pub(super) fn with_host(host: &str) -> VaultSettings {
        VaultSettings {
            host: host.to_owned(),
            token: Some("s.test".into()),
            ..VaultSettings::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn helm_shaped_yaml_round_trips() {
        let yaml = "protocol: https\nhost: vault.vault.svc\nport: 8201\npkiPath: pki_int/\n\
                    role: mesh\nnamespace: team-a\ncaFile: /etc/ca.pem\ntoken: s.abc\n\
                    issueMode: sign\nrequestTimeout: 10s\n";
        let settings: VaultSettings = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(settings.address().unwrap(), "https://vault.vault.svc:8201");
        assert_eq!(settings.pki_path().unwrap(), "pki_int");
        assert_eq!(settings.role_name().unwrap(), "mesh");
        assert_eq!(settings.namespace().unwrap(), Some("team-a"));
        assert_eq!(settings.request_timeout, Duration::from_secs(10));
        assert_eq!(
            settings.auth_with_env(None).unwrap(),
            VaultAuth::Token(Secret::new("s.abc"))
        );
        let dumped = serde_json::to_string(&settings).unwrap();
        assert!(dumped.contains("\"pkiPath\":\"pki_int/\""), "{dumped}");
        assert!(!dumped.contains("s.abc"), "the token leaked: {dumped}");
        assert!(!format!("{settings:?}").contains("s.abc"));
    }

    #[test]
    fn issue_mode_issue_is_refused_naming_what_to_use_instead() {
        let settings: VaultSettings = serde_yaml::from_str("issueMode: sign\n").unwrap();
        assert_eq!(settings.issue_mode, IssueMode::Sign);
        let err = serde_yaml::from_str::<VaultSettings>("issueMode: issue\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(ISSUE_MODE_ISSUE_REFUSED), "{err}");
        assert!(err.contains("use vault.issueMode: sign"), "{err}");
        let err = serde_yaml::from_str::<VaultSettings>("issueMode: signn\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"signn\"") && err.contains("only mode is sign"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<VaultSettings>(r#"{"pki_path":"pki"}"#).unwrap_err();
        assert!(err.to_string().contains("pki_path"), "{err}");
    }

    #[test]
    fn defaults_follow_the_helm_values() {
        let settings = VaultSettings::default();
        assert_eq!(settings.port, 8200);
        assert_eq!(settings.pki_path().unwrap(), "pki");
        assert_eq!(settings.role_name().unwrap(), "meshca");
        assert_eq!(settings.issue_mode, IssueMode::Sign);
        assert_eq!(settings.address(), Err(SettingsError::MissingAddress));
    }
}
