//! `istio.*`: the Istio CA API listener (istio-agent and ztunnel ask it to sign CSRs), and
//! `trustDistribution.*`: the trust bundle published into the cluster for workloads to mount.

use std::net::SocketAddr;
use std::time::Duration;

use meshca_provider::duration::serde_go;
use meshca_provider::{DnsName, SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::transport::{
    Listener, TransportKeys, TransportLimits, check_above_zero, check_count, transport_keys,
    transport_limits_of,
};
use super::{is_dns_label, is_dns_subdomain};
use crate::istio::IstioLimits;

/// `istio.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IstioConfig {
    /// Serve `istio.v1.auth.IstioCertificateService` (off by default).
    pub enabled: bool,
    /// TCP address of the Istio CA listener (TLS). Istio's agents use port 15012.
    pub listen: String,
    /// Comma-separated DNS names of the listener's serving certificate: the names istio-agent
    /// and ztunnel verify (`CA_ADDR`'s host, e.g. `istiod.istio-system.svc`).
    pub dns_names: String,
    /// Comma-separated audiences a service-account token must be meant for (Istio's agents
    /// ask for `istio-ca`).
    pub token_audiences: String,
    /// Comma-separated `<ns>/<sa>` identities trusted as node agents: they may ask for another
    /// identity's certificate (request metadata `ImpersonatedIdentity`) for a pod of that
    /// identity scheduled on their own node (ztunnel). Empty: nobody may.
    pub trusted_node_agents: String,

    // The listener's limits (see `crate::istio::IstioLimits`).
    /// CreateCertificate calls signing at once; more wait up to `signingQueueTimeout`, then
    /// are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_signings: usize,
    /// How long a call may wait for one of `maxConcurrentSignings`.
    #[serde(with = "serde_go")]
    pub signing_queue_timeout: Duration,
    /// `maxConnections`, `maxMessageBytes` (a CSR is about 1 KiB; beyond: OUT_OF_RANGE) and the
    /// handshake, preface and idle timeouts, as the SDS listeners have them.
    #[serde(flatten)]
    pub transport: TransportLimits<IstioListener>,
}

/// The Istio CA listener's [`TransportLimits`]: `istio.*`, defaults from [`IstioLimits`].
#[derive(Debug, Clone, PartialEq)]
pub struct IstioListener;

impl Listener for IstioListener {
    const KEYS: TransportKeys = transport_keys!("istio");
    const MIN_MESSAGE_BYTES: (usize, &'static str) = (
        IstioLimits::MIN_MESSAGE_BYTES,
        ": a smaller message cannot hold a CSR",
    );
    const MAX_MESSAGE_BYTES: usize = IstioLimits::MAX_MESSAGE_BYTES_CEILING;

    fn defaults() -> TransportLimits<Self> {
        transport_limits_of!(IstioLimits::default())
    }
}

impl Default for IstioConfig {
    fn default() -> Self {
        let limits = IstioLimits::default();
        Self {
            enabled: false,
            listen: "0.0.0.0:15012".to_owned(),
            dns_names: "istiod.istio-system.svc".to_owned(),
            token_audiences: "istio-ca".to_owned(),
            trusted_node_agents: "istio-system/ztunnel".to_owned(),
            max_concurrent_signings: limits.max_concurrent_signings,
            signing_queue_timeout: limits.signing_queue_timeout,
            transport: TransportLimits::default(),
        }
    }
}

impl IstioConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listener()?;
        // Whether `<ns>/<sa>` is valid does not depend on the trust domain.
        self.trusted_node_agents(&TrustDomain::default())?;
        Ok(())
    }

    /// `istio.listen`, if it is an address.
    pub fn listen_address(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// `istio.dnsNames`, each a valid DNS name (checked by [`IstioConfig::validate`]).
    pub fn dns_names(&self) -> Result<Vec<DnsName>, ConfigError> {
        let names: Vec<DnsName> = split_list(&self.dns_names)
            .map(|name| {
                DnsName::new(name).map_err(|e| ConfigError::InvalidValue {
                    key: "istio.dnsNames",
                    reason: format!(
                        "{e}: list the DNS names agents reach meshca by, comma-separated \
                         (default istiod.istio-system.svc)"
                    ),
                })
            })
            .collect::<Result<_, _>>()?;
        if names.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "istio.dnsNames",
                reason: "is empty: the serving certificate needs at least one DNS name, the \
                         host of the agents' CA_ADDR (e.g. istiod.istio-system.svc)"
                    .to_owned(),
            });
        }
        Ok(names)
    }

    /// `istio.tokenAudiences` as a list.
    pub fn token_audiences(&self) -> Vec<String> {
        split_list(&self.token_audiences)
            .map(str::to_owned)
            .collect()
    }

    /// The listener's limits.
    pub fn limits(&self) -> IstioLimits {
        IstioLimits {
            max_connections: self.transport.max_connections,
            max_message_bytes: self.transport.max_message_bytes,
            max_concurrent_signings: self.max_concurrent_signings,
            signing_queue_timeout: self.signing_queue_timeout,
            handshake_timeout: self.transport.handshake_timeout,
            preface_timeout: self.transport.preface_timeout,
            connection_idle_timeout: self.transport.connection_idle_timeout,
            ..IstioLimits::default()
        }
    }

    /// The listener's address, names and limits (checked whether or not `istio.enabled`, so a
    /// mistake shows before it is switched on).
    /// `istio.trustedNodeAgents` as identities in `trust_domain`, without duplicates.
    pub fn trusted_node_agents(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Vec<SpiffeId>, ConfigError> {
        let mut agents: Vec<SpiffeId> = Vec::new();
        for entry in self
            .trusted_node_agents
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let agent = SpiffeId::from_short(entry, trust_domain).map_err(|e| {
                ConfigError::InvalidValue {
                    key: "istio.trustedNodeAgents",
                    reason: format!(
                        "{e}; write comma-separated <namespace>/<service-account> of the node \
                         agents (e.g. istio-system/ztunnel), or leave it empty so that nobody \
                         may ask for another identity's certificate"
                    ),
                }
            })?;
            if !agents.contains(&agent) {
                agents.push(agent);
            }
        }
        Ok(agents)
    }

    fn validate_listener(&self) -> Result<(), ConfigError> {
        if self.listen_address().is_none() {
            return Err(ConfigError::InvalidValue {
                key: "istio.listen",
                reason: format!(
                    "{:?} is not an address: use <ip>:<port>, e.g. 0.0.0.0:15012 (Istio's \
                     agents use port 15012)",
                    self.listen
                ),
            });
        }
        self.dns_names()?;
        let defaults = IstioLimits::default();
        check_count(
            "istio.maxConcurrentSignings",
            self.max_concurrent_signings,
            defaults.max_concurrent_signings,
            (1, ""),
            tokio::sync::Semaphore::MAX_PERMITS,
        )?;
        check_above_zero(
            "istio.signingQueueTimeout",
            self.signing_queue_timeout,
            defaults.signing_queue_timeout,
        )?;
        self.transport.validate()
    }
}

/// The non-empty, trimmed entries of a comma-separated list.
fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `trustDistribution.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TrustDistributionConfig {
    /// A ConfigMap holding the trust bundle in every namespace.
    pub config_map: RootCertConfigMapConfig,
    /// A cluster-scoped `ClusterTrustBundle` (`certificates.k8s.io`) holding the trust bundle.
    pub cluster_trust_bundle: ClusterTrustBundleConfig,
    /// How often everything published is listed again and repaired, even if no watch event
    /// said it changed (watch events repair edits and deletions at once; this catches missed
    /// ones). Go duration, default `5m`.
    #[serde(with = "serde_go")]
    pub resync_interval: Duration,
}

impl Default for TrustDistributionConfig {
    fn default() -> Self {
        Self {
            config_map: RootCertConfigMapConfig::default(),
            cluster_trust_bundle: ClusterTrustBundleConfig::default(),
            resync_interval: Duration::from_secs(300),
        }
    }
}

impl TrustDistributionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::InvalidValue { key, reason };
        let config_map = &self.config_map;
        if !is_dns_subdomain(&config_map.name) {
            return Err(invalid(
                "trustDistribution.configMap.name",
                format!(
                    "{:?} is not a Kubernetes object name (lower-case letters, digits, '-' and \
                     '.', at most 253 characters; Istio's agents read istio-ca-root-cert)",
                    config_map.name
                ),
            ));
        }
        if !is_config_map_key(&config_map.key) {
            return Err(invalid(
                "trustDistribution.configMap.key",
                format!(
                    "{:?} is not a ConfigMap key (letters, digits, '-', '_' and '.', at most \
                     253 characters, not '.' or '..'; Istio's agents read root-cert.pem)",
                    config_map.key
                ),
            ));
        }
        if let Some(bad) = config_map
            .excluded_namespaces()
            .find(|namespace| !is_dns_label(namespace))
        {
            return Err(invalid(
                "trustDistribution.configMap.excludeNamespaces",
                format!(
                    "{bad:?} is not a namespace name (lower-case letters, digits and '-', at \
                     most 63 characters); write a comma-separated list such as \
                     kube-system,kube-public"
                ),
            ));
        }
        if let Err(reason) = check_signer_name(&self.cluster_trust_bundle.signer_name) {
            return Err(invalid(
                "trustDistribution.clusterTrustBundle.signerName",
                format!(
                    "{:?} {reason}; write <domain>/<path> under a domain you own (default \
                     meshca.dev/trust-bundle)",
                    self.cluster_trust_bundle.signer_name
                ),
            ));
        }
        if self.resync_interval < Duration::from_secs(1) {
            return Err(invalid(
                "trustDistribution.resyncInterval",
                "must be at least 1s (default 5m)".to_owned(),
            ));
        }
        Ok(())
    }
}

/// A ConfigMap data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
fn is_config_map_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A signer name as Kubernetes accepts it: `<domain>/<path>`, the domain a DNS subdomain, the
/// path non-empty (its characters are those of an object name, since the ClusterTrustBundle's
/// name is made of them).
fn check_signer_name(signer: &str) -> Result<(), &'static str> {
    let Some((domain, path)) = signer.split_once('/') else {
        return Err("has no '/'");
    };
    if !domain.contains('.') || !is_dns_subdomain(domain) {
        return Err("does not start with a DNS domain");
    }
    if path.is_empty() || signer.len() > 200 {
        return Err("has an empty path after the domain, or is over 200 characters");
    }
    if !path
        .split('/')
        .all(|part| !part.is_empty() && is_dns_subdomain(part))
    {
        return Err(
            "has a path that is not lower-case letters, digits, '-', '.' and '/' separators",
        );
    }
    Ok(())
}

/// `trustDistribution.configMap.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RootCertConfigMapConfig {
    /// Keep the ConfigMap in every namespace (off by default).
    pub enabled: bool,
    /// Its name: Istio's agents read `istio-ca-root-cert`.
    pub name: String,
    /// The key holding the PEM bundle: Istio's agents read `root-cert.pem`.
    pub key: String,
    /// Comma-separated namespaces that get no ConfigMap.
    pub exclude_namespaces: String,
}

impl Default for RootCertConfigMapConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            name: "istio-ca-root-cert".to_owned(),
            key: "root-cert.pem".to_owned(),
            exclude_namespaces: "kube-system,kube-public,kube-node-lease".to_owned(),
        }
    }
}

impl RootCertConfigMapConfig {
    /// The namespaces listed in `excludeNamespaces`, trimmed, empty entries skipped.
    pub fn excluded_namespaces(&self) -> impl Iterator<Item = &str> {
        self.exclude_namespaces
            .split(',')
            .map(str::trim)
            .filter(|namespace| !namespace.is_empty())
    }
}

/// `trustDistribution.clusterTrustBundle.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterTrustBundleConfig {
    /// Keep a `ClusterTrustBundle` object (off by default; the cluster must serve
    /// `certificates.k8s.io` ClusterTrustBundles).
    pub enabled: bool,
    /// Its signer name, under a domain meshca owns.
    pub signer_name: String,
}

impl Default for ClusterTrustBundleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            signer_name: "meshca.dev/trust-bundle".to_owned(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::load;
    use super::*;
    use crate::config::ConfigError;

    #[test]
    fn the_listener_settings_have_working_defaults() {
        let config = load(&[]).unwrap();
        let istio = &config.istio;
        assert_eq!(istio.listen_address().unwrap().port(), 15012);
        assert_eq!(
            istio.dns_names().unwrap(),
            vec![DnsName::new("istiod.istio-system.svc").unwrap()]
        );
        assert_eq!(istio.token_audiences(), vec!["istio-ca".to_owned()]);
        assert_eq!(istio.limits(), IstioLimits::default());
        let config = load(&[
            "istio.maxConcurrentSignings=8",
            "istio.signingQueueTimeout=2s",
            "istio.dnsNames=a.example, b.example",
        ])
        .unwrap();
        assert_eq!(config.istio.limits().max_concurrent_signings, 8);
        assert_eq!(
            config.istio.limits().signing_queue_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(config.istio.dns_names().unwrap().len(), 2);
    }

    #[test]
    fn bad_listener_settings_name_their_key() {
        for (setting, key) in [
            ("istio.listen=15012", "istio.listen"),
            ("istio.dnsNames=", "istio.dnsNames"),
            ("istio.dnsNames=not a name", "istio.dnsNames"),
            ("istio.maxConnections=0", "istio.maxConnections"),
            (
                "istio.maxConcurrentSignings=0",
                "istio.maxConcurrentSignings",
            ),
            ("istio.maxMessageBytes=100", "istio.maxMessageBytes"),
            ("istio.maxMessageBytes=0", "istio.maxMessageBytes"),
            ("istio.signingQueueTimeout=0s", "istio.signingQueueTimeout"),
            ("istio.handshakeTimeout=0s", "istio.handshakeTimeout"),
            ("istio.prefaceTimeout=0s", "istio.prefaceTimeout"),
            (
                "istio.connectionIdleTimeout=0s",
                "istio.connectionIdleTimeout",
            ),
        ] {
            let error = load(&[setting]).unwrap_err().to_string();
            assert!(error.contains(key), "{setting}: {error}");
        }
    }

    fn agents(value: &str) -> Result<Vec<String>, ConfigError> {
        let config = IstioConfig {
            trusted_node_agents: value.to_owned(),
            ..IstioConfig::default()
        };
        config.validate()?;
        Ok(config
            .trusted_node_agents(&TrustDomain::new("example.org").unwrap())?
            .iter()
            .map(SpiffeId::short)
            .collect())
    }

    #[test]
    fn trusted_node_agents_are_comma_separated_identities() {
        assert_eq!(
            agents(&IstioConfig::default().trusted_node_agents).unwrap(),
            ["istio-system/ztunnel"]
        );
        assert_eq!(
            agents(" istio-system/ztunnel , kube-system/agent,istio-system/ztunnel,").unwrap(),
            ["istio-system/ztunnel", "kube-system/agent"]
        );
        assert!(agents("").unwrap().is_empty(), "empty: nobody");
        for bad in [
            "ztunnel",
            "istio-system/ztunnel/x",
            "Istio/ztunnel",
            "a/b,c",
        ] {
            let error = agents(bad).unwrap_err().to_string();
            assert!(
                error.contains("istio.trustedNodeAgents") && error.contains("<namespace>/"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn trust_distribution_values_are_checked_and_the_error_names_the_key() {
        for (setting, key) in [
            (
                "trustDistribution.configMap.name=Istio_Root",
                "trustDistribution.configMap.name",
            ),
            (
                "trustDistribution.configMap.key=root cert.pem",
                "trustDistribution.configMap.key",
            ),
            (
                "trustDistribution.configMap.key=..",
                "trustDistribution.configMap.key",
            ),
            (
                "trustDistribution.configMap.excludeNamespaces=kube-system,Bad_NS",
                "trustDistribution.configMap.excludeNamespaces",
            ),
            (
                "trustDistribution.clusterTrustBundle.signerName=trust-bundle",
                "trustDistribution.clusterTrustBundle.signerName",
            ),
            (
                "trustDistribution.clusterTrustBundle.signerName=localhost/roots",
                "trustDistribution.clusterTrustBundle.signerName",
            ),
            (
                "trustDistribution.clusterTrustBundle.signerName=meshca.dev/",
                "trustDistribution.clusterTrustBundle.signerName",
            ),
            (
                "trustDistribution.clusterTrustBundle.signerName=meshca.dev/Trust:Bundle",
                "trustDistribution.clusterTrustBundle.signerName",
            ),
            (
                "trustDistribution.resyncInterval=0s",
                "trustDistribution.resyncInterval",
            ),
        ] {
            let err = load(&[setting]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::InvalidValue { key: k, .. } if *k == key),
                "{setting}: {err}"
            );
            assert!(err.to_string().contains(key), "{setting}: {err}");
        }
        let config = load(&[
            "trustDistribution.configMap.enabled=true",
            "trustDistribution.configMap.excludeNamespaces= kube-system , ,istio-system",
            "trustDistribution.clusterTrustBundle.signerName=example.com/mesh/roots",
        ])
        .unwrap();
        assert_eq!(
            config
                .trust_distribution
                .config_map
                .excluded_namespaces()
                .collect::<Vec<_>>(),
            ["kube-system", "istio-system"]
        );
        assert_eq!(
            config.trust_distribution.resync_interval,
            std::time::Duration::from_secs(300)
        );
    }
}
