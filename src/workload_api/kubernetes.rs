//! SPIRE's Kubernetes workload attestor: the caller's pid → `/proc/<pid>/cgroup` → the UID of
//! the pod whose cgroup it runs in → that pod, among the pods the API server schedules on this
//! node → `k8s:ns:<namespace>`, `k8s:sa:<service account>`, `k8s:pod-uid:<uid>`,
//! `k8s:pod-name:<name>` and one `k8s:pod-label:<key>:<value>` per label of the pod (at most
//! [`NodePod::MAX_LABELS`], each within Kubernetes' own bounds).
//!
//! The pods come from one LIST of this node's pods (`fieldSelector=spec.nodeName=<node>`),
//! kept by UID and listed again when a caller's pod UID is not among them (a pod started since),
//! at most once per [`KubernetesAttestor::DEFAULT_MIN_REFRESH`]: a caller whose cgroup names no
//! known pod cannot make meshca list pods on every call. A UID names one pod for its whole life,
//! so a kept answer is never wrong about whom it names. A process in no pod, in a pod of another
//! node, or whose pod cannot be looked up, gets no `k8s:` selector: entries that need one do not
//! match it (fail closed).
//!
//! Static pods: the kubelet runs a static pod (a manifest on the node) under a UID of its own
//! (the manifest's config hash, usually 32 hex digits), which its cgroup names; the API server
//! holds a *mirror pod* with another UID and the annotation `kubernetes.io/config.mirror: <that
//! UID>`. A cgroup UID is therefore also looked up among the mirror annotations of this node's
//! pods. Only the kubelet of a node creates mirror pods bound to it, and the LIST holds only
//! pods bound to this node, so another node's pod cannot claim this node's static pod. A UID
//! that two pods claim (a mirror annotation written by hand on another pod) names neither.
//! `k8s:pod-uid` is then the static pod's UID (the one its cgroup names, as the kubelet calls
//! it), not the mirror pod's.
//!
//! meshca must see the callers' processes: in Kubernetes, a node-local meshca with `hostPID`.

use std::collections::{BTreeSet, HashMap, hash_map::Entry};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::attest::{AttestError, Attestor, PeerCredentials, Selector, owned_by};
use crate::kubernetes::{PodInfo, PodLookupError};

/// The annotation the kubelet puts on a mirror pod: the UID of the static pod it mirrors.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A pod of this node, with what the attestor reads of it beyond [`PodInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePod {
    /// Its namespace, name, UID, service account, node.
    pub info: PodInfo,
    /// On a mirror pod, the UID of the static pod it mirrors (its [`MIRROR_ANNOTATION`],
    /// lowercase); `None` on other pods, when the annotation is not a pod UID, and on a pod
    /// with a service account (which the API server gives no mirror pod).
    pub mirror_of: Option<String>,
    /// Its labels, by key, at most [`NodePod::MAX_LABELS`] and each within
    /// [`Selector::label_fits`].
    pub labels: Vec<(String, String)>,
    /// How many of its labels were left out of `labels` (over the count or the size bounds).
    pub labels_left_out: usize,
}

impl NodePod {
    /// Labels kept per pod, in key order: far above what a workload's entries select on; a pod
    /// with more loses the rest (entries naming them do not match, and a warning says so).
    pub const MAX_LABELS: usize = 64;

    /// What `pod` says of itself.
    pub fn from_pod(pod: &Pod) -> Self {
        let mirror_of = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(MIRROR_ANNOTATION))
            .map(|uid| uid.to_ascii_lowercase())
            .filter(|uid| is_pod_uid(uid));
        let info = PodInfo::from_pod(pod);
        // The API server refuses a mirror pod that names a service account (its ServiceAccount
        // admission), and gives every other pod one: a pod with both is no mirror pod.
        let mirror_of = mirror_of.filter(|_| {
            info.service_account
                .as_deref()
                .is_none_or(|account| account.is_empty())
        });
        let mut labels = Vec::new();
        let mut labels_left_out = 0;
        // A BTreeMap: in key order, so which labels are kept does not vary between LISTs.
        for (key, value) in pod.metadata.labels.iter().flatten() {
            if labels.len() < Self::MAX_LABELS && Selector::label_fits(key, value) {
                labels.push((key.clone(), value.clone()));
            } else {
                labels_left_out += 1;
            }
        }
        Self {
            info,
            mirror_of,
            labels,
            labels_left_out,
        }
    }
}

/// The pods scheduled on this node, as the API server reports them now.
///
/// Obligations: MUST answer from the API server (never from what a caller said), only pods
/// scheduled on this node (a mirror pod's annotation is trusted because of that), and MUST
/// bound the work one call does.
#[async_trait]
pub trait NodePods: Send + Sync + 'static {
    /// Every pod on the node.
    async fn list(&self) -> Result<Vec<NodePod>, PodLookupError>;
}

/// [`NodePods`] over the Kubernetes API: a LIST of pods in every namespace, field-selected by
/// node, in pages. meshca's ServiceAccount needs `list` on `pods` (a ClusterRole).
#[derive(Clone)]
pub struct KubeNodePods {
    client: kube::Client,
    node: String,
}

impl KubeNodePods {
    /// Pods asked for per LIST page.
    pub const PAGE_SIZE: u32 = 500;
    /// LIST pages read at most: 10,000 pods, far above what a node runs (110 by default); the
    /// cap only bounds a server that ignores the selector.
    pub const MAX_PAGES: usize = 20;

    /// The pods of `node` (its `spec.nodeName`), asked with `client`.
    pub fn new(client: kube::Client, node: impl Into<String>) -> Self {
        Self {
            client,
            node: node.into(),
        }
    }
}

impl fmt::Debug for KubeNodePods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeNodePods")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl NodePods for KubeNodePods {
    async fn list(&self) -> Result<Vec<NodePod>, PodLookupError> {
        let node = &self.node;
        let api: Api<Pod> = Api::all(self.client.clone());
        let mut params = ListParams::default()
            .fields(&format!("spec.nodeName={node}"))
            .limit(Self::PAGE_SIZE);
        let mut pods = Vec::new();
        for _ in 0..Self::MAX_PAGES {
            let page = api.list(&params).await.map_err(|e| list_failed(node, e))?;
            // The server filters by node; each pod is still checked, so a server that ignores
            // the selector cannot put another node's pod here.
            pods.extend(
                page.items
                    .iter()
                    .map(NodePod::from_pod)
                    .filter(|pod| pod.info.node.as_deref() == Some(node.as_str())),
            );
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(pods),
            }
        }
        Err(PodLookupError::Unavailable {
            reason: format!(
                "more than {} pods listed for node {node} without the list ending: meshca stops \
                 there; check that the API server honours fieldSelector=spec.nodeName",
                Self::MAX_PAGES * Self::PAGE_SIZE as usize
            ),
        })
    }
}

/// Explains a failed LIST of `node`'s pods: what went wrong and what to check.
fn list_failed(node: &str, error: kube::Error) -> PodLookupError {
    let reason = match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => format!(
            "the API server refused to list the pods of node {node} ({} {}): meshca's \
             ServiceAccount needs list on pods (a ClusterRole)",
            status.code, status.message
        ),
        kube::Error::Api(status) => format!(
            "the API server answered {} {} to a list of the pods of node {node} ({}): check the \
             API server's health",
            status.code, status.reason, status.message
        ),
        other => format!(
            "could not list the pods of node {node}: {other}: check that the Kubernetes API \
             server is reachable from meshca"
        ),
    };
    PodLookupError::Unavailable { reason }
}

/// The Kubernetes workload attestor (module docs).
pub struct KubernetesAttestor {
    proc_root: PathBuf,
    pods: Arc<dyn NodePods>,
    min_refresh: Duration,
    known: Mutex<KnownPods>,
}

/// The node's pods by UID (lowercase; a mirror pod also by its static pod's UID), and when
/// they were listed.
#[derive(Default)]
struct KnownPods {
    by_uid: HashMap<String, Arc<NodePod>>,
    listed_at: Option<Instant>,
}

impl KnownPods {
    /// Indexes `pods` by UID, and mirror pods also by the UID of the static pod they mirror,
    /// unless another pod has that UID or claims it too (then it names none of them).
    fn index(pods: Vec<NodePod>) -> HashMap<String, Arc<NodePod>> {
        let mut by_uid = HashMap::with_capacity(pods.len());
        let mut mirrors: HashMap<String, Vec<Arc<NodePod>>> = HashMap::new();
        for pod in pods {
            if pod.labels_left_out > 0 {
                tracing::warn!(
                    namespace = %pod.info.namespace,
                    pod = %pod.info.name,
                    kept = pod.labels.len(),
                    left_out = pod.labels_left_out,
                    "Workload API: a pod has more labels than meshca keeps ({}) or labels over \
                     Kubernetes' sizes; k8s:pod-label selectors of those left out do not match",
                    NodePod::MAX_LABELS
                );
            }
            let pod = Arc::new(pod);
            if let Some(static_uid) = &pod.mirror_of {
                mirrors
                    .entry(static_uid.clone())
                    .or_default()
                    .push(Arc::clone(&pod));
            }
            if let Some(uid) = &pod.info.uid {
                by_uid.insert(uid.to_ascii_lowercase(), pod);
            }
        }
        for (static_uid, claimants) in mirrors {
            match (by_uid.entry(static_uid), claimants.as_slice()) {
                (Entry::Vacant(vacant), [mirror]) => {
                    vacant.insert(Arc::clone(mirror));
                }
                (entry, _) => {
                    tracing::warn!(
                        static_pod_uid = %entry.key(),
                        claimants = claimants.len(),
                        "Workload API: several pods of this node claim the same static pod \
                         UID (annotation kubernetes.io/config.mirror, or a pod's own UID); \
                         its processes get no k8s: selectors"
                    );
                    if let Entry::Occupied(occupied) = entry {
                        occupied.remove();
                    }
                }
            }
        }
        by_uid
    }
}

impl fmt::Debug for KubernetesAttestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesAttestor")
            .field("proc_root", &self.proc_root)
            .field("min_refresh", &self.min_refresh)
            .finish_non_exhaustive()
    }
}

impl KubernetesAttestor {
    /// The least time between two LISTs of the node's pods.
    pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);

    /// Reads callers' cgroups under `proc_root` (`/proc`; tests point it elsewhere) and looks
    /// their pods up in `pods`.
    pub fn new(proc_root: impl Into<PathBuf>, pods: Arc<dyn NodePods>) -> Self {
        Self {
            proc_root: proc_root.into(),
            pods,
            min_refresh: Self::DEFAULT_MIN_REFRESH,
            known: Mutex::default(),
        }
    }

    /// Lists the node's pods at most once per `interval`.
    #[must_use]
    pub fn with_min_refresh(mut self, interval: Duration) -> Self {
        self.min_refresh = interval;
        self
    }

    /// The pod with `uid` on this node: from the last LIST, or from a new one when it is not
    /// there and the last is at least `min_refresh` old. The lock is held across the LIST, so
    /// callers missing at once cause one.
    async fn pod(&self, uid: &str) -> Option<Arc<NodePod>> {
        let mut known = self.known.lock().await;
        if let Some(pod) = known.by_uid.get(uid) {
            return Some(Arc::clone(pod));
        }
        if known
            .listed_at
            .is_some_and(|at| at.elapsed() < self.min_refresh)
        {
            return None;
        }
        known.listed_at = Some(Instant::now());
        match self.pods.list().await {
            Ok(pods) => known.by_uid = KnownPods::index(pods),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "Workload API: cannot list this node's pods; callers get no k8s: selectors \
                     until it can"
                );
            }
        }
        known.by_uid.get(uid).cloned()
    }
}

#[async_trait]
impl Attestor for KubernetesAttestor {
    async fn attest(&self, peer: PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        let Some(pid) = peer.pid.filter(|pid| *pid > 0) else {
            return Ok(Vec::new());
        };
        let process = self.proc_root.join(pid.to_string());
        let uid = peer.uid;
        // Read on the calling task, as the Unix attestor reads `/proc` (attest.rs): procfs
        // answers from kernel memory in microseconds, and a blocking-pool thread per call cost
        // more than the read when thousands of callers arrive at once.
        let pod_uid = match pod_uid_of(&process, uid) {
            Ok(Some(pod_uid)) => pod_uid,
            Ok(None) => {
                tracing::debug!(pid, "Workload API caller: not in a pod's cgroup");
                return Ok(Vec::new());
            }
            Err(reason) => {
                tracing::debug!(pid, %reason, "Workload API caller: no k8s: selectors");
                return Ok(Vec::new());
            }
        };
        let Some(pod) = self.pod(&pod_uid).await else {
            tracing::debug!(
                pid,
                pod_uid,
                "Workload API caller: its pod is not on this node"
            );
            return Ok(Vec::new());
        };
        let info = &pod.info;
        let mut selectors = Vec::with_capacity(4 + pod.labels.len());
        selectors.push(Selector::K8sNamespace(info.namespace.clone()));
        selectors.extend(
            info.service_account
                .clone()
                .map(Selector::K8sServiceAccount),
        );
        selectors.push(Selector::K8sPodUid(pod_uid));
        selectors.push(Selector::K8sPodName(info.name.clone()));
        selectors.extend(
            pod.labels
                .iter()
                .map(|(key, value)| Selector::K8sPodLabel(key.clone(), value.clone())),
        );
        Ok(selectors)
    }
}

/// The pod UID in the cgroup of the process at `process` (`/proc/<pid>`), which must still
/// belong to `uid` (a pid reused by another user's process is not read as the caller's).
fn pod_uid_of(process: &Path, uid: u32) -> Result<Option<String>, String> {
    owned_by(process, uid)?;
    let path = process.join("cgroup");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(pod_uid_from_cgroup(&text))
}

/// The UID of the pod a `/proc/<pid>/cgroup` text places the process in, in the shapes the
/// kubelet makes (cgroup v1 and v2; the cgroupfs and systemd drivers; paths relative to a
/// cgroup namespace too):
///
/// - `…/kubepods/burstable/pod<uid>/<container>`, `…/kubepods/pod<uid>/<container>`
/// - `…/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '_' for '-'>.slice/…`
///
/// The UID is an API server UID (`8-4-4-4-12` hex digits) or a static pod's (the kubelet's
/// config hash, 32 hex digits).
///
/// `None` when no line is under `kubepods`, or when lines disagree about the pod.
pub fn pod_uid_from_cgroup(cgroup: &str) -> Option<String> {
    let uids: BTreeSet<String> = cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .filter(|path| path.split('/').any(|part| part.starts_with("kubepods")))
        .filter_map(|path| path.split('/').rev().find_map(pod_uid_in))
        .collect();
    let mut uids = uids.into_iter();
    match (uids.next(), uids.next()) {
        (Some(uid), None) => Some(uid),
        _ => None,
    }
}

/// The pod UID a cgroup path segment names: `pod<uid>` or `kubepods[-<qos>]-pod<uid>.slice`.
fn pod_uid_in(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".slice").unwrap_or(segment);
    let candidate = match segment.strip_prefix("pod") {
        Some(rest) => rest,
        None if segment.starts_with("kubepods") => segment.rsplit_once("-pod")?.1,
        None => return None,
    };
    let uid = candidate.replace('_', "-").to_ascii_lowercase();
    is_pod_uid(&uid).then_some(uid)
}

/// A UID the kubelet names a pod's cgroup with: an API server UID or a static pod's config
/// hash (an MD5, 32 hex digits, when the manifest sets no UID).
fn is_pod_uid(text: &str) -> bool {
    is_uuid(text) || (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `8-4-4-4-12` hex digits, as Kubernetes writes `metadata.uid`.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UID: &str = "6b1e6a4c-2f5d-4c1e-9a57-0d6f5e0c2b11";

    #[test]
    fn pod_uids_are_read_from_every_kubelet_cgroup_shape() {
        let systemd_uid = UID.replace('-', "_");
        for cgroup in [
            // cgroup v1, cgroupfs driver: one line per hierarchy.
            format!(
                "12:memory:/kubepods/burstable/pod{UID}/0f1e2d3c4b5a\n\
                 11:cpu,cpuacct:/kubepods/burstable/pod{UID}/0f1e2d3c4b5a\n1:name=systemd:/\n"
            ),
            // Guaranteed QoS: no class directory.
            format!("4:pids:/kubepods/pod{UID}/0f1e2d3c4b5a\n"),
            // cgroup v1, systemd driver.
            format!(
                "5:memory:/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod{systemd_uid}.slice/cri-containerd-0f1e.scope\n"
            ),
            // cgroup v2, systemd driver.
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}\
                 .slice/cri-containerd-0f1e2d.scope\n"
            ),
            // cgroup v2, guaranteed, systemd.
            format!("0::/kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-0f1e.scope\n"),
            // Seen from inside another cgroup namespace.
            format!(
                "0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid}.slice/\
                 cri-containerd-0f1e.scope\n"
            ),
            // Upper-case hex is the same UID.
            format!("0::/kubepods/pod{}/abc\n", UID.to_ascii_uppercase()),
        ] {
            assert_eq!(
                pod_uid_from_cgroup(&cgroup).as_deref(),
                Some(UID),
                "{cgroup}"
            );
        }
    }

    #[test]
    fn processes_outside_pods_have_no_pod_uid() {
        let other = "11111111-2222-3333-4444-555555555555";
        for cgroup in [
            "0::/user.slice/user-1000.slice/session-2.scope\n".to_owned(),
            "0::/system.slice/containerd.service\n".to_owned(),
            "0::/\n".to_owned(),
            String::new(),
            // A pod-like segment outside kubepods.
            format!("0::/machine.slice/pod{UID}/x\n"),
            // podman's names are not pods.
            "0::/kubepods.slice/podman-1234.scope\n".to_owned(),
            // Not a UID.
            "0::/kubepods/burstable/podnot-a-uid/abc\n".to_owned(),
            // Two pods at once: believe neither.
            format!("12:memory:/kubepods/pod{UID}/a\n11:cpu:/kubepods/pod{other}/a\n"),
            // Neither a UID nor a config hash: 31 and 33 hex digits.
            format!("0::/kubepods/pod{}/abc\n", &HASH[1..]),
            format!("0::/kubepods/pod{HASH}0/abc\n"),
        ] {
            assert_eq!(pod_uid_from_cgroup(&cgroup), None, "{cgroup}");
        }
    }

    /// A static pod's config hash, as the kubelet names its cgroup.
    const HASH: &str = "81cdabfc720501d9e81b425b15921b4d";

    #[test]
    fn static_pods_cgroups_name_their_config_hash() {
        for cgroup in [
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{HASH}.slice/\
                 cri-containerd-0f1e.scope\n"
            ),
            format!("12:memory:/kubepods/burstable/pod{HASH}/0f1e\n"),
            format!("0::/kubepods/pod{}/0f1e\n", HASH.to_ascii_uppercase()),
        ] {
            assert_eq!(
                pod_uid_from_cgroup(&cgroup).as_deref(),
                Some(HASH),
                "{cgroup}"
            );
        }
    }

    fn pod(json: serde_json::Value) -> NodePod {
        NodePod::from_pod(&serde_json::from_value(json).unwrap())
    }

    #[test]
    fn labels_are_kept_within_bounds_and_in_key_order() {
        let mut labels = serde_json::Map::new();
        for i in 0..NodePod::MAX_LABELS + 6 {
            labels.insert(format!("k{i:03}"), "v".into());
        }
        // Over Kubernetes' sizes (only a server that does not validate sends these), first in
        // key order, so they take no place of the kept ones.
        labels.insert("a-long".into(), "v".repeat(64).into());
        labels.insert(
            format!("a{}", "k".repeat(Selector::MAX_LABEL_KEY_LEN)),
            "v".into(),
        );
        let pod = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "uid": UID, "labels": labels},
        }));
        assert_eq!(pod.labels.len(), NodePod::MAX_LABELS);
        assert_eq!(pod.labels[0], ("k000".to_owned(), "v".to_owned()));
        assert_eq!(
            pod.labels.last().unwrap().0,
            format!("k{:03}", NodePod::MAX_LABELS - 1)
        );
        assert_eq!(pod.labels_left_out, 8);
        assert_eq!(pod.mirror_of, None);
    }

    #[test]
    fn a_mirror_pod_names_its_static_pod_unless_another_pod_claims_it_too() {
        let mirror = |name: &str, uid: &str, annotation: &str| {
            pod(serde_json::json!({
                "metadata": {"name": name, "namespace": "kube-system", "uid": uid,
                             "annotations": {MIRROR_ANNOTATION: annotation}},
            }))
        };
        let apiserver = mirror(
            "kube-apiserver-node-a",
            "0a8c3e2d-1b4f-4d6a-8e9c-7f5b3a1d2c4e",
            &HASH.to_ascii_uppercase(),
        );
        assert_eq!(apiserver.mirror_of.as_deref(), Some(HASH));
        assert_eq!(mirror("x", UID, "not-a-uid").mirror_of, None);
        let with_account = pod(serde_json::json!({
            "metadata": {"name": "x", "namespace": "web", "uid": UID,
                         "annotations": {MIRROR_ANNOTATION: HASH}},
            "spec": {"serviceAccountName": "default", "containers": []},
        }));
        assert_eq!(
            with_account.mirror_of, None,
            "no mirror pod has a service account"
        );

        let index = KnownPods::index(vec![apiserver.clone()]);
        assert_eq!(index[HASH].info.name, "kube-apiserver-node-a");
        assert_eq!(
            index["0a8c3e2d-1b4f-4d6a-8e9c-7f5b3a1d2c4e"].info.name,
            "kube-apiserver-node-a"
        );

        // A second pod claiming the same static pod: neither is believed.
        let forged = mirror("forged", UID, HASH);
        let index = KnownPods::index(vec![apiserver.clone(), forged]);
        assert!(!index.contains_key(HASH));
        assert_eq!(index[UID].info.name, "forged", "pods keep their own UIDs");

        // A mirror annotation naming another pod's own UID does not take it over, and that
        // UID then names nobody.
        let other = pod(serde_json::json!({
            "metadata": {"name": "other", "namespace": "web", "uid": UID},
        }));
        let claims_other = mirror("claims-other", "0a8c3e2d-1b4f-4d6a-8e9c-7f5b3a1d2c4e", UID);
        let index = KnownPods::index(vec![other, claims_other]);
        assert!(!index.contains_key(UID));
    }
}
