//! `meshca serve` with `vault.mode: upstream` against a real OpenBao: meshca signs leaves with
//! an intermediate Vault signed, so leaves keep flowing through an outage of a persistent
//! OpenBao (killed, restarted, unsealed) shorter than the intermediate's life, with no expired
//! certificate on any SDS response; and the intermediate is renewed three times under
//! continuous mTLS traffic through two real Envoys without one failed request.
//!
//! Envoy is found like in `sds_envoy.rs`; without it the Envoy test is skipped, except under
//! `CI=true`, where it fails.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use meshca_test_support::bao::Bao;
use meshca_test_support::daemon::{MeshcaServe, ServeBuilder};
use meshca_test_support::envoy::{
    self, CLIENT_ID, MtlsPair, Traffic, fresh_handshake_per_request, http_get,
};
use meshca_test_support::verify::verify_everywhere;
use meshca_test_support::{CheckedStream, eventually};
use tokio::time::Instant;

/// `meshca serve` in upstream mode against `bao`: `ttl` intermediates, `leaf` leaves, a 1s
/// clock-skew allowance, renewal retries within 2 s.
fn upstream_daemon(bao: &Bao, ttl: &str, leaf: &str) -> ServeBuilder {
    MeshcaServe::builder()
        .admin()
        .vault(bao)
        .set("vault.mode=upstream")
        .set(&format!("vault.upstream.intermediateTtl={ttl}"))
        .set(&format!(
            "certificateProvider.serviceCertValidityDuration={leaf}"
        ))
        .set("tresor.clockSkewAllowance=1s")
        .set("renewal.floor=2s")
        .set("renewal.backoffInitial=500ms")
        .set("renewal.backoffMax=2s")
}

/// A persistent OpenBao (raft), initialised and unsealed here, is killed for 45 s — less than
/// the 90 s intermediate has left — while `meshca serve` signs 10 s leaves: renewed leaves
/// keep reaching the SDS stream throughout, `/readyz` stays 200, no response carries an
/// expired leaf or intermediate; after the restart and unseal a new intermediate is signed
/// and leaves under it verify against Vault's root with `openssl verify -x509_strict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_keep_flowing_through_an_openbao_outage_shorter_than_the_intermediates_life() {
    let mut bao = Bao::persistent_pki("meshca upstream outage root").await;
    let root = bao.root_bundle("pki").await;
    let mut daemon = upstream_daemon(&bao, "90s", "10s").dev_sds().start();
    daemon.wait_ready().await;

    let mut stream = CheckedStream::open(daemon.sds()).await;
    // Every response: its chain, unexpired at the time it arrived, under meshca's intermediate.
    let receive = async |stream: &mut CheckedStream, patience: Duration| {
        let chain = stream.next_chain(patience).await?;
        assert_eq!(
            chain.certificates().len(),
            2,
            "leaf and meshca's intermediate"
        );
        Some(chain)
    };
    let first = receive(&mut stream, Duration::from_secs(20)).await.unwrap();
    verify_everywhere(&first, &root, SystemTime::now());
    let first_intermediate = first.intermediates()[0].clone();

    bao.kill();
    let killed = Instant::now();
    let mut serials = BTreeSet::new();
    let mut checked_ready = false;
    while killed.elapsed() < Duration::from_secs(45) {
        if let Some(chain) = receive(&mut stream, Duration::from_millis(500)).await {
            serials.insert(chain.leaf_info().unwrap().serial);
        }
        if !checked_ready && killed.elapsed() > Duration::from_secs(30) {
            // By now the intermediate's renewal has come due and failed: leaves still flow.
            let readyz = http_get(daemon.admin(), "/readyz").await.unwrap();
            assert_eq!(readyz.status, 200, "{}", readyz.body);
            checked_ready = true;
        }
    }
    assert!(
        serials.len() >= 5,
        "only {} leaves during a 45 s outage with 10 s leaves",
        serials.len()
    );
    assert!(
        daemon
            .log()
            .contains("renewing the intermediate failed; leaves are still signed"),
        "{}",
        daemon.tail(40)
    );

    bao.restart().await;
    bao.unseal().await;
    let unsealed = Instant::now();
    let renewed = loop {
        let left = (unsealed + Duration::from_secs(30)).saturating_duration_since(Instant::now());
        let Some(chain) = receive(&mut stream, left).await else {
            panic!(
                "no leaf under a new intermediate within 30 s of the unseal; log:\n{}",
                daemon.tail(40)
            );
        };
        if chain.intermediates()[0] != first_intermediate {
            break chain;
        }
    };
    verify_everywhere(&renewed, &root, SystemTime::now());
    assert_eq!(
        bao.root_bundle("pki").await,
        root,
        "the same root throughout"
    );
}

/// The client and server Envoys of `rotation_envoy.rs`, fed by `meshca serve` in upstream
/// mode with 60 s intermediates (renewed every 15 s ± 9 s) and 10 s leaves, carry a request
/// loop (a fresh connection and full handshake per request) while the intermediate is renewed
/// three times: not one request fails, and both Envoys end up presenting leaves under the
/// third renewal's intermediate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_intermediate_renewals_under_continuous_mtls_traffic_fail_no_request() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca upstream envoy root").await;
    let mut daemon = upstream_daemon(&bao, "60s", "10s").dev_sds().start();
    daemon.wait_ready().await;

    let MtlsPair {
        server,
        client,
        client_port,
        ..
    } = MtlsPair::start_with(
        &binary,
        daemon.sds().port(),
        None,
        fresh_handshake_per_request,
    )
    .await;
    let first = http_get(([127, 0, 0, 1], client_port).into(), "/")
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{first:?}\n{}", client.log_tail());

    let traffic = Traffic::start(client_port);

    let renewals = || {
        let log = daemon.log();
        async move {
            log.matches("vault upstream: new intermediate signing")
                .count()
        }
    };
    eventually(
        Duration::from_secs(120),
        "three intermediate renewals",
        renewals,
        |count| *count >= 3,
    )
    .await;
    // Leaves signed after the third renewal reach both Envoys.
    for envoy in [&server, &client] {
        let before = envoy.leaf_serials().await;
        let what = format!("{} to present a leaf other than {before:?}", envoy.name);
        eventually(
            Duration::from_secs(30),
            &what,
            || envoy.leaf_serials(),
            |held| !held.is_empty() && held.iter().all(|s| !before.contains(s)),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the intermediate renewals: {:?}\n{}\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)],
        client.log_tail(),
        daemon.tail(60)
    );
    assert!(ok >= 300, "only {ok} requests ran");
    let last = http_get(([127, 0, 0, 1], client_port).into(), "/")
        .await
        .unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("x-peer-identity"), Some(CLIENT_ID));
}

/// `meshca rotate root` drives Vault's issuers in sign mode only: in upstream mode it says so
/// (and what to do instead) before contacting Vault, rather than making an intermediate and
/// then failing.
#[test]
fn rotate_root_in_upstream_mode_says_the_root_is_rotated_in_vault() {
    let dir = tempfile::tempdir().unwrap();
    let output = meshca_test_support::cli::meshca(
        dir.path(),
        &[
            "--set",
            "certificateProvider.kind=vault",
            "--set",
            "vault.host=127.0.0.1",
            "--set",
            "vault.port=1",
            "--set",
            "vault.token=unused",
            "--set",
            "vault.mode=upstream",
            "rotate",
            "root",
            "start",
        ],
    );
    let stderr = meshca_test_support::cli::failed(&output);
    assert!(
        stderr.contains("in vault.mode: upstream meshca drives no rotation of Vault's issuers")
            && stderr.contains("rotate the root in Vault"),
        "{stderr}"
    );
}
