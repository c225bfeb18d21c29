//! One accepted connection ([`Connection`]) and what is known about its peer ([`PeerInfo`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::authority::AuthorityRewrite;
use super::handshakes::Gated;
use super::idle::{ConnectionActivity, ConnectionTimer};

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
    pub(super) io: Io,
    pub(super) timer: ConnectionTimer,
    pub(super) _slot: OwnedSemaphorePermit,
}

/// The stream of a connection, by listener kind.
pub(super) enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Box<TlsStream<Gated<TcpStream>>>),
    TlsUnix(Box<TlsStream<Gated<UnixStream>>>),
    /// A Unix socket whose clients' malformed `:authority` is rewritten (`authority.rs`).
    UnixRewritten(Box<AuthorityRewrite<UnixStream>>),
}

impl Io {
    /// The same stream with malformed `:authority` values rewritten, if it is a plain Unix
    /// socket; other streams are returned as they are.
    pub(super) fn rewriting_authority(self) -> Self {
        match self {
            Io::Unix(stream) => Io::UnixRewritten(Box::new(AuthorityRewrite::new(stream))),
            other => other,
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
                transport: tcp_peer(s.get_ref().0.get_ref()),
                certificates: peer_chain(s),
                activity,
            },
            Io::TlsUnix(s) => PeerInfo {
                transport: unix_peer(s.get_ref().0.get_ref()),
                certificates: peer_chain(s),
                activity,
            },
            Io::UnixRewritten(s) => PeerInfo {
                transport: unix_peer(s.get_ref()),
                certificates: None,
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
            Io::UnixRewritten($s) => $call,
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
