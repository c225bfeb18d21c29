//! SDS counters for `/metrics`, and which trust bundle each stream has acknowledged (for root
//! rotation: issuing may switch to a new root only once every proxy trusts it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use meshca_provider::{SpiffeId, TrustBundle};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

/// Counters of the SDS server. Plain atomics, read with [`SdsStats::snapshot`] or directly.
#[derive(Debug, Default)]
pub struct SdsStats {
    /// Streams (SotW and delta) open right now.
    pub streams_open: AtomicU64,
    /// Streams accepted since start.
    pub streams_total: AtomicU64,
    /// Responses sent (answers to requests and pushes).
    pub responses: AtomicU64,
    /// Responses sent because a certificate or bundle changed, not because of a request.
    pub pushes: AtomicU64,
    /// Requests acknowledging a response.
    pub acks: AtomicU64,
    /// Requests rejecting a response (`error_detail` set).
    pub nacks: AtomicU64,
    /// Callers refused as unauthenticated: calls refused with UNAUTHENTICATED (no or a bad
    /// credential, a foreign trust domain, an unmapped uid, a node naming no identity), and TLS
    /// handshakes refused or abandoned on an mTLS listener.
    pub unauthenticated: AtomicU64,
    /// Calls refused with PERMISSION_DENIED.
    pub permission_denied: AtomicU64,
    /// Calls refused with INVALID_ARGUMENT, RESOURCE_EXHAUSTED or OUT_OF_RANGE (malformed or
    /// oversized requests, limits reached).
    pub rejected: AtomicU64,
    /// Certificates left out of a response because they had expired (renewals failing): each
    /// certificate counts once per stream that held it.
    pub expired_withheld: AtomicU64,
    /// TLS handshakes shed: connections closed unprocessed after their ClientHello because
    /// more handshakes were waiting for the CPU than could be served within
    /// `handshakeTimeout` (the clients retry).
    pub handshakes_shed: AtomicU64,
    /// TLS handshakes the server gave up on after `handshakeTimeout` (counted in
    /// `unauthenticated` too): CPU may have been spent on them, unlike shed ones.
    pub handshakes_timed_out: AtomicU64,
}

/// A copy of [`SdsStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct SdsStatsSnapshot {
    pub streams_open: u64,
    pub streams_total: u64,
    pub responses: u64,
    pub pushes: u64,
    pub acks: u64,
    pub nacks: u64,
    pub unauthenticated: u64,
    pub permission_denied: u64,
    pub rejected: u64,
    pub expired_withheld: u64,
    pub handshakes_shed: u64,
    pub handshakes_timed_out: u64,
}

impl SdsStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> SdsStatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SdsStatsSnapshot {
            streams_open: read(&self.streams_open),
            streams_total: read(&self.streams_total),
            responses: read(&self.responses),
            pushes: read(&self.pushes),
            acks: read(&self.acks),
            nacks: read(&self.nacks),
            unauthenticated: read(&self.unauthenticated),
            permission_denied: read(&self.permission_denied),
            rejected: read(&self.rejected),
            expired_withheld: read(&self.expired_withheld),
            handshakes_shed: read(&self.handshakes_shed),
            handshakes_timed_out: read(&self.handshakes_timed_out),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Per stream holding a trust bundle, the bundle its proxy last acknowledged.
///
/// Root rotation asks [`BundleAcks::missing`] whether every connected proxy trusts a new root
/// before issuing from it; [`BundleAcks::changes`] wakes it when an acknowledgement arrives or a
/// stream comes or goes.
#[derive(Debug)]
pub struct BundleAcks {
    streams: Mutex<HashMap<u64, StreamBundle>>,
    generation: watch::Sender<u64>,
}

#[derive(Debug)]
struct StreamBundle {
    caller: SpiffeId,
    acked: Option<Arc<TrustBundle>>,
}

impl Default for BundleAcks {
    fn default() -> Self {
        Self {
            streams: Mutex::default(),
            generation: watch::Sender::new(0),
        }
    }
}

impl BundleAcks {
    /// The callers of connected bundle-holding streams whose last acknowledged bundle does not
    /// contain `root` (including streams that have not acknowledged anything yet).
    pub fn missing(&self, root: &CertificateDer<'_>) -> Vec<SpiffeId> {
        self.lock()
            .values()
            .filter(|s| !s.acked.as_ref().is_some_and(|b| b.contains(root)))
            .map(|s| s.caller.clone())
            .collect()
    }

    /// Number of connected streams holding a trust bundle.
    pub fn streams(&self) -> usize {
        self.lock().len()
    }

    /// A receiver whose value changes on every acknowledgement, opening and closing.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub(crate) fn register(&self, stream: u64, caller: &SpiffeId) {
        self.lock().entry(stream).or_insert_with(|| StreamBundle {
            caller: caller.clone(),
            acked: None,
        });
        self.bump();
    }

    pub(crate) fn acknowledged(&self, stream: u64, bundle: Arc<TrustBundle>) {
        if let Some(entry) = self.lock().get_mut(&stream) {
            entry.acked = Some(bundle);
        }
        self.bump();
    }

    pub(crate) fn unregister(&self, stream: u64) {
        if self.lock().remove(&stream).is_some() {
            self.bump();
        }
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, StreamBundle>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
