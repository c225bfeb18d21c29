//! The callers: N workloads, each with a client certificate from the CA under test and a few
//! CSRs made before anything is timed; the gRPC driver that sends their CSRs to meshca over
//! mTLS (one HTTP/2 connection per client, the tonic client generated from `proto/`); and the
//! raw `pki/sign` loop that sends the same CSRs straight to OpenBao.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshca::istio::proto::IstioCertificateRequest;
use meshca::istio::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca_provider::x509::pem_block;
use meshca_provider::{
    CertificateChain, CertificateInfo, IssueRequest, KeyType, LeafKey, LeafSpec, SharedProvider,
    SpiffeId, TrustDomain,
};
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::floor::FloorCsr;

/// One simulated workload.
pub(crate) struct Workload {
    pub(crate) identity: SpiffeId,
    /// Its client certificate chain and key, PEM.
    client_chain: String,
    client_key: String,
    /// Its CSRs, PEM (what it sends) and DER.
    pub(crate) csrs_pem: Arc<[String]>,
    pub(crate) csrs_der: Vec<Vec<u8>>,
    /// The CSRs' public keys, in order.
    public_keys: Vec<Vec<u8>>,
}

/// Makes `count` workloads `bench/client-<i>`, each with a client certificate issued by
/// `provider` and `csrs` CSRs for new P-256 keys.
pub(crate) async fn workloads(
    provider: &SharedProvider,
    count: usize,
    csrs: usize,
) -> Vec<Workload> {
    let trust_domain = TrustDomain::default();
    let mut workloads = Vec::with_capacity(count);
    for i in 0..count {
        let identity = SpiffeId::from_short(&format!("bench/client-{i}"), &trust_domain).unwrap();
        let spec = LeafSpec::workload(&identity, &[], Duration::from_secs(3600));
        let client_key = LeafKey::generate(KeyType::P256).unwrap();
        let chain = provider
            .issue(&IssueRequest::generated(&spec, &client_key))
            .await
            .expect("a client certificate");
        let (mut csrs_pem, mut csrs_der, mut public_keys) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..csrs {
            let key = LeafKey::generate(KeyType::P256).unwrap();
            let der = key.csr_der(&spec).unwrap();
            csrs_pem.push(pem_block("CERTIFICATE REQUEST", &der));
            csrs_der.push(der);
            public_keys.push(key.public_key().to_vec());
        }
        workloads.push(Workload {
            identity,
            client_chain: chain.to_pem(),
            client_key: client_key.private_key_pem().to_string(),
            csrs_pem: csrs_pem.into(),
            csrs_der,
            public_keys,
        });
    }
    workloads
}

/// The floor's view of the first `count` workloads' CSRs.
pub(crate) fn floor_csrs(workloads: &[Workload]) -> Vec<FloorCsr> {
    workloads
        .iter()
        .flat_map(|w| w.csrs_der.iter().map(|der| FloorCsr::new(der, &w.identity)))
        .collect()
}

/// A connected caller of meshca's CreateCertificate.
#[derive(Clone)]
pub(crate) struct GrpcClient {
    grpc: IstioCertificateServiceClient<Channel>,
    csrs: Arc<[String]>,
    /// Which workload it is (index into the workloads).
    pub(crate) workload: usize,
}

/// Opens one mTLS HTTP/2 connection per workload to `address`, trusting `roots_pem` for the
/// server's certificate named `server_name`.
pub(crate) async fn connect(
    address: SocketAddr,
    server_name: &str,
    roots_pem: &str,
    workloads: &[Workload],
) -> Vec<GrpcClient> {
    let mut clients = Vec::with_capacity(workloads.len());
    for (i, workload) in workloads.iter().enumerate() {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots_pem))
            .domain_name(server_name)
            .identity(Identity::from_pem(
                &workload.client_chain,
                &workload.client_key,
            ));
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to meshca's Istio CA at {address}: {e}"));
        clients.push(GrpcClient {
            grpc: IstioCertificateServiceClient::new(channel),
            csrs: workload.csrs_pem.clone(),
            workload: i,
        });
    }
    clients
}

impl GrpcClient {
    /// Sends CSR number `n` (modulo its CSRs); returns the chain.
    async fn create(&mut self, n: usize) -> Vec<String> {
        let request = IstioCertificateRequest {
            csr: self.csrs[n % self.csrs.len()].clone(),
            validity_duration: 0,
            metadata: None,
        };
        let response = self
            .grpc
            .create_certificate(request)
            .await
            .unwrap_or_else(|status| panic!("CreateCertificate failed: {status}"));
        response.into_inner().cert_chain
    }

    /// Asks once, untimed, and checks the answer as a caller would: the leaf names exactly
    /// this workload and certifies the CSR's key, and the chain ends with a root of `bundle`.
    pub(crate) async fn check(&mut self, workloads: &[Workload], roots_pem: &str) {
        let chain = self.create(0).await;
        let workload = &workloads[self.workload];
        assert!(chain.len() >= 2, "a leaf and the root: {chain:?}");
        let leaf = CertificateChain::from_pem(&chain[0]).unwrap();
        let info = CertificateInfo::parse(leaf.leaf()).unwrap();
        assert_eq!(info.uri_sans, [workload.identity.as_uri()]);
        assert!(info.dns_sans.is_empty(), "{:?}", info.dns_sans);
        assert_eq!(info.public_key, workload.public_keys[0]);
        let root = chain.last().unwrap();
        let root = CertificateChain::from_pem(root).unwrap();
        assert!(
            roots_pem.contains(root.to_pem().trim()),
            "the chain's last certificate is a root of the bundle"
        );
    }
}

/// `requests` CreateCertificate calls shared by `clients` (one task each, each waiting for its
/// answer before it asks again, as an agent does).
pub(crate) async fn run_grpc(clients: &[GrpcClient], requests: usize) -> Duration {
    let remaining = Arc::new(AtomicUsize::new(requests));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for client in clients {
        let (mut client, remaining) = (client.clone(), remaining.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while take(&remaining) {
                let chain = client.create(n).await;
                assert!(chain.len() >= 2, "{chain:?}");
                n += 1;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    started.elapsed()
}

fn take(remaining: &AtomicUsize) -> bool {
    remaining
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// The raw `pki/sign` loop: the bodies meshca's Vault provider would send for these CSRs (the
/// CSR, the caller's SPIFFE ID as `uri_sans`, meshca's default lifetime), POSTed by one pooled
/// HTTP client.
pub(crate) struct RawVault {
    client: reqwest::Client,
    url: String,
    token: String,
    /// Per workload, one body per CSR.
    bodies: Vec<Arc<[Vec<u8>]>>,
}

impl RawVault {
    pub(crate) fn new(address: &str, token: &str, workloads: &[Workload]) -> Self {
        let bodies = workloads
            .iter()
            .map(|w| {
                w.csrs_pem
                    .iter()
                    .map(|csr| {
                        serde_json::to_vec(&json!({
                            "csr": csr,
                            "uri_sans": w.identity.as_uri(),
                            "ttl": "86400s",
                            "format": "pem",
                            "exclude_cn_from_sans": false,
                        }))
                        .unwrap()
                    })
                    .collect()
            })
            .collect();
        Self {
            client: meshca_test_support::bao::http_client(),
            url: format!("{address}/v1/pki/sign/meshca"),
            token: token.to_owned(),
            bodies,
        }
    }

    async fn sign(&self, body: &[u8]) {
        let response = self
            .client
            .post(&self.url)
            .header("X-Vault-Token", &self.token)
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("raw pki/sign");
        assert!(
            response.status().is_success(),
            "raw pki/sign: {}",
            response.status()
        );
        response.bytes().await.expect("raw pki/sign body");
    }

    /// `requests` signatures shared by `concurrency` tasks, task `i` sending workload `i`'s
    /// CSRs.
    pub(crate) async fn run(self: &Arc<Self>, concurrency: usize, requests: usize) -> Duration {
        let remaining = Arc::new(AtomicUsize::new(requests));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for i in 0..concurrency {
            let (raw, remaining) = (self.clone(), remaining.clone());
            tasks.spawn(async move {
                let bodies = raw.bodies[i].clone();
                let mut n = 0;
                while take(&remaining) {
                    raw.sign(&bodies[n % bodies.len()]).await;
                    n += 1;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        started.elapsed()
    }
}
