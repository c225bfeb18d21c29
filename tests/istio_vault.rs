//! Istio's CA API with the Vault provider against a real OpenBao: the same checks as
//! `istio_grpcio.rs` (Python grpcio client, P-256 and RSA CSRs over mTLS and a token,
//! `openssl verify -x509_strict` with the last `cert_chain` element, the caller's SPIFFE ID
//! only, the CSR's key, the requested lifetime at most, the refusals), with every certificate
//! signed by OpenBao's `pki/sign` through an intermediate CA.
//!
//! OpenBao and grpcio come from `scripts/install-tools.sh bao grpc`; without them the test is
//! skipped, except with `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use serde_json::json;
use support::bao::Bao;
use support::istio_interop::{IstioCa, PythonClient, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_gets_csrs_signed_by_openbao_over_mtls_and_tokens() {
    let Some(client) = PythonClient::find() else {
        return;
    };
    let bao = Bao::dev().await;
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
    let ca = IstioCa::start(&global).await;
    conformance(&ca, &client).await;
    assert!(
        !ca.daemon.log().contains(&bao.root_token),
        "the Vault token leaked into the log"
    );
}
