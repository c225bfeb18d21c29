//! Istio's CA API with the Vault provider against a real OpenBao, every certificate signed by
//! OpenBao's `pki/sign` through an intermediate CA:
//! - the same checks as `istio_grpcio.rs` (Python grpcio client, P-256 and RSA CSRs over mTLS
//!   and a token, `openssl verify -x509_strict` with the last `cert_chain` element, the
//!   caller's SPIFFE ID only, the CSR's key, the requested lifetime at most, the refusals);
//! - node-agent impersonation as ztunnel does it (its pod-bound token, `ImpersonatedIdentity`)
//!   with the fake Kubernetes API server as the cluster (`node_agent_cluster`): a workload on
//!   ztunnel's node gets an OpenBao-signed certificate naming it only; a workload on another
//!   node, or a caller that is no trusted node agent, is refused before OpenBao is asked.
//!
//! OpenBao and grpcio come from `scripts/install-tools.sh bao grpc`; without them the test is
//! skipped (the impersonation test needs OpenBao only), except with `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use serde_json::json;
use support::bao::Bao;
use support::csr::greedy_openssl_csr;
use support::id;
use support::istio::{ISTIOD_NAME, IstioCaClient};
use support::istio_interop::{
    IstioCa, P256, PythonClient, REQUESTED_SECONDS, SA1_TOKEN, ZTUNNEL_TOKEN, check_chain,
    conformance, node_agent_cluster,
};
use tonic::Code;

const IMPERSONATE: &str = "ImpersonatedIdentity";

/// `meshca serve` with the Istio CA API and the Vault provider signing with OpenBao's
/// `pki_int` (an intermediate under `pki`), which takes any key type.
async fn istio_ca_on_openbao(bao: &Bao) -> IstioCa {
    bao.pki("pki", "meshca istio root").await;
    // RSA CSRs too: the role takes any key type (its default in `Bao::role` is EC P-256).
    bao.intermediate_pki("pki_int", "pki", json!({"key_type": "any", "key_bits": 0}))
        .await;
    let global: Vec<String> = [
        "certificateProvider.kind=vault".to_owned(),
        "vault.host=127.0.0.1".to_owned(),
        format!("vault.port={}", bao.port),
        format!("vault.token={}", bao.root_token),
        "vault.pkiPath=pki_int".to_owned(),
    ]
    .into_iter()
    .flat_map(|setting| ["--set".to_owned(), setting])
    .collect();
    IstioCa::start(&global).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_gets_csrs_signed_by_openbao_over_mtls_and_tokens() {
    let Some(client) = PythonClient::find() else {
        return;
    };
    let bao = Bao::dev().await;
    let ca = istio_ca_on_openbao(&bao).await;
    conformance(&ca, &client).await;
    assert!(
        !ca.daemon.log().contains(&bao.root_token),
        "the Vault token leaked into the log"
    );
}

/// How many certificates the Istio CA API has issued, from the daemon's log.
fn issued(ca: &IstioCa) -> usize {
    ca.daemon
        .log()
        .matches("Istio CA API issued a certificate")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_gets_openbao_certificates_for_the_workloads_on_its_node_only() {
    let bao = Bao::dev().await;
    let ca = istio_ca_on_openbao(&bao).await;
    node_agent_cluster(&ca.kube);
    let root_pem = std::fs::read_to_string(ca.root_ca()).unwrap();
    let mut client = IstioCaClient::connect(ca.addr, ISTIOD_NAME, &root_pem, None)
        .await
        .unwrap();
    // Asks for another SPIFFE ID and a DNS name: never trusted.
    let csr = greedy_openssl_csr(ca.work.path(), "workload", P256);
    let csr_pem = std::fs::read_to_string(&csr).unwrap();
    let (on_node_1, on_node_2) = (id("ns1/sa1").to_string(), id("ns2/sa2").to_string());

    // ns1/sa1 runs on ztunnel's node: OpenBao signs a leaf naming ns1/sa1 only, which
    // `openssl verify -x509_strict` accepts through OpenBao's intermediate.
    let chain = client
        .create(
            &csr_pem,
            i64::try_from(REQUESTED_SECONDS).unwrap(),
            Some(ZTUNNEL_TOKEN),
            &[(IMPERSONATE, &on_node_1)],
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", ca.daemon.tail(30)));
    let signed = check_chain(&chain, &csr, "ns1/sa1", REQUESTED_SECONDS);
    assert!(
        !signed.intermediates().is_empty(),
        "signed by OpenBao's intermediate, not a root meshca holds"
    );
    let issued_before = issued(&ca);

    // ns2/sa2 runs on node-2 only.
    let refused = client
        .create(
            &csr_pem,
            3600,
            Some(ZTUNNEL_TOKEN),
            &[(IMPERSONATE, &on_node_2)],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("node-1"),
        "the reason names ztunnel's node: {refused:?}"
    );

    // A workload's own token is no node agent's, though its pod is on node-1 too.
    let refused = client
        .create(
            &csr_pem,
            3600,
            Some(SA1_TOKEN),
            &[(IMPERSONATE, &on_node_2)],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("istio.trustedNodeAgents"),
        "{refused:?}"
    );
    assert_eq!(issued(&ca), issued_before, "nothing signed for a refusal");
    assert!(
        !ca.daemon.log().contains(&bao.root_token),
        "the Vault token leaked into the log"
    );
}
