//! Istio's CA API with the cert-manager provider: a real `meshca serve` whose certificates come
//! from CertificateRequests on the fake Kubernetes API server, where a test CA plays
//! cert-manager's CA issuer and signs what each CSR asks for, called by the Python grpcio
//! client (stubs generated from `proto/` at run time).
//!
//! cert-manager certifies the names a CSR asks for (`CsrNames::FromCsr`), so meshca forwards a
//! caller's CSR only when it asks for exactly the caller's identity — which is what istio-agent
//! and ztunnel send (an empty subject and one URI SAN) — and refuses any other before a
//! CertificateRequest is created.
//!
//! grpcio comes from `scripts/install-tools.sh grpc` (or `MESHCA_GRPC_PYTHONPATH`); without it
//! the test is skipped, except with `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use meshca_test_support as support;

use support::TestCa;
use support::csr::{exact_openssl_csr, greedy_openssl_csr};
use support::id;
use support::istio_interop::{
    IstioCa, P256, PythonClient, REQUESTED_SECONDS, RSA2048, TwoCallers, check_chain,
};
use support::kube_api::Step;
use support::kube_api::cert_manager::{REQUESTS_PATH, fake, signing_issuer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_signs_what_istio_agents_ask_and_nothing_else() {
    let Some(client) = PythonClient::find() else {
        return;
    };
    let ca = Arc::new(TestCa::new("istio cert-manager"));
    let kube = fake(signing_issuer(&ca), Some(&ca.root_pem()), vec![]).await;
    kube.set_default_watch(Some(vec![Step::Pending, Step::Outcome]));
    let global: Vec<String> = [
        "--set",
        "certificateProvider.kind=cert-manager",
        "--set",
        "certManager.issuerName=meshca-ca",
    ]
    .map(str::to_owned)
    .to_vec();
    let istio = IstioCa::start_with_kube(kube, &global).await;
    let work = istio.work.path();

    let TwoCallers {
        mtls_caller,
        token_caller,
        certificate,
        token,
    } = TwoCallers::of(&istio);

    // What istio-agent sends: its own SPIFFE ID, nothing else; both key types, both credentials.
    for (key_name, newkey) in [("p256", P256), ("rsa2048", RSA2048)] {
        for (credential, caller) in [(&certificate, mtls_caller), (&token, token_caller)] {
            let csr = exact_openssl_csr(
                work,
                &format!("{key_name}-{}", caller.replace('/', "_")),
                &id(caller).to_string(),
                newkey,
            );
            let chain = istio
                .call(&client, &csr)
                .credential(credential.clone())
                .validity(REQUESTED_SECONDS)
                .send()
                .await
                .unwrap_or_else(|refusal| {
                    panic!(
                        "{key_name} CSR as {caller} refused: {refusal:?}\n{}",
                        istio.daemon.tail(30)
                    )
                });
            check_chain(&chain, &csr, caller, REQUESTED_SECONDS);
        }
    }

    // A CSR asking for another workload's names (or naming the caller, but with a subject):
    // refused, and cert-manager never sees it.
    let before = istio
        .kube
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == REQUESTS_PATH)
        .count();
    let greedy = greedy_openssl_csr(work, "greedy", P256);
    for credential in [&certificate, &token] {
        let refusal = istio
            .call(&client, &greedy)
            .credential(credential.clone())
            .send()
            .await
            .expect_err("a CSR asking for other names is refused with cert-manager");
        assert!(
            refusal.code == "INVALID_ARGUMENT" || refusal.code == "FAILED_PRECONDITION",
            "{refusal:?}"
        );
        assert!(
            refusal.details.contains("CSR") || refusal.details.contains("request"),
            "says the CSR is the problem: {refusal:?}"
        );
    }
    let after = istio
        .kube
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == REQUESTS_PATH)
        .count();
    assert_eq!(
        before, after,
        "no CertificateRequest was created for a refused CSR"
    );
}
