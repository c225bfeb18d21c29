//! The SDS protocol: `StreamSecrets` (state of the world), `DeltaSecrets` and `FetchSecrets`.
//!
//! A stream's state lives in the response stream tonic sends from, which is polled only when
//! the connection can take a response (`responses`): no task or queue per stream, and a slow
//! proxy only ever delays itself. A stream:
//! 1. authenticates its caller on the first request, before anything is issued;
//! 2. resolves every requested name (malformed → INVALID_ARGUMENT, another identity's
//!    certificate → PERMISSION_DENIED) before subscribing to any;
//! 3. subscribes to the source's `watch` receivers and answers;
//! 4. then waits for either a request (ACK, NACK, changed names) or a change on any receiver
//!    (renewal, root rotation), which is pushed.
//!
//! Versions and nonces are per-stream counters. An ACK or NACK only counts when it carries the
//! last nonce sent; older nonces are stale and ignored (state of the world) or only their
//! subscription changes are applied (delta, where requests are incremental).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use meshca_provider::{SpiffeId, TrustBundle, TrustDomain};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_stream::StreamMap;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::SdsLimits;
use super::auth::Authenticator;
use super::convert::{self, SECRET_TYPE_URL};
use super::error::RequestError;
use super::names::{Resolved, ResourceName};
use super::source::{Purpose, SecretSource, ServedCertificate};
use super::stats::{BundleAcks, SdsStats};
use super::throttle::{CallerText, SharedThrottle};
use super::transport::{Busy, PeerInfo};

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
}

/// The longest Envoy node id accepted. Envoy's own are short; Istio-style ids
/// (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`) stay well under it.
pub(crate) const MAX_NODE_ID_BYTES: usize = 1024;
/// The largest Envoy node accepted (encoded: id, metadata, locality, extensions…). meshca reads
/// two metadata fields; proxies' metadata is a few KiB.
pub(crate) const MAX_NODE_BYTES: usize = 64 * 1024;
/// Versions longer than this in a delta stream's `initial_resource_versions` are not meshca's
/// (they are short hashes) and are not kept.
const MAX_VERSION_BYTES: usize = 128;

impl Shared {
    /// Counts, logs and converts a refusal. Every error a caller sees goes through here.
    fn refuse(
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
    fn check_request(
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

    async fn authenticate(
        &self,
        peer: Option<&PeerInfo>,
        metadata: &MetadataMap,
        node: Option<&Node>,
    ) -> Result<SpiffeId, RequestError> {
        Ok(self.auth.authenticate(peer, metadata, node).await?)
    }
}

/// One open stream's share of the stream limits and the open-streams gauge.
struct StreamSlot {
    id: u64,
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
fn busy(peer: Option<&PeerInfo>) -> Option<Busy> {
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
fn unreadable(status: &Status) -> Option<RequestError> {
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

/// The gRPC service.
#[derive(Clone)]
pub(crate) struct SdsService(pub(crate) Arc<Shared>);

/// The responses of one stream, produced as the connection takes them (see [`responses`]).
type ResponseStream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let Some(Opened {
            slot,
            first,
            inbound,
            subs,
        }) = open(
            &self.0,
            request,
            |r: &DiscoveryRequest| r.node.as_ref(),
            "sotw",
        )
        .await?
        else {
            return Ok(Response::new(futures::stream::empty().boxed()));
        };
        let mut stream = SotwStream {
            subs,
            names: Vec::new(),
            sequence: 0,
            last: None,
            acked_version: None,
            slot,
        };
        let first = match stream.on_request(first).await {
            Ok(response) => response,
            Err(e) => return Err(initial_failure(&stream.subs, e)),
        };
        Ok(Response::new(responses(stream, inbound, first)))
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let Some(Opened {
            slot,
            first,
            inbound,
            subs,
        }) = open(
            &self.0,
            request,
            |r: &DeltaDiscoveryRequest| r.node.as_ref(),
            "delta",
        )
        .await?
        else {
            return Ok(Response::new(futures::stream::empty().boxed()));
        };
        let mut stream = DeltaStream {
            subs,
            client_versions: HashMap::new(),
            sequence: 0,
            last: None,
            first: true,
            slot,
        };
        let first = match stream.on_request(first).await {
            Ok(response) => response,
            Err(e) => return Err(initial_failure(&stream.subs, e)),
        };
        Ok(Response::new(responses(stream, inbound, first)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let shared = self.0.clone();
        let (metadata, extensions, request) = request.into_parts();
        shared
            .check_request(
                &request.type_url,
                request.resource_names.len(),
                request.node.as_ref(),
            )
            .map_err(|e| shared.refuse(None, None, e))?;
        let caller = shared
            .authenticate(
                extensions.get::<PeerInfo>(),
                &metadata,
                request.node.as_ref(),
            )
            .await
            .map_err(|e| shared.refuse(None, None, e))?;
        // An answer may wait on issuance: the connection is not idle meanwhile.
        let _busy = busy(extensions.get::<PeerInfo>());
        let names = dedup(request.resource_names);
        let mut subs = Subscriptions::new(shared.clone(), caller, u64::MAX, false);
        subs.replace(&names).await.map_err(|e| subs.refuse(e))?;
        let rendered: Vec<Rendered> = names.iter().filter_map(|n| subs.render(n)).collect();
        let version = combined_version(&rendered);
        SdsStats::bump(&shared.stats.responses);
        Ok(Response::new(DiscoveryResponse {
            version_info: version.clone(),
            resources: rendered.into_iter().map(|r| r.resource).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: version,
            ..DiscoveryResponse::default()
        }))
    }
}

/// A stream past its prologue: it holds a slot, its first request, and an authenticated caller.
struct Opened<T> {
    slot: StreamSlot,
    first: T,
    inbound: Streaming<T>,
    subs: Subscriptions,
}

/// What every stream does before serving, SotW or delta: authenticate the caller from its
/// transport and metadata, take a slot under the global and per-identity stream limits, wait
/// (bounded) for the first request. An unauthenticated stream never holds a slot. Development
/// mode reads the identity from the first request's node, so there the first request comes
/// before authentication (a stream waiting for it holds no slot either). `None` when the
/// client went away without asking for anything.
async fn open<T>(
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
    let subs = Subscriptions::new(shared.clone(), caller, slot.id, true);
    Ok(Some(Opened {
        slot,
        first,
        inbound,
        subs,
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

/// How a stream's task ended.
enum Exit {
    /// The client closed its side or went away.
    ClientGone,
    /// The server is draining.
    Draining,
    /// A request was refused; the stream ends with this error.
    Refused(RequestError),
}

/// One rendered resource.
struct Rendered {
    name: String,
    resource: Any,
    version: String,
    bundle: Option<Arc<TrustBundle>>,
}

/// What one subscribed name is bound to.
enum Entry {
    Certificate(watch::Receiver<Arc<ServedCertificate>>),
    Bundle { peer: Option<SpiffeId> },
}

/// The names a stream holds, their receivers, and change notification over all of them.
struct Subscriptions {
    shared: Arc<Shared>,
    caller: SpiffeId,
    stream: u64,
    track_acks: bool,
    entries: HashMap<String, Entry>,
    changes: StreamMap<String, BoxStream<'static, ()>>,
    bundle: watch::Receiver<Arc<TrustBundle>>,
    bundle_open: bool,
    bundle_holders: usize,
}

impl Subscriptions {
    fn new(shared: Arc<Shared>, caller: SpiffeId, stream: u64, track_acks: bool) -> Self {
        let mut bundle = shared.source.trust_bundle();
        bundle.mark_unchanged();
        Self {
            shared,
            caller,
            stream,
            track_acks,
            entries: HashMap::new(),
            changes: StreamMap::new(),
            bundle,
            bundle_open: true,
            bundle_holders: 0,
        }
    }

    fn refuse(&self, error: RequestError) -> Status {
        self.shared
            .refuse(Some(self.stream), Some(&self.caller), error)
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Makes the subscription exactly `names`.
    async fn replace(&mut self, names: &[String]) -> Result<(), RequestError> {
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let new: Vec<String> = names
            .iter()
            .filter(|n| !self.contains(n))
            .cloned()
            .collect();
        // Resolve (and refuse) before dropping anything, so a refused request changes nothing.
        let resolved = self.resolve(&new)?;
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name);
        }
        self.bind(resolved).await
    }

    /// Adds `names` to the subscription.
    async fn add(&mut self, names: &[String]) -> Result<(), RequestError> {
        let new: Vec<String> = names
            .iter()
            .filter(|n| !self.contains(n))
            .cloned()
            .collect();
        let resolved = self.resolve(&new)?;
        self.bind(resolved).await
    }

    /// Parses and authorizes names without side effects.
    fn resolve(&self, names: &[String]) -> Result<Vec<(String, Resolved)>, RequestError> {
        names
            .iter()
            .map(|name| {
                let parsed = ResourceName::parse(name, &self.shared.trust_domain)?;
                Ok((name.clone(), parsed.resolve(name, &self.caller)?))
            })
            .collect()
    }

    /// Subscribes resolved names to the source; issuing happens here, after authorization.
    async fn bind(&mut self, resolved: Vec<(String, Resolved)>) -> Result<(), RequestError> {
        let mut fetched: HashMap<Purpose, watch::Receiver<Arc<ServedCertificate>>> = HashMap::new();
        for (name, target) in resolved {
            let entry = match target {
                Resolved::Certificate { identity, purpose } => {
                    let receiver = match fetched.get(&purpose) {
                        Some(receiver) => receiver.clone(),
                        None => {
                            let receiver =
                                self.shared.source.certificate(&identity, purpose).await?;
                            fetched.insert(purpose, receiver.clone());
                            receiver
                        }
                    };
                    self.changes
                        .insert(name.clone(), changes_of(receiver.clone()));
                    Entry::Certificate(receiver)
                }
                Resolved::Bundle { peer } => {
                    self.bundle_holders += 1;
                    if self.bundle_holders == 1 && self.track_acks {
                        self.shared.acks.register(self.stream, &self.caller);
                    }
                    Entry::Bundle { peer }
                }
            };
            self.entries.insert(name, entry);
        }
        Ok(())
    }

    fn remove(&mut self, name: &str) {
        self.changes.remove(name);
        if let Some(Entry::Bundle { .. }) = self.entries.remove(name) {
            self.bundle_holders -= 1;
            if self.bundle_holders == 0 && self.track_acks {
                self.shared.acks.unregister(self.stream);
            }
        }
    }

    /// The current resource for a subscribed name.
    fn render(&self, name: &str) -> Option<Rendered> {
        match self.entries.get(name)? {
            Entry::Certificate(receiver) => {
                let certificate = receiver.borrow().clone();
                Some(Rendered {
                    name: name.to_owned(),
                    resource: convert::pack(&convert::tls_certificate_secret(name, &certificate)),
                    version: convert::certificate_version(&certificate),
                    bundle: None,
                })
            }
            Entry::Bundle { peer } => {
                let bundle = self.bundle.borrow().clone();
                Some(Rendered {
                    name: name.to_owned(),
                    resource: convert::pack(&convert::validation_context_secret(
                        name,
                        &bundle,
                        peer.as_ref(),
                    )),
                    version: convert::bundle_version(&bundle, peer.as_ref()),
                    bundle: Some(bundle),
                })
            }
        }
    }

    /// Resolves when a held certificate or the trust bundle (if held) changed. Cancel-safe.
    async fn changed(&mut self) {
        loop {
            tokio::select! {
                Some(_) = self.changes.next(), if !self.changes.is_empty() => return,
                result = self.bundle.changed(), if self.bundle_open && self.bundle_holders > 0 => {
                    if result.is_ok() {
                        return;
                    }
                    // The source dropped its bundle sender: the last bundle stays served.
                    self.bundle_open = false;
                }
                else => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        if self.bundle_holders > 0 && self.track_acks {
            self.shared.acks.unregister(self.stream);
        }
    }
}

/// A stream of `()` for every change a receiver sees; it ends when the sender is dropped.
fn changes_of<T: Send + Sync + 'static>(receiver: watch::Receiver<T>) -> BoxStream<'static, ()> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok()?;
        Some(((), receiver))
    })
    .boxed()
}

/// What was sent last on a stream, to match its ACK.
struct Sent {
    nonce: String,
    versions: Vec<(String, String)>,
    bundle: Option<Arc<TrustBundle>>,
    /// An ACK or NACK of this response was counted: a repeated one is not counted or logged
    /// again (a proxy answers each response once; a NACK storm is one NACK).
    answered: bool,
}

/// A state-of-the-world `StreamSecrets` stream.
struct SotwStream {
    subs: Subscriptions,
    /// The names of the last accepted request, in its order, without duplicates.
    names: Vec<String>,
    sequence: u64,
    last: Option<Sent>,
    acked_version: Option<String>,
    slot: StreamSlot,
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const KIND: &'static str = "sotw";

    fn subs(&mut self) -> &mut Subscriptions {
        &mut self.subs
    }

    fn acked_version(&self) -> Option<&str> {
        self.acked_version.as_deref()
    }

    async fn on_request(
        &mut self,
        request: DiscoveryRequest,
    ) -> Result<Option<DiscoveryResponse>, RequestError> {
        SotwStream::on_request(self, request).await
    }

    fn respond(&mut self, push: bool) -> Option<DiscoveryResponse> {
        SotwStream::respond(self, push)
    }
}

impl SotwStream {
    /// Applies a request; returns the response it calls for, if any.
    async fn on_request(
        &mut self,
        request: DiscoveryRequest,
    ) -> Result<Option<DiscoveryResponse>, RequestError> {
        self.subs.shared.check_request(
            &request.type_url,
            request.resource_names.len(),
            request.node.as_ref(),
        )?;
        if let Some(last) = &mut self.last
            && !request.response_nonce.is_empty()
        {
            if request.response_nonce != last.nonce {
                debug!(stream = self.slot.id, nonce = %CallerText(&request.response_nonce), "stale SDS nonce ignored");
                return Ok(None);
            }
            if !std::mem::replace(&mut last.answered, true) {
                let shared = &self.subs.shared;
                match &request.error_detail {
                    Some(detail) => {
                        SdsStats::bump(&shared.stats.nacks);
                        log_nack(shared, self.slot.id, &self.subs.caller, &self.names, detail);
                    }
                    None => {
                        SdsStats::bump(&shared.stats.acks);
                        // The nonce matched: the version acknowledged is the one sent (never
                        // the caller's text, which would be stored for the stream's life).
                        self.acked_version = Some(last.nonce.clone());
                        if let Some(bundle) = &last.bundle {
                            shared.acks.acknowledged(self.slot.id, bundle.clone());
                        }
                    }
                }
            }
        }
        let names = dedup(request.resource_names);
        let same = self.last.is_some() && same_set(&names, &self.names);
        if same {
            return Ok(None);
        }
        self.subs.replace(&names).await?;
        self.names = names;
        Ok(self.respond(false))
    }

    /// The response for the current state; `None` for a push that would change nothing.
    fn respond(&mut self, push: bool) -> Option<DiscoveryResponse> {
        let rendered: Vec<Rendered> = self
            .names
            .iter()
            .filter_map(|n| self.subs.render(n))
            .collect();
        let versions: Vec<(String, String)> = rendered
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        if push && self.last.as_ref().is_some_and(|l| l.versions == versions) {
            return None;
        }
        self.sequence += 1;
        let nonce = self.sequence.to_string();
        let bundle = rendered.iter().find_map(|r| r.bundle.clone());
        let response = DiscoveryResponse {
            version_info: nonce.clone(),
            resources: rendered.into_iter().map(|r| r.resource).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: nonce.clone(),
            ..DiscoveryResponse::default()
        };
        self.last = Some(Sent {
            nonce,
            versions,
            bundle,
            answered: false,
        });
        Some(response)
    }
}

/// A `DeltaSecrets` stream.
struct DeltaStream {
    subs: Subscriptions,
    /// The version of each resource the client holds (as far as we know).
    client_versions: HashMap<String, String>,
    sequence: u64,
    last: Option<Sent>,
    first: bool,
    slot: StreamSlot,
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const KIND: &'static str = "delta";

    fn subs(&mut self) -> &mut Subscriptions {
        &mut self.subs
    }

    fn acked_version(&self) -> Option<&str> {
        None
    }

    async fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
    ) -> Result<Option<DeltaDiscoveryResponse>, RequestError> {
        DeltaStream::on_request(self, request).await
    }

    fn respond(&mut self, _push: bool) -> Option<DeltaDiscoveryResponse> {
        // Delta sends only what the client lacks, push or not.
        DeltaStream::respond(self)
    }
}

impl DeltaStream {
    /// Applies a request; returns the response it calls for, if any.
    async fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
    ) -> Result<Option<DeltaDiscoveryResponse>, RequestError> {
        let shared = self.subs.shared.clone();
        // Subscriptions and unsubscriptions count together; `initial_resource_versions` (only
        // read on the first request) against the same limit on its own.
        shared.check_request(
            &request.type_url,
            request
                .resource_names_subscribe
                .len()
                .saturating_add(request.resource_names_unsubscribe.len()),
            request.node.as_ref(),
        )?;
        if request.initial_resource_versions.len() > shared.limits.max_names_per_request {
            return Err(RequestError::TooManyNames {
                count: request.initial_resource_versions.len(),
                limit: shared.limits.max_names_per_request,
            });
        }
        if !request.response_nonce.is_empty() {
            match &mut self.last {
                Some(last) if last.nonce == request.response_nonce => {
                    if !std::mem::replace(&mut last.answered, true) {
                        match &request.error_detail {
                            Some(detail) => {
                                SdsStats::bump(&shared.stats.nacks);
                                let names: Vec<&String> =
                                    last.versions.iter().map(|(n, _)| n).collect();
                                log_nack(&shared, self.slot.id, &self.subs.caller, &names, detail);
                            }
                            None => {
                                SdsStats::bump(&shared.stats.acks);
                                if let Some(bundle) = &last.bundle {
                                    shared.acks.acknowledged(self.slot.id, bundle.clone());
                                }
                            }
                        }
                    }
                }
                // Delta requests are incremental: a stale nonce's ACK is ignored, but its
                // subscription changes below still apply.
                _ => {
                    debug!(stream = self.slot.id, nonce = %CallerText(&request.response_nonce), "stale SDS delta nonce")
                }
            }
        }
        let subscribe = dedup(request.resource_names_subscribe);
        if std::mem::take(&mut self.first) {
            // Only versions of names this request subscribes to, and only ones that can be
            // meshca's, are kept: the rest would be stored for nothing.
            self.client_versions
                .extend(
                    request
                        .initial_resource_versions
                        .into_iter()
                        .filter(|(name, version)| {
                            version.len() <= MAX_VERSION_BYTES && subscribe.contains(name)
                        }),
                );
        }
        let unsubscribe: HashSet<&String> = request
            .resource_names_unsubscribe
            .iter()
            .filter(|n| !subscribe.contains(n))
            .collect();
        let kept = self
            .subs
            .entries
            .keys()
            .filter(|n| !unsubscribe.contains(n))
            .count();
        let added = subscribe.iter().filter(|n| !self.subs.contains(n)).count();
        if kept + added > shared.limits.max_names_per_request {
            return Err(RequestError::TooManyNames {
                count: kept + added,
                limit: shared.limits.max_names_per_request,
            });
        }
        // Resolve new names first: a refused request changes nothing.
        self.subs.add(&subscribe).await?;
        for name in unsubscribe {
            self.subs.remove(name);
            self.client_versions.remove(name);
        }
        Ok(self.respond())
    }

    /// Every subscribed resource whose version the client does not hold; `None` when there is
    /// none.
    fn respond(&mut self) -> Option<DeltaDiscoveryResponse> {
        let mut names: Vec<&String> = self.subs.entries.keys().collect();
        names.sort();
        let changed: Vec<Rendered> = names
            .into_iter()
            .filter_map(|n| self.subs.render(n))
            .filter(|r| self.client_versions.get(&r.name) != Some(&r.version))
            .collect();
        if changed.is_empty() {
            return None;
        }
        self.sequence += 1;
        let nonce = self.sequence.to_string();
        let bundle = changed.iter().find_map(|r| r.bundle.clone());
        let mut resources = Vec::with_capacity(changed.len());
        let mut versions = Vec::with_capacity(changed.len());
        for rendered in changed {
            self.client_versions
                .insert(rendered.name.clone(), rendered.version.clone());
            versions.push((rendered.name.clone(), rendered.version.clone()));
            resources.push(Resource {
                name: rendered.name,
                version: rendered.version,
                resource: Some(rendered.resource),
                ..Resource::default()
            });
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: nonce.clone(),
            resources,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: nonce.clone(),
            ..DeltaDiscoveryResponse::default()
        };
        self.last = Some(Sent {
            nonce,
            versions,
            bundle,
            answered: false,
        });
        Some(response)
    }
}

/// What the response loop needs from a SotW or delta stream.
trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// For logs.
    const KIND: &'static str;

    fn subs(&mut self) -> &mut Subscriptions;

    /// The version the client last acknowledged, for logs.
    fn acked_version(&self) -> Option<&str>;

    /// Applies a request; returns the response it calls for, if any.
    fn on_request(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Result<Option<Self::Response>, RequestError>> + Send;

    /// The response after a change of a held certificate or bundle; `None` if the client
    /// already has it.
    fn respond(&mut self, push: bool) -> Option<Self::Response>;
}

/// The stream of responses tonic sends, driven by the connection: each time it can take a
/// response, the stream waits for whichever comes first — a request (ACK, NACK, changed names),
/// a change of a held certificate or bundle, or the drain — and yields what that calls for.
///
/// No task or queue per stream: a response is made only when the connection asks for one, so
/// a slow client holds at most what HTTP/2 flow control lets it hold, and a change that happens
/// meanwhile is sent as the latest state (the watch channels keep only that).
fn responses<P: Protocol>(
    mut stream: P,
    inbound: Streaming<P::Request>,
    first: Option<P::Response>,
) -> ResponseStream<P::Response> {
    // The stream's state stays in one box for the stream's life: `unfold` holds it both between
    // responses and inside the future making the next one, and 10,000 streams each carrying
    // two copies of it inline added up (docs/BENCHMARKS.md, SDS memory per stream).
    let drain = Box::pin(stream.subs().shared.drain.clone().cancelled_owned());
    let open = Box::new(Open {
        stream,
        inbound,
        first,
        drain,
    });
    futures::stream::unfold(Some(open), |state| async move {
        let mut open = state?;
        let next = match open.first.take() {
            Some(response) => Ok((response, false)),
            None => next_response(&mut open.stream, &mut open.inbound, &mut open.drain).await,
        };
        match next {
            Ok((response, push)) => {
                let subs = open.stream.subs();
                SdsStats::bump(&subs.shared.stats.responses);
                if push {
                    SdsStats::bump(&subs.shared.stats.pushes);
                    debug!(stream = subs.stream, caller = %subs.caller, "pushed changed secrets");
                }
                Some((Ok(response), Some(open)))
            }
            Err(exit) => finish(&mut open.stream, exit).map(|status| (Err(status), None)),
        }
    })
    .boxed()
}

/// An open stream between responses.
struct Open<P: Protocol> {
    stream: P,
    inbound: Streaming<P::Request>,
    /// The answer to the first request, made before the stream was returned to tonic.
    first: Option<P::Response>,
    /// The server's drain signal, registered once for the stream's life: a fresh `cancelled()`
    /// per wake-up cloned the token and registered and removed a waiter, each under a lock
    /// every stream of the server shares.
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// Waits for the next response to send (and whether it is a push), or for the stream's end.
async fn next_response<P: Protocol>(
    stream: &mut P,
    inbound: &mut Streaming<P::Request>,
    drain: &mut Pin<Box<WaitForCancellationFutureOwned>>,
) -> Result<(P::Response, bool), Exit> {
    loop {
        tokio::select! {
            biased;
            () = drain.as_mut() => return Err(Exit::Draining),
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    // Boxed: handling a request can subscribe and issue, a future several
                    // times the size of everything else a waiting stream holds.
                    if let Some(response) = Box::pin(stream.on_request(request)).await.map_err(Exit::Refused)? {
                        return Ok((response, false));
                    }
                }
                Ok(None) => return Err(Exit::ClientGone),
                Err(status) => {
                    if let Some(error) = unreadable(&status) {
                        return Err(Exit::Refused(error));
                    }
                    debug!(stream = stream.subs().stream, kind = P::KIND, %status, "SDS stream read failed");
                    return Err(Exit::ClientGone);
                }
            },
            () = stream.subs().changed() => {
                if let Some(response) = stream.respond(true) {
                    return Ok((response, true));
                }
            }
        }
    }
}

/// The status for a stream whose first request failed.
fn initial_failure(subs: &Subscriptions, error: RequestError) -> Status {
    subs.refuse(error)
}

/// Ends a stream: the status to tell the client why, if it is still there.
fn finish<P: Protocol>(stream: &mut P, exit: Exit) -> Option<Status> {
    let acked = stream.acked_version().map(str::to_owned);
    let subs = stream.subs();
    match exit {
        Exit::ClientGone => {
            debug!(stream = subs.stream, caller = %subs.caller, kind = P::KIND, ?acked, "SDS stream closed by the client");
            None
        }
        Exit::Draining => Some(subs.refuse(RequestError::ShuttingDown)),
        Exit::Refused(error) => Some(subs.refuse(error)),
    }
}

/// Logs a NACK (at most `burst` per period over all streams), its detail cut and escaped.
fn log_nack<N: std::fmt::Debug>(
    shared: &Shared,
    stream: u64,
    caller: &SpiffeId,
    names: &[N],
    detail: &RpcStatus,
) {
    if let Some(held_back) = shared.nack_log.ready() {
        warn!(
            stream,
            %caller,
            ?names,
            code = detail.code,
            detail = %CallerText(&detail.message),
            held_back,
            "proxy rejected an SDS response (NACK); it keeps its previous secrets"
        );
    }
}

fn dedup(names: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect()
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().collect::<HashSet<_>>() == b.iter().collect::<HashSet<_>>()
}

/// A version for a fetched set of resources: changes whenever any of them does.
fn combined_version(rendered: &[Rendered]) -> String {
    let joined: Vec<&str> = rendered.iter().map(|r| r.version.as_str()).collect();
    let digest = meshca_provider::x509::sha256(joined.join(",").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
