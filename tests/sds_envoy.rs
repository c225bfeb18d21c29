//! End to end with real Envoy 1.40 processes getting every secret from meshca's SDS server.
//!
//! Envoy is found via `MESHCA_ENVOY` or `<workspace>/.tools/bin/envoy`
//! (`scripts/install-tools.sh envoy`); without it these tests are skipped, except with
//! `CI=true`, where they fail. Bootstraps come from `deploy/examples/`.
#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use meshca::sds::{AuthMode, MtlsSettings, Purpose, SdsSettings, UnixPeerMap};
use meshca_provider::TrustDomain;
use support::daemon::MeshcaServe;
use support::envoy::{
    self, CLIENT_ID, Envoy, MtlsPair, bootstrap, free_port, http_get, inbound, outbound,
};
use support::*;

async fn get(port: u16) -> envoy::HttpResponse {
    http_get(([127, 0, 0, 1], port).into(), "/").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_talk_mtls_with_certificates_from_meshca_and_survive_renewal() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let source = TestSource::new(Arc::new(TestCa::new("e2e")));
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let sds_port = sds.tcp.unwrap().port();

    let MtlsPair {
        server,
        client,
        server_port,
        client_port,
    } = MtlsPair::start(&binary, sds_port).await;
    // Another identity: the server's SAN matcher must refuse it.
    let intruder_port = free_port();
    let intruder = outbound(
        &binary,
        "ns/intruder",
        "ns/server",
        sds_port,
        intruder_port,
        server_port,
        None,
    );
    // The right client identity expecting another server: its SDS matcher must refuse the server.
    let confused_port = free_port();
    let confused = outbound(
        &binary,
        "ns/client",
        "ns/elsewhere",
        sds_port,
        confused_port,
        server_port,
        None,
    );
    for envoy in [&server, &client, &intruder, &confused] {
        envoy.wait_ready().await;
    }

    let response = get(client_port).await;
    assert_eq!(response.status, 200, "{response:?}\n{}", client.log_tail());
    assert_eq!(
        response.header("x-peer-identity"),
        Some(CLIENT_ID),
        "the server saw the client's SPIFFE ID"
    );
    assert!(response.body.contains("hello from ns/server"));
    let refused = get(intruder_port).await;
    assert_eq!(
        refused.status, 503,
        "an identity the server does not admit: {refused:?}"
    );
    let refused = get(confused_port).await;
    assert_eq!(
        refused.status, 503,
        "a server the client does not expect: {refused:?}"
    );

    // Each Envoy presents what meshca issued for it.
    let server_cert = source.current(&id("ns/server"), Purpose::Inbound).unwrap();
    let client_cert = source.current(&id("ns/client"), Purpose::Outbound).unwrap();
    server.wait_for_serial(&server_cert.info.serial_hex()).await;
    client.wait_for_serial(&client_cert.info.serial_hex()).await;

    // Forced renewal: both Envoys take the new certificates without restarting.
    let renewed_server = source.renew(&id("ns/server"), Purpose::Inbound);
    let renewed_client = source.renew(&id("ns/client"), Purpose::Outbound);
    server
        .wait_for_serial(&renewed_server.info.serial_hex())
        .await;
    client
        .wait_for_serial(&renewed_client.info.serial_hex())
        .await;
    let old = envoy::normalize_serial(&server_cert.info.serial_hex());
    assert!(
        !server.leaf_serials().await.contains(&old),
        "the old server certificate is gone"
    );
    let response = get(client_port).await;
    assert_eq!(
        response.status, 200,
        "traffic flows after renewal: {response:?}"
    );
    assert_eq!(response.header("x-peer-identity"), Some(CLIENT_ID));

    let stats = sds.stats.snapshot();
    assert!(
        stats.acks >= 4,
        "Envoy acknowledges what it receives: {stats:?}"
    );
    assert_eq!(stats.nacks, 0, "Envoy accepted every secret: {stats:?}");
    assert!(stats.pushes >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_authenticates_to_sds_with_a_bootstrap_certificate() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let ca = Arc::new(TestCa::new("mtls-e2e"));
    let source = TestSource::new(ca.clone());
    let mtls = MtlsSettings::new(&TrustDomain::default());
    let sds_identity = mtls.server_identity.to_string();
    let sds = RunningSds::start(
        SdsSettings::tcp("127.0.0.1:0".parse().unwrap(), AuthMode::Mtls(mtls)),
        source.clone(),
    )
    .await;
    let sds_port = sds.tcp.unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cluster_values = |stem: &str, identity: &str| -> Vec<(&'static str, String)> {
        let files = ca.write_files(dir.path(), stem, &id(identity));
        vec![
            ("SDS_ADDRESS", "127.0.0.1".to_owned()),
            ("BOOTSTRAP_CERT", files.cert.display().to_string()),
            ("BOOTSTRAP_KEY", files.key.display().to_string()),
            ("BOOTSTRAP_CA", files.ca.display().to_string()),
            ("SDS_SERVER_ID", sds_identity.clone()),
        ]
    };
    let server_values = cluster_values("server", "ns/server");
    let client_values = cluster_values("client", "ns/client");
    let server_port = free_port();
    let server = inbound(
        &binary,
        sds_port,
        server_port,
        Some(("sds-cluster-mtls.yaml", &server_values)),
    );
    let client_port = free_port();
    let client = outbound(
        &binary,
        "ns/client",
        "ns/server",
        sds_port,
        client_port,
        server_port,
        Some(("sds-cluster-mtls.yaml", &client_values)),
    );
    server.wait_ready().await;
    client.wait_ready().await;
    let response = get(client_port).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-peer-identity"), Some(CLIENT_ID));
    assert_eq!(sds.stats.snapshot().nacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_a_unix_socket_is_identified_by_its_uid() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let source = TestSource::new(Arc::new(TestCa::new("unix-e2e")));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    // This uid is the server; the client Envoy reaches the same source through a development
    // mode TCP listener (two SDS servers over one cache).
    let peers = UnixPeerMap::new(HashMap::from([(uid, id("ns/server"))]));
    let _unix_sds = RunningSds::start(
        SdsSettings::unix(&socket, AuthMode::UnixPeer(peers)),
        source.clone(),
    )
    .await;
    let tcp_sds = RunningSds::start(dev_settings(), source.clone()).await;
    let sds_port = tcp_sds.tcp.unwrap().port();

    let socket_values = [("SDS_SOCKET", socket.display().to_string())];
    let MtlsPair {
        server,
        client: _client,
        client_port,
        ..
    } = MtlsPair::start_with(
        &binary,
        sds_port,
        Some(("sds-cluster-unix.yaml", &socket_values)),
        |config| config,
    )
    .await;
    let response = get(client_port).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-peer-identity"), Some(CLIENT_ID));
    let served = source.current(&id("ns/server"), Purpose::Inbound).unwrap();
    server.wait_for_serial(&served.info.serial_hex()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_work_over_delta_sds() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let source = TestSource::new(Arc::new(TestCa::new("delta-e2e")));
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let sds_port = sds.tcp.unwrap().port();
    let delta = |config: String| config.replace("api_type: GRPC", "api_type: DELTA_GRPC");
    let server_port = free_port();
    let server_config = delta(bootstrap(
        "envoy-inbound.yaml",
        None,
        &[
            ("NODE_ID", "ns/server".to_owned()),
            ("ADMIN_PORT", "0".to_owned()),
            ("LISTEN_PORT", server_port.to_string()),
            ("ALLOWED_PEER", CLIENT_ID.to_owned()),
            ("SDS_PORT", sds_port.to_string()),
        ],
    ));
    assert!(server_config.contains("DELTA_GRPC"));
    let server = Envoy::start(&binary, "server", &server_config);
    let client_port = free_port();
    let client_config = delta(bootstrap(
        "envoy-outbound.yaml",
        None,
        &[
            ("NODE_ID", "ns/client".to_owned()),
            ("ADMIN_PORT", "0".to_owned()),
            ("LISTEN_PORT", client_port.to_string()),
            ("UPSTREAM_PORT", server_port.to_string()),
            ("UPSTREAM_IDENTITY", "ns/server".to_owned()),
            ("SDS_PORT", sds_port.to_string()),
        ],
    ));
    let client = Envoy::start(&binary, "client", &client_config);
    server.wait_ready().await;
    client.wait_ready().await;
    let response = get(client_port).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-peer-identity"), Some(CLIENT_ID));

    let renewed = source.renew(&id("ns/server"), Purpose::Inbound);
    server.wait_for_serial(&renewed.info.serial_hex()).await;
    assert_eq!(get(client_port).await.status, 200);
    let stats = sds.stats.snapshot();
    assert_eq!(stats.nacks, 0, "{stats:?}");
    assert!(stats.acks >= 4, "{stats:?}");
}

/// The real daemon: `meshca serve` (Tresor, directory store, development identity mode on
/// loopback, 20s certificates) feeding two Envoys. meshca renews on its own schedule; the Envoys
/// pick up the new certificates without restarting and traffic keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_fed_by_meshca_serve_follow_its_own_renewals() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let mut daemon = MeshcaServe::builder()
        .own_ca_dir()
        .dev_sds()
        // Not the default 127.0.0.1:15014, which another test's daemon may hold.
        .admin()
        .set("certificateProvider.serviceCertValidityDuration=20s")
        .set("renewal.floor=2s")
        .start();
    let sds_port = daemon.sds().port();
    daemon.wait_listening(sds_port).await;

    let MtlsPair {
        server,
        client,
        client_port,
        ..
    } = MtlsPair::start(&binary, sds_port).await;
    let response = get(client_port).await;
    assert_eq!(response.status, 200, "{response:?}\n{}", client.log_tail());
    assert_eq!(response.header("x-peer-identity"), Some(CLIENT_ID));

    let started = std::time::Instant::now();
    let first_server = server.leaf_serials().await;
    let first_client = client.leaf_serials().await;
    assert_eq!(first_server.len(), 1, "{first_server:?}");
    // A 20s certificate (21s with the back-dating) is renewed after about 10s ± 2s.
    for (envoy, first) in [(&server, &first_server), (&client, &first_client)] {
        let what = format!("a renewal to reach {} (it held {first:?})", envoy.name);
        eventually_ok(std::time::Duration::from_secs(40), &what, || async {
            let held = envoy.leaf_serials().await;
            if !held.is_empty() && held.iter().all(|s| !first.contains(s)) {
                Ok(())
            } else {
                Err(format!("{held:?}; meshca's log:\n{}", daemon.log()))
            }
        })
        .await;
    }
    let renewed_after = started.elapsed();
    assert!(
        renewed_after >= std::time::Duration::from_secs(5),
        "a 20s certificate was replaced after {renewed_after:?}: renewals are running in a loop\n{}",
        daemon.log()
    );
    let response = get(client_port).await;
    assert_eq!(
        response.status, 200,
        "traffic flows after renewal: {response:?}"
    );
    assert_eq!(response.header("x-peer-identity"), Some(CLIENT_ID));
}
