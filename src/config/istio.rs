//! `istio.*`: the Istio CA API listener (istio-agent and ztunnel ask it to sign CSRs), and
//! `trustDistribution.*`: the trust bundle published into the cluster for workloads to mount.

use serde::{Deserialize, Serialize};

use super::ConfigError;

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
}

impl Default for IstioConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "0.0.0.0:15012".to_owned(),
            dns_names: "istiod.istio-system.svc".to_owned(),
            token_audiences: "istio-ca".to_owned(),
            trusted_node_agents: "istio-system/ztunnel".to_owned(),
        }
    }
}

impl IstioConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// `trustDistribution.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TrustDistributionConfig {
    /// A ConfigMap holding the trust bundle in every namespace.
    pub config_map: RootCertConfigMapConfig,
    /// A cluster-scoped `ClusterTrustBundle` (`certificates.k8s.io`) holding the trust bundle.
    pub cluster_trust_bundle: ClusterTrustBundleConfig,
}

impl TrustDistributionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
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
