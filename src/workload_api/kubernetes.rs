//! SPIRE's Kubernetes workload attestor: the caller's pid → `/proc/<pid>/cgroup` → the UID of
//! the pod whose cgroup it runs in → that pod, among the pods the API server schedules on this
//! node → `k8s:ns:<namespace>`, `k8s:sa:<service account>`, `k8s:pod-uid:<uid>`,
//! `k8s:pod-name:<name>`.
//!
//! The pods come from one LIST of this node's pods (`fieldSelector=spec.nodeName=<node>`),
//! kept by UID and listed again when a caller's pod UID is not among them (a pod started since),
//! at most once per [`KubernetesAttestor::DEFAULT_MIN_REFRESH`]: a caller whose cgroup names no
//! known pod cannot make meshca list pods on every call. A UID names one pod for its whole life,
//! so a kept answer is never wrong about whom it names. A process in no pod, in a pod of another
//! node, or whose pod cannot be looked up, gets no `k8s:` selector: entries that need one do not
//! match it (fail closed).
//!
//! meshca must see the callers' processes: in Kubernetes, a node-local meshca with `hostPID`.

use std::collections::{BTreeSet, HashMap};
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

/// The pods scheduled on this node, as the API server reports them now.
///
/// Obligations: MUST answer from the API server (never from what a caller said), only pods
/// scheduled on this node, and MUST bound the work one call does.
#[async_trait]
pub trait NodePods: Send + Sync + 'static {
    /// Every pod on the node.
    async fn list(&self) -> Result<Vec<PodInfo>, PodLookupError>;
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
    async fn list(&self) -> Result<Vec<PodInfo>, PodLookupError> {
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
                    .map(PodInfo::from_pod)
                    .filter(|pod| pod.node.as_deref() == Some(node.as_str())),
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

/// The node's pods by UID (lowercase), and when they were listed.
#[derive(Default)]
struct KnownPods {
    by_uid: HashMap<String, PodInfo>,
    listed_at: Option<Instant>,
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
    async fn pod(&self, uid: &str) -> Option<PodInfo> {
        let mut known = self.known.lock().await;
        if let Some(pod) = known.by_uid.get(uid) {
            return Some(pod.clone());
        }
        if known
            .listed_at
            .is_some_and(|at| at.elapsed() < self.min_refresh)
        {
            return None;
        }
        known.listed_at = Some(Instant::now());
        match self.pods.list().await {
            Ok(pods) => {
                known.by_uid = pods
                    .into_iter()
                    .filter_map(|pod| Some((pod.uid.clone()?.to_ascii_lowercase(), pod)))
                    .collect();
            }
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
        let mut selectors = vec![Selector::K8sNamespace(pod.namespace)];
        selectors.extend(pod.service_account.map(Selector::K8sServiceAccount));
        selectors.push(Selector::K8sPodUid(pod_uid));
        selectors.push(Selector::K8sPodName(pod.name));
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
    is_uuid(&uid).then_some(uid)
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
        ] {
            assert_eq!(pod_uid_from_cgroup(&cgroup), None, "{cgroup}");
        }
    }
}
