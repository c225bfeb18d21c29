//! The configuration sections other than `sds.*`, with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use meshca_provider::KeyType;
use meshca_provider::duration::serde_go;
use serde::{Deserialize, Serialize};

use super::forms::optional_go;

/// `certificateProvider.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// `tresor`, `vault` or `cert-manager`.
    pub kind: ProviderKind,
    /// Lifetime asked for service certificates (advisory: the backend may cap it).
    #[serde(with = "serde_go")]
    pub service_cert_validity_duration: Duration,
    /// Longest lifetime of a workload certificate (one with a SPIFFE ID), whoever asks:
    /// longer requests are refused, naming this key.
    #[serde(with = "serde_go")]
    pub max_service_cert_validity_duration: Duration,
    /// Longest lifetime of a server certificate (DNS names only: `meshca issue --dns`, managed
    /// TLS Secrets): longer requests are refused, naming this key.
    #[serde(with = "serde_go")]
    pub max_server_cert_validity_duration: Duration,
    /// Key type of service certificates.
    pub key_type: KeyType,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Tresor,
            service_cert_validity_duration: Duration::from_secs(24 * 3600),
            max_service_cert_validity_duration: crate::lifetime::DEFAULT_MAX_WORKLOAD_LIFETIME,
            max_server_cert_validity_duration: crate::lifetime::DEFAULT_MAX_SERVER_LIFETIME,
            key_type: KeyType::P256,
        }
    }
}

/// The certificate backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// The built-in CA.
    Tresor,
    /// HashiCorp Vault PKI or OpenBao.
    Vault,
    /// cert-manager CertificateRequests.
    CertManager,
}

/// `tresor.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TresorConfig {
    /// Where the CA is kept: `directory` (files in `tresor.directory`) or `kubernetes` (the
    /// Secret `caBundleSecretName` in `namespace`).
    pub store: StoreKind,
    /// Directory of the CA store (`ca.crt`, `private.key`).
    pub directory: PathBuf,
    /// Subject common name of a generated root.
    pub root_common_name: String,
    /// Subject organization of a generated root.
    pub root_organization: String,
    /// Lifetime of a generated root.
    #[serde(with = "serde_go")]
    pub root_validity_duration: Duration,
    /// Key type of a generated root.
    pub root_key_type: KeyType,
    /// How far NotBefore is back-dated, for clocks that disagree.
    #[serde(with = "serde_go")]
    pub clock_skew_allowance: Duration,
}

impl Default for TresorConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::Directory,
            directory: PathBuf::from("meshca-data/ca"),
            root_common_name: "meshca root".to_owned(),
            root_organization: "meshca".to_owned(),
            root_validity_duration: Duration::from_secs(87_600 * 3600),
            root_key_type: KeyType::P256,
            clock_skew_allowance: Duration::from_secs(60),
        }
    }
}

/// Where Tresor keeps its CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `ca.crt` and `private.key` (0600) in a directory.
    Directory,
    /// An Opaque Kubernetes Secret with keys `ca.crt` and `private.key`.
    Kubernetes,
}

impl StoreKind {
    /// The configuration name: `directory`, `kubernetes`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Directory => "directory",
            StoreKind::Kubernetes => "kubernetes",
        }
    }
}

/// `renewal.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RenewalConfig {
    /// Fraction of a certificate's lifetime after which it is renewed.
    pub fraction: f64,
    /// Random spread, as a fraction of the lifetime, so certificates issued together do not
    /// renew together.
    pub jitter: f64,
    /// Renewal is never scheduled later than this before expiry.
    #[serde(with = "serde_go")]
    pub floor: Duration,
    /// First retry delay after a failed renewal.
    #[serde(with = "serde_go")]
    pub backoff_initial: Duration,
    /// Longest retry delay.
    #[serde(with = "serde_go")]
    pub backoff_max: Duration,
    /// How long one issuance may take before it counts as failed. The daemon's renewals take
    /// at most a quarter of the time left on the certificate they renew, never less than 2s
    /// ([`crate::cache::issue_timeout_for`]).
    #[serde(with = "serde_go")]
    pub issue_timeout: Duration,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        // The cache's and the pipeline's defaults: one constant per setting.
        Self {
            fraction: crate::cache::DEFAULT_RENEW_FRACTION,
            jitter: crate::cache::DEFAULT_JITTER_FRACTION,
            floor: crate::cache::DEFAULT_RENEW_FLOOR,
            backoff_initial: crate::cache::DEFAULT_BACKOFF_INITIAL,
            backoff_max: crate::cache::DEFAULT_BACKOFF_MAX,
            issue_timeout: crate::issuance::DEFAULT_ISSUE_TIMEOUT,
        }
    }
}

/// `rotation.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Stage 1 of a root rotation advances after this long even if some connected proxies
    /// never acknowledged the new root. Unset: only acknowledgements advance it.
    #[serde(with = "optional_go", skip_serializing_if = "Option::is_none")]
    pub ack_deadline: Option<Duration>,
    /// How often the daemon checks the CA store for rotation changes, and reports what its
    /// proxies acknowledged.
    #[serde(with = "serde_go")]
    pub poll_interval: Duration,
    /// This daemon's name in acknowledgement reports. Default: `$POD_NAME`, else the host
    /// name.
    pub replica: String,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            ack_deadline: None,
            poll_interval: Duration::from_secs(10),
            replica: String::new(),
        }
    }
}

impl ProviderKind {
    /// The configuration name: `tresor`, `vault`, `cert-manager`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Tresor => "tresor",
            ProviderKind::Vault => "vault",
            ProviderKind::CertManager => "cert-manager",
        }
    }
}

/// `admin.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics` and `POST /rotate/leaves`; empty to disable.
    pub listen: String,
    /// A file holding the bearer token that routes changing state (`POST /rotate/leaves`)
    /// require (`Authorization: Bearer <token>`); `meshca rotate leaves` reads the same file.
    /// Unset: those routes answer 403 and nothing can change the daemon's state over HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Label `meshca_certificate_expiry_timestamp_seconds` with every cached identity. Off by
    /// default: one series per workload is a cardinality problem at 10,000 identities, and it
    /// lists every workload to whoever can scrape. The aggregates are always exported.
    pub per_identity_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:15014".to_owned(),
            token_file: None,
            per_identity_metrics: false,
        }
    }
}

/// `log.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `meshca=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::config::SdsAuth;

    #[test]
    fn enum_names_match_the_configuration_spelling() {
        let yaml = |v: &dyn SpelledInYaml| v.yaml();
        for kind in [
            ProviderKind::Tresor,
            ProviderKind::Vault,
            ProviderKind::CertManager,
        ] {
            assert_eq!(yaml(&kind), kind.as_str());
        }
        for auth in [SdsAuth::Mtls, SdsAuth::UnixPeer, SdsAuth::Development] {
            assert_eq!(yaml(&auth), auth.as_str());
        }
    }

    /// Serialises a configuration enum the way the YAML file spells it.
    trait SpelledInYaml {
        fn yaml(&self) -> String;
    }
    impl<T: Serialize> SpelledInYaml for T {
        fn yaml(&self) -> String {
            serde_yaml::to_string(self).unwrap().trim().to_owned()
        }
    }
}
