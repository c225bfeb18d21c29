//! [`ConfigMapPublisher`]: one task that keeps the trust bundle ConfigMap in every namespace.
//!
//! It owns all the state: the bundle to publish, the namespaces and the ConfigMaps of that
//! name as the API server last showed them (two [`follow`] loops feed it), the writes in
//! flight and the namespaces waiting to retry. After every change it compares each namespace
//! with what it should hold and starts the writes needed, at most [`MAX_CONCURRENT_WRITES`] at
//! a time; a write's answer (or the watch event it causes) updates what is known. Nothing is
//! written before both lists have arrived, so an existing ConfigMap is never mistaken for a
//! missing one. Excluded and terminating namespaces are skipped (quietly: a namespace being
//! deleted refuses new objects).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use meshca_provider::TrustBundle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::config_map_write::{Written, is_current, write};
use super::list_watch::{Change, Followed, backoff, follow, sleep_until};
use super::metrics::{Action, Kind};
use super::{
    ConfigMapSettings, DistributionMetrics, DistributionStatus, MAX_CONCURRENT_WRITES, explain,
    is_owned,
};

/// Keeps the ConfigMaps; see the module docs.
pub(crate) struct ConfigMapPublisher {
    client: kube::Client,
    settings: Arc<ConfigMapSettings>,
    resync: Duration,
    status: watch::Sender<DistributionStatus>,
    metrics: Arc<DistributionMetrics>,
    /// The bundle to publish (`None` while the pipeline has none).
    desired: Option<Desired>,
    /// Namespaces by name: whether each is terminating.
    namespaces: BTreeMap<String, bool>,
    namespaces_listed: bool,
    /// The ConfigMaps by namespace, as last seen.
    held: BTreeMap<String, Held>,
    config_maps_listed: bool,
    in_flight: BTreeSet<String>,
    /// Namespaces whose last write failed: how many times in a row.
    failures: BTreeMap<String, u32>,
    /// Of those, the ones waiting to try again, and when.
    retry: BTreeMap<String, Instant>,
    /// Namespaces whose foreign ConfigMap was already warned about.
    warned: BTreeSet<String>,
    /// The bundle generation each namespace was last seen holding, to tell a repair (the
    /// ConfigMap was edited or deleted) from a bundle change.
    in_sync: BTreeMap<String, u64>,
    /// The generation last announced as published everywhere.
    announced: Option<u64>,
}

struct Desired {
    pem: Arc<str>,
    fingerprints: Vec<String>,
    generation: u64,
}

struct Held {
    config_map: ConfigMap,
    /// Fingerprints of the roots it holds under the key.
    fingerprints: Arc<[String]>,
    /// Whether it is meshca's and holds exactly the desired bundle (kept up to date when
    /// either changes, so that each pass over the namespaces compares no PEM text).
    current: bool,
}

/// A write's namespace, whether it restores a ConfigMap that held the current bundle until it
/// was edited or deleted, and its outcome.
type WriteResult = (String, bool, Result<Written, kube::Error>);

impl ConfigMapPublisher {
    pub(crate) fn new(
        client: kube::Client,
        settings: Arc<ConfigMapSettings>,
        resync: Duration,
        status: watch::Sender<DistributionStatus>,
        metrics: Arc<DistributionMetrics>,
    ) -> Self {
        Self {
            client,
            settings,
            resync,
            status,
            metrics,
            desired: None,
            namespaces: BTreeMap::new(),
            namespaces_listed: false,
            held: BTreeMap::new(),
            config_maps_listed: false,
            in_flight: BTreeSet::new(),
            failures: BTreeMap::new(),
            retry: BTreeMap::new(),
            warned: BTreeSet::new(),
            in_sync: BTreeMap::new(),
            announced: None,
        }
    }

    /// Runs until the task is aborted.
    pub(crate) async fn run(mut self, mut bundle: watch::Receiver<Arc<TrustBundle>>) {
        let (namespace_changes, mut namespaces) = mpsc::channel(256);
        let (config_map_changes, mut config_maps) = mpsc::channel(256);
        let mut followers = JoinSet::new();
        followers.spawn(follow(
            Followed {
                api: Api::<Namespace>::all(self.client.clone()),
                fields: None,
                what: "namespaces".to_owned(),
                resync: self.resync,
                stop_if_not_served: false,
            },
            namespace_changes,
        ));
        followers.spawn(follow(
            Followed {
                api: Api::<ConfigMap>::all(self.client.clone()),
                fields: Some(format!("metadata.name={}", self.settings.name)),
                what: format!("ConfigMaps {}", self.settings.name),
                resync: self.resync,
                stop_if_not_served: false,
            },
            config_map_changes,
        ));
        let mut writes: JoinSet<WriteResult> = JoinSet::new();
        self.set_bundle(&bundle.borrow_and_update());
        loop {
            let next_retry = self.retry.values().min().copied();
            tokio::select! {
                changed = bundle.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.set_bundle(&bundle.borrow_and_update());
                }
                Some(change) = namespaces.recv() => self.namespace_changed(change),
                Some(change) = config_maps.recv() => self.config_map_changed(change),
                Some(Ok((namespace, restoring, result))) = writes.join_next() => {
                    self.written(namespace, restoring, result);
                }
                () = sleep_until(next_retry) => {
                    let now = Instant::now();
                    self.retry.retain(|_, at| *at > now);
                }
            }
            // Take in whatever else has arrived before the pass over every namespace, so that
            // a burst of events (a new bundle's writes coming back) costs one pass, not one
            // each.
            while let Ok(change) = namespaces.try_recv() {
                self.namespace_changed(change);
            }
            while let Ok(change) = config_maps.try_recv() {
                self.config_map_changed(change);
            }
            while let Some(Ok((namespace, restoring, result))) = writes.try_join_next() {
                self.written(namespace, restoring, result);
            }
            self.start_writes(&mut writes);
            self.publish_status();
        }
    }

    fn set_bundle(&mut self, bundle: &TrustBundle) {
        if bundle.is_empty() {
            return;
        }
        let pem: Arc<str> = bundle.to_pem().into();
        if self.desired.as_ref().is_some_and(|d| d.pem == pem) {
            return;
        }
        let generation = self.desired.as_ref().map_or(0, |d| d.generation + 1);
        let fingerprints = bundle.fingerprints();
        if self.desired.is_some() {
            tracing::info!(
                roots = %fingerprints.join(","),
                namespaces = self.targets().count(),
                "trust distribution: the trust bundle changed; updating every namespace's ConfigMap"
            );
        }
        for held in self.held.values_mut() {
            held.current = is_current(&held.config_map, &self.settings, &pem);
        }
        self.desired = Some(Desired {
            pem,
            fingerprints,
            generation,
        });
        // A new bundle is worth trying at once where an old one kept failing.
        self.retry.clear();
    }

    fn namespace_changed(&mut self, change: Change<Namespace>) {
        match change {
            Change::Listed(all) => {
                self.namespaces = all.iter().filter_map(namespace_entry).collect();
                self.namespaces_listed = true;
            }
            Change::Applied(namespace) => {
                if let Some((name, terminating)) = namespace_entry(&namespace) {
                    self.namespaces.insert(name, terminating);
                }
            }
            Change::Deleted(namespace) => {
                if let Some(name) = namespace.metadata.name {
                    self.namespaces.remove(&name);
                    self.forget(&name);
                }
            }
        }
    }

    fn config_map_changed(&mut self, change: Change<ConfigMap>) {
        match change {
            Change::Listed(all) => {
                self.held.clear();
                for config_map in all {
                    self.observe(config_map);
                }
                self.config_maps_listed = true;
            }
            Change::Applied(config_map) => self.observe(config_map),
            Change::Deleted(config_map) => {
                if let Some(namespace) = &config_map.metadata.namespace {
                    self.held.remove(namespace);
                }
            }
        }
    }

    /// Records what a ConfigMap (from a list, a watch event or a write's answer) holds.
    fn observe(&mut self, config_map: ConfigMap) {
        let (Some(namespace), Some(name)) = (
            config_map.metadata.namespace.clone(),
            config_map.metadata.name.as_deref(),
        ) else {
            return;
        };
        if name != self.settings.name {
            return;
        }
        let fingerprints = config_map
            .data
            .as_ref()
            .and_then(|data| data.get(&self.settings.key))
            .and_then(|pem| TrustBundle::from_pem(pem).ok())
            .map(|bundle| bundle.fingerprints().into())
            .unwrap_or_else(|| Arc::from([]));
        let current = self
            .desired
            .as_ref()
            .is_some_and(|desired| is_current(&config_map, &self.settings, &desired.pem));
        if is_owned(&config_map.metadata) {
            self.warned.remove(&namespace);
        }
        self.held.insert(
            namespace,
            Held {
                config_map,
                fingerprints,
                current,
            },
        );
    }

    fn forget(&mut self, namespace: &str) {
        self.held.remove(namespace);
        self.failures.remove(namespace);
        self.retry.remove(namespace);
        self.warned.remove(namespace);
        self.in_sync.remove(namespace);
    }

    /// The namespaces that should hold the ConfigMap.
    fn targets(&self) -> impl Iterator<Item = &str> {
        self.namespaces
            .iter()
            .filter(|(name, terminating)| {
                !**terminating && !self.settings.excluded.contains(name.as_str())
            })
            .map(|(name, _)| name.as_str())
    }

    /// Starts the writes that are needed, within the concurrency bound.
    fn start_writes(&mut self, writes: &mut JoinSet<WriteResult>) {
        let Some(desired) = self
            .desired
            .as_ref()
            .filter(|_| self.namespaces_listed && self.config_maps_listed)
        else {
            self.metrics.pass(Kind::ConfigMap, false);
            return;
        };
        let generation = desired.generation;
        let pem = desired.pem.clone();
        let mut needed = Vec::new();
        let mut foreign = Vec::new();
        let mut in_sync = Vec::new();
        let mut everywhere = true;
        let (mut served, mut behind) = (0, 0);
        for namespace in self.targets() {
            served += 1;
            if !self.held.get(namespace).is_some_and(|held| held.current) {
                behind += 1;
            }
            match self.held.get(namespace) {
                Some(held) if held.current => {
                    if self.in_sync.get(namespace) != Some(&generation) {
                        in_sync.push(namespace.to_owned());
                    }
                }
                Some(held) if !is_owned(&held.config_map.metadata) => {
                    everywhere = false;
                    if !self.warned.contains(namespace) {
                        foreign.push(namespace.to_owned());
                    }
                }
                _ => {
                    everywhere = false;
                    if needed.len() < MAX_CONCURRENT_WRITES
                        && !self.in_flight.contains(namespace)
                        && !self.retry.contains_key(namespace)
                    {
                        needed.push(namespace.to_owned());
                    }
                }
            }
        }
        for namespace in in_sync {
            self.in_sync.insert(namespace, generation);
        }
        self.metrics.namespaces(served, behind);
        self.metrics.pass(Kind::ConfigMap, everywhere);
        for namespace in foreign {
            if self.warned.insert(namespace.clone()) {
                tracing::warn!(
                    namespace = %namespace,
                    name = %self.settings.name,
                    "trust distribution: ConfigMap {namespace}/{} exists and is not managed by \
                     meshca (no label app.kubernetes.io/managed-by=meshca), so it is left as it \
                     is and the namespace does not get meshca's trust bundle: delete it, or let \
                     meshca manage it with `kubectl label configmap -n {namespace} {} \
                     app.kubernetes.io/managed-by=meshca`",
                    self.settings.name,
                    self.settings.name
                );
            }
        }
        if everywhere && self.in_flight.is_empty() && self.announced != Some(generation) {
            self.announced = Some(generation);
            tracing::info!(
                namespaces = self.targets().count(),
                roots = %self.desired.as_ref().map(|d| d.fingerprints.join(",")).unwrap_or_default(),
                "trust distribution: every namespace's ConfigMap holds the trust bundle"
            );
        }
        for namespace in needed {
            if self.in_flight.len() >= MAX_CONCURRENT_WRITES {
                break;
            }
            let current = self
                .held
                .get(&namespace)
                .map(|held| held.config_map.clone());
            let restoring = self.in_sync.get(&namespace) == Some(&generation);
            if restoring {
                tracing::info!(
                    namespace = %namespace,
                    "trust distribution: restoring ConfigMap {namespace}/{} (it was edited or \
                     deleted)",
                    self.settings.name
                );
            }
            self.in_flight.insert(namespace.clone());
            let client = self.client.clone();
            let settings = self.settings.clone();
            let pem = pem.clone();
            writes.spawn(async move {
                let result = write(client, &settings, &namespace, &pem, current).await;
                (namespace, restoring, result)
            });
        }
    }

    /// Takes a write's outcome into account.
    fn written(
        &mut self,
        namespace: String,
        restoring: bool,
        result: Result<Written, kube::Error>,
    ) {
        self.in_flight.remove(&namespace);
        match &result {
            Ok(Written::Created(_)) => self
                .metrics
                .written(Kind::ConfigMap, Action::of_write(true, restoring)),
            Ok(Written::Updated(_)) => self
                .metrics
                .written(Kind::ConfigMap, Action::of_write(false, restoring)),
            Ok(_) => {}
            Err(_) => self.metrics.write_failed(Kind::ConfigMap),
        }
        match result {
            Ok(
                Written::Created(config_map)
                | Written::Updated(config_map)
                | Written::AlreadyCurrent(config_map)
                | Written::NotOwned(config_map),
            ) => {
                self.retry.remove(&namespace);
                match self.failures.remove(&namespace) {
                    Some(failures) => tracing::info!(
                        namespace = %namespace,
                        failures,
                        "trust distribution: ConfigMap {namespace}/{} written after failing",
                        self.settings.name
                    ),
                    None => {
                        tracing::debug!(namespace = %namespace, "trust distribution: ConfigMap written")
                    }
                }
                self.observe(config_map);
            }
            Ok(Written::NamespaceGone) => {
                tracing::debug!(namespace = %namespace, "trust distribution: namespace gone or terminating; skipped");
                self.namespaces.remove(&namespace);
                self.forget(&namespace);
            }
            Err(error) => {
                let failures = self.failures.entry(namespace.clone()).or_insert(0);
                *failures += 1;
                let failures = *failures;
                let message = explain(
                    &format!("write ConfigMap {namespace}/{}", self.settings.name),
                    &error,
                );
                if failures == 1 {
                    tracing::warn!(namespace = %namespace, error = %message, "trust distribution: retrying");
                } else {
                    tracing::debug!(namespace = %namespace, error = %message, failures, "trust distribution: still failing");
                }
                self.retry
                    .insert(namespace, Instant::now() + backoff(failures));
            }
        }
    }

    fn publish_status(&self) {
        let synced = self.namespaces_listed && self.config_maps_listed;
        let namespaces = if synced {
            self.targets()
                .map(|namespace| {
                    let held = self
                        .held
                        .get(namespace)
                        .map(|held| held.fingerprints.clone())
                        .unwrap_or_default();
                    (namespace.to_owned(), held)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let status = DistributionStatus { synced, namespaces };
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            *current = status;
            true
        });
    }
}

/// A namespace's name and whether it is being deleted.
fn namespace_entry(namespace: &Namespace) -> Option<(String, bool)> {
    let name = namespace.metadata.name.clone()?;
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace
            .status
            .as_ref()
            .and_then(|status| status.phase.as_deref())
            == Some("Terminating");
    Some((name, terminating))
}
