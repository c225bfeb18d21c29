//! The provider conformance suite against the cert-manager provider, with a fake API server
//! whose "issuer" signs each CSR with a test CA (root → intermediate), as cert-manager's CA
//! issuer does. Real: kube's Client, the provider, the CSRs, the signatures and the suite's
//! webpki verification. Mocked: the API server and cert-manager (see `support/mod.rs`).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use meshca_cert_manager::{CertManagerProvider, CertManagerSettings};
use meshca_provider::TrustDomain;
use meshca_test_support::TestCa;
use meshca_test_support::kube_api::Step;
use meshca_test_support::kube_api::cert_manager::{REQUESTS_PATH, fake, signing_issuer};

#[tokio::test]
async fn the_provider_conforms() {
    let ca = Arc::new(TestCa::new("conformance"));
    let fake = fake(signing_issuer(&ca), Some(&ca.root_pem()), vec![]).await;
    fake.set_default_watch(Some(vec![Step::Pending, Step::Outcome]));
    let provider =
        CertManagerProvider::new(fake.in_process_client(), CertManagerSettings::default()).unwrap();
    provider.start().await.unwrap();
    meshca_provider::conformance::run_all(&provider, &TrustDomain::default()).await;
    // Every request was deleted after use.
    assert!(fake.names(REQUESTS_PATH).is_empty());
}
