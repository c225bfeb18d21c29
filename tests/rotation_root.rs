//! `meshca rotate root` against a running `meshca serve`, watched through real SDS streams
//! (tonic gRPC client): stage 1 waits for every connected proxy's acknowledgement (or the
//! deadline), the daemon follows each stage without a restart, a restarted daemon resumes at
//! the persisted stage, and concurrent advances move the stage once.

#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::process::Output;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use meshca_provider::TrustBundle;
use support::daemon::{MeshcaServe, advance_until_moved, rotate_root, serve_for_rotation};
use support::envoy::free_port;
use support::*;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The roots of the ROOTCA validation context in `response`.
fn bundle_in(response: &DiscoveryResponse) -> TrustBundle {
    validation_of(secret_named(&secrets(&response.resources), "ROOTCA")).0
}

/// Reads responses until one carries a bundle with `count` roots; returns it (not yet ACKed).
async fn bundle_with(stream: &mut SotwClient, count: usize) -> DiscoveryResponse {
    loop {
        let response = stream.next().await.unwrap();
        if bundle_in(&response).roots().len() == count {
            return response;
        }
        stream.ack(&response, &["ROOTCA"]).await;
    }
}

/// `meshca serve` for rotation on a fresh CA directory (`<dir>/ca`), and its SDS URL.
async fn start_daemon() -> (tempfile::TempDir, MeshcaServe, String) {
    let dir = tempfile::tempdir().unwrap();
    let sds_port = free_port();
    let mut daemon = serve_for_rotation(&dir.path().join("ca"), sds_port);
    daemon.wait_listening(sds_port).await;
    (dir, daemon, format!("http://127.0.0.1:{sds_port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_one_waits_for_every_proxy_and_the_daemon_follows_each_stage() {
    let (dir, mut daemon, url) = start_daemon().await;
    let ca_dir = dir.path().join("ca");

    // A proxy holding the trust bundle, and one holding its certificate.
    let mut trusting = SotwClient::open(channel(&url).await, Some(node("ns/client")), &["ROOTCA"])
        .await
        .unwrap();
    let first = trusting.next().await.unwrap();
    let old_bundle = bundle_in(&first);
    assert_eq!(old_bundle.roots().len(), 1);
    trusting.ack(&first, &["ROOTCA"]).await;
    let mut serving = SotwClient::open(channel(&url).await, Some(node("ns/server")), &["default"])
        .await
        .unwrap();
    let (old_leaf, _) = tls_of(secret_named(
        &secrets(&serving.next().await.unwrap().resources),
        "default",
    ));
    assert_chains_to(&old_leaf, &old_bundle);

    let started = rotate_root(&ca_dir, &[], "start");
    let out = support::cli::ok(&started);
    assert!(out.contains("root rotation started"), "{out}");
    let again = support::cli::ok(&rotate_root(&ca_dir, &[], "start"));
    assert!(again.contains("already in progress"), "{again}");

    // Stage 1 reaches the proxy without a restart: both roots. It does not ACK yet.
    let both = bundle_with(&mut trusting, 2).await;
    let both_bundle = bundle_in(&both);
    assert!(both_bundle.contains(&old_bundle.roots()[0]));
    // The daemon has reported its proxies (0 of 1 acknowledged): advance must wait.
    daemon
        .wait_for_log("proxies holding the new root", Duration::from_secs(20))
        .await;
    let waiting = rotate_root(&ca_dir, &[], "advance");
    assert_eq!(waiting.status.code(), Some(3), "{}", stdout(&waiting));
    let message = stdout(&waiting);
    assert!(message.contains("not advancing"), "{message}");
    assert!(
        message.contains("ns/client"),
        "the missing proxy is named: {message}"
    );
    let status = support::cli::ok(&rotate_root(&ca_dir, &[], "status"));
    assert!(status.contains("stage 1"), "{status}");
    assert!(status.contains("acked 0"), "{status}");

    // The ACK arrives: the daemon reports it, and advance moves to stage 2.
    trusting.ack(&both, &["ROOTCA"]).await;
    let advanced = advance_until_moved(&ca_dir, Duration::from_secs(20)).await;
    assert!(advanced.contains("stage 2"), "{advanced}");

    // Stage 2: the daemon re-issues under the new root and pushes it; both roots stay.
    let new_root = both_bundle
        .roots()
        .iter()
        .find(|r| !old_bundle.contains(r))
        .unwrap()
        .clone();
    let renewed = loop {
        let response = serving.next().await.unwrap();
        let (chain, _) = tls_of(secret_named(&secrets(&response.resources), "default"));
        serving.ack(&response, &["default"]).await;
        if chain.leaf() != old_leaf.leaf() {
            break chain;
        }
    };
    assert_chains_to(&renewed, &TrustBundle::new(vec![new_root.clone()]));
    let status = support::cli::ok(&rotate_root(&ca_dir, &[], "status"));
    assert!(status.contains("stage 2"), "{status}");
    assert!(
        status.contains("old root leaves the bundles after"),
        "{status}"
    );

    // Stage 2 lasts the longest leaf lifetime (30s + 1s skew); then the old root goes.
    let early = rotate_root(&ca_dir, &[], "advance");
    assert_eq!(early.status.code(), Some(3), "{}", stdout(&early));
    assert!(
        stdout(&early).contains("stays trusted until"),
        "{}",
        stdout(&early)
    );
    let finished = advance_until_moved(&ca_dir, Duration::from_secs(60)).await;
    assert!(finished.contains("rotation finished"), "{finished}");
    let last = bundle_with(&mut trusting, 1).await;
    assert_eq!(bundle_in(&last).roots(), [new_root]);
    let status = support::cli::ok(&rotate_root(&ca_dir, &[], "status"));
    assert!(status.contains("no root rotation in progress"), "{status}");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_advances_past_a_proxy_that_never_acknowledges() {
    let (dir, daemon, url) = start_daemon().await;
    let ca_dir = dir.path().join("ca");
    let mut silent = SotwClient::open(channel(&url).await, Some(node("ns/stuck")), &["ROOTCA"])
        .await
        .unwrap();
    silent.next().await.unwrap();

    let deadline = ["--set", "rotation.ackDeadline=15s"];
    support::cli::ok(&rotate_root(&ca_dir, &deadline, "start"));
    let waiting = rotate_root(&ca_dir, &deadline, "advance");
    assert_eq!(waiting.status.code(), Some(3), "{}", stdout(&waiting));
    assert!(
        stdout(&waiting).contains("the deadline lets it advance after"),
        "{}",
        stdout(&waiting)
    );
    // The proxy gets both roots but never acknowledges them.
    bundle_with(&mut silent, 2).await;
    let advanced = eventually_ok_every(
        Duration::from_secs(60),
        Duration::from_secs(1),
        "`meshca rotate root advance` to pass the acknowledgement deadline",
        || {
            let output = rotate_root(&ca_dir, &deadline, "advance");
            async move {
                if output.status.code() == Some(0) {
                    return Ok(stdout(&output));
                }
                let waiting = stdout(&output);
                assert!(waiting.contains("ns/stuck"), "{waiting}");
                Err(waiting)
            }
        },
    )
    .await;
    assert!(
        advanced.contains("acknowledgement deadline passed"),
        "{advanced}"
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_resumes_at_the_persisted_stage_and_advances_happen_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let sds_port = free_port();
    let mut daemon = serve_for_rotation(&ca_dir, sds_port);
    daemon.wait_listening(sds_port).await;
    let deadline = ["--set", "rotation.ackDeadline=0s"];
    support::cli::ok(&rotate_root(&ca_dir, &deadline, "start"));

    // Eight concurrent advances: exactly one moves stage 1 → 2.
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let ca_dir = ca_dir.clone();
            std::thread::spawn(move || rotate_root(&ca_dir, &deadline, "advance"))
        })
        .collect();
    let outputs: Vec<String> = runs
        .into_iter()
        .map(|run| stdout(&run.join().unwrap()))
        .collect();
    let moved = outputs.iter().filter(|o| o.contains("advanced to")).count();
    assert_eq!(moved, 1, "{outputs:#?}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ca_dir.join("rotation.json")).unwrap()).unwrap();
    assert_eq!(record["stage"], "issuing");
    assert_eq!(record["revision"], 2);

    // A daemon killed and started again in stage 2 trusts both roots and signs with the new.
    daemon.kill();
    let sds_port = free_port();
    let mut daemon = serve_for_rotation(&ca_dir, sds_port);
    daemon.wait_listening(sds_port).await;
    let url = format!("http://127.0.0.1:{sds_port}");
    let mut stream = SotwClient::open(
        channel(&url).await,
        Some(node("ns/server")),
        &["default", "ROOTCA"],
    )
    .await
    .unwrap();
    let mut leaf = None;
    let mut bundle = None;
    while leaf.is_none() || bundle.is_none() {
        let response = stream.next().await.unwrap();
        for secret in secrets(&response.resources) {
            match secret.name.as_str() {
                "default" => leaf = Some(tls_of(&secret).0),
                "ROOTCA" => bundle = Some(validation_of(&secret).0),
                _ => {}
            }
        }
    }
    let bundle = bundle.unwrap();
    assert_eq!(bundle.roots().len(), 2);
    let new_root = TrustBundle::new(vec![bundle.roots()[1].clone()]);
    assert_chains_to(&leaf.unwrap(), &new_root);
    assert!(
        daemon.log().contains("root rotation at stage 2"),
        "{}",
        daemon.log()
    );
}
