//! The certificate cache: one valid certificate per (identity, purpose), issued once, renewed
//! before it expires. It schedules; every issuance goes through the
//! [issuance pipeline](crate::issuance), which validates before anything is published.
//!
//! The entry point is [`CertificateCache`]. Callers ask with [`CertificateCache::certificate`]
//! (a snapshot) or [`CertificateCache::subscribe`] (a `watch` receiver that later renewals are
//! pushed through, which is what an SDS stream holds).
//!
//! # Design
//! - **Readers never wait on issuance.** Published certificates live in a map (each with a
//!   `watch` sender once someone subscribes) behind a short `std` mutex that is never held
//!   across an `.await`; a caller whose key holds a valid certificate is answered from there
//!   without involving the worker.
//!   Counters are atomics, so [`CertificateCache::stats`] (readiness) takes no lock at all.
//! - **One owner of scheduling.** A single worker task (`worker.rs`) owns the per-key state:
//!   who waits for a key, failure counts, and the renewal timers (a heap of deadlines;
//!   the worker sleeps until the first). There is no periodic rescan of every certificate.
//! - **A caller that misses issues in its own task.** The first caller to find no valid
//!   certificate claims the key in the entries map (under the same lock as the lookup) and runs
//!   the issuance itself, then publishes and tells the worker, which schedules the renewal and
//!   answers anyone who asked meanwhile. A claim is what makes issuance single-flight: a second
//!   caller finding the key claimed waits through the worker. The cold path so costs no task
//!   spawn and no round trip; a caller that goes away mid-issuance hands the key back to the
//!   worker, and a panicking provider fails that issuance only.
//! - **Callers outrank background work.** At most [`CacheSettings::max_concurrent_issues`]
//!   issuances run at once, callers' and the worker's together (the claims are counted under
//!   the same lock); a caller finding no free slot queues through the worker, which starts keys
//!   with waiting callers before due renewals.
//! - **Policy is pure.** When to renew ([`renew_at`]) and when to retry ([`retry_in`]) are
//!   functions of the certificate's real NotBefore/NotAfter, the settings and a random draw.
//! - **Validate, then publish; keep the last good one.** The pipeline hands back only chains
//!   that verify against the trust bundle and carry the requested names and key. A failed or
//!   rejected renewal publishes nothing: subscribers keep the previous certificate while that
//!   key alone retries with capped exponential backoff, always once more before it expires.
//! - **The trust bundle is the pipeline's.** The worker only schedules its periodic re-read
//!   ([`CacheSettings::trust_refresh`]); subscribers get the pipeline's `watch` receiver.
//! - **Time is tokio's.** Timers use `tokio::time`, validity checks use the injected
//!   [`Clock`] (normally [`crate::time::TokioClock`]), so tests run days in paused time.
//! - **Recovery after an outage.** Keys whose renewal failed wait out a capped exponential
//!   backoff; when the provider is seen working again ([`CertificateCache::provider_recovered`],
//!   called when the health check passes after failing, or a failing key's renewal succeeding)
//!   every key still waiting is retried within [`RECOVERY_WINDOW`], at a random point of it.
//! - **Issuance timeout.** One renewal may take `renewal.issueTimeout`, but at most
//!   [`ISSUE_TIMEOUT_FRACTION`] of the time left on the certificate it renews (not less than
//!   [`MIN_ISSUE_TIMEOUT`]): a hung call leaves room for retries ([`issue_timeout_for`]).
//! - **Forgetting.** A key with no subscriber whose last handed-out certificate has expired is
//!   dropped when its next renewal comes due.

mod entries;
mod error;
mod policy;
mod settings;
mod worker;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use futures::FutureExt as _;
use meshca_provider::{
    CertificateChain, CertificateSummary, Clock, LeafKey, SharedProvider, SpiffeId, TrustBundle,
    rfc3339,
};
use tokio::sync::{mpsc, oneshot, watch};

pub use error::CacheError;
pub use policy::{
    Backoff, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_JITTER_FRACTION,
    DEFAULT_RENEW_FLOOR, DEFAULT_RENEW_FRACTION, ISSUE_TIMEOUT_FRACTION, MIN_ISSUE_TIMEOUT,
    RECOVERY_WINDOW, RenewPolicy, issue_timeout_for, recovery_delay, renew_at, renew_in, retry_in,
};
pub use settings::{CacheSettings, DEFAULT_LIFETIME};

use crate::issuance::{LatencyHistogram, Pipeline, panic_message};
use entries::Fetched;
use entries::{Counters, Entries, Lookup, Shared, WorkerClaim};
use worker::{Command, Worker};

/// What a certificate is for. Each purpose of an identity gets its own key and serial, so a
/// proxy's inbound and outbound listeners never share key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Purpose {
    /// The one certificate of a workload that does not distinguish directions.
    #[default]
    Default,
    /// Presented to peers connecting in (server side of mTLS).
    Inbound,
    /// Presented when connecting out (client side of mTLS).
    Outbound,
}

impl Purpose {
    /// Lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Default => "default",
            Purpose::Inbound => "inbound",
            Purpose::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the cache is keyed by: an identity and which of its certificates, read as
/// `key.identity` and `key.purpose`.
///
/// One shared allocation, so a clone is one reference count: an issuance copies its key into
/// the cache's map, the hand-over queue, the worker's map and its timer heap, and the maps'
/// buckets stay a pointer wide. Two clones of one key compare equal without reading the
/// identity.
#[derive(Clone)]
pub struct CertKey(Arc<KeyParts>);

/// The parts of a [`CertKey`], read through it.
pub struct KeyParts {
    /// The workload identity the certificate names.
    pub identity: SpiffeId,
    /// Which of the identity's certificates.
    pub purpose: Purpose,
    /// The keyed hash of the two, computed on first use (0 until then; a hash of 0 is kept as
    /// 1): one issuance looks its key up in the cache's maps about seven times, and hashing
    /// the identity's URI each time was ≈ 1% of an issuance (see docs/BENCHMARKS.md).
    hash: AtomicU64,
}

/// The one SipHash key every [`CertKey`]'s hash is made with: random per process, so callers
/// who choose identities cannot aim them at one bucket of the cache's maps.
static KEY_HASH: LazyLock<RandomState> = LazyLock::new(RandomState::new);

impl CertKey {
    /// A key for `identity` and `purpose`.
    pub fn new(identity: SpiffeId, purpose: Purpose) -> Self {
        Self(Arc::new(KeyParts {
            identity,
            purpose,
            hash: AtomicU64::new(0),
        }))
    }

    fn keyed_hash(&self) -> u64 {
        // Relaxed: the value is a function of the immutable parts, so a race only computes
        // the same number twice.
        match self.0.hash.load(Ordering::Relaxed) {
            0 => {
                let hash = KEY_HASH.hash_one((&self.identity, self.purpose)).max(1);
                self.0.hash.store(hash, Ordering::Relaxed);
                hash
            }
            hash => hash,
        }
    }
}

impl std::ops::Deref for CertKey {
    type Target = KeyParts;

    fn deref(&self) -> &KeyParts {
        &self.0
    }
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Debug for KeyParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey")
            .field("identity", &self.identity)
            .field("purpose", &self.purpose)
            .finish()
    }
}

impl PartialEq for CertKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.purpose == other.purpose && self.identity == other.identity)
    }
}

impl Eq for CertKey {}

impl PartialOrd for CertKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CertKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.identity, self.purpose).cmp(&(&other.identity, other.purpose))
    }
}

impl Hash for CertKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.keyed_hash());
    }
}

/// The hasher of the cache's maps keyed by [`CertKey`]: a key hashes to one `u64` that is
/// already a keyed SipHash, which the maps take as it is instead of hashing it again.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct KeyHashes;

impl BuildHasher for KeyHashes {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `CertKey`s are hashed here, and they write one `u64`; anything else still hashes
        // (through the same keyed SipHash), never to a constant.
        self.0 = KEY_HASH.hash_one((self.0, bytes));
    }
}

/// A map keyed by [`CertKey`].
pub(super) type KeyMap<V> = HashMap<CertKey, V, KeyHashes>;

/// A set of [`CertKey`]s.
pub(super) type KeySet = HashSet<CertKey, KeyHashes>;

impl fmt::Display for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.identity, self.purpose)
    }
}

/// A validated certificate with its private key, as handed to a proxy.
///
/// `Debug` shows fingerprints and the redacted key only.
#[derive(Debug)]
pub struct ServedCertificate {
    /// Leaf first, then intermediates; no root.
    pub chain: CertificateChain,
    /// The leaf's private key, generated by the pipeline for the cache.
    pub key: LeafKey,
    /// The leaf's validity and serial (the pipeline parsed and validated all of it).
    pub info: CertificateSummary,
    /// The provider that issued it (`tresor`, `vault`, …).
    pub issued_by: &'static str,
}

/// Counters since start, read without locks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// First certificates issued for a key.
    pub issued: u64,
    /// Certificates issued to replace a previous one.
    pub renewed: u64,
    /// Failed issuances, including rejected chains.
    pub failures: u64,
    /// Of the failures, chains that failed validation.
    pub rejected: u64,
    /// Issuances started for a key whose previous attempt failed.
    pub retries: u64,
    /// Keys dropped because nobody used them any more.
    pub evicted: u64,
    /// Keys holding a published certificate.
    pub entries: usize,
    /// Issuances running now.
    pub in_flight: usize,
}

/// Holds one valid certificate per (identity, purpose) and renews it; see the module docs.
///
/// Cheap to clone. The worker task stops when the last clone is dropped.
#[derive(Clone)]
pub struct CertificateCache {
    handle: Arc<Handle>,
}

struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl CertificateCache {
    /// Starts the cache and its worker task around a pipeline built from `settings`
    /// ([`CacheSettings::pipeline`]: its timeout and extra roots, the default request policy).
    /// Must be called inside a tokio runtime.
    pub fn new(provider: SharedProvider, settings: CacheSettings, clock: Arc<dyn Clock>) -> Self {
        let pipeline = Pipeline::new(provider, settings.pipeline(), clock.clone());
        Self::with_pipeline(Arc::new(pipeline), settings, clock)
    }

    /// Starts the cache and its worker task, issuing through `pipeline` (whose timeout, extra
    /// roots and policy apply; `settings.issue_timeout` and `settings.extra_roots` are not
    /// used). Must be called inside a tokio runtime.
    pub fn with_pipeline(
        pipeline: Arc<Pipeline>,
        settings: CacheSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let issue_limit = settings.max_concurrent_issues.max(1);
        let shared = Arc::new(Shared {
            pipeline,
            settings,
            clock,
            entries: Mutex::new(Entries::default()),
            issue_limit,
            counters: Counters::default(),
            handed_over: tokio::sync::Notify::new(),
        });
        tokio::spawn(Worker::new(shared.clone(), receiver).run());
        Self {
            handle: Arc::new(Handle { commands, shared }),
        }
    }

    /// The current valid certificate for `key`, issuing one if there is none. Concurrent calls
    /// for one key share a single issuance.
    pub async fn certificate(&self, key: &CertKey) -> Result<Arc<ServedCertificate>, CacheError> {
        Ok(self.obtain(key, false).await?.cert)
    }

    /// A receiver holding a valid certificate for `key` (issued first if need be); every later
    /// renewal of the key is sent through it. Holding the receiver keeps the key cached.
    pub async fn subscribe(
        &self,
        key: CertKey,
    ) -> Result<watch::Receiver<Arc<ServedCertificate>>, CacheError> {
        let fetched = self.obtain(&key, true).await?;
        fetched.updates.ok_or_else(|| CacheError::Internal {
            reason: "a subscription was answered without a receiver".to_owned(),
        })
    }

    /// The certificate currently cached for `key`, if any, without issuing or recording use.
    /// It may have expired if renewals have been failing.
    pub fn cached(&self, key: &CertKey) -> Option<Arc<ServedCertificate>> {
        self.shared().current(key)
    }

    /// Every cached certificate, for metrics and status pages.
    pub fn certificates(&self) -> Vec<(CertKey, Arc<ServedCertificate>)> {
        let entries = self.shared().entries();
        entries
            .slots
            .iter()
            .map(|(key, slot)| (key.clone(), slot.cert().clone()))
            .collect()
    }

    /// The pipeline's trust bundle (the provider's roots, then the extra roots); the receiver
    /// sees every change. Empty until first read (the worker reads it at start and every
    /// [`CacheSettings::trust_refresh`]).
    pub fn trust_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.shared().pipeline.trust_bundle()
    }

    /// Re-reads the trust bundle from the provider now, publishing it if it changed.
    pub async fn refresh_trust_bundle(&self) -> Result<(), CacheError> {
        self.shared().refresh_trust().await.map(|_| ())
    }

    /// Re-issues every certificate of `identity` (all purposes), or of every key when `None`,
    /// regardless of when they were due; subscribers receive the new ones. An issuance already
    /// running is followed by another, so the result postdates this call.
    pub fn renew_now(&self, identity: Option<&SpiffeId>) {
        // A send error means the worker is gone; nothing is cached to renew then.
        let _ = self
            .handle
            .commands
            .send(Command::RenewNow(identity.cloned()));
    }

    /// Tells the cache its provider works again (its health check passed after failing):
    /// every key whose renewal failed and now waits out a backoff is retried within
    /// [`RECOVERY_WINDOW`], each at a random point of it, rather than when its backoff ends.
    /// A failing renewal that succeeds does the same by itself.
    pub fn provider_recovered(&self) {
        // A send error means the worker is gone; nothing is cached to renew then.
        let _ = self.handle.commands.send(Command::ProviderRecovered);
    }

    /// Tells the cache its provider's health check passed. If renewals wait in backoff, the
    /// one due first is retried now: a probe of whether issuing works again after a fault the
    /// health check does not see (a Vault role fixed, say). Its success retries the others as
    /// [`provider_recovered`](Self::provider_recovered) does; its failure backs off as usual.
    pub fn provider_healthy(&self) {
        let _ = self.handle.commands.send(Command::ProviderHealthy);
    }

    /// The time by the cache's clock, which decides whether a certificate has expired.
    pub fn now(&self) -> SystemTime {
        self.shared().clock.now()
    }

    /// Issues a new certificate for every published key of `identity` (all purposes), or of
    /// every key when `None`, like [`renew_now`](Self::renew_now), but serves none of them yet:
    /// they are validated and held until [`publish_staged`](Self::publish_staged). A forced
    /// rotation (`meshca rotate leaves`) can so reach every proxy at once, and only when every
    /// issuance succeeded; the first failure is returned and nothing is staged.
    ///
    /// Issuances run at most [`CacheSettings::max_concurrent_issues`] at a time, alongside
    /// (not through) the worker's own queue.
    pub async fn stage_reissue(
        &self,
        identity: Option<&SpiffeId>,
    ) -> Result<StagedCertificates, CacheError> {
        use futures::StreamExt as _;

        let shared = self.handle.shared.clone();
        let keys = shared.published_keys(identity);
        let limit = shared.settings.max_concurrent_issues.max(1);
        let mut issued = futures::stream::iter(keys)
            .map(|key| {
                let shared = shared.clone();
                // Each issuance in its own task, so they use every runtime thread.
                tokio::spawn(async move {
                    let replaces = shared.current(&key).map(|cert| cert.info.serial.clone());
                    let cert = shared.issue(&key).await;
                    (key, replaces, cert)
                })
            })
            .buffer_unordered(limit);
        let mut staged = Vec::new();
        while let Some(joined) = issued.next().await {
            let (key, replaces, cert) = joined.map_err(|e| CacheError::Internal {
                reason: format!("a staged issuance failed unexpectedly: {e}"),
            })?;
            // Counted by the pipeline, like every issuance.
            let cert = cert?;
            if let Some(replaces) = replaces {
                staged.push(StagedCertificate {
                    key,
                    replaces,
                    cert,
                });
            }
        }
        Ok(StagedCertificates { staged })
    }

    /// Serves certificates made by [`stage_reissue`](Self::stage_reissue): every subscriber of
    /// each key receives its new certificate. A key whose certificate changed after staging (a
    /// renewal ran meanwhile) keeps the newer one. Returns how many were published.
    ///
    /// The keys' next scheduled renewals stay where the replaced certificates put them, which
    /// is earlier than the new certificates need: a rotation costs at most one early renewal.
    pub fn publish_staged(&self, staged: StagedCertificates) -> usize {
        let shared = self.shared();
        let mut published = 0;
        for StagedCertificate {
            key,
            replaces,
            cert,
        } in staged.staged
        {
            if shared.publish_replacing(&key, &replaces, cert) {
                published += 1;
            }
        }
        published
    }

    /// Counters and sizes, read without waiting on anything.
    pub fn stats(&self) -> CacheStats {
        let shared = self.shared();
        shared.counters.snapshot(shared.pipeline.metrics())
    }

    /// How long issuances took (key, provider call, validation), one histogram per
    /// [`IssueResult`](crate::issuance::IssueResult), read without waiting on anything.
    pub fn issuance_latency(&self) -> Vec<LatencyHistogram> {
        self.shared().pipeline.metrics().latency()
    }

    /// The provider behind the cache.
    pub fn provider(&self) -> &SharedProvider {
        self.shared().pipeline.provider()
    }

    /// The pipeline the cache issues through.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.shared().pipeline
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The published certificate if it is valid; otherwise issued here, or awaited through the
    /// worker when another issuance of the key is running or every issuance slot is taken.
    async fn obtain(&self, key: &CertKey, subscribe: bool) -> Result<Fetched, CacheError> {
        match self.shared().lookup_or_claim(key, subscribe) {
            Lookup::Cached(fetched) => Ok(fetched),
            Lookup::Claimed => self.issue_here(key, subscribe).await,
            Lookup::Busy => self.fetch(key.clone(), subscribe).await,
        }
    }

    /// Issues for `key`, claimed by this caller, in the caller's task; publishes the result and
    /// hands scheduling (renewal, other waiters) to the worker.
    async fn issue_here(&self, key: &CertKey, subscribe: bool) -> Result<Fetched, CacheError> {
        let claim = CallerClaim {
            handle: &self.handle,
            key,
            ended: false,
        };
        let result = AssertUnwindSafe(self.shared().issue(key))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(self.panicked(key, panic.as_ref())));
        claim.end(result, subscribe)
    }

    /// The error for an issuance that panicked in meshca's own code (a provider's panic is
    /// caught by the pipeline), counted as a failure.
    fn panicked(&self, key: &CertKey, panic: &(dyn std::any::Any + Send)) -> CacheError {
        self.shared().pipeline.metrics().count_unexpected_failure();
        CacheError::Internal {
            reason: format!(
                "issuing for {key} failed unexpectedly: the issuance panicked: {}",
                panic_message(panic)
            ),
        }
    }

    async fn fetch(&self, key: CertKey, subscribe: bool) -> Result<Fetched, CacheError> {
        let (reply, answer) = oneshot::channel();
        self.handle
            .commands
            .send(Command::Fetch {
                key,
                subscribe,
                reply,
            })
            .map_err(|_| CacheError::ShuttingDown)?;
        answer.await.map_err(|_| CacheError::ShuttingDown)?
    }
}

impl fmt::Debug for CertificateCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCache")
            .field("provider", &self.provider().name())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A key claimed by a caller issuing in its own task. Ending it publishes (or not), releases
/// the claim and tells the worker in one critical section, so the worker sees the issuances of
/// a key end in the order they did. Dropped without ending (the caller went away), it hands the
/// key back to the worker, which serves anyone waiting for it.
struct CallerClaim<'a> {
    handle: &'a Handle,
    key: &'a CertKey,
    ended: bool,
}

impl CallerClaim<'_> {
    fn end(
        mut self,
        result: Result<Arc<ServedCertificate>, CacheError>,
        subscribe: bool,
    ) -> Result<Fetched, CacheError> {
        self.ended = true;
        let shared = &self.handle.shared;
        let mut entries = shared.entries();
        let (answer, renewal) = match &result {
            Ok(cert) => {
                let (mut receivers, renewal) = shared.publish_locked(
                    &mut entries,
                    self.key,
                    cert.clone(),
                    true,
                    usize::from(subscribe),
                );
                let fetched = Fetched {
                    cert: cert.clone(),
                    updates: receivers.pop(),
                };
                (Ok(fetched), renewal)
            }
            // Counted by the pipeline (or, for a panic, where it was caught).
            Err(error) => (Err(error.clone()), false),
        };
        let awaited = shared.release_locked(&mut entries, self.key);
        match result {
            // A first certificate nobody else waits for: all the worker has to do is schedule
            // its renewal, which it does for a batch at a time (`HANDOVER_DELAY`) rather than
            // waking for each of a storm of new proxies.
            Ok(cert) if !renewal && !awaited => {
                let wake = shared.hand_over(&mut entries, self.key, cert);
                drop(entries);
                if wake {
                    shared.handed_over.notify_one();
                }
            }
            result => {
                drop(entries);
                // A send error means the worker is gone (shutting down): nothing left to
                // schedule.
                let _ = self.handle.commands.send(Command::Issued {
                    key: self.key.clone(),
                    result,
                    renewal,
                });
            }
        }
        answer
    }
}

impl Drop for CallerClaim<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let shared = &self.handle.shared;
        let mut entries = shared.entries();
        shared.release_locked(&mut entries, self.key);
        let _ = self
            .handle
            .commands
            .send(Command::Abandoned(self.key.clone()));
    }
}

/// Certificates issued by [`CertificateCache::stage_reissue`], not served yet. Dropping it
/// discards them.
pub struct StagedCertificates {
    staged: Vec<StagedCertificate>,
}

struct StagedCertificate {
    key: CertKey,
    /// The serial of the certificate it replaces.
    replaces: Vec<u8>,
    cert: Arc<ServedCertificate>,
}

impl StagedCertificates {
    /// How many certificates are staged.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// The staged certificates, for inspection (serials, expiry) before publishing.
    pub fn certificates(&self) -> impl Iterator<Item = (&CertKey, &Arc<ServedCertificate>)> {
        self.staged.iter().map(|s| (&s.key, &s.cert))
    }
}

impl fmt::Debug for StagedCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedCertificates")
            .field("len", &self.staged.len())
            .finish_non_exhaustive()
    }
}
