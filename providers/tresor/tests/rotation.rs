//! Root rotation steps against the directory store: each stage's condition, compare-and-swap
//! under concurrency, the persisted record, and refusals that leave everything as it was.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_provider::{KeyType, LeafKey, LeafSpec, SpiffeId, TrustDomain};
use meshca_test_support::verify::{FixedClock, Purpose, webpki_verify};
use meshca_tresor::rotate::{self, Abort, Advance};
use meshca_tresor::{
    AckReport, CaStore, DirectoryStore, IntermediateOptions, RootOptions, RotationError,
    RotationPolicy, SigningAuthority, Stage, bootstrap, bootstrap_signing, unix,
};

fn policy() -> RotationPolicy {
    RotationPolicy {
        ack_deadline: None,
        longest_leaf: Duration::from_secs(3600),
        report_freshness: Duration::from_secs(60),
    }
}

async fn store_with_root(clock: &FixedClock) -> (tempfile::TempDir, DirectoryStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(dir.path().join("ca"));
    bootstrap(&store, &RootOptions::default(), clock)
        .await
        .unwrap();
    (dir, store)
}

fn report(replica: &str, root: &str, streams: usize, acked: usize, at: SystemTime) -> AckReport {
    AckReport {
        replica: replica.into(),
        root: root.into(),
        streams,
        acked,
        missing: (acked..streams).map(|i| format!("ns/sa-{i}")).collect(),
        at: unix(at),
        distribution: None,
    }
}

#[tokio::test]
async fn a_full_rotation_moves_issuance_and_trust_one_stage_at_a_time() {
    let t0 = FixedClock::now_whole_seconds();
    let (_dir, store) = store_with_root(&t0).await;
    let old_root = bootstrap_signing(&store, &RootOptions::default(), &t0)
        .await
        .unwrap()
        .authority
        .root()
        .clone();

    let (rotation, started) = rotate::start(&store, &RootOptions::default(), &policy(), &t0)
        .await
        .unwrap();
    assert!(started);
    assert_eq!(rotation.stage, Stage::Trusting);
    let again = rotate::start(&store, &RootOptions::default(), &policy(), &t0)
        .await
        .unwrap();
    assert!(!again.1, "a second start changes nothing");
    assert_eq!(
        again.0.new.certificate_pem(),
        rotation.new.certificate_pem()
    );
    let record = store.dir().join(DirectoryStore::ROTATION_FILE);
    let mode = std::fs::metadata(&record).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the record holds keys");

    // Stage 1: both roots trusted, the old one signs.
    let signing = bootstrap_signing(&store, &RootOptions::default(), &t0)
        .await
        .unwrap();
    assert_eq!(signing.authority.root(), &old_root);
    assert_eq!(signing.bundle.roots().len(), 2);
    let new_root = signing.bundle.roots()[1].clone();
    assert_ne!(new_root, old_root);

    // No daemon has reported: nothing advances.
    let waiting = rotate::advance(&store, &policy(), &t0).await.unwrap();
    assert!(matches!(waiting, Advance::AwaitingAcks { .. }), "{waiting}");
    assert!(waiting.to_string().contains("0 of 0"), "{waiting}");

    // One daemon reports a proxy missing: still waiting, and it is named.
    let fingerprint = rotation.new_root_fingerprint(t0.0).unwrap();
    store
        .report_acks(&report("meshca-0", &fingerprint, 3, 2, t0.0))
        .await
        .unwrap();
    let waiting = rotate::advance(&store, &policy(), &t0).await.unwrap();
    let message = waiting.to_string();
    assert!(message.contains("2 of 3"), "{message}");
    assert!(message.contains("ns/sa-2"), "{message}");
    assert!(message.contains("rotation.ackDeadline"), "{message}");

    // A report about another root, or a stale one, does not count.
    store
        .report_acks(&report("meshca-1", "other", 1, 1, t0.0))
        .await
        .unwrap();
    store
        .report_acks(&report("meshca-0", &fingerprint, 3, 3, t0.0))
        .await
        .unwrap();
    let later = FixedClock(t0.0 + Duration::from_secs(120));
    let stale = rotate::advance(&store, &policy(), &later).await.unwrap();
    assert!(matches!(stale, Advance::AwaitingAcks { .. }), "{stale}");
    assert!(stale.to_string().contains("stale"), "{stale}");

    // All acknowledged: stage 2, the new root signs, both still trusted.
    let advanced = rotate::advance(&store, &policy(), &t0).await.unwrap();
    assert!(
        matches!(
            advanced,
            Advance::ToIssuing {
                by_deadline: false,
                ..
            }
        ),
        "{advanced}"
    );
    let signing = bootstrap_signing(&store, &RootOptions::default(), &t0)
        .await
        .unwrap();
    assert_eq!(signing.authority.root(), &new_root);
    assert_eq!(signing.bundle.roots(), [old_root.clone(), new_root.clone()]);
    let leaf = sign(&signing.authority, t0.0);
    assert!(webpki_verify(&leaf, &signing.bundle, t0.0, Purpose::Client).is_ok());

    // Stage 2 lasts the longest leaf lifetime.
    let waiting = rotate::advance(&store, &policy(), &t0).await.unwrap();
    assert!(
        matches!(waiting, Advance::AwaitingRetirement { .. }),
        "{waiting}"
    );
    let after = FixedClock(t0.0 + Duration::from_secs(3600));
    let finished = rotate::advance(&store, &policy(), &after).await.unwrap();
    assert!(matches!(finished, Advance::Finished), "{finished}");

    // Finished: the new root is the stored CA; only it is trusted; nothing is left behind.
    assert!(!record.exists());
    assert!(!store.dir().join(DirectoryStore::ACKS_DIR).exists());
    let (authority, _) = bootstrap(&store, &RootOptions::default(), &after)
        .await
        .unwrap();
    assert_eq!(authority.root(), &new_root);
    let signing = bootstrap_signing(&store, &RootOptions::default(), &after)
        .await
        .unwrap();
    assert_eq!(signing.bundle.roots(), [new_root]);
    let err = rotate::advance(&store, &policy(), &after)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rotate root start"), "{err}");
}

#[tokio::test]
async fn the_deadline_advances_without_acknowledgements() {
    let t0 = FixedClock::now_whole_seconds();
    let (_dir, store) = store_with_root(&t0).await;
    let policy = RotationPolicy {
        ack_deadline: Some(Duration::from_secs(600)),
        ..policy()
    };
    rotate::start(&store, &RootOptions::default(), &policy, &t0)
        .await
        .unwrap();
    let waiting = rotate::advance(&store, &policy, &t0).await.unwrap();
    assert!(
        waiting
            .to_string()
            .contains("the deadline lets it advance after"),
        "{waiting}"
    );
    let late = FixedClock(t0.0 + Duration::from_secs(600));
    let advanced = rotate::advance(&store, &policy, &late).await.unwrap();
    assert!(
        matches!(
            advanced,
            Advance::ToIssuing {
                by_deadline: true,
                ..
            }
        ),
        "{advanced}"
    );
}

#[tokio::test]
async fn concurrent_advances_move_the_stage_once() {
    let t0 = FixedClock::now_whole_seconds();
    let (_dir, store) = store_with_root(&t0).await;
    let policy = RotationPolicy {
        ack_deadline: Some(Duration::ZERO),
        ..policy()
    };
    rotate::start(&store, &RootOptions::default(), &policy, &t0)
        .await
        .unwrap();
    let store = Arc::new(store);
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let policy = policy.clone();
            tokio::spawn(async move { rotate::advance(store.as_ref(), &policy, &t0).await })
        })
        .collect();
    let mut advanced = 0;
    for run in runs {
        match run.await.unwrap().unwrap() {
            Advance::ToIssuing { .. } => advanced += 1,
            Advance::AlreadyAdvanced(_) | Advance::AwaitingRetirement { .. } => {}
            other => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(advanced, 1);
    let rotation = store.load_rotation().await.unwrap().unwrap();
    assert_eq!(rotation.stage, Stage::Issuing);
    assert_eq!(rotation.revision, 2);
}

#[tokio::test]
async fn abort_moves_back_one_stage_then_drops_the_new_root() {
    let t0 = FixedClock::now_whole_seconds();
    let (_dir, store) = store_with_root(&t0).await;
    let before = std::fs::read(store.certificate_path()).unwrap();
    let policy = RotationPolicy {
        ack_deadline: Some(Duration::ZERO),
        ..policy()
    };
    rotate::start(&store, &RootOptions::default(), &policy, &t0)
        .await
        .unwrap();
    rotate::advance(&store, &policy, &t0).await.unwrap();
    let back = rotate::abort(&store, &t0).await.unwrap();
    assert!(matches!(back, Abort::BackToTrusting), "{back}");
    let signing = bootstrap_signing(&store, &RootOptions::default(), &t0)
        .await
        .unwrap();
    assert_eq!(signing.bundle.roots().len(), 2);
    assert_eq!(signing.authority.root(), &signing.bundle.roots()[0]);
    let dropped = rotate::abort(&store, &t0).await.unwrap();
    assert!(matches!(dropped, Abort::Dropped), "{dropped}");
    assert!(store.load_rotation().await.unwrap().is_none());
    assert_eq!(std::fs::read(store.certificate_path()).unwrap(), before);
    let err = rotate::abort(&store, &t0).await.unwrap_err();
    assert!(matches!(err, RotationError::NotRotating { .. }), "{err}");
}

#[tokio::test]
async fn a_corrupt_record_is_refused_and_left_alone() {
    let t0 = FixedClock::now_whole_seconds();
    let (_dir, store) = store_with_root(&t0).await;
    let record = store.dir().join(DirectoryStore::ROTATION_FILE);
    std::fs::write(&record, b"{\"format\": 1, \"stage\": \"trusting\"").unwrap();
    for err in [
        bootstrap_signing(&store, &RootOptions::default(), &t0)
            .await
            .unwrap_err()
            .to_string(),
        rotate::start(&store, &RootOptions::default(), &policy(), &t0)
            .await
            .unwrap_err()
            .to_string(),
        rotate::advance(&store, &policy(), &t0)
            .await
            .unwrap_err()
            .to_string(),
    ] {
        assert!(err.contains("rotation.json"), "{err}");
        assert!(err.contains("Nothing was changed"), "{err}");
    }
    assert_eq!(
        std::fs::read(&record).unwrap(),
        b"{\"format\": 1, \"stage\": \"trusting\""
    );
}

#[tokio::test]
async fn finishing_never_overwrites_a_ca_that_is_not_the_rotations() {
    let t0 = FixedClock::now_whole_seconds();
    let (_dir, store) = store_with_root(&t0).await;
    let policy = RotationPolicy {
        ack_deadline: Some(Duration::ZERO),
        longest_leaf: Duration::ZERO,
        ..policy()
    };
    rotate::start(&store, &RootOptions::default(), &policy, &t0)
        .await
        .unwrap();
    rotate::advance(&store, &policy, &t0).await.unwrap();
    // Someone replaced ca.crt by hand meanwhile.
    let foreign = SigningAuthority::generate_root(&RootOptions::default(), &t0).unwrap();
    std::fs::write(store.certificate_path(), foreign.certificate_chain_pem()).unwrap();
    let err = rotate::advance(&store, &policy, &t0).await.unwrap_err();
    assert!(
        err.to_string().contains("neither the old nor the new root"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(store.certificate_path()).unwrap(),
        foreign.certificate_chain_pem()
    );
    assert!(store.load_rotation().await.unwrap().is_some());
}

#[tokio::test]
async fn an_intermediate_is_not_rotated_here() {
    let t0 = FixedClock::now_whole_seconds();
    let root = SigningAuthority::generate_root(&RootOptions::default(), &t0).unwrap();
    let intermediate = root
        .sign_intermediate(
            &IntermediateOptions::new("east", TrustDomain::default()),
            &t0,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(dir.path());
    store.create(&intermediate.to_stored()).await.unwrap();
    let err = rotate::start(&store, &RootOptions::default(), &policy(), &t0)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::NotARoot { .. }), "{err}");
    assert!(err.to_string().contains("meshca ca intermediate"), "{err}");
    let empty = DirectoryStore::new(dir.path().join("empty"));
    let err = rotate::start(&empty, &RootOptions::default(), &policy(), &t0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("meshca bootstrap"), "{err}");
}

fn sign(authority: &SigningAuthority, now: SystemTime) -> meshca_provider::CertificateChain {
    let id = SpiffeId::from_short("bookstore/bookstore-v1", &TrustDomain::default()).unwrap();
    let spec = LeafSpec::workload(&id, &[], Duration::from_secs(3600));
    let key = LeafKey::generate(KeyType::P256).unwrap();
    authority
        .sign_leaf(&spec, &key, now, Duration::from_secs(60))
        .unwrap()
}

#[tokio::test]
async fn entries_that_are_not_reports_count_for_nothing_and_are_named() {
    let t0 = FixedClock(SystemTime::now());
    let (_dir, store) = store_with_root(&t0).await;
    rotate::start(&store, &RootOptions::default(), &policy(), &t0)
        .await
        .unwrap();
    let rotation = store.load_rotation().await.unwrap().unwrap();
    let fingerprint = rotation.new_root_fingerprint(t0.0).unwrap();
    let acks = store.dir().join(DirectoryStore::ACKS_DIR);
    std::fs::create_dir_all(&acks).unwrap();
    // Garbage; a complete, fresh report padded past the size limit (it would let stage 1
    // advance if it were read: no daemon has reported); a FIFO (a read would never end).
    std::fs::write(acks.join("garbage.json"), b"\x00{\"replica\":").unwrap();
    let mut padded = report("forged", &fingerprint, 0, 0, t0.0).to_json();
    padded.resize(AckReport::MAX_BYTES + 1, b' ');
    std::fs::write(acks.join("forged.json"), padded).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(acks.join("fifo.json"))
        .status()
        .unwrap();
    assert!(fifo.success());

    let read = store.ack_reports().await.unwrap();
    assert!(read.reports.is_empty(), "{read:?}");
    let mut unreadable = read.unreadable.clone();
    unreadable.sort();
    assert_eq!(unreadable.len(), 3, "{unreadable:?}");
    assert!(unreadable[0].contains("fifo.json: a FIFO, not a regular file"));
    assert!(unreadable[1].contains("forged.json: larger than 65536 bytes"));
    assert!(unreadable[2].contains("garbage.json: not a report"));
    let waiting = rotate::advance(&store, &policy(), &t0).await.unwrap();
    let message = waiting.to_string();
    assert!(matches!(waiting, Advance::AwaitingAcks { .. }), "{message}");
    assert!(message.contains("0 of 0"), "{message}");
    assert!(message.contains("3 unreadable ignored"), "{message}");
    assert!(message.contains("forged.json"), "{message}");

    // The limit itself is readable; a report going stale is named with its replica.
    let mut fits = report("meshca-0", &fingerprint, 1, 1, t0.0).to_json();
    fits.resize(AckReport::MAX_BYTES, b' ');
    std::fs::write(acks.join("forged.json"), fits).unwrap();
    let read = store.ack_reports().await.unwrap();
    assert_eq!(read.reports.len(), 1, "{read:?}");
    let later = t0.0 + Duration::from_secs(120);
    let summary = meshca_tresor::AckSummary::of(read, &fingerprint, Duration::from_secs(60), later);
    assert_eq!(summary.stale_replicas, ["meshca-0"]);
    assert!(!summary.complete());
}
