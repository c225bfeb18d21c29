//! The trust bundle as one cluster-scoped `ClusterTrustBundle` (`certificates.k8s.io`), which
//! kubelet can project into any pod (`clusterTrustBundle` projected volume sources, by name or
//! by signer name).
//!
//! Which version: `certificates.k8s.io/v1` (GA in Kubernetes 1.37, served by default) when the
//! cluster serves it, else `v1beta1` (Kubernetes 1.33–1.36, where the `ClusterTrustBundle`
//! feature gate and `--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true`
//! turn it on). `v1alpha1` (1.27–1.32) is not used: those releases are out of support. The
//! version is found by listing (a `404` means not served), again at every resync while neither
//! is, so enabling the API later needs no restart; until then one warning says how.
//!
//! The object (`<signer name with '/' as ':'>:roots`) is created, updated and restored like the
//! ConfigMaps, with the same ownership rule: one without meshca's label is left alone, with a
//! warning.

use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use meshca_provider::TrustBundle;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::list_watch::{Change, Ended, Followed, backoff, follow, sleep_until};
use super::metrics::{Action, Kind};
use super::{
    ClusterTrustBundleSettings, DistributionMetrics, MANAGED_BY, MANAGED_BY_LABEL, explain,
    is_owned, is_status,
};

/// The versions tried, preferred first.
fn versions() -> [ApiResource; 2] {
    use k8s_openapi::api::certificates::{v1, v1beta1};
    [
        ApiResource::erase::<v1::ClusterTrustBundle>(&()),
        ApiResource::erase::<v1beta1::ClusterTrustBundle>(&()),
    ]
}

/// Keeps the ClusterTrustBundle until the task is aborted.
pub(crate) async fn run(
    client: kube::Client,
    settings: ClusterTrustBundleSettings,
    resync: Duration,
    mut bundle: watch::Receiver<Arc<TrustBundle>>,
    metrics: Arc<DistributionMetrics>,
) {
    let mut warned = false;
    loop {
        match served_version(&client, &settings).await {
            Some(resource) => {
                if warned {
                    tracing::info!(
                        version = %resource.api_version,
                        "trust distribution: the cluster serves ClusterTrustBundles now"
                    );
                }
                warned = false;
                let mut keeper =
                    Keeper::new(client.clone(), &resource, settings.clone(), metrics.clone());
                if keeper.keep(&mut bundle, resync).await == Ended::Closed {
                    return;
                }
            }
            None if !warned => {
                warned = true;
                metrics.pass(Kind::ClusterTrustBundle, false);
                tracing::warn!(
                    "trust distribution: this cluster does not serve ClusterTrustBundles \
                     (certificates.k8s.io/v1 or v1beta1 answered 404), so the trust bundle is \
                     published in the ConfigMaps only: on Kubernetes 1.33–1.36 enable the \
                     ClusterTrustBundle feature gate and \
                     --runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true on \
                     the API server (1.37 serves v1 by default), or set \
                     trustDistribution.clusterTrustBundle.enabled=false; checking again every \
                     {}",
                    meshca_provider::format_duration(resync)
                );
            }
            None => tracing::debug!("trust distribution: ClusterTrustBundles still not served"),
        }
        tokio::time::sleep(resync).await;
    }
}

/// The first version the cluster serves; `None` if it serves none. Other failures are retried
/// here with backoff (they say nothing about what is served).
async fn served_version(
    client: &kube::Client,
    settings: &ClusterTrustBundleSettings,
) -> Option<ApiResource> {
    let params = ListParams::default()
        .fields(&format!("metadata.name={}", settings.object_name))
        .limit(1);
    let mut failures = 0;
    'retry: loop {
        for resource in versions() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            match api.list(&params).await {
                Ok(_) => return Some(resource),
                Err(error) if is_status(&error, 404) => {}
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(
                            error = %explain("list ClusterTrustBundles", &error),
                            "trust distribution: retrying"
                        );
                    }
                    tokio::time::sleep(backoff(failures)).await;
                    continue 'retry;
                }
            }
        }
        return None;
    }
}

/// Keeps the object in one served version.
struct Keeper {
    api: Api<DynamicObject>,
    resource: ApiResource,
    settings: ClusterTrustBundleSettings,
    metrics: Arc<DistributionMetrics>,
    /// The object as last seen (`None`: absent), once listed.
    held: Option<Option<DynamicObject>>,
    /// Fingerprints last announced as published.
    announced: Option<Vec<String>>,
    warned: bool,
    /// Consecutive failed writes.
    failures: u32,
    /// When to write again after a failure.
    retry: Option<Instant>,
}

impl Keeper {
    fn new(
        client: kube::Client,
        resource: &ApiResource,
        settings: ClusterTrustBundleSettings,
        metrics: Arc<DistributionMetrics>,
    ) -> Self {
        Self {
            api: Api::all_with(client, resource),
            resource: resource.clone(),
            settings,
            metrics,
            held: None,
            announced: None,
            warned: false,
            failures: 0,
            retry: None,
        }
    }

    /// Follows the object and writes it when needed, until the version stops being served
    /// (`Ended::NotServed`) or the task ends.
    async fn keep(
        &mut self,
        bundle: &mut watch::Receiver<Arc<TrustBundle>>,
        resync: Duration,
    ) -> Ended {
        let (changes, mut received) = mpsc::channel(16);
        let mut follower = tokio::spawn(follow(
            Followed {
                api: self.api.clone(),
                fields: Some(format!("metadata.name={}", self.settings.object_name)),
                what: format!("ClusterTrustBundle {}", self.settings.object_name),
                resync,
                stop_if_not_served: true,
            },
            changes,
        ));
        loop {
            let retry_at = self.retry;
            tokio::select! {
                ended = &mut follower => {
                    return ended.unwrap_or(Ended::Closed);
                }
                changed = bundle.changed() => {
                    if changed.is_err() {
                        follower.abort();
                        return Ended::Closed;
                    }
                    self.retry = None;
                }
                Some(change) = received.recv() => self.changed(change),
                () = sleep_until(retry_at) => self.retry = None,
            }
            let current = bundle.borrow_and_update().clone();
            self.reconcile(&current).await;
        }
    }

    fn changed(&mut self, change: Change<DynamicObject>) {
        let name = Some(self.settings.object_name.as_str());
        match change {
            Change::Listed(all) => {
                self.held = Some(
                    all.into_iter()
                        .find(|object| object.metadata.name.as_deref() == name),
                );
            }
            Change::Applied(object) if object.metadata.name.as_deref() == name => {
                self.held = Some(Some(object));
            }
            Change::Deleted(object) if object.metadata.name.as_deref() == name => {
                self.held = Some(None);
            }
            Change::Applied(_) | Change::Deleted(_) => {}
        }
    }

    /// Writes the object if it does not hold `bundle`.
    async fn reconcile(&mut self, bundle: &TrustBundle) {
        let Some(held) = &self.held else {
            return;
        };
        if bundle.is_empty() || self.retry.is_some() {
            return;
        }
        let pem = bundle.to_pem();
        let fingerprints = bundle.fingerprints();
        let (action, result) = match held {
            Some(found) if !is_owned(&found.metadata) => {
                self.metrics.pass(Kind::ClusterTrustBundle, false);
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        "trust distribution: ClusterTrustBundle {} exists and is not managed by \
                         meshca (no label app.kubernetes.io/managed-by=meshca), so it is left as \
                         it is: delete it, or let meshca manage it with `kubectl label \
                         clustertrustbundle {} app.kubernetes.io/managed-by=meshca`",
                        self.settings.object_name,
                        self.settings.object_name
                    );
                }
                return;
            }
            Some(found) if self.holds(found, &pem) => {
                self.metrics.pass(Kind::ClusterTrustBundle, true);
                if self.announced.as_ref() != Some(&fingerprints) {
                    tracing::info!(
                        name = %self.settings.object_name,
                        version = %self.resource.api_version,
                        roots = %fingerprints.join(","),
                        "trust distribution: the ClusterTrustBundle holds the trust bundle"
                    );
                    self.announced = Some(fingerprints);
                }
                return;
            }
            Some(found) => {
                self.metrics.pass(Kind::ClusterTrustBundle, false);
                let restoring = self.announced.as_ref() == Some(&fingerprints);
                if restoring {
                    tracing::info!(
                        name = %self.settings.object_name,
                        "trust distribution: restoring the ClusterTrustBundle (it was edited)"
                    );
                }
                let object = self.desired(&pem, found.metadata.resource_version.clone());
                (
                    Action::of_write(false, restoring),
                    self.api
                        .replace(&self.settings.object_name, &post_params(), &object)
                        .await,
                )
            }
            None => {
                self.metrics.pass(Kind::ClusterTrustBundle, false);
                let restoring = self.announced.is_some();
                if restoring {
                    tracing::info!(
                        name = %self.settings.object_name,
                        "trust distribution: restoring the ClusterTrustBundle (it was deleted)"
                    );
                }
                let object = self.desired(&pem, None);
                (
                    Action::of_write(true, restoring),
                    self.api.create(&post_params(), &object).await,
                )
            }
        };
        match result {
            Ok(object) => {
                self.metrics.written(Kind::ClusterTrustBundle, action);
                self.failures = 0;
                self.held = Some(Some(object));
                Box::pin(self.reconcile(bundle)).await;
            }
            // Changed or created meanwhile: read it again and decide afresh.
            Err(error) if is_status(&error, 409) => {
                match self.api.get_opt(&self.settings.object_name).await {
                    Ok(found) => self.held = Some(found),
                    Err(error) => self.failed(&error),
                }
            }
            Err(error) => self.failed(&error),
        }
    }

    fn failed(&mut self, error: &kube::Error) {
        self.metrics.write_failed(Kind::ClusterTrustBundle);
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(
                error = %explain(&format!("write ClusterTrustBundle {}", self.settings.object_name), error),
                "trust distribution: retrying"
            );
        }
        self.retry = Some(Instant::now() + backoff(self.failures));
    }

    fn holds(&self, object: &DynamicObject, pem: &str) -> bool {
        let spec = &object.data["spec"];
        spec["trustBundle"].as_str() == Some(pem)
            && spec["signerName"].as_str() == Some(self.settings.signer_name.as_str())
    }

    fn desired(&self, pem: &str, resource_version: Option<String>) -> DynamicObject {
        let mut object = DynamicObject::new(&self.settings.object_name, &self.resource);
        object.metadata.labels =
            Some([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())].into());
        object.metadata.resource_version = resource_version;
        object.data = json!({
            "spec": {"signerName": self.settings.signer_name, "trustBundle": pem},
        });
        object
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGED_BY.to_owned()),
        ..PostParams::default()
    }
}
