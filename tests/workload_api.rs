//! The SPIFFE Workload API on a real `meshca serve`, through a client no one here wrote:
//! rust-spiffe (`spiffe` crate, its `X509Source` and `WorkloadApiClient`) fetches X.509-SVIDs
//! and the bundle over the socket (`unix://…`, as `SPIFFE_ENDPOINT_SOCKET` names it), two
//! workloads build an mTLS connection with rustls from what they fetched and check each other's
//! SPIFFE ID, and `meshca rotate leaves` delivers new SVIDs on the open stream.
//!
//! Refusals, with the raw tonic client generated from `proto/spiffe/workload.proto`: no
//! `workload.spiffe.io` header → INVALID_ARGUMENT; a caller under another uid (this test
//! binary re-run under `setpriv`, so needs root) matching no entry → PERMISSION_DENIED, and the
//! daemon issued nothing; the JWT-SVID methods with `jwtSvid.enabled` off → UNIMPLEMENTED
//! (tests/workload_api_jwt.rs has them on).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use meshca::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshca::workload_api::proto::{JwtsvidRequest, X509BundlesRequest, X509svidRequest};
use meshca_provider::{CertificateChain, CertificateInfo, TrustBundle};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::daemon::MeshcaServe;
use support::verify::SpiffeServerVerifier;
use support::workload_api::{
    TRUST_DOMAIN, metric, my_ids as me, root, socket_dir, spiffe_id, start, start_with,
    wait_for_socket,
};
use support::{PATIENCE, eventually, eventually_ok};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

/// Set in the environment of this binary re-run as the other-uid client: the socket path.
const CHILD_SOCKET: &str = "MESHCA_WORKLOAD_API_TEST_CHILD_SOCKET";
/// The uid and gid the other-uid client runs as.
const NOBODY: u32 = 65534;

/// Picks the SVID with this hint (what an application holding several identities does).
struct Hint(&'static str);

impl spiffe::x509_source::SvidPicker for Hint {
    fn pick_svid(&self, svids: &[Arc<spiffe::X509Svid>]) -> Option<usize> {
        svids.iter().position(|s| s.hint() == Some(self.0))
    }
}

async fn source(endpoint: &str, hint: &'static str) -> spiffe::X509Source {
    spiffe::X509Source::builder()
        .endpoint(endpoint)
        .picker(Hint(hint))
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_spiffe_workloads_get_svids_connect_with_mtls_and_see_renewals_on_the_same_stream() {
    let dir = socket_dir();
    let socket = dir.path().join("workload-api.sock");
    let (uid, gid) = me();
    let exe = std::env::current_exe().unwrap();
    // This one process is two workloads: it matches both entries' selectors (uid and
    // executable; gid), but not the third's (its gid is not this one's).
    let mut daemon = start(
        dir.path(),
        &socket,
        &[
            (
                "web/server",
                vec![
                    format!("unix:uid:{uid}"),
                    format!("unix:path:{}", exe.display()),
                ],
                "server",
            ),
            ("web/client", vec![format!("unix:gid:{gid}")], "client"),
            (
                "web/never",
                vec![format!("unix:uid:{uid}"), format!("unix:gid:{}", gid + 1)],
                "never",
            ),
        ],
    );
    wait_for_socket(&mut daemon, &socket).await;
    let endpoint = format!("unix://{}", socket.display());

    // The Workload API client: every identity the caller is entitled to, and the bundle.
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .unwrap();
    let svids = client.fetch_all_x509_svids().await.unwrap();
    let mut ids: Vec<(String, Option<String>)> = svids
        .iter()
        .map(|s| (s.spiffe_id().to_string(), s.hint().map(str::to_owned)))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            (spiffe_id("web/client"), Some("client".to_owned())),
            (spiffe_id("web/server"), Some("server".to_owned())),
        ]
    );
    let root = root(&daemon.dir().join("ca"));
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let trust_domain = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle = bundles
        .get(&trust_domain)
        .expect("the trust domain's bundle");
    let authorities: Vec<&[u8]> = bundle.authorities().iter().map(|c| c.as_bytes()).collect();
    assert_eq!(authorities, [root.roots()[0].as_ref()]);
    for svid in &svids {
        let chain = chain_of(svid);
        support::verify::webpki_verify(
            &chain,
            &root,
            std::time::SystemTime::now(),
            support::verify::Purpose::Client,
        )
        .unwrap();
        assert_eq!(
            CertificateInfo::parse(chain.leaf()).unwrap().uri_sans,
            [svid.spiffe_id().to_string()]
        );
    }

    // Two workloads, each with an X509Source picking its identity, talk mTLS.
    let server = source(&endpoint, "server").await;
    let client_source = source(&endpoint, "client").await;
    mtls(&server, &client_source, &root).await;

    // One FetchX509SVID stream, held open across `meshca rotate leaves`.
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let leaves = |context: &spiffe::X509Context| {
        let mut leaves: Vec<(String, Vec<u8>)> = context
            .svids()
            .iter()
            .map(|s| (s.spiffe_id().to_string(), s.leaf().as_bytes().to_vec()))
            .collect();
        leaves.sort();
        leaves
    };
    let before = leaves(&first);
    assert_eq!(before.len(), 2);
    let rotated = tokio::process::Command::new(support::meshca_binary())
        .args(["rotate", "leaves", "--admin"])
        .arg(daemon.admin().to_string())
        .arg("--token-file")
        .arg(dir.path().join("admin-token"))
        .env_remove("MESHCA_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    // Both renewals arrive on the same stream (one message, or one per renewal).
    let renewed = tokio::time::timeout(PATIENCE, async {
        loop {
            let context = stream.next().await.unwrap().unwrap();
            let now = leaves(&context);
            if now.iter().zip(&before).all(|(new, old)| new.1 != old.1) {
                return now;
            }
        }
    })
    .await
    .expect("the renewed SVIDs on the open stream");
    assert_eq!(
        renewed.iter().map(|l| &l.0).collect::<Vec<_>>(),
        before.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    // The sources follow too, and the renewed SVIDs still make an mTLS connection.
    let new_server_leaf = renewed
        .iter()
        .find(|l| l.0 == spiffe_id("web/server"))
        .unwrap();
    eventually(
        PATIENCE,
        "the server's X509Source to hold the renewed SVID",
        || async { server.svid().unwrap().leaf().as_bytes().to_vec() },
        |leaf| *leaf == new_server_leaf.1,
    )
    .await;
    mtls(&server, &client_source, &root).await;

    assert_eq!(
        metric(
            &daemon,
            "meshca_workload_api_refusals_total{reason=\"no_entry\"}"
        )
        .await,
        0.0
    );
    assert!(metric(&daemon, "meshca_workload_api_x509_svids_sent_total").await >= 8.0);
    assert!(metric(&daemon, "meshca_workload_api_streams_open").await >= 3.0);
    server.shutdown().await;
    client_source.shutdown().await;
    drop(stream);
    // A stream whose caller went away gives its slot back (the stream has no task of its own:
    // it is dropped with the HTTP/2 stream).
    eventually(
        PATIENCE,
        "every stream's slot to be given back once its caller went away",
        || async { metric(&daemon, "meshca_workload_api_streams_open").await },
        |open| *open == 0.0,
    )
    .await;
    // SIGTERM drains the Workload API with the rest.
    assert!(daemon.terminate().success(), "{}", daemon.tail(20));
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

fn chain_of(svid: &spiffe::X509Svid) -> CertificateChain {
    CertificateChain::new(
        svid.cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect(),
    )
    .unwrap()
}

/// An mTLS connection over loopback TCP: the server presents the `server` source's SVID and
/// requires a client certificate chaining to `root`; the client presents the `client`
/// source's SVID and accepts the server only with its SPIFFE ID. Each side checks the other's.
async fn mtls(server: &spiffe::X509Source, client: &spiffe::X509Source, root: &TrustBundle) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_svid = server.svid().unwrap();
    let client_svid = client.svid().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in root.roots() {
        roots.add(certificate.clone()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain_of(&server_svid).certificates().to_vec(),
            key_of(&server_svid),
        )
        .unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            expected: spiffe_id("web/server"),
            root: root.clone(),
            provider,
        }))
        .with_client_auth_cert(
            chain_of(&client_svid).certificates().to_vec(),
            key_of(&client_svid),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let serving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let peer_id = CertificateInfo::parse(&peer).unwrap().uri_sans;
        let mut line = vec![0u8; 5];
        tls.read_exact(&mut line).await.unwrap();
        tls.write_all(b"hello ").await.unwrap();
        tls.write_all(peer_id[0].as_bytes()).await.unwrap();
        tls.shutdown().await.unwrap();
        (line, peer_id)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("workload.invalid").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    let (line, peer_id) = serving.await.unwrap();
    assert_eq!(line, b"hello");
    assert_eq!(
        peer_id,
        [spiffe_id("web/client")],
        "the server saw the client's SPIFFE ID"
    );
    assert_eq!(answer, format!("hello {}", spiffe_id("web/client")));
}

fn key_of(svid: &spiffe::X509Svid) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ))
}

/// The generated tonic client on the socket.
async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(support::unix_channel(socket).await)
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// Run as the other-uid client (this binary under `setpriv`): one FetchX509SVID call with the
/// header, its outcome printed for the parent.
async fn child(socket: PathBuf) {
    let outcome = match raw_client(&socket)
        .await
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
    {
        Ok(mut stream) => match stream.get_mut().message().await {
            Ok(Some(response)) => format!("svids={}", response.svids.len()),
            Ok(None) => "ended".to_owned(),
            Err(status) => format!("code={:?} {}", status.code(), status.message()),
        },
        Err(status) => format!("code={:?} {}", status.code(), status.message()),
    };
    println!("CHILD-OUTCOME {outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_the_header_or_an_entry_are_refused_before_anything_is_issued() {
    if let Some(socket) = std::env::var_os(CHILD_SOCKET) {
        return child(PathBuf::from(socket)).await;
    }
    let dir = socket_dir();
    let socket = dir.path().join("workload-api.sock");
    let (uid, _) = me();
    assert_ne!(uid, NOBODY);
    let mut daemon = start(
        dir.path(),
        &socket,
        &[("web/me", vec![format!("unix:uid:{uid}")], "")],
    );
    wait_for_socket(&mut daemon, &socket).await;
    let mut client = raw_client(&socket).await;

    // No header: INVALID_ARGUMENT, on both X.509 methods.
    let refused = client.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("workload.spiffe.io"),
        "{refused:?}"
    );
    let refused = client
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let mut wrong = tonic::Request::new(X509svidRequest {});
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "yes".parse().unwrap());
    let refused = client.fetch_x509svid(wrong).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // JWT-SVIDs are off (jwtSvid.enabled: false): UNIMPLEMENTED, saying so.
    let refused = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["vault".to_owned()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert!(
        refused.message().contains("jwtSvid.enabled is false"),
        "{refused:?}"
    );

    // Another uid, matching no entry: PERMISSION_DENIED.
    let output = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".to_owned(),
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "callers_without_the_header_or_an_entry_are_refused_before_anything_is_issued",
            "--nocapture",
        ])
        .env(CHILD_SOCKET, &socket)
        .output()
        .expect("setpriv (util-linux) runs the client under another uid; needs root");
    let said = String::from_utf8_lossy(&output.stdout);
    let outcome = said
        .lines()
        .find_map(|l| l.strip_prefix("CHILD-OUTCOME "))
        .unwrap_or_else(|| {
            panic!(
                "the uid-{NOBODY} client said nothing: {said}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(
        outcome.starts_with("code=PermissionDenied")
            && outcome.contains(&format!("unix:uid:{NOBODY}")),
        "{outcome}"
    );

    // Nothing was issued for any of them.
    let issued = "meshca_certificates_issued_total{provider=\"tresor\"}";
    assert_eq!(metric(&daemon, issued).await, 0.0);
    for (reason, count) in [
        ("missing_header", 3.0),
        ("no_entry", 1.0),
        ("unimplemented", 1.0),
    ] {
        let sample = format!("meshca_workload_api_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&daemon, &sample).await, count, "{reason}");
    }
    assert_eq!(
        metric(&daemon, "meshca_workload_api_streams_total").await,
        0.0
    );

    // The entry's own uid is served (the refusals were not a broken server).
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert_eq!(response.svids.len(), 1);
    assert_eq!(response.svids[0].spiffe_id, spiffe_id("web/me"));
    eventually_ok(PATIENCE, "one certificate issued", || async {
        match metric(&daemon, issued).await {
            1.0 => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

/// The authorities of the trust domain's bundle in a FetchX509Bundles message.
fn authorities(bundles: &spiffe::X509BundleSet) -> Vec<Vec<u8>> {
    let trust_domain = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    assert_eq!(bundles.len(), 1, "one trust domain");
    bundles
        .get(&trust_domain)
        .expect("the trust domain's bundle")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_stream_carries_extra_roots_and_both_roots_of_a_rotation() {
    let dir = socket_dir();
    let socket = dir.path().join("workload-api.sock");
    let ca_dir = dir.path().join("ca");
    let extra = support::TestCa::new("another cluster");
    let extra_pem = dir.path().join("extra-root.pem");
    std::fs::write(&extra_pem, extra.root_pem()).unwrap();
    let (uid, _) = me();
    let mut daemon = start_with(
        dir.path(),
        &socket,
        &[("web/me", vec![format!("unix:uid:{uid}")], "")],
        MeshcaServe::builder()
            .args(support::daemon::rotation_flags(&ca_dir))
            .set(&format!("extraTrustedRoots={}", extra_pem.display())),
    );
    wait_for_socket(&mut daemon, &socket).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .unwrap();
    let mut stream = client.stream_x509_bundles().await.unwrap();
    let old_root = root(&ca_dir).roots()[0].to_vec();
    let first = authorities(&stream.next().await.unwrap().unwrap());
    assert_eq!(first, [old_root.clone(), extra.root().to_vec()]);

    // Stage 1 of a root rotation: the new root joins the bundle, on the same stream.
    let started = support::daemon::rotate_root(&ca_dir, &[], "start");
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let during = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a new bundle message after `meshca rotate root start`")
        .unwrap()
        .unwrap();
    let during = authorities(&during);
    assert_eq!(during.len(), 3, "old root, new root, extra root");
    assert!(during.contains(&old_root) && during.contains(&extra.root().to_vec()));
    assert!(metric(&daemon, "meshca_workload_api_x509_bundle_messages_total").await >= 2.0);
}
