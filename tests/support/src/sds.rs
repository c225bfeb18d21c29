//! Test support for the SDS server: an in-memory CA (root + intermediate, rcgen), a
//! [`SecretSource`] over it whose renewals are forced by the test, a server harness and gRPC
//! client helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use envoy_types::pb::envoy::config::core::v3::{Node, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshca::sds::convert::SECRET_TYPE_URL;
use meshca::sds::{
    BoundSdsServer, BundleAcks, Purpose, SdsError, SdsServer, SdsSettings, SdsStats, SecretSource,
    ServedCertificate, SourceError,
};
use meshca_provider::{CertificateChain, CertificateInfo, LeafKey, SpiffeId, TrustBundle};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::PATIENCE;
use crate::ca::TestCa;

type CertificateSender = watch::Sender<Arc<ServedCertificate>>;

/// A [`SecretSource`] over a [`TestCa`]: issues on first use with a short lifetime; the test
/// forces renewals with [`TestSource::renew`].
pub struct TestSource {
    ca: Arc<TestCa>,
    lifetime: Duration,
    certificates: Mutex<HashMap<(SpiffeId, Purpose), CertificateSender>>,
    bundle: watch::Sender<Arc<TrustBundle>>,
    issued: AtomicUsize,
}

impl TestSource {
    pub fn new(ca: Arc<TestCa>) -> Arc<Self> {
        let bundle = watch::Sender::new(Arc::new(ca.bundle()));
        Arc::new(Self {
            ca,
            lifetime: Duration::from_secs(600),
            certificates: Mutex::default(),
            bundle,
            issued: AtomicUsize::new(0),
        })
    }

    pub fn ca(&self) -> &Arc<TestCa> {
        &self.ca
    }

    /// Issues a new certificate for a key someone holds and publishes it.
    pub fn renew(&self, identity: &SpiffeId, purpose: Purpose) -> Arc<ServedCertificate> {
        let fresh = Arc::new(self.ca.issue(identity, self.lifetime));
        self.issued.fetch_add(1, Ordering::SeqCst);
        self.publish(identity, purpose, fresh.clone());
        fresh
    }

    /// Publishes an already issued certificate for a key someone holds (so a benchmark can
    /// time the push without the issuance).
    pub fn publish(
        &self,
        identity: &SpiffeId,
        purpose: Purpose,
        certificate: Arc<ServedCertificate>,
    ) {
        let certificates = self.certificates.lock().unwrap();
        certificates
            .get(&(identity.clone(), purpose))
            .expect("publish() of a key nobody asked for")
            .send_replace(certificate);
    }

    /// The certificate currently published for a key, if it was ever issued.
    pub fn current(&self, identity: &SpiffeId, purpose: Purpose) -> Option<Arc<ServedCertificate>> {
        let certificates = self.certificates.lock().unwrap();
        certificates
            .get(&(identity.clone(), purpose))
            .map(|s| s.borrow().clone())
    }

    /// Publishes a new trust bundle.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.send_replace(Arc::new(bundle));
    }

    /// Certificates issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SecretSource for TestSource {
    async fn certificate(
        &self,
        identity: &SpiffeId,
        purpose: Purpose,
    ) -> Result<watch::Receiver<Arc<ServedCertificate>>, SourceError> {
        let mut certificates = self.certificates.lock().unwrap();
        let sender = certificates
            .entry((identity.clone(), purpose))
            .or_insert_with(|| {
                self.issued.fetch_add(1, Ordering::SeqCst);
                watch::Sender::new(Arc::new(self.ca.issue(identity, self.lifetime)))
            });
        Ok(sender.subscribe())
    }

    fn trust_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }
}

/// A running SDS server, stopped (drained) by [`RunningSds::stop`] or on drop.
pub struct RunningSds {
    pub tcp: Option<SocketAddr>,
    pub unix: Option<PathBuf>,
    pub stats: Arc<SdsStats>,
    pub acks: Arc<BundleAcks>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), SdsError>>>,
}

impl RunningSds {
    pub async fn start(settings: SdsSettings, source: Arc<dyn SecretSource>) -> Self {
        let bound: BoundSdsServer = SdsServer::new(settings).unwrap().bind().await.unwrap();
        let (tx, rx) = oneshot::channel();
        let tcp = bound.tcp_address();
        let unix = bound.unix_path().map(Path::to_owned);
        let stats = bound.stats();
        let acks = bound.bundle_acks();
        let task = tokio::spawn(bound.serve(source, async {
            let _ = rx.await;
        }));
        Self {
            tcp,
            unix,
            stats,
            acks,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Drains and waits for the server to return.
    pub async fn stop(mut self) -> Result<(), SdsError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("SDS server did not stop")
            .unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.tcp.unwrap())
    }
}

impl Drop for RunningSds {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn dev_settings() -> SdsSettings {
    SdsSettings::tcp(
        "127.0.0.1:0".parse().unwrap(),
        meshca::sds::AuthMode::Development,
    )
}

pub async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

/// An Envoy node whose id is `<ns>/<sa>`, as development mode reads it.
pub fn node(short: &str) -> Node {
    Node {
        id: short.to_owned(),
        cluster: "test".to_owned(),
        ..Node::default()
    }
}

pub fn request(node: Option<Node>, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        ..DiscoveryRequest::default()
    }
}

/// The SDS stream of one proxy through a daemon's outage tests: `default` for
/// `bookstore/bookstore-v2`, every response checked as it arrives (one secret, no expired
/// certificate in its chain at the time it arrived) and ACKed like a proxy would.
pub struct CheckedStream {
    stream: SotwClient,
    /// The responses received so far.
    pub responses: usize,
}

impl CheckedStream {
    /// The resource the stream asks for.
    const NAMES: [&str; 1] = ["default"];

    /// Opens the stream to the development-mode SDS listener at `sds`.
    pub async fn open(sds: SocketAddr) -> Self {
        let stream = SotwClient::open(
            channel(&format!("http://{sds}")).await,
            Some(node("bookstore/bookstore-v2")),
            &Self::NAMES,
        )
        .await
        .unwrap();
        Self {
            stream,
            responses: 0,
        }
    }

    /// The chain of the next response if one comes within `patience`, checked and ACKed.
    /// Panics when the stream ends or a response carries an expired certificate.
    pub async fn next_chain(&mut self, patience: Duration) -> Option<CertificateChain> {
        let response = self.stream.next_within(patience).await?.unwrap();
        let now = SystemTime::now();
        let served = secrets(&response.resources);
        assert_eq!(served.len(), 1, "{served:?}");
        let chain = tls_of(&served[0]).0;
        for certificate in chain.certificates() {
            let info = CertificateInfo::parse(certificate).unwrap();
            assert!(
                info.not_after > now,
                "an SDS response carried {} which expired at {:?}",
                info.subject,
                info.not_after
            );
        }
        self.stream.ack(&response, &Self::NAMES).await;
        self.responses += 1;
        Some(chain)
    }
}

/// A state-of-the-world stream driven by the test.
pub struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    inbound: Streaming<DiscoveryResponse>,
}

impl SotwClient {
    /// Opens a stream and sends the first request (with `node`). Errors are the RPC's status.
    pub async fn open(
        channel: Channel,
        node: Option<Node>,
        names: &[&str],
    ) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(request(node, names)).await.unwrap();
        let mut client = SecretDiscoveryServiceClient::new(channel);
        let inbound = client
            .stream_secrets(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, inbound })
    }

    pub async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    /// The next response, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<DiscoveryResponse, Status> {
        match tokio::time::timeout(PATIENCE, self.inbound.message()).await {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(Status::ok("stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no SDS response within {PATIENCE:?}"),
        }
    }

    /// The next response if one comes within `patience` (`None` if none does), or the status
    /// the stream ended with: for tests that expect silence for a while.
    pub async fn next_within(
        &mut self,
        patience: Duration,
    ) -> Option<Result<DiscoveryResponse, Status>> {
        match tokio::time::timeout(patience, self.inbound.message()).await {
            Ok(Ok(Some(response))) => Some(Ok(response)),
            Ok(Ok(None)) => Some(Err(Status::ok("stream ended"))),
            Ok(Err(status)) => Some(Err(status)),
            Err(_) => None,
        }
    }

    pub async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..request(None, names)
        })
        .await;
    }

    pub async fn nack(&self, response: &DiscoveryResponse, names: &[&str], message: &str) {
        self.send(DiscoveryRequest {
            version_info: String::new(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.to_owned(),
                details: Vec::new(),
            }),
            ..request(None, names)
        })
        .await;
    }
}

/// A delta stream driven by the test.
pub struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    inbound: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    pub async fn open(channel: Channel, node: Node, subscribe: &[&str]) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DeltaDiscoveryRequest {
            node: Some(node),
            type_url: SECRET_TYPE_URL.to_owned(),
            resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
            ..DeltaDiscoveryRequest::default()
        })
        .await
        .unwrap();
        let mut client = SecretDiscoveryServiceClient::new(channel);
        let inbound = client
            .delta_secrets(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, inbound })
    }

    pub async fn send(
        &self,
        ack_of: Option<&DeltaDiscoveryResponse>,
        subscribe: &[&str],
        unsubscribe: &[&str],
    ) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: SECRET_TYPE_URL.to_owned(),
                response_nonce: ack_of.map(|r| r.nonce.clone()).unwrap_or_default(),
                resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
                resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
                ..DeltaDiscoveryRequest::default()
            })
            .await
            .unwrap();
    }

    pub async fn next(&mut self) -> Result<DeltaDiscoveryResponse, Status> {
        match tokio::time::timeout(PATIENCE, self.inbound.message()).await {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(Status::ok("stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no SDS delta response within {PATIENCE:?}"),
        }
    }
}

/// Decodes every resource of a response, checking its type URL.
pub fn secrets(resources: &[Any]) -> Vec<Secret> {
    resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

pub fn secret_named<'a>(secrets: &'a [Secret], name: &str) -> &'a Secret {
    secrets
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no secret named {name}"))
}

fn inline(source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(bytes)) => {
            String::from_utf8(bytes.clone()).unwrap()
        }
        _ => panic!("expected inline bytes"),
    }
}

/// A certificate secret's chain and key.
pub fn tls_of(secret: &Secret) -> (CertificateChain, LeafKey) {
    let Some(secret::Type::TlsCertificate(TlsCertificate {
        certificate_chain,
        private_key,
        ..
    })) = &secret.r#type
    else {
        panic!("{} is not a tls_certificate", secret.name);
    };
    (
        CertificateChain::from_pem(&inline(certificate_chain.as_ref())).unwrap(),
        LeafKey::from_pem(&inline(private_key.as_ref())).unwrap(),
    )
}

/// A validation context secret.
pub fn validation_of(secret: &Secret) -> (TrustBundle, CertificateValidationContext) {
    let Some(secret::Type::ValidationContext(context)) = &secret.r#type else {
        panic!("{} is not a validation_context", secret.name);
    };
    (
        TrustBundle::from_pem(&inline(context.trusted_ca.as_ref())).unwrap(),
        context.clone(),
    )
}

/// Verifies a chain against a bundle with webpki (an independent verifier), for client auth.
pub fn assert_chains_to(chain: &CertificateChain, bundle: &TrustBundle) {
    crate::verify::webpki_verify(
        chain,
        bundle,
        SystemTime::now(),
        crate::verify::Purpose::Client,
    )
    .expect("chain does not verify against the bundle");
}

/// The parsed leaf of a certificate secret, checked to carry `identity` and match its key.
pub fn check_certificate(
    secret: &Secret,
    identity: &SpiffeId,
    bundle: &TrustBundle,
) -> CertificateInfo {
    let (chain, key) = tls_of(secret);
    let info = chain.leaf_info().unwrap();
    assert_eq!(info.uri_sans, vec![identity.to_string()], "{}", secret.name);
    assert!(info.not_after > SystemTime::now());
    let (_, cert) = x509_parser::parse_x509_certificate(chain.leaf()).unwrap();
    assert_eq!(
        cert.public_key().raw,
        key.public_key_spki().as_slice(),
        "{}: key does not match the certificate",
        secret.name
    );
    assert_chains_to(&chain, bundle);
    info
}
