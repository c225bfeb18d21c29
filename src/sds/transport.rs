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

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use super::SdsError;

/// What is known about the other end of an SDS connection; available to handlers as a request
/// extension.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// How the peer is connected.
    pub transport: PeerTransport,
    /// The verified client certificate chain (leaf first), on TLS listeners.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
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

/// One accepted connection.
pub(crate) enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Box<TlsStream<TcpStream>>),
    TlsUnix(Box<TlsStream<UnixStream>>),
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
        match self {
            Self::Tcp(s) => PeerInfo {
                transport: tcp_peer(s),
                certificates: None,
            },
            Self::Unix(s) => PeerInfo {
                transport: unix_peer(s),
                certificates: None,
            },
            Self::TlsTcp(s) => PeerInfo {
                transport: tcp_peer(s.get_ref().0),
                certificates: peer_chain(s),
            },
            Self::TlsUnix(s) => PeerInfo {
                transport: unix_peer(s.get_ref().0),
                certificates: peer_chain(s),
            },
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Connection::Tcp($s) => $call,
            Connection::Unix($s) => $call,
            Connection::TlsTcp($s) => $call,
            Connection::TlsUnix($s) => $call,
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
            Self::TlsTcp(s) => s.is_write_vectored(),
            Self::TlsUnix(s) => s.is_write_vectored(),
        }
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

/// Accepts on every listener until `stop` is cancelled, handing connections (after the TLS
/// handshake, done off the accept loop) to the returned receiver.
pub(crate) fn accept(
    listeners: Listeners,
    tls: Option<(TlsAcceptor, Duration)>,
    stop: CancellationToken,
) -> mpsc::Receiver<Result<Connection, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    if let Some(listener) = listeners.tcp {
        let (tx, tls, stop) = (tx.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, remote)) => {
                        debug!(%remote, "SDS TCP connection");
                        let _ = stream.set_nodelay(true);
                        hand_over(
                            stream,
                            Connection::Tcp,
                            |s| Connection::TlsTcp(Box::new(s)),
                            &tls,
                            &tx,
                        );
                    }
                    Err(e) => accept_failed(&e).await,
                }
            }
        });
    }
    if let Some(socket) = listeners.unix {
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = socket.listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _)) => hand_over(
                        stream,
                        Connection::Unix,
                        |s| Connection::TlsUnix(Box::new(s)),
                        &tls,
                        &tx,
                    ),
                    Err(e) => accept_failed(&e).await,
                }
            }
        });
    }
    rx
}

fn hand_over<S>(
    stream: S,
    plain: fn(S) -> Connection,
    secured: fn(TlsStream<S>) -> Connection,
    tls: &Option<(TlsAcceptor, Duration)>,
    tx: &mpsc::Sender<Result<Connection, io::Error>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tx = tx.clone();
    match tls.clone() {
        None => {
            tokio::spawn(async move {
                let _ = tx.send(Ok(plain(stream))).await;
            });
        }
        Some((acceptor, timeout)) => {
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(secured(tls))).await;
                    }
                    // Failed handshakes are the client's problem (wrong CA, no certificate);
                    // they are logged at debug to keep a port scan from flooding the log.
                    Ok(Err(e)) => debug!(error = %e, "SDS TLS handshake failed"),
                    Err(_) => debug!(?timeout, "SDS TLS handshake timed out"),
                }
            });
        }
    }
}

async fn accept_failed(error: &io::Error) {
    warn!(%error, "SDS listener failed to accept a connection");
    // Out of file descriptors and similar: don't spin.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
