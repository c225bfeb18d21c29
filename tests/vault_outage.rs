//! meshca's cache serving certificates from a real OpenBao that goes away for longer than a
//! renewal interval and comes back with the same data: the served certificate stays valid,
//! renewal failures are counted, and renewals resume without restarting anything. And a real
//! `meshca serve` through an outage longer than a leaf's life: a fresh certificate reaches its
//! SDS stream within 10 s of the unseal, and no response ever carries an expired one.

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
    let mut bao = Bao::persistent_pki("meshca outage root").await;
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

/// `meshca serve` against a persistent OpenBao, initialised and unsealed here, with 20-second
/// leaves and one SDS stream (ACKing like a proxy): OpenBao is killed for longer than a leaf's
/// life, restarted and unsealed. A fresh certificate must reach the stream within 10 s of the
/// unseal, without restarting meshca, and no response may ever carry an expired certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_serves_a_fresh_certificate_within_seconds_of_the_unseal_and_never_an_expired_one()
{
    use meshca_test_support::CheckedStream;
    use meshca_test_support::daemon::MeshcaServe;
    use meshca_test_support::envoy::http_get;
    use tokio::time::Instant;

    const LEAF: Duration = Duration::from_secs(20);
    let mut bao = Bao::persistent_pki("meshca daemon outage root").await;
    let mut daemon = MeshcaServe::builder()
        .args(["--log-level", "debug"])
        .dev_sds()
        .admin()
        .vault(&bao)
        .set("certificateProvider.serviceCertValidityDuration=20s")
        .start();
    daemon.wait_ready().await;

    let mut stream = CheckedStream::open(daemon.sds()).await;
    // Every response: the leaf it carries, unexpired at the time it arrived.
    let receive = async |stream: &mut CheckedStream, patience: Duration| {
        Some(stream.next_chain(patience).await?.leaf_info().unwrap())
    };
    let first = receive(&mut stream, Duration::from_secs(20)).await.unwrap();
    let lifetime = first.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(lifetime <= LEAF, "a {lifetime:?} certificate");

    // The outage: longer than a leaf's life, until the served certificate has expired.
    bao.kill();
    let killed = Instant::now();
    let mut latest = first.clone();
    while Instant::now() < killed + LEAF + Duration::from_secs(1)
        || SystemTime::now() < latest.not_after + Duration::from_secs(1)
    {
        // Renewals may still land before the kill is noticed; each is checked.
        if let Some(leaf) = receive(&mut stream, Duration::from_millis(500)).await {
            latest = leaf;
        }
    }
    let body = daemon.wait_readyz(503).await;
    assert!(body.contains("have expired"), "{body}");

    bao.restart().await;
    bao.unseal().await;
    let unsealed = Instant::now();
    let fresh = loop {
        let left = (unsealed + Duration::from_secs(10)).saturating_duration_since(Instant::now());
        let Some(leaf) = receive(&mut stream, left).await else {
            panic!(
                "no fresh certificate within 10 s of the unseal; log:\n{}",
                daemon.tail(40)
            );
        };
        if leaf.serial != latest.serial {
            break leaf;
        }
    };
    assert!(fresh.not_after > SystemTime::now());
    let (status, body) = {
        let response = http_get(daemon.admin(), "/readyz").await.unwrap();
        (response.status, response.body)
    };
    assert_eq!(status, 200, "{body}");
    assert!(
        daemon
            .log()
            .contains("retrying the renewals waiting in backoff now"),
        "{}",
        daemon.tail(40)
    );
    // A few more renewals, each checked as it arrives.
    let until = Instant::now() + LEAF;
    while Instant::now() < until {
        receive(&mut stream, Duration::from_millis(500)).await;
    }
    assert!(stream.responses >= 3, "{} responses", stream.responses);
}
