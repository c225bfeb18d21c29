//! The Kubernetes workload attestor (`workloadApi.attestors: [k8s]`) against the fake
//! Kubernetes API server of tests/support, with fabricated `/proc/<pid>/cgroup` files in the
//! kubelet's shapes: a caller's pid leads to its pod's UID, its pod (listed once for this node,
//! field-selected by `spec.nodeName`, listed again when a pod UID is unknown) and SPIRE's
//! `k8s:ns`, `k8s:sa`, `k8s:pod-uid`, `k8s:pod-name` selectors. A caller whose cgroup names no
//! pod of this node gets none, and on the real Workload API server PERMISSION_DENIED with
//! nothing issued (this process calls it, its own pid's cgroup fabricated).

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
    kube.put_object(
        &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {"serviceAccountName": service_account, "nodeName": node,
                     "containers": [{"name": "app", "image": "app"}]},
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
/// web/frontend's pod → that SVID; then a pod of no node's → PERMISSION_DENIED, nothing more
/// issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_in_no_known_pod_is_refused_and_nothing_is_issued() {
    let kube = MockKube::start().await;
    put_pod(&kube, "web", "frontend-1", "frontend", NODE, FRONTEND_UID);
    let proc_root = tempfile::tempdir().unwrap();
    let me = i32::try_from(std::process::id()).unwrap();
    fabricate(
        proc_root.path(),
        me,
        &format!("0::/kubepods/burstable/pod{FRONTEND_UID}/abc\n"),
    );
    let trust_domain = TrustDomain::default();
    let frontend = SpiffeId::from_short("web/frontend", &trust_domain).unwrap();
    let entries = vec![RegistrationEntry {
        spiffe_id: frontend.clone(),
        selectors: vec![
            Selector::K8sNamespace("web".into()),
            Selector::K8sServiceAccount("frontend".into()),
        ],
        hint: String::new(),
    }];
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
    assert_eq!(response.svids.len(), 1);
    assert_eq!(response.svids[0].spiffe_id, frontend.to_string());
    drop(stream);
    assert_eq!(source.issued(), 1);

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
    assert_eq!(source.issued(), 1, "nothing issued for the refused caller");

    drop(stop);
    running.stopped().await.unwrap();
}
