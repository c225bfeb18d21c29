//! A meshca restart under mTLS traffic, with real Envoys: a client and a server Envoy get their
//! certificates from `meshca serve` over SDS with the default authentication (mTLS: each Envoy
//! presents a bootstrap certificate from `meshca issue`), and carry a request loop — a new
//! connection and a full TLS handshake per request — while meshca is stopped with SIGTERM and
//! started again on the same CA directory and ports. Not one request may fail: the Envoys keep
//! serving with the certificates they hold. Each Envoy then opens a new mTLS connection to the
//! new process and receives a certificate on it, and a `meshca rotate leaves` after the restart
//! reaches both.
//!
//! Envoy is found like in `sds_envoy.rs`; without it the test is skipped, except under
//! `CI=true`, where it fails.

#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::net::SocketAddr;
use std::path::Path;

use support::daemon::MeshcaServe;
use support::envoy::{
    self, CLIENT_ID, Envoy, Traffic, free_port, fresh_handshake_per_request, http_get, inbound,
    normalize_serial, outbound_bootstrap,
};
use support::{PATIENCE, eventually};

/// The admin token `meshca rotate leaves` sends.
const ADMIN_TOKEN: &str = "restart-envoy-admin-token-0123456789abcdef";
/// meshca's own SDS identity, the only one the Envoys' `meshca-sds` clusters accept.
const SDS_SERVER_ID: &str = "spiffe://cluster.local/ns/meshca-system/sa/meshca";
/// The SDS cluster every Envoy connects to meshca with, as `meshca-sds` in its bootstrap.
const MTLS_CLUSTER: &str = "sds-cluster-mtls.yaml";
/// Envoy's counters for its connections to meshca: opened, and TLS handshakes completed.
const SDS_CONNECTIONS: &str = "cluster.meshca-sds.upstream_cx_total";
const SDS_HANDSHAKES: &str = "cluster.meshca-sds.ssl.handshake";

/// `meshca serve` on `ca_dir` with SDS (default authentication: mTLS) and the admin listener
/// (with a token, for `rotate leaves`) on the given addresses, ready.
async fn serve(ca_dir: &Path, token: &Path, sds: SocketAddr, admin: SocketAddr) -> MeshcaServe {
    let mut daemon = MeshcaServe::builder()
        .args(["--ca-dir", ca_dir.to_str().unwrap()])
        .set(&format!("admin.tokenFile={}", token.display()))
        .sds_at(sds)
        .admin_at(admin)
        .start();
    daemon.wait_ready().await;
    daemon
}

/// A bootstrap certificate for `identity` from `meshca issue` (the CA directory's CA), as the
/// `meshca-sds` cluster's placeholder values, and its serial as Envoy shows it.
fn mtls_cluster(
    ca_dir: &Path,
    out: &Path,
    identity: &str,
) -> (Vec<(&'static str, String)>, String) {
    let issued = std::process::Command::new(support::meshca_binary())
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(["issue", "--identity", identity, "--out-dir"])
        .arg(out)
        .env_remove("MESHCA_CONFIG")
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "meshca issue --identity {identity}: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let file = |name: &str| out.join(name).display().to_string();
    let serial = support::cli::openssl(&["x509", "-noout", "-serial", "-in", &file("cert.pem")]);
    let values = vec![
        ("SDS_ADDRESS", "127.0.0.1".to_owned()),
        ("BOOTSTRAP_CERT", file("cert.pem")),
        ("BOOTSTRAP_KEY", file("key.pem")),
        ("BOOTSTRAP_CA", file("ca.pem")),
        ("SDS_SERVER_ID", SDS_SERVER_ID.to_owned()),
    ];
    (
        values,
        normalize_serial(serial.trim().trim_start_matches("serial=")),
    )
}

/// An Envoy and the serial of the bootstrap certificate it authenticates to meshca with.
struct Proxy {
    envoy: Envoy,
    bootstrap: String,
}

impl Proxy {
    /// The serials of the leaves it holds from SDS (every leaf but the bootstrap certificate).
    async fn served_leaves(&self) -> Vec<String> {
        let mut held = self.envoy.leaf_serials().await;
        held.retain(|serial| *serial != self.bootstrap);
        held
    }

    /// Waits until every leaf it holds from SDS is new: none of `before`.
    async fn wait_for_new_leaf(&self, before: &[String]) -> Vec<String> {
        let what = format!(
            "{} to present a leaf other than {before:?}",
            self.envoy.name
        );
        eventually(
            PATIENCE,
            &what,
            || self.served_leaves(),
            |held| !held.is_empty() && held.iter().all(|s| !before.contains(s)),
        )
        .await
    }
}

/// Waits until `envoy`'s counter `name` exceeds `than`.
async fn wait_for_more(envoy: &Envoy, name: &str, than: u64) -> u64 {
    let what = format!("{}: {name} above {than}", envoy.name);
    eventually(PATIENCE, &what, || envoy.stat(name), |n| *n > than).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshca_restart_under_mtls_traffic_fails_no_request_and_envoys_reconnect() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, ADMIN_TOKEN).unwrap();
    let sds: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut daemon = serve(&ca_dir, &token, sds, admin).await;

    // Both Envoys reach meshca over mTLS with bootstrap certificates from its CA.
    let (server_cluster, server_bootstrap) =
        mtls_cluster(&ca_dir, &dir.path().join("server"), "ns/server");
    let (client_cluster, client_bootstrap) =
        mtls_cluster(&ca_dir, &dir.path().join("client"), "ns/client");
    let server_port = free_port();
    let server = inbound(
        &binary,
        sds.port(),
        server_port,
        Some((MTLS_CLUSTER, &server_cluster)),
    );
    let client_port = free_port();
    let client = Envoy::start(
        &binary,
        "client",
        &fresh_handshake_per_request(outbound_bootstrap(
            "ns/client",
            "ns/server",
            sds.port(),
            client_port,
            server_port,
            Some((MTLS_CLUSTER, &client_cluster)),
        )),
    );
    server.wait_ready().await;
    client.wait_ready().await;
    let server = Proxy {
        envoy: server,
        bootstrap: server_bootstrap,
    };
    let client = Proxy {
        envoy: client,
        bootstrap: client_bootstrap,
    };
    let proxies = [&server, &client];

    let traffic = Traffic::start(client_port);
    traffic.wait_for_successes(5).await;

    let mut before = Vec::new();
    for proxy in proxies {
        let envoy = &proxy.envoy;
        let handshakes = envoy.stat(SDS_HANDSHAKES).await;
        assert!(
            handshakes >= 1 && envoy.leaf_serials().await.contains(&proxy.bootstrap),
            "{}: no TLS handshake with meshca, or no bootstrap certificate: SDS is not over mTLS",
            envoy.name
        );
        let served = proxy.served_leaves().await;
        assert!(
            !served.is_empty(),
            "{}: no certificate from SDS",
            envoy.name
        );
        before.push((served, envoy.stat(SDS_CONNECTIONS).await, handshakes));
    }

    // SIGTERM: meshca drains and exits; the Envoys serve on with what they hold.
    let status = daemon.terminate();
    assert!(
        status.success(),
        "meshca exited with {status}:\n{}",
        daemon.log()
    );
    let log_before = daemon.log();
    drop(daemon);
    // Requests keep succeeding while no meshca runs.
    traffic.wait_for_successes(traffic.succeeded() + 10).await;

    // The same store and ports: each Envoy opens a new mTLS connection to the new process and
    // receives a new certificate on it (the new process's cache starts empty).
    let mut daemon = serve(&ca_dir, &token, sds, admin).await;
    let mut after_restart = Vec::new();
    for (proxy, (leaf, connections, handshakes)) in proxies.iter().zip(&before) {
        wait_for_more(&proxy.envoy, SDS_CONNECTIONS, *connections).await;
        wait_for_more(&proxy.envoy, SDS_HANDSHAKES, *handshakes).await;
        after_restart.push(proxy.wait_for_new_leaf(leaf).await);
    }
    traffic.wait_for_successes(traffic.succeeded() + 10).await;

    // A forced renewal after the restart reaches both Envoys over their new streams.
    let rotated = std::process::Command::new(support::meshca_binary())
        .args(["rotate", "leaves", "--admin", &admin.to_string()])
        .arg("--token-file")
        .arg(&token)
        .env_remove("MESHCA_CONFIG")
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "meshca rotate leaves: {}{}",
        String::from_utf8_lossy(&rotated.stdout),
        String::from_utf8_lossy(&rotated.stderr)
    );
    for (proxy, leaf) in proxies.iter().zip(&after_restart) {
        proxy.wait_for_new_leaf(leaf).await;
    }
    traffic.wait_for_successes(traffic.succeeded() + 10).await;

    let (ok, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the restart: {:?}\nclient Envoy:\n{}\nfirst meshca:\n{}\n\
         second meshca:\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)],
        client.envoy.log_tail(),
        log_before,
        daemon.log()
    );
    // Every request was its own full handshake with the certificates held at that moment, and
    // the server Envoy still admits the client by its SPIFFE ID.
    let client = &client.envoy;
    assert_eq!(client.stat("cluster.upstream.ssl.session_reused").await, 0);
    assert!(client.stat("cluster.upstream.ssl.handshake").await >= ok);
    let last = http_get(([127, 0, 0, 1], client_port).into(), "/")
        .await
        .unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("x-peer-identity"), Some(CLIENT_ID));
    let status = daemon.terminate();
    assert!(
        status.success(),
        "meshca exited with {status}:\n{}",
        daemon.log()
    );
}
