//! The accept loops: at most `<listener>.maxConnections` open, TLS handshakes off the loop,
//! bounded in time and taking turns at the CPU (`handshakes.rs`), and a paced retry when
//! `accept` fails. Shared by the SDS and the Istio CA
//! listeners ([`ListenerKind`] names which in logs and errors).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::connection::{Connection, Io};
use super::handshakes::{Gated, HandshakeQueue, Source, is_shed};
use super::idle::ConnectionTimer;
use super::{ListenerKind, Listeners};
use crate::sds::SdsLimits;
use crate::sds::stats::SdsStats;
use crate::sds::throttle::{SharedThrottle, Throttle};

/// What the accept loops need besides the listeners.
pub(crate) struct AcceptSettings {
    /// Which listener this is, for logs and errors.
    pub(crate) kind: ListenerKind,
    /// TLS on every listener, if configured.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The connection, TLS-handshake and preface limits.
    pub(crate) limits: SdsLimits,
    /// Where refused and shed handshakes are counted.
    pub(crate) stats: Arc<SdsStats>,
    /// Rewrite a malformed `:authority` on plain Unix socket connections (`authority.rs`): for
    /// gRPC clients that send the socket path, which h2 refuses.
    pub(crate) rewrite_unix_authority: bool,
}

/// Accepts on every listener until `stop` is cancelled, handing connections (after the TLS
/// handshake, done off the accept loop) to the returned receiver. At most `max_connections`
/// are open at once (TLS handshakes in progress included); one more is closed when accepted.
pub(crate) fn accept(
    listeners: Listeners,
    settings: AcceptSettings,
    stop: CancellationToken,
) -> mpsc::Receiver<Result<Connection, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let shared = Arc::new(AcceptShared {
        slots: Arc::new(Semaphore::new(settings.limits.max_connections)),
        handshakes: Arc::new(HandshakeQueue::per_cpu(settings.limits.handshake_timeout)),
        settings,
        tx,
        over_limit: SharedThrottle::new(WARN_EVERY, 1),
        shed: SharedThrottle::new(WARN_EVERY, 1),
    });
    if let Some(listener) = listeners.tcp {
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
    }
    if let Some(socket) = listeners.unix {
        tokio::spawn(async move {
            // `socket` (and the file removal on drop) lives as long as the loop.
            let listener = &socket.listener;
            accept_loop(listener, shared, stop).await;
        });
    }
    rx
}

/// At most one warning per this long for a repeated accept failure or refusal.
const WARN_EVERY: Duration = Duration::from_secs(10);

struct AcceptShared {
    settings: AcceptSettings,
    slots: Arc<Semaphore>,
    /// The TLS handshakes' turns at the CPU (`handshakes.rs`).
    handshakes: Arc<HandshakeQueue>,
    tx: mpsc::Sender<Result<Connection, io::Error>>,
    over_limit: SharedThrottle,
    /// Warnings about handshakes shed because the handshake queue was full.
    shed: SharedThrottle,
}

/// A listener the accept loop can take connections from.
trait Listener: Send + Sync {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    fn plain(stream: Self::Stream) -> Io;
    fn secured(stream: TlsStream<Gated<Self::Stream>>) -> Io;
    /// Where a handshake on `stream` comes from, for the handshake queue's turns.
    fn source(stream: &Self::Stream) -> Source;
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<TcpStream> {
        let (stream, remote) = TcpListener::accept(self).await?;
        debug!(%remote, "TCP connection");
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn plain(stream: TcpStream) -> Io {
        Io::Tcp(stream)
    }

    fn secured(stream: TlsStream<Gated<TcpStream>>) -> Io {
        Io::TlsTcp(Box::new(stream))
    }

    fn source(stream: &TcpStream) -> Source {
        stream.peer_addr().ok().map(|a| a.ip().to_canonical())
    }
}

impl Listener for &UnixListener {
    type Stream = UnixStream;

    async fn accept(&self) -> io::Result<UnixStream> {
        Ok(UnixListener::accept(self).await?.0)
    }

    fn plain(stream: UnixStream) -> Io {
        Io::Unix(stream)
    }

    fn secured(stream: TlsStream<Gated<UnixStream>>) -> Io {
        Io::TlsUnix(Box::new(stream))
    }

    fn source(_: &UnixStream) -> Source {
        None
    }
}

async fn accept_loop<L: Listener>(listener: L, shared: Arc<AcceptShared>, stop: CancellationToken) {
    let mut failures = AcceptFailures::new(shared.settings.kind);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(stream) => {
                failures.succeeded();
                hand_over::<L>(stream, &shared);
            }
            Err(error) => {
                let pause = failures.failed(&error, Instant::now());
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

fn hand_over<L: Listener>(stream: L::Stream, shared: &Arc<AcceptShared>) {
    let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
        // Closed right away (dropped): the client sees a reset and retries elsewhere or later.
        let limit = shared.settings.limits.max_connections;
        let kind = shared.settings.kind;
        if let Some(suppressed) = shared.over_limit.ready() {
            warn!(
                limit,
                refused_since_last_warning = suppressed,
                "{} connection refused: {}.maxConnections connections are open; raise it or \
                 add replicas",
                kind.name,
                kind.config
            );
        }
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let limits = &shared.settings.limits;
        let io = match &shared.settings.tls {
            None if shared.settings.rewrite_unix_authority => {
                L::plain(stream).rewriting_authority()
            }
            None => L::plain(stream),
            Some(acceptor) => {
                let timeout = limits.handshake_timeout;
                let source = L::source(&stream);
                let gated = Gated::new(stream, shared.handshakes.clone(), source);
                let accepting = acceptor.accept(gated).into_fallible();
                match tokio::time::timeout(timeout, accepting).await {
                    Ok(Ok(mut tls)) => {
                        tls.get_mut().0.handshake_done();
                        L::secured(tls)
                    }
                    // Refused before any CPU was spent on it: the queue of handshakes is
                    // longer than can be served within the timeout. The client is told so
                    // (SHED_ALERT) and retries after its backoff.
                    Ok(Err((e, gated))) if is_shed(&e) => {
                        SdsStats::bump(&shared.settings.stats.handshakes_shed);
                        refuse_shed(gated).await;
                        let kind = shared.settings.kind;
                        if let Some(suppressed) = shared.shed.ready() {
                            warn!(
                                shed_since_last_warning = suppressed,
                                "{} TLS handshake refused: more handshakes are waiting than \
                                 can be served within {}.handshakeTimeout; clients retry \
                                 later",
                                kind.name,
                                kind.config
                            );
                        }
                        return;
                    }
                    // A refused or abandoned handshake is an unauthenticated caller (no or a
                    // wrong client certificate, or a port scan): counted, and logged at debug
                    // to keep a scan from flooding the log.
                    Ok(Err((e, _))) => {
                        SdsStats::bump(&shared.settings.stats.unauthenticated);
                        debug!(error = %e, listener = shared.settings.kind.name, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        SdsStats::bump(&shared.settings.stats.unauthenticated);
                        SdsStats::bump(&shared.settings.stats.handshakes_timed_out);
                        debug!(
                            ?timeout,
                            listener = shared.settings.kind.name,
                            "TLS handshake timed out ({}.handshakeTimeout)",
                            shared.settings.kind.config
                        );
                        return;
                    }
                }
            }
        };
        let connection = Connection {
            io,
            timer: ConnectionTimer::new(limits, shared.settings.kind),
            _slot: slot,
        };
        let _ = shared.tx.send(Ok(connection)).await;
    });
}

/// What a shed handshake's client reads before the connection closes: a TLS alert record
/// (content type 21, record version TLS 1.2 as every TLS 1.3 record but a first ClientHello
/// carries, 2 bytes: level fatal, description `internal_error` (80)), written in plaintext as a
/// server answers a ClientHello it will not serve. `internal_error` says that the server
/// failed for a reason of its own, "unrelated to the peer or the correctness of the protocol"
/// (RFC 8446, section 6.2): the client's configuration is not at fault, and it retries as after
/// any failed connection (Envoy's gRPC backoff). The other candidates mislead: `handshake_failure`
/// reads as parameters that cannot be negotiated (an operator would look for a cipher or
/// certificate mismatch), and `user_canceled` is a warning that rustls ignores, leaving the
/// client with a bare end of stream. Clients report it as (each checked against this record):
/// Envoy (BoringSSL), at debug, `TLS_error:|268436536:SSL routines:OPENSSL_internal:
/// TLSV1_ALERT_INTERNAL_ERROR:TLS_error_end` as the connection's failure reason; OpenSSL
/// `tlsv1 alert internal error … SSL alert number 80`; rustls `received fatal alert:
/// InternalError`.
pub(super) const SHED_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];

/// How long writing [`SHED_ALERT`] may take. Seven bytes fit a fresh connection's send buffer
/// at once; a peer whose receive window is closed from the start (a hostile one) is not waited
/// for.
const SHED_ALERT_TIMEOUT: Duration = Duration::from_millis(100);

/// Answers a shed handshake's ClientHello (left unprocessed) with [`SHED_ALERT`] and closes
/// the connection, on the handshake's own task: the accept loop never waits for it.
async fn refuse_shed<S: AsyncWrite + Unpin>(mut stream: S) {
    use tokio::io::AsyncWriteExt as _;
    let _ = tokio::time::timeout(SHED_ALERT_TIMEOUT, async {
        stream.write_all(&SHED_ALERT).await?;
        // FIN after the alert, so the client reads it before the end of the stream.
        stream.shutdown().await
    })
    .await;
}

/// Paces an accept loop whose `accept` fails (out of file descriptors, most often): it pauses
/// before the next attempt, longer while failures go on, and warns at most once per
/// [`WARN_EVERY`] with the number of failures since the last warning.
#[derive(Debug)]
struct AcceptFailures {
    kind: ListenerKind,
    pause: Duration,
    warnings: Throttle,
}

impl AcceptFailures {
    fn new(kind: ListenerKind) -> Self {
        Self {
            kind,
            pause: Self::FIRST_PAUSE,
            warnings: Throttle::new(WARN_EVERY, 1),
        }
    }

    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    /// Notes a failure; returns how long to pause before accepting again.
    fn failed(&mut self, error: &io::Error, now: Instant) -> Duration {
        if let Some(suppressed) = self.warnings.ready(now) {
            let hint = match error.raw_os_error() {
                Some(code) if code == EMFILE || code == ENFILE => format!(
                    "out of file descriptors: raise the open-files limit (ulimit -n, \
                     LimitNOFILE) or lower {}.maxConnections",
                    self.kind.config
                ),
                _ => "retrying".to_owned(),
            };
            warn!(%error, failures_since_last_warning = suppressed, hint, "{} listener cannot accept connections", self.kind.name);
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
        pause
    }

    /// Notes a successful accept: the next failure starts pausing briefly again.
    fn succeeded(&mut self) {
        self.pause = Self::FIRST_PAUSE;
    }
}

/// `EMFILE` and `ENFILE` on Linux and the BSDs.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A listener whose every accept fails with EMFILE, counting the attempts.
    struct OutOfDescriptors(Arc<std::sync::atomic::AtomicUsize>);

    impl Listener for OutOfDescriptors {
        type Stream = TcpStream;

        async fn accept(&self) -> io::Result<TcpStream> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(EMFILE))
        }

        fn plain(stream: TcpStream) -> Io {
            Io::Tcp(stream)
        }

        fn secured(stream: TlsStream<Gated<TcpStream>>) -> Io {
            Io::TlsTcp(Box::new(stream))
        }

        fn source(_: &TcpStream) -> Source {
            None
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_accept_loop_out_of_file_descriptors_does_not_spin() {
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, _rx) = mpsc::channel(1);
        let shared = Arc::new(AcceptShared {
            settings: AcceptSettings {
                kind: ListenerKind::SDS,
                tls: None,
                limits: SdsLimits::default(),
                stats: Arc::default(),
                rewrite_unix_authority: false,
            },
            slots: Arc::new(Semaphore::new(1)),
            handshakes: Arc::new(HandshakeQueue::new(1, 1, Duration::from_secs(10))),
            tx,
            over_limit: SharedThrottle::new(WARN_EVERY, 1),
            shed: SharedThrottle::new(WARN_EVERY, 1),
        });
        let stop = CancellationToken::new();
        let running = tokio::spawn(accept_loop(
            OutOfDescriptors(attempts.clone()),
            shared,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
        running.await.unwrap();
        // Pauses of 10, 20, 40 … 640 ms, then 1 s: about 16 attempts in 10 s (a fixed 100 ms
        // pause made 100, a log line each).
        let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
        assert!((10..=20).contains(&attempts), "{attempts} accepts in 10 s");
    }

    /// A TLS acceptor with a throwaway self-signed certificate.
    fn acceptor() -> TlsAcceptor {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// A TCP accept loop on loopback whose handshakes go through `handshakes`.
    async fn tls_listener(
        handshakes: Arc<HandshakeQueue>,
    ) -> (std::net::SocketAddr, Arc<SdsStats>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stats = Arc::<SdsStats>::default();
        let (tx, _rx) = mpsc::channel(1);
        let shared = Arc::new(AcceptShared {
            settings: AcceptSettings {
                kind: ListenerKind::SDS,
                tls: Some(acceptor()),
                limits: SdsLimits::default(),
                stats: stats.clone(),
                rewrite_unix_authority: false,
            },
            slots: Arc::new(Semaphore::new(16)),
            handshakes,
            tx,
            over_limit: SharedThrottle::new(WARN_EVERY, 1),
            shed: SharedThrottle::new(WARN_EVERY, 1),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared, stop.clone()));
        (address, stats, stop)
    }

    /// A shed handshake's client reads exactly the fatal `internal_error` alert, then the end
    /// of the stream, and its ClientHello is never processed; a TLS client reports the alert.
    #[tokio::test]
    async fn a_shed_handshake_is_answered_with_a_fatal_internal_error_alert() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (handshakes, _full) = HandshakeQueue::shedding();
        let (address, stats, stop) = tls_listener(handshakes).await;

        // Any first flight is shed unprocessed: these bytes are not even a ClientHello.
        let mut raw = TcpStream::connect(address).await.unwrap();
        raw.write_all(b"\x16\x03\x01 not a ClientHello")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut answer))
            .await
            .expect("the connection is closed after the alert")
            .unwrap();
        assert_eq!(answer, SHED_ALERT, "exactly the alert, then the end");
        assert_eq!(SHED_ALERT, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50]);

        // A real client's handshake ends with the alert, not an unexpected end of stream.
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let tcp = TcpStream::connect(address).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let error = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .expect_err("the handshake is refused");
        let alert = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert_eq!(
            alert,
            Some(&rustls::Error::AlertReceived(
                rustls::AlertDescription::InternalError
            )),
            "{error}"
        );
        assert_eq!(error.to_string(), "received fatal alert: InternalError");
        let counted = stats.snapshot();
        assert_eq!((counted.handshakes_shed, counted.unauthenticated), (2, 0));
        stop.cancel();
    }

    #[test]
    fn running_out_of_file_descriptors_pauses_and_warns_once_per_period() {
        let emfile = io::Error::from_raw_os_error(EMFILE);
        let start = Instant::now();
        let mut failures = AcceptFailures::new(ListenerKind::SDS);
        // 10,000 failed accepts within one period: growing pauses, capped, and the throttle
        // lets exactly one warning through.
        let mut total = Duration::ZERO;
        let mut pauses = Vec::new();
        for i in 0..10_000u32 {
            let pause = failures.failed(&emfile, start + Duration::from_micros(u64::from(i)));
            total += pause;
            pauses.push(pause);
        }
        assert_eq!(pauses[0], AcceptFailures::FIRST_PAUSE);
        assert!(
            pauses.windows(2).all(|w| w[0] <= w[1]),
            "pauses never shrink"
        );
        assert_eq!(*pauses.last().unwrap(), AcceptFailures::MAX_PAUSE);
        assert_eq!(
            failures.warnings.held_back(),
            9_999,
            "one warning, the rest held back"
        );
        assert!(total > Duration::from_secs(1000), "the loop does not spin");
        failures.succeeded();
        assert_eq!(
            failures.failed(&emfile, start + WARN_EVERY),
            AcceptFailures::FIRST_PAUSE,
            "a success resets the pause"
        );
        assert_eq!(
            failures.warnings.held_back(),
            0,
            "the next period warns again"
        );
    }
}
