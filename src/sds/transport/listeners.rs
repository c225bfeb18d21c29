//! Binding the listeners of the SDS server (and of the Istio CA and Workload API servers): a TCP
//! port and/or a Unix socket made reachable only with its configured mode and group.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpSocket, UnixListener, UnixStream};
use tracing::{debug, info};

use super::ListenerKind;
use crate::sds::SdsError;

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
        kind: ListenerKind,
        tcp: Option<SocketAddr>,
        unix: Option<(&Path, UnixSocketAccess)>,
    ) -> Result<Self, SdsError> {
        let tcp = match tcp {
            Some(addr) => Some(bind_tcp(addr).map_err(|source| SdsError::Bind {
                address: addr.to_string(),
                source,
            })?),
            None => None,
        };
        let unix = match unix {
            Some((path, access)) => Some(bind_unix(kind, path, access).await?),
            None => None,
        };
        Ok(Self { tcp, unix })
    }
}

/// The accept queue asked of the kernel (which caps it at `net.core.somaxconn`, 4096 by
/// default since Linux 5.4). tokio's `TcpListener::bind` asks for 128: when thousands of proxies
/// reconnect at once (a restart), a short queue overflows and each dropped SYN is sent again by
/// the client's kernel only 1 s, 3 s … later, lengthening the storm.
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's `bind`, so
/// a restarted daemon binds while the old connections linger in TIME_WAIT).
fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Who may connect to the SDS Unix socket. Connecting to a Unix socket needs write permission
/// on it, so its mode and group are the first gate; the authentication mode is the second (its
/// default access is [`UnixSocketAccess::default_for`], next to the modes in `auth.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixSocketAccess {
    /// Permission bits (`0o660`).
    pub mode: u32,
    /// Group to give the socket; `None` keeps meshca's own group.
    pub group: Option<u32>,
}

/// Binds the Unix socket at `path` with `access`, so that it is never reachable at `path` with
/// other permissions: it is bound in a fresh private directory (mode 0700) next to `path`, given
/// its group and mode there — where nobody else can reach it or swap the file under the
/// `chown`/`chmod`, which follow paths — and only then renamed into place. (A process-wide
/// umask would race with every other thread creating files.) A missing parent directory is
/// created with mode 0755; the proxies' users need search (`x`) permission on every directory
/// of the path.
async fn bind_unix(
    kind: ListenerKind,
    path: &Path,
    access: UnixSocketAccess,
) -> Result<UnixSocket, SdsError> {
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
        debug!(directory = %parent.display(), "created the {} socket's directory", kind.name);
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
                        "cannot give the socket group {gid} ({}): {e}; meshca must be a \
                         member of that group (or root)",
                        kind.unix_group_setting
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
        "{} Unix socket bound",
        kind.name
    );
    Ok(UnixSocket {
        listener,
        path: path.to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 300 connections wait in the accept queue of a listener that accepts none: with tokio's
    /// default backlog (128) the kernel would drop the SYNs past it and those connects would
    /// hang until the client's SYN retries.
    #[tokio::test]
    async fn the_accept_queue_holds_a_burst_of_connections() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..300).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(800),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let streams = futures::future::join_all(connects).await;
        let queued = streams.iter().filter(|s| matches!(s, Ok(Ok(_)))).count();
        assert_eq!(queued, 300, "connections queued without an accept");
        drop(listener);
    }
}
