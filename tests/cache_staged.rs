//! Staged re-issue (`CertificateCache::stage_reissue` / `publish_staged`) over the real Tresor CA:
//! certificates are issued first and reach subscribers only when published.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use meshca::cache::{CacheSettings, CertKey, CertificateCache, Purpose};
use meshca::time::TokioClock;
use meshca_provider::Clock;
use meshca_test_support::cert_key as key;
use meshca_tresor::{RootOptions, SigningAuthority, Tresor};

async fn tresor_cache() -> CertificateCache {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let authority =
        SigningAuthority::generate_root(&RootOptions::default(), clock.as_ref()).unwrap();
    let provider = Arc::new(Tresor::new(authority, clock.clone()));
    let cache = CertificateCache::new(provider, CacheSettings::default(), clock);
    cache.refresh_trust_bundle().await.unwrap();
    cache
}

#[tokio::test]
async fn staged_certificates_reach_subscribers_only_when_published() {
    let cache = tresor_cache().await;
    let inbound = key("a/b", Purpose::Inbound);
    let outbound = key("a/b", Purpose::Outbound);
    let other = key("c/d", Purpose::Default);
    let mut rx_in = cache.subscribe(inbound.clone()).await.unwrap();
    let mut rx_out = cache.subscribe(outbound.clone()).await.unwrap();
    let mut rx_other = cache.subscribe(other).await.unwrap();
    let before_in = rx_in.borrow_and_update().info.serial.clone();
    let before_out = rx_out.borrow_and_update().info.serial.clone();
    rx_other.borrow_and_update();

    let staged = cache.stage_reissue(Some(&inbound.identity)).await.unwrap();
    assert_eq!(staged.len(), 2, "both purposes of a/b, nothing else");
    let mut staged_serials: Vec<(CertKey, Vec<u8>)> = staged
        .certificates()
        .map(|(k, c)| (k.clone(), c.info.serial.clone()))
        .collect();
    staged_serials.sort();
    assert_eq!(staged_serials[0].0, inbound);
    assert_eq!(staged_serials[1].0, outbound);
    assert_ne!(staged_serials[0].1, before_in);
    assert_ne!(staged_serials[1].1, before_out);
    // Issued, but not served.
    assert!(!rx_in.has_changed().unwrap());
    assert!(!rx_out.has_changed().unwrap());
    assert_eq!(cache.cached(&inbound).unwrap().info.serial, before_in);
    let renewed_before = cache.stats().renewed;

    assert_eq!(cache.publish_staged(staged), 2);
    assert!(rx_in.has_changed().unwrap());
    assert_eq!(rx_in.borrow_and_update().info.serial, staged_serials[0].1);
    assert_eq!(rx_out.borrow_and_update().info.serial, staged_serials[1].1);
    assert!(!rx_other.has_changed().unwrap(), "c/d was not staged");
    assert_eq!(cache.stats().renewed, renewed_before + 2);
}

#[tokio::test]
async fn a_staged_certificate_older_than_a_later_renewal_is_not_published() {
    let cache = tresor_cache().await;
    let wanted = key("a/b", Purpose::Default);
    let mut rx = cache.subscribe(wanted.clone()).await.unwrap();
    rx.borrow_and_update();

    let staged = cache.stage_reissue(None).await.unwrap();
    assert_eq!(staged.len(), 1);
    cache.renew_now(Some(&wanted.identity));
    rx.changed().await.unwrap();
    let renewed = rx.borrow_and_update().info.serial.clone();

    assert_eq!(cache.publish_staged(staged), 0);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(cache.cached(&wanted).unwrap().info.serial, renewed);
}

#[tokio::test]
async fn staging_with_nothing_cached_stages_nothing() {
    let cache = tresor_cache().await;
    let staged = cache.stage_reissue(None).await.unwrap();
    assert!(staged.is_empty());
    assert_eq!(cache.publish_staged(staged), 0);
}
