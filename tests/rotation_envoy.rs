//! The root rotation centre-piece, with real Envoys: a client and a server Envoy fed by
//! `meshca serve` over SDS carry continuous traffic — a request loop through the client Envoy,
//! with a new connection and a full TLS handshake (no session resumption) per request — while
//! `meshca rotate root` goes start → advance → advance. Not one request may fail; at the end
//! the old root is gone from both validation contexts and the server's leaf verifies under the
//! new root alone.
//!
//! Envoy is found like in `sds_envoy.rs`; without it the test is skipped, except under
//! `CI=true`, where it fails.

#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use support::daemon::{advance_until_moved, rotate_root, serve_for_rotation};
use support::envoy::{
    self, CLIENT_ID, MtlsPair, Traffic, free_port, fresh_handshake_per_request, http_get,
    normalize_serial,
};

/// The serial of the (single-certificate) CA file, normalised like Envoy's.
fn serial_of(file: &Path) -> String {
    let text = support::cli::openssl(&["x509", "-noout", "-serial", "-in", file.to_str().unwrap()]);
    normalize_serial(text.trim().trim_start_matches("serial="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_root_rotation_under_continuous_mtls_traffic_fails_no_request() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let sds_port = free_port();
    let mut daemon = serve_for_rotation(&ca_dir, sds_port);
    daemon.wait_listening(sds_port).await;
    let old_root = serial_of(&ca_dir.join("ca.crt"));

    let MtlsPair {
        server,
        client,
        client_port,
        ..
    } = MtlsPair::start_with(&binary, sds_port, None, fresh_handshake_per_request).await;
    let first = http_get(([127, 0, 0, 1], client_port).into(), "/")
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{first:?}\n{}", client.log_tail());

    // Continuous traffic until told to stop: every outcome counted, every failure kept.
    let traffic = Traffic::start(client_port);
    let handshakes_before = client.stat("cluster.upstream.ssl.handshake").await;

    // Stage 1: both Envoys trust old + new; leaves still under the old root.
    let started = support::cli::ok(&rotate_root(&ca_dir, &[], "start"));
    assert!(started.contains("root rotation started"), "{started}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ca_dir.join("rotation.json")).unwrap()).unwrap();
    let new_root_file = dir.path().join("new-root.pem");
    std::fs::write(&new_root_file, record["newCertificate"].as_str().unwrap()).unwrap();
    let new_root = serial_of(&new_root_file);
    let both = BTreeSet::from([old_root.clone(), new_root.clone()]);
    server.wait_until_trusted(&both).await;
    client.wait_until_trusted(&both).await;
    let server_leaf = server.leaf_serials().await;
    let client_leaf = client.leaf_serials().await;

    // Stage 2, once both proxies acknowledged: new leaves under the new root, pushed.
    let moved = advance_until_moved(&ca_dir, Duration::from_secs(30)).await;
    assert!(moved.contains("advanced to stage 2"), "{moved}");
    assert!(moved.contains("2 of 2 proxies"), "{moved}");
    server.wait_for_new_leaf(&server_leaf).await;
    client.wait_for_new_leaf(&client_leaf).await;

    // Finished after the longest leaf lifetime: the old root leaves both bundles.
    let finished = advance_until_moved(&ca_dir, Duration::from_secs(90)).await;
    assert!(finished.contains("rotation finished"), "{finished}");
    assert_eq!(
        serial_of(&ca_dir.join("ca.crt")),
        new_root,
        "the new root is now the CA"
    );
    let only_new = BTreeSet::from([new_root.clone()]);
    server.wait_until_trusted(&only_new).await;
    client.wait_until_trusted(&only_new).await;

    // Traffic keeps flowing with the old root gone: the server's leaf verifies under the new
    // root alone (the client trusts nothing else), and the server accepts the client's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rotation: {:?}\n{}\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)],
        client.log_tail(),
        daemon.log()
    );
    assert!(
        ok >= 100,
        "only {ok} requests ran: the loop did not exercise the rotation"
    );
    let last = http_get(([127, 0, 0, 1], client_port).into(), "/")
        .await
        .unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("x-peer-identity"), Some(CLIENT_ID));
    // Every request was its own full handshake.
    let handshakes = client.stat("cluster.upstream.ssl.handshake").await - handshakes_before;
    assert!(
        handshakes >= ok,
        "{handshakes} handshakes for {ok} requests: connections were reused"
    );
    assert_eq!(client.stat("cluster.upstream.ssl.session_reused").await, 0);
    assert!(!server.trusted_serials().await.contains(&old_root));
}
