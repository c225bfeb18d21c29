//! SDS listeners: TCP and/or a Unix socket, optionally TLS, merged into one stream of
//! connections for tonic, each carrying what is known about its peer ([`PeerInfo`]).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use super::stats::SdsStats;
use super::throttle::{SharedThrottle, Throttle};
use super::{SdsError, SdsLimits};

/// What is known about the other end of an SDS connection; available to handlers as a request
/// extension.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// How the peer is connected.
    pub transport: PeerTransport,
    /// The verified client certificate chain (leaf first), on TLS listeners.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The connection's stream count, for its idle timeout.
    pub(crate) activity: Option<Arc<ConnectionActivity>>,
}

/// The peer's transport-level identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTransport {
    /// A TCP peer.
    Tcp {
        /// Its address.
        remote: Option<SocketAddr>,
    },
    /// A Unix socket peer, with its kernel-reported credentials.
    Unix {
        /// Effective uid.
        uid: Option<u32>,
        /// Effective gid.
        gid: Option<u32>,
        /// Process id, where the platform reports it.
        pid: Option<i32>,
    },
}

/// One accepted connection: its stream, its timer, and its share of `max_connections`.
pub(crate) struct Connection {
    io: Io,
    timer: ConnectionTimer,
    _slot: OwnedSemaphorePermit,
}

/// The stream of a connection, by listener kind.
enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Box<TlsStream<TcpStream>>),
    TlsUnix(Box<TlsStream<UnixStream>>),
}

/// The length of the HTTP/2 client preface (RFC 9113, 3.4), which a client sends first.
const PREFACE_LEN: usize = 24;

/// How many streams holding a slot one connection carries, and since when it carries none;
/// shared by the connection and its streams ([`PeerInfo`]).
#[derive(Debug)]
pub(crate) struct ConnectionActivity {
    streams: AtomicUsize,
    /// Milliseconds after `opened` when the last stream closed.
    idle_since: AtomicU64,
    opened: Instant,
}

impl ConnectionActivity {
    fn new() -> Self {
        Self {
            streams: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    /// Marks the connection busy (an authenticated stream or call) until the guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.streams.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn done(&self) {
        // Stored before the count drops, so whoever sees no stream also sees when the last
        // one closed (a value stored while others stay open is overwritten by the last).
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since.store(now, Ordering::Release);
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection became idle, if it is not busy now.
    fn idle_since(&self) -> Option<Instant> {
        (self.streams.load(Ordering::Acquire) == 0)
            .then(|| self.opened + Duration::from_millis(self.idle_since.load(Ordering::Acquire)))
    }
}

/// An authenticated stream or call in progress on a connection: the connection is not idle.
#[derive(Debug)]
pub(crate) struct Busy(Arc<ConnectionActivity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// Closes a connection (reading fails) that does not send the HTTP/2 client preface within
/// `preface_timeout` — hyper waits for one without a limit — or that carries no stream holding
/// a slot for `idle_timeout`: HTTP/2 keepalive only finds peers that stopped answering pings,
/// and a connection that answers them but never gets an authenticated stream would otherwise
/// hold one of `max_connections` forever.
///
/// One timer per connection. While streams are open it fires once per `idle_timeout` and is
/// re-armed (no per-stream or per-message timer work); once the last stream closes, the next
/// firing closes the connection if nothing was opened since.
struct ConnectionTimer {
    /// Preface bytes not read yet; 0 once it is in.
    preface_left: usize,
    preface_timeout: Duration,
    idle_timeout: Duration,
    activity: Arc<ConnectionActivity>,
    sleep: Pin<Box<Sleep>>,
}

impl ConnectionTimer {
    fn new(limits: &SdsLimits) -> Self {
        Self {
            preface_left: PREFACE_LEN,
            preface_timeout: limits.preface_timeout,
            idle_timeout: limits.connection_idle_timeout,
            activity: Arc::new(ConnectionActivity::new()),
            sleep: Box::pin(tokio::time::sleep(limits.preface_timeout)),
        }
    }

    /// `Err` when the connection is to be closed; otherwise the timer is armed with `cx`.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if self.preface_left > 0 {
                debug!(timeout = ?self.preface_timeout, "SDS connection sent no HTTP/2 preface in time; closing it");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 client preface within sds.prefaceTimeout",
                ));
            }
            let now = Instant::now();
            let next = match self.activity.idle_since() {
                Some(since) if now.saturating_duration_since(since) >= self.idle_timeout => {
                    debug!(timeout = ?self.idle_timeout, "SDS connection idle without a stream; closing it");
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no SDS stream on the connection within sds.connectionIdleTimeout",
                    ));
                }
                Some(since) => since + self.idle_timeout,
                None => now + self.idle_timeout,
            };
            self.sleep.as_mut().reset(next.into());
        }
        Ok(())
    }

    fn read(&mut self, bytes: usize) {
        if self.preface_left > 0 {
            self.preface_left = self.preface_left.saturating_sub(bytes);
            if self.preface_left == 0 {
                // Idle from now on until a stream opens.
                let since =
                    u64::try_from(self.activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.activity.idle_since.store(since, Ordering::Release);
                let deadline = Instant::now() + self.idle_timeout;
                self.sleep.as_mut().reset(deadline.into());
            }
        }
    }
}

fn tcp_peer(stream: &TcpStream) -> PeerTransport {
    PeerTransport::Tcp {
        remote: stream.peer_addr().ok(),
    }
}

fn unix_peer(stream: &UnixStream) -> PeerTransport {
    match stream.peer_cred() {
        Ok(cred) => PeerTransport::Unix {
            uid: Some(cred.uid()),
            gid: Some(cred.gid()),
            pid: cred.pid(),
        },
        Err(_) => PeerTransport::Unix {
            uid: None,
            gid: None,
            pid: None,
        },
    }
}

fn peer_chain<T>(stream: &TlsStream<T>) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .map(|certs| Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect()))
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let activity = Some(self.timer.activity.clone());
        match &self.io {
            Io::Tcp(s) => PeerInfo {
                transport: tcp_peer(s),
                certificates: None,
                activity,
            },
            Io::Unix(s) => PeerInfo {
                transport: unix_peer(s),
                certificates: None,
                activity,
            },
            Io::TlsTcp(s) => PeerInfo {
                transport: tcp_peer(s.get_ref().0),
                certificates: peer_chain(s),
                activity,
            },
            Io::TlsUnix(s) => PeerInfo {
                transport: unix_peer(s.get_ref().0),
                certificates: peer_chain(s),
                activity,
            },
        }
    }
}

macro_rules! delegate {
    ($io:expr, $s:ident => $call:expr) => {
        match $io {
            Io::Tcp($s) => $call,
            Io::Unix($s) => $call,
            Io::TlsTcp($s) => $call,
            Io::TlsUnix($s) => $call,
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.timer.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let result = delegate!(&mut this.io, s => Pin::new(s).poll_read(cx, buf));
        if let Poll::Ready(Ok(())) = result {
            this.timer.read(buf.filled().len() - before);
        }
        result
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(&mut self.get_mut().io, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(&mut self.get_mut().io, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(&mut self.get_mut().io, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(&mut self.get_mut().io, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        delegate!(&self.io, s => s.is_write_vectored())
    }
}

/// The bound listeners of one SDS server.
#[derive(Debug)]
pub(crate) struct Listeners {
    pub(crate) tcp: Option<TcpListener>,
    pub(crate) unix: Option<UnixSocket>,
}

/// A bound Unix socket; the socket file is removed when this is dropped.
#[derive(Debug)]
pub(crate) struct UnixSocket {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Listeners {
    pub(crate) async fn bind(
        tcp: Option<SocketAddr>,
        unix: Option<(&Path, UnixSocketAccess)>,
    ) -> Result<Self, SdsError> {
        let tcp = match tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| SdsError::Bind {
                        address: addr.to_string(),
                        source,
                    })?,
            ),
            None => None,
        };
        let unix = match unix {
            Some((path, access)) => Some(bind_unix(path, access).await?),
            None => None,
        };
        Ok(Self { tcp, unix })
    }
}

/// Who may connect to the SDS Unix socket. Connecting to a Unix socket needs write permission
/// on it, so its mode and group are the first gate; the authentication mode is the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixSocketAccess {
    /// Permission bits (`0o660`).
    pub mode: u32,
    /// Group to give the socket; `None` keeps meshca's own group.
    pub group: Option<u32>,
}

impl UnixSocketAccess {
    /// `0600` (meshca's own user) in development mode, where whoever connects is believed;
    /// `0666` in the modes that authenticate every caller on the connection (its uid, a token
    /// or a client certificate), so that the proxies' users can connect and unknown callers
    /// are refused by authentication, as the SPIRE agent's socket does.
    pub fn default_for(auth: &super::AuthMode) -> Self {
        let mode = match auth {
            super::AuthMode::Development => 0o600,
            _ => 0o666,
        };
        Self { mode, group: None }
    }
}

/// Binds the Unix socket at `path` with `access`, so that it is never reachable at `path` with
/// other permissions: it is bound in a fresh private directory (mode 0700) next to `path`, given
/// its group and mode there — where nobody else can reach it or swap the file under the
/// `chown`/`chmod`, which follow paths — and only then renamed into place. (A process-wide
/// umask would race with every other thread creating files.) A missing parent directory is
/// created with mode 0755; the proxies' users need search (`x`) permission on every directory
/// of the path.
async fn bind_unix(path: &Path, access: UnixSocketAccess) -> Result<UnixSocket, SdsError> {
    let bind_error = |source| SdsError::Bind {
        address: path.display().to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(bind_error(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving on this socket; stop it or choose another path",
                )));
            }
            // A socket file nobody listens on: left over from a previous run.
            std::fs::remove_file(path).map_err(bind_error)?;
        }
        Ok(_) => {
            return Err(bind_error(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; remove it or choose another path",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&parent)
            .map_err(bind_error)?;
        debug!(directory = %parent.display(), "created the SDS socket's directory");
    }
    let private = parent.join(format!(".meshca-{:08x}", rand::random::<u32>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(bind_error)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        if let Some(gid) = access.group {
            std::os::unix::fs::chown(&staged, None, Some(gid)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot give the socket group {gid} (sds.unixSocketGroup): {e}; meshca \
                         must be a member of that group (or root)"
                    ),
                )
            })?;
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(access.mode))?;
        std::fs::rename(&staged, path)?;
        listener.set_nonblocking(true)?;
        Ok::<_, io::Error>(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    let listener = UnixListener::from_std(bound.map_err(bind_error)?).map_err(bind_error)?;
    info!(
        path = %path.display(),
        mode = %format!("{:04o}", access.mode),
        group = ?access.group,
        "SDS Unix socket bound"
    );
    Ok(UnixSocket {
        listener,
        path: path.to_owned(),
    })
}

/// What the accept loops need besides the listeners.
pub(crate) struct AcceptSettings {
    /// TLS on every listener, if configured.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The connection, TLS-handshake and preface limits.
    pub(crate) limits: SdsLimits,
    /// Where refused handshakes are counted.
    pub(crate) stats: Arc<SdsStats>,
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
        settings,
        tx,
        over_limit: SharedThrottle::new(WARN_EVERY, 1),
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
    tx: mpsc::Sender<Result<Connection, io::Error>>,
    over_limit: SharedThrottle,
}

/// A listener the accept loop can take connections from.
trait Listener: Send + Sync {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    fn plain(stream: Self::Stream) -> Io;
    fn secured(stream: TlsStream<Self::Stream>) -> Io;
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<TcpStream> {
        let (stream, remote) = TcpListener::accept(self).await?;
        debug!(%remote, "SDS TCP connection");
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn plain(stream: TcpStream) -> Io {
        Io::Tcp(stream)
    }

    fn secured(stream: TlsStream<TcpStream>) -> Io {
        Io::TlsTcp(Box::new(stream))
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

    fn secured(stream: TlsStream<UnixStream>) -> Io {
        Io::TlsUnix(Box::new(stream))
    }
}

async fn accept_loop<L: Listener>(listener: L, shared: Arc<AcceptShared>, stop: CancellationToken) {
    let mut failures = AcceptFailures::default();
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
        if let Some(suppressed) = shared.over_limit.ready() {
            warn!(
                limit,
                refused_since_last_warning = suppressed,
                "SDS connection refused: sds.maxConnections connections are open; raise it or \
                 add replicas"
            );
        }
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let limits = &shared.settings.limits;
        let io = match &shared.settings.tls {
            None => L::plain(stream),
            Some(acceptor) => {
                let timeout = limits.handshake_timeout;
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => L::secured(tls),
                    // A refused or abandoned handshake is an unauthenticated caller (no or a
                    // wrong client certificate, or a port scan): counted, and logged at debug
                    // to keep a scan from flooding the log.
                    Ok(Err(e)) => {
                        SdsStats::bump(&shared.settings.stats.unauthenticated);
                        debug!(error = %e, "SDS TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        SdsStats::bump(&shared.settings.stats.unauthenticated);
                        debug!(
                            ?timeout,
                            "SDS TLS handshake timed out (sds.handshakeTimeout)"
                        );
                        return;
                    }
                }
            }
        };
        let connection = Connection {
            io,
            timer: ConnectionTimer::new(limits),
            _slot: slot,
        };
        let _ = shared.tx.send(Ok(connection)).await;
    });
}

/// Paces an accept loop whose `accept` fails (out of file descriptors, most often): it pauses
/// before the next attempt, longer while failures go on, and warns at most once per
/// [`WARN_EVERY`] with the number of failures since the last warning.
#[derive(Debug)]
struct AcceptFailures {
    pause: Duration,
    warnings: Throttle,
}

impl Default for AcceptFailures {
    fn default() -> Self {
        Self {
            pause: Self::FIRST_PAUSE,
            warnings: Throttle::new(WARN_EVERY, 1),
        }
    }
}

impl AcceptFailures {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    /// Notes a failure; returns how long to pause before accepting again.
    fn failed(&mut self, error: &io::Error, now: Instant) -> Duration {
        if let Some(suppressed) = self.warnings.ready(now) {
            let hint = match error.raw_os_error() {
                Some(code) if code == EMFILE || code == ENFILE => {
                    "out of file descriptors: raise the open-files limit (ulimit -n, \
                     LimitNOFILE) or lower sds.maxConnections"
                }
                _ => "retrying",
            };
            warn!(%error, failures_since_last_warning = suppressed, hint, "SDS listener cannot accept connections");
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

        fn secured(stream: TlsStream<TcpStream>) -> Io {
            Io::TlsTcp(Box::new(stream))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_accept_loop_out_of_file_descriptors_does_not_spin() {
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, _rx) = mpsc::channel(1);
        let shared = Arc::new(AcceptShared {
            settings: AcceptSettings {
                tls: None,
                limits: SdsLimits::default(),
                stats: Arc::default(),
            },
            slots: Arc::new(Semaphore::new(1)),
            tx,
            over_limit: SharedThrottle::new(WARN_EVERY, 1),
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

    #[test]
    fn running_out_of_file_descriptors_pauses_and_warns_once_per_period() {
        let emfile = io::Error::from_raw_os_error(EMFILE);
        let start = Instant::now();
        let mut failures = AcceptFailures::default();
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
