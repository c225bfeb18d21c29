//! `extraTrustedRoots`: roots trusted besides the provider's own (a Vault or cert-manager root
//! rotated outside meshca, another cluster's root). Bad entries are refused at startup with the
//! entry named; good ones reach every SDS validation context, read over a real gRPC stream from
//! the real `meshca serve`.
#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::time::Duration;

use meshca::config::{Config, ConfigError, Overrides};
use meshca_provider::TrustBundle;
use support::daemon::MeshcaServe;
use support::envoy::free_port;
use support::*;

/// A CA root (rcgen) as PEM.
fn root_pem(name: &str) -> String {
    TrustBundle::new(vec![TestCa::new(name).root().clone()]).to_pem()
}

/// A leaf (not a CA) as PEM.
fn leaf_pem() -> String {
    let served = TestCa::new("leafy").issue(&id("ns/app"), Duration::from_secs(3600));
    TrustBundle::new(vec![served.chain.leaf().clone()]).to_pem()
}

fn load_with(flags: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut overrides = Overrides::default();
    for (key, value) in flags {
        overrides.set(&format!("{key}={value}")).unwrap();
    }
    Config::load(None, &overrides)
}

fn refusal(flags: &[(&str, &str)]) -> String {
    match load_with(flags) {
        Err(e @ ConfigError::InvalidValue { .. }) => e.to_string(),
        other => panic!("{flags:?} was not refused as an invalid value: {other:?}"),
    }
}

#[test]
fn bad_entries_are_refused_with_the_entry_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("vault-root.pem");
    std::fs::write(&good, root_pem("vault")).unwrap();
    let missing = dir.path().join("nowhere.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, leaf_pem()).unwrap();

    let text = refusal(&[("extraTrustedRoots", missing.to_str().unwrap())]);
    assert!(text.contains("extraTrustedRoots"), "{text}");
    assert!(text.contains("entry 1"), "{text}");
    assert!(text.contains(missing.to_str().unwrap()), "{text}");
    assert!(text.contains("cannot read the file"), "{text}");

    // The second entry is the bad one, and the message says which.
    let list = format!("{},{}", good.display(), garbage.display());
    let text = refusal(&[("extraTrustedRoots", &list)]);
    assert!(text.contains("entry 2"), "{text}");
    assert!(text.contains(garbage.to_str().unwrap()), "{text}");
    assert!(text.contains("no PEM certificate"), "{text}");

    let text = refusal(&[("extraTrustedRoots", leaf.to_str().unwrap())]);
    assert!(text.contains("not a CA certificate"), "{text}");
    assert!(
        text.contains("CN=app.ns.cluster.local"),
        "names the certificate's subject: {text}"
    );

    // Inline PEM is named by its position, never quoted back.
    let inline_leaf = leaf_pem();
    let text = refusal(&[("extraTrustedRoots", &inline_leaf)]);
    assert!(text.contains("entry 1 (inline PEM)"), "{text}");
    assert!(text.contains("not a CA certificate"), "{text}");
    assert!(!text.contains("BEGIN CERTIFICATE"), "{text}");

    // And the good ones load, from a flag, an environment variable (inline PEM, line breaks
    // kept) and the file (a list).
    let config = load_with(&[("extraTrustedRoots", good.to_str().unwrap())]).unwrap();
    assert_eq!(config.extra_trusted_roots().unwrap().roots().len(), 1);
    let inline = root_pem("inline");
    let overrides =
        Overrides::from_env([("MESHCA_EXTRA_TRUSTED_ROOTS".to_owned(), inline.clone())]);
    let config = Config::load(None, &overrides).unwrap();
    assert_eq!(
        config.extra_trusted_roots().unwrap(),
        TrustBundle::from_pem(&inline).unwrap()
    );
    let file = dir.path().join("config.yaml");
    let indented: String = inline.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(
        &file,
        format!("extraTrustedRoots:\n- {}\n- |\n{indented}", good.display()),
    )
    .unwrap();
    let config = Config::load(Some(&file), &Overrides::default()).unwrap();
    assert_eq!(config.extra_trusted_roots().unwrap().roots().len(), 2);
    assert_eq!(Config::default().extra_trusted_roots().unwrap().roots(), []);
}

#[test]
fn meshca_serve_refuses_to_start_with_a_bad_entry() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, leaf_pem()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["--ca-dir", dir.path().join("ca").to_str().unwrap(), "serve"])
        .args(["--set", &format!("extraTrustedRoots={}", leaf.display())])
        .args([
            "--set",
            "sds.listen=127.0.0.1:0",
            "--set",
            "admin.listen=127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .env_remove("MESHCA_CONFIG")
        .output()
        .unwrap();
    let stderr = support::cli::failed(&output);
    assert!(stderr.contains("extraTrustedRoots"), "{stderr}");
    assert!(stderr.contains(leaf.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("not a CA certificate"), "{stderr}");
    assert!(
        !dir.path().join("ca").exists(),
        "nothing was created before the configuration was checked"
    );
}

/// The real daemon (Tresor, a directory store) with three extra roots — two from a file, one
/// inline, plus Tresor's own root listed again — serves bundles of exactly its root followed by
/// the extra ones, on every bundle name, and still issues leaves that chain to its root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_validation_contexts_carry_the_provider_root_and_the_extra_roots() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let bootstrap = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["--ca-dir", ca_dir.to_str().unwrap(), "bootstrap"])
        .env_remove("MESHCA_CONFIG")
        .output()
        .unwrap();
    support::cli::ok(&bootstrap);
    let own =
        TrustBundle::from_pem(&std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap()).unwrap();
    assert_eq!(own.roots().len(), 1, "a fresh Tresor CA is one root");

    let vault = TestCa::new("vault");
    let other_cluster = TestCa::new("cluster-b");
    let inline = TestCa::new("inline");
    let file = dir.path().join("roots.pem");
    std::fs::write(
        &file,
        TrustBundle::new(vec![vault.root().clone(), other_cluster.root().clone()]).to_pem(),
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    let inline_pem = TrustBundle::new(vec![inline.root().clone()]).to_pem();
    let indented: String = inline_pem.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(
        &config,
        format!(
            "extraTrustedRoots:\n- {}\n- {}\n- |\n{indented}",
            file.display(),
            ca_dir.join("ca.crt").display()
        ),
    )
    .unwrap();

    let sds_port = free_port();
    let admin_port = free_port();
    let mut daemon = MeshcaServe::start(&[
        "--config",
        config.to_str().unwrap(),
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "serve",
        "--set",
        &format!("sds.listen=127.0.0.1:{sds_port}"),
        "--set",
        &format!("admin.listen=127.0.0.1:{admin_port}"),
        "--set",
        "sds.auth=development",
    ]);
    daemon.wait_listening(sds_port).await;

    let expected = TrustBundle::new(vec![
        own.roots()[0].clone(),
        vault.root().clone(),
        other_cluster.root().clone(),
        inline.root().clone(),
    ]);
    let log = daemon.log();
    assert!(log.contains("trusting extra roots"), "{log}");
    assert!(log.contains("count=4"), "the four configured roots: {log}");
    for fingerprint in expected.fingerprints().iter().skip(1) {
        assert!(log.contains(fingerprint.as_str()), "{fingerprint}: {log}");
    }

    let names = [
        "ROOTCA",
        "root-cert-for-mtls-inbound:ns/client",
        "root-cert-for-mtls-outbound:ns/server",
        "service-cert-outbound:ns/client",
    ];
    let mut client = SotwClient::open(
        channel(&format!("http://127.0.0.1:{sds_port}")).await,
        Some(node("ns/client")),
        &names,
    )
    .await
    .unwrap();
    let response = client.next().await.unwrap();
    let secrets = secrets(&response.resources);
    for name in &names[..3] {
        let (bundle, context) = validation_of(secret_named(&secrets, name));
        assert_eq!(
            bundle.fingerprints(),
            expected.fingerprints(),
            "{name}: the provider's root first, then each extra root once"
        );
        if name.starts_with("root-cert-for-mtls-outbound") {
            assert_eq!(context.match_typed_subject_alt_names.len(), 1, "{name}");
        }
    }
    // The leaf chains to Tresor's own root (webpki), and is not mistaken for one of the others.
    check_certificate(
        secret_named(&secrets, "service-cert-outbound:ns/client"),
        &id("ns/client"),
        &own,
    );
}

/// The merge lives in the cache: a re-read of the provider's bundle (here after Tresor's root
/// was replaced) publishes the new root with the extra roots still there, and leaves keep
/// validating against the provider's root.
#[tokio::test]
async fn the_cache_keeps_the_extra_roots_when_the_provider_bundle_changes() {
    use std::sync::Arc;

    use meshca::cache::{CacheSettings, CertKey, CertificateCache, Purpose};
    use meshca_provider::{Clock, SystemClock};
    use meshca_tresor::{RootOptions, SigningAuthority, Tresor};

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let first = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock).unwrap();
    let first_root = first.root().clone();
    let tresor = Arc::new(Tresor::new(first, clock.clone()));
    let extra = TestCa::new("vault");
    let settings = CacheSettings {
        extra_roots: TrustBundle::new(vec![extra.root().clone(), first_root.clone()]),
        ..CacheSettings::default()
    };
    let cache = CertificateCache::new(tresor.clone(), settings, clock);
    cache.refresh_trust_bundle().await.unwrap();
    let bundle = cache.trust_bundle();
    assert_eq!(
        bundle.borrow().roots(),
        [first_root.clone(), extra.root().clone()],
        "the provider's root, then the extra one; the duplicate is dropped"
    );
    let key = CertKey::new(id("ns/app"), Purpose::Default);
    let cert = cache.certificate(&key).await.unwrap();
    assert_chains_to(&cert.chain, &TrustBundle::new(vec![first_root.clone()]));

    let second = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock).unwrap();
    let second_root = second.root().clone();
    tresor.replace_authority(second);
    cache.refresh_trust_bundle().await.unwrap();
    assert_eq!(
        bundle.borrow().roots(),
        [second_root, extra.root().clone(), first_root],
        "the new provider root, and the extra roots kept (the old root is one of them here)"
    );
}

/// `meshca issue` writes the same bundle the daemon serves: the provider's root and the extra
/// roots, in `ca.pem`.
#[test]
fn meshca_issue_writes_the_extra_roots_into_ca_pem() {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.pem");
    std::fs::write(&extra, root_pem("issue-extra")).unwrap();
    let out = dir.path().join("out");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(["--ca-dir"])
        .arg(dir.path().join("ca"))
        .args(["--set"])
        .arg(format!("extraTrustedRoots={}", extra.display()))
        .args(["issue", "--identity", "shop/web", "--out-dir"])
        .arg(&out)
        .env_remove("MESHCA_CONFIG")
        .output()
        .unwrap();
    support::cli::ok(&output);
    let written =
        TrustBundle::from_pem(&std::fs::read_to_string(out.join("ca.pem")).unwrap()).unwrap();
    let extra_root = TrustBundle::from_pem(&std::fs::read_to_string(&extra).unwrap()).unwrap();
    assert_eq!(written.roots().len(), 2, "{written:?}");
    assert!(written.contains(&extra_root.roots()[0]));
    let own = TrustBundle::from_pem(
        &std::fs::read_to_string(dir.path().join("ca").join("ca.crt")).unwrap(),
    )
    .unwrap();
    assert!(written.contains(&own.roots()[0]));
}
