//! Everything before a stream serves: the `workload.spiffe.io: true` metadata, the caller's
//! credentials and selectors (its [`Attestor`]), the registration entries they match, and a
//! slot under `maxStreams` and `maxStreamsPerCaller` — in that order, so that nothing is
//! allocated or issued for a caller that is refused. Refusals are counted and logged here.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::Stream;
use meshca_provider::TrustDomain;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::{info, warn};

use super::WorkloadApiLimits;
use super::attest::{Attestor, EntryIndex, PeerCredentials, RegistrationEntry};
use super::metrics::{Refusal, WorkloadApiMetrics};
use crate::jwt_svid::JwtAuthority;
use crate::sds::source::SecretSource;
use crate::sds::throttle::SharedThrottle;
use crate::sds::transport::{Busy, PeerInfo, PeerTransport};

/// The metadata every Workload API call must carry, with the value `true` (the SPIFFE Workload
/// Endpoint specification: it keeps a browser or a server-side request forgery, which cannot
/// set it, from reaching the API).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// What every call of one server shares.
pub(crate) struct Shared {
    pub(crate) source: Arc<dyn SecretSource>,
    pub(crate) attestor: Arc<dyn Attestor>,
    pub(crate) entries: EntryIndex,
    pub(crate) trust_domain: TrustDomain,
    pub(crate) limits: WorkloadApiLimits,
    pub(crate) metrics: Arc<WorkloadApiMetrics>,
    pub(crate) stream_slots: Arc<Semaphore>,
    /// Streams held by each caller (uid), for `max_streams_per_caller`.
    pub(crate) per_caller: Mutex<HashMap<u32, usize>>,
    pub(crate) drain: CancellationToken,
    /// Refusals are logged at most a few per period: a local caller can cause them at will.
    pub(crate) refusal_log: SharedThrottle,
    /// JWT-SVIDs, when `jwtSvid.enabled`.
    pub(crate) jwt: Option<JwtSvids>,
}

/// What the JWT-SVID methods sign and validate with.
pub(crate) struct JwtSvids {
    pub(crate) authority: Arc<JwtAuthority>,
    /// `jwtSvid.ttl`.
    pub(crate) ttl: std::time::Duration,
    /// `jwtSvid.issuer`.
    pub(crate) issuer: Option<String>,
}

/// An attested caller of an open stream: its identities, its stream slot.
pub(crate) struct Admitted {
    pub(crate) entries: Vec<RegistrationEntry>,
    pub(crate) slot: StreamSlot,
}

/// One open stream's share of the limits and of the open-streams gauge.
pub(crate) struct StreamSlot {
    shared: Arc<Shared>,
    uid: u32,
    _busy: Option<Busy>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.shared
            .metrics
            .streams_open
            .fetch_sub(1, Ordering::Relaxed);
        let mut held = lock(&self.shared.per_caller);
        if let Some(count) = held.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Holders only adjust counters, each in one step: a panic leaves nothing half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Counts, logs and builds a refusal.
    pub(crate) fn refuse(
        &self,
        reason: Refusal,
        caller: Option<PeerCredentials>,
        status: Status,
    ) -> Status {
        self.metrics.refused(reason);
        if let Some(held_back) = self.refusal_log.ready() {
            let (uid, pid) = (caller.map(|c| c.uid), caller.and_then(|c| c.pid));
            match reason {
                Refusal::NoEntry | Refusal::Unavailable => warn!(
                    ?uid,
                    ?pid,
                    held_back,
                    reason = status.message(),
                    "Workload API call refused"
                ),
                _ => info!(
                    ?uid,
                    ?pid,
                    held_back,
                    reason = status.message(),
                    "Workload API call refused"
                ),
            }
        }
        status
    }

    /// Everything before a stream serves: the security header, the caller's credentials and
    /// selectors, at least one matching entry, a slot under both stream limits.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        metadata: &MetadataMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Admitted, Status> {
        let (credentials, entries) = self.attest(metadata, peer).await?;
        let slot = self
            .open_stream(credentials.uid, peer)
            .map_err(|status| self.refuse(Refusal::Exhausted, Some(credentials), status))?;
        Ok(Admitted { entries, slot })
    }

    /// The security header, the caller's credentials and selectors, and the entries they
    /// match (at least one): everything a one-shot call (FetchJWTSVID, ValidateJWTSVID) needs.
    pub(crate) async fn attest(
        &self,
        metadata: &MetadataMap,
        peer: Option<&PeerInfo>,
    ) -> Result<(PeerCredentials, Vec<RegistrationEntry>), Status> {
        self.check_header(metadata)?;
        let credentials = match peer.map(|p| &p.transport) {
            Some(PeerTransport::Unix {
                uid: Some(uid),
                gid: Some(gid),
                pid,
            }) => PeerCredentials {
                uid: *uid,
                gid: *gid,
                pid: *pid,
            },
            _ => {
                return Err(self.refuse(
                    Refusal::NoEntry,
                    None,
                    Status::permission_denied(
                        "the caller's credentials are unknown: the Workload API attests \
                         callers by their Unix socket peer credentials",
                    ),
                ));
            }
        };
        let selectors = match self.attestor.attest(credentials).await {
            Ok(selectors) => selectors,
            Err(e) => {
                return Err(self.refuse(
                    Refusal::NoEntry,
                    Some(credentials),
                    Status::permission_denied(e.to_string()),
                ));
            }
        };
        let entries: Vec<RegistrationEntry> = self
            .entries
            .matching(&selectors)
            .into_iter()
            .cloned()
            .collect();
        if entries.is_empty() {
            let seen = selectors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(self.refuse(
                Refusal::NoEntry,
                Some(credentials),
                Status::permission_denied(format!(
                    "no identity issued: no registration entry (workloadApi.entries) matches \
                     the caller's selectors [{seen}]"
                )),
            ));
        }
        Ok((credentials, entries))
    }

    pub(crate) fn check_header(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match metadata.get(SECURITY_HEADER).map(|v| v.to_str()) {
            Some(Ok("true")) => Ok(()),
            _ => Err(self.refuse(
                Refusal::MissingHeader,
                None,
                Status::invalid_argument(format!(
                    "security header missing from request: every Workload API call must carry \
                     the metadata {SECURITY_HEADER}: true"
                )),
            )),
        }
    }

    fn open_stream(
        self: &Arc<Self>,
        uid: u32,
        peer: Option<&PeerInfo>,
    ) -> Result<StreamSlot, Status> {
        let permit = self.stream_slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} Workload API streams are open (workloadApi.maxStreams)",
                self.limits.max_streams
            ))
        })?;
        {
            let mut held = lock(&self.per_caller);
            let count = held.entry(uid).or_insert(0);
            if *count >= self.limits.max_streams_per_caller {
                return Err(Status::resource_exhausted(format!(
                    "uid {uid} holds {} Workload API streams already \
                     (workloadApi.maxStreamsPerCaller)",
                    self.limits.max_streams_per_caller
                )));
            }
            *count += 1;
        }
        WorkloadApiMetrics::bump(&self.metrics.streams_open, 1);
        WorkloadApiMetrics::bump(&self.metrics.streams_total, 1);
        Ok(StreamSlot {
            shared: self.clone(),
            uid,
            _busy: peer.and_then(|p| p.activity.as_ref()).map(|a| a.busy()),
            _permit: permit,
        })
    }
}

pub(crate) type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
