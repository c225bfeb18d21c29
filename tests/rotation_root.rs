//! `meshca rotate root` against a running `meshca serve`, watched through real SDS streams
//! (tonic gRPC client): stage 1 waits for every connected proxy's acknowledgement (or the
//! deadline), the daemon follows each stage without a restart, a restarted daemon resumes at
//! the persisted stage, and concurrent advances move the stage once.
//!
//! With a Vault backend (a real OpenBao, two replicas sharing a directory CA store): stage 1
//! waits for every replica's proxies, and so does a default issuer set in Vault directly;
//! entries of the store that are not reports count for nothing.

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

/// Two `meshca serve` replicas on one OpenBao PKI mount, sharing a directory CA store (where
/// each reports what its proxies acknowledged), each with one SDS client holding the trust
/// bundle (`ns/<replica>`), and the settings `meshca rotate root` shares with them.
struct VaultReplicas {
    bao: support::bao::Bao,
    store: tempfile::TempDir,
    daemons: Vec<MeshcaServe>,
    clients: Vec<SotwClient>,
}

/// The default issuer of `bao`'s PKI mount.
async fn default(bao: &support::bao::Bao) -> String {
    bao.read("pki/config/issuers").await["data"]["default"]
        .as_str()
        .unwrap()
        .to_owned()
}

impl VaultReplicas {
    const NAMES: [&'static str; 2] = ["replica-a", "replica-b"];

    async fn start() -> Self {
        let bao = support::bao::Bao::dev().await;
        bao.pki("pki", "meshca old root").await;
        let store = tempfile::tempdir().unwrap();
        let mut replicas = Self {
            bao,
            store,
            daemons: Vec::new(),
            clients: Vec::new(),
        };
        for name in Self::NAMES {
            let sds_port = free_port();
            let mut args = replicas.settings();
            for setting in [
                format!("rotation.replica={name}"),
                format!("sds.listen=127.0.0.1:{sds_port}"),
                "sds.auth=development".to_owned(),
                "admin.listen=".to_owned(),
            ] {
                args.extend(["--set".to_owned(), setting]);
            }
            args.insert(0, "serve".to_owned());
            let mut daemon =
                MeshcaServe::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
            daemon.wait_listening(sds_port).await;
            let url = format!("http://127.0.0.1:{sds_port}");
            let mut client = SotwClient::open(
                channel(&url).await,
                Some(node(&format!("ns/{name}"))),
                &["ROOTCA"],
            )
            .await
            .unwrap();
            let first = client.next().await.unwrap();
            assert_eq!(bundle_in(&first).roots().len(), 1);
            client.ack(&first, &["ROOTCA"]).await;
            replicas.daemons.push(daemon);
            replicas.clients.push(client);
        }
        replicas
    }

    /// Vault at `bao`, the shared store, 30 s leaves with 1 s skew, the mount read every second.
    fn settings(&self) -> Vec<String> {
        self.bao.rotation_args(&self.acks_store())
    }

    fn acks_store(&self) -> std::path::PathBuf {
        self.store.path().join("ca")
    }

    /// `meshca rotate root <action>`: exit status (0, or 3 for "not yet") and stdout.
    fn rotate_root(&self, action: &str) -> (i32, String) {
        support::daemon::rotate_root_with(&self.settings(), action)
    }

    /// Waits until each client got a bundle with `count` roots; returns them, not ACKed.
    async fn bundles_with(&mut self, count: usize) -> Vec<DiscoveryResponse> {
        let mut responses = Vec::new();
        for client in &mut self.clients {
            responses.push(bundle_with(client, count).await);
        }
        responses
    }

    /// Waits until every replica logged `text`.
    async fn wait_for_log(&mut self, text: &str, patience: Duration) {
        for daemon in &mut self.daemons {
            daemon.wait_for_log(text, patience).await;
        }
    }

    fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(MeshcaServe::log)
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_stage_one_waits_for_every_replicas_proxies() {
    let mut replicas = VaultReplicas::start().await;
    let (code, started) = replicas.rotate_root("start");
    assert_eq!(code, 0, "{started}");
    assert!(started.contains("root rotation started"), "{started}");

    // Both replicas push both roots; replica-a's proxy acknowledges, replica-b's does not.
    let both = replicas.bundles_with(2).await;
    replicas.clients[0].ack(&both[0], &["ROOTCA"]).await;
    let status = eventually_ok_every(
        Duration::from_secs(20),
        Duration::from_millis(500),
        "both replicas' reports in `meshca rotate root status`",
        || {
            let (_, status) = replicas.rotate_root("status");
            async move {
                if status.contains("replica-a: 1 of 1 acknowledged")
                    && status.contains("replica-b: 0 of 1 acknowledged")
                {
                    Ok(status)
                } else {
                    Err(status)
                }
            }
        },
    )
    .await;
    assert!(status.contains("stage 1"), "{status}");
    assert!(status.contains("total 2, acked 1"), "{status}");
    assert!(status.contains("waiting for:  ns/replica-b"), "{status}");

    // advance refuses, naming the proxy and its replica; Vault's default is unchanged.
    let old_default = default(&replicas.bao).await;
    let (code, refused) = replicas.rotate_root("advance");
    assert_eq!(code, 3, "{refused}");
    assert!(
        refused
            .contains("not advancing: 1 of 2 proxies acknowledged the new root (2 daemon reports)"),
        "{refused}"
    );
    assert!(
        refused.contains("waiting for ns/replica-b (on replica-b)"),
        "{refused}"
    );
    assert!(refused.contains("no deadline is set"), "{refused}");
    assert_eq!(default(&replicas.bao).await, old_default);

    // The ACK arrives at replica-b: advance moves to stage 2, and both replicas sign with
    // the new issuer.
    replicas.clients[1].ack(&both[1], &["ROOTCA"]).await;
    let advanced = support::daemon::advance_within(
        &replicas.settings(),
        Duration::from_secs(20),
        "`meshca rotate root advance` to move to stage 2",
    )
    .await;
    assert!(advanced.contains("advanced to stage 2"), "{advanced}");
    assert!(
        advanced.contains("2 of 2 proxies acknowledged the new root"),
        "{advanced}"
    );
    assert_ne!(default(&replicas.bao).await, old_default);
    replicas
        .wait_for_log(
            "vault issuers: signing with the new default issuer",
            Duration::from_secs(20),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_issuer_set_in_vault_waits_for_every_replicas_proxies_and_ignores_broken_reports()
{
    let mut replicas = VaultReplicas::start().await;

    // Entries of the store that are not reports: garbage, a valid-looking report padded past
    // the size limit (it would claim a replica all of whose proxies acknowledged), and a FIFO
    // (reading it would block forever).
    let acks_dir = replicas.acks_store().join("rotation-acks");
    std::fs::create_dir_all(&acks_dir).unwrap();
    std::fs::write(acks_dir.join("garbage.json"), b"\x00\xffnot a report").unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(acks_dir.join("fifo.json"))
        .status()
        .unwrap();
    assert!(fifo.success());

    // The operator's rotation, in Vault alone: a new root made the default at once.
    let generated = replicas
        .bao
        .write(
            "pki/root/generate/internal",
            serde_json::json!({"common_name": "meshca new root", "issuer_name": "next",
                "key_type": "ec", "key_bits": 256, "ttl": "87600h"}),
        )
        .await;
    let new_root = generated["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_root = TrustBundle::from_pem(&new_root).unwrap();
    let fingerprint = new_root.fingerprints().join(",");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut forged = serde_json::to_vec(&serde_json::json!({
        "replica": "forged", "root": fingerprint, "streams": 0, "acked": 0, "missing": [],
        "at": now + 3600,
    }))
    .unwrap();
    forged.resize(100 * 1024, b' ');
    std::fs::write(acks_dir.join("forged.json"), forged).unwrap();
    replicas
        .bao
        .write("pki/config/issuers", serde_json::json!({"default": "next"}))
        .await;

    // Both replicas push both roots; replica-a's proxy acknowledges, replica-b's does not.
    let both = replicas.bundles_with(2).await;
    replicas.clients[0].ack(&both[0], &["ROOTCA"]).await;
    // Each replica sees the other's missing proxy, and says which entries it ignored.
    replicas
        .wait_for_log("waiting_for=ns/replica-b", Duration::from_secs(20))
        .await;
    replicas
        .wait_for_log(
            "not an acknowledgement report are ignored",
            Duration::from_secs(5),
        )
        .await;
    let logs = replicas.logs();
    for entry in [
        "garbage.json: not a report",
        "forged.json: larger than",
        "fifo.json: a FIFO",
    ] {
        assert!(logs.contains(entry), "{entry} not logged:\n{logs}");
    }
    // Well past the poll interval, and a report refresh or two: neither switches.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let logs = replicas.logs();
    assert!(
        !logs.contains("signing with the new default issuer"),
        "switched while replica-b's proxy had not acknowledged the new root:\n{logs}"
    );

    // replica-b's proxy acknowledges: both switch.
    replicas.clients[1].ack(&both[1], &["ROOTCA"]).await;
    replicas
        .wait_for_log(
            "vault issuers: signing with the new default issuer",
            Duration::from_secs(20),
        )
        .await;
}
