//! SDS listeners: TCP and/or a Unix socket, optionally TLS, merged into one stream of
//! connections for tonic, each carrying what is known about its peer ([`PeerInfo`]).
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
