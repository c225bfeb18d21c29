//! Vault / OpenBao PKI backend for meshca.
//!
//! The entry point is [`VaultProvider::connect`], which turns the `vault:` section of meshca's
//! configuration ([`VaultSettings`]) into a [`CertificateProvider`]: it checks the token (or
//! logs in), the PKI mount and the role at start, then signs the daemon's CSRs through
//! `<pkiPath>/sign/<role>` and keeps its token alive in the background.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use meshca_vault::{VaultProvider, VaultSettings};
//!
//! let settings: VaultSettings = serde_yaml::from_str(
//!     "host: 127.0.0.1\nport: 8200\npkiPath: pki\nrole: meshca\ntoken: meshca-dev-root\n",
//! )?;
//! let provider = VaultProvider::connect(&settings).await?;
//! # let _ = provider; Ok(()) }
//! ```
//!
//! [`CertificateProvider`]: meshca_provider::CertificateProvider

#![forbid(unsafe_code)]

mod auth;
mod endpoints;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod issuers;
mod pki;
mod provider;
mod rotate;
mod settings;
mod upstream;

pub use error::VaultError;
pub use issuers::{
    IssuerInfo, IssuerSwitch, NEXT_ISSUER, RETIRED_PREFIX, ROOT_PREFIX, VaultRotation,
};
pub use provider::VaultProvider;
pub use rotate::{VaultAbort, VaultAdvance, VaultRotationError, trusting_since};
pub use settings::{
    AppRoleSettings, DEFAULT_APPROLE_MOUNT, DEFAULT_INTERMEDIATE_COMMON_NAME,
    DEFAULT_INTERMEDIATE_TTL, DEFAULT_KUBERNETES_MOUNT, DEFAULT_PKI_PATH, DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_ROLE, DEFAULT_SERVICE_ACCOUNT_TOKEN_FILE,
    ISSUE_MODE_ISSUE_REFUSED, IssueMode, KubernetesAuthSettings, Protocol, Secret, SecretIdSource,
    SettingsError, SharedTokenSource, TOKEN_ENV, TokenSecretRef, TokenSource, UpstreamSettings,
    VaultAuth, VaultMode, VaultSettings,
};
pub use upstream::{UpstreamPolicy, VaultUpstream};

/// The provider's name in logs and metrics.
pub const NAME: &str = "vault";
