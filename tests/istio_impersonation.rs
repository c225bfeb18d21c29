//! Node-agent impersonation end to end: a real `meshca serve` (Tresor) with `istio.enabled` and
//! the fake Kubernetes API server (`support/kube_api.rs`) as its cluster, called as ztunnel calls
//! it — its projected token (bound to its pod on node-1) in `authorization: Bearer` and the
//! workload's SPIFFE ID in the request metadata `ImpersonatedIdentity` — by the tonic client
//! generated from `proto/istio/v1/auth/ca.proto`. What is mocked: the API server (its
//! TokenReviews and pods); everything of meshca's is real.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_provider::CertificateInfo;
use meshca_provider::x509::certificates_from_pem;
use meshca_test_support as support;
use support::csr::greedy_openssl_csr;
use support::daemon::MeshcaServe;
use support::istio::{ClientIdentity, ISTIOD_NAME, IstioCaClient, serve_with_istio};
use support::istio_interop::{SA1_TOKEN, ZTUNNEL_TOKEN, node_agent_cluster};
use support::kube_api::MockKube;
use tonic::Code;

const IMPERSONATE: &str = "ImpersonatedIdentity";

fn id(short: &str) -> String {
    let (ns, sa) = short.split_once('/').unwrap();
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

/// The URI SANs of the leaf (the first element of `cert_chain`).
fn leaf_uris(chain: &[String]) -> Vec<String> {
    let leaf = certificates_from_pem(&chain[0]).unwrap().remove(0);
    CertificateInfo::parse(&leaf).unwrap().uri_sans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_gets_the_identities_on_its_node_and_nothing_else() {
    let kube = MockKube::start().await;
    node_agent_cluster(&kube);
    let (builder, address) = serve_with_istio();
    let mut serve: MeshcaServe = builder.env("KUBECONFIG", kube.kubeconfig()).start();
    serve.wait_ready().await;
    serve.wait_listening(address.port()).await;
    let ca_dir = serve.dir().join("ca");
    let root_pem = std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap();
    let mut client = IstioCaClient::connect(address, ISTIOD_NAME, &root_pem, None)
        .await
        .unwrap();
    // A CSR that asks for other names (another SPIFFE ID, a DNS name): never trusted.
    let csr = std::fs::read_to_string(greedy_openssl_csr(
        serve.dir(),
        "workload",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ))
    .unwrap();

    // ns1/sa1 runs on ztunnel's node: its certificate, naming ns1/sa1 only.
    let chain = client
        .create(
            &csr,
            3600,
            Some(ZTUNNEL_TOKEN),
            &[(IMPERSONATE, &id("ns1/sa1"))],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", serve.tail(30)));
    assert_eq!(leaf_uris(&chain), [id("ns1/sa1")]);

    // ns2/sa2 runs on node-2 only.
    let refused = client
        .create(
            &csr,
            3600,
            Some(ZTUNNEL_TOKEN),
            &[(IMPERSONATE, &id("ns2/sa2"))],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("node-1"),
        "the reason names ztunnel's node: {refused:?}"
    );

    // A workload's own token is no node agent's, though its pod is on node-1.
    let refused = client
        .create(
            &csr,
            3600,
            Some(SA1_TOKEN),
            &[(IMPERSONATE, &id("ns2/sa2"))],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("istio.trustedNodeAgents"),
        "{refused:?}"
    );

    // ztunnel's identity in a client certificate names no pod or node.
    let out = serve.dir().join("ztunnel-cert");
    support::cli::ok(&support::cli::meshca(
        &ca_dir,
        &[
            "issue",
            "--identity",
            "istio-system/ztunnel",
            "--out-dir",
            out.to_str().unwrap(),
        ],
    ));
    let identity = ClientIdentity::from_dir(&out);
    let mut with_certificate =
        IstioCaClient::connect(address, ISTIOD_NAME, &root_pem, Some(&identity))
            .await
            .unwrap();
    let refused = with_certificate
        .create(&csr, 3600, None, &[(IMPERSONATE, &id("ns1/sa1"))])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("cannot impersonate"),
        "{refused:?}"
    );

    // Each impersonation looked ztunnel's pod up and listed the node's pods: no cache.
    let pod_reads = kube
        .requests()
        .iter()
        .filter(|r| r.is("GET", "/api/v1/namespaces/istio-system/pods/ztunnel-abc"))
        .count();
    assert_eq!(
        pod_reads, 2,
        "one lookup per impersonation by ztunnel's token"
    );
}
