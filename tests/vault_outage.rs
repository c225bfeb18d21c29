//! meshca's cache serving certificates from a real OpenBao that goes away for longer than a
//! renewal interval and comes back with the same data: the served certificate stays valid,
//! renewal failures are counted, and renewals resume without restarting anything.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca::cache::{CacheSettings, CertKey, CertificateCache, Purpose};
use meshca::time::TokioClock;
use meshca_provider::{SpiffeId, TrustDomain};
use meshca_test_support::bao::Bao;
use meshca_test_support::eventually;
use meshca_vault::VaultProvider;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_certificates_survive_a_vault_outage_and_renewals_resume() {
    let mut bao = Bao::persistent().await;
    bao.init_and_unseal().await;
    bao.pki("pki", "meshca outage root").await;
    let provider = VaultProvider::connect(&bao.settings(&bao.root_token.clone()))
        .await
        .unwrap();

    // Vault back-dates NotBefore by 30s, so a 60s certificate really lives 90s and is renewed
    // about 15s (± 9s) after it is issued.
    let settings = CacheSettings {
        lifetime: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        issue_timeout: Duration::from_secs(5),
        ..CacheSettings::default()
    };
    let cache = CertificateCache::new(Arc::new(provider), settings, Arc::new(TokioClock::new()));
    let id = SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap();
    let mut served = cache
        .subscribe(CertKey::new(id, Purpose::Default))
        .await
        .unwrap();
    let first = served.borrow_and_update().clone();
    assert_eq!(first.issued_by, "vault");

    bao.kill();
    // Outage: wait until the renewal has come due and failed (and been retried) a few times.
    eventually(
        Duration::from_secs(40),
        "renewal failures while Vault is down",
        || {
            let stats = cache.stats();
            async move { stats }
        },
        |stats| stats.failures >= 3,
    )
    .await;
    let during = served.borrow().clone();
    assert_eq!(
        during.info.serial, first.info.serial,
        "nothing new was published"
    );
    assert!(
        during.info.not_after > SystemTime::now(),
        "the served certificate is still valid"
    );
    assert!(cache.stats().retries >= 2, "{:?}", cache.stats());

    bao.restart().await;
    bao.unseal().await;
    tokio::time::timeout(Duration::from_secs(30), served.changed())
        .await
        .expect("a renewal after Vault came back")
        .unwrap();
    let renewed = served.borrow().clone();
    assert_ne!(renewed.info.serial, first.info.serial);
    assert!(renewed.info.not_after > first.info.not_after);
    assert!(cache.stats().renewed >= 1, "{:?}", cache.stats());
}
