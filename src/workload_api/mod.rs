//! The SPIFFE Workload API (`SpiffeWorkloadAPI`, proto in `proto/spiffe/workload.proto`) on a
//! Unix socket: any workload written with go-spiffe, java-spiffe, py-spiffe or rust-spiffe (or
//! `spiffe-helper`) gets its X.509-SVIDs and trust bundle from meshca, renewed on the same
//! stream.
//!
//! Entry point: [`WorkloadApiServer`]: [`new`](WorkloadApiServer::new) validates the settings,
//! [`bind`](WorkloadApiServer::bind) creates the socket (the SDS transport's Unix binding:
//! a private directory, then a rename, so it is never reachable with other permissions), and
//! [`BoundWorkloadApiServer::start`] serves until a shutdown future resolves, then drains.
//!
//! Data flow per call: workload → Unix socket (the SDS transport's accept loop: connection cap,
//! preface and idle timers; the kernel's peer credentials ride along as [`PeerInfo`]) →
//! `service.rs` → `admission.rs`: the `workload.spiffe.io: true` header (else
//! INVALID_ARGUMENT), the caller's selectors from an [`Attestor`] (`attest.rs`: uid, gid,
//! executable path and SHA-256; `kubernetes.rs`: the caller's pod's namespace, service account,
//! UID and name; [`Attestors`] for both), the registration entries they match (none:
//! PERMISSION_DENIED, nothing issued), a stream slot under `maxStreams` and
//! `maxStreamsPerCaller` → `stream.rs`: the cache's `watch` receivers
//! of every matched identity (the certificates SDS serves, issued on first use) and of the
//! trust bundle, a message now and on every change.
//!
//! JWT-SVIDs (`jwt.rs`), with `jwtSvid.enabled` and [`WorkloadApiServer::with_jwt_svids`]:
//! `FetchJWTSVID` signs one per identity with meshca's [`JwtAuthority`] for the audiences asked,
//! `FetchJWTBundles` streams its keys as a JWKS, `ValidateJWTSVID` checks a token; the caller
//! is admitted first, as above. Without it the three answer UNIMPLEMENTED, saying so.
//!
//! [`JwtAuthority`]: crate::jwt_svid::JwtAuthority
//! [`PeerInfo`]: crate::sds::transport::PeerInfo

mod admission;
pub mod attest;
mod jwt;
pub mod kubernetes;
mod metrics;
pub mod proto;
mod service;
mod stream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshca_provider::TrustDomain;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use admission::SECURITY_HEADER;
pub use attest::{
    AttestError, Attestor, Attestors, PeerCredentials, RegistrationEntry, Selector, SelectorError,
    UnixAttestor,
};
pub use kubernetes::{KubeNodePods, KubernetesAttestor, NodePod, NodePods};
pub use metrics::{WorkloadApiMetrics, WorkloadApiMetricsSnapshot};

use crate::sds::source::SecretSource;
use crate::sds::throttle::SharedThrottle;
use crate::sds::transport::{
    AcceptSettings, Http2Limits, ListenerKind, Listeners, UnixSocketAccess, accept, grpc_server,
    serve_until_drained,
};
use crate::sds::{SdsError, SdsLimits};

/// How the Workload API listener appears in logs and errors.
const LISTENER: ListenerKind = ListenerKind {
    name: "Workload API",
    config: "workloadApi",
    unix_group_setting: "workloadApi.socketGroup",
};

/// Where and how the Workload API listens, and whom it serves.
#[derive(Debug, Clone)]
pub struct WorkloadApiSettings {
    /// The Unix socket.
    pub socket_path: PathBuf,
    /// The socket's permission bits.
    pub socket_mode: u32,
    /// The socket's group; `None` keeps meshca's own.
    pub socket_group: Option<u32>,
    /// The trust domain (the key of the bundles sent).
    pub trust_domain: TrustDomain,
    /// Registration entries.
    pub entries: Vec<RegistrationEntry>,
    /// Resource limits.
    pub limits: WorkloadApiLimits,
}

/// Limits that keep local callers from exhausting the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadApiLimits {
    /// Streams open at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Streams one uid may hold at once.
    pub max_streams_per_caller: usize,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Largest request message (the X.509 requests are empty; a JWT request a few audiences).
    pub max_message_bytes: usize,
    /// How long a connection may take to send the HTTP/2 preface.
    pub preface_timeout: Duration,
    /// How long a connection may carry no stream before it is closed.
    pub connection_idle_timeout: Duration,
    /// How long shutdown waits for connections to close once streams were ended.
    pub drain_timeout: Duration,
}

impl Default for WorkloadApiLimits {
    fn default() -> Self {
        Self {
            max_streams: 10_000,
            max_streams_per_caller: 100,
            max_connections: 10_000,
            max_message_bytes: 64 * 1024,
            preface_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(5 * 60),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// HTTP/2 streams (calls) one connection may have open at once (a client holds two).
const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// The largest request header block accepted.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// HTTP/2 receive window of a stream and of a connection: requests are tiny.
const RECEIVE_WINDOW_BYTES: u32 = 64 * 1024;

/// Why the Workload API server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    /// A setting is invalid.
    #[error("invalid Workload API setting {setting}: {reason}")]
    InvalidSettings {
        /// The configuration key.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The socket could not be bound.
    #[error("cannot open the Workload API socket (workloadApi.socketPath): {0}")]
    Bind(#[source] SdsError),
    /// The gRPC server failed.
    #[error("the Workload API gRPC server failed: {reason}")]
    Serve {
        /// tonic's reason.
        reason: String,
    },
}

/// The Workload API server, validated but not yet listening.
pub struct WorkloadApiServer {
    settings: WorkloadApiSettings,
    source: Arc<dyn SecretSource>,
    attestor: Arc<dyn Attestor>,
    metrics: Arc<WorkloadApiMetrics>,
    jwt: Option<admission::JwtSvids>,
}

impl std::fmt::Debug for WorkloadApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApiServer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl WorkloadApiServer {
    /// A server handing out `source`'s certificates to callers attested by the
    /// [`UnixAttestor`] (see [`with_attestor`](Self::with_attestor)).
    pub fn new(
        settings: WorkloadApiSettings,
        source: Arc<dyn SecretSource>,
    ) -> Result<Self, WorkloadApiError> {
        let limits = &settings.limits;
        for (setting, value) in [
            ("workloadApi.maxStreams", limits.max_streams),
            (
                "workloadApi.maxStreamsPerCaller",
                limits.max_streams_per_caller,
            ),
            ("workloadApi.maxConnections", limits.max_connections),
        ] {
            if value == 0 || value > Semaphore::MAX_PERMITS {
                return Err(WorkloadApiError::InvalidSettings {
                    setting,
                    reason: format!("must be between 1 and {}", Semaphore::MAX_PERMITS),
                });
            }
        }
        let attestor = Arc::new(UnixAttestor::for_entries(&settings.entries));
        Ok(Self {
            settings,
            source,
            attestor,
            metrics: Arc::default(),
            jwt: None,
        })
    }

    /// Serves JWT-SVIDs signed by `authority`, valid for `ttl`, with `issuer` as `iss`.
    #[must_use]
    pub fn with_jwt_svids(
        mut self,
        authority: Arc<crate::jwt_svid::JwtAuthority>,
        ttl: Duration,
        issuer: Option<String>,
    ) -> Self {
        self.jwt = Some(admission::JwtSvids {
            authority,
            ttl,
            issuer,
        });
        self
    }

    /// Attests callers with `attestor` instead.
    #[must_use]
    pub fn with_attestor(mut self, attestor: Arc<dyn Attestor>) -> Self {
        self.attestor = attestor;
        self
    }

    /// The server's counters (for `/metrics`).
    pub fn metrics(&self) -> Arc<WorkloadApiMetrics> {
        self.metrics.clone()
    }

    /// Creates the socket.
    pub async fn bind(self) -> Result<BoundWorkloadApiServer, WorkloadApiError> {
        let access = UnixSocketAccess {
            mode: self.settings.socket_mode,
            group: self.settings.socket_group,
        };
        let listeners = Listeners::bind(LISTENER, None, Some((&self.settings.socket_path, access)))
            .await
            .map_err(WorkloadApiError::Bind)?;
        Ok(BoundWorkloadApiServer {
            server: self,
            listeners,
        })
    }
}

/// A Workload API server whose socket exists.
#[derive(Debug)]
pub struct BoundWorkloadApiServer {
    server: WorkloadApiServer,
    listeners: Listeners,
}

/// A running Workload API server: [`stopped`](Self::stopped) resolves once it has drained.
#[derive(Debug)]
pub struct RunningWorkloadApiServer {
    task: tokio::task::JoinHandle<Result<(), WorkloadApiError>>,
}

impl RunningWorkloadApiServer {
    /// Waits until the server has stopped.
    pub async fn stopped(self) -> Result<(), WorkloadApiError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(WorkloadApiError::Serve {
                reason: format!("the server task ended abnormally: {e}"),
            }),
        }
    }
}

impl BoundWorkloadApiServer {
    /// Serves until `shutdown` resolves, then drains: every stream ends with UNAVAILABLE (its
    /// client reconnects), and connections get `drain_timeout` to close.
    pub fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> RunningWorkloadApiServer {
        let WorkloadApiServer {
            settings,
            source,
            attestor,
            metrics,
            jwt,
        } = self.server;
        let drain = CancellationToken::new();
        let limits = settings.limits.clone();
        info!(
            path = %settings.socket_path.display(),
            entries = settings.entries.len(),
            jwt_svids = jwt.is_some(),
            "SPIFFE Workload API listening (SPIFFE_ENDPOINT_SOCKET=unix://{})",
            settings.socket_path.display()
        );
        let shared = Arc::new(admission::Shared {
            source,
            attestor,
            entries: attest::EntryIndex::new(settings.entries),
            trust_domain: settings.trust_domain,
            stream_slots: Arc::new(Semaphore::new(limits.max_streams)),
            per_caller: Mutex::default(),
            limits: limits.clone(),
            metrics,
            drain: drain.clone(),
            refusal_log: SharedThrottle::new(Duration::from_secs(10), 20),
            jwt,
        });
        let service = proto::spiffe_workload_api_server::SpiffeWorkloadApiServer::new(
            service::WorkloadApiService::new(shared),
        )
        .max_decoding_message_size(limits.max_message_bytes);
        let incoming = accept(
            self.listeners,
            AcceptSettings {
                kind: LISTENER,
                tls: None,
                limits: transport_limits(&limits),
                stats: Arc::default(),
                // grpcio (py-spiffe) and grpc-java (java-spiffe) send the socket's path.
                rewrite_unix_authority: true,
            },
            drain.clone(),
        );
        let drain_timeout = limits.drain_timeout;
        let task = tokio::spawn(async move {
            let server = grpc_server(Http2Limits {
                max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
                max_header_list_bytes: MAX_HEADER_LIST_BYTES,
                receive_window_bytes: RECEIVE_WINDOW_BYTES,
            })
            .add_service(service)
            .serve_with_incoming_shutdown(
                ReceiverStream::new(incoming),
                drain.clone().cancelled_owned(),
            );
            serve_until_drained(
                server,
                shutdown,
                drain,
                drain_timeout,
                "Workload API",
                "Workload API draining: streams end, clients reconnect",
            )
            .await
            .map_err(|e| WorkloadApiError::Serve {
                reason: e.to_string(),
            })
        });
        RunningWorkloadApiServer { task }
    }
}

/// The limits of the shared transport (accept loop, connection timers).
fn transport_limits(limits: &WorkloadApiLimits) -> SdsLimits {
    SdsLimits {
        max_connections: limits.max_connections,
        max_message_bytes: limits.max_message_bytes,
        preface_timeout: limits.preface_timeout,
        connection_idle_timeout: limits.connection_idle_timeout,
        drain_timeout: limits.drain_timeout,
        ..SdsLimits::default()
    }
}
