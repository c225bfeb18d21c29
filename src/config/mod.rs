//! Configuration: one YAML document whose keys mirror the Helm chart's values.
//!
//! Precedence, lowest to highest: built-in defaults < the YAML file (`--config`) < environment
//! variables (`MESHCA_<KEY>`) < command-line flags (`--set key=value` and the named flags).
//! Every key is reachable all three ways: `certificateProvider.serviceCertValidityDuration` is
//! `MESHCA_CERTIFICATE_PROVIDER_SERVICE_CERT_VALIDITY_DURATION` and
//! `--set certificateProvider.serviceCertValidityDuration=12h`.
//!
//! One file per concern: `load.rs` reads the sources in that order, `validate.rs` checks values
//! that parse but make no sense, `sections.rs`, `sds.rs`, `istio.rs` and `workload_api.rs`
//! hold each section's settings and defaults, `transport.rs` the listener limits `sds.*` and
//! `istio.*` share, `trusted_roots.rs` reads `extraTrustedRoots`, and `forms.rs` the YAML
//! spellings some values accept besides their plain type.

mod build;
mod forms;
mod istio;
mod jwt_svid;
mod load;
mod sds;
mod sections;
mod transport;
mod trusted_roots;
mod validate;
mod workload_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshca_provider::TrustDomain;
use serde::{Deserialize, Serialize};

pub use istio::{
    ClusterTrustBundleConfig, IstioConfig, IstioListener, RootCertConfigMapConfig,
    TrustDistributionConfig,
};
pub use jwt_svid::JwtSvidConfig;
pub use load::{ENV_PREFIX, Overrides, env_name, known_keys};
pub use sds::{SdsAuth, SdsConfig, SdsListener};
pub use sections::{
    AdminConfig, LogConfig, LogFormat, ProviderConfig, ProviderKind, RenewalConfig, RotationConfig,
    StoreKind, TresorConfig,
};
pub use transport::{Listener, TransportKeys, TransportLimits};
pub use validate::{is_dns_label, is_dns_subdomain};
pub use workload_api::{AttestorKind, EntryConfig, WorkloadApiConfig};

use forms::one_or_many;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is not valid, or a value has the wrong type or form.
    #[error("invalid configuration in {origin}: {reason}")]
    Invalid {
        /// Where the bad value came from (a file, an environment variable, a flag).
        origin: String,
        /// The parser's reason, with the key path when known.
        reason: String,
    },
    /// A `--set` or environment variable names a key that does not exist.
    #[error("unknown configuration key {key:?} (from {origin}); known keys: {known}")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// Where it came from.
        origin: String,
        /// Every valid key, for the user to pick from.
        known: String,
    },
    /// A value parsed but makes no sense.
    #[error("invalid value for {key}: {reason}")]
    InvalidValue {
        /// The dotted key.
        key: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// SPIFFE trust domain of the identities meshca issues.
    pub trust_domain: String,
    /// Which backend signs, and the service certificate profile.
    pub certificate_provider: ProviderConfig,
    /// Name of the Kubernetes Secret holding the CA bundle (`tresor.store: kubernetes`, and
    /// the trust bundle `meshca bootstrap` publishes for Vault and cert-manager).
    pub ca_bundle_secret_name: String,
    /// meshca's own Kubernetes namespace: where the CA bundle Secret lives.
    pub namespace: String,
    /// Built-in CA settings.
    pub tresor: TresorConfig,
    /// Vault / OpenBao settings (`certificateProvider.kind: vault`).
    pub vault: meshca_vault::VaultSettings,
    /// cert-manager settings (`certificateProvider.kind: cert-manager`).
    pub cert_manager: meshca_cert_manager::CertManagerSettings,
    /// Renewal policy for cached certificates.
    pub renewal: RenewalConfig,
    /// Root rotation (Tresor).
    pub rotation: RotationConfig,
    /// SDS listener settings.
    pub sds: SdsConfig,
    /// The Istio CA API listener.
    pub istio: IstioConfig,
    /// The trust bundle published into the cluster (ConfigMaps, ClusterTrustBundle).
    pub trust_distribution: TrustDistributionConfig,
    /// JWT-SVID signing keys, their schedule and the OIDC issuer.
    pub jwt_svid: JwtSvidConfig,
    /// The SPIFFE Workload API on a Unix socket.
    pub workload_api: WorkloadApiConfig,
    /// Admin (health, metrics) listener.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Roots trusted besides the provider's own: each entry a PEM file path or inline PEM text
    /// (starting with `-----BEGIN`), every certificate in it a CA. They are added to every
    /// trust bundle meshca publishes (SDS validation contexts), for a root rotated outside
    /// meshca (Vault, cert-manager) or another cluster's root. A string is read as one inline
    /// PEM entry or as comma-separated paths, so the key also works as a flag or variable.
    #[serde(deserialize_with = "one_or_many")]
    pub extra_trusted_roots: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trust_domain: meshca_provider::DEFAULT_TRUST_DOMAIN.to_owned(),
            certificate_provider: ProviderConfig::default(),
            ca_bundle_secret_name: "meshca-ca-bundle".to_owned(),
            namespace: "meshca-system".to_owned(),
            tresor: TresorConfig::default(),
            vault: meshca_vault::VaultSettings::default(),
            cert_manager: meshca_cert_manager::CertManagerSettings::default(),
            renewal: RenewalConfig::default(),
            rotation: RotationConfig::default(),
            sds: SdsConfig::default(),
            istio: IstioConfig::default(),
            trust_distribution: TrustDistributionConfig::default(),
            jwt_svid: JwtSvidConfig::default(),
            workload_api: WorkloadApiConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            extra_trusted_roots: Vec::new(),
        }
    }
}

impl Config {
    /// The trust domain, validated by [`Config::validate`].
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain::new(&self.trust_domain).unwrap_or_default()
    }

    /// The SDS TCP address, if enabled.
    pub fn sds_listen(&self) -> Option<SocketAddr> {
        self.sds.listen.parse().ok()
    }

    /// The root rotation policy: the acknowledgement deadline, how long stage 2 lasts (the
    /// longest leaf lifetime plus the clock-skew allowance), and when a daemon's report is
    /// stale (three missed polls, and at least 30s: a busy daemon is not a dead one).
    pub fn rotation_policy(&self) -> meshca_tresor::RotationPolicy {
        meshca_tresor::RotationPolicy {
            ack_deadline: self.rotation.ack_deadline,
            longest_leaf: self.certificate_provider.service_cert_validity_duration
                + self.tresor.clock_skew_allowance,
            report_freshness: (self.rotation.poll_interval * 3).max(Duration::from_secs(30)),
        }
    }

    /// This daemon's name in rotation acknowledgement reports.
    pub fn replica_name(&self) -> String {
        if !self.rotation.replica.is_empty() {
            return self.rotation.replica.clone();
        }
        if let Some(pod) = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()) {
            return pod;
        }
        // Outside Kubernetes several daemons may share a host: the process id tells them apart.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    }

    /// The admin address, if enabled.
    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.admin.listen.parse().ok()
    }

    /// `admin.tokenFile`, if set (an empty value is unset).
    pub fn admin_token_file(&self) -> Option<&Path> {
        self.admin
            .token_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }
}

/// Helpers shared by the configuration's unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testing {
    use super::{Config, ConfigError, Overrides};

    /// A temporary file holding `text`.
    pub(super) fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    /// The defaults with `--set` for each `key=value` pair.
    pub(super) fn load(pairs: &[&str]) -> Result<Config, ConfigError> {
        let mut overrides = Overrides::default();
        for pair in pairs {
            overrides.set(pair).unwrap();
        }
        Config::load(None, &overrides)
    }
}
