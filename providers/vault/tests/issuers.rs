//! A PKI mount with several issuers, against a real OpenBao: the bundle carries every issuer's
//! root, a new default issuer signs only once adopted, and a deleted issuer's root stays
//! trusted until the last leaf it signed expires.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use meshca_provider::{
    CertificateChain, CertificateProvider, IssueRequest, KeyType, LeafKey, LeafSpec, SpiffeId,
    TrustBundle, TrustDomain,
};
use meshca_test_support::bao::Bao;
use meshca_vault::{NEXT_ISSUER, VaultAbort, VaultAdvance, VaultProvider, VaultRotation};
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

/// The mount's default issuer ID.
async fn default_issuer(bao: &Bao) -> String {
    bao.read("pki/config/issuers").await["data"]["default"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_root_rotation_is_kept_in_the_issuer_names_one_stage_at_a_time() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca old root").await;
    let old_id = default_issuer(&bao).await;
    // An operator's setting on the old issuer, which renames must keep.
    bao.write(
        &format!("pki/issuer/{old_id}"),
        json!({"leaf_not_after_behavior": "truncate"}),
    )
    .await;
    let old_root = root_of(&bao, &old_id).await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    let longest_leaf = Duration::from_secs(30);
    let now = SystemTime::now();

    // Start, twice: one new issuer, trusted, not signing.
    let (rotation, started) = provider.start_root_rotation(now).await.unwrap();
    assert!(started);
    let (again, started) = provider.start_root_rotation(now).await.unwrap();
    assert!(!started);
    assert_eq!(again, rotation);
    let VaultRotation::Trusting { new, old } = rotation else {
        panic!("{rotation:?}");
    };
    assert_eq!(new.name, NEXT_ISSUER);
    assert_eq!(old.unwrap().id, old_id);
    assert_eq!(bao.list("pki/issuers").await.len(), 2);
    assert_eq!(default_issuer(&bao).await, old_id);
    let new_root = root_of(&bao, &new.id).await;
    let bundle = provider.trust_bundle().await.unwrap();
    assert!(holds(&bundle, &old_root) && holds(&bundle, &new_root));
    assert!(provider.issuer_switch().is_none());

    // Abort in stage 1: the new issuer is gone.
    assert!(matches!(
        provider.abort_root_rotation().await.unwrap(),
        VaultAbort::Dropped
    ));
    assert_eq!(bao.list("pki/issuers").await, std::slice::from_ref(&old_id));
    assert_eq!(provider.trust_bundle().await.unwrap(), old_root);
    assert!(provider.root_rotation().await.unwrap().is_none());

    // Again, to stage 2: the new issuer is the default; the daemon's switch is reported.
    let (rotation, _) = provider.start_root_rotation(now).await.unwrap();
    let VaultRotation::Trusting { new, .. } = rotation else {
        panic!("{rotation:?}");
    };
    // Stage 1 → 2 only for the issuer the caller found acknowledged: nothing changes for
    // another (or none).
    for acknowledged in [None, Some(old_id.as_str())] {
        let refused = provider
            .advance_root_rotation(longest_leaf, now, acknowledged)
            .await
            .unwrap();
        assert!(
            matches!(&refused, VaultAdvance::Unacknowledged { new: n } if n.id == new.id),
            "{refused:?}"
        );
        assert_eq!(default_issuer(&bao).await, old_id);
    }
    // `meshca rotate root start` stamped the start in the new root's name.
    let since = meshca_vault::trusting_since(&new).unwrap();
    assert_eq!(
        since
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    );
    let advanced = provider
        .advance_root_rotation(longest_leaf, now, Some(&new.id))
        .await
        .unwrap();
    assert!(
        matches!(advanced, VaultAdvance::ToIssuing { .. }),
        "{advanced:?}"
    );
    assert_eq!(default_issuer(&bao).await, new.id);
    provider.trust_bundle().await.unwrap();
    assert_eq!(provider.issuer_switch().unwrap().to.id, new.id);
    let waiting = provider
        .advance_root_rotation(longest_leaf, now + Duration::from_secs(10), None)
        .await
        .unwrap();
    assert!(
        matches!(waiting, VaultAdvance::AwaitingRetirement { .. }),
        "{waiting:?}"
    );

    // Abort in stage 2: the old issuer is the default again, the rotation back at stage 1.
    assert!(matches!(
        provider.abort_root_rotation().await.unwrap(),
        VaultAbort::BackToTrusting
    ));
    assert_eq!(default_issuer(&bao).await, old_id);
    assert!(matches!(
        provider.root_rotation().await.unwrap(),
        Some(VaultRotation::Trusting { .. })
    ));

    // Through to the end: the old issuer is retired (kept, its settings too), out of the bundle.
    provider
        .advance_root_rotation(longest_leaf, now, Some(&new.id))
        .await
        .unwrap();
    let finished = provider
        .advance_root_rotation(longest_leaf, now + longest_leaf, None)
        .await
        .unwrap();
    assert!(
        matches!(finished, VaultAdvance::Finished { .. }),
        "{finished:?}"
    );
    let old_issuer = bao.read(&format!("pki/issuer/{old_id}")).await["data"].clone();
    assert!(
        old_issuer["issuer_name"]
            .as_str()
            .unwrap()
            .starts_with("meshca-retired-"),
        "{old_issuer}"
    );
    assert_eq!(old_issuer["leaf_not_after_behavior"], "truncate");
    let new_issuer = bao.read(&format!("pki/issuer/{}", new.id)).await["data"].clone();
    assert!(
        new_issuer["issuer_name"]
            .as_str()
            .unwrap()
            .starts_with("meshca-root-"),
        "{new_issuer}"
    );
    assert_eq!(default_issuer(&bao).await, new.id);
    assert!(provider.root_rotation().await.unwrap().is_none());
    // No leaf was issued under the old root, so nothing keeps it trusted.
    assert_eq!(
        provider.trust_bundle().await.unwrap(),
        root_of(&bao, &new.id).await
    );
}
