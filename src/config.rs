//! Configuration: one YAML document whose keys mirror the Helm chart's values.
//!
//! Precedence, lowest to highest: built-in defaults < the YAML file (`--config`) < environment
//! variables (`MESHCA_<KEY>`) < command-line flags (`--set key=value` and the named flags).
//! Every key is reachable all three ways: `certificateProvider.serviceCertValidityDuration` is
//! `MESHCA_CERTIFICATE_PROVIDER_SERVICE_CERT_VALIDITY_DURATION` and
//! `--set certificateProvider.serviceCertValidityDuration=12h`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshca_provider::duration::serde_go;
use meshca_provider::{CertificateInfo, KeyType, SpiffeId, TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// Prefix of every environment variable meshca reads.
pub const ENV_PREFIX: &str = "MESHCA_";

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
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            extra_trusted_roots: Vec::new(),
        }
    }
}

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
    /// How long one issuance may take before it counts as failed.
    #[serde(with = "serde_go")]
    pub issue_timeout: Duration,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        Self {
            fraction: 0.5,
            jitter: 0.1,
            floor: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            issue_timeout: Duration::from_secs(30),
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

/// `Option<Duration>` as an optional Go-style string.
mod optional_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_str(&meshca_provider::format_duration(*d)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) if !text.is_empty() => meshca_provider::parse_duration(&text)
                .map(Some)
                .map_err(D::Error::custom),
            _ => Ok(None),
        }
    }
}

/// `sds.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SdsConfig {
    /// TCP address of the SDS gRPC listener; empty to disable.
    pub listen: String,
    /// Unix socket path of the SDS listener; empty to disable.
    pub unix_socket: String,
    /// How callers prove who they are: `mtls` (a client certificate issued by meshca),
    /// `unix-peer` (the Unix socket peer's uid, mapped by `unixPeers`), `token` (a Kubernetes
    /// service-account token, checked with TokenReview; loopback and Unix sockets only), or
    /// `development` (the Envoy node id is believed; loopback and Unix sockets only).
    pub auth: SdsAuth,
    /// With `auth: token`: comma-separated audiences a token must be meant for (empty: the API
    /// server's own audience, i.e. the pod's default token).
    pub token_audiences: String,
    /// The identity of the SDS endpoint's own certificate with `auth: mtls`, `<ns>/<sa>`.
    pub server_identity: String,
    /// With `auth: unix-peer`: comma-separated `uid=<ns>/<sa>` pairs, e.g.
    /// `1337=bookstore/bookstore-v2,1338=bookstore/bookbuyer`.
    pub unix_peers: String,
    /// File mode of the Unix socket, in octal (`0660`). Connecting needs write permission, so
    /// this decides which local users can reach the listener at all. Empty: `0600` with
    /// `auth: development` (whoever connects is believed, so only meshca's own user), `0666`
    /// otherwise (every caller is authenticated on the connection: uid, token or certificate).
    #[serde(deserialize_with = "octal_mode")]
    pub unix_socket_mode: String,
    /// Group of the Unix socket: a group name or a numeric gid. Empty: meshca's own group.
    /// With a mode such as `0660`, only members of this group can connect.
    #[serde(deserialize_with = "string_or_number")]
    pub unix_socket_group: String,
    /// Streams open at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Streams one identity (all proxies of a service account together) may hold at once.
    pub max_streams_per_identity: usize,
    /// Connections open at once on all SDS listeners; more are closed when accepted.
    pub max_connections: usize,
    /// Resource names in one request.
    pub max_names_per_request: usize,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// How long a TLS client may take to complete its handshake.
    #[serde(with = "serde_go")]
    pub handshake_timeout: Duration,
    /// How long a connection may take to send the HTTP/2 preface once accepted (after the TLS
    /// handshake with mTLS).
    #[serde(with = "serde_go")]
    pub preface_timeout: Duration,
    /// How long a new stream may take to send its first request.
    #[serde(with = "serde_go")]
    pub first_request_timeout: Duration,
    /// How long a connection may carry no SDS stream before it is closed.
    #[serde(with = "serde_go")]
    pub connection_idle_timeout: Duration,
}

impl Default for SdsConfig {
    fn default() -> Self {
        let limits = crate::sds::SdsLimits::default();
        Self {
            listen: "127.0.0.1:15010".to_owned(),
            unix_socket: String::new(),
            auth: SdsAuth::Mtls,
            token_audiences: String::new(),
            server_identity: "meshca-system/meshca".to_owned(),
            unix_peers: String::new(),
            unix_socket_mode: String::new(),
            unix_socket_group: String::new(),
            max_streams: limits.max_streams,
            max_streams_per_identity: limits.max_streams_per_identity,
            max_connections: limits.max_connections,
            max_names_per_request: limits.max_names_per_request,
            max_message_bytes: limits.max_message_bytes,
            handshake_timeout: limits.handshake_timeout,
            preface_timeout: limits.preface_timeout,
            first_request_timeout: limits.first_request_timeout,
            connection_idle_timeout: limits.connection_idle_timeout,
        }
    }
}

impl SdsConfig {
    /// The limits as the SDS server takes them.
    pub fn limits(&self) -> crate::sds::SdsLimits {
        crate::sds::SdsLimits {
            max_streams: self.max_streams,
            max_streams_per_identity: self.max_streams_per_identity,
            max_connections: self.max_connections,
            max_names_per_request: self.max_names_per_request,
            max_message_bytes: self.max_message_bytes,
            handshake_timeout: self.handshake_timeout,
            preface_timeout: self.preface_timeout,
            first_request_timeout: self.first_request_timeout,
            connection_idle_timeout: self.connection_idle_timeout,
            ..crate::sds::SdsLimits::default()
        }
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let defaults = crate::sds::SdsLimits::default();
        for (key, value, default) in [
            ("sds.maxStreams", self.max_streams, defaults.max_streams),
            (
                "sds.maxStreamsPerIdentity",
                self.max_streams_per_identity,
                defaults.max_streams_per_identity,
            ),
            (
                "sds.maxConnections",
                self.max_connections,
                defaults.max_connections,
            ),
            (
                "sds.maxNamesPerRequest",
                self.max_names_per_request,
                defaults.max_names_per_request,
            ),
            (
                "sds.maxMessageBytes",
                self.max_message_bytes,
                defaults.max_message_bytes,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::InvalidValue {
                    key,
                    reason: format!("must be at least 1 (default {default})"),
                });
            }
        }
        for (key, value) in [
            ("sds.maxStreams", self.max_streams),
            ("sds.maxConnections", self.max_connections),
        ] {
            if value > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(ConfigError::InvalidValue {
                    key,
                    reason: format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
                });
            }
        }
        for (key, value, default) in [
            (
                "sds.handshakeTimeout",
                self.handshake_timeout,
                defaults.handshake_timeout,
            ),
            (
                "sds.prefaceTimeout",
                self.preface_timeout,
                defaults.preface_timeout,
            ),
            (
                "sds.firstRequestTimeout",
                self.first_request_timeout,
                defaults.first_request_timeout,
            ),
            (
                "sds.connectionIdleTimeout",
                self.connection_idle_timeout,
                defaults.connection_idle_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::InvalidValue {
                    key,
                    reason: format!(
                        "must be above zero (default {})",
                        meshca_provider::format_duration(default)
                    ),
                });
            }
        }
        Ok(())
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

impl SdsAuth {
    /// The configuration name: `mtls`, `unix-peer`, `token`, `development`.
    pub fn as_str(self) -> &'static str {
        match self {
            SdsAuth::Mtls => "mtls",
            SdsAuth::UnixPeer => "unix-peer",
            SdsAuth::Token => "token",
            SdsAuth::Development => "development",
        }
    }
}

/// SDS caller authentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SdsAuth {
    /// A client certificate issued by meshca.
    Mtls,
    /// Unix socket peer credentials.
    UnixPeer,
    /// A Kubernetes service-account token (TokenReview).
    Token,
    /// Trust the Envoy node id (development only).
    Development,
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

/// Where configuration comes from, in increasing precedence (after the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `(key, value)` pairs from the environment, with the variable name as origin.
    pub env: Vec<(String, String, String)>,
    /// `(key, value)` pairs from flags.
    pub flags: Vec<(String, String)>,
}

impl Overrides {
    /// Reads every `MESHCA_*` variable that names a configuration key. Variables that are not
    /// configuration keys (`MESHCA_CONFIG`, tool paths) are left alone.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let by_env: BTreeMap<String, String> = known_keys()
            .into_iter()
            .map(|key| (env_name(&key), key))
            .collect();
        let env = vars
            .into_iter()
            .filter_map(|(name, value)| {
                by_env
                    .get(&name)
                    .map(|key| (key.clone(), value, name.clone()))
            })
            .collect();
        Self {
            env,
            flags: Vec::new(),
        }
    }

    /// Adds a `key=value` flag.
    pub fn set(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid {
                origin: format!("--set {assignment}"),
                reason: "expected key=value, e.g. --set certificateProvider.kind=vault".to_owned(),
            })?;
        self.flags.push((key.trim().to_owned(), value.to_owned()));
        Ok(())
    }
}

impl Config {
    /// Loads the configuration: defaults, then `file` if given, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let origin = path.display().to_string();
                let value: Value =
                    serde_yaml::from_str(&text).map_err(|e| ConfigError::Invalid {
                        origin: origin.clone(),
                        reason: e.to_string(),
                    })?;
                // Check the file alone first, so its errors name the file.
                if !value.is_null() {
                    Self::from_value(value.clone(), &origin)?;
                }
                if value.is_null() {
                    Value::Mapping(Default::default())
                } else {
                    value
                }
            }
            None => Value::Mapping(Default::default()),
        };
        let known = known_keys();
        let sources = overrides
            .env
            .iter()
            .map(|(k, v, var)| (k, v, format!("environment variable {var}")))
            .chain(
                overrides
                    .flags
                    .iter()
                    .map(|(k, v)| (k, v, format!("--set {k}={v}"))),
            );
        for (key, raw, origin) in sources {
            if !known.iter().any(|k| k == key) {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    origin,
                    known: known.join(", "),
                });
            }
            // A value is read as a YAML scalar, so `0.3` is a number and `24h` a string; PEM
            // text is kept as written (YAML would fold its line breaks into spaces); an empty
            // value is the empty string (`--set admin.listen=` disables the listener), not
            // YAML's null.
            let value: Value = if raw.trim_start().starts_with(PEM_BEGIN) {
                Value::String(raw.clone())
            } else {
                match serde_yaml::from_str(raw) {
                    Ok(Value::Null) if raw.trim().is_empty() => Value::String(String::new()),
                    Ok(value) => value,
                    Err(_) => Value::String(raw.clone()),
                }
            };
            set_path(&mut tree, key, value);
            Self::from_value(tree.clone(), &origin)?;
        }
        let config = Self::from_value(tree, "configuration")?;
        config.validate()?;
        Ok(config)
    }

    fn from_value(value: Value, origin: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_value(value).map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        TrustDomain::new(&self.trust_domain).map_err(|e| ConfigError::InvalidValue {
            key: "trustDomain",
            reason: e.to_string(),
        })?;
        if !is_dns_label(&self.namespace) {
            return Err(ConfigError::InvalidValue {
                key: "namespace",
                reason: format!(
                    "{:?} is not a Kubernetes namespace name (lower-case letters, digits and '-', \
                     at most 63 characters; default meshca-system)",
                    self.namespace
                ),
            });
        }
        if !is_dns_subdomain(&self.ca_bundle_secret_name) {
            return Err(ConfigError::InvalidValue {
                key: "caBundleSecretName",
                reason: format!(
                    "{:?} is not a Kubernetes object name (lower-case letters, digits, '-' and \
                     '.', at most 253 characters; default meshca-ca-bundle)",
                    self.ca_bundle_secret_name
                ),
            });
        }
        self.check_lifetimes()?;
        let r = &self.renewal;
        if !(r.fraction > 0.0 && r.fraction < 1.0) {
            return Err(ConfigError::InvalidValue {
                key: "renewal.fraction",
                reason: format!("{} is not between 0 and 1 (default 0.5)", r.fraction),
            });
        }
        if !(0.0..=0.5).contains(&r.jitter)
            || r.jitter >= r.fraction
            || r.jitter + r.fraction >= 1.0
        {
            return Err(ConfigError::InvalidValue {
                key: "renewal.jitter",
                reason: format!(
                    "{} must be between 0 and 0.5 and keep fraction ± jitter inside (0, 1) (default 0.1)",
                    r.jitter
                ),
            });
        }
        if r.backoff_initial.is_zero() || r.backoff_max < r.backoff_initial {
            return Err(ConfigError::InvalidValue {
                key: "renewal.backoffMax",
                reason: "backoffInitial must be above zero and backoffMax at least backoffInitial"
                    .to_owned(),
            });
        }
        if self.rotation.poll_interval.is_zero() {
            return Err(ConfigError::InvalidValue {
                key: "rotation.pollInterval",
                reason: "must be above zero (default 10s)".to_owned(),
            });
        }
        if r.issue_timeout.is_zero() {
            return Err(ConfigError::InvalidValue {
                key: "renewal.issueTimeout",
                reason: "must be above zero (default 30s)".to_owned(),
            });
        }
        if self.certificate_provider.kind == ProviderKind::CertManager {
            self.cert_manager
                .validate()
                .map_err(|e| ConfigError::InvalidValue {
                    key: "certManager",
                    reason: e.to_string(),
                })?;
            if self.cert_manager.timeout >= r.issue_timeout {
                return Err(ConfigError::InvalidValue {
                    key: "certManager.timeout",
                    reason: format!(
                        "{} is not shorter than renewal.issueTimeout ({}): the daemon would give \
                         up first, without cert-manager's reason; lower certManager.timeout or \
                         raise renewal.issueTimeout",
                        meshca_provider::format_duration(self.cert_manager.timeout),
                        meshca_provider::format_duration(r.issue_timeout)
                    ),
                });
            }
        }
        for (key, text) in [
            ("sds.listen", &self.sds.listen),
            ("admin.listen", &self.admin.listen),
        ] {
            if !text.is_empty() && text.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::InvalidValue {
                    key,
                    reason: format!(
                        "{text:?} is not an address: write IP:PORT, e.g. 127.0.0.1:15010, or \"\" to disable"
                    ),
                });
            }
        }
        if self.sds.listen.is_empty() && self.sds.unix_socket.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "sds.listen",
                reason: "both sds.listen and sds.unixSocket are empty: SDS needs a listener"
                    .to_owned(),
            });
        }
        SpiffeId::from_short(&self.sds.server_identity, &self.trust_domain()).map_err(|e| {
            ConfigError::InvalidValue {
                key: "sds.serverIdentity",
                reason: e.to_string(),
            }
        })?;
        self.unix_peers()?;
        self.unix_socket_mode()?;
        self.unix_socket_group()?;
        self.sds.validate_limits()?;
        if self.sds.auth == SdsAuth::UnixPeer && self.sds.unix_socket.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "sds.auth",
                reason: "unix-peer authentication needs sds.unixSocket".to_owned(),
            });
        }
        self.extra_trusted_roots()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::InvalidValue {
                key: "log.level",
                reason: format!(
                    "{:?} is not a log filter ({e}): use a level such as info or debug, or meshca=debug,info",
                    self.log.level
                ),
            });
        }
        Ok(())
    }

    /// The leaf lifetime policy ([`crate::lifetime`]): both maxima above the minimum, the
    /// default workload lifetime inside its range, a generated root able to cover the longest
    /// leaf.
    fn check_lifetimes(&self) -> Result<(), ConfigError> {
        use crate::lifetime::{LeafKind, LifetimePolicy, MAX_SERVER_KEY, MAX_WORKLOAD_KEY};
        let provider = &self.certificate_provider;
        for (kind, key) in [
            (LeafKind::Workload, MAX_WORKLOAD_KEY),
            (LeafKind::Server, MAX_SERVER_KEY),
        ] {
            let policy = LifetimePolicy::new(provider, kind);
            policy
                .check(policy.max)
                .map_err(|e| ConfigError::InvalidValue {
                    key,
                    reason: e.to_string(),
                })?;
        }
        LifetimePolicy::new(provider, LeafKind::Workload)
            .check(provider.service_cert_validity_duration)
            .map_err(|e| ConfigError::InvalidValue {
                key: "certificateProvider.serviceCertValidityDuration",
                reason: format!("{e} (default 24h)"),
            })?;
        crate::lifetime::check_ca_lifetime(
            "root (tresor.rootValidityDuration)",
            self.tresor.root_validity_duration,
            provider,
        )
        .map_err(|e| ConfigError::InvalidValue {
            key: "tresor.rootValidityDuration",
            reason: e.to_string(),
        })
    }

    /// The trust domain, validated by [`Config::validate`].
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain::new(&self.trust_domain).unwrap_or_default()
    }

    /// `sds.unixPeers` as a map.
    /// `sds.tokenAudiences` as a list.
    pub fn token_audiences(&self) -> Vec<String> {
        self.sds
            .token_audiences
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn unix_peers(&self) -> Result<HashMap<u32, SpiffeId>, ConfigError> {
        let mut peers = HashMap::new();
        for pair in self
            .sds
            .unix_peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let bad = |reason: String| ConfigError::InvalidValue {
                key: "sds.unixPeers",
                reason: format!(
                    "{pair:?}: {reason}; write uid=<namespace>/<service-account>, comma-separated"
                ),
            };
            let (uid, identity) = pair
                .split_once('=')
                .ok_or_else(|| bad("no '='".to_owned()))?;
            let uid: u32 = uid
                .trim()
                .parse()
                .map_err(|_| bad(format!("{uid:?} is not a uid")))?;
            let identity = SpiffeId::from_short(identity.trim(), &self.trust_domain())
                .map_err(|e| bad(e.to_string()))?;
            peers.insert(uid, identity);
        }
        Ok(peers)
    }

    /// `sds.unixSocketMode`, if set: the permission bits (at most `0777`).
    pub fn unix_socket_mode(&self) -> Result<Option<u32>, ConfigError> {
        let text = self.sds.unix_socket_mode.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let digits = text.strip_prefix("0o").unwrap_or(text);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 => Ok(Some(mode)),
            _ => Err(ConfigError::InvalidValue {
                key: "sds.unixSocketMode",
                reason: format!(
                    "{text:?} is not a file mode: write permission bits in octal, e.g. 0660 \
                     (owner and group) or 0600 (meshca's user only)"
                ),
            }),
        }
    }

    /// `sds.unixSocketGroup`, if set, as a gid: a number, or a name looked up in /etc/group.
    pub fn unix_socket_group(&self) -> Result<Option<u32>, ConfigError> {
        let text = self.sds.unix_socket_group.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if let Ok(gid) = text.parse::<u32>() {
            return Ok(Some(gid));
        }
        let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
        groups
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let gid = fields.nth(1)?.parse::<u32>().ok()?;
                (name == text).then_some(gid)
            })
            .next()
            .map(Some)
            .ok_or_else(|| ConfigError::InvalidValue {
                key: "sds.unixSocketGroup",
                reason: format!(
                    "no group {text:?} in /etc/group: give an existing group name or a numeric gid"
                ),
            })
    }

    /// `extraTrustedRoots`, read and checked: every entry (a file, or inline PEM) must hold at
    /// least one certificate, and every certificate must be a CA. The error names the entry.
    pub fn extra_trusted_roots(&self) -> Result<TrustBundle, ConfigError> {
        let mut bundle = TrustBundle::default();
        for (index, entry) in self.extra_trusted_roots.iter().enumerate() {
            for root in read_trusted_root(index + 1, entry)? {
                bundle.push(root);
            }
        }
        Ok(bundle)
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

/// Keys whose default is "unset", so they do not appear when the defaults are serialised.
const OPTIONAL_KEYS: &[&str] = &[
    "rotation.ackDeadline",
    "admin.tokenFile",
    "vault.address",
    "vault.namespace",
    "vault.caFile",
    "vault.token",
    "vault.tokenFile",
    "vault.appRole.roleId",
    "vault.appRole.secretId",
    "vault.appRole.secretIdFile",
    "vault.appRole.mount",
    "vault.kubernetes.role",
    "vault.kubernetes.mount",
    "vault.kubernetes.tokenFile",
    "vault.secret.name",
    "vault.secret.key",
    "vault.secret.namespace",
];

/// How inline PEM text starts, as opposed to a file path.
const PEM_BEGIN: &str = "-----BEGIN";

/// The certificates of one `extraTrustedRoots` entry (1-based `number`), each checked to be a
/// CA. Inline text is never quoted back in errors: it is named by its position.
fn read_trusted_root(
    number: usize,
    entry: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let inline = entry.trim_start().starts_with(PEM_BEGIN);
    let name = if inline {
        format!("entry {number} (inline PEM)")
    } else {
        format!("entry {number} ({})", entry.trim())
    };
    let bad = |reason: String| ConfigError::InvalidValue {
        key: "extraTrustedRoots",
        reason: format!("{name}: {reason}"),
    };
    let text = if inline {
        entry.to_owned()
    } else if entry.trim().is_empty() {
        return Err(bad(
            "is empty: give a PEM file path or inline PEM text starting with -----BEGIN \
             CERTIFICATE-----"
                .to_owned(),
        ));
    } else {
        std::fs::read_to_string(entry.trim()).map_err(|e| {
            bad(format!(
                "cannot read the file: {e}; give a readable PEM file path, or the PEM text \
                 itself starting with -----BEGIN CERTIFICATE-----"
            ))
        })?
    };
    let roots = meshca_provider::x509::certificates_from_pem(&text)
        .map_err(|e| bad(format!("{e}: expected PEM CERTIFICATE blocks")))?;
    if roots.is_empty() {
        return Err(bad(
            "holds no PEM certificate (no -----BEGIN CERTIFICATE----- block): give the CA's \
             root certificate in PEM"
                .to_owned(),
        ));
    }
    for (position, root) in roots.iter().enumerate() {
        let which = if roots.len() > 1 {
            format!("certificate {} of {}", position + 1, roots.len())
        } else {
            "the certificate".to_owned()
        };
        let info = CertificateInfo::parse(root)
            .map_err(|e| bad(format!("{which} cannot be parsed: {e}")))?;
        if !info.is_ca {
            return Err(bad(format!(
                "{which} ({}) is not a CA certificate (basicConstraints CA:true is missing): \
                 give the root that signs the peers' certificates, not a leaf",
                info.subject
            )));
        }
    }
    Ok(roots)
}

/// A file mode written in octal. YAML reads `0660` as a string, but `660` and `0o660` as
/// numbers, which would be ambiguous: a number is refused with the spelling to use.
fn octal_mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Text(String),
        Number(u64),
    }
    match Option::<Mode>::deserialize(deserializer)? {
        None => Ok(String::new()),
        Some(Mode::Text(text)) => Ok(text),
        Some(Mode::Number(n)) => Err(D::Error::custom(format!(
            "sds.unixSocketMode {n} is read as a decimal number: write the octal mode with a \
             leading zero, as a string if need be (\"0660\")"
        ))),
    }
}

/// A name or a number (`--set sds.unixSocketGroup=1337` is a YAML number), kept as text.
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Text(String),
        Number(u64),
    }
    Ok(match Option::<Text>::deserialize(deserializer)? {
        None => String::new(),
        Some(Text::Text(text)) => text,
        Some(Text::Number(n)) => n.to_string(),
    })
}

/// Reads a list from a YAML sequence, or from one string: inline PEM as one entry, anything
/// else as comma-separated paths (how `--set` and `MESHCA_*` give a list).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::Many(entries)) => entries,
        Some(OneOrMany::One(text)) if text.trim_start().starts_with(PEM_BEGIN) => vec![text],
        Some(OneOrMany::One(text)) => text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// A DNS-1123 label: what Kubernetes accepts as a namespace name.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A DNS-1123 subdomain: what Kubernetes accepts as most object names (Secrets included).
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// Every leaf key of the configuration, dotted (`certificateProvider.kind`).
pub fn known_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let tree = serde_yaml::to_value(Config::default()).unwrap_or(Value::Null);
    collect_keys(&tree, String::new(), &mut keys);
    keys.extend(OPTIONAL_KEYS.iter().map(|k| (*k).to_owned()));
    keys
}

/// The environment variable for a dotted key: `certificateProvider.kind` →
/// `MESHCA_CERTIFICATE_PROVIDER_KIND`.
pub fn env_name(key: &str) -> String {
    let mut name = ENV_PREFIX.to_owned();
    for (i, part) in key.split('.').enumerate() {
        if i > 0 {
            name.push('_');
        }
        for (j, c) in part.chars().enumerate() {
            if c.is_ascii_uppercase() && j > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
    }
    name
}

fn collect_keys(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                if let Some(k) = k.as_str() {
                    let path = if prefix.is_empty() {
                        k.to_owned()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    collect_keys(v, path, out);
                }
            }
        }
        _ => out.push(prefix),
    }
}

fn set_path(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    for part in key.split('.') {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else {
            unreachable!("made a mapping just above")
        };
        node = map
            .entry(Value::String(part.to_owned()))
            .or_insert(Value::Null);
    }
    *node = value;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn defaults_are_the_embedded_tresor_setup() {
        let config = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(config.certificate_provider.kind, ProviderKind::Tresor);
        assert_eq!(
            config.certificate_provider.service_cert_validity_duration,
            Duration::from_secs(86_400)
        );
        assert_eq!(config.sds_listen().unwrap().to_string(), "127.0.0.1:15010");
        assert!(known_keys().contains(&"certificateProvider.kind".to_owned()));
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let file = write(
            "certificateProvider:\n  serviceCertValidityDuration: 12h\ntrustDomain: file.example\n",
        );
        let mut overrides = Overrides::from_env([
            ("MESHCA_TRUST_DOMAIN".to_owned(), "env.example".to_owned()),
            (
                "MESHCA_CERTIFICATE_PROVIDER_SERVICE_CERT_VALIDITY_DURATION".to_owned(),
                "6h".to_owned(),
            ),
            ("MESHCA_UNRELATED".to_owned(), "x".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ]);
        overrides
            .set("certificateProvider.serviceCertValidityDuration=90m")
            .unwrap();
        let config = Config::load(Some(file.path()), &overrides).unwrap();
        assert_eq!(config.trust_domain, "env.example");
        assert_eq!(
            config.certificate_provider.service_cert_validity_duration,
            Duration::from_secs(90 * 60)
        );
        let from_file = Config::load(Some(file.path()), &Overrides::default()).unwrap();
        assert_eq!(
            from_file
                .certificate_provider
                .service_cert_validity_duration,
            Duration::from_secs(12 * 3600)
        );
    }

    #[test]
    fn optional_keys_are_real_keys() {
        for key in OPTIONAL_KEYS {
            let mut overrides = Overrides::default();
            let value = if key.ends_with("File") {
                "/tmp/x"
            } else if key.ends_with("Deadline") {
                "5m"
            } else {
                "x"
            };
            overrides.set(&format!("{key}={value}")).unwrap();
            Config::load(None, &overrides).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        let overrides =
            Overrides::from_env([("MESHCA_VAULT_TOKEN".to_owned(), "s.abc".to_owned())]);
        let config = Config::load(None, &overrides).unwrap();
        assert!(config.vault.token.is_some());
        assert!(
            !format!("{config:?}").contains("s.abc"),
            "the token leaked into Debug"
        );
    }

    #[test]
    fn an_empty_value_is_an_empty_string_and_rotation_durations_parse() {
        let mut overrides = Overrides::default();
        overrides.set("admin.listen=").unwrap();
        overrides.set("rotation.ackDeadline=1h30m").unwrap();
        let config = Config::load(None, &overrides).unwrap();
        assert_eq!(config.admin_listen(), None);
        assert_eq!(
            config.rotation.ack_deadline,
            Some(Duration::from_secs(5400))
        );
        assert_eq!(Config::default().rotation.ack_deadline, None);
        let mut overrides = Overrides::default();
        overrides.set("rotation.ackDeadline=soon").unwrap();
        let err = Config::load(None, &overrides).unwrap_err().to_string();
        assert!(err.contains("rotation.ackDeadline"), "{err}");
    }

    #[test]
    fn sds_limits_reach_the_server_settings() {
        let defaults = crate::sds::SdsLimits::default();
        assert_eq!(Config::default().sds.limits(), defaults);
        let mut overrides = Overrides::default();
        for setting in [
            "sds.maxStreamsPerIdentity=5",
            "sds.maxConnections=300",
            "sds.handshakeTimeout=3s",
            "sds.prefaceTimeout=2s",
            "sds.connectionIdleTimeout=2m",
            "sds.firstRequestTimeout=45s",
        ] {
            overrides.set(setting).unwrap();
        }
        let limits = Config::load(None, &overrides).unwrap().sds.limits();
        assert_eq!(limits.max_streams_per_identity, 5);
        assert_eq!(limits.max_connections, 300);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(3));
        assert_eq!(limits.preface_timeout, Duration::from_secs(2));
        assert_eq!(limits.connection_idle_timeout, Duration::from_secs(120));
        assert_eq!(limits.first_request_timeout, Duration::from_secs(45));
        assert_eq!(limits.max_streams, defaults.max_streams);
    }

    #[test]
    fn cert_manager_section_is_configurable() {
        let file = write("certManager:\n  issuerKind: ClusterIssuer\n  timeout: 2m\n");
        let overrides = Overrides::from_env([(
            "MESHCA_CERT_MANAGER_CA_BUNDLE_SECRET_NAME".to_owned(),
            "fsm-ca-bundle".to_owned(),
        )]);
        let config = Config::load(Some(file.path()), &overrides).unwrap();
        assert_eq!(config.cert_manager.issuer_kind, "ClusterIssuer");
        assert_eq!(config.cert_manager.timeout, Duration::from_secs(120));
        assert_eq!(config.cert_manager.ca_bundle_secret.name, "fsm-ca-bundle");
        assert!(known_keys().contains(&"certManager.preserveCertificateRequests".to_owned()));
        // Selected, its timeout must be shorter than the daemon's issue timeout.
        let mut overrides = Overrides::default();
        overrides
            .set("certificateProvider.kind=cert-manager")
            .unwrap();
        let error = Config::load(Some(file.path()), &overrides).unwrap_err();
        assert!(error.to_string().contains("certManager.timeout"), "{error}");
        overrides.set("renewal.issueTimeout=3m").unwrap();
        Config::load(Some(file.path()), &overrides).unwrap();
    }

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

    #[test]
    fn unix_socket_mode_is_octal_and_group_a_name_or_gid() {
        let load = |pairs: &[&str]| {
            let mut overrides = Overrides::default();
            for pair in pairs {
                overrides.set(pair).unwrap();
            }
            Config::load(None, &overrides)
        };
        let config = load(&["sds.unixSocketMode=0660", "sds.unixSocketGroup=0"]).unwrap();
        assert_eq!(config.unix_socket_mode().unwrap(), Some(0o660));
        assert_eq!(config.unix_socket_group().unwrap(), Some(0));
        let config = load(&["sds.unixSocketGroup=root"]).unwrap();
        assert_eq!(config.unix_socket_group().unwrap(), Some(0));
        assert_eq!(Config::default().unix_socket_mode().unwrap(), None);
        // 660 without the leading zero is a YAML number: refused, not read as 0o1224.
        let file = write("sds:\n  unixSocketMode: 660\n");
        let err = Config::load(Some(file.path()), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("leading zero"), "{err}");
    }

    #[test]
    fn env_names_follow_the_keys() {
        assert_eq!(
            env_name("certificateProvider.kind"),
            "MESHCA_CERTIFICATE_PROVIDER_KIND"
        );
        assert_eq!(env_name("renewal.backoffMax"), "MESHCA_RENEWAL_BACKOFF_MAX");
        assert_eq!(
            env_name("caBundleSecretName"),
            "MESHCA_CA_BUNDLE_SECRET_NAME"
        );
    }

    #[test]
    fn bad_values_name_where_they_came_from() {
        let file = write("certificateProvider:\n  serviceCertValidityDuration: 3d\n");
        let err = Config::load(Some(file.path()), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&file.path().display().to_string()), "{text}");
        assert!(text.contains("unknown unit"), "{text}");

        let file = write("certificateProvider:\n  kindd: vault\n");
        let text = Config::load(Some(file.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("kindd"), "{text}");

        let overrides =
            Overrides::from_env([("MESHCA_RENEWAL_FLOOR".to_owned(), "soon".to_owned())]);
        let text = Config::load(None, &overrides).unwrap_err().to_string();
        assert!(text.contains("MESHCA_RENEWAL_FLOOR"), "{text}");

        let mut overrides = Overrides::default();
        overrides.set("certificateProvider.kind=vaultt").unwrap();
        let text = Config::load(None, &overrides).unwrap_err().to_string();
        assert!(
            text.contains("--set certificateProvider.kind=vaultt"),
            "{text}"
        );

        let mut overrides = Overrides::default();
        overrides.set("certificateProvider.knd=vault").unwrap();
        assert!(matches!(
            Config::load(None, &overrides),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(Overrides::default().set("novalue").is_err());
    }

    #[test]
    fn nonsense_values_are_refused() {
        for (key, value) in [
            ("renewal.fraction", "1.5"),
            ("renewal.jitter", "0.6"),
            ("certificateProvider.serviceCertValidityDuration", "1s"),
            ("certificateProvider.serviceCertValidityDuration", "2161h"),
            ("certificateProvider.maxServiceCertValidityDuration", "5s"),
            ("certificateProvider.maxServerCertValidityDuration", "0s"),
            ("tresor.rootValidityDuration", "0s"),
            ("tresor.rootValidityDuration", "720h"),
            ("sds.listen", "localhost"),
            ("trustDomain", "Not Valid"),
            ("renewal.issueTimeout", "0s"),
            ("log.level", "meshca=loud"),
            ("sds.unixPeers", "1000:a/b"),
            ("sds.unixSocketMode", "0999"),
            ("sds.unixSocketMode", "01777"),
            ("sds.unixSocketGroup", "no-such-group-here"),
            ("sds.unixPeers", "root=a/b"),
            ("sds.serverIdentity", "meshca"),
            ("sds.auth", "unix-peer"),
            ("sds.maxStreamsPerIdentity", "0"),
            ("sds.maxConnections", "0"),
            ("sds.handshakeTimeout", "0s"),
            ("sds.prefaceTimeout", "0s"),
            ("sds.firstRequestTimeout", "0s"),
            ("sds.connectionIdleTimeout", "0s"),
        ] {
            let mut overrides = Overrides::default();
            overrides.set(&format!("{key}={value}")).unwrap();
            let err = Config::load(None, &overrides).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidValue { .. }),
                "{key}={value}: {err}"
            );
        }
    }

    #[test]
    fn lifetimes_outside_the_policy_name_the_limit_and_its_key() {
        let load = |pairs: &[&str]| {
            let mut overrides = Overrides::default();
            for pair in pairs {
                overrides.set(pair).unwrap();
            }
            Config::load(None, &overrides)
        };
        let err = load(&["certificateProvider.serviceCertValidityDuration=2200h"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("certificateProvider.serviceCertValidityDuration")
                && err.contains("2200h is greater than the maximum allowed 2160h")
                && err.contains("raise certificateProvider.maxServiceCertValidityDuration"),
            "{err}"
        );
        // Raising the maximum makes room for it; the root must still cover the longest leaf.
        let config = load(&[
            "certificateProvider.serviceCertValidityDuration=2200h",
            "certificateProvider.maxServiceCertValidityDuration=2200h",
        ])
        .unwrap();
        assert_eq!(
            config
                .certificate_provider
                .max_service_cert_validity_duration,
            Duration::from_secs(2200 * 3600)
        );
        let err = load(&["tresor.rootValidityDuration=4000h"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tresor.rootValidityDuration")
                && err.contains("shorter than the longest leaf it must cover (8760h"),
            "{err}"
        );
        load(&[
            "tresor.rootValidityDuration=4000h",
            "certificateProvider.maxServerCertValidityDuration=4000h",
        ])
        .unwrap();
    }
}
