//! A certificate from Istio's CA API in a real Envoy 1.40, talking mTLS both ways with an Envoy
//! fed by meshca's SDS, both from one `meshca serve` (Tresor).
//!
//! Envoy A is set up as istio-agent leaves a proxy whose certificates come as files: its own key
//! (made by openssl), a CSR for its identity signed through `CreateCertificate` (by the Python
//! grpcio client, with a service-account token), and `cert-chain.pem`, `key.pem` and
//! `root-cert.pem` written from the response (the last `cert_chain` element is the root file).
//! Envoy B gets everything from meshca's SDS, as the other Envoy tests do. Each has an inbound
//! listener admitting only the other's SPIFFE ID and echoing the peer it saw in
//! `x-peer-identity`, and an outbound listener calling the other.
//!
//! Envoy and grpcio come from `scripts/install-tools.sh envoy grpc`; without them the test is
//! skipped, except with `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;
use support::envoy::{self, Envoy, free_port, http_get, inbound_bootstrap, outbound_bootstrap};
use support::id;
use support::istio_interop::{
    Credential, ISTIO_AUDIENCE, IstioCa, PythonClient, REQUESTED_SECONDS, check_chain,
};

const A: &str = "app/a";
const B: &str = "app/b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_with_files_from_create_certificate_and_an_sds_envoy_talk_mtls_both_ways() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let Some(client) = PythonClient::find() else {
        return;
    };
    let ca = IstioCa::start_tresor().await;
    let (a_id, b_id) = (id(A).to_string(), id(B).to_string());

    // A's key and CSR as istio-agent makes them (its own SPIFFE ID in the CSR), signed over a
    // service-account token; the response written out as istio-agent writes it.
    let certs = ca.work.path().join("etc-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let csr = agent_csr(&certs, &a_id);
    ca.kube.add_token("token-a", "app", "a", &[ISTIO_AUDIENCE]);
    let cert_chain = ca
        .call(&client, &csr)
        .credential(Credential::Token("token-a".to_owned()))
        .send()
        .await
        .unwrap_or_else(|refusal| panic!("{refusal:?}\n{}", ca.daemon.tail(30)));
    let issued = check_chain(&cert_chain, &csr, A, REQUESTED_SECONDS);
    let (root, leaf_and_intermediates) = cert_chain.split_last().unwrap();
    std::fs::write(
        certs.join("cert-chain.pem"),
        leaf_and_intermediates.concat(),
    )
    .unwrap();
    std::fs::write(certs.join("root-cert.pem"), root).unwrap();

    let sds_port = ca.daemon.sds().port();
    let [a_in, a_out, b_in, b_out] = [(); 4].map(|()| free_port());
    let envoy_a = Envoy::start(
        &binary,
        "a (files)",
        &file_bootstrap(&certs, a_in, a_out, b_in, &b_id),
    );
    let envoy_b = Envoy::start(
        &binary,
        "b (sds)",
        &sds_bootstrap(sds_port, b_in, b_out, a_in, &a_id),
    );
    envoy_a.wait_ready().await;
    envoy_b.wait_ready().await;

    // A calls B: B admitted A's certificate from CreateCertificate and saw A's SPIFFE ID.
    let response = http_get(([127, 0, 0, 1], a_out).into(), "/").await.unwrap();
    assert_eq!(
        response.status,
        200,
        "A -> B: {response:?}\nA:\n{}\nB:\n{}",
        envoy_a.log_tail(),
        envoy_b.log_tail()
    );
    assert_eq!(response.header("x-peer-identity"), Some(a_id.as_str()));
    assert!(
        response.body.contains(&format!("hello from {B}")),
        "{response:?}"
    );

    // B calls A: A admitted B's certificate from SDS and saw B's SPIFFE ID.
    let response = http_get(([127, 0, 0, 1], b_out).into(), "/").await.unwrap();
    assert_eq!(
        response.status,
        200,
        "B -> A: {response:?}\nA:\n{}\nB:\n{}",
        envoy_a.log_tail(),
        envoy_b.log_tail()
    );
    assert_eq!(response.header("x-peer-identity"), Some(b_id.as_str()));
    assert!(
        response.body.contains(&format!("hello from {A}")),
        "{response:?}"
    );

    // A presents exactly the certificate CreateCertificate signed.
    let serial = envoy::normalize_serial(&issued.leaf_info().unwrap().serial_hex());
    let held = envoy_a.leaf_serials().await;
    assert!(held.contains(&serial), "A holds {held:?}, not {serial}");
    assert!(!envoy_b.leaf_serials().await.contains(&serial));
}

/// `key.pem` (P-256, mode 0600) and a CSR for `spiffe_id` in `dir`, as istio-agent makes them;
/// returns the CSR's path.
fn agent_csr(dir: &Path, spiffe_id: &str) -> std::path::PathBuf {
    let key = dir.join("key.pem");
    let csr = dir.join("agent.csr");
    let output = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:P-256", "-keyout"])
        .arg(&key)
        .args(["-subj", "/", "-addext"])
        .arg(format!("subjectAltName=critical,URI:{spiffe_id}"))
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("run openssl req");
    assert!(
        output.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    csr
}

/// Envoy A: inbound on `listen` admitting only `peer`, outbound on `outbound` to `upstream`
/// expecting `peer`, every TLS context from the files istio-agent writes in `certs`.
fn file_bootstrap(certs: &Path, listen: u16, outbound: u16, upstream: u16, peer: &str) -> String {
    let chain = certs.join("cert-chain.pem").display().to_string();
    let key = certs.join("key.pem").display().to_string();
    let root = certs.join("root-cert.pem").display().to_string();
    let tls = format!(
        "tls_certificates:\n\
         - certificate_chain: {{ filename: \"{chain}\" }}\n  \
           private_key: {{ filename: \"{key}\" }}\n\
         validation_context:\n  \
           trusted_ca: {{ filename: \"{root}\" }}\n  \
           match_typed_subject_alt_names:\n  \
           - san_type: URI\n    \
             matcher: {{ exact: \"{peer}\" }}\n"
    );
    let common: Value = serde_yaml::from_str(&tls).unwrap();
    format!(
        r#"
node: {{ id: "{A}", cluster: "{A}" }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: inbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context: {common}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response:
                  status: 200
                  body: {{ inline_string: "hello from {A}\n" }}
                response_headers_to_add:
                - header: {{ key: x-peer-identity, value: "%DOWNSTREAM_PEER_URI_SAN%" }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: outbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {outbound} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound
          route_config:
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: {common}
"#,
        common = serde_json::to_string(&common).unwrap(),
    )
}

/// Envoy B: the inbound and outbound bootstraps of `deploy/examples/` (every secret from
/// meshca's SDS in development mode) joined into one proxy: inbound on `listen` admitting only
/// `peer`, outbound on `outbound` to `upstream`, which must be [`A`].
fn sds_bootstrap(sds_port: u16, listen: u16, outbound: u16, upstream: u16, peer: &str) -> String {
    // The template is `ns/server`'s: its node, secret names and greeting become B's.
    let inbound = inbound_bootstrap(sds_port, listen, peer, None).replace("ns/server", B);
    let mut config: Value = serde_yaml::from_str(&inbound).unwrap();
    let other: Value = serde_yaml::from_str(&outbound_bootstrap(
        B, A, sds_port, outbound, upstream, None,
    ))
    .unwrap();
    let listeners = config["static_resources"]["listeners"]
        .as_sequence_mut()
        .unwrap();
    listeners.extend(
        other["static_resources"]["listeners"]
            .as_sequence()
            .unwrap()
            .clone(),
    );
    let clusters = config["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap();
    let upstream_cluster = other["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "upstream")
        .unwrap()
        .clone();
    clusters.push(upstream_cluster);
    serde_yaml::to_string(&config).unwrap()
}
