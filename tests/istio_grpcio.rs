//! Istio's CA API from a client no one on this project wrote: Python grpcio, its stubs
//! generated from `proto/` when the test runs (`tests/python/istio_ca_client.py`), against a
//! real `meshca serve` with Tresor. TokenReviews are answered by the fake Kubernetes API server;
//! everything else is real (the daemon, its TLS listener, gRPC, openssl's CSRs and verifier).
//!
//! grpcio comes from `scripts/install-tools.sh grpc` (or `MESHCA_GRPC_PYTHONPATH`); without it
//! the test is skipped, except with `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use support::istio_interop::{IstioCa, PythonClient, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_gets_csrs_signed_by_tresor_over_mtls_and_tokens() {
    let Some(client) = PythonClient::find() else {
        return;
    };
    let ca = IstioCa::start_tresor().await;
    conformance(&ca, &client).await;
}
