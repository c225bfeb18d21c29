//! SDS listeners: TCP and/or a Unix socket, optionally TLS, merged into one stream of
//! connections for tonic, each carrying what is known about its peer ([`PeerInfo`]). The Istio
//! CA listener (`crate::istio`) runs on the same accept loops, connection cap and timers.
//!
//! `listeners.rs` binds them (the Unix socket with its mode and group), `accept.rs` runs the
//! accept loops (connection cap, TLS handshakes, backoff when `accept` fails),
//! `connection.rs` is one accepted connection and its peer, and `idle.rs` its preface and
//! idle timer.

mod accept;
mod connection;
mod idle;
mod listeners;

pub(crate) use accept::{AcceptSettings, accept};
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
}

impl ListenerKind {
    /// The SDS listeners.
    pub(crate) const SDS: Self = Self {
        name: "SDS",
        config: "sds",
    };
}
