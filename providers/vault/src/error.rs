//! Why the provider could not start (or re-authenticate), with the setting to look at.

use std::path::PathBuf;

use meshca_provider::ProviderError;

use crate::NAME;
use crate::settings::SettingsError;

/// Why [`VaultProvider::connect`](crate::VaultProvider::connect) (or a later login) failed.
/// Every message names Vault's address and the setting or Vault object to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// `vault.caFile` could not be read or holds no usable certificate.
    #[error("cannot use vault.caFile {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client for Vault: {reason}")]
    HttpClient {
        /// What went wrong.
        reason: String,
    },
    /// Nothing answered at the address.
    #[error(
        "cannot reach Vault at {address} ({reason}): check vault.host, vault.port and \
         vault.protocol (or vault.address), and vault.caFile for https"
    )]
    Unreachable {
        /// Vault's address.
        address: String,
        /// The connection error.
        reason: String,
    },
    /// Vault refused the token.
    #[error("vault token rejected by {address} ({status}): check {settings}")]
    TokenRejected {
        /// Vault's address.
        address: String,
        /// Status and Vault's message, e.g. `403 permission denied`.
        status: String,
        /// The settings that supply the token.
        settings: String,
    },
    /// Vault refused a login.
    #[error("vault login at {address}/v1/{path} refused ({status}): check {settings}")]
    LoginRejected {
        /// Vault's address.
        address: String,
        /// The login path, e.g. `auth/approle/login`.
        path: String,
        /// Status and Vault's message.
        status: String,
        /// The settings that supply the credentials.
        settings: String,
    },
    /// A token or secret-ID file could not be read.
    #[error("cannot read {setting} {path}: {reason}")]
    CredentialFile {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A [`TokenSource`](crate::TokenSource) (a Kubernetes Secret) could not be read.
    #[error("cannot read the Vault token from {origin}: {reason}")]
    TokenSource {
        /// Where the token is kept.
        origin: String,
        /// What went wrong, without the token.
        reason: String,
    },
    /// No PKI secrets engine at `vault.pkiPath`.
    #[error(
        "no PKI secrets engine at {address}/v1/{pki_path} ({status}): check vault.pkiPath, or \
         enable one with `bao secrets enable -path={pki_path} pki`"
    )]
    NoPkiEngine {
        /// Vault's address.
        address: String,
        /// The mount path.
        pki_path: String,
        /// Vault's answer.
        status: String,
    },
    /// The PKI engine has no CA certificate.
    #[error(
        "the PKI secrets engine at {address}/v1/{pki_path} has no CA certificate: generate or \
         import one, e.g. `bao write {pki_path}/root/generate/internal common_name=\"mesh root\" \
         key_type=ec key_bits=256 ttl=87600h`"
    )]
    NoCa {
        /// Vault's address.
        address: String,
        /// The mount path.
        pki_path: String,
    },
    /// The role does not exist.
    #[error(
        "no PKI role {role:?} at {address}/v1/{pki_path}/roles/{role}: set vault.role, or \
         create the role (see the `bao write {pki_path}/roles/{role} …` command in the \
         meshca-vault README)"
    )]
    RoleNotFound {
        /// Vault's address.
        address: String,
        /// The mount path.
        pki_path: String,
        /// The role.
        role: String,
    },
    /// Vault answered an error that fits none of the above.
    #[error("Vault at {address} answered {status} on {path}")]
    Api {
        /// Vault's address.
        address: String,
        /// The API path.
        path: String,
        /// Status and Vault's message.
        status: String,
        /// Whether retrying later may help (5xx, 429).
        transient: bool,
    },
    /// Vault answered with something unreadable.
    #[error("Vault at {address} returned an unusable answer on {path}: {reason}")]
    InvalidResponse {
        /// Vault's address.
        address: String,
        /// The API path.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Upstream mode: Vault did not sign meshca's intermediate at start.
    #[error("cannot get meshca's intermediate signed by Vault at {address}: {reason}")]
    Intermediate {
        /// Vault's address.
        address: String,
        /// Why, and what to change.
        reason: String,
        /// Whether retrying later may help (Vault unreachable or sealed).
        transient: bool,
    },
}

impl VaultError {
    /// The same failure as a [`ProviderError`], for failures after start-up (a re-login).
    pub fn into_provider_error(self) -> ProviderError {
        let reason = self.to_string();
        match self {
            VaultError::Unreachable { .. }
            | VaultError::TokenSource { .. }
            | VaultError::Api {
                transient: true, ..
            }
            | VaultError::Intermediate {
                transient: true, ..
            } => ProviderError::Unavailable {
                provider: NAME,
                reason,
            },
            VaultError::TokenRejected { .. }
            | VaultError::LoginRejected { .. }
            | VaultError::CredentialFile { .. } => ProviderError::Unauthorized {
                provider: NAME,
                reason,
            },
            VaultError::InvalidResponse { .. } => ProviderError::InvalidResponse {
                provider: NAME,
                reason,
            },
            VaultError::Settings(_)
            | VaultError::CaFile { .. }
            | VaultError::HttpClient { .. }
            | VaultError::NoPkiEngine { .. }
            | VaultError::NoCa { .. }
            | VaultError::RoleNotFound { .. }
            | VaultError::Intermediate { .. }
            | VaultError::Api { .. } => ProviderError::Rejected {
                provider: NAME,
                reason,
            },
        }
    }

    /// Whether retrying the same thing later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VaultError::Unreachable { .. }
                | VaultError::Api {
                    transient: true,
                    ..
                }
                | VaultError::Intermediate {
                    transient: true,
                    ..
                }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_failures_keep_their_meaning_as_provider_errors() {
        let unreachable = VaultError::Unreachable {
            address: "http://vault:8200".into(),
            reason: "Connection refused".into(),
        };
        assert!(unreachable.is_transient());
        let converted = unreachable.into_provider_error();
        assert!(converted.is_transient());
        assert!(
            converted.to_string().contains("http://vault:8200"),
            "{converted}"
        );

        let rejected = VaultError::TokenRejected {
            address: "http://vault:8200".into(),
            status: "403 permission denied".into(),
            settings: "vault.token / VAULT_TOKEN".into(),
        };
        assert_eq!(
            rejected.to_string(),
            "vault token rejected by http://vault:8200 (403 permission denied): check \
             vault.token / VAULT_TOKEN"
        );
        assert!(matches!(
            rejected.into_provider_error(),
            ProviderError::Unauthorized { .. }
        ));

        let sealed = VaultError::Api {
            address: "http://vault:8200".into(),
            path: "auth/approle/login".into(),
            status: "503 Vault is sealed".into(),
            transient: true,
        };
        assert!(matches!(
            sealed.into_provider_error(),
            ProviderError::Unavailable { .. }
        ));
    }
}
