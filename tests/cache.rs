//! The certificate cache against a fake provider, in paused tokio time.
//!
//! The fake signs real certificates (rcgen, from a test CA) stamped with the virtual clock, and
//! reports every issue call on a channel. Tests wait on that channel or on the cache's watch
//! receivers; with the clock paused, tokio jumps virtual time to the next timer only when every
//! task is idle, so "advance N hours" is deterministic and takes no real time.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca::cache::{CacheError, CacheSettings, CertificateCache, Purpose};
use meshca::time::TokioClock;
use meshca_provider::{Clock, KeyType, TrustBundle};
use meshca_test_support::fake_provider::{BACKDATE, Call, FakeProvider, Mode};
use meshca_test_support::{cert_key as key, id};
use tokio::sync::mpsc;

const HOUR: Duration = Duration::from_secs(3600);

struct Harness {
    cache: CertificateCache,
    provider: Arc<FakeProvider>,
    calls: mpsc::UnboundedReceiver<Call>,
    clock: TokioClock,
}

fn settings() -> CacheSettings {
    CacheSettings {
        lifetime: HOUR,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        ..CacheSettings::default()
    }
}

fn harness(settings: CacheSettings) -> Harness {
    let clock = TokioClock::new();
    let (provider, calls) = FakeProvider::new(clock);
    let cache = CertificateCache::new(provider.clone(), settings, Arc::new(clock));
    Harness {
        cache,
        provider,
        calls,
        clock,
    }
}

/// Lets virtual time pass. The clock is paused, so this returns only after every timer due
/// within `duration` has fired and every task woken by one has run until it waits again.
async fn run_for(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// How far into its usable lifetime — from when it was issued (virtual time stands still during
/// an issuance), not from its back-dated NotBefore — a certificate was at `at`.
fn fraction_of_lifetime(at: SystemTime, not_before: SystemTime, not_after: SystemTime) -> f64 {
    let received = not_before + BACKDATE;
    let lifetime = not_after.duration_since(received).unwrap().as_secs_f64();
    at.duration_since(received).unwrap().as_secs_f64() / lifetime
}

#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_requests_cause_one_issuance() {
    let h = harness(settings());
    // Issuance takes a (virtual) second, so every request arrives while it is in flight.
    *h.provider.latency.lock().unwrap() = Duration::from_secs(1);
    let wanted = key("bookstore/bookstore-v1", Purpose::Default);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let cache = h.cache.clone();
        let wanted = wanted.clone();
        requests.spawn(async move { cache.certificate(&wanted).await });
    }
    let serials: Vec<_> = requests
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap().info.serial.clone())
        .collect();
    assert_eq!(h.provider.calls(), 1);
    assert_eq!(serials.len(), 100);
    assert!(serials.iter().all(|s| *s == serials[0]));
    let stats = h.cache.stats();
    assert_eq!((stats.issued, stats.entries, stats.in_flight), (1, 1, 0));
    // And the cached one is served without asking again.
    h.cache.certificate(&wanted).await.unwrap();
    assert_eq!(h.provider.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn each_purpose_gets_its_own_key_and_serial() {
    let h = harness(settings());
    let mut serials = Vec::new();
    let mut keys = Vec::new();
    for purpose in [Purpose::Default, Purpose::Inbound, Purpose::Outbound] {
        let cert = h
            .cache
            .certificate(&key("bookstore/bookstore-v1", purpose))
            .await
            .unwrap();
        let leaf = cert.chain.leaf_info().unwrap();
        assert_eq!(
            leaf.uri_sans,
            ["spiffe://cluster.local/ns/bookstore/sa/bookstore-v1"]
        );
        assert!(leaf.dns_sans.is_empty(), "{:?}", leaf.dns_sans);
        assert_eq!(leaf.serial, cert.info.serial);
        assert_eq!(cert.issued_by, "fake");
        serials.push(cert.info.serial.clone());
        keys.push(cert.key.public_key_spki());
    }
    assert_eq!(h.provider.calls(), 3);
    assert_eq!(h.cache.stats().entries, 3);
    for i in 0..3 {
        for j in i + 1..3 {
            assert_ne!(serials[i], serials[j]);
            assert_ne!(keys[i], keys[j]);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_configured_key_type_is_used_and_never_shown() {
    let h = harness(CacheSettings {
        key_type: KeyType::P384,
        ..settings()
    });
    let cert = h
        .cache
        .certificate(&key("a/b", Purpose::Default))
        .await
        .unwrap();
    assert_eq!(
        cert.chain.leaf_info().unwrap().key_description,
        "ECDSA P-384"
    );
    let shown = format!("{cert:?}");
    assert!(shown.contains("redacted"), "{shown}");
    let pem = cert.key.private_key_pem();
    let body: String = pem.lines().nth(1).unwrap().to_owned();
    assert!(!shown.contains(&body));
}

#[tokio::test(start_paused = true)]
async fn renewal_comes_at_half_the_real_lifetime_give_or_take_ten_percent() {
    let mut h = harness(settings());
    let mut subscriptions = Vec::new();
    let mut first = std::collections::HashMap::new();
    for i in 0..20 {
        let wanted = key(&format!("ns/sa-{i}"), Purpose::Default);
        let rx = h.cache.subscribe(wanted.clone()).await.unwrap();
        first.insert(wanted.identity.clone(), rx.borrow().clone());
        subscriptions.push((wanted.identity.clone(), rx));
    }
    let mut fractions = Vec::new();
    for _ in 0..20 {
        h.calls.recv().await.unwrap();
    }
    // The next 20 calls are the renewals; virtual time runs until they happen.
    for _ in 0..20 {
        let call = h.calls.recv().await.unwrap();
        let cert = &first[&call.identity];
        let fraction = fraction_of_lifetime(call.at, cert.info.not_before, cert.info.not_after);
        // Certificate times are whole seconds: the NotBefore read back may sit up to a second
        // before the issuance the fake provider recorded, so a renewal drawn at the edge of the
        // ±10% window can measure a fraction of a second past it (once seen: 0.6000192, 69 ms).
        // One second of the hour-long lifetime is the slack.
        let slack = 1.0 / HOUR.as_secs_f64();
        assert!(
            (0.4 - slack..=0.6 + slack).contains(&fraction),
            "{} renewed at {fraction} of its lifetime",
            call.identity
        );
        fractions.push(fraction);
    }
    let spread = fractions.iter().cloned().fold(f64::MIN, f64::max)
        - fractions.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.01, "renewals are not spread: {fractions:?}");
    // Every subscriber got its renewed certificate.
    for (identity, rx) in &mut subscriptions {
        rx.changed().await.unwrap();
        let renewed = rx.borrow_and_update().clone();
        assert_eq!(
            renewed.chain.leaf_info().unwrap().uri_sans,
            [identity.to_string()]
        );
        assert_ne!(renewed.info.serial, first[identity].info.serial);
    }
    assert_eq!(h.cache.stats().renewed, 20);
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_back_off_keep_the_last_good_certificate_and_recover() {
    let mut h = harness(CacheSettings {
        jitter_fraction: 0.0,
        ..settings()
    });
    let wanted = key("bookstore/bookstore-v1", Purpose::Inbound);
    let mut rx = h.cache.subscribe(wanted.clone()).await.unwrap();
    let good = rx.borrow_and_update().clone();
    let issued_at = h.calls.recv().await.unwrap().at;
    h.provider.set_mode(Mode::Fail);

    let mut failed_at = Vec::new();
    for _ in 0..12 {
        let call = h.calls.recv().await.unwrap();
        assert_eq!(call.mode, Mode::Fail);
        failed_at.push(call.at);
    }
    // Half the usable lifetime, counted from when the certificate was received.
    let usable = good.info.not_after.duration_since(issued_at).unwrap();
    let renewal = failed_at[0]
        .duration_since(issued_at)
        .unwrap()
        .as_secs_f64()
        / usable.as_secs_f64();
    assert!((renewal - 0.5).abs() < 1e-3, "first renewal at {renewal}");
    let delays: Vec<Duration> = failed_at
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap())
        .collect();
    let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
    // Timers fire on millisecond ticks, so allow that much rounding.
    let tick = Duration::from_millis(2);
    assert!(
        delays[0] >= initial && delays[0] <= initial * 5 / 4 + tick,
        "{delays:?}"
    );
    for pair in delays.windows(2) {
        assert!(pair[1] > pair[0] || pair[1] + tick >= max, "{delays:?}");
    }
    assert!(delays.iter().all(|d| *d <= max + tick), "{delays:?}");
    assert!(
        delays[delays.len() - 2..].iter().all(|d| *d + tick >= max),
        "{delays:?}"
    );

    // Meanwhile the last good certificate is what everybody gets.
    assert!(!rx.has_changed().unwrap());
    assert_eq!(rx.borrow().info.serial, good.info.serial);
    let served = h.cache.certificate(&wanted).await.unwrap();
    assert_eq!(served.info.serial, good.info.serial);
    let stats = h.cache.stats();
    assert!(stats.failures >= 12 && stats.retries >= 11, "{stats:?}");
    assert_eq!(stats.renewed, 0);

    h.provider.set_mode(Mode::Good);
    rx.changed().await.unwrap();
    let renewed = rx.borrow_and_update().clone();
    assert_ne!(renewed.info.serial, good.info.serial);
    assert!(renewed.info.not_after > good.info.not_after);
    assert_eq!(h.cache.stats().renewed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_renewal_is_retried_just_before_expiry() {
    let mut h = harness(CacheSettings {
        jitter_fraction: 0.0,
        backoff_initial: Duration::from_secs(60),
        backoff_max: 24 * HOUR,
        ..settings()
    });
    let rx = h
        .cache
        .subscribe(key("a/b", Purpose::Default))
        .await
        .unwrap();
    let not_after = rx.borrow().info.not_after;
    h.calls.recv().await.unwrap();
    h.provider.set_mode(Mode::Fail);
    let mut calls = Vec::new();
    loop {
        let call = h.calls.recv().await.unwrap();
        calls.push(call.at);
        if call.at >= not_after {
            break;
        }
    }
    // Backoff alone would have jumped far past NotAfter; one try came in its last seconds.
    let last_before = calls.iter().rev().find(|at| **at < not_after).unwrap();
    let left = not_after.duration_since(*last_before).unwrap();
    assert!(
        left <= Duration::from_secs(2),
        "last try {left:?} before expiry: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_chains_are_rejected_counted_and_never_published() {
    let cases = [
        (Mode::WrongSan, "URI SANs"),
        (Mode::Expired, "expired"),
        (Mode::WrongKey, "different public key"),
        (Mode::ForeignCa, "does not verify"),
        (Mode::ServerAuthOnly, "clientAuth"),
    ];
    for (mode, why) in cases {
        let h = harness(settings());
        h.provider.set_mode(mode);
        let wanted = key("a/b", Purpose::Default);
        let error = h.cache.certificate(&wanted).await.unwrap_err();
        match &error {
            CacheError::Invalid {
                identity, reason, ..
            } => {
                assert_eq!(identity, &wanted.identity);
                assert!(reason.contains(why), "{mode:?}: {reason}");
            }
            other => panic!("{mode:?}: expected a rejection, got {other}"),
        }
        assert!(error.to_string().contains("not served"), "{error}");
        assert!(h.cache.subscribe(wanted.clone()).await.is_err());
        let stats = h.cache.stats();
        assert_eq!(
            (stats.rejected, stats.failures, stats.entries, stats.issued),
            (2, 2, 0, 0),
            "{mode:?}"
        );
        assert!(h.cache.cached(&wanted).is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn chains_through_an_intermediate_are_accepted() {
    let h = harness(settings());
    h.provider.set_mode(Mode::ViaIntermediate);
    let cert = h
        .cache
        .certificate(&key("a/b", Purpose::Default))
        .await
        .unwrap();
    assert_eq!(cert.chain.certificates().len(), 2);
    assert_eq!(cert.chain.intermediates()[0], *h.provider.ca.intermediate());
}

#[tokio::test(start_paused = true)]
async fn a_rejected_renewal_keeps_the_last_good_certificate() {
    let mut h = harness(settings());
    let wanted = key("a/b", Purpose::Default);
    let mut rx = h.cache.subscribe(wanted.clone()).await.unwrap();
    let good = rx.borrow_and_update().clone();
    h.calls.recv().await.unwrap();
    h.provider.set_mode(Mode::ForeignCa);
    h.cache.renew_now(Some(&wanted.identity));
    h.calls.recv().await.unwrap();
    run_for(Duration::from_millis(100)).await;
    assert_eq!(h.cache.stats().rejected, 1);
    assert!(!rx.has_changed().unwrap());
    let served = h.cache.certificate(&wanted).await.unwrap();
    assert_eq!(served.info.serial, good.info.serial);
}

#[tokio::test(start_paused = true)]
async fn renew_now_pushes_new_certificates_to_subscribers() {
    let h = harness(settings());
    let inbound = key("a/b", Purpose::Inbound);
    let outbound = key("a/b", Purpose::Outbound);
    let other = key("c/d", Purpose::Default);
    let mut rx_in = h.cache.subscribe(inbound).await.unwrap();
    let mut rx_out = h.cache.subscribe(outbound).await.unwrap();
    let mut rx_other = h.cache.subscribe(other).await.unwrap();
    let before: Vec<_> = [&mut rx_in, &mut rx_out, &mut rx_other]
        .into_iter()
        .map(|rx| rx.borrow_and_update().info.serial.clone())
        .collect();

    h.cache.renew_now(Some(&id("a/b")));
    rx_in.changed().await.unwrap();
    rx_out.changed().await.unwrap();
    assert_ne!(rx_in.borrow_and_update().info.serial, before[0]);
    assert_ne!(rx_out.borrow_and_update().info.serial, before[1]);
    run_for(Duration::from_millis(100)).await;
    assert!(
        !rx_other.has_changed().unwrap(),
        "another identity was renewed"
    );
    assert_eq!(h.provider.calls(), 5);

    h.cache.renew_now(None);
    for rx in [&mut rx_in, &mut rx_out, &mut rx_other] {
        rx.changed().await.unwrap();
    }
    assert_ne!(rx_other.borrow().info.serial, before[2]);
    assert_eq!(h.provider.calls(), 8);
}

#[tokio::test(start_paused = true)]
async fn renew_now_during_an_issuance_issues_again_afterwards() {
    let h = harness(settings());
    let wanted = key("a/b", Purpose::Default);
    let mut rx = h.cache.subscribe(wanted.clone()).await.unwrap();
    let first = rx.borrow_and_update().info.serial.clone();
    *h.provider.latency.lock().unwrap() = Duration::from_secs(1);
    h.cache.renew_now(None);
    run_for(Duration::from_millis(100)).await;
    assert_eq!(h.cache.stats().in_flight, 1);
    // A second request while the first renewal is still running.
    h.cache.renew_now(Some(&wanted.identity));
    run_for(Duration::from_secs(5)).await;
    assert_eq!(h.provider.calls(), 3);
    assert_ne!(rx.borrow_and_update().info.serial, first);
}

#[tokio::test(start_paused = true)]
async fn unused_keys_are_dropped_after_their_certificate_expires() {
    let h = harness(settings());
    let unused = key("a/unused", Purpose::Default);
    let watched = key("a/watched", Purpose::Default);
    let one_shot = h.cache.certificate(&unused).await.unwrap();
    let rx = h.cache.subscribe(watched.clone()).await.unwrap();
    assert_eq!(h.cache.stats().entries, 2);

    // Before the handed-out certificate expires, the key is kept (and renewed).
    run_for(Duration::from_secs(40 * 60)).await;
    assert!(h.cache.cached(&unused).is_some());

    run_for(4 * HOUR).await;
    assert!(h.clock.now() > one_shot.info.not_after);
    let stats = h.cache.stats();
    assert_eq!((stats.entries, stats.evicted), (1, 1), "{stats:?}");
    assert!(h.cache.cached(&unused).is_none());
    let kept = h.cache.cached(&watched).unwrap();
    assert!(kept.info.not_after > h.clock.now());
    assert_eq!(rx.borrow().info.serial, kept.info.serial);

    // Asking again simply issues a new one.
    let calls = h.provider.calls();
    h.cache.certificate(&unused).await.unwrap();
    assert_eq!(h.provider.calls(), calls + 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_issuance_is_reported_and_retried_by_the_next_caller() {
    let h = harness(settings());
    h.provider.set_mode(Mode::Fail);
    let wanted = key("a/b", Purpose::Default);
    let error = h.cache.certificate(&wanted).await.unwrap_err();
    assert!(matches!(error, CacheError::Provider { .. }), "{error}");
    assert!(error.to_string().contains("connection refused"), "{error}");
    assert_eq!(h.cache.stats().entries, 0);
    h.provider.set_mode(Mode::Good);
    h.cache.certificate(&wanted).await.unwrap();
    assert_eq!(h.provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_provider_fails_that_issuance_and_the_cache_carries_on() {
    let h = harness(CacheSettings {
        max_concurrent_issues: 2,
        ..settings()
    });
    h.provider.set_mode(Mode::Panic);
    for round in 0..3 {
        let error = h
            .cache
            .certificate(&key(&format!("a/panic-{round}"), Purpose::Default))
            .await
            .unwrap_err();
        assert!(matches!(error, CacheError::Internal { .. }), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("panicked") && text.contains("own bug"),
            "{text}"
        );
        assert!(
            text.contains("spiffe://cluster.local/ns/a/sa/panic-"),
            "{text}"
        );
    }
    // More panics than issuer slots, and issuance still works afterwards, concurrently too.
    h.provider.set_mode(Mode::Good);
    let (one, two) = (key("a/b", Purpose::Default), key("c/d", Purpose::Default));
    let (first, second) = tokio::join!(h.cache.certificate(&one), h.cache.certificate(&two));
    first.unwrap();
    second.unwrap();
    assert_eq!(h.cache.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn slow_providers_time_out() {
    let h = harness(CacheSettings {
        issue_timeout: Duration::from_secs(5),
        ..settings()
    });
    *h.provider.latency.lock().unwrap() = Duration::from_secs(60);
    let error = h
        .cache
        .certificate(&key("a/b", Purpose::Default))
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::Timeout { .. }), "{error}");
    assert!(error.to_string().contains("5s"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn trust_bundle_changes_reach_receivers() {
    let h = harness(settings());
    let mut rx = h.cache.trust_bundle();
    h.cache.refresh_trust_bundle().await.unwrap();
    assert_eq!(
        rx.borrow_and_update().roots(),
        std::slice::from_ref(h.provider.ca.root())
    );

    // A second root appears (a rotation begins): the periodic refresh picks it up.
    let both = TrustBundle::new(vec![
        h.provider.ca.root().clone(),
        h.provider.foreign.root().clone(),
    ]);
    *h.provider.bundle.lock().unwrap() = both.clone();
    rx.changed().await.unwrap();
    assert_eq!(**rx.borrow_and_update(), both);

    // An explicit refresh publishes at once; an unchanged bundle wakes nobody.
    h.cache.refresh_trust_bundle().await.unwrap();
    assert!(!rx.has_changed().unwrap());
    let only_new = TrustBundle::new(vec![h.provider.foreign.root().clone()]);
    *h.provider.bundle.lock().unwrap() = only_new.clone();
    h.cache.refresh_trust_bundle().await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(**rx.borrow_and_update(), only_new);
}

#[test]
fn settings_are_checked() {
    assert!(CacheSettings::default().validate().is_ok());
    let bad = [
        CacheSettings {
            renew_fraction: 1.0,
            ..Default::default()
        },
        CacheSettings {
            jitter_fraction: 0.6,
            ..Default::default()
        },
        CacheSettings {
            backoff_initial: Duration::ZERO,
            ..Default::default()
        },
        CacheSettings {
            lifetime: Duration::from_secs(1),
            ..Default::default()
        },
    ];
    for settings in bad {
        let error = settings.validate().unwrap_err();
        assert!(
            matches!(error, CacheError::InvalidSettings { .. }),
            "{error}"
        );
    }
}

/// A first request that arrives while the worker's first read of the trust bundle is still in
/// flight: the certificate is validated against the bundle once that read lands, instead of
/// being refused because the bundle was still empty.
#[tokio::test(start_paused = true)]
async fn a_request_racing_the_first_bundle_read_succeeds() {
    let clock = TokioClock::new();
    let (provider, _calls) = FakeProvider::new(clock);
    *provider.bundle_latency.lock().unwrap() = Duration::from_millis(10);
    let cache = CertificateCache::new(provider.clone(), settings(), Arc::new(clock));
    let served = cache
        .certificate(&key("bookstore/bookstore-v1", Purpose::Default))
        .await
        .unwrap();
    assert_eq!(served.issued_by, "fake");
    assert_eq!(cache.stats().rejected, 0, "{:?}", cache.stats());
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_mid_issuance_hands_the_key_to_those_still_waiting() {
    let h = harness(settings());
    *h.provider.latency.lock().unwrap() = Duration::from_secs(1);
    let wanted = key("a/leaver", Purpose::Default);
    // The first caller issues in its own task and is cancelled half-way; the second, which
    // arrived meanwhile, waits for the same key and must still get a certificate.
    let first = tokio::spawn({
        let (cache, wanted) = (h.cache.clone(), wanted.clone());
        async move { cache.certificate(&wanted).await }
    });
    run_for(Duration::from_millis(100)).await;
    let second = tokio::spawn({
        let (cache, wanted) = (h.cache.clone(), wanted.clone());
        async move { cache.subscribe(wanted).await }
    });
    run_for(Duration::from_millis(100)).await;
    assert_eq!(h.cache.stats().in_flight, 1);
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let receiver = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("the waiting caller was never answered")
        .unwrap()
        .unwrap();
    assert_eq!(
        h.provider.calls(),
        2,
        "the abandoned issuance, then one for the waiter"
    );
    let stats = h.cache.stats();
    assert_eq!((stats.issued, stats.in_flight, stats.failures), (1, 0, 0));
    assert_eq!(
        receiver.borrow().info.serial,
        h.cache.cached(&wanted).unwrap().info.serial
    );

    // A caller that goes away with nobody waiting leaves nothing behind: the next one issues.
    let gone = tokio::spawn({
        let cache = h.cache.clone();
        async move { cache.certificate(&key("a/alone", Purpose::Default)).await }
    });
    run_for(Duration::from_millis(100)).await;
    gone.abort();
    let _ = gone.await;
    run_for(Duration::from_secs(5)).await;
    assert_eq!(h.cache.stats().in_flight, 0);
    assert!(h.cache.cached(&key("a/alone", Purpose::Default)).is_none());
    h.cache
        .certificate(&key("a/alone", Purpose::Default))
        .await
        .unwrap();
    assert_eq!(h.provider.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn callers_issuing_themselves_stay_within_the_issuance_limit() {
    let h = harness(CacheSettings {
        max_concurrent_issues: 2,
        ..settings()
    });
    *h.provider.latency.lock().unwrap() = Duration::from_secs(1);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..5 {
        let cache = h.cache.clone();
        requests.spawn(async move {
            cache
                .certificate(&key(&format!("a/sa-{i}"), Purpose::Default))
                .await
        });
    }
    // Two issue at once (the first two callers, in their own tasks); the other three queue
    // through the worker and start as slots free up.
    run_for(Duration::from_millis(500)).await;
    assert_eq!(h.cache.stats().in_flight, 2);
    assert_eq!(h.provider.calls(), 2);
    run_for(Duration::from_secs(1)).await;
    assert_eq!(h.cache.stats().in_flight, 2);
    assert_eq!(h.provider.calls(), 4);
    for result in requests.join_all().await {
        result.unwrap();
    }
    let stats = h.cache.stats();
    assert_eq!((stats.issued, stats.in_flight), (5, 0));
    assert_eq!(h.provider.calls(), 5);
}

/// Callers' first certificates reach the worker in batches (one wake-up per millisecond of
/// them, not one per certificate): every one of a storm of them still gets its renewal, and a
/// `renew_now` sent before the batch was taken still renews at once.
#[tokio::test(start_paused = true)]
async fn first_certificates_handed_over_together_are_each_renewed() {
    let h = harness(settings());
    let keys: Vec<_> = (0..300)
        .map(|i| key(&format!("storm/sa-{i}"), Purpose::Default))
        .collect();
    let mut requests = tokio::task::JoinSet::new();
    for wanted in &keys {
        let (cache, wanted) = (h.cache.clone(), wanted.clone());
        requests.spawn(async move { cache.certificate(&wanted).await });
    }
    for result in requests.join_all().await {
        result.unwrap();
    }
    assert_eq!(h.cache.stats().issued, 300);
    // Within the batch's millisecond: these keys' renewals are not scheduled yet.
    h.cache.renew_now(Some(&keys[0].identity));
    run_for(Duration::from_millis(100)).await;
    assert_eq!(h.provider.calls(), 301, "renew_now waited for the batch");
    // Renewals fall at 40–60% of the hour: each key is renewed once more (the first one's
    // counted from its renew_now certificate).
    run_for(HOUR * 6 / 10 + Duration::from_secs(60)).await;
    assert_eq!(h.cache.stats().renewed, 1 + 300);
    assert_eq!(h.provider.calls(), 300 + 1 + 300);
}

/// Subscribes to `count` keys and returns their receivers, with the first issuances' calls
/// taken off the channel.
async fn subscribed(
    h: &mut Harness,
    count: usize,
) -> Vec<tokio::sync::watch::Receiver<Arc<meshca::cache::ServedCertificate>>> {
    let mut receivers = Vec::new();
    for i in 0..count {
        let rx = h
            .cache
            .subscribe(key(&format!("outage/sa-{i}"), Purpose::Default))
            .await
            .unwrap();
        receivers.push(rx);
        h.calls.recv().await.unwrap();
    }
    receivers
}

/// The calls made so far, taken off the channel.
fn drain(calls: &mut mpsc::UnboundedReceiver<Call>) -> Vec<Call> {
    std::iter::from_fn(|| calls.try_recv().ok()).collect()
}

fn outage_settings() -> CacheSettings {
    CacheSettings {
        backoff_max: 30 * 60 * Duration::from_secs(1),
        ..settings()
    }
}

/// After an outage, every key is re-issued within the recovery window from `recovered_at`,
/// each once, and every receiver holds a valid certificate.
fn assert_reissued_within_window(
    calls: &[Call],
    recovered_at: SystemTime,
    receivers: &mut [tokio::sync::watch::Receiver<Arc<meshca::cache::ServedCertificate>>],
    now: SystemTime,
) {
    let tick = Duration::from_millis(2);
    assert_eq!(calls.len(), receivers.len(), "{calls:?}");
    for call in calls {
        assert_eq!(call.mode, Mode::Good);
        let after = call.at.duration_since(recovered_at).unwrap();
        assert!(
            after <= meshca::cache::RECOVERY_WINDOW + tick,
            "re-issued {after:?} after the recovery, not within the window: {calls:?}"
        );
    }
    let identities: std::collections::HashSet<_> = calls.iter().map(|c| &c.identity).collect();
    assert_eq!(
        identities.len(),
        receivers.len(),
        "each key once: {calls:?}"
    );
    for rx in receivers {
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().info.not_after > now);
    }
}

#[tokio::test(start_paused = true)]
async fn after_an_outage_longer_than_a_lifetime_recovery_reissues_every_key_within_the_window() {
    let mut h = harness(outage_settings());
    let mut receivers = subscribed(&mut h, 6).await;
    h.provider.set_mode(Mode::Fail);
    // Longer than a certificate's life: every one has expired, and each key waits out a
    // backoff of up to half an hour.
    run_for(3 * HOUR).await;
    assert!(drain(&mut h.calls).iter().all(|c| c.mode == Mode::Fail));
    let now = h.clock.now();
    assert!(receivers.iter().all(|rx| rx.borrow().info.not_after < now));

    h.provider.set_mode(Mode::Good);
    let recovered_at = h.clock.now();
    h.cache.provider_recovered();
    run_for(meshca::cache::RECOVERY_WINDOW + Duration::from_millis(5)).await;
    let calls = drain(&mut h.calls);
    assert_reissued_within_window(&calls, recovered_at, &mut receivers, h.clock.now());
    // Spread over the window, not all at one instant.
    let instants: std::collections::HashSet<_> = calls.iter().map(|c| c.at).collect();
    assert!(instants.len() > 1, "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_renewal_that_succeeds_wakes_the_keys_waiting_in_backoff() {
    let mut h = harness(outage_settings());
    let mut receivers = subscribed(&mut h, 4).await;
    h.provider.set_mode(Mode::Fail);
    run_for(3 * HOUR).await;
    drain(&mut h.calls);

    // No health check involved: one key's renewal succeeding is enough.
    h.provider.set_mode(Mode::Good);
    let recovered_at = h.clock.now();
    h.cache.renew_now(Some(&id("outage/sa-0")));
    run_for(meshca::cache::RECOVERY_WINDOW + Duration::from_millis(5)).await;
    let calls = drain(&mut h.calls);
    assert_reissued_within_window(&calls, recovered_at, &mut receivers, h.clock.now());
}

#[tokio::test(start_paused = true)]
async fn the_issue_timeout_is_bounded_by_the_time_left_on_the_certificate() {
    let lifetime = Duration::from_secs(120);
    let mut h = harness(CacheSettings {
        lifetime,
        jitter_fraction: 0.0,
        issue_timeout: Duration::from_secs(30),
        ..settings()
    });
    let rx = h
        .cache
        .subscribe(key("slow/backend", Purpose::Default))
        .await
        .unwrap();
    let not_after = rx.borrow().info.not_after;
    h.calls.recv().await.unwrap();
    // The backend hangs: each renewal runs into its timeout, then backs off (1 s, +≤25%).
    *h.provider.latency.lock().unwrap() = HOUR;
    let first = h.calls.recv().await.unwrap().at;
    let second = h.calls.recv().await.unwrap().at;
    let left = not_after.duration_since(first).unwrap();
    // Halfway through its usable life (key generation costs a little of it).
    assert!(
        left > Duration::from_secs(55) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    let bounded = meshca::cache::issue_timeout_for(first, Some(not_after), Duration::from_secs(30));
    assert!(
        bounded.abs_diff(left / 4) < Duration::from_millis(1),
        "{bounded:?}: a quarter of the time left ({left:?})"
    );
    let waited = second.duration_since(first).unwrap();
    let tick = Duration::from_millis(2);
    assert!(
        waited >= bounded + Duration::from_secs(1)
            && waited <= bounded + Duration::from_millis(1250) + tick,
        "the retry came {waited:?} after the renewal started, not after a {bounded:?} timeout"
    );
    // Retries keep fitting what is left: each one's timeout shrinks with it.
    let third = h.calls.recv().await.unwrap().at;
    let bounded =
        meshca::cache::issue_timeout_for(second, Some(not_after), Duration::from_secs(30));
    assert!(bounded < Duration::from_secs(15));
    let waited = third.duration_since(second).unwrap();
    assert!(
        waited >= bounded + Duration::from_secs(2)
            && waited <= bounded + Duration::from_millis(2500) + tick,
        "{waited:?} vs {bounded:?}"
    );
}
