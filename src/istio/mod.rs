//! The Istio CA API (`istio.v1.auth.IstioCertificateService/CreateCertificate`): istio-agent and
//! ztunnel send a CSR, meshca signs it for the caller's identity through the issuance pipeline.
//!
//! Entry point: [`IstioCaServer`]: [`new`](IstioCaServer::new) validates the settings,
//! [`bind`](IstioCaServer::bind) opens the TCP listener, and
//! [`BoundIstioCaServer::start`] issues the listener's own certificate (refusing to start when
//! it cannot) and serves until a shutdown future resolves, then drains.
//!
//! Data flow per call: agent → TLS listener (the SDS transport: connection cap, handshake,
//! preface and idle timeouts, `accept` backoff; a client certificate is optional) → `router.rs`
//! authenticates the caller from the connection and the headers before the request body is
//! read (`auth.rs`: client certificate, else `authorization: Bearer` token) → `service.rs`:
//! bounds on the CSR and metadata, the target identity (the caller's own, or an impersonated
//! one a node agent may ask for: [`ImpersonationCheck`]), the lifetime, a signing slot →
//! [`Pipeline::issue`] with the caller's CSR → the chain, then the trust bundle last.
//! `serving.rs` keeps the listener's certificate renewed; `metrics.rs` counts the calls.

mod auth;
pub mod caller;
pub mod impersonation;
mod metrics;
pub mod proto;
mod router;
mod service;
mod serving;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshca_provider::{Clock, DnsName, KeyType, TrustDomain};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use auth::{IstioAuthError, TokenCallers};
pub use caller::{
    Caller, CallerKind, ImpersonationCheck, ImpersonationDenied, NoImpersonation, PodBinding,
};
pub use impersonation::{ImpersonationStats, NodeAuthorizer};
pub use metrics::{IstioMetrics, IstioMetricsSnapshot};
pub use service::{
    IMPERSONATED_IDENTITY, MAX_CSR_PEM_BYTES, MAX_METADATA_FIELDS, MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES, impersonated_identity,
};

use crate::cache::{Backoff, RenewPolicy};
use crate::issuance::{IssueError, Pipeline};
use crate::sds::transport::{
    AcceptSettings, Http2Limits, ListenerKind, Listeners, accept, grpc_server, serve_until_drained,
};
use crate::sds::{SdsLimits, TlsError, TokenAuthenticator};

/// The gRPC method this server answers.
pub const PATH_CREATE_CERTIFICATE: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// How the Istio CA listener appears in logs and errors.
const LISTENER: ListenerKind = ListenerKind {
    name: "Istio CA",
    config: "istio",
    unix_group_setting: "",
};

/// Where and how the Istio CA API listens.
#[derive(Debug, Clone)]
pub struct IstioSettings {
    /// TCP address (TLS always).
    pub listen: SocketAddr,
    /// DNS names of the listener's certificate (what agents verify: `CA_ADDR`'s host).
    pub dns_names: Vec<DnsName>,
    /// The trust domain callers and targets must be in.
    pub trust_domain: TrustDomain,
    /// Lifetime of a certificate whose request asks for none (`validity_duration` 0), and the
    /// longest one given (longer requests are shortened to it):
    /// `certificateProvider.serviceCertValidityDuration`.
    pub default_lifetime: Duration,
    /// The listener's own certificate.
    pub serving: ServingSettings,
    /// Resource limits.
    pub limits: IstioLimits,
}

/// The listener's own certificate: a server certificate for the DNS names, with a key meshca
/// makes, renewed like the cache's certificates.
#[derive(Debug, Clone, Copy)]
pub struct ServingSettings {
    /// Its key type (`certificateProvider.keyType`).
    pub key_type: KeyType,
    /// Its lifetime.
    pub lifetime: Duration,
    /// When it is renewed (`renewal.*`).
    pub renew: RenewPolicy,
    /// How a failed renewal is retried (`renewal.backoff*`).
    pub backoff: Backoff,
}

/// Limits that keep one caller (or a flood of them) from exhausting the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Largest request message, in bytes (OUT_OF_RANGE beyond, before it is buffered).
    pub max_message_bytes: usize,
    /// Calls signing at once; more wait up to `signing_queue_timeout`, then are refused with
    /// RESOURCE_EXHAUSTED.
    pub max_concurrent_signings: usize,
    /// How long a call may wait for a signing slot.
    pub signing_queue_timeout: Duration,
    /// How long a TLS client may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// How long a connection may take to send the HTTP/2 preface after its handshake.
    pub preface_timeout: Duration,
    /// How long a connection may carry no call before it is closed.
    pub connection_idle_timeout: Duration,
    /// How long shutdown waits for calls in progress.
    pub drain_timeout: Duration,
}

impl IstioLimits {
    /// The smallest `max_message_bytes` allowed: an RSA-4096 CSR is about 2 KiB of PEM.
    pub const MIN_MESSAGE_BYTES: usize = 4 * 1024;
    /// The largest `max_message_bytes` allowed.
    pub const MAX_MESSAGE_BYTES_CEILING: usize = 4 * 1024 * 1024;
}

impl Default for IstioLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            // A CSR is about 1 KiB; metadata a few fields.
            max_message_bytes: 64 * 1024,
            max_concurrent_signings: 64,
            signing_queue_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            preface_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(5 * 60),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// HTTP/2 streams (calls) one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// The largest request header block accepted (a service-account token is 1–2 KiB).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// HTTP/2 receive window of a stream and of a connection.
const RECEIVE_WINDOW_BYTES: u32 = 256 * 1024;

/// Why the Istio CA server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IstioError {
    /// A setting is invalid.
    #[error("invalid Istio CA setting {setting}: {reason}")]
    InvalidSettings {
        /// The configuration key.
        setting: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The listener could not be bound.
    #[error("cannot listen for the Istio CA API on {address} (istio.listen): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The listener's own certificate could not be issued.
    #[error(
        "cannot issue the Istio CA listener's certificate for {names} (istio.dnsNames): \
         {source}"
    )]
    ServingCertificate {
        /// The DNS names asked for.
        names: String,
        /// Why.
        source: Box<IssueError>,
    },
    /// TLS could not be configured.
    #[error("cannot set up TLS on the Istio CA listener: {0}")]
    Tls(#[from] TlsError),
    /// The gRPC server failed.
    #[error("the Istio CA gRPC server failed: {reason}")]
    Serve {
        /// tonic's reason.
        reason: String,
    },
}

/// The Istio CA server, validated but not yet listening.
pub struct IstioCaServer {
    settings: IstioSettings,
    pipeline: Arc<Pipeline>,
    clock: Arc<dyn Clock>,
    tokens: Option<Arc<dyn TokenCallers>>,
    impersonation: Arc<dyn ImpersonationCheck>,
    metrics: Arc<IstioMetrics>,
}

impl std::fmt::Debug for IstioCaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioCaServer")
            .field("settings", &self.settings)
            .field("tokens", &self.tokens.is_some())
            .finish_non_exhaustive()
    }
}

impl IstioCaServer {
    /// A server signing through `pipeline`, authenticating callers by client certificate only
    /// (add tokens with [`with_tokens`](Self::with_tokens)), letting nobody impersonate (see
    /// [`with_impersonation`](Self::with_impersonation)).
    pub fn new(
        settings: IstioSettings,
        pipeline: Arc<Pipeline>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, IstioError> {
        if settings.dns_names.is_empty() {
            return Err(IstioError::InvalidSettings {
                setting: "istio.dnsNames",
                reason: "no DNS name for the listener's certificate: name the host of the \
                         agents' CA_ADDR (e.g. istiod.istio-system.svc)"
                    .to_owned(),
            });
        }
        let limits = &settings.limits;
        for (setting, value) in [
            ("istio.maxConnections", limits.max_connections),
            (
                "istio.maxConcurrentSignings",
                limits.max_concurrent_signings,
            ),
        ] {
            if value == 0 || value > Semaphore::MAX_PERMITS {
                return Err(IstioError::InvalidSettings {
                    setting,
                    reason: format!("must be between 1 and {}", Semaphore::MAX_PERMITS),
                });
            }
        }
        if limits.max_message_bytes < IstioLimits::MIN_MESSAGE_BYTES {
            return Err(IstioError::InvalidSettings {
                setting: "istio.maxMessageBytes",
                reason: format!("must be at least {}", IstioLimits::MIN_MESSAGE_BYTES),
            });
        }
        for (setting, value) in [
            ("istio.handshakeTimeout", limits.handshake_timeout),
            ("istio.prefaceTimeout", limits.preface_timeout),
            (
                "istio.connectionIdleTimeout",
                limits.connection_idle_timeout,
            ),
            ("istio.signingQueueTimeout", limits.signing_queue_timeout),
        ] {
            if value.is_zero() {
                return Err(IstioError::InvalidSettings {
                    setting,
                    reason: "must be above zero".to_owned(),
                });
            }
        }
        Ok(Self {
            settings,
            pipeline,
            clock,
            tokens: None,
            impersonation: Arc::new(NoImpersonation),
            metrics: Arc::default(),
        })
    }

    /// Also accepts callers with a Kubernetes service-account token (`authorization: Bearer`),
    /// checked by `tokens`.
    #[must_use]
    pub fn with_tokens(mut self, tokens: Arc<dyn TokenCallers>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Also accepts token callers with an authenticator that knows identities only (no pod
    /// binding): [`TokenCallers`] over a [`TokenAuthenticator`].
    #[must_use]
    pub fn with_token_authenticator(self, tokens: Arc<dyn TokenAuthenticator>) -> Self {
        self.with_tokens(Arc::new(auth::IdentityTokens(tokens)))
    }

    /// Decides who may ask for another identity's certificate (`ImpersonatedIdentity`).
    #[must_use]
    pub fn with_impersonation(mut self, check: Arc<dyn ImpersonationCheck>) -> Self {
        self.impersonation = check;
        self
    }

    /// The server's counters (for `/metrics`).
    pub fn metrics(&self) -> Arc<IstioMetrics> {
        self.metrics.clone()
    }

    /// Binds the listener (so its address is known before serving).
    pub async fn bind(self) -> Result<BoundIstioCaServer, IstioError> {
        let address = self.settings.listen;
        let listeners = Listeners::bind(LISTENER, Some(address), None)
            .await
            .map_err(|e| match e {
                crate::sds::SdsError::Bind { source, .. } => IstioError::Bind { address, source },
                other => IstioError::Serve {
                    reason: other.to_string(),
                },
            })?;
        Ok(BoundIstioCaServer {
            server: self,
            listeners,
        })
    }
}

/// An Istio CA server whose listener is bound.
#[derive(Debug)]
pub struct BoundIstioCaServer {
    server: IstioCaServer,
    listeners: Listeners,
}

/// A running Istio CA server: [`stopped`](Self::stopped) resolves once it has drained.
#[derive(Debug)]
pub struct RunningIstioCaServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), IstioError>>,
}

impl RunningIstioCaServer {
    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Waits until the server has stopped (after its shutdown future resolved and it drained).
    pub async fn stopped(self) -> Result<(), IstioError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(IstioError::Serve {
                reason: format!("the server task ended abnormally: {e}"),
            }),
        }
    }
}

impl BoundIstioCaServer {
    /// The bound address (with the real port when 0 was asked for).
    pub fn address(&self) -> Option<SocketAddr> {
        self.listeners
            .tcp
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Issues the listener's certificate — an error when it cannot, so the daemon refuses to
    /// start — and serves until `shutdown` resolves, then drains: calls in progress get
    /// `drain_timeout` to finish. The certificate is renewed in the background meanwhile.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunningIstioCaServer, IstioError> {
        let IstioCaServer {
            settings,
            pipeline,
            clock,
            tokens,
            impersonation,
            metrics,
        } = self.server;
        let address = self
            .listeners
            .tcp
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(settings.listen);
        let drain = CancellationToken::new();
        let certificate = serving::ServingCertificate::issue(
            pipeline.clone(),
            settings.dns_names.clone(),
            settings.serving,
            clock.clone(),
            drain.clone(),
        )
        .await
        .map_err(|source| IstioError::ServingCertificate {
            names: names(&settings.dns_names),
            source: Box::new(source),
        })?;
        let tls = crate::sds::tls::server_config(
            LISTENER.name,
            certificate,
            pipeline.trust_bundle(),
            crate::sds::tls::ClientAuth::Optional,
        )?;
        let authenticator = auth::Authenticator::new(settings.trust_domain.clone(), tokens);
        if authenticator.accepts_tokens() {
            info!(
                %address,
                dns_names = %names(&settings.dns_names),
                "Istio CA API listening (TLS); callers authenticate with a meshca client \
                 certificate or a service-account token (authorization: Bearer)"
            );
        } else {
            info!(
                %address,
                dns_names = %names(&settings.dns_names),
                "Istio CA API listening (TLS); callers authenticate with a meshca client \
                 certificate only: no Kubernetes API is configured to check service-account \
                 tokens"
            );
        }
        let service = service::IstioCaService::new(
            pipeline,
            impersonation,
            settings.trust_domain.clone(),
            settings.default_lifetime,
            &settings.limits,
            metrics.clone(),
        );
        let router = router::IstioRouter::new(
            Arc::new(authenticator),
            Arc::new(service),
            settings.limits.max_message_bytes,
        );
        let incoming = accept(
            self.listeners,
            AcceptSettings {
                kind: LISTENER,
                tls: Some(TlsAcceptor::from(Arc::new(tls))),
                limits: transport_limits(&settings.limits),
                stats: metrics.transport.clone(),
                rewrite_unix_authority: false,
            },
            drain.clone(),
        );
        let drain_timeout = settings.limits.drain_timeout;
        let task = tokio::spawn(async move {
            // A request is a few KiB.
            let server = grpc_server(Http2Limits {
                max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
                max_header_list_bytes: MAX_HEADER_LIST_BYTES,
                receive_window_bytes: RECEIVE_WINDOW_BYTES,
            })
            .add_service(router)
            .serve_with_incoming_shutdown(
                ReceiverStream::new(incoming),
                drain.clone().cancelled_owned(),
            );
            serve_until_drained(
                server,
                shutdown,
                drain,
                drain_timeout,
                "Istio CA",
                "Istio CA API draining: no new connections, calls in progress finish",
            )
            .await
            .map_err(|e| IstioError::Serve {
                reason: e.to_string(),
            })
        });
        Ok(RunningIstioCaServer { address, task })
    }
}

/// The limits of the shared transport (accept loops, connection timers).
fn transport_limits(limits: &IstioLimits) -> SdsLimits {
    SdsLimits {
        max_connections: limits.max_connections,
        max_message_bytes: limits.max_message_bytes,
        handshake_timeout: limits.handshake_timeout,
        preface_timeout: limits.preface_timeout,
        connection_idle_timeout: limits.connection_idle_timeout,
        drain_timeout: limits.drain_timeout,
        ..SdsLimits::default()
    }
}

fn names(names: &[DnsName]) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
