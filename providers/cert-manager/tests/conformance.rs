//! The provider conformance suite against the cert-manager provider, with a fake API server
//! whose "issuer" signs each CSR with a test CA (root → intermediate), as cert-manager's CA
//! issuer does. Real: kube's Client, the provider, the CSRs, the signatures and the suite's
//! webpki verification. Mocked: the API server and cert-manager (see `support/mod.rs`).

#![allow(clippy::unwrap_used)]

mod support;

use meshca_cert_manager::{CertManagerProvider, CertManagerSettings};
use meshca_provider::TrustDomain;
use support::{Fake, Step, TestCa};

#[tokio::test]
async fn the_provider_conforms() {
    let ca = TestCa::new("conformance");
    let fake = Fake::new(ca.issuer(), Some(&ca.root_pem), vec![]);
    fake.state.lock().unwrap().default_watch = Some(vec![Step::Pending, Step::Outcome]);
    let provider =
        CertManagerProvider::new(fake.client.clone(), CertManagerSettings::default()).unwrap();
    provider.start().await.unwrap();
    meshca_provider::conformance::run_all(&provider, &TrustDomain::default()).await;
    // Every request was deleted after use.
    assert!(fake.state.lock().unwrap().requests.is_empty());
}
