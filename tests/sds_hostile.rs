//! The SDS server under hostile callers (issue #16, items 5 and 6): what a caller sends is
//! bounded, unauthenticated callers hold nothing, one identity cannot take every stream, idle
//! connections are closed on every listener kind. Raw TCP/TLS/Unix connections and a raw gRPC
//! codec where tonic's client is too polite to misbehave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BufMut;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use meshca::sds::convert::SECRET_TYPE_URL;
use meshca::sds::{
    AuthMode, MtlsSettings, PATH_STREAM, SdsCodec, SdsSettings, TokenAuthenticator, TokenError,
};
use meshca_provider::{SpiffeId, TrustDomain};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const SERVER_NAME: &str = "meshca.meshca-system.cluster.local";

fn setup() -> Arc<TestSource> {
    TestSource::new(Arc::new(TestCa::new("hostile")))
}

fn mtls_settings() -> SdsSettings {
    let mut settings = SdsSettings::tcp(
        "127.0.0.1:0".parse().unwrap(),
        AuthMode::Mtls(MtlsSettings::new(&TrustDomain::default())),
    );
    settings.limits.drain_timeout = Duration::from_secs(2);
    settings
}

/// A TLS channel to `sds` presenting a certificate for `identity`, issued by the source's CA.
/// A polite mTLS client for `identity` opens a stream and gets its first response.
async fn served_over_mtls(sds: &RunningSds, source: &TestSource, identity: &SpiffeId) {
    let ch = mtls_channel(sds, source, identity).await;
    SotwClient::open(ch, None, &["default"])
        .await
        .unwrap()
        .next()
        .await
        .unwrap();
}

async fn mtls_channel(sds: &RunningSds, source: &TestSource, identity: &SpiffeId) -> Channel {
    let client = source.ca().issue(identity, Duration::from_secs(600));
    Endpoint::from_shared(format!("https://{}", sds.tcp.unwrap()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(source.ca().bundle().to_pem()))
                .domain_name(SERVER_NAME)
                .identity(Identity::from_pem(
                    client.chain.to_pem(),
                    client.key.private_key_pem().as_bytes(),
                )),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_certificate_of_another_trust_domain_is_refused_and_counted() {
    let source = setup();
    let sds = RunningSds::start(mtls_settings(), source.clone()).await;
    // Signed by a CA meshca trusts (as a root from extraTrustedRoots would be), but the
    // identity is in a trust domain meshca does not serve.
    let other = TrustDomain::new("other.example").unwrap();
    let foreign = SpiffeId::new(other, "ns", "client").unwrap();
    let ch = mtls_channel(&sds, &source, &foreign).await;
    let issued_before = source.issued();
    for names in [
        &["default"][..],
        &["spiffe://other.example/ns/ns/sa/client"][..],
    ] {
        let status = SotwClient::open(ch.clone(), None, names)
            .await
            .err()
            .expect("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("other.example") && status.message().contains("trustDomain"),
            "{status:?}"
        );
    }
    let status = SecretDiscoveryServiceClient::new(ch)
        .fetch_secrets(request(None, &["default"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        source.issued(),
        issued_before,
        "nothing issued for a foreign identity"
    );
    assert_eq!(sds.stats.snapshot().unauthenticated, 3);

    // A TLS client without a certificate is refused in the handshake: counted too.
    let mut tcp = tokio::net::TcpStream::connect(sds.tcp.unwrap())
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(&source, None)));
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    if let Ok(mut tls) = connector.connect(name, &mut tcp).await {
        // TLS 1.3: the server's refusal arrives after the client's handshake is done.
        let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(PATIENCE, tls.read(&mut buf)).await;
    }
    // The server bumps the counter after closing the connection.
    eventually(
        PATIENCE,
        "the refused handshake to be counted",
        || async { sds.stats.snapshot().unauthenticated },
        |unauthenticated| *unauthenticated == 4,
    )
    .await;
}

/// Tokens `a` and `b` (two identities); anything else is rejected.
struct TwoTokens;

#[async_trait]
impl TokenAuthenticator for TwoTokens {
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, TokenError> {
        match token {
            "a" => Ok(id("ns/a")),
            "b" => Ok(id("ns/b")),
            _ => Err(TokenError::Rejected {
                reason: "not a known token".to_owned(),
            }),
        }
    }
}

/// Opens a stream with `token`; the first request is sent only if `first` is set.
async fn token_stream(
    ch: &Channel,
    token: Option<&str>,
    first: bool,
) -> Result<
    (
        mpsc::Sender<DiscoveryRequest>,
        tonic::Streaming<DiscoveryResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(4);
    if first {
        tx.send(request(None, &["default"])).await.unwrap();
    }
    let mut call = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        call.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut client = SecretDiscoveryServiceClient::new(ch.clone());
    let call = client.stream_secrets(call);
    let mut inbound = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("an answer in time")?
        .into_inner();
    if first {
        tokio::time::timeout(PATIENCE, inbound.message())
            .await
            .expect("a response in time")?
            .expect("a response");
    }
    Ok((tx, inbound))
}

#[tokio::test]
async fn unauthenticated_streams_take_no_slot_and_each_identity_has_its_own_limit() {
    let source = setup();
    let mut settings = SdsSettings::tcp(
        "127.0.0.1:0".parse().unwrap(),
        AuthMode::Token(Arc::new(TwoTokens)),
    );
    settings.limits.max_streams = 3;
    settings.limits.max_streams_per_identity = 2;
    // Long enough that a slot held while waiting for a first request would outlast the test.
    settings.limits.first_request_timeout = Duration::from_secs(120);
    let sds = RunningSds::start(settings, source).await;
    let ch = channel(&sds.url()).await;

    // Streams without a (valid) credential and without a first request: refused at once,
    // holding nothing.
    for token in [None, Some("forged"), None, Some("forged")] {
        let status = token_stream(&ch, token, false).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(sds.stats.snapshot().unauthenticated, 4);
    assert_eq!(sds.stats.snapshot().streams_open, 0);

    // Identity a gets two streams; its third is refused, naming the setting.
    let _a1 = token_stream(&ch, Some("a"), true).await.unwrap();
    let _a2 = token_stream(&ch, Some("a"), true).await.unwrap();
    let status = token_stream(&ch, Some("a"), true)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("sds.maxStreamsPerIdentity")
            && status
                .message()
                .contains("spiffe://cluster.local/ns/ns/sa/a"),
        "{status:?}"
    );
    // Identity b is not starved by a; the global limit still holds.
    let _b1 = token_stream(&ch, Some("b"), true).await.unwrap();
    let status = token_stream(&ch, Some("b"), true)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("sds.maxStreams"), "{status:?}");
    assert_eq!(sds.stats.snapshot().streams_open, 3);
    assert_eq!(sds.stats.snapshot().rejected, 2);
}

/// Waits until the server closes `stream` (EOF or an error), reading whatever it sends.
async fn closed_by_server(mut stream: impl tokio::io::AsyncRead + Unpin) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes a connection that sends no HTTP/2 preface");
}

const PARTIAL_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

#[tokio::test]
async fn connections_that_send_no_preface_are_closed_on_tcp_and_unix_sockets() {
    let source = setup();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let mut settings = dev_settings();
    settings.unix = Some(socket.clone());
    settings.limits.preface_timeout = Duration::from_millis(200);
    let sds = RunningSds::start(settings, source).await;
    let tcp = sds.tcp.unwrap();

    closed_by_server(tokio::net::TcpStream::connect(tcp).await.unwrap()).await;
    let mut partial = tokio::net::TcpStream::connect(tcp).await.unwrap();
    partial.write_all(PARTIAL_PREFACE).await.unwrap();
    closed_by_server(partial).await;
    closed_by_server(tokio::net::UnixStream::connect(&socket).await.unwrap()).await;
    let mut partial = tokio::net::UnixStream::connect(&socket).await.unwrap();
    partial.write_all(PARTIAL_PREFACE).await.unwrap();
    closed_by_server(partial).await;

    // A client that sends its preface in time is served as before.
    SotwClient::open(channel(&sds.url()).await, Some(node("ns/a")), &["default"])
        .await
        .unwrap()
        .next()
        .await
        .unwrap();
}

/// A rustls client configuration trusting the source's CA, with a client certificate for
/// `identity` if given.
fn tls_client(source: &TestSource, identity: Option<&SpiffeId>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(source.ca().root().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => {
            let served = source.ca().issue(identity, Duration::from_secs(600));
            let key = rustls_pki_types::PrivateKeyDer::Pkcs8(served.key.pkcs8_der().clone_key());
            builder
                .with_client_auth_cert(served.chain.certificates().to_vec(), key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

#[tokio::test]
async fn tls_connections_are_closed_when_the_handshake_or_the_preface_does_not_come() {
    let source = setup();
    let mut settings = mtls_settings();
    settings.limits.handshake_timeout = Duration::from_millis(300);
    settings.limits.preface_timeout = Duration::from_millis(200);
    let sds = RunningSds::start(settings, source.clone()).await;
    let address = sds.tcp.unwrap();

    // No ClientHello at all, then half of one.
    closed_by_server(tokio::net::TcpStream::connect(address).await.unwrap()).await;
    let mut half = tokio::net::TcpStream::connect(address).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    closed_by_server(half).await;
    eventually(
        PATIENCE,
        "abandoned handshakes to be counted",
        || async { sds.stats.snapshot().unauthenticated },
        |unauthenticated| *unauthenticated == 2,
    )
    .await;
    let counted = sds.stats.snapshot();
    assert_eq!(
        (counted.handshakes_timed_out, counted.handshakes_shed),
        (2, 0),
        "both timed out, counted apart from shed handshakes"
    );

    // A complete handshake with a valid client certificate, then silence.
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_client(&source, Some(&id("ns/a")))));
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let tls = connector.connect(name.clone(), tcp).await.unwrap();
    closed_by_server(tls).await;
    // The same with part of the preface.
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(PARTIAL_PREFACE).await.unwrap();
    closed_by_server(tls).await;

    // A real client is still served.
    served_over_mtls(&sds, &source, &id("ns/a")).await;
}

/// Issue #21: TLS handshakes take turns at the CPU (8 steps per CPU at a time), but only
/// while there are bytes to process: 200 connections that send nothing and 200 that send their
/// ClientHello, get the server's answer and then stall hold no turn, and a polite mTLS client
/// still completes its handshake and gets its certificate well within `handshakeTimeout`.
#[tokio::test]
async fn idle_and_stalled_handshakes_do_not_hold_back_a_polite_client() {
    let source = setup();
    let settings = mtls_settings();
    let handshake_timeout = settings.limits.handshake_timeout;
    let sds = RunningSds::start(settings, source.clone()).await;
    let address = sds.tcp.unwrap();

    let client = Arc::new(tls_client(&source, Some(&id("ns/a"))));
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let (idle, stalled) =
        support::hostile::idle_and_stalled_handshakes(address, &client, &name, 200).await;

    let started = std::time::Instant::now();
    served_over_mtls(&sds, &source, &id("ns/a")).await;
    let took = started.elapsed();
    assert!(
        took < handshake_timeout / 2,
        "the polite client took {took:?}"
    );
    assert_eq!(sds.stats.snapshot().handshakes_shed, 0, "nobody was shed");
    drop((idle, stalled));
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_when_accepted() {
    let source = setup();
    let mut settings = dev_settings();
    settings.limits.max_connections = 2;
    settings.limits.preface_timeout = Duration::from_secs(120);
    let sds = RunningSds::start(settings, source).await;
    let address = sds.tcp.unwrap();
    let first = tokio::net::TcpStream::connect(address).await.unwrap();
    let second = tokio::net::TcpStream::connect(address).await.unwrap();
    // Accepted in order: the third is over the limit.
    closed_by_server(tokio::net::TcpStream::connect(address).await.unwrap()).await;

    // Once the first two are gone, a client is served again (the server notices the closes
    // asynchronously: retry until it has, within PATIENCE).
    drop((first, second));
    eventually_ok(
        PATIENCE,
        "a connection to be served after others closed",
        || async {
            let ch = Endpoint::from_shared(sds.url())
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            SecretDiscoveryServiceClient::new(ch)
                .fetch_secrets(request(Some(node("ns/a")), &["default"]))
                .await
                .map(drop)
                .map_err(|status| status.to_string())
        },
    )
    .await;
}

/// Sends raw bytes as gRPC messages; decodes responses as SDS does.
#[derive(Default)]
struct RawCodec(SdsCodec<DiscoveryRequest, DiscoveryResponse>);

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = DiscoveryResponse;
    type Encoder = RawEncoder;
    type Decoder = <SdsCodec<DiscoveryRequest, DiscoveryResponse> as Codec>::Decoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}

async fn raw_call(ch: Channel, path: &'static str, messages: Vec<Vec<u8>>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    let request = tonic::Request::new(tokio_stream::iter(messages));
    let outcome =
        tokio::time::timeout(PATIENCE, grpc.streaming(request, path, RawCodec::default()))
            .await
            .expect("an answer in time");
    match outcome {
        Err(status) => status,
        Ok(response) => {
            let mut inbound = response.into_inner();
            loop {
                match tokio::time::timeout(PATIENCE, inbound.message())
                    .await
                    .expect("an answer in time")
                {
                    Ok(Some(_)) => {}
                    Ok(None) => return tonic::Status::ok(""),
                    Err(status) => return status,
                }
            }
        }
    }
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source).await;
    let ch = channel(&sds.url()).await;
    // Field 1 (version_info) as a length-delimited field claiming more bytes than follow.
    let garbage = vec![0x0a, 0xff, 0xff, 0x03, 0x01];
    let status = raw_call(ch.clone(), PATH_STREAM, vec![garbage.clone()]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("DiscoveryRequest"), "{status:?}");
    // Mid-stream: a good first request, then garbage.
    let good = prost::Message::encode_to_vec(&request(Some(node("ns/a")), &["default"]));
    let status = raw_call(ch.clone(), PATH_STREAM, vec![good, garbage.clone()]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(sds.stats.snapshot().rejected, 2);
    // Unary FetchSecrets.
    let status = raw_call(
        ch,
        "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
        vec![garbage],
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn oversized_node_ids_and_metadata_are_refused_before_use() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source.clone()).await;
    let ch = channel(&sds.url()).await;
    let huge_id = Node {
        id: format!("ns/{}", "a".repeat(200 * 1024)),
        ..Node::default()
    };
    let status = SotwClient::open(ch.clone(), Some(huge_id), &["default"])
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("node.id") && status.message().contains("1024"),
        "{status:?}"
    );
    assert!(status.message().len() < 1024, "the id is not echoed");

    let fields: HashMap<String, Value> = (0..2000)
        .map(|i| {
            (
                format!("LABEL_{i}"),
                Value {
                    kind: Some(Kind::StringValue("x".repeat(64))),
                },
            )
        })
        .collect();
    let mut big = node("ns/a");
    big.metadata = Some(Struct { fields });
    let status = SotwClient::open(ch.clone(), Some(big), &["default"])
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("65536"), "{status:?}");
    assert_eq!(source.issued(), 0, "nothing issued");
    assert_eq!(sds.stats.snapshot().rejected, 2);

    // A long but reasonable Istio-style id with metadata naming the identity is fine.
    let mut istio = node(&format!(
        "sidecar~10.0.0.1~{}.bookstore~bookstore.svc.cluster.local",
        "p".repeat(253)
    ));
    istio.metadata = Some(Struct {
        fields: [("NAMESPACE", "ns"), ("SERVICE_ACCOUNT", "a")]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_owned())),
                    },
                )
            })
            .collect(),
    });
    SotwClient::open(ch, Some(istio), &["default"])
        .await
        .unwrap()
        .next()
        .await
        .unwrap();
}

async fn delta_status(ch: &Channel, first: DeltaDiscoveryRequest) -> tonic::Status {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    let mut client = SecretDiscoveryServiceClient::new(ch.clone());
    let call = client.delta_secrets(ReceiverStream::new(rx));
    match tokio::time::timeout(PATIENCE, call).await.expect("in time") {
        Err(status) => status,
        Ok(response) => {
            let mut inbound = response.into_inner();
            match tokio::time::timeout(PATIENCE, inbound.message())
                .await
                .expect("in time")
            {
                Err(status) => status,
                Ok(message) => panic!("accepted: {message:?}"),
            }
        }
    }
}

#[tokio::test]
async fn delta_initial_versions_and_unsubscriptions_count_against_the_name_limit() {
    let source = setup();
    let mut settings = dev_settings();
    settings.limits.max_names_per_request = 4;
    let sds = RunningSds::start(settings, source).await;
    let ch = channel(&sds.url()).await;
    let base = DeltaDiscoveryRequest {
        node: Some(node("ns/a")),
        type_url: SECRET_TYPE_URL.to_owned(),
        resource_names_subscribe: vec!["default".to_owned()],
        ..DeltaDiscoveryRequest::default()
    };
    let status = delta_status(
        &ch,
        DeltaDiscoveryRequest {
            initial_resource_versions: (0..5).map(|i| (format!("n{i}"), "v".to_owned())).collect(),
            ..base.clone()
        },
    )
    .await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("sds.maxNamesPerRequest"),
        "{status:?}"
    );
    let status = delta_status(
        &ch,
        DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["default".to_owned(), "ROOTCA".to_owned()],
            resource_names_unsubscribe: (0..3).map(|i| format!("n{i}")).collect(),
            ..base.clone()
        },
    )
    .await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(sds.stats.snapshot().rejected, 2);
}

#[tokio::test]
async fn a_nack_storm_is_one_nack() {
    let source = setup();
    let sds = RunningSds::start(dev_settings(), source).await;
    let mut stream = SotwClient::open(channel(&sds.url()).await, Some(node("ns/a")), &["default"])
        .await
        .unwrap();
    let first = stream.next().await.unwrap();
    let detail = "\n forged log line \u{1b}[31m ".repeat(4096);
    for _ in 0..50 {
        stream.nack(&first, &["default"], &detail).await;
    }
    // Changing the names with the same nonce is answered: everything before was read.
    stream
        .send(DiscoveryRequest {
            response_nonce: first.nonce.clone(),
            version_info: first.version_info.clone(),
            ..request(None, &["default", "ROOTCA"])
        })
        .await;
    let second = stream.next().await.unwrap();
    assert_eq!(second.resources.len(), 2);
    let stats = sds.stats.snapshot();
    assert_eq!(
        stats.nacks, 1,
        "one NACK per response, however often it is sent"
    );
    assert_eq!(
        stats.acks, 0,
        "a response already NACKed is not ACKed by a later request"
    );
}

#[tokio::test]
async fn every_refusal_of_a_caller_is_counted_as_unauthenticated() {
    use std::os::unix::fs::MetadataExt;
    // Development mode: no node, or a node naming no identity.
    let sds = RunningSds::start(dev_settings(), setup()).await;
    let ch = channel(&sds.url()).await;
    for bad in [None, Some(node("sidecar~1.2.3.4"))] {
        let status = SotwClient::open(ch.clone(), bad, &["default"])
            .await
            .err()
            .expect("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let status = SecretDiscoveryServiceClient::new(ch)
        .fetch_secrets(request(None, &["default"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(sds.stats.snapshot().unauthenticated, 3);

    // Unix peer credentials: a uid nobody mapped.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let my_uid = std::fs::metadata("/proc/self").unwrap().uid();
    let mut map = meshca::sds::UnixPeerMap::default();
    map.insert(my_uid.wrapping_add(1), id("ns/a"));
    let sds = RunningSds::start(SdsSettings::unix(&socket, AuthMode::UnixPeer(map)), setup()).await;
    let status = SotwClient::open(
        unix_channel(&socket).await,
        Some(node("ns/a")),
        &["default"],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(sds.stats.snapshot().unauthenticated, 1);
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a connection, but no stream.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn connections_without_a_stream_are_closed_after_the_idle_timeout() {
    let source = setup();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let mut settings = dev_settings();
    settings.unix = Some(socket.clone());
    settings.limits.connection_idle_timeout = Duration::from_millis(300);
    let sds = RunningSds::start(settings, source.clone()).await;

    // A preface and settings, then nothing (keepalive pings would take 40 s to notice).
    let mut tcp = tokio::net::TcpStream::connect(sds.tcp.unwrap())
        .await
        .unwrap();
    tcp.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    closed_by_server(tcp).await;
    let mut unix = tokio::net::UnixStream::connect(&socket).await.unwrap();
    unix.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    closed_by_server(unix).await;

    // A connection whose stream stays open outlives the timeout many times over: the renewal
    // is pushed on the same stream.
    let mut stream = SotwClient::open(channel(&sds.url()).await, Some(node("ns/a")), &["default"])
        .await
        .unwrap();
    let first = stream.next().await.unwrap();
    stream.ack(&first, &["default"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    source.renew(&id("ns/a"), meshca::sds::Purpose::Default);
    let pushed = stream
        .next()
        .await
        .expect("the stream outlived the idle timeout");
    assert_ne!(pushed.version_info, first.version_info);
}

/// An HTTP/2 frame header: length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A StreamSecrets request header block (HPACK, static-table names, no Huffman).
fn stream_secrets_headers() -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x04); // :path, literal value
    block.push(u8::try_from(PATH_STREAM.len()).unwrap());
    block.extend_from_slice(PATH_STREAM.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b'x']); // :authority x
    block.extend_from_slice(&[0x0f, 0x10, 16]); // content-type (static index 31)
    block.extend_from_slice(b"application/grpc");
    block
}

#[tokio::test]
async fn one_connection_cannot_open_more_streams_than_the_per_connection_limit() {
    let sds = RunningSds::start(dev_settings(), setup()).await;
    let mut tcp = tokio::net::TcpStream::connect(sds.tcp.unwrap())
        .await
        .unwrap();
    let limit = meshca::sds::MAX_STREAMS_PER_CONNECTION;
    let headers = stream_secrets_headers();
    let mut out = PREFACE_AND_SETTINGS.to_vec();
    // Streams that never send a request: each waits for one (development mode), holding
    // no slot; the connection may hold only `limit` of them.
    for i in 0..=limit {
        out.extend(frame(0x1, 0x4, 2 * i + 1, &headers)); // HEADERS, END_HEADERS
    }
    tcp.write_all(&out).await.unwrap();
    let refused = tokio::time::timeout(PATIENCE, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, stream) = (
                    buf[3],
                    u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                );
                let payload: Vec<u8> = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                // RST_STREAM with REFUSED_STREAM (7).
                if kind == 0x3 && payload == [0, 0, 0, 7] {
                    return stream;
                }
            }
        }
    })
    .await
    .expect("a stream beyond the per-connection limit is refused");
    assert_eq!(refused, 2 * limit + 1, "the first stream over the limit");
}

/// Issue #21, the restart gap: when the drain starts the listener closes at once, while the
/// open connections still drain, so a proxy reconnecting meanwhile is refused at once (and
/// backs off, or reaches the new process) rather than left in an accept queue nobody serves.
#[tokio::test]
async fn the_listener_closes_when_the_drain_starts_not_when_it_ends() {
    let mut settings = dev_settings();
    settings.limits.drain_timeout = Duration::from_secs(3);
    let sds = RunningSds::start(settings, setup()).await;
    let address = sds.tcp.unwrap();
    // An HTTP/2 connection that never reads again: it does not answer the drain's PING, so the
    // drain waits for it until drainTimeout.
    let mut held = tokio::net::TcpStream::connect(address).await.unwrap();
    held.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    drop(tokio::net::TcpStream::connect(address).await.unwrap());

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(sds.stop());
    // Until the listener closes connects succeed (one caught in its closing may be reset);
    // from then on they are refused.
    while tokio::net::TcpStream::connect(address).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "connections still accepted after the drain started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = tokio::net::TcpStream::connect(address).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    assert!(
        !stopping.is_finished(),
        "refused while the drain still waits for the open connection"
    );
    stopping.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the drain waited for the connection"
    );
    drop(held);
}
