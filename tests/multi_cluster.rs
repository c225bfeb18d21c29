//! One root across clusters, with real processes only: an "offline" root made by
//! `meshca bootstrap` signs two per-cluster intermediates (`meshca ca intermediate`); two
//! `meshca serve` daemons, each with its intermediate as `tresor.directory`, feed a client Envoy
//! in cluster A and a server Envoy in cluster B, which complete mTLS with each other. Once with
//! the same trust domain in both clusters, once with cluster B in `b.example`.
//!
//! Independent checks with openssl: a leaf from cluster B verifies against cluster A's
//! published bundle (the root alone) through B's intermediate, and B's server Envoy presents
//! leaf + intermediate in the handshake.
//!
//! Envoy is found via `MESHCA_ENVOY` or `<workspace>/.tools/bin/envoy`
//! (`scripts/install-tools.sh envoy`); without it these tests are skipped, except with
//! `CI=true`, where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use meshca_provider::{CertificateChain, TrustBundle};
use support::daemon::MeshcaServe;
use support::envoy::{self, Envoy, bootstrap, free_port, http_get};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_root_two_clusters_same_trust_domain() {
    one_root_two_clusters("cluster.local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_root_two_clusters_different_trust_domains() {
    one_root_two_clusters("b.example").await;
}

/// Cluster A is always in `cluster.local`; cluster B in `domain_b`.
async fn one_root_two_clusters(domain_b: &str) {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path().join("root");
    let (a_dir, b_dir) = (dir.path().join("cluster-a"), dir.path().join("cluster-b"));
    meshca(&["--ca-dir", path(&root_dir), "bootstrap"]);
    meshca(&[
        "--ca-dir",
        path(&root_dir),
        "ca",
        "intermediate",
        "--cluster",
        "a",
        "--out-dir",
        path(&a_dir),
    ]);
    meshca(&[
        "--ca-dir",
        path(&root_dir),
        "ca",
        "intermediate",
        "--cluster",
        "b",
        "--for-trust-domain",
        domain_b,
        "--out-dir",
        path(&b_dir),
    ]);
    let root = read_bundle(&root_dir.join("ca.crt"));
    // The root's key stays where it was made: each cluster gets its intermediate only.
    let b_stored = read_bundle(&b_dir.join("ca.crt"));
    assert_eq!(
        b_stored.roots().len(),
        2,
        "cluster B's store holds its intermediate and the root"
    );
    let b_intermediate = b_stored.roots()[0].clone();
    assert_eq!(&b_stored.roots()[1], &root.roots()[0]);

    let (a_port, b_port) = (free_port(), free_port());
    let mut cluster_a = serve(&a_dir, "cluster.local", a_port);
    let mut cluster_b = serve(&b_dir, domain_b, b_port);
    cluster_a.wait_listening(a_port).await;
    cluster_b.wait_listening(b_port).await;

    let client_id = "spiffe://cluster.local/ns/ns/sa/client";
    let server_id = format!("spiffe://{domain_b}/ns/ns/sa/server");
    let server_port = free_port();
    let server = Envoy::start(
        &binary,
        "server (cluster B)",
        &bootstrap(
            "envoy-inbound.yaml",
            None,
            &[
                ("NODE_ID", "ns/server".to_owned()),
                ("ADMIN_PORT", "0".to_owned()),
                ("LISTEN_PORT", server_port.to_string()),
                ("ALLOWED_PEER", client_id.to_owned()),
                ("SDS_PORT", b_port.to_string()),
            ],
        ),
    );
    let outbound = |listen: u16, upstream_identity: &str| {
        bootstrap(
            "envoy-outbound.yaml",
            None,
            &[
                ("NODE_ID", "ns/client".to_owned()),
                ("ADMIN_PORT", "0".to_owned()),
                ("LISTEN_PORT", listen.to_string()),
                ("UPSTREAM_PORT", server_port.to_string()),
                ("UPSTREAM_IDENTITY", upstream_identity.to_owned()),
                ("SDS_PORT", a_port.to_string()),
            ],
        )
    };
    let same_domain = domain_b == "cluster.local";
    let client_port = free_port();
    let client_config = if same_domain {
        // `root-cert-for-mtls-outbound:ns/server` is cluster A's bundle (the shared root) plus
        // an exact matcher for spiffe://cluster.local/ns/ns/sa/server: B's server has that ID.
        outbound(client_port, "ns/server")
    } else {
        // `root-cert-for-mtls-outbound:<ns>/<sa>` names the peer in cluster A's trust domain,
        // so its matcher would expect spiffe://cluster.local/ns/ns/sa/server and refuse B's
        // server (checked below). For a peer in another trust domain the proxy takes the bare
        // bundle (`ROOTCA`: the shared root) over SDS and pins the peer's full SPIFFE ID in the
        // static part of a combined validation context.
        envoy::with_peer_matcher(&outbound(client_port, "ns/server"), "ROOTCA", &server_id)
    };
    let client = Envoy::start(&binary, "client (cluster A)", &client_config);
    // A control that must fail, so the success above is not an accident of loose checking:
    // with one trust domain, a client expecting another identity; with two, the client that
    // names the peer in its own trust domain.
    let control_port = free_port();
    let control_config = if same_domain {
        outbound(control_port, "ns/elsewhere")
    } else {
        outbound(control_port, "ns/server")
    };
    let control = Envoy::start(&binary, "control (cluster A)", &control_config);
    for envoy in [&server, &client, &control] {
        envoy.wait_ready().await;
    }

    let response = http_get(([127, 0, 0, 1], client_port).into(), "/")
        .await
        .unwrap();
    assert_eq!(
        response.status,
        200,
        "cluster A's client reaches cluster B's server over mTLS: {response:?}\nclient:\n{}\nserver:\n{}",
        client.log_tail(),
        server.log_tail()
    );
    assert_eq!(response.header("x-peer-identity"), Some(client_id));
    assert!(
        response.body.contains("hello from ns/server"),
        "{response:?}"
    );
    let refused = http_get(([127, 0, 0, 1], control_port).into(), "/")
        .await
        .unwrap();
    assert_eq!(
        refused.status, 503,
        "the control client must not accept the server: {refused:?}"
    );

    // What each daemon serves, read over SDS like the proxies do.
    let from_b = fetch(b_port, "ns/server", &["service-cert-inbound:ns/server"]).await;
    let (b_chain, _) = tls_of(secret_named(&from_b, "service-cert-inbound:ns/server"));
    let from_a = fetch(
        a_port,
        "ns/client",
        &["ROOTCA", "service-cert-outbound:ns/client"],
    )
    .await;
    let (a_bundle, _) = validation_of(secret_named(&from_a, "ROOTCA"));
    let (a_chain, a_key) = tls_of(secret_named(&from_a, "service-cert-outbound:ns/client"));

    // Cluster A publishes the shared root alone; B's leaf chain is leaf + B's intermediate.
    assert_eq!(a_bundle, root, "cluster A's bundle is the shared root");
    assert_eq!(
        b_chain.intermediates(),
        std::slice::from_ref(&b_intermediate),
        "cluster B's leaf chain carries its intermediate"
    );
    let b_leaf = b_chain.leaf_info().unwrap();
    assert_eq!(b_leaf.uri_sans, vec![server_id.clone()]);
    assert_ne!(
        a_chain.intermediates(),
        b_chain.intermediates(),
        "each cluster signs with its own intermediate"
    );
    server.wait_for_serial(&b_leaf.serial_hex()).await;

    // openssl: B's leaf verifies with A's bundle through B's intermediate, and not without it.
    let files = tempfile::tempdir().unwrap();
    let a_root_file = write(files.path(), "a-bundle.pem", &a_bundle.to_pem());
    let b_leaf_file = write(
        files.path(),
        "b-leaf.pem",
        &TrustBundle::new(vec![b_chain.leaf().clone()]).to_pem(),
    );
    let b_inter_file = write(
        files.path(),
        "b-intermediate.pem",
        &TrustBundle::new(b_chain.intermediates().to_vec()).to_pem(),
    );
    let verified = openssl(&[
        "verify",
        "-CAfile",
        path(&a_root_file),
        "-untrusted",
        path(&b_inter_file),
        "-purpose",
        "sslserver",
        path(&b_leaf_file),
    ]);
    assert!(
        verified.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    let without = openssl(&["verify", "-CAfile", path(&a_root_file), path(&b_leaf_file)]);
    assert!(
        !without.status.success(),
        "the leaf must not verify without the intermediate"
    );

    // openssl as cluster A's client (its certificate and key from A): B's server Envoy presents
    // leaf + intermediate, which verify against A's bundle.
    let client_cert = write(
        files.path(),
        "a-client.pem",
        &TrustBundle::new(vec![a_chain.leaf().clone()]).to_pem(),
    );
    let client_chain = write(
        files.path(),
        "a-client-chain.pem",
        &TrustBundle::new(a_chain.intermediates().to_vec()).to_pem(),
    );
    let client_key = files.path().join("a-client.key");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&client_key)
            .unwrap();
        file.write_all(a_key.private_key_pem().as_bytes()).unwrap();
    }
    let connect = format!("127.0.0.1:{server_port}");
    let handshake = openssl(&[
        "s_client",
        "-connect",
        &connect,
        "-CAfile",
        path(&a_root_file),
        "-cert",
        path(&client_cert),
        "-cert_chain",
        path(&client_chain),
        "-key",
        path(&client_key),
        "-verify_return_error",
        "-showcerts",
    ]);
    let out = String::from_utf8_lossy(&handshake.stdout);
    assert!(
        handshake.status.success() && out.contains("Verify return code: 0 (ok)"),
        "openssl s_client to cluster B's server: {out}{}",
        String::from_utf8_lossy(&handshake.stderr)
    );
    assert_eq!(
        out.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "the server presents its leaf and cluster B's intermediate: {out}"
    );
    let presented = CertificateChain::from_pem(&out).unwrap();
    assert_eq!(presented.intermediates(), b_chain.intermediates());
    assert_eq!(
        presented.leaf_info().unwrap().uri_sans,
        vec![server_id.clone()]
    );
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `meshca <args>` to completion and checks it succeeded.
fn meshca(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("MESHCA_CONFIG")
        .output()
        .unwrap();
    support::cli::ok(&output)
}

/// `meshca serve` for one cluster: its intermediate as the CA store, development-mode SDS on
/// loopback.
fn serve(ca_dir: &Path, trust_domain: &str, sds_port: u16) -> MeshcaServe {
    MeshcaServe::start(&[
        "--ca-dir",
        path(ca_dir),
        "--trust-domain",
        trust_domain,
        "serve",
        "--set",
        &format!("sds.listen=127.0.0.1:{sds_port}"),
        "--set",
        &format!("admin.listen=127.0.0.1:{}", free_port()),
        "--set",
        "sds.auth=development",
    ])
}

fn read_bundle(file: &Path) -> TrustBundle {
    TrustBundle::from_pem(&std::fs::read_to_string(file).unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

/// One SDS request as `node` (development mode), answered once.
async fn fetch(
    port: u16,
    node_id: &str,
    names: &[&str],
) -> Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret> {
    let mut client = SotwClient::open(
        channel(&format!("http://127.0.0.1:{port}")).await,
        Some(node(node_id)),
        names,
    )
    .await
    .unwrap();
    let response = client.next().await.unwrap();
    secrets(&response.resources)
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl")
}
