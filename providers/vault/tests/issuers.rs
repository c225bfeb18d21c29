//! A PKI mount with several issuers, against a real OpenBao: the bundle carries every issuer's
//! root, a new default issuer signs only once adopted, and a deleted issuer's root stays
//! trusted until the last leaf it signed expires.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meshca_provider::{
    CertificateChain, CertificateProvider, IssueRequest, KeyType, LeafKey, LeafSpec, SpiffeId,
    TrustBundle, TrustDomain,
};
use meshca_test_support::bao::Bao;
use meshca_vault::VaultProvider;
use serde_json::json;

async fn issue(provider: &VaultProvider, lifetime: Duration) -> CertificateChain {
    let id = SpiffeId::from_short("ns/client", &TrustDomain::default()).unwrap();
    let spec = LeafSpec::workload(&id, &[], lifetime);
    let key = LeafKey::generate(KeyType::P256).unwrap();
    provider
        .issue(&IssueRequest::generated(&spec, &key))
        .await
        .unwrap()
}

/// The common name of the leaf's issuer.
fn issuer_of(chain: &CertificateChain) -> String {
    chain.leaf_info().unwrap().issuer
}

/// The root certificate of issuer `reference`, as Vault holds it.
async fn root_of(bao: &Bao, reference: &str) -> TrustBundle {
    let pem = bao.read(&format!("pki/issuer/{reference}/json")).await["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    TrustBundle::from_pem(&pem).unwrap()
}

fn holds(bundle: &TrustBundle, root: &TrustBundle) -> bool {
    bundle.contains(&root.roots()[0])
}

#[tokio::test]
async fn a_new_default_issuer_is_trusted_at_once_and_signs_only_once_adopted() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca old root").await;
    let old_id = bao.read("pki/config/issuers").await["data"]["default"]
        .as_str()
        .unwrap()
        .to_owned();
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    let old_root = root_of(&bao, &old_id).await;
    assert_eq!(provider.trust_bundle().await.unwrap(), old_root);
    assert_eq!(provider.signing_issuer().unwrap().id, old_id);
    assert!(issuer_of(&issue(&provider, Duration::from_secs(10)).await).contains("old root"));

    // A new root issuer, made the default at once.
    let new_id = bao
        .write(
            "pki/root/generate/internal",
            json!({"common_name": "meshca new root", "issuer_name": "next", "key_type": "ec",
                   "key_bits": 256, "ttl": "87600h"}),
        )
        .await["data"]["issuer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bao.write("pki/config/issuers", json!({"default": "next"}))
        .await;
    let new_root = root_of(&bao, &new_id).await;

    // Read: both roots trusted, the old issuer still signs, the switch is reported.
    let bundle = provider.trust_bundle().await.unwrap();
    assert!(holds(&bundle, &old_root) && holds(&bundle, &new_root));
    assert_eq!(bundle.roots().len(), 2);
    assert!(issuer_of(&issue(&provider, Duration::from_secs(10)).await).contains("old root"));
    let switch = provider.issuer_switch().unwrap();
    assert_eq!(switch.from.as_ref().unwrap().id, old_id);
    assert_eq!(switch.to.id, new_id);
    assert_eq!(switch.to.name, "next");
    assert!(new_root.contains(&switch.to.root));

    // Adopted: the new issuer signs.
    assert!(provider.adopt(&switch));
    assert!(provider.issuer_switch().is_none());
    assert!(issuer_of(&issue(&provider, Duration::from_secs(600)).await).contains("new root"));

    // The old issuer is deleted: its root stays until the last leaf it signed (10 s leaves)
    // has expired.
    bao.raw(
        reqwest::Method::DELETE,
        &format!("pki/issuer/{old_id}"),
        Some(&bao.root_token),
        None,
    )
    .await
    .unwrap();
    let bundle = provider.trust_bundle().await.unwrap();
    assert!(holds(&bundle, &old_root) && holds(&bundle, &new_root));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(provider.trust_bundle().await.unwrap(), new_root);
}

#[tokio::test]
async fn a_token_that_may_not_sign_with_a_named_issuer_still_signs() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca old root").await;
    // The policy meshca documented before issuers: sign/<role> only.
    let policy = "path \"pki/sign/*\" { capabilities = [\"update\"] }\n\
                  path \"pki/cert/*\" { capabilities = [\"read\"] }\n\
                  path \"auth/token/lookup-self\" { capabilities = [\"read\"] }\n";
    bao.write("sys/policies/acl/old", json!({ "policy": policy }))
        .await;
    let token = bao.token(json!({"policies": ["old"], "ttl": "1h"})).await;
    let provider = VaultProvider::connect(&bao.settings(&token)).await.unwrap();
    assert!(provider.signing_issuer().is_some());
    let first = issue(&provider, Duration::from_secs(600)).await;
    let second = issue(&provider, Duration::from_secs(600)).await;
    assert!(issuer_of(&first).contains("old root"));
    assert!(issuer_of(&second).contains("old root"));
}
