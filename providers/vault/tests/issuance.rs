//! Issuance against a real OpenBao: chains, lifetimes, role caps and refusals, conformance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use meshca_provider::conformance;
use meshca_provider::{
    CertificateChain, CertificateProvider, CsrError, CsrNames, IssueRequest, KeyType, LeafKey,
    LeafSpec, ProviderError, SpiffeId, TrustBundle, TrustDomain, VerifiedCsr,
};
use meshca_test_support::bao::Bao;
use meshca_test_support::csr::greedy_openssl_csr;
use meshca_test_support::verify::verify_everywhere;
use meshca_vault::{VaultProvider, VaultSettings};
use serde_json::json;

async fn dev_with_pki() -> Bao {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca dev root").await;
    bao
}

async fn issue(
    provider: &VaultProvider,
    spec: &LeafSpec,
    key_type: KeyType,
) -> Result<CertificateChain, ProviderError> {
    let key = LeafKey::generate(key_type).unwrap();
    let request = IssueRequest::generated(spec, &key);
    // As the daemon's issuance pipeline does: capabilities first, once.
    provider.capabilities().check(&request)?;
    provider.issue(&request).await
}

fn workload(short: &str, lifetime: Duration) -> LeafSpec {
    let id = SpiffeId::from_short(short, &TrustDomain::default()).unwrap();
    let name = format!("{}.svc", id.service_account()).parse().unwrap();
    LeafSpec::workload(&id, &[name], lifetime)
}

#[tokio::test]
async fn issues_for_several_identities_with_chains_to_vaults_root() {
    let bao = dev_with_pki().await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    let bundle = provider.trust_bundle().await.unwrap();
    assert_eq!(bundle.roots().len(), 1);
    let root_pem = bao.read("pki/cert/ca").await["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        bundle,
        TrustBundle::from_pem(&root_pem).unwrap(),
        "bundle = Vault's root"
    );

    for short in [
        "bookstore/bookstore-v1",
        "bookstore/bookstore-v2",
        "bookbuyer/bookbuyer",
    ] {
        let spec = workload(short, Duration::from_secs(3600));
        let chain = issue(&provider, &spec, KeyType::P256).await.unwrap();
        let info = chain.leaf_info().unwrap();
        let id = spec.spiffe_id.as_ref().unwrap();
        assert_eq!(info.uri_sans, [id.to_string()]);
        assert_eq!(info.common_name, spec.common_name);
        let mut dns = info.dns_sans.clone();
        dns.sort();
        let mut want: Vec<String> = spec.dns_names.iter().map(ToString::to_string).collect();
        want.sort();
        assert_eq!(dns, want, "{short}");
        assert!(
            !chain.certificates().iter().any(|c| bundle.contains(c)),
            "root in chain"
        );
        verify_everywhere(&chain, &bundle, SystemTime::now());
    }
}

#[tokio::test]
async fn chains_from_an_intermediate_mount_carry_the_intermediate_but_not_the_root() {
    let bao = dev_with_pki().await;
    bao.intermediate_pki("pki_int", "pki", json!({})).await;
    let settings = VaultSettings {
        pki_path: "pki_int".into(),
        ..bao.settings(&bao.root_token)
    };
    let provider = VaultProvider::connect(&settings).await.unwrap();
    let bundle = provider.trust_bundle().await.unwrap();
    let root_pem = bao.read("pki/cert/ca").await["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bundle, TrustBundle::from_pem(&root_pem).unwrap());
    let chain = issue(
        &provider,
        &workload("a/b", Duration::from_secs(600)),
        KeyType::P256,
    )
    .await
    .unwrap();
    assert_eq!(chain.intermediates().len(), 1);
    let intermediate = meshca_provider::CertificateInfo::parse(&chain.intermediates()[0]).unwrap();
    assert_eq!(
        intermediate.common_name.as_deref(),
        Some("meshca test intermediate")
    );
    verify_everywhere(&chain, &bundle, SystemTime::now());
}

#[tokio::test]
async fn a_twenty_minute_lifetime_is_sent_in_seconds_and_honoured() {
    let bao = dev_with_pki().await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    let asked = Duration::from_secs(20 * 60);
    let before = SystemTime::now();
    let chain = issue(&provider, &workload("a/b", asked), KeyType::P256)
        .await
        .unwrap();
    let not_after = chain.leaf_info().unwrap().not_after;
    let granted = not_after.duration_since(before).unwrap();
    assert!(
        granted.abs_diff(asked) <= Duration::from_secs(60),
        "asked 20m, got a leaf valid for {granted:?} from now"
    );
    assert_eq!(provider.observed_lifetime_cap(), None);
}

#[tokio::test]
async fn a_role_max_ttl_cap_is_learned_detected_and_reported() {
    let bao = dev_with_pki().await;
    bao.role("pki", "meshca", json!({"max_ttl": "1h"})).await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    assert_eq!(
        provider.capabilities().max_lifetime,
        Some(Duration::from_secs(3600)),
        "learned from pki/roles/meshca at start"
    );
    let chain = issue(
        &provider,
        &workload("a/b", Duration::from_secs(24 * 3600)),
        KeyType::P256,
    )
    .await
    .unwrap();
    let lifetime = chain
        .leaf_info()
        .unwrap()
        .not_after
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(lifetime <= Duration::from_secs(3600), "{lifetime:?}");
    assert_eq!(
        provider.observed_lifetime_cap(),
        Some(Duration::from_secs(3600))
    );
}

#[tokio::test]
async fn a_role_without_spiffe_uri_sans_is_a_readable_refusal() {
    let bao = dev_with_pki().await;
    bao.role("pki", "meshca", json!({"allowed_uri_sans": ""}))
        .await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    let err = issue(
        &provider,
        &workload("a/b", Duration::from_secs(600)),
        KeyType::P256,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains("allowed_uri_sans=\"spiffe://*\""),
        "{message}"
    );
    assert!(message.contains("pki/roles/meshca"), "{message}");
    // Server certificates, without a SPIFFE ID, are still fine.
    let server = LeafSpec::server(
        vec!["hook.meshca-system.svc".parse().unwrap()],
        Duration::from_secs(600),
    );
    issue(&provider, &server, KeyType::P256).await.unwrap();
}

#[tokio::test]
async fn a_role_whose_uri_sans_exclude_spiffe_ids_is_a_readable_refusal() {
    // OpenBao 2.7 words this refusal "URI Subject Alternative Names were provided via the API
    // which are not valid for this role", not "... are not allowed".
    let bao = dev_with_pki().await;
    bao.role("pki", "meshca", json!({"allowed_uri_sans": "urn:*"}))
        .await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    let err = issue(
        &provider,
        &workload("a/b", Duration::from_secs(600)),
        KeyType::P256,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("allowed_uri_sans=\"spiffe://*\""),
        "{message}"
    );
}

#[tokio::test]
async fn key_types_the_role_refuses_are_unsupported_before_any_call() {
    let bao = dev_with_pki().await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    assert_eq!(
        provider.capabilities().key_types,
        [KeyType::P256, KeyType::P384]
    );
    let err = issue(
        &provider,
        &workload("a/b", Duration::from_secs(600)),
        KeyType::Rsa2048,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Unsupported { .. }), "{err:?}");
    issue(
        &provider,
        &workload("a/b", Duration::from_secs(600)),
        KeyType::P384,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn conforms_with_a_role_that_takes_any_key() {
    let bao = dev_with_pki().await;
    bao.role("pki", "meshca", json!({"key_type": "any", "key_bits": 0}))
        .await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    assert_eq!(provider.capabilities().key_types, KeyType::ALL);
    conformance::run_all(&provider, &TrustDomain::default()).await;
}

#[tokio::test]
async fn conforms_through_an_intermediate_with_an_ec_only_role() {
    let bao = dev_with_pki().await;
    bao.intermediate_pki("pki_int", "pki", json!({})).await;
    let settings = VaultSettings {
        pki_path: "pki_int".into(),
        ..bao.settings(&bao.root_token)
    };
    let provider = VaultProvider::connect(&settings).await.unwrap();
    conformance::run_all(&provider, &TrustDomain::new("example.org").unwrap()).await;
}

/// A caller's CSR, made by `openssl req` for a new key (`-newkey` arguments), asking for what
/// no caller may choose: another workload's SPIFFE ID, a DNS name nobody gave it and a
/// subject with O= and CN=.
fn greedy_csr(newkey: &[&str]) -> VerifiedCsr {
    let dir = tempfile::tempdir().unwrap();
    let csr = greedy_openssl_csr(dir.path(), "caller", newkey);
    VerifiedCsr::from_pem(&std::fs::read_to_string(&csr).unwrap()).unwrap()
}

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
const RSA2048: &[&str] = &["-newkey", "rsa:2048"];

/// Issues for a caller's key as the daemon's pipeline does: capabilities first.
async fn issue_for_caller(
    provider: &VaultProvider,
    spec: &LeafSpec,
    csr: &VerifiedCsr,
) -> Result<CertificateChain, ProviderError> {
    let request = IssueRequest::for_caller(spec, csr);
    provider.capabilities().check(&request)?;
    provider.issue(&request).await
}

/// The leaf certifies `csr`'s key with exactly `spec`'s names and nothing of the CSR's.
fn assert_meshcas_names(chain: &CertificateChain, spec: &LeafSpec, csr: &VerifiedCsr) {
    let info = chain.leaf_info().unwrap();
    assert_eq!(
        info.public_key,
        csr.public_key(),
        "the leaf certifies the caller's key"
    );
    let want_uris: Vec<String> = spec.spiffe_id.iter().map(ToString::to_string).collect();
    assert_eq!(info.uri_sans, want_uris);
    let mut dns = info.dns_sans.clone();
    dns.sort();
    let mut want: Vec<String> = spec.dns_names.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(dns, want);
    assert_eq!(info.common_name, spec.common_name);
    let want_subject = spec
        .common_name
        .as_ref()
        .map_or_else(String::new, |cn| format!("CN={cn}"));
    assert_eq!(info.subject, want_subject, "no O= from the CSR");
}

#[tokio::test]
async fn callers_keys_are_signed_with_meshcas_names_only() {
    let bao = dev_with_pki().await;
    bao.role("pki", "meshca", json!({"key_type": "any", "key_bits": 0}))
        .await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    // The role has use_csr_common_name=false and use_csr_sans=false.
    assert_eq!(provider.capabilities().csr_names, CsrNames::Decided);
    let bundle = provider.trust_bundle().await.unwrap();
    let server = LeafSpec::server(
        vec!["hook.meshca-system.svc".parse().unwrap()],
        Duration::from_secs(600),
    );
    for newkey in [P256, RSA2048] {
        let csr = greedy_csr(newkey);
        for spec in [
            workload("bookstore/bookstore-v2", Duration::from_secs(600)),
            server.clone(),
        ] {
            let chain = issue_for_caller(&provider, &spec, &csr).await.unwrap();
            assert_meshcas_names(&chain, &spec, &csr);
            verify_everywhere(&chain, &bundle, SystemTime::now());
        }
    }
}

#[tokio::test]
async fn a_role_that_copies_csr_names_gets_only_csrs_asking_for_exactly_meshcas() {
    let bao = dev_with_pki().await;
    // Vault's defaults: names from the CSR.
    bao.role(
        "pki",
        "meshca",
        json!({"use_csr_common_name": true, "use_csr_sans": true}),
    )
    .await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token))
        .await
        .unwrap();
    assert_eq!(provider.capabilities().csr_names, CsrNames::FromCsr);
    let spec = workload("bookstore/bookstore-v2", Duration::from_secs(600));
    let greedy = greedy_csr(P256);
    let err = issue_for_caller(&provider, &spec, &greedy)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::Csr(CsrError::NamesDiffer { .. })),
        "{err:?}"
    );
    // Why: asked anyway, this role certifies the CSR's names, not meshca's.
    let copied = provider
        .issue(&IssueRequest::for_caller(&spec, &greedy))
        .await
        .unwrap();
    assert_eq!(
        copied.leaf_info().unwrap().uri_sans,
        ["spiffe://cluster.local/ns/kube-system/sa/admin"]
    );
    // A CSR asking for exactly meshca's names is signed.
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der(&spec).unwrap()).unwrap();
    let chain = issue_for_caller(&provider, &spec, &csr).await.unwrap();
    assert_meshcas_names(&chain, &spec, &csr);
    conformance::run_all(&provider, &TrustDomain::default()).await;
}

#[tokio::test]
async fn a_role_meshca_may_not_read_is_assumed_to_copy_csr_names() {
    let bao = dev_with_pki().await;
    let policy = "path \"pki/sign/*\" { capabilities = [\"update\"] }\n\
                  path \"pki/cert/*\" { capabilities = [\"read\"] }\n\
                  path \"auth/token/lookup-self\" { capabilities = [\"read\"] }\n";
    bao.write("sys/policies/acl/sign-only", json!({ "policy": policy }))
        .await;
    let token = bao.token(json!({"policies": ["sign-only"]})).await;
    let provider = VaultProvider::connect(&bao.settings(&token)).await.unwrap();
    assert_eq!(provider.capabilities().csr_names, CsrNames::FromCsr);
    let spec = workload("a/b", Duration::from_secs(600));
    let err = issue_for_caller(&provider, &spec, &greedy_csr(P256))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Csr(_)), "{err:?}");
}
