//! The directory CA store and bootstrap: restarts, file modes, refusals that name the file
//! and leave it untouched, and concurrent bootstraps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use meshca_provider::x509::Fingerprint;
use meshca_provider::{CertificateInfo, SystemClock};
use meshca_test_support::verify::snapshot;
use meshca_tresor::{
    CaProblem, CaStore, DirectoryStore, Outcome, RootOptions, SigningAuthority, StoreError,
    StoredCa, bootstrap,
};

async fn boot(dir: &Path) -> Result<(SigningAuthority, Outcome), StoreError> {
    bootstrap(
        &DirectoryStore::new(dir),
        &RootOptions::default(),
        &SystemClock,
    )
    .await
}

fn fingerprint(authority: &SigningAuthority) -> String {
    Fingerprint::of(authority.certificate()).to_string()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_restart_loads_the_same_root() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("ca");
    let (created, outcome) = boot(&dir).await.unwrap();
    assert_eq!(outcome, Outcome::Created);
    let (loaded, outcome) = boot(&dir).await.unwrap();
    assert_eq!(outcome, Outcome::Loaded);
    assert_eq!(fingerprint(&loaded), fingerprint(&created));
    assert_eq!(
        loaded.certificate_chain_pem(),
        created.certificate_chain_pem()
    );

    let store = DirectoryStore::new(&dir);
    assert_eq!(mode(&dir), 0o700, "the directory is created private");
    assert_eq!(
        mode(&store.key_path()),
        0o600,
        "the key is readable by its owner only"
    );
    let on_disk = fs::read_to_string(store.certificate_path()).unwrap();
    assert_eq!(on_disk, created.certificate_chain_pem());
    assert!(
        fs::read_to_string(store.key_path())
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert_eq!(store.describe(), format!("directory {}", dir.display()));
}

#[tokio::test]
async fn the_root_follows_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RootOptions::default();
    options.common_name = "Example Mesh Root".into();
    options.organization = Some("Example Org".into());
    options.lifetime = Duration::from_secs(2 * 365 * 24 * 3600);
    options.key_type = meshca_provider::KeyType::P384;
    let (root, _) = bootstrap(&DirectoryStore::new(dir.path()), &options, &SystemClock)
        .await
        .unwrap();
    let info = CertificateInfo::parse(root.certificate()).unwrap();
    assert_eq!(info.subject, "O=Example Org, CN=Example Mesh Root");
    assert_eq!(info.issuer, info.subject);
    assert!(info.is_ca);
    assert_eq!(info.key_description, "ECDSA P-384");
    // Back-dated one hour for slow clocks, then the requested lifetime.
    assert_eq!(
        info.lifetime(),
        options.lifetime + Duration::from_secs(3600)
    );
    assert_eq!(info.subject_key_id, info.authority_key_id);
}

#[tokio::test]
async fn default_root_lasts_ten_years() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = boot(dir.path()).await.unwrap();
    let info = CertificateInfo::parse(root.certificate()).unwrap();
    assert_eq!(info.subject, "O=meshca, CN=meshca root CA");
    assert_eq!(info.key_description, "ECDSA P-256");
    assert_eq!(info.lifetime(), Duration::from_secs((87_600 + 1) * 3600));
}

/// Bootstraps over a store prepared by `prepare`, expects a refusal, and checks the files are
/// unchanged. Returns the error, the store, and the temporary directory holding it.
async fn refused(
    prepare: impl FnOnce(&DirectoryStore),
) -> (StoreError, DirectoryStore, tempfile::TempDir) {
    let parent = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(parent.path().join("ca"));
    fs::create_dir(store.dir()).unwrap();
    prepare(&store);
    let before = snapshot(store.dir());
    let err = bootstrap(&store, &RootOptions::default(), &SystemClock)
        .await
        .expect_err("bootstrap must refuse");
    let mut after = snapshot(store.dir());
    // Readers take a shared lock on this (empty) file; it is the only thing they may add.
    after.retain(|(name, _)| name != ".meshca-ca.lock");
    assert_eq!(before, after, "bootstrap changed the store: {err}");
    (err, store, parent)
}

fn stored_root() -> StoredCa {
    SigningAuthority::generate_root(&RootOptions::default(), &SystemClock)
        .unwrap()
        .to_stored()
}

fn write_pair(store: &DirectoryStore, certificate: &str, key: &str) {
    fs::write(store.certificate_path(), certificate).unwrap();
    write_key(store, key);
}

/// Writes the key file private, as the store requires.
fn write_key(store: &DirectoryStore, key: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(store.key_path(), key).unwrap();
    fs::set_permissions(store.key_path(), fs::Permissions::from_mode(0o600)).unwrap();
}

fn assert_names(err: &StoreError, path: &Path, words: &[&str]) {
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    for word in words {
        assert!(message.contains(word), "{word:?} not in: {message}");
    }
}

#[tokio::test]
async fn a_corrupt_certificate_file_is_refused() {
    let key = stored_root().key_pem().to_owned();
    let (err, store, _dir) = refused(|store| {
        write_pair(
            store,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            &key,
        );
    })
    .await;
    assert!(matches!(
        err,
        StoreError::Invalid {
            problem: CaProblem::Unreadable { .. },
            ..
        }
    ));
    assert_names(
        &err,
        &store.certificate_path(),
        &["not valid PEM", "Nothing was changed"],
    );

    // Valid PEM around bytes that are not a certificate.
    let (err, store, _dir) = refused(|store| {
        let pem = meshca_provider::x509::pem_block("CERTIFICATE", b"definitely not DER");
        write_pair(store, &pem, &key);
    })
    .await;
    assert!(matches!(
        err,
        StoreError::Invalid {
            problem: CaProblem::MalformedCertificate { position: 1, .. },
            ..
        }
    ));
    assert_names(
        &err,
        &store.certificate_path(),
        &["not a valid X.509 certificate"],
    );

    let (err, store, _dir) = refused(|store| write_pair(store, "hello\n", &key)).await;
    assert_names(&err, &store.certificate_path(), &["no CERTIFICATE"]);
}

#[tokio::test]
async fn an_unreadable_key_file_is_refused() {
    let certificate = stored_root().certificate_pem().to_owned();
    let (err, store, _dir) = refused(|store| write_pair(store, &certificate, "not a key\n")).await;
    assert!(matches!(
        err,
        StoreError::Invalid {
            problem: CaProblem::UnreadableKey { .. },
            ..
        }
    ));
    assert_names(&err, &store.key_path(), &["private key cannot be used"]);
}

#[tokio::test]
async fn a_key_that_does_not_match_is_refused() {
    let (one, other) = (stored_root(), stored_root());
    let (err, store, _dir) =
        refused(|store| write_pair(store, one.certificate_pem(), other.key_pem())).await;
    assert!(matches!(
        err,
        StoreError::Invalid {
            problem: CaProblem::KeyMismatch { .. },
            ..
        }
    ));
    assert_names(&err, &store.key_path(), &["does not belong to"]);
    assert_names(&err, &store.certificate_path(), &[]);
}

#[tokio::test]
async fn an_expired_root_is_refused() {
    // Made with rcgen directly: a CA that was valid for a day in 2001.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 2);
    let certificate = params.self_signed(&key).unwrap().pem();
    let key_pem = key.serialize_pem();
    let (err, store, _dir) = refused(|store| write_pair(store, &certificate, &key_pem)).await;
    assert!(matches!(
        err,
        StoreError::Invalid {
            problem: CaProblem::Expired { .. },
            ..
        }
    ));
    assert_names(&err, &store.certificate_path(), &["expired on 2001-01-02"]);
}

#[tokio::test]
async fn a_certificate_that_is_not_a_ca_is_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["leaf.example".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let certificate = params.self_signed(&key).unwrap().pem();
    let key_pem = key.serialize_pem();
    let (err, store, _dir) = refused(|store| write_pair(store, &certificate, &key_pem)).await;
    assert!(matches!(
        err,
        StoreError::Invalid {
            problem: CaProblem::NotCa { .. },
            ..
        }
    ));
    assert_names(
        &err,
        &store.certificate_path(),
        &["is not a CA certificate"],
    );
}

#[tokio::test]
async fn half_a_ca_is_refused() {
    let stored = stored_root();
    let (err, store, _dir) = refused(|store| {
        fs::write(store.certificate_path(), stored.certificate_pem()).unwrap();
    })
    .await;
    assert!(matches!(err, StoreError::Incomplete { .. }));
    assert_names(&err, &store.key_path(), &["does not", "incomplete"]);
    assert_names(&err, &store.certificate_path(), &[]);

    let (err, store, _dir) = refused(|store| {
        fs::write(store.key_path(), stored.key_pem()).unwrap();
    })
    .await;
    assert!(matches!(err, StoreError::Incomplete { .. }));
    assert_names(&err, &store.certificate_path(), &["does not"]);
}

#[tokio::test]
async fn a_directory_instead_of_a_file_is_an_error_naming_it() {
    // A directory where the certificate file should be: refused before any read.
    let key = stored_root().key_pem().to_owned();
    let (err, store, _dir) = refused(|store| {
        fs::create_dir(store.certificate_path()).unwrap();
        write_key(store, &key);
    })
    .await;
    assert!(
        matches!(
            err,
            StoreError::NotRegularFile {
                kind: "directory",
                ..
            }
        ),
        "{err:?}"
    );
    assert_names(&err, &store.certificate_path(), &["not a regular file"]);
}

#[test]
fn concurrent_bootstraps_agree_on_one_root() {
    const RACERS: usize = 8;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("ca");
    let barrier = Arc::new(Barrier::new(RACERS));
    let results: Vec<(String, Outcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RACERS)
            .map(|_| {
                let (dir, barrier) = (dir.clone(), Arc::clone(&barrier));
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    barrier.wait();
                    let (authority, outcome) = runtime.block_on(boot(&dir)).unwrap();
                    (fingerprint(&authority), outcome)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = &results[0].0;
    assert!(results.iter().all(|(f, _)| f == first), "{results:?}");
    let created = results
        .iter()
        .filter(|(_, o)| *o == Outcome::Created)
        .count();
    assert_eq!(created, 1, "{results:?}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (on_disk, outcome) = runtime.block_on(boot(&dir)).unwrap();
    assert_eq!(outcome, Outcome::Loaded);
    assert_eq!(&fingerprint(&on_disk), first);
}

#[tokio::test]
async fn an_imported_ca_is_stored_and_loaded_back() {
    let parent = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(parent.path().join("ca"));
    let root = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock).unwrap();
    let east = root
        .sign_intermediate(
            &meshca_tresor::IntermediateOptions::new("east", Default::default()),
            &SystemClock,
        )
        .unwrap();
    let offered = east.to_stored();
    let imported = StoredCa::import(
        offered.certificate_pem(),
        offered.key_pem(),
        SystemTime::now(),
    )
    .unwrap();
    store.create(&imported).await.unwrap();
    let (loaded, outcome) = bootstrap(&store, &RootOptions::default(), &SystemClock)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Loaded);
    assert_eq!(loaded.certificate(), east.certificate());
    assert_eq!(loaded.trust_bundle().roots(), [root.certificate().clone()]);
}
