//! The credentials the settings resolve to: [`VaultAuth`], with exactly one method chosen.

use std::path::PathBuf;

use super::validate::mount_path;
use super::{
    AppRoleSettings, DEFAULT_APPROLE_MOUNT, DEFAULT_KUBERNETES_MOUNT,
    DEFAULT_SERVICE_ACCOUNT_TOKEN_FILE, KubernetesAuthSettings, Secret, SettingsError, TOKEN_ENV,
    TokenSecretRef, VaultSettings,
};

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

impl VaultSettings {
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
        let Some(mount) = mount_path(&self.mount) else {
            return Err(SettingsError::Invalid {
                key: "vault.appRole.mount",
                value: self.mount.clone(),
                reason: format!(
                    "the AppRole auth mount path, usually {DEFAULT_APPROLE_MOUNT} (letters, \
                     digits, - _ . /)"
                ),
            });
        };
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
        let Some(mount) = mount_path(&self.mount) else {
            return Err(SettingsError::Invalid {
                key: "vault.kubernetes.mount",
                value: self.mount.clone(),
                reason: format!(
                    "the Kubernetes auth mount path, usually {DEFAULT_KUBERNETES_MOUNT} \
                     (letters, digits, - _ . /)"
                ),
            });
        };
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::settings::testing::with_host;

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
    fn auth_mounts_are_url_path_segments_only() {
        let with_mount = |mount: &str| VaultSettings {
            token: None,
            app_role: Some(AppRoleSettings {
                role_id: "r".to_owned(),
                secret_id: Some(Secret::from("s")),
                mount: mount.to_owned(),
                ..AppRoleSettings::default()
            }),
            ..with_host("vault")
        };
        let mount = |settings: VaultSettings| match settings.auth_with_env(None) {
            Ok(VaultAuth::AppRole { mount, .. }) => mount,
            other => panic!("{other:?}"),
        };
        assert_eq!(mount(with_mount("/team-a/approle/")), "team-a/approle");
        for bad in ["", "../sys", "approle?x=1", "a//b", "app role", "approle#"] {
            let err = with_mount(bad).auth_with_env(None).unwrap_err();
            assert!(
                err.to_string().contains("vault.appRole.mount"),
                "{bad}: {err}"
            );
        }
        let kubernetes = VaultSettings {
            token: None,
            kubernetes: Some(KubernetesAuthSettings {
                role: "meshca".to_owned(),
                mount: "k8s/../sys".to_owned(),
                ..KubernetesAuthSettings::default()
            }),
            ..with_host("vault")
        };
        let err = kubernetes.auth_with_env(None).unwrap_err();
        assert!(err.to_string().contains("vault.kubernetes.mount"), "{err}");
    }
}
