//! Everything before a stream serves, and the limits every request is held to: who the caller
//! is, a slot under the global and per-identity stream limits, the first request within its
//! timeout, the checks of each request's type, size and node, and how a refusal is counted,
//! logged and turned into a status (docs/SECURITY.md, "SDS listener limits").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use envoy_types::pb::envoy::config::core::v3::Node;
use futures::FutureExt;
use meshca_provider::{SpiffeId, TrustDomain};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status, Streaming};
use tracing::{debug, info, warn};

use crate::sds::SdsLimits;
use crate::sds::auth::Authenticator;
use crate::sds::convert::SECRET_TYPE_URL;
use crate::sds::error::RequestError;
use crate::sds::source::SecretSource;
use crate::sds::stats::{BundleAcks, SdsStats};
use crate::sds::throttle::SharedThrottle;
use crate::sds::transport::{Busy, PeerInfo};

/// What every stream of one server shares.
pub(crate) struct Shared {
    pub(crate) source: Arc<dyn SecretSource>,
    pub(crate) auth: Authenticator,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) limits: SdsLimits,
    pub(crate) stats: Arc<SdsStats>,
    pub(crate) acks: Arc<BundleAcks>,
    pub(crate) stream_slots: Arc<Semaphore>,
    /// Streams held by each identity, for `max_streams_per_identity`.
    pub(crate) per_identity: Mutex<HashMap<SpiffeId, usize>>,
    pub(crate) drain: CancellationToken,
    pub(crate) next_stream: AtomicU64,
    /// Log lines for refusals and NACKs, which callers can cause at will.
    pub(crate) refusal_log: SharedThrottle,
    pub(crate) nack_log: SharedThrottle,
    /// Log lines for expired certificates left out of responses (one per certificate and
    /// stream, which after an outage is every stream at once).
    pub(crate) expired_log: SharedThrottle,
}

/// The longest Envoy node id accepted. Envoy's own are short; Istio-style ids
/// (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`) stay well under it.
pub(crate) const MAX_NODE_ID_BYTES: usize = 1024;
/// The largest Envoy node accepted (encoded: id, metadata, locality, extensions…). meshca reads
/// two metadata fields; proxies' metadata is a few KiB.
pub(crate) const MAX_NODE_BYTES: usize = 64 * 1024;

impl Shared {
    /// Counts, logs and converts a refusal. Every error a caller sees goes through here.
    pub(super) fn refuse(
        &self,
        stream: Option<u64>,
        caller: Option<&SpiffeId>,
        error: RequestError,
    ) -> Status {
        let caller = caller.map(ToString::to_string);
        let code = error.code();
        let counter = match code {
            Code::Unauthenticated => Some(&self.stats.unauthenticated),
            Code::PermissionDenied => Some(&self.stats.permission_denied),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange => {
                Some(&self.stats.rejected)
            }
            _ => None,
        };
        match counter {
            // Refusals are counted each, logged at most `burst` per period: a caller can cause
            // them as fast as it can open streams.
            Some(counter) => {
                SdsStats::bump(counter);
                if let Some(held_back) = self.refusal_log.ready() {
                    match code {
                        Code::Unauthenticated => {
                            info!(?stream, error = %error, held_back, "SDS caller not authenticated")
                        }
                        Code::PermissionDenied => {
                            warn!(?stream, ?caller, error = %error, held_back, "SDS request denied")
                        }
                        _ => {
                            info!(?stream, ?caller, error = %error, held_back, "SDS request rejected")
                        }
                    }
                }
            }
            None => debug!(?stream, ?caller, error = %error, "SDS call ended"),
        }
        error.into()
    }

    /// Checks what every request carries before anything of it is used: the type URL, the
    /// number of names, the size of the Envoy node.
    pub(super) fn check_request(
        &self,
        type_url: &str,
        names: usize,
        node: Option<&Node>,
    ) -> Result<(), RequestError> {
        check_node(node)?;
        if !type_url.is_empty() && type_url != SECRET_TYPE_URL {
            return Err(RequestError::WrongType {
                type_url: type_url.chars().take(200).collect(),
                expected: SECRET_TYPE_URL,
            });
        }
        if names > self.limits.max_names_per_request {
            return Err(RequestError::TooManyNames {
                count: names,
                limit: self.limits.max_names_per_request,
            });
        }
        Ok(())
    }

    /// Takes a slot for an authenticated caller's stream, under the global and the
    /// per-identity limit.
    fn open_stream(
        self: &Arc<Self>,
        caller: &SpiffeId,
        peer: Option<&PeerInfo>,
    ) -> Result<StreamSlot, RequestError> {
        let permit = self.stream_slots.clone().try_acquire_owned().map_err(|_| {
            RequestError::TooManyStreams {
                limit: self.limits.max_streams,
            }
        })?;
        {
            let mut held = lock(&self.per_identity);
            let count = held.entry(caller.clone()).or_insert(0);
            if *count >= self.limits.max_streams_per_identity {
                return Err(RequestError::TooManyStreamsForIdentity {
                    identity: caller.to_string(),
                    limit: self.limits.max_streams_per_identity,
                });
            }
            *count += 1;
        }
        SdsStats::bump(&self.stats.streams_open);
        SdsStats::bump(&self.stats.streams_total);
        let connection = busy(peer);
        Ok(StreamSlot {
            id: self.next_stream.fetch_add(1, Ordering::Relaxed),
            shared: self.clone(),
            caller: caller.clone(),
            _connection: connection,
            _permit: permit,
        })
    }

    pub(super) async fn authenticate(
        &self,
        peer: Option<&PeerInfo>,
        metadata: &MetadataMap,
        node: Option<&Node>,
    ) -> Result<SpiffeId, RequestError> {
        Ok(self.auth.authenticate(peer, metadata, node).await?)
    }
}

/// One open stream's share of the stream limits and the open-streams gauge.
pub(super) struct StreamSlot {
    pub(super) id: u64,
    shared: Arc<Shared>,
    caller: SpiffeId,
    /// Keeps the connection from its idle timeout.
    _connection: Option<Busy>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.shared
            .stats
            .streams_open
            .fetch_sub(1, Ordering::Relaxed);
        let mut held = lock(&self.shared.per_identity);
        if let Some(count) = held.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

/// Marks the caller's connection busy (not idle) while the guard lives.
pub(super) fn busy(peer: Option<&PeerInfo>) -> Option<Busy> {
    peer.and_then(|p| p.activity.as_ref()).map(|a| a.busy())
}

/// The Envoy node of a request, if any, within [`MAX_NODE_ID_BYTES`] and [`MAX_NODE_BYTES`].
fn check_node(node: Option<&Node>) -> Result<(), RequestError> {
    let Some(node) = node else {
        return Ok(());
    };
    if node.id.len() > MAX_NODE_ID_BYTES {
        return Err(RequestError::NodeTooLarge {
            field: "id",
            size: node.id.len(),
            limit: MAX_NODE_ID_BYTES,
        });
    }
    let size = prost::Message::encoded_len(node);
    if size > MAX_NODE_BYTES {
        return Err(RequestError::NodeTooLarge {
            field: "metadata (the whole node)",
            size,
            limit: MAX_NODE_BYTES,
        });
    }
    Ok(())
}

/// A request that could not be read: decoding errors and oversized messages are the caller's
/// (refused and counted); anything else means the connection is gone.
pub(super) fn unreadable(status: &Status) -> Option<RequestError> {
    matches!(status.code(), Code::InvalidArgument | Code::OutOfRange).then(|| {
        RequestError::Unreadable {
            code: status.code(),
            reason: status.message().to_owned(),
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Holders only adjust counters, each in one step: a panic leaves nothing half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stream past its prologue: it holds a slot, its first request, and an authenticated caller.
pub(super) struct Opened<T> {
    pub(super) slot: StreamSlot,
    pub(super) first: T,
    pub(super) inbound: Streaming<T>,
    /// Who the stream serves.
    pub(super) caller: SpiffeId,
}

/// What every stream does before serving, SotW or delta: authenticate the caller from its
/// transport and metadata, take a slot under the global and per-identity stream limits, wait
/// (bounded) for the first request. An unauthenticated stream never holds a slot. Development
/// mode reads the identity from the first request's node, so there the first request comes
/// before authentication (a stream waiting for it holds no slot either). `None` when the
/// client went away without asking for anything.
pub(super) async fn open<T>(
    shared: &Arc<Shared>,
    request: Request<Streaming<T>>,
    node: impl Fn(&T) -> Option<&Node>,
    kind: &'static str,
) -> Result<Option<Opened<T>>, Status> {
    let (metadata, extensions, mut inbound) = request.into_parts();
    let peer = extensions.get::<PeerInfo>();
    let (caller, first) = if shared.auth.needs_node() {
        let Some(first) = first_message(shared, None, &mut inbound).await? else {
            return Ok(None);
        };
        check_node(node(&first)).map_err(|e| shared.refuse(None, None, e))?;
        let caller = shared
            .authenticate(peer, &metadata, node(&first))
            .await
            .map_err(|e| shared.refuse(None, None, e))?;
        (caller, Some(first))
    } else {
        let caller = shared
            .authenticate(peer, &metadata, None)
            .await
            .map_err(|e| shared.refuse(None, None, e))?;
        (caller, None)
    };
    let slot = shared
        .open_stream(&caller, peer)
        .map_err(|e| shared.refuse(None, Some(&caller), e))?;
    let first = match first {
        Some(first) => first,
        None => match first_message(shared, Some(slot.id), &mut inbound).await? {
            Some(first) => first,
            None => return Ok(None),
        },
    };
    debug!(stream = slot.id, %caller, kind, "SDS stream opened");
    Ok(Some(Opened {
        slot,
        first,
        inbound,
        caller,
    }))
}

/// Waits (at most `first_request_timeout`) for a stream's first request. `None` when the
/// client closed the stream without asking for anything.
async fn first_message<T>(
    shared: &Shared,
    stream: Option<u64>,
    inbound: &mut Streaming<T>,
) -> Result<Option<T>, Status> {
    let read = |message: Result<Option<T>, Status>| {
        message.map_err(|status| match unreadable(&status) {
            Some(error) => shared.refuse(stream, None, error),
            None => status,
        })
    };
    // A proxy usually sends its first request with the stream's headers: take it without
    // arming the timer. (`message` is cancel-safe: a partial message stays in `inbound`.)
    if !shared.drain.is_cancelled()
        && let Some(message) = inbound.message().now_or_never()
    {
        return read(message);
    }
    let timeout = shared.limits.first_request_timeout;
    tokio::select! {
        () = shared.drain.cancelled() => Err(shared.refuse(stream, None, RequestError::ShuttingDown)),
        () = tokio::time::sleep(timeout) => {
            Err(shared.refuse(stream, None, RequestError::NoFirstRequest { timeout }))
        }
        message = inbound.message() => read(message),
    }
}
