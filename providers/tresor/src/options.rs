//! How meshca makes its own CAs: the options of a new root and of a per-cluster intermediate.

use std::time::Duration;

use meshca_provider::{KeyType, TrustDomain};

/// The organisation written into the subject of CA certificates meshca makes.
pub(crate) const ORGANIZATION: &str = "meshca";

/// The default lifetime of a root made by meshca: 10 years (87600h).
pub const DEFAULT_ROOT_LIFETIME: Duration = Duration::from_secs(87_600 * 3600);

/// The default lifetime of a per-cluster intermediate: 1 year (8760h).
pub const DEFAULT_INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(8_760 * 3600);

/// How to make a new self-signed root.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RootOptions {
    /// Subject common name. Default `meshca root CA`.
    pub common_name: String,
    /// Subject organisation, if any. Default `meshca`.
    pub organization: Option<String>,
    /// Validity period. Default [`DEFAULT_ROOT_LIFETIME`].
    pub lifetime: Duration,
    /// The root's key type. Default P-256.
    pub key_type: KeyType,
}

impl Default for RootOptions {
    fn default() -> Self {
        Self {
            common_name: "meshca root CA".to_owned(),
            organization: Some(ORGANIZATION.to_owned()),
            lifetime: DEFAULT_ROOT_LIFETIME,
            key_type: KeyType::P256,
        }
    }
}

/// How to make a per-cluster intermediate under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntermediateOptions {
    /// The cluster's name; the subject becomes `CN=meshca intermediate <cluster>, O=meshca`.
    pub cluster: String,
    /// The cluster's trust domain, written as the URI SAN `spiffe://<trust-domain>`.
    pub trust_domain: TrustDomain,
    /// Validity period, cut short where the issuing chain ends. Default
    /// [`DEFAULT_INTERMEDIATE_LIFETIME`].
    pub lifetime: Duration,
    /// The intermediate's key type. Default P-256.
    pub key_type: KeyType,
}

impl IntermediateOptions {
    /// Options for `cluster` in `trust_domain`, with the default lifetime and key type.
    pub fn new(cluster: impl Into<String>, trust_domain: TrustDomain) -> Self {
        Self {
            cluster: cluster.into(),
            trust_domain,
            lifetime: DEFAULT_INTERMEDIATE_LIFETIME,
            key_type: KeyType::P256,
        }
    }
}
