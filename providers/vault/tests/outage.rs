//! Vault going away and coming back: transient errors while it is gone or sealed, and
//! issuance resuming with the same provider once it is back.

#![allow(clippy::unwrap_used)]

use meshca_test_support::bao as support;

use std::time::Duration;

use meshca_provider::{
    CertificateChain, CertificateProvider, IssueRequest, KeyType, LeafKey, LeafSpec, ProviderError,
    SpiffeId, TrustDomain,
};
use meshca_vault::VaultProvider;
use support::Bao;

async fn issue(provider: &VaultProvider) -> Result<CertificateChain, ProviderError> {
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let id = SpiffeId::from_short("bookstore/bookstore", &TrustDomain::default()).unwrap();
    let spec = LeafSpec::workload(&id, &[], Duration::from_secs(600));
    provider.issue(&IssueRequest::generated(&spec, &key)).await
}

fn assert_unavailable(
    result: Result<impl std::fmt::Debug, ProviderError>,
    address: &str,
) -> String {
    let err = result.unwrap_err();
    assert!(matches!(err, ProviderError::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient(), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(address), "{message}");
    message
}

#[tokio::test]
async fn issuance_resumes_after_vault_restarts_without_a_new_provider() {
    let mut bao = Bao::persistent().await;
    bao.init_and_unseal().await;
    bao.pki("pki", "meshca outage root").await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token.clone()))
        .await
        .unwrap();
    let bundle = provider.trust_bundle().await.unwrap();
    issue(&provider).await.unwrap();

    bao.kill();
    let message = assert_unavailable(issue(&provider).await, &bao.address);
    assert!(
        message.contains("vault.host, vault.port and vault.protocol"),
        "{message}"
    );
    assert_unavailable(provider.check_health().await, &bao.address);
    assert_unavailable(provider.trust_bundle().await, &bao.address);

    // Back, but sealed: still transient.
    bao.restart().await;
    let message = assert_unavailable(issue(&provider).await, &bao.address);
    assert!(message.to_lowercase().contains("sealed"), "{message}");

    bao.unseal().await;
    let chain = issue(&provider).await.unwrap();
    provider.check_health().await.unwrap();
    assert_eq!(
        provider.trust_bundle().await.unwrap(),
        bundle,
        "same CA after the restart"
    );
    assert!(chain.leaf_info().unwrap().uri_sans[0].ends_with("/sa/bookstore"));
}
