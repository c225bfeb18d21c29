//! cert-manager backend for meshca: certificates through `CertificateRequest`s.
//!
//! [`CertManagerProvider`] turns the `certManager:` section of meshca's configuration
//! ([`CertManagerSettings`]) into a [`CertificateProvider`]: each issuance creates a
//! CertificateRequest (cert-manager.io/v1) carrying the daemon's CSR, watches it until the
//! issuer signs it (a denial or failure ends the wait at once), deletes it, and verifies the
//! chain against the CA bundle Secret's `ca.crt` (or the request's `status.ca`).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use meshca_cert_manager::{CertManagerProvider, CertManagerSettings};
//!
//! let settings: CertManagerSettings =
//!     serde_yaml::from_str("issuerName: meshca-ca\nissuerKind: ClusterIssuer\n")?;
//! let provider = CertManagerProvider::connect(&settings).await?;
//! # let _ = provider; Ok(()) }
//! ```
//!
//! [`CertificateProvider`]: meshca_provider::CertificateProvider

#![forbid(unsafe_code)]

mod crd;
mod naming;
mod provider;
mod settings;

pub use naming::label_value;
pub use provider::{
    CA_BUNDLE_KEY, CertManagerError, CertManagerProvider, IDENTITY_LABEL, MANAGED_BY,
    MANAGED_BY_LABEL, USAGES,
};
pub use settings::{
    CERT_MANAGER_GROUP, CaBundleSecret, CertManagerSettings, DEFAULT_CA_BUNDLE_SECRET,
    DEFAULT_ISSUER_KIND, DEFAULT_ISSUER_NAME, DEFAULT_NAMESPACE, DEFAULT_STALE_AFTER,
    DEFAULT_TIMEOUT, SettingsError,
};

/// The provider's name in logs and metrics.
pub const NAME: &str = "cert-manager";
