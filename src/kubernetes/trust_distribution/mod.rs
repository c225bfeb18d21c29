//! Trust bundle distribution: the pipeline's trust bundle (every root it trusts — both roots
//! during a Tresor root rotation — and `extraTrustedRoots`) published into the cluster for
//! workloads that read it there rather than over SDS, as Istio's agents do.
//!
//! - **A ConfigMap in every namespace** (`trustDistribution.configMap.*`, Istio's
//!   `istio-ca-root-cert` with the key `root-cert.pem`): `config_maps.rs` keeps one per
//!   namespace, watching namespaces and the ConfigMaps of that name across the cluster, so a new
//!   namespace gets it promptly and an edited or deleted one is restored; `config_map_write.rs`
//!   is the read-then-write protocol for one namespace (create; update carrying the
//!   resourceVersion read; on `409` read again).
//! - **A `ClusterTrustBundle`** (`trustDistribution.clusterTrustBundle.*`,
//!   `cluster_trust_bundle.rs`) named after its signer, for clusters that serve
//!   `certificates.k8s.io` ClusterTrustBundles (`v1`, GA in Kubernetes 1.37, or `v1beta1`,
//!   1.33–1.36 with the `ClusterTrustBundle` feature gate and runtime-config); a cluster that
//!   serves neither gets one warning saying how to enable it, and the ConfigMaps still work.
//! - Both follow the cluster with `list_watch.rs`: a list, then a watch from the list's
//!   resourceVersion, again after errors (with capped, jittered backoff) and at once after
//!   `410 Gone`, and a fresh list every `trustDistribution.resyncInterval`, so drift is
//!   repaired even if a watch event was missed.
//! - `status.rs`: what every namespace's ConfigMap holds (root fingerprints), for the root
//!   rotation's gate: `meshca rotate root advance` does not let a new root sign before every
//!   namespace holds it (`crate::rotation`).
//! - `metrics.rs`: [`DistributionMetrics`], on `/metrics`: objects written and writes failed,
//!   namespaces served and behind, and whether (and when last) each kind held the served
//!   bundle everywhere.
//!
//! **Ownership.** What meshca writes carries `app.kubernetes.io/managed-by: meshca`. A
//! same-named object without that label is someone else's (istiod's own, an earlier
//! installation's): meshca never overwrites it and logs a warning saying how to hand it over
//! (delete it, or add the label). Unlike istiod, which overwrites: a CA that silently replaces
//! another's trust anchors could break the workloads that rely on them, so handing over is an
//! explicit, per-object act. ConfigMaps in excluded namespaces are neither written nor removed.
//!
//! The entry point is [`TrustDistribution`]: [`TrustDistribution::start`] in `meshca serve`, or
//! [`TrustDistribution::new`] + [`TrustDistribution::spawn`] with a given client.

mod cluster_trust_bundle;
mod config_map_write;
mod config_maps;
mod list_watch;
mod metrics;
mod status;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meshca_provider::TrustBundle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::TrustDistributionConfig;

pub use metrics::{DistributionMetrics, DistributionMetricsSnapshot, KindSnapshot};
pub use status::DistributionStatus;

/// The label on every object meshca writes (the same as on its managed Secrets), and its value.
pub use super::managed_secret::{MANAGED_BY, MANAGED_BY_LABEL};
/// The name of the ClusterTrustBundle after its signer's prefix
/// (`meshca.dev:trust-bundle:roots`).
pub const CLUSTER_TRUST_BUNDLE_SUFFIX: &str = "roots";
/// How many ConfigMap writes run at once: enough to fill a new cluster's namespaces quickly,
/// few enough not to flood the API server (its default client rate limits allow ~5–10/s
/// sustained; these are short requests).
pub const MAX_CONCURRENT_WRITES: usize = 8;

/// What to publish where: `trustDistribution.*` for one cluster.
#[derive(Clone)]
pub struct TrustDistribution {
    client: kube::Client,
    config_map: Option<ConfigMapSettings>,
    cluster_trust_bundle: Option<ClusterTrustBundleSettings>,
    resync: Duration,
}

/// `trustDistribution.configMap.*`, checked.
#[derive(Debug, Clone)]
pub(crate) struct ConfigMapSettings {
    /// The ConfigMap's name.
    pub(crate) name: String,
    /// The data key holding the PEM bundle.
    pub(crate) key: String,
    /// Namespaces that get none.
    pub(crate) excluded: BTreeSet<String>,
}

/// `trustDistribution.clusterTrustBundle.*`, checked.
#[derive(Debug, Clone)]
pub(crate) struct ClusterTrustBundleSettings {
    /// `spec.signerName`.
    pub(crate) signer_name: String,
    /// The object's name: the signer name with `/` replaced by `:`, then `:roots`, as the API
    /// server requires of a bundle that names a signer.
    pub(crate) object_name: String,
}

/// The distribution tasks of a running daemon; dropping it stops them.
#[derive(Debug)]
pub struct Running {
    status: Option<watch::Receiver<DistributionStatus>>,
    metrics: Arc<DistributionMetrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TrustDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustDistribution")
            .field("config_map", &self.config_map)
            .field("cluster_trust_bundle", &self.cluster_trust_bundle)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl TrustDistribution {
    /// The distribution `config` asks for, through `client`; `None` when neither the ConfigMaps
    /// nor the ClusterTrustBundle is enabled. `config` is expected to have passed
    /// `Config::validate`.
    pub fn new(config: &TrustDistributionConfig, client: kube::Client) -> Option<Self> {
        let config_map = config.config_map.enabled.then(|| ConfigMapSettings {
            name: config.config_map.name.clone(),
            key: config.config_map.key.clone(),
            excluded: config
                .config_map
                .excluded_namespaces()
                .map(str::to_owned)
                .collect(),
        });
        let cluster_trust_bundle = config.cluster_trust_bundle.enabled.then(|| {
            let signer_name = config.cluster_trust_bundle.signer_name.clone();
            ClusterTrustBundleSettings {
                object_name: cluster_trust_bundle_name(&signer_name),
                signer_name,
            }
        });
        if config_map.is_none() && cluster_trust_bundle.is_none() {
            return None;
        }
        Some(Self {
            client,
            config_map,
            cluster_trust_bundle,
            resync: config.resync_interval,
        })
    }

    /// For `meshca serve`: `None` when nothing is enabled; otherwise connects to the Kubernetes
    /// API (in-cluster credentials or the kubeconfig), checks that it answers, and spawns the
    /// distribution of `bundle`. Fails, saying what to do, when the API cannot be reached.
    pub async fn start(
        config: &TrustDistributionConfig,
        bundle: watch::Receiver<Arc<TrustBundle>>,
    ) -> anyhow::Result<Option<Running>> {
        if !config.config_map.enabled && !config.cluster_trust_bundle.enabled {
            return Ok(None);
        }
        const DISABLE: &str = "or turn trust distribution off \
             (trustDistribution.configMap.enabled=false, \
             trustDistribution.clusterTrustBundle.enabled=false)";
        let client = super::connect()
            .await
            .with_context(|| format!("trust distribution is enabled: {DISABLE}"))?;
        client.apiserver_version().await.with_context(|| {
            format!(
                "trust distribution is enabled but the Kubernetes API server does not answer: \
                 check that meshca runs in the cluster or that KUBECONFIG points at a reachable \
                 API server, {DISABLE}"
            )
        })?;
        Ok(Self::new(config, client).map(|distribution| distribution.spawn(bundle)))
    }

    /// Spawns the tasks that keep `bundle` published until [`Running`] is dropped.
    pub fn spawn(self, bundle: watch::Receiver<Arc<TrustBundle>>) -> Running {
        let mut tasks = Vec::new();
        let mut status = None;
        let metrics = Arc::new(DistributionMetrics::default());
        if let Some(settings) = self.config_map {
            metrics.enable(metrics::Kind::ConfigMap);
            let (sender, receiver) = watch::channel(DistributionStatus::default());
            status = Some(receiver);
            tasks.push(tokio::spawn(
                config_maps::ConfigMapPublisher::new(
                    self.client.clone(),
                    Arc::new(settings),
                    self.resync,
                    sender,
                    metrics.clone(),
                )
                .run(bundle.clone()),
            ));
            tracing::info!(
                resync = %meshca_provider::format_duration(self.resync),
                "trust distribution: keeping the trust bundle ConfigMap in every namespace"
            );
        }
        if let Some(settings) = self.cluster_trust_bundle {
            metrics.enable(metrics::Kind::ClusterTrustBundle);
            tracing::info!(
                name = %settings.object_name,
                signer = %settings.signer_name,
                "trust distribution: keeping the trust bundle in a ClusterTrustBundle"
            );
            tasks.push(tokio::spawn(cluster_trust_bundle::run(
                self.client,
                settings,
                self.resync,
                bundle,
                metrics.clone(),
            )));
        }
        Running {
            status,
            metrics,
            tasks,
        }
    }
}

impl Running {
    /// What every namespace's ConfigMap holds; `None` when the ConfigMaps are not enabled.
    pub fn status(&self) -> Option<watch::Receiver<DistributionStatus>> {
        self.status.clone()
    }

    /// Its figures, for `/metrics` ([`DistributionMetrics::collector`]).
    pub fn metrics(&self) -> Arc<DistributionMetrics> {
        self.metrics.clone()
    }

    /// Stops the distribution (also done on drop).
    pub fn stop(self) {}
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `meshca.dev/trust-bundle` → `meshca.dev:trust-bundle:roots`.
pub(crate) fn cluster_trust_bundle_name(signer_name: &str) -> String {
    format!(
        "{}:{CLUSTER_TRUST_BUNDLE_SUFFIX}",
        signer_name.replace('/', ":")
    )
}

/// Whether an object carries meshca's label.
pub(crate) fn is_owned(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY_LABEL))
        .is_some_and(|value| value == MANAGED_BY)
}

/// Explains a failed request (`what`: "list namespaces", "create ConfigMap ns/name"): what went
/// wrong and what to check. Carries only the API server's status message or the transport error.
pub(crate) fn explain(what: &str, error: &kube::Error) -> String {
    const RBAC: &str = "meshca's ClusterRole needs get, list and watch on namespaces; get, \
                        list, watch, create and update on configmaps; and, for the \
                        ClusterTrustBundle, get, list, watch, create and update on \
                        clustertrustbundles plus attest on signers (certificates.k8s.io)";
    match error {
        kube::Error::Api(status) => match status.code {
            401 => format!(
                "cannot {what}: the API server rejected meshca's credentials ({}): check the \
                 ServiceAccount token mounted into the pod, or the kubeconfig",
                status.message
            ),
            403 => format!(
                "cannot {what}: forbidden ({}): check RBAC: {RBAC}",
                status.message
            ),
            code => format!(
                "cannot {what}: the API server answered {code} {} ({}): check the API \
                 server's health; meshca retries",
                status.reason, status.message
            ),
        },
        other => format!(
            "cannot {what}: {other}: check that the Kubernetes API server is reachable from \
             meshca (address, network policy, TLS); meshca retries"
        ),
    }
}

/// Whether `error` is the API server's answer `code`.
pub(crate) fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_trust_bundle_is_named_after_its_signer() {
        assert_eq!(
            cluster_trust_bundle_name("meshca.dev/trust-bundle"),
            "meshca.dev:trust-bundle:roots"
        );
        assert_eq!(
            cluster_trust_bundle_name("example.com/a/b"),
            "example.com:a:b:roots"
        );
    }
}
