//! Upstream mode against a real OpenBao: the intermediate Vault signs over meshca's key, leaves
//! meshca signs under it verified by `openssl verify -x509_strict` and webpki against the root
//! read from Vault, renewals, a replaced Vault root, and the lifetime caps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use meshca_provider::{
    CertificateChain, CertificateInfo, CertificateProvider, Clock, IssueRequest, KeyType, LeafKey,
    LeafSpec, ProviderError, SpiffeId, SystemClock, TrustBundle, TrustDomain,
};
use meshca_test_support::bao::Bao;
use meshca_test_support::verify::{run_openssl, verify_everywhere};
use meshca_vault::{UpstreamPolicy, VaultMode, VaultSettings, VaultUpstream};
use serde_json::json;

const LEAF: Duration = Duration::from_secs(3600);

fn policy(longest_leaf: Duration) -> UpstreamPolicy {
    UpstreamPolicy {
        trust_domain: TrustDomain::default(),
        renew_fraction: 0.5,
        jitter_fraction: 0.1,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        longest_leaf,
        clock_skew: Duration::from_secs(60),
        bundle_lead: Duration::from_secs(3600),
    }
}

fn upstream_settings(bao: &Bao, ttl: Duration, issuer: &str) -> VaultSettings {
    let mut settings = bao.settings(&bao.root_token);
    settings.mode = VaultMode::Upstream;
    settings.upstream.intermediate_ttl = ttl;
    settings.upstream.issuer = issuer.to_owned();
    settings
}

async fn issue(provider: &VaultUpstream, short: &str, lifetime: Duration) -> CertificateChain {
    try_issue(provider, short, lifetime).await.unwrap()
}

async fn try_issue(
    provider: &VaultUpstream,
    short: &str,
    lifetime: Duration,
) -> Result<CertificateChain, ProviderError> {
    let id = SpiffeId::from_short(short, &TrustDomain::default()).unwrap();
    let spec = LeafSpec::workload(&id, &[], lifetime);
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let request = IssueRequest::generated(&spec, &key);
    provider.capabilities().check(&request).unwrap();
    provider.issue(&request).await
}

/// The system clock moved forward by what the test says.
#[derive(Debug, Default)]
struct ShiftedClock(AtomicU64);

impl Clock for ShiftedClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() + Duration::from_secs(self.0.load(Ordering::Relaxed))
    }
}

#[tokio::test]
async fn leaf_to_meshcas_intermediate_to_vaults_root_verifies_with_openssl_x509_strict() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca upstream root").await;
    let provider = VaultUpstream::connect(
        &upstream_settings(&bao, Duration::from_secs(24 * 3600), ""),
        None,
        policy(LEAF),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let root = bao.root_bundle("pki").await;
    assert_eq!(
        provider.trust_bundle().await.unwrap(),
        root,
        "bundle = Vault's root"
    );

    let chain = issue(&provider, "bookstore/bookstore-v1", LEAF).await;
    assert_eq!(chain.certificates().len(), 2, "leaf, meshca's intermediate");
    let leaf = chain.leaf_info().unwrap();
    assert_eq!(
        leaf.uri_sans,
        ["spiffe://cluster.local/ns/bookstore/sa/bookstore-v1"]
    );
    let intermediate = CertificateInfo::parse(&chain.intermediates()[0]).unwrap();
    assert!(intermediate.is_ca);
    assert_eq!(intermediate.subject, "CN=meshca intermediate");
    assert_eq!(intermediate.uri_sans, ["spiffe://cluster.local"]);
    assert_eq!(leaf.issuer, intermediate.subject);
    let life = intermediate
        .not_after
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        life > Duration::from_secs(23 * 3600) && life <= Duration::from_secs(24 * 3600),
        "{life:?}"
    );
    // openssl verify -x509_strict (and webpki), server and client purposes, against the root
    // as Vault serves it.
    verify_everywhere(&chain, &root, SystemTime::now());
    // The intermediate itself, as openssl reads it: a CA that may sign only end entities.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("intermediate.pem");
    std::fs::write(
        &file,
        meshca_provider::x509::certificates_to_pem(chain.intermediates()),
    )
    .unwrap();
    let text = run_openssl(
        std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&file),
    )
    .unwrap();
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");

    // A renewal: a new intermediate over a new key, same root; leaves under it verify, and
    // the bundle did not change.
    let first = provider.intermediate();
    assert!(provider.renew_now().await.unwrap());
    let second = provider.intermediate();
    assert_ne!(first.certificate(), second.certificate());
    assert_ne!(
        CertificateInfo::parse(first.certificate())
            .unwrap()
            .public_key,
        CertificateInfo::parse(second.certificate())
            .unwrap()
            .public_key,
        "a fresh key per intermediate"
    );
    let renewed = issue(&provider, "bookstore/bookstore-v1", LEAF).await;
    assert_eq!(renewed.intermediates(), [second.certificate().clone()]);
    verify_everywhere(&renewed, &root, SystemTime::now());
    assert_eq!(provider.trust_bundle().await.unwrap(), root);
    // Leaves signed under the first intermediate still verify.
    verify_everywhere(&chain, &root, SystemTime::now());
    provider.check_health().await.unwrap();
}

#[tokio::test]
async fn a_named_issuer_signs_and_the_intermediate_never_outlives_vaults_root() {
    let bao = Bao::dev().await;
    bao.write(
        "sys/mounts/pki",
        json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}}),
    )
    .await;
    // A root with three hours left: a 24h intermediate ends with it.
    bao.write(
        "pki/root/generate/internal",
        json!({"common_name": "short root", "key_type": "ec", "issuer_name": "short", "ttl": "3h"}),
    )
    .await;
    let provider = VaultUpstream::connect(
        &upstream_settings(&bao, Duration::from_secs(24 * 3600), "short"),
        None,
        policy(LEAF),
        Arc::new(SystemClock),
    )
    .await;
    // OpenBao cuts an intermediate asked of a named issuer at the issuer's end.
    let root = bao.root_bundle("pki").await;
    let root_end = CertificateInfo::parse(&root.roots()[0]).unwrap().not_after;
    assert!(provider.unwrap().intermediate().not_after() <= root_end);
    // Through the default issuer, meshca reads the root first and asks for no more.
    let provider = VaultUpstream::connect(
        &upstream_settings(&bao, Duration::from_secs(24 * 3600), ""),
        None,
        policy(LEAF),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    assert!(provider.intermediate().not_after() <= root_end);
    let chain = issue(&provider, "a/b", LEAF).await;
    verify_everywhere(&chain, &root, SystemTime::now());
    // And renewals stay under it.
    assert!(provider.renew_now().await.unwrap());
    assert!(provider.intermediate().not_after() <= root_end);

    // The named issuer, with a root long enough.
    bao.write(
        "pki/root/generate/internal",
        json!({"common_name": "named root", "key_type": "ec", "issuer_name": "named", "ttl": "87600h"}),
    )
    .await;
    let provider = VaultUpstream::connect(
        &upstream_settings(&bao, Duration::from_secs(24 * 3600), "named"),
        None,
        policy(LEAF),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let named = TrustBundle::from_pem(
        bao.read("pki/issuer/named/json").await["data"]["certificate"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(provider.trust_bundle().await.unwrap(), named);
    let chain = issue(&provider, "a/b", LEAF).await;
    verify_everywhere(&chain, &named, SystemTime::now());
}

#[tokio::test]
async fn a_new_vault_root_joins_the_bundle_before_an_intermediate_under_it_signs() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca old root").await;
    let old_root = bao.root_bundle("pki").await;
    let mut policy = policy(LEAF);
    policy.bundle_lead = Duration::from_secs(2);
    let provider = VaultUpstream::connect(
        &upstream_settings(&bao, Duration::from_secs(24 * 3600), ""),
        None,
        policy,
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let before = issue(&provider, "a/b", LEAF).await;

    // Vault's default issuer replaced by a new root.
    bao.write(
        "pki/root/rotate/internal",
        json!({"common_name": "meshca new root", "key_type": "ec", "issuer_name": "next"}),
    )
    .await;
    bao.write("pki/config/issuers", json!({"default": "next"}))
        .await;
    let new_root = bao.root_bundle("pki").await;
    assert_ne!(new_root, old_root);

    assert!(
        !provider.renew_now().await.unwrap(),
        "held back until its root is trusted"
    );
    let bundle = provider.trust_bundle().await.unwrap();
    assert_eq!(bundle.roots().len(), 2, "{bundle:?}");
    assert!(bundle.contains(&old_root.roots()[0]) && bundle.contains(&new_root.roots()[0]));
    // Meanwhile leaves are still signed under the old root.
    let held = issue(&provider, "a/b", LEAF).await;
    verify_everywhere(&held, &old_root, SystemTime::now());

    // After the lead, the renewal task installs it: leaves under the new root, and the old
    // root still trusted while leaves under it live.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let chain = issue(&provider, "a/b", LEAF).await;
        if chain.intermediates() != held.intermediates() {
            break chain;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new intermediate never signed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    verify_everywhere(&after, &new_root, SystemTime::now());
    let bundle = provider.trust_bundle().await.unwrap();
    assert!(bundle.contains(&old_root.roots()[0]) && bundle.contains(&new_root.roots()[0]));
    verify_everywhere(&before, &bundle, SystemTime::now());
}

#[tokio::test]
async fn an_intermediate_ttl_too_short_for_the_leaves_is_refused_before_vault_is_asked() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca upstream root").await;
    let error = VaultUpstream::connect(
        &upstream_settings(&bao, Duration::from_secs(3600), ""),
        None,
        policy(LEAF),
        Arc::new(SystemClock),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("vault.upstream.intermediateTtl") && error.contains("at least 2h30m"),
        "{error}"
    );
}

/// With Vault never asked again (the renewal is hours away), the clock moves towards the
/// intermediate's end: leaves are cut to end with it, health fails once a leaf no longer fits,
/// and issuance stops with a clear error once it has ended.
#[tokio::test]
async fn an_intermediate_near_its_end_cuts_leaves_short_fails_health_and_then_stops_issuance() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca upstream root").await;
    let clock = Arc::new(ShiftedClock::default());
    let provider = VaultUpstream::connect(
        &upstream_settings(&bao, Duration::from_secs(24 * 3600), ""),
        None,
        policy(LEAF),
        clock.clone(),
    )
    .await
    .unwrap();
    let end = provider.intermediate().not_after();
    provider.check_health().await.unwrap();

    // 30 minutes left: a 1h leaf ends with the intermediate, and /readyz would say why.
    let shift = end.duration_since(SystemTime::now()).unwrap() - Duration::from_secs(1800);
    clock.0.store(shift.as_secs(), Ordering::Relaxed);
    let chain = issue(&provider, "a/b", LEAF).await;
    let leaf = chain.leaf_info().unwrap();
    assert!(leaf.not_after <= end, "{:?} after {end:?}", leaf.not_after);
    assert!(leaf.not_after + Duration::from_secs(60) > end);
    let unhealthy = provider.check_health().await.unwrap_err().to_string();
    assert!(
        unhealthy.contains("sooner than a leaf lasts") && unhealthy.contains("cut short"),
        "{unhealthy}"
    );

    // Past its end: no leaf at all, saying so.
    clock.0.store(shift.as_secs() + 3600, Ordering::Relaxed);
    let refused = try_issue(&provider, "a/b", LEAF).await.unwrap_err();
    assert!(
        matches!(refused, ProviderError::Unavailable { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("has not signed a new one"),
        "{refused}"
    );
    assert!(provider.check_health().await.is_err());
}
