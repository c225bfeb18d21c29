//! Vault root rotations with real Envoys (the harness of `rotation_envoy.rs`): a client and a
//! server Envoy fed by `meshca serve` (kind vault, on a real OpenBao) carry continuous traffic —
//! a new connection and a full TLS handshake per request — while
//! - an operator makes a new root issuer in the PKI mount and, at once, makes it the default
//!   with `bao write pki/config/issuers default=…`, then deletes the old issuer: both proxies
//!   trust both roots before any leaf under the new one is served, and the old root stays
//!   trusted until the last leaf it signed has expired; a third SDS client that never
//!   acknowledges the new bundle holds the switch back until it disconnects (the daemon's
//!   report in the CA store says so; `rotation_root.rs` has two replicas);
//! - `meshca rotate root` goes start → advance → advance on the mount.
//!
//! Not one request may fail. OpenBao and Envoy are found as in the other tests; without them
//! the test is skipped, except under `CI=true`, where it fails.

#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::bao::{Bao, bao_binary};
use support::daemon::MeshcaServe;
use support::envoy::{
    self, CLIENT_ID, Envoy, MtlsPair, Traffic, free_port, fresh_handshake_per_request, http_get,
    normalize_serial,
};
use support::sds::{SotwClient, channel, node};

/// `bao <args>` against `bao` as root, as an operator would type it; its stdout.
fn bao_cli(bao: &Bao, args: &[&str]) -> String {
    let output = std::process::Command::new(bao_binary())
        .args(args)
        .env("BAO_ADDR", &bao.address)
        .env("BAO_TOKEN", &bao.root_token)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bao {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The mount's issuers (`LIST pki/issuers`): ID → name, serial (normalised like Envoy's) and
/// whether it is the default.
async fn issuers(bao: &Bao) -> Vec<(String, String, String, bool)> {
    let listed = bao
        .raw(
            reqwest::Method::from_bytes(b"LIST").unwrap(),
            "pki/issuers",
            Some(&bao.root_token),
            None,
        )
        .await
        .unwrap();
    listed["data"]["key_info"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, info)| {
            (
                id.clone(),
                info["issuer_name"].as_str().unwrap().to_owned(),
                normalize_serial(info["serial_number"].as_str().unwrap()),
                info["is_default"].as_bool().unwrap(),
            )
        })
        .collect()
}

async fn issuer_serial(bao: &Bao, id: &str) -> String {
    let all = issuers(bao).await;
    all.into_iter().find(|i| i.0 == id).unwrap().2
}

/// OpenBao with a PKI mount, `meshca serve` on it, two Envoys calling each other over mTLS,
/// both trusting the old root only.
struct Mesh {
    bao: Bao,
    store: tempfile::TempDir,
    daemon: MeshcaServe,
    server: Envoy,
    client: Envoy,
    client_port: u16,
    sds_port: u16,
    old_id: String,
    old_root: String,
}

impl Mesh {
    async fn start(binary: &std::path::Path) -> Self {
        let bao = Bao::dev().await;
        bao.pki("pki", "meshca old root").await;
        let old_id = bao.read("pki/config/issuers").await["data"]["default"]
            .as_str()
            .unwrap()
            .to_owned();
        let old_root = issuer_serial(&bao, &old_id).await;
        let store = tempfile::tempdir().unwrap();
        let sds_port = free_port();
        let mut args = vec!["serve".to_owned()];
        args.extend(bao.rotation_args(store.path()));
        for setting in [
            format!("sds.listen=127.0.0.1:{sds_port}"),
            "sds.auth=development".to_owned(),
            "admin.listen=".to_owned(),
        ] {
            args.extend(["--set".to_owned(), setting]);
        }
        let mut daemon = MeshcaServe::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        daemon.wait_listening(sds_port).await;
        let MtlsPair {
            server,
            client,
            client_port,
            ..
        } = MtlsPair::start_with(binary, sds_port, None, fresh_handshake_per_request).await;
        let first = http_get(([127, 0, 0, 1], client_port).into(), "/")
            .await
            .unwrap();
        assert_eq!(first.status, 200, "{first:?}\n{}", client.log_tail());
        let only_old = BTreeSet::from([old_root.clone()]);
        server.wait_until_trusted(&only_old).await;
        client.wait_until_trusted(&only_old).await;
        Self {
            bao,
            store,
            daemon,
            server,
            client,
            client_port,
            sds_port,
            old_id,
            old_root,
        }
    }

    /// Waits until both Envoys trust exactly `want`.
    async fn wait_until_trusted(&self, want: &BTreeSet<String>) {
        self.server.wait_until_trusted(want).await;
        self.client.wait_until_trusted(want).await;
    }

    /// Waits until both Envoys hold leaves other than the ones they hold now.
    async fn wait_for_new_leaves(&self, before: (Vec<String>, Vec<String>)) {
        self.server.wait_for_new_leaf(&before.0).await;
        self.client.wait_for_new_leaf(&before.1).await;
    }

    async fn leaves(&self) -> (Vec<String>, Vec<String>) {
        (
            self.server.leaf_serials().await,
            self.client.leaf_serials().await,
        )
    }

    async fn trusted(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        (
            self.server.trusted_serials().await,
            self.client.trusted_serials().await,
        )
    }

    /// Stops `traffic` and checks that every request succeeded, each a full handshake.
    async fn check_traffic(&self, traffic: Traffic, handshakes_before: u64) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (ok, failures) = traffic.stop().await;
        assert!(
            failures.is_empty(),
            "{} of {} requests failed during the rotation: {:?}\n{}\n{}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(10)],
            self.client.log_tail(),
            self.daemon.log()
        );
        assert!(
            ok >= 100,
            "only {ok} requests ran: the loop did not exercise the rotation"
        );
        let last = http_get(([127, 0, 0, 1], self.client_port).into(), "/")
            .await
            .unwrap();
        assert_eq!(last.status, 200);
        assert_eq!(last.header("x-peer-identity"), Some(CLIENT_ID));
        let handshakes =
            self.client.stat("cluster.upstream.ssl.handshake").await - handshakes_before;
        assert!(
            handshakes >= ok,
            "{handshakes} handshakes for {ok} requests: connections were reused"
        );
        assert_eq!(
            self.client
                .stat("cluster.upstream.ssl.session_reused")
                .await,
            0
        );
    }

    /// `meshca rotate root <action>` on the mount: exit status (0, or 3 for "not yet") and
    /// stdout.
    fn rotate_root(&self, action: &str) -> (i32, String) {
        support::daemon::rotate_root_with(&self.rotation_args(), action)
    }

    fn rotation_args(&self) -> Vec<String> {
        self.bao.rotation_args(self.store.path())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_issuer_changed_in_vault_under_continuous_mtls_traffic_fails_no_request() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let mut mesh = Mesh::start(&binary).await;

    // A proxy that holds the old bundle and will acknowledge nothing newer.
    let mut laggard = SotwClient::open(
        channel(&format!("http://127.0.0.1:{}", mesh.sds_port)).await,
        Some(node("ns/laggard")),
        &["ROOTCA"],
    )
    .await
    .unwrap();
    let first_bundle = laggard.next().await.unwrap();
    laggard.ack(&first_bundle, &["ROOTCA"]).await;

    let traffic = Traffic::start(mesh.client_port);
    let handshakes_before = mesh.client.stat("cluster.upstream.ssl.handshake").await;

    // The operator's rotation, done in Vault alone: a new root issuer, made the default at
    // once — before meshca has even read it.
    let generated = bao_cli(
        &mesh.bao,
        &[
            "write",
            "-format=json",
            "pki/root/generate/internal",
            "common_name=meshca new root",
            "issuer_name=next",
            "key_type=ec",
            "key_bits=256",
            "ttl=87600h",
        ],
    );
    let generated: Value = serde_json::from_str(&generated).unwrap();
    let new_id = generated["data"]["issuer_id"].as_str().unwrap().to_owned();
    bao_cli(&mesh.bao, &["write", "pki/config/issuers", "default=next"]);
    assert_eq!(
        mesh.bao.read("pki/config/issuers").await["data"]["default"],
        json!(new_id)
    );
    let new_root = issuer_serial(&mesh.bao, &new_id).await;

    // Both proxies trust both roots; the laggard, which has not acknowledged them, holds the
    // switch back (the daemon reads the mount every second).
    let both = BTreeSet::from([mesh.old_root.clone(), new_root.clone()]);
    mesh.wait_until_trusted(&both).await;
    mesh.daemon
        .wait_for_log("waiting_for=ns/laggard", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = mesh.daemon.log();
    assert!(
        !log.contains("signing with the new default issuer"),
        "switched while a proxy had not acknowledged the new root:\n{log}"
    );
    // It goes away: only then do leaves under the new root reach the Envoys.
    let before = mesh.leaves().await;
    drop(laggard);
    mesh.wait_for_new_leaves(before).await;
    mesh.daemon
        .wait_for_log(
            "vault issuers: signing with the new default issuer",
            Duration::from_secs(30),
        )
        .await;
    let log = mesh.daemon.log();
    let seen = log.find("Vault's default issuer changed").unwrap();
    let switched = log
        .find("vault issuers: signing with the new default issuer")
        .unwrap();
    assert!(seen < switched, "{log}");
    // Both roots stay trusted while the old issuer is in the mount.
    assert_eq!(mesh.trusted().await, (both.clone(), both.clone()));

    // The operator deletes the old issuer: its root stays trusted until the last leaf it
    // signed has expired (30 s leaves; the switch was seconds ago), then leaves the bundles.
    bao_cli(
        &mesh.bao,
        &["delete", &format!("pki/issuer/{}", mesh.old_id)],
    );
    assert_eq!(issuers(&mesh.bao).await.len(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        mesh.trusted().await,
        (both.clone(), both.clone()),
        "the old root left while leaves it signed are unexpired"
    );
    let only_new = BTreeSet::from([new_root.clone()]);
    support::eventually(
        Duration::from_secs(60),
        "the old root to leave both bundles after its last leaf expired",
        || mesh.trusted(),
        |(s, c)| *s == only_new && *c == only_new,
    )
    .await;

    mesh.check_traffic(traffic, handshakes_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshca_rotate_root_on_vault_under_continuous_mtls_traffic_fails_no_request() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let mesh = Mesh::start(&binary).await;
    let traffic = Traffic::start(mesh.client_port);
    let handshakes_before = mesh.client.stat("cluster.upstream.ssl.handshake").await;

    // Stage 1: a new issuer in the mount, trusted by both Envoys; the old one signs.
    let (_, started) = mesh.rotate_root("start");
    assert!(started.contains("root rotation started"), "{started}");
    let (_, again) = mesh.rotate_root("start");
    assert!(again.contains("already in progress"), "{again}");
    let listed = issuers(&mesh.bao).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let new = listed
        .iter()
        .find(|i| i.1 == "meshca-next")
        .unwrap()
        .clone();
    assert!(!new.3, "the new issuer is not the default yet");
    let both = BTreeSet::from([mesh.old_root.clone(), new.2.clone()]);
    mesh.wait_until_trusted(&both).await;
    let (_, status) = mesh.rotate_root("status");
    assert!(status.contains("stage 1"), "{status}");

    // Stage 2 once the daemon's report in the CA store says both Envoys acknowledged the new
    // root: the new issuer is the default; the daemon signs with it, and re-issues.
    let before = mesh.leaves().await;
    let advanced = support::daemon::advance_within(
        &mesh.rotation_args(),
        Duration::from_secs(20),
        "`meshca rotate root advance` to move to stage 2",
    )
    .await;
    assert!(advanced.contains("advanced to stage 2"), "{advanced}");
    assert!(
        advanced.contains("proxies acknowledged the new root (1 daemon report)"),
        "{advanced}"
    );
    mesh.wait_for_new_leaves(before).await;
    let default = issuers(&mesh.bao).await;
    assert!(
        default.iter().any(|i| i.0 == new.0 && i.3),
        "the new issuer is the default: {default:?}"
    );

    // Finished after the longest leaf lifetime (31 s): the old root leaves both bundles.
    let finished = support::daemon::advance_within(
        &mesh.rotation_args(),
        Duration::from_secs(90),
        "`meshca rotate root advance` to finish",
    )
    .await;
    assert!(finished.contains("rotation finished"), "{finished}");
    let only_new = BTreeSet::from([new.2.clone()]);
    support::eventually(
        Duration::from_secs(60),
        "the old root to leave both bundles",
        || mesh.trusted(),
        |(s, c)| *s == only_new && *c == only_new,
    )
    .await;
    // The old issuer is retired, not deleted.
    let listed = issuers(&mesh.bao).await;
    let old = listed.iter().find(|i| i.0 == mesh.old_id).unwrap();
    assert!(old.1.starts_with("meshca-retired-"), "{listed:?}");
    let (_, status) = mesh.rotate_root("status");
    assert!(status.contains("no root rotation in progress"), "{status}");

    mesh.check_traffic(traffic, handshakes_before).await;
}
