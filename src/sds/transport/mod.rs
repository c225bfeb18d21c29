//! SDS listeners: TCP and/or a Unix socket, optionally TLS, merged into one stream of
//! connections for tonic, each carrying what is known about its peer ([`PeerInfo`]). The Istio
//! CA listener (`crate::istio`) runs on the same accept loops, connection cap and timers.
//!
//! `listeners.rs` binds them (the Unix socket with its mode and group), `accept.rs` runs the
//! accept loops (connection cap, TLS handshakes, backoff when `accept` fails), `handshakes.rs`
//! gives the handshakes their turns at the CPU and refuses those that would wait too long,
//! `connection.rs` is one accepted connection and its peer, `idle.rs` its preface and
//! idle timer, `authority.rs` the `:authority` rewrite for gRPC clients that send a Unix
//! socket's path (the Workload API's), and `codec.rs` the gRPC codec of the SDS, Istio CA and
//! Workload API servers, with buffers sized for each API's messages.

mod accept;
mod authority;
pub mod codec;
mod connection;
mod handshakes;
mod idle;
mod listeners;

pub(crate) use accept::{AcceptSettings, accept};
pub use authority::rewrite_client_bytes;
pub use connection::{PeerInfo, PeerTransport};
pub(crate) use idle::Busy;
pub(crate) use listeners::Listeners;
pub use listeners::UnixSocketAccess;

/// Which listener the accept loops and connection timers serve: named in logs, and its
/// configuration section named in errors (`sds.maxConnections`, `istio.maxConnections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenerKind {
    /// For logs: `SDS`, `Istio CA`.
    pub(crate) name: &'static str,
    /// The configuration section of its limits: `sds`, `istio`.
    pub(crate) config: &'static str,
    /// The setting naming its Unix socket's group, for errors (`sds.unixSocketGroup`); empty
    /// for a listener without a Unix socket.
    pub(crate) unix_group_setting: &'static str,
}

impl ListenerKind {
    /// The SDS listeners.
    pub(crate) const SDS: Self = Self {
        name: "SDS",
        config: "sds",
        unix_group_setting: "sds.unixSocketGroup",
    };
}

/// The HTTP/2 limits of a gRPC listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Http2Limits {
    /// Streams one connection may have open at once (more are refused with REFUSED_STREAM).
    pub(crate) max_streams_per_connection: u32,
    /// The largest request header block accepted.
    pub(crate) max_header_list_bytes: u32,
    /// Receive window of a stream and of a connection: request bytes a connection can make
    /// the server hold before it reads them.
    pub(crate) receive_window_bytes: u32,
}

/// tonic's server for one of meshca's gRPC listeners: keepalive pings (30 s, 10 s to answer)
/// and `limits`, which tonic and hyper leave unlimited or at 1 MiB windows unless set.
pub(crate) fn grpc_server(limits: Http2Limits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .http2_max_header_list_size(Some(limits.max_header_list_bytes))
        .initial_stream_window_size(Some(limits.receive_window_bytes))
        .initial_connection_window_size(Some(limits.receive_window_bytes))
}

/// Runs a listener's gRPC server future (`serve`, over the accept loop's connections, stopping
/// when `drain` is cancelled) until it ends or `shutdown` resolves; then drains: logs
/// `draining`, cancels `drain` (new connections are refused, streams told to end) and gives
/// the open connections `drain_timeout` to close before it returns anyway (`listener` names
/// them in that warning). The SDS, Istio CA and Workload API servers all stop this way.
pub(crate) async fn serve_until_drained(
    serve: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: impl Future<Output = ()>,
    drain: tokio_util::sync::CancellationToken,
    drain_timeout: std::time::Duration,
    listener: &'static str,
    draining: &'static str,
) -> Result<(), tonic::transport::Error> {
    tokio::pin!(serve);
    tokio::pin!(shutdown);
    tokio::select! {
        result = &mut serve => {
            drain.cancel();
            return result;
        }
        () = &mut shutdown => {}
    }
    tracing::info!("{draining}");
    drain.cancel();
    match tokio::time::timeout(drain_timeout, serve).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                timeout = %meshca_provider::format_duration(drain_timeout),
                "{listener} connections still open after the drain timeout; closing them"
            );
            Ok(())
        }
    }
}
