//! The Kubernetes workload attestor (`workloadApi.attestors: [k8s]`) against the fake
//! Kubernetes API server of tests/support, with fabricated `/proc/<pid>/cgroup` files in the
//! kubelet's shapes: a caller's pid leads to its pod's UID, its pod (listed once for this node,
//! field-selected by `spec.nodeName`, listed again when a pod UID is unknown) and SPIRE's
//! `k8s:ns`, `k8s:sa`, `k8s:pod-uid`, `k8s:pod-name`, `k8s:pod-label` selectors; a static
//! pod's cgroup (the kubelet's config hash) leads to its mirror pod on this node. A caller whose
//! cgroup names no pod of this node gets none, and on the real Workload API server
//! PERMISSION_DENIED with nothing issued (this process calls it, its own pid's cgroup
//! fabricated).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshca::workload_api::proto::X509svidRequest;
use meshca::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshca::workload_api::{
    Attestor, Attestors, KubeNodePods, KubernetesAttestor, PeerCredentials, RegistrationEntry,
    Selector, WorkloadApiLimits, WorkloadApiServer, WorkloadApiSettings,
};
use meshca_provider::{SpiffeId, TrustDomain};
use serde_json::json;
use support::kube_api::MockKube;
use support::{TestCa, TestSource};
use tonic::Code;

const NODE: &str = "node-a";
const FRONTEND_UID: &str = "6b1e6a4c-2f5d-4c1e-9a57-0d6f5e0c2b11";
const DB_UID: &str = "0a8c3e2d-1b4f-4d6a-8e9c-7f5b3a1d2c4e";
const ELSEWHERE_UID: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
const LATE_UID: &str = "12345678-9abc-4def-8123-456789abcdef";

/// Stores a running pod `namespace/name` of `service_account` on `node` with `uid`.
fn put_pod(
    kube: &MockKube,
    namespace: &str,
    name: &str,
    service_account: &str,
    node: &str,
    uid: &str,
) {
    put_pod_with(
        kube,
        json!({"name": name, "namespace": namespace, "uid": uid}),
        Some(service_account),
        node,
    );
}

/// Stores a running pod on `node` with `metadata` (name, namespace, uid, labels, annotations)
/// and `service_account` (none for a static pod's mirror).
fn put_pod_with(
    kube: &MockKube,
    metadata: serde_json::Value,
    service_account: Option<&str>,
    node: &str,
) {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        metadata["namespace"].as_str().unwrap(),
        metadata["name"].as_str().unwrap()
    );
    let mut spec = json!({"nodeName": node, "containers": [{"name": "app", "image": "app"}]});
    if let Some(account) = service_account {
        spec["serviceAccountName"] = account.into();
    }
    kube.put_object(
        &path,
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
            "status": {"phase": "Running"},
        }),
    );
}

/// Writes `<proc>/<pid>/cgroup`.
fn fabricate(proc_root: &Path, pid: i32, cgroup: &str) {
    let dir = proc_root.join(pid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cgroup"), cgroup).unwrap();
}

/// The caller `pid` with the uid that owns the fabricated `/proc` entries (this process's).
fn caller(pid: i32) -> PeerCredentials {
    let me = std::fs::metadata("/proc/self").unwrap();
    PeerCredentials {
        uid: me.uid(),
        gid: me.gid(),
        pid: Some(pid),
    }
}

/// LISTs of pods the attestor made, each checked to be field-selected by this node.
fn pod_lists(kube: &MockKube) -> usize {
    let lists: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.is("GET", "/api/v1/pods"))
        .collect();
    for list in &lists {
        assert_eq!(
            list.params.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-a"),
            "{list:?}"
        );
    }
    lists.len()
}

fn k8s(namespace: &str, sa: &str, uid: &str, name: &str) -> Vec<Selector> {
    vec![
        Selector::K8sNamespace(namespace.into()),
        Selector::K8sServiceAccount(sa.into()),
        Selector::K8sPodUid(uid.into()),
        Selector::K8sPodName(name.into()),
    ]
}

#[tokio::test]
async fn callers_are_attested_by_the_pod_their_cgroup_names_on_this_node() {
    let kube = MockKube::start().await;
    put_pod(
        &kube,
        "web",
        "frontend-7d4b9c-x2kqz",
        "frontend",
        NODE,
        FRONTEND_UID,
    );
    put_pod(&kube, "db", "postgres-0", "postgres", NODE, DB_UID);
    put_pod(
        &kube,
        "web",
        "frontend-7d4b9c-abcde",
        "frontend",
        "node-b",
        ELSEWHERE_UID,
    );
    let proc_root = tempfile::tempdir().unwrap();
    let systemd = |uid: &str| uid.replace('-', "_");
    // cgroup v2, systemd driver (the usual shape today).
    fabricate(
        proc_root.path(),
        100,
        &format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
             cri-containerd-0f1e2d3c.scope\n",
            systemd(FRONTEND_UID)
        ),
    );
    // cgroup v1, cgroupfs driver.
    fabricate(
        proc_root.path(),
        200,
        &format!(
            "12:memory:/kubepods/besteffort/pod{DB_UID}/4b5a\n11:cpu,cpuacct:/kubepods/besteffort/pod{DB_UID}/4b5a\n"
        ),
    );
    // A pod of another node (not in this node's list), a host process, a pod started later.
    fabricate(
        proc_root.path(),
        300,
        &format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/x.scope\n",
            systemd(ELSEWHERE_UID)
        ),
    );
    fabricate(proc_root.path(), 400, "0::/system.slice/sshd.service\n");
    fabricate(
        proc_root.path(),
        500,
        &format!("0::/kubepods/pod{LATE_UID}/abc\n"),
    );

    let attestor = KubernetesAttestor::new(
        proc_root.path(),
        Arc::new(KubeNodePods::new(kube.client().await, NODE)),
    )
    .with_min_refresh(Duration::ZERO);

    assert_eq!(
        attestor.attest(caller(100)).await.unwrap(),
        k8s("web", "frontend", FRONTEND_UID, "frontend-7d4b9c-x2kqz")
    );
    assert_eq!(pod_lists(&kube), 1);
    // Known from the same list: no second LIST.
    assert_eq!(
        attestor.attest(caller(200)).await.unwrap(),
        k8s("db", "postgres", DB_UID, "postgres-0")
    );
    assert_eq!(pod_lists(&kube), 1);

    // Another node's pod is not among this node's, even listed again: nothing.
    assert_eq!(attestor.attest(caller(300)).await.unwrap(), []);
    assert_eq!(pod_lists(&kube), 2, "an unknown pod UID lists again");
    // A process in no pod: nothing, and no LIST (there is no pod UID to look for).
    assert_eq!(attestor.attest(caller(400)).await.unwrap(), []);
    assert_eq!(pod_lists(&kube), 2);
    // No pid, a pid with no /proc entry, a /proc entry of another uid: nothing.
    let no_pid = PeerCredentials {
        pid: None,
        ..caller(0)
    };
    assert_eq!(attestor.attest(no_pid).await.unwrap(), []);
    assert_eq!(attestor.attest(caller(999)).await.unwrap(), []);
    let other_uid = PeerCredentials {
        uid: caller(100).uid.wrapping_add(1),
        ..caller(100)
    };
    assert_eq!(
        attestor.attest(other_uid).await.unwrap(),
        [],
        "a reused pid of another user is not read as the caller's"
    );

    // A pod created after the last list is found by listing again on the miss.
    assert_eq!(attestor.attest(caller(500)).await.unwrap(), []);
    put_pod(&kube, "jobs", "report-28391", "reporter", NODE, LATE_UID);
    assert_eq!(
        attestor.attest(caller(500)).await.unwrap(),
        k8s("jobs", "reporter", LATE_UID, "report-28391")
    );
}

/// A static pod's processes: their cgroup names the kubelet's config hash, which only the
/// mirror pod's `kubernetes.io/config.mirror` annotation carries. Labels give
/// `k8s:pod-label:<key>:<value>` selectors, in key order.
#[tokio::test]
async fn static_pods_are_found_by_their_mirror_pod_on_this_node_and_labels_are_selectors() {
    const APISERVER_HASH: &str = "81cdabfc720501d9e81b425b15921b4d";
    const APISERVER_MIRROR_UID: &str = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a";
    const OTHER_NODE_HASH: &str = "0123456789abcdef0123456789abcdef";
    const CLAIMED_HASH: &str = "fedcba9876543210fedcba9876543210";
    const PRETENDED_HASH: &str = "00112233445566778899aabbccddeeff";
    let kube = MockKube::start().await;
    // The kubelet's mirror of this node's kube-apiserver static pod.
    put_pod_with(
        &kube,
        json!({"name": "kube-apiserver-node-a", "namespace": "kube-system",
               "uid": APISERVER_MIRROR_UID,
               "labels": {"tier": "control-plane", "component": "kube-apiserver"},
               "annotations": {"kubernetes.io/config.mirror": APISERVER_HASH,
                               "kubernetes.io/config.source": "file"}}),
        None,
        NODE,
    );
    // Another node's mirror pod: its static pod does not run here.
    put_pod_with(
        &kube,
        json!({"name": "etcd-node-b", "namespace": "kube-system",
               "uid": ELSEWHERE_UID,
               "annotations": {"kubernetes.io/config.mirror": OTHER_NODE_HASH}}),
        None,
        "node-b",
    );
    // Two pods of this node claiming one static pod (one annotated by hand, without a service
    // account as the API server requires of a mirror pod): neither counts.
    put_pod_with(
        &kube,
        json!({"name": "etcd-node-a", "namespace": "kube-system", "uid": DB_UID,
               "annotations": {"kubernetes.io/config.mirror": CLAIMED_HASH}}),
        None,
        NODE,
    );
    put_pod_with(
        &kube,
        json!({"name": "impostor", "namespace": "web", "uid": LATE_UID,
               "annotations": {"kubernetes.io/config.mirror": CLAIMED_HASH}}),
        None,
        NODE,
    );
    // A pod with a service account is no mirror pod, whatever its annotations say.
    put_pod_with(
        &kube,
        json!({"name": "pretender", "namespace": "web",
               "uid": "5e4d3c2b-1a09-4f8e-9d7c-6b5a4f3e2d1c",
               "annotations": {"kubernetes.io/config.mirror": PRETENDED_HASH}}),
        Some("frontend"),
        NODE,
    );
    // An ordinary pod with labels.
    put_pod_with(
        &kube,
        json!({"name": "frontend-1", "namespace": "web", "uid": FRONTEND_UID,
               "labels": {"app.kubernetes.io/name": "frontend", "track": ""}}),
        Some("frontend"),
        NODE,
    );
    let proc_root = tempfile::tempdir().unwrap();
    fabricate(
        proc_root.path(),
        100,
        &format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{APISERVER_HASH}\
             .slice/cri-containerd-0f1e2d3c.scope\n"
        ),
    );
    fabricate(
        proc_root.path(),
        200,
        &format!("0::/kubepods/burstable/pod{OTHER_NODE_HASH}/abc\n"),
    );
    fabricate(
        proc_root.path(),
        300,
        &format!("0::/kubepods/burstable/pod{CLAIMED_HASH}/abc\n"),
    );
    fabricate(
        proc_root.path(),
        350,
        &format!("0::/kubepods/burstable/pod{PRETENDED_HASH}/abc\n"),
    );
    fabricate(
        proc_root.path(),
        400,
        &format!("0::/kubepods/pod{FRONTEND_UID}/abc\n"),
    );
    let attestor = KubernetesAttestor::new(
        proc_root.path(),
        Arc::new(KubeNodePods::new(kube.client().await, NODE)),
    )
    .with_min_refresh(Duration::ZERO);

    let label = |key: &str, value: &str| Selector::K8sPodLabel(key.into(), value.into());
    assert_eq!(
        attestor.attest(caller(100)).await.unwrap(),
        [
            Selector::K8sNamespace("kube-system".into()),
            Selector::K8sPodUid(APISERVER_HASH.into()),
            Selector::K8sPodName("kube-apiserver-node-a".into()),
            label("component", "kube-apiserver"),
            label("tier", "control-plane"),
        ],
        "the static pod's UID (its cgroup's) and its mirror pod's namespace, name and labels"
    );
    assert_eq!(pod_lists(&kube), 1);
    assert_eq!(
        attestor.attest(caller(200)).await.unwrap(),
        [],
        "another node's mirror pod"
    );
    assert_eq!(
        attestor.attest(caller(300)).await.unwrap(),
        [],
        "a static pod UID two pods claim"
    );
    assert_eq!(
        attestor.attest(caller(350)).await.unwrap(),
        [],
        "an annotation on a pod with a service account"
    );
    let mut frontend = k8s("web", "frontend", FRONTEND_UID, "frontend-1");
    frontend.extend([
        label("app.kubernetes.io/name", "frontend"),
        label("track", ""),
    ]);
    assert_eq!(attestor.attest(caller(400)).await.unwrap(), frontend);
}

#[tokio::test(start_paused = true)]
async fn unknown_pods_cannot_make_meshca_list_pods_on_every_call() {
    let kube = MockKube::start().await;
    put_pod(&kube, "web", "frontend-1", "frontend", NODE, FRONTEND_UID);
    let proc_root = tempfile::tempdir().unwrap();
    fabricate(
        proc_root.path(),
        300,
        &format!("0::/kubepods/pod{ELSEWHERE_UID}/abc\n"),
    );
    let attestor = KubernetesAttestor::new(
        proc_root.path(),
        Arc::new(KubeNodePods::new(kube.client().await, NODE)),
    );
    for _ in 0..5 {
        assert_eq!(attestor.attest(caller(300)).await.unwrap(), []);
    }
    assert_eq!(
        pod_lists(&kube),
        1,
        "one LIST per DEFAULT_MIN_REFRESH at most"
    );
    tokio::time::advance(KubernetesAttestor::DEFAULT_MIN_REFRESH).await;
    assert_eq!(attestor.attest(caller(300)).await.unwrap(), []);
    assert_eq!(pod_lists(&kube), 2);
}

/// The real server, with this process as the caller: its own pid's cgroup (fabricated) names
/// web/frontend's pod → the SVIDs of the entries its service account and its labels match;
/// then a pod of no node's → PERMISSION_DENIED, nothing more
/// issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_in_no_known_pod_is_refused_and_nothing_is_issued() {
    let kube = MockKube::start().await;
    put_pod_with(
        &kube,
        json!({"name": "frontend-1", "namespace": "web", "uid": FRONTEND_UID,
               "labels": {"app": "frontend", "track": "stable"}}),
        Some("frontend"),
        NODE,
    );
    let proc_root = tempfile::tempdir().unwrap();
    let me = i32::try_from(std::process::id()).unwrap();
    fabricate(
        proc_root.path(),
        me,
        &format!("0::/kubepods/burstable/pod{FRONTEND_UID}/abc\n"),
    );
    let trust_domain = TrustDomain::default();
    let frontend = SpiffeId::from_short("web/frontend", &trust_domain).unwrap();
    let stable = SpiffeId::from_short("web/frontend-stable", &trust_domain).unwrap();
    let canary = SpiffeId::from_short("web/frontend-canary", &trust_domain).unwrap();
    let entry = |spiffe_id: &SpiffeId, selectors: &[&str]| RegistrationEntry {
        spiffe_id: spiffe_id.clone(),
        selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
        hint: String::new(),
    };
    let entries = vec![
        entry(&frontend, &["k8s:ns:web", "k8s:sa:frontend"]),
        entry(&stable, &["k8s:ns:web", "k8s:pod-label:track:stable"]),
        entry(&canary, &["k8s:ns:web", "k8s:pod-label:track:canary"]),
    ];
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("workload-api.sock");
    let source = TestSource::new(Arc::new(TestCa::new("k8s-attestor")));
    let attestor: Arc<dyn Attestor> = Arc::new(Attestors(vec![Arc::new(
        KubernetesAttestor::new(
            proc_root.path(),
            Arc::new(KubeNodePods::new(kube.client().await, NODE)),
        )
        .with_min_refresh(Duration::ZERO),
    )]));
    let server = WorkloadApiServer::new(
        WorkloadApiSettings {
            socket_path: socket.clone(),
            socket_mode: 0o600,
            socket_group: None,
            trust_domain,
            entries,
            limits: WorkloadApiLimits::default(),
        },
        source.clone(),
    )
    .unwrap()
    .with_attestor(attestor);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = server.bind().await.unwrap().start(async {
        let _ = stopped.await;
    });

    let mut client = SpiffeWorkloadApiClient::new(support::unix_channel(&socket).await);
    let call = || {
        let mut request = tonic::Request::new(X509svidRequest {});
        request
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        request
    };
    let mut stream = client.fetch_x509svid(call()).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let mut ids: Vec<_> = response.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [frontend.to_string(), stable.to_string()],
        "by service account and by label; not the canary label's"
    );
    drop(stream);
    assert_eq!(source.issued(), 2);

    // The same process, now in the cgroup of a pod no node runs.
    fabricate(
        proc_root.path(),
        me,
        &format!("0::/kubepods/burstable/pod{ELSEWHERE_UID}/abc\n"),
    );
    let refused = match client.fetch_x509svid(call()).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("no registration entry"),
        "{refused:?}"
    );
    assert_eq!(source.issued(), 2, "nothing issued for the refused caller");

    drop(stop);
    running.stopped().await.unwrap();
}
