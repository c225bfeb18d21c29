//! The provider's settings, named like meshca's Helm values (`vault.host`, `vault.pkiPath`, …),
//! and the Vault credentials they resolve to.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use meshca_provider::duration::serde_go;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

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

/// Reads a Vault token kept outside the provider, such as a Kubernetes Secret. The provider
/// reads it at start, every few seconds to pick up a change, and whenever Vault refuses the
/// token in use.
///
/// Obligations: never log the token or put it into errors.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + std::fmt::Debug + 'static {
    /// The current token.
    async fn read(&self) -> Result<Secret, String>;
    /// Where the token comes from, for messages: `Secret meshca-system/vault-token key token`.
    fn describe(&self) -> String;
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

/// A secret string (token, secret ID): redacted in `Debug` and when serialised, wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl Serialize for Secret {
    /// Serialises as `<redacted>`: a dumped configuration never carries the secret.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// How meshca authenticates to Vault, resolved from [`VaultSettings`] by
/// [`VaultSettings::auth`].
///
/// Adding a method (the planned ones: a token kept in a Kubernetes Secret, `vault.secret.name`
/// / `vault.secret.key`, re-read like [`TokenFile`](Self::TokenFile); and the Kubernetes auth
/// method, role + service-account JWT, logged in like [`AppRole`](Self::AppRole)) means a new
/// variant here and its `login` arm in the provider's credential manager; issuance, renewal
/// and re-login on refusal are shared.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VaultAuth {
    /// A fixed token (`vault.token`, a flag, or `VAULT_TOKEN`). Renewed while renewable; when it
    /// is revoked or expires, issuance fails with `Unauthorized` until meshca gets a new one.
    Token(Secret),
    /// A token read from a file, e.g. a Vault Agent sink. Re-read when it changes and whenever
    /// Vault refuses the token in use.
    TokenFile(PathBuf),
    /// AppRole login; logged in again whenever the token cannot be renewed or is refused.
    AppRole {
        /// The role ID.
        role_id: String,
        /// Where the secret ID comes from.
        secret_id: SecretIdSource,
        /// Mount path of the AppRole auth method.
        mount: String,
    },
    /// Kubernetes auth method login; logged in again like AppRole.
    Kubernetes {
        /// The Vault role.
        role: String,
        /// Mount path of the auth method.
        mount: String,
        /// The service-account token file, read at every login.
        jwt_file: PathBuf,
    },
    /// A token read from a [`TokenSource`] (a Kubernetes Secret), re-read like a token file.
    Source(SharedTokenSource),
}

/// A [`TokenSource`] compared by identity, so [`VaultAuth`] stays comparable.
#[derive(Debug, Clone)]
pub struct SharedTokenSource(pub std::sync::Arc<dyn TokenSource>);

impl PartialEq for SharedTokenSource {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedTokenSource {}

impl VaultAuth {
    /// The settings to check when Vault refuses these credentials, for error messages.
    pub fn settings_hint(&self) -> String {
        match self {
            VaultAuth::Token(_) => format!("vault.token / {TOKEN_ENV}"),
            VaultAuth::TokenFile(path) => format!("vault.tokenFile ({})", path.display()),
            VaultAuth::AppRole { mount, .. } => {
                format!("vault.appRole.roleId / secretId / secretIdFile (auth/{mount})")
            }
            VaultAuth::Kubernetes {
                role,
                mount,
                jwt_file,
            } => format!(
                "vault.kubernetes.role ({role}, auth/{mount}) / vault.kubernetes.tokenFile ({})",
                jwt_file.display()
            ),
            VaultAuth::Source(source) => format!("vault.secret ({})", source.0.describe()),
        }
    }

    /// Short name of the method for logs: `token`, `token-file`, `approle`, `kubernetes`,
    /// `token-source`.
    pub fn kind(&self) -> &'static str {
        match self {
            VaultAuth::Token(_) => "token",
            VaultAuth::TokenFile(_) => "token-file",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
            VaultAuth::Source(_) => "token-source",
        }
    }
}

/// Where an AppRole secret ID comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretIdSource {
    /// Given in configuration.
    Value(Secret),
    /// Read from a file at every login.
    File(PathBuf),
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

impl VaultSettings {
    /// Checks every setting, including that credentials resolve (which may read `VAULT_TOKEN`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.address()?;
        self.pki_path()?;
        self.role_name()?;
        self.namespace()?;
        match self.auth() {
            // The reader of a Kubernetes Secret is supplied when connecting.
            Err(SettingsError::NeedsTokenSource) => {}
            other => {
                other?;
            }
        }
        if self.request_timeout.is_zero() {
            return Err(SettingsError::Invalid {
                key: "vault.requestTimeout",
                value: "0s".to_owned(),
                reason: "must be more than zero, e.g. 30s".to_owned(),
            });
        }
        Ok(())
    }

    /// The normalised address, e.g. `https://vault.vault.svc:8200` (no trailing slash).
    pub fn address(&self) -> Result<String, SettingsError> {
        let host = self.host.trim();
        let address = self
            .address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty());
        match (address, host.is_empty()) {
            (Some(address), true) => parse_address(address),
            (Some(address), false) => Err(SettingsError::ConflictingAddress {
                address: address.to_owned(),
                host: host.to_owned(),
            }),
            (None, true) => Err(SettingsError::MissingAddress),
            (None, false) => {
                if host.contains("://") || host.contains('/') {
                    return Err(SettingsError::Invalid {
                        key: "vault.host",
                        value: host.to_owned(),
                        reason: "a host name or IP address only: put the scheme in \
                                 vault.protocol and the port in vault.port, or use vault.address"
                            .to_owned(),
                    });
                }
                if self.port == 0 {
                    return Err(SettingsError::Invalid {
                        key: "vault.port",
                        value: "0".to_owned(),
                        reason: format!("must be a TCP port, Vault's default is {DEFAULT_PORT}"),
                    });
                }
                let bracketed = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                };
                let url = format!("{}://{bracketed}:{}", self.protocol.scheme(), self.port);
                parse_address(&url).map_err(|e| match e {
                    SettingsError::Invalid { reason, .. } => SettingsError::Invalid {
                        key: "vault.host",
                        value: host.to_owned(),
                        reason,
                    },
                    other => other,
                })
            }
        }
    }

    /// The PKI mount path without surrounding slashes.
    pub fn pki_path(&self) -> Result<&str, SettingsError> {
        let path = self.pki_path.trim().trim_matches('/');
        let valid = !path.is_empty()
            && !path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if valid {
            Ok(path)
        } else {
            Err(SettingsError::Invalid {
                key: "vault.pkiPath",
                value: self.pki_path.clone(),
                reason: format!(
                    "the mount path of the PKI secrets engine, e.g. {DEFAULT_PKI_PATH} or \
                     pki_int (letters, digits, - _ . /)"
                ),
            })
        }
    }

    /// The PKI role name.
    pub fn role_name(&self) -> Result<&str, SettingsError> {
        let role = self.role.trim();
        if !role.is_empty()
            && role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            Ok(role)
        } else {
            Err(SettingsError::Invalid {
                key: "vault.role",
                value: self.role.clone(),
                reason: format!(
                    "the name of a role under the PKI mount, e.g. {DEFAULT_ROLE} (letters, \
                     digits, - _ .)"
                ),
            })
        }
    }

    /// The namespace, if one is set.
    pub fn namespace(&self) -> Result<Option<&str>, SettingsError> {
        let Some(namespace) = self
            .namespace
            .as_deref()
            .map(|n| n.trim().trim_matches('/'))
        else {
            return Ok(None);
        };
        if namespace.is_empty() {
            return Ok(None);
        }
        if namespace
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(SettingsError::Invalid {
                key: "vault.namespace",
                value: namespace.to_owned(),
                reason: "a namespace path such as team-a or team-a/meshca".to_owned(),
            });
        }
        Ok(Some(namespace))
    }

    /// The credentials to use, falling back to the `VAULT_TOKEN` environment variable.
    pub fn auth(&self) -> Result<VaultAuth, SettingsError> {
        self.auth_with_env(std::env::var(TOKEN_ENV).ok())
    }

    /// The credentials to use, with `env_token` standing for `VAULT_TOKEN`.
    pub fn auth_with_env(&self, env_token: Option<String>) -> Result<VaultAuth, SettingsError> {
        let token = self.token.as_ref().filter(|t| !t.is_blank());
        let token_file = self
            .token_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        let app_role = self
            .app_role
            .as_ref()
            .filter(|a| **a != AppRoleSettings::default());
        let kubernetes = self
            .kubernetes
            .as_ref()
            .filter(|k| **k != KubernetesAuthSettings::default());
        let secret = self
            .secret
            .as_ref()
            .filter(|s| **s != TokenSecretRef::default());
        let set: Vec<&'static str> = [
            token.map(|_| "vault.token"),
            token_file.map(|_| "vault.tokenFile"),
            app_role.map(|_| "vault.appRole"),
            kubernetes.map(|_| "vault.kubernetes"),
            secret.map(|_| "vault.secret"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if set.len() > 1 {
            return Err(SettingsError::ConflictingCredentials { keys: set });
        }
        if let Some(token) = token {
            return Ok(VaultAuth::Token(Secret::new(token.expose().trim())));
        }
        if let Some(path) = token_file {
            return Ok(VaultAuth::TokenFile(path.clone()));
        }
        if let Some(app_role) = app_role {
            return app_role.resolve();
        }
        if let Some(kubernetes) = kubernetes {
            return kubernetes.resolve();
        }
        if let Some(secret) = secret {
            for (key, value) in [
                ("vault.secret.name", &secret.name),
                ("vault.secret.key", &secret.key),
            ] {
                if value.trim().is_empty() {
                    return Err(SettingsError::Invalid {
                        key,
                        value: String::new(),
                        reason: "set both vault.secret.name and vault.secret.key (the Secret \
                                 and the key in it that holds the Vault token)"
                            .to_owned(),
                    });
                }
            }
            return Err(SettingsError::NeedsTokenSource);
        }
        match env_token.map(|t| t.trim().to_owned()) {
            Some(token) if !token.is_empty() => Ok(VaultAuth::Token(Secret::new(token))),
            _ => Err(SettingsError::MissingCredentials),
        }
    }
}

impl AppRoleSettings {
    fn resolve(&self) -> Result<VaultAuth, SettingsError> {
        let role_id = self.role_id.trim();
        if role_id.is_empty() {
            return Err(SettingsError::Invalid {
                key: "vault.appRole.roleId",
                value: String::new(),
                reason: "set the role ID (bao read auth/approle/role/<role>/role-id)".to_owned(),
            });
        }
        let mount = self.mount.trim().trim_matches('/');
        if mount.is_empty() || mount.chars().any(|c| c.is_whitespace()) {
            return Err(SettingsError::Invalid {
                key: "vault.appRole.mount",
                value: self.mount.clone(),
                reason: format!("the AppRole auth mount path, usually {DEFAULT_APPROLE_MOUNT}"),
            });
        }
        let secret = self.secret_id.as_ref().filter(|s| !s.is_blank());
        let file = self
            .secret_id_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        let secret_id = match (secret, file) {
            (Some(secret), None) => SecretIdSource::Value(Secret::new(secret.expose().trim())),
            (None, Some(path)) => SecretIdSource::File(path.clone()),
            (Some(_), Some(_)) => {
                return Err(SettingsError::ConflictingCredentials {
                    keys: vec!["vault.appRole.secretId", "vault.appRole.secretIdFile"],
                });
            }
            (None, None) => {
                return Err(SettingsError::Invalid {
                    key: "vault.appRole.secretId",
                    value: String::new(),
                    reason: "set vault.appRole.secretId or vault.appRole.secretIdFile".to_owned(),
                });
            }
        };
        Ok(VaultAuth::AppRole {
            role_id: role_id.to_owned(),
            secret_id,
            mount: mount.to_owned(),
        })
    }
}

impl KubernetesAuthSettings {
    fn resolve(&self) -> Result<VaultAuth, SettingsError> {
        let role = self.role.trim();
        if role.is_empty() {
            return Err(SettingsError::Invalid {
                key: "vault.kubernetes.role",
                value: String::new(),
                reason: "set the Vault role bound to meshca's service account \
                         (bao write auth/kubernetes/role/<role> bound_service_account_names=…)"
                    .to_owned(),
            });
        }
        let mount = self.mount.trim().trim_matches('/');
        if mount.is_empty() || mount.chars().any(|c| c.is_whitespace()) {
            return Err(SettingsError::Invalid {
                key: "vault.kubernetes.mount",
                value: self.mount.clone(),
                reason: format!(
                    "the Kubernetes auth mount path, usually {DEFAULT_KUBERNETES_MOUNT}"
                ),
            });
        }
        if self.token_file.as_os_str().is_empty() {
            return Err(SettingsError::Invalid {
                key: "vault.kubernetes.tokenFile",
                value: String::new(),
                reason: format!(
                    "the service-account token file, usually {DEFAULT_SERVICE_ACCOUNT_TOKEN_FILE}"
                ),
            });
        }
        Ok(VaultAuth::Kubernetes {
            role: role.to_owned(),
            mount: mount.to_owned(),
            jwt_file: self.token_file.clone(),
        })
    }
}

impl TokenSecretRef {
    /// Whether `vault.secret` is configured.
    pub fn is_set(&self) -> bool {
        !self.name.trim().is_empty() || !self.key.trim().is_empty()
    }
}

fn parse_address(text: &str) -> Result<String, SettingsError> {
    let invalid = |reason: String| SettingsError::Invalid {
        key: "vault.address",
        value: text.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(text).map_err(|e| {
        invalid(format!(
            "{e}: write a URL such as https://vault.vault.svc:8200"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host".to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(
            "only scheme, host, port and an optional path prefix are allowed".to_owned(),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> VaultSettings {
        VaultSettings {
            host: host.to_owned(),
            token: Some("s.test".into()),
            ..VaultSettings::default()
        }
    }

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

    #[test]
    fn addresses_are_normalised_or_refused_with_the_setting_named() {
        assert_eq!(
            with_host("127.0.0.1").address().unwrap(),
            "http://127.0.0.1:8200"
        );
        assert_eq!(with_host("::1").address().unwrap(), "http://[::1]:8200");
        let explicit = VaultSettings {
            address: Some("https://vault.example:443/".into()),
            ..VaultSettings::default()
        };
        assert_eq!(explicit.address().unwrap(), "https://vault.example");
        let err = with_host("https://vault:8200").address().unwrap_err();
        assert!(err.to_string().contains("vault.host"), "{err}");
        let err = VaultSettings {
            port: 0,
            ..with_host("vault")
        }
        .address()
        .unwrap_err();
        assert!(err.to_string().contains("vault.port"), "{err}");
        let both = VaultSettings {
            address: Some("http://a:1".into()),
            ..with_host("b")
        };
        assert!(matches!(
            both.address(),
            Err(SettingsError::ConflictingAddress { .. })
        ));
        let ftp = VaultSettings {
            address: Some("ftp://vault".into()),
            ..VaultSettings::default()
        };
        assert!(
            ftp.address()
                .unwrap_err()
                .to_string()
                .contains("http or https")
        );
    }

    #[test]
    fn credentials_resolve_to_exactly_one_method() {
        let none = VaultSettings {
            token: Some("".into()),
            ..with_host("vault")
        };
        assert_eq!(
            none.auth_with_env(None),
            Err(SettingsError::MissingCredentials)
        );
        assert!(
            none.auth_with_env(None)
                .unwrap_err()
                .to_string()
                .contains("VAULT_TOKEN")
        );
        assert_eq!(
            none.auth_with_env(Some(" s.env \n".into())).unwrap(),
            VaultAuth::Token(Secret::new("s.env"))
        );
        let file = VaultSettings {
            token: None,
            token_file: Some("/run/vault/token".into()),
            ..with_host("vault")
        };
        assert_eq!(
            file.auth_with_env(Some("ignored".into())).unwrap(),
            VaultAuth::TokenFile("/run/vault/token".into())
        );
        let two = VaultSettings {
            token_file: Some("/t".into()),
            ..with_host("vault")
        };
        let err = two.validate().unwrap_err();
        assert!(
            err.to_string().contains("vault.token, vault.tokenFile"),
            "{err}"
        );
    }

    #[test]
    fn app_role_needs_a_role_id_and_one_secret_id() {
        let app_role = |role_id: &str, secret: Option<&str>, file: Option<&str>| VaultSettings {
            token: None,
            app_role: Some(AppRoleSettings {
                role_id: role_id.to_owned(),
                secret_id: secret.map(Secret::from),
                secret_id_file: file.map(PathBuf::from),
                ..AppRoleSettings::default()
            }),
            ..with_host("vault")
        };
        assert_eq!(
            app_role("r", Some("s"), None).auth_with_env(None).unwrap(),
            VaultAuth::AppRole {
                role_id: "r".into(),
                secret_id: SecretIdSource::Value("s".into()),
                mount: "approle".into(),
            }
        );
        assert!(matches!(
            app_role("r", None, Some("/f")).auth_with_env(None).unwrap(),
            VaultAuth::AppRole {
                secret_id: SecretIdSource::File(_),
                ..
            }
        ));
        let err = app_role("", Some("s"), None)
            .auth_with_env(None)
            .unwrap_err();
        assert!(err.to_string().contains("vault.appRole.roleId"), "{err}");
        let err = app_role("r", None, None).auth_with_env(None).unwrap_err();
        assert!(err.to_string().contains("secretIdFile"), "{err}");
        assert!(matches!(
            app_role("r", Some("s"), Some("/f")).auth_with_env(None),
            Err(SettingsError::ConflictingCredentials { .. })
        ));
    }

    #[test]
    fn paths_and_names_are_checked() {
        for bad in ["", "/", "pki//x", "../pki", "pki path"] {
            let settings = VaultSettings {
                pki_path: bad.into(),
                ..with_host("vault")
            };
            let err = settings.validate().unwrap_err();
            assert!(err.to_string().contains("vault.pkiPath"), "{bad:?}: {err}");
        }
        let settings = VaultSettings {
            role: "a/b".into(),
            ..with_host("vault")
        };
        assert!(
            settings
                .validate()
                .unwrap_err()
                .to_string()
                .contains("vault.role")
        );
        let settings = VaultSettings {
            request_timeout: Duration::ZERO,
            ..with_host("vault")
        };
        assert!(
            settings
                .validate()
                .unwrap_err()
                .to_string()
                .contains("requestTimeout")
        );
        assert!(with_host("vault").validate().is_ok());
    }
}
