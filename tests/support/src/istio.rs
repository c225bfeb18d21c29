//! A client of meshca's Istio CA API (`istio.v1.auth.IstioCertificateService`), built on the
//! tonic client generated from `proto/istio/v1/auth/ca.proto`: TLS to the listener, verified
//! with a root and a DNS name as istio-agent does, optionally presenting a client certificate;
//! a token in `authorization: Bearer` per call. And `meshca serve` with the Istio CA API on.

use std::net::SocketAddr;
use std::path::Path;

use meshca::istio::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use meshca::istio::proto::{IstioCertificateRequest, Struct, Value, ValueKind};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::daemon::{MeshcaServe, ServeBuilder};

/// The DNS name the tests give the listener's certificate and verify.
pub const ISTIOD_NAME: &str = "istiod.istio-system.svc";

/// A connection to an Istio CA API listener.
#[derive(Clone)]
pub struct IstioCaClient {
    client: IstioCertificateServiceClient<Channel>,
}

/// A client certificate and key, PEM.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The chain, leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl ClientIdentity {
    /// Reads `cert.pem` and `key.pem` as `meshca issue --out-dir` writes them.
    pub fn from_dir(dir: &Path) -> Self {
        Self {
            cert_pem: std::fs::read_to_string(dir.join("cert.pem")).unwrap(),
            key_pem: std::fs::read_to_string(dir.join("key.pem")).unwrap(),
        }
    }
}

impl IstioCaClient {
    /// Connects over TLS to `address`, verifying the server's certificate against `ca_pem`
    /// for `server_name`, presenting `identity` if given.
    pub async fn connect(
        address: SocketAddr,
        server_name: &str,
        ca_pem: &str,
        identity: Option<&ClientIdentity>,
    ) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            client: IstioCertificateServiceClient::new(
                Self::channel(address, server_name, ca_pem, identity).await?,
            ),
        })
    }

    /// The TLS channel [`connect`](Self::connect) makes, for a caller that speaks gRPC itself.
    pub async fn channel(
        address: SocketAddr,
        server_name: &str,
        ca_pem: &str,
        identity: Option<&ClientIdentity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(server_name);
        if let Some(identity) = identity {
            tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        }
        Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    /// CreateCertificate with `csr_pem`, `validity_seconds`, a bearer `token` if given, and
    /// string `metadata` fields; returns `cert_chain`.
    pub async fn create(
        &mut self,
        csr_pem: &str,
        validity_seconds: i64,
        token: Option<&str>,
        metadata: &[(&str, &str)],
    ) -> Result<Vec<String>, tonic::Status> {
        let metadata = (!metadata.is_empty()).then(|| Struct {
            fields: metadata
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Value {
                            kind: Some(ValueKind::StringValue((*v).to_owned())),
                        },
                    )
                })
                .collect(),
        });
        self.create_request(
            IstioCertificateRequest {
                csr: csr_pem.to_owned(),
                validity_duration: validity_seconds,
                metadata,
            },
            token,
        )
        .await
    }

    /// CreateCertificate with any request.
    pub async fn create_request(
        &mut self,
        request: IstioCertificateRequest,
        token: Option<&str>,
    ) -> Result<Vec<String>, tonic::Status> {
        let mut call = tonic::Request::new(request);
        if let Some(token) = token {
            call.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(self
            .client
            .create_certificate(call)
            .await?
            .into_inner()
            .cert_chain)
    }
}

/// `meshca serve` flags turning the Istio CA API on at `address` with the listener name
/// [`ISTIOD_NAME`].
pub fn istio_flags(address: SocketAddr) -> Vec<String> {
    [
        "--set".to_owned(),
        "istio.enabled=true".to_owned(),
        "--set".to_owned(),
        format!("istio.listen={address}"),
        "--set".to_owned(),
        format!("istio.dnsNames={ISTIOD_NAME}"),
    ]
    .to_vec()
}

/// A builder for `meshca serve` with its own CA directory, an admin listener, SDS (mTLS) and
/// the Istio CA API on free loopback ports (the Istio CA API's returned).
pub fn serve_with_istio() -> (ServeBuilder, SocketAddr) {
    let address = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
    let builder = MeshcaServe::builder()
        .own_ca_dir()
        .admin()
        .sds()
        .args(istio_flags(address));
    (builder, address)
}
