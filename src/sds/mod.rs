//! The Envoy Secret Discovery Service (SDS v3) server.
//!
//! Entry point: [`SdsServer`]. Build it from [`SdsSettings`] (listeners, [`AuthMode`],
//! [`SdsLimits`]), then [`SdsServer::serve`] it over a [`SecretSource`] until a shutdown future
//! resolves. Data flow per stream: proxy → listener (TCP/Unix, optional mTLS) → authentication
//! ([`auth`]) → resource names ([`names`]) → the source's `watch` receivers → `Secret`
//! resources ([`convert`]) → pushed again on every change (`stream/`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use meshca_provider::TrustDomain;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub mod auth;
pub mod convert;
pub mod error;
pub mod names;
mod service;
pub mod source;
pub mod stats;
mod stream;
pub(crate) mod throttle;

pub use service::PATH_STREAM;
pub(crate) mod tls;
pub mod transport;
pub use transport::codec::{SdsCodec, SdsDecoder};

pub use auth::{
    AuthError, AuthMode, MtlsSettings, PodBinding, TokenAuthenticator, TokenError, UnixPeerMap,
    check_trust_domain,
};
pub use error::RequestError;
pub use names::{NameError, ResourceName};
pub use source::{Purpose, SecretSource, ServedCertificate, SourceError};
pub use stats::{BundleAcks, SdsStats, SdsStatsSnapshot};
pub use tls::{TlsError, webpki_verifier};
pub use transport::{PeerInfo, PeerTransport, UnixSocketAccess};

/// Where and how the SDS server listens.
#[derive(Debug, Clone)]
pub struct SdsSettings {
    /// TCP address to listen on, if any.
    pub tcp: Option<SocketAddr>,
    /// Unix socket path to listen on, if any. A stale socket file is replaced; a live one is not.
    pub unix: Option<PathBuf>,
    /// Who may connect to the Unix socket (its mode and group); `None`:
    /// [`UnixSocketAccess::default_for`] the authentication mode.
    pub unix_access: Option<UnixSocketAccess>,
    /// How callers are authenticated.
    pub auth: AuthMode,
    /// The trust domain of `<ns>/<sa>` resource names and node ids.
    pub trust_domain: TrustDomain,
    /// Resource limits.
    pub limits: SdsLimits,
}

impl SdsSettings {
    /// Settings for one TCP listener with the default trust domain and limits.
    pub fn tcp(address: SocketAddr, auth: AuthMode) -> Self {
        Self {
            tcp: Some(address),
            unix: None,
            unix_access: None,
            auth,
            trust_domain: TrustDomain::default(),
            limits: SdsLimits::default(),
        }
    }

    /// Settings for one Unix socket listener with the default trust domain and limits.
    pub fn unix(path: impl Into<PathBuf>, auth: AuthMode) -> Self {
        Self {
            tcp: None,
            unix: Some(path.into()),
            unix_access: None,
            auth,
            trust_domain: TrustDomain::default(),
            limits: SdsLimits::default(),
        }
    }
}

/// Limits that keep one proxy (or a flood of them) from exhausting the server. docs/SECURITY.md
/// ("SDS listener limits") lists them with the per-stream memory bound they give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsLimits {
    /// Streams (SotW and delta) open at once; more are refused with RESOURCE_EXHAUSTED. A
    /// stream takes its slot only once its caller is authenticated.
    pub max_streams: usize,
    /// Streams one identity may hold at once (every replica of a service account together);
    /// more are refused with RESOURCE_EXHAUSTED, so one caller cannot take every slot.
    pub max_streams_per_identity: usize,
    /// Connections open at once, on all listeners together; a connection beyond it is closed
    /// as soon as it is accepted.
    pub max_connections: usize,
    /// Resource names in one request (and held by one delta stream); more are refused with
    /// RESOURCE_EXHAUSTED. Envoy asks for one name per stream.
    pub max_names_per_request: usize,
    /// Largest request message accepted, in bytes (gRPC OUT_OF_RANGE beyond). A stream's
    /// receive buffer grows to its largest request and keeps that size: this is most of the
    /// per-stream memory bound. Everything meshca accepts in a request (a node of at most
    /// 64 KiB, `max_names_per_request` names of at most 512 bytes) fits well within 256 KiB.
    pub max_message_bytes: usize,
    /// How long a new stream may wait before sending its first request.
    pub first_request_timeout: Duration,
    /// How long a TLS client may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// How long a connection may take, once accepted (after the TLS handshake on a TLS
    /// listener), to send the HTTP/2 client preface; a connection that sends nothing is closed.
    pub preface_timeout: Duration,
    /// How long a connection may carry no stream holding a slot (after its preface, or after
    /// its last stream closed) before it is closed.
    pub connection_idle_timeout: Duration,
    /// How long shutdown waits for connections to close after streams were told to reconnect.
    pub drain_timeout: Duration,
}

impl Default for SdsLimits {
    fn default() -> Self {
        Self {
            max_streams: 10_000,
            max_streams_per_identity: 1_000,
            max_connections: 20_000,
            max_names_per_request: 64,
            max_message_bytes: 256 * 1024,
            first_request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            preface_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// HTTP/2 streams one connection may have open at once (more are refused with
/// REFUSED_STREAM). Envoy multiplexes all its SDS streams, one per secret name, over one
/// connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// The largest request header block accepted (a service-account token is 1–2 KiB).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// HTTP/2 receive window of a stream and of a connection: request bytes a connection can make
/// the server hold before it reads them.
pub const RECEIVE_WINDOW_BYTES: u32 = 256 * 1024;

/// Why the SDS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdsError {
    /// A setting is invalid.
    #[error("invalid SDS setting {setting}: {reason}")]
    InvalidSettings {
        /// The setting.
        setting: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Development mode was asked for on a listener other processes on the network can reach.
    #[error(
        "SDS development mode trusts whatever identity a caller claims, so it is only allowed \
         on loopback or a Unix socket, not on {address}: listen on 127.0.0.1/::1 or use mTLS"
    )]
    DevelopmentModeExposed {
        /// The refused address.
        address: SocketAddr,
    },
    /// A listener could not be bound.
    #[error("cannot listen for SDS on {address}: {source}")]
    Bind {
        /// The address or socket path.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The SDS endpoint's own certificate could not be obtained.
    #[error("cannot get the SDS server certificate: {0}")]
    ServerCertificate(#[source] SourceError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The gRPC server failed.
    #[error("the SDS gRPC server failed: {reason}")]
    Serve {
        /// tonic's reason.
        reason: String,
    },
}

/// The SDS server, validated but not yet listening.
#[derive(Debug)]
pub struct SdsServer {
    settings: SdsSettings,
    stats: Arc<SdsStats>,
    acks: Arc<BundleAcks>,
}

impl SdsServer {
    /// Validates `settings`. Refuses development mode (and bearer tokens, which travel in clear
    /// text) on a TCP address that is not loopback, and Unix peer credentials on TCP.
    pub fn new(settings: SdsSettings) -> Result<Self, SdsError> {
        if settings.tcp.is_none() && settings.unix.is_none() {
            return Err(SdsError::InvalidSettings {
                setting: "listeners",
                reason: "neither a TCP address nor a Unix socket path is set".to_owned(),
            });
        }
        let exposed_tcp = settings.tcp.filter(|a| !a.ip().is_loopback());
        match (&settings.auth, settings.tcp, exposed_tcp) {
            (AuthMode::Development, _, Some(address)) => {
                return Err(SdsError::DevelopmentModeExposed { address });
            }
            (AuthMode::Token(_), _, Some(address)) => {
                return Err(SdsError::InvalidSettings {
                    setting: "auth",
                    reason: format!(
                        "service-account tokens would cross {address} unencrypted: listen on \
                         loopback or a Unix socket, or use mTLS"
                    ),
                });
            }
            (AuthMode::UnixPeer(_), Some(address), _) => {
                return Err(SdsError::InvalidSettings {
                    setting: "auth",
                    reason: format!(
                        "Unix peer credentials only exist on a Unix socket, but TCP {address} \
                         is configured: remove the TCP address or use mTLS"
                    ),
                });
            }
            _ => {}
        }
        let limits = &settings.limits;
        for (setting, value) in [
            ("sds.maxStreams", limits.max_streams),
            ("sds.maxStreamsPerIdentity", limits.max_streams_per_identity),
            ("sds.maxConnections", limits.max_connections),
            ("sds.maxNamesPerRequest", limits.max_names_per_request),
            ("sds.maxMessageBytes", limits.max_message_bytes),
        ] {
            if value == 0 {
                return Err(SdsError::InvalidSettings {
                    setting,
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        for (setting, value) in [
            ("sds.maxStreams", limits.max_streams),
            ("sds.maxConnections", limits.max_connections),
        ] {
            if value > Semaphore::MAX_PERMITS {
                return Err(SdsError::InvalidSettings {
                    setting,
                    reason: format!("must be at most {}", Semaphore::MAX_PERMITS),
                });
            }
        }
        for (setting, value) in [
            ("sds.handshakeTimeout", limits.handshake_timeout),
            ("sds.prefaceTimeout", limits.preface_timeout),
            ("sds.connectionIdleTimeout", limits.connection_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(SdsError::InvalidSettings {
                    setting,
                    reason: "must be above zero".to_owned(),
                });
            }
        }
        Ok(Self {
            settings,
            stats: Arc::default(),
            acks: Arc::default(),
        })
    }

    /// The server's counters (for `/metrics`).
    pub fn stats(&self) -> Arc<SdsStats> {
        self.stats.clone()
    }

    /// Which bundle each connected proxy acknowledged (for root rotation).
    pub fn bundle_acks(&self) -> Arc<BundleAcks> {
        self.acks.clone()
    }

    /// Binds the listeners (so their addresses are known before serving).
    pub async fn bind(self) -> Result<BoundSdsServer, SdsError> {
        let access = self
            .settings
            .unix_access
            .unwrap_or_else(|| UnixSocketAccess::default_for(&self.settings.auth));
        let unix = self.settings.unix.as_deref().map(|path| (path, access));
        let listeners =
            transport::Listeners::bind(transport::ListenerKind::SDS, self.settings.tcp, unix)
                .await?;
        Ok(BoundSdsServer {
            server: self,
            listeners,
        })
    }

    /// Binds and serves until `shutdown` resolves, then drains: open streams are told to
    /// reconnect (UNAVAILABLE) and connections get `drain_timeout` to close.
    pub async fn serve(
        self,
        source: Arc<dyn SecretSource>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SdsError> {
        self.bind().await?.serve(source, shutdown).await
    }
}

/// An SDS server whose listeners are bound.
#[derive(Debug)]
pub struct BoundSdsServer {
    server: SdsServer,
    listeners: transport::Listeners,
}

impl BoundSdsServer {
    /// The bound TCP address (with the real port when 0 was asked for).
    pub fn tcp_address(&self) -> Option<SocketAddr> {
        self.listeners
            .tcp
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The Unix socket path.
    pub fn unix_path(&self) -> Option<&Path> {
        self.listeners.unix.as_ref().map(|s| s.path.as_path())
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<SdsStats> {
        self.server.stats()
    }

    /// Which bundle each connected proxy acknowledged.
    pub fn bundle_acks(&self) -> Arc<BundleAcks> {
        self.server.bundle_acks()
    }

    /// Serves until `shutdown` resolves, then drains (see [`SdsServer::serve`]).
    pub async fn serve(
        self,
        source: Arc<dyn SecretSource>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SdsError> {
        let SdsServer {
            settings,
            stats,
            acks,
        } = self.server;
        let tls = match &settings.auth {
            AuthMode::Mtls(mtls) => {
                let certificate = source
                    .certificate(&mtls.server_identity, Purpose::Default)
                    .await
                    .map_err(SdsError::ServerCertificate)?;
                let config = tls::server_config(
                    transport::ListenerKind::SDS.name,
                    certificate,
                    source.trust_bundle(),
                    tls::ClientAuth::Required,
                )?;
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            _ => None,
        };
        let tcp = self
            .listeners
            .tcp
            .as_ref()
            .and_then(|l| l.local_addr().ok());
        let unix = self.listeners.unix.as_ref().map(|s| s.path.clone());
        if matches!(settings.auth, AuthMode::Development) {
            warn!(
                ?tcp,
                ?unix,
                "SDS DEVELOPMENT MODE: callers are trusted on their word (Envoy node id) and get \
                 that identity's certificates and keys. Never run this outside a developer machine."
            );
        }
        info!(
            ?tcp,
            ?unix,
            auth = settings.auth.name(),
            "SDS server listening"
        );

        let drain = CancellationToken::new();
        let accept_stats = stats.clone();
        let shared = Arc::new(stream::Shared {
            source,
            auth: auth::Authenticator::new(settings.auth.clone(), settings.trust_domain.clone()),
            trust_domain: settings.trust_domain.clone(),
            stream_slots: Arc::new(Semaphore::new(settings.limits.max_streams)),
            limits: settings.limits.clone(),
            stats,
            acks,
            per_identity: std::sync::Mutex::default(),
            drain: drain.clone(),
            next_stream: AtomicU64::new(1),
            refusal_log: throttle::SharedThrottle::new(Duration::from_secs(10), 20),
            nack_log: throttle::SharedThrottle::new(Duration::from_secs(10), 20),
            expired_log: throttle::SharedThrottle::new(Duration::from_secs(10), 20),
        });
        let service = service::SdsRouter::new(
            Arc::new(stream::SdsService(shared)),
            settings.limits.max_message_bytes,
        );
        let incoming = transport::accept(
            self.listeners,
            transport::AcceptSettings {
                kind: transport::ListenerKind::SDS,
                tls,
                limits: settings.limits.clone(),
                stats: accept_stats,
                // Envoy names its SDS cluster as the authority: nothing to rewrite.
                rewrite_unix_authority: false,
            },
            drain.clone(),
        );
        // SDS requests are a few hundred bytes: the receive window bounds what a connection
        // can make the server buffer, and does not limit what the server sends.
        let server = transport::grpc_server(transport::Http2Limits {
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION,
            max_header_list_bytes: MAX_HEADER_LIST_BYTES,
            receive_window_bytes: RECEIVE_WINDOW_BYTES,
        })
        .add_service(service)
        .serve_with_incoming_shutdown(
            ReceiverStream::new(incoming),
            drain.clone().cancelled_owned(),
        );
        transport::serve_until_drained(
            server,
            shutdown,
            drain,
            settings.limits.drain_timeout,
            "SDS",
            "SDS server draining: streams are told to reconnect",
        )
        .await
        .map_err(|e| SdsError::Serve {
            reason: e.to_string(),
        })
    }
}
