//! The certificate cache: one valid certificate per (identity, purpose), issued once, renewed
//! before it expires, validated before anyone sees it.
//!
//! The entry point is [`CertificateCache`]. Callers ask with [`CertificateCache::certificate`]
//! (a snapshot) or [`CertificateCache::subscribe`] (a `watch` receiver that later renewals are
//! pushed through, which is what an SDS stream holds).
//!
//! # Design
//! - **Readers never wait on issuance.** Published certificates live in a map of `watch`
//!   senders behind a short `std` mutex that is never held across an `.await`; a caller whose
//!   key holds a valid certificate is answered from there without involving the worker.
//!   Counters are atomics, so [`CertificateCache::stats`] (readiness) takes no lock at all.
//! - **One owner of scheduling.** A single worker task (`worker.rs`) owns the per-key state:
//!   who waits for a key, failure counts, and the renewal timers (an ordered set of deadlines;
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
//! - **Validate, then publish; keep the last good one.** A new chain must verify against the
//!   provider's trust bundle and carry the requested names and key (`validate.rs`). A failed or
//!   rejected renewal publishes nothing: subscribers keep the previous certificate while that
//!   key alone retries with capped exponential backoff, always once more before it expires.
//! - **Time is tokio's.** Timers use `tokio::time`, validity checks use the injected
//!   [`Clock`] (normally [`crate::time::TokioClock`]), so tests run days in paused time.
//! - **Forgetting.** A key with no subscriber whose last handed-out certificate has expired is
//!   dropped when its next renewal comes due.

mod latency;
mod policy;
pub(crate) mod validate;
mod worker;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::FutureExt as _;
use meshca_provider::{
    CertificateChain, CertificateInfo, Clock, DnsName, IssueRequest, KeyError, KeyType, LeafKey,
    LeafSpec, ProviderError, SharedProvider, SpiffeId, TrustBundle, format_duration,
};
use tokio::sync::{mpsc, oneshot, watch};

pub use latency::{IssueResult, LatencyHistogram};
pub use policy::{Backoff, RenewPolicy, renew_at, renew_in, retry_in};

use worker::{Command, Fetched, Worker};

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

/// What the cache is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertKey {
    /// The workload identity the certificate names.
    pub identity: SpiffeId,
    /// Which of the identity's certificates.
    pub purpose: Purpose,
}

impl CertKey {
    /// A key for `identity` and `purpose`.
    pub fn new(identity: SpiffeId, purpose: Purpose) -> Self {
        Self { identity, purpose }
    }
}

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
    /// The leaf's private key, generated by the cache.
    pub key: LeafKey,
    /// The parsed leaf.
    pub info: CertificateInfo,
    /// The provider that issued it (`tresor`, `vault`, …).
    pub issued_by: &'static str,
}

/// How the cache issues and renews.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Lifetime requested for leaf certificates (providers may grant less).
    pub lifetime: Duration,
    /// Type of the leaf keys the cache generates.
    pub key_type: KeyType,
    /// Renew at this fraction of the real lifetime.
    pub renew_fraction: f64,
    /// Spread renewals by ± this fraction of the lifetime.
    pub jitter_fraction: f64,
    /// Never renew later than this long before expiry (shrunk to half of very short lifetimes).
    pub renew_floor: Duration,
    /// First delay after a failed issuance; doubled on each further failure.
    pub backoff_initial: Duration,
    /// Longest delay between retries.
    pub backoff_max: Duration,
    /// DNS SANs added to every workload certificate (none by default: a workload certificate
    /// names its SPIFFE ID alone).
    pub extra_dns: Vec<DnsName>,
    /// How long one provider call (issue or trust bundle) may take.
    pub issue_timeout: Duration,
    /// How many issuances may run at once.
    pub max_concurrent_issues: usize,
    /// How often the trust bundle is re-read from the provider.
    pub trust_refresh: Duration,
    /// Roots trusted besides the provider's (`extraTrustedRoots`): merged into every bundle
    /// the cache publishes, after the provider's own roots.
    pub extra_roots: TrustBundle,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(24 * 3600),
            key_type: KeyType::P256,
            renew_fraction: 0.5,
            jitter_fraction: 0.1,
            renew_floor: Duration::from_secs(5 * 60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            extra_dns: Vec::new(),
            issue_timeout: Duration::from_secs(30),
            max_concurrent_issues: 64,
            trust_refresh: Duration::from_secs(5 * 60),
            extra_roots: TrustBundle::default(),
        }
    }
}

impl CacheSettings {
    /// The renewal policy these settings describe.
    pub fn renew_policy(&self) -> RenewPolicy {
        RenewPolicy {
            fraction: self.renew_fraction,
            jitter_fraction: self.jitter_fraction,
            floor: self.renew_floor,
        }
    }

    /// The retry backoff these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.backoff_initial,
            max: self.backoff_max,
        }
    }

    /// Checks the settings; [`CertificateCache::new`] clamps nonsense instead of failing, so
    /// configuration code should call this first to tell the user.
    pub fn validate(&self) -> Result<(), CacheError> {
        let invalid = |field: &'static str, reason: String| {
            Err(CacheError::InvalidSettings { field, reason })
        };
        // The same minimum as every other path (`crate::lifetime`).
        if self.lifetime < crate::lifetime::MIN_LEAF_LIFETIME {
            return invalid(
                "lifetime",
                format!(
                    "{} is too short: use at least {}",
                    format_duration(self.lifetime),
                    format_duration(crate::lifetime::MIN_LEAF_LIFETIME)
                ),
            );
        }
        if !(self.renew_fraction > 0.0 && self.renew_fraction < 1.0) {
            return invalid(
                "renew_fraction",
                format!("{} is outside (0, 1): use e.g. 0.5", self.renew_fraction),
            );
        }
        let spread_ok = self.jitter_fraction >= 0.0
            && self.renew_fraction - self.jitter_fraction >= 0.0
            && self.renew_fraction + self.jitter_fraction <= 1.0;
        if !spread_ok {
            return invalid(
                "jitter_fraction",
                format!(
                    "{} must be ≥ 0 and keep renew_fraction ± jitter within [0, 1]",
                    self.jitter_fraction
                ),
            );
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return invalid(
                "backoff",
                format!(
                    "initial {} and max {}: initial must be > 0 and max ≥ initial",
                    format_duration(self.backoff_initial),
                    format_duration(self.backoff_max)
                ),
            );
        }
        if self.issue_timeout.is_zero() {
            return invalid("issue_timeout", "must be > 0".to_owned());
        }
        if self.max_concurrent_issues == 0 {
            return invalid("max_concurrent_issues", "must be ≥ 1".to_owned());
        }
        if self.trust_refresh.is_zero() {
            return invalid("trust_refresh", "must be > 0".to_owned());
        }
        Ok(())
    }
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

/// Why the cache could not hand out a certificate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The provider refused or failed to issue.
    #[error("{provider} could not issue a certificate for {identity}: {source}")]
    Provider {
        /// The identity asked for.
        identity: SpiffeId,
        /// The provider's name.
        provider: &'static str,
        /// The provider's error.
        #[source]
        source: Arc<ProviderError>,
    },
    /// The provider returned a chain that failed validation; it was not served.
    #[error(
        "{provider} returned an unusable certificate for {identity}, which was not served: {reason}"
    )]
    Invalid {
        /// The identity asked for.
        identity: SpiffeId,
        /// The provider's name.
        provider: &'static str,
        /// What was wrong and what to check.
        reason: String,
    },
    /// A provider call took longer than the configured timeout.
    #[error(
        "{provider} did not answer within {} while {operation}: check that it is reachable and \
         healthy, or raise the issue timeout",
        format_duration(*.after)
    )]
    Timeout {
        /// The provider's name.
        provider: &'static str,
        /// What meshca was doing.
        operation: String,
        /// The timeout.
        after: Duration,
    },
    /// The provider's trust bundle could not be read.
    #[error("could not read the trust bundle from {provider}: {source}")]
    TrustBundle {
        /// The provider's name.
        provider: &'static str,
        /// The provider's error.
        #[source]
        source: Arc<ProviderError>,
    },
    /// The leaf key could not be generated.
    #[error("could not generate a leaf key for {identity}: {source}")]
    Key {
        /// The identity asked for.
        identity: SpiffeId,
        /// What failed (never key bytes).
        #[source]
        source: Arc<KeyError>,
    },
    /// A setting is out of range.
    #[error("invalid certificate cache setting {field}: {reason}")]
    InvalidSettings {
        /// The setting.
        field: &'static str,
        /// What is wrong and what to use.
        reason: String,
    },
    /// A bug: an issuance task panicked.
    #[error("internal error in the certificate cache: {reason}; please report this bug")]
    Internal {
        /// What happened.
        reason: String,
    },
    /// The cache's worker has stopped (the daemon is shutting down).
    #[error("the certificate cache has shut down; the daemon is stopping")]
    ShuttingDown,
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
    /// Starts the cache and its worker task. Must be called inside a tokio runtime.
    pub fn new(provider: SharedProvider, settings: CacheSettings, clock: Arc<dyn Clock>) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let issue_limit = settings.max_concurrent_issues.max(1);
        let shared = Arc::new(Shared {
            provider,
            settings,
            clock,
            entries: Mutex::new(Entries::default()),
            issue_limit,
            trust: watch::Sender::new(Arc::new(TrustBundle::default())),
            counters: Counters::default(),
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
            .map(|(key, slot)| (key.clone(), slot.sender.borrow().clone()))
            .collect()
    }

    /// The provider's trust bundle; the receiver sees every change. Empty until first read
    /// (the worker reads it at start and every [`CacheSettings::trust_refresh`]).
    pub fn trust_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.shared().trust.subscribe()
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
                    let cert = shared.timed_issue(&key).await;
                    (key, replaces, cert)
                })
            })
            .buffer_unordered(limit);
        let mut staged = Vec::new();
        while let Some(joined) = issued.next().await {
            let (key, replaces, cert) = joined.map_err(|e| CacheError::Internal {
                reason: format!("a staged issuance failed unexpectedly: {e}"),
            })?;
            let cert = cert.inspect_err(|_| {
                shared.counters.failures.fetch_add(1, Ordering::Relaxed);
            })?;
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
        self.shared().counters.snapshot()
    }

    /// How long issuances took (key, provider call, validation), one histogram per
    /// [`IssueResult`], read without waiting on anything.
    pub fn issuance_latency(&self) -> Vec<LatencyHistogram> {
        self.shared().counters.latency.snapshot()
    }

    /// The provider behind the cache.
    pub fn provider(&self) -> &SharedProvider {
        &self.shared().provider
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
        let result = AssertUnwindSafe(self.shared().timed_issue(key))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panicked(key, panic.as_ref())));
        claim.end(result, subscribe)
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
            .field("provider", &self.shared().provider.name())
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
            Err(error) => {
                shared.counters.failed(error);
                (Err(error.clone()), false)
            }
        };
        shared.release_locked(&mut entries, self.key);
        // A send error means the worker is gone (shutting down): nothing left to schedule.
        let _ = self.handle.commands.send(Command::Issued {
            key: self.key.clone(),
            result,
            renewal,
        });
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

/// The error for an issuance that panicked (a bug in a provider or in meshca).
fn panicked(key: &CertKey, panic: &(dyn std::any::Any + Send)) -> CacheError {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    CacheError::Internal {
        reason: format!("issuing for {key} failed unexpectedly: the issuance panicked: {message}"),
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

/// State shared by the handles, the worker and the issuance tasks.
struct Shared {
    provider: SharedProvider,
    settings: CacheSettings,
    clock: Arc<dyn Clock>,
    /// Published certificates and running issuances. Locked only for map operations, never
    /// across an `.await`.
    entries: Mutex<Entries>,
    /// How many issuances may run at once (`max_concurrent_issues`): claims beyond it wait.
    issue_limit: usize,
    trust: watch::Sender<Arc<TrustBundle>>,
    counters: Counters,
}

/// What the entries lock guards.
#[derive(Default)]
struct Entries {
    /// Published certificates.
    slots: HashMap<CertKey, Slot>,
    /// Keys with an issuance running, by a caller or by the worker: at most one per key.
    issuing: HashSet<CertKey>,
}

/// What a caller's lookup found.
enum Lookup {
    /// A valid published certificate.
    Cached(Fetched),
    /// Nothing valid, and this caller now holds the key's claim (one of the issuance slots).
    Claimed,
    /// Nothing valid, and the key is being issued already or no slot is free: ask the worker.
    Busy,
}

/// What the worker's attempt to claim a key found.
pub(super) enum WorkerClaim {
    /// The worker holds the claim.
    Claimed,
    /// Another issuance of the key is running; its end serves the key's waiters.
    Busy,
    /// A valid certificate was published meanwhile (asked only for keys with waiters).
    Cached,
    /// Every issuance slot is taken.
    Full,
}

/// A published certificate.
struct Slot {
    sender: watch::Sender<Arc<ServedCertificate>>,
    /// The latest NotAfter of any certificate handed to a caller: until then somebody may
    /// still be using one of ours, so the key is kept.
    requested_until: SystemTime,
}

impl Shared {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        // A panic while holding this lock leaves the map consistent (every operation on it is a
        // single insert/remove/read), so a poisoned lock is still safe to use.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The published certificate for `key` if it is still valid, recording that it was handed
    /// out (and subscribing, if asked) under the same lock the evictor takes.
    fn lookup(&self, key: &CertKey, subscribe: bool) -> Option<Fetched> {
        let now = self.clock.now();
        lookup_locked(&mut self.entries(), key, subscribe, now)
    }

    /// A caller's lookup: the valid certificate, or else the key's claim if it and an issuance
    /// slot are free, in one critical section.
    fn lookup_or_claim(&self, key: &CertKey, subscribe: bool) -> Lookup {
        let now = self.clock.now();
        let mut entries = self.entries();
        if let Some(fetched) = lookup_locked(&mut entries, key, subscribe, now) {
            return Lookup::Cached(fetched);
        }
        if entries.issuing.len() >= self.issue_limit || entries.issuing.contains(key) {
            return Lookup::Busy;
        }
        self.claim_locked(&mut entries, key);
        Lookup::Claimed
    }

    /// The worker's lookup for a waiting caller: the valid certificate, or whether the key is
    /// being issued (whose end will answer the caller).
    pub(super) fn lookup_or_issuing(
        &self,
        key: &CertKey,
        subscribe: bool,
    ) -> Result<Fetched, bool> {
        let now = self.clock.now();
        let mut entries = self.entries();
        lookup_locked(&mut entries, key, subscribe, now)
            .ok_or_else(|| entries.issuing.contains(key))
    }

    /// The worker claims `key` for an issuance of its own; `unless_cached` for keys started for
    /// waiting callers, who need no issuance if a valid certificate was published meanwhile.
    pub(super) fn worker_claim(&self, key: &CertKey, unless_cached: bool) -> WorkerClaim {
        let now = self.clock.now();
        let mut entries = self.entries();
        if entries.issuing.contains(key) {
            return WorkerClaim::Busy;
        }
        let valid = |slot: &Slot| slot.sender.borrow().info.not_after > now;
        if unless_cached && entries.slots.get(key).is_some_and(valid) {
            return WorkerClaim::Cached;
        }
        if entries.issuing.len() >= self.issue_limit {
            return WorkerClaim::Full;
        }
        self.claim_locked(&mut entries, key);
        WorkerClaim::Claimed
    }

    /// Whether an issuance slot is free now.
    pub(super) fn has_room(&self) -> bool {
        self.counters.in_flight.load(Ordering::Relaxed) < self.issue_limit
    }

    /// Whether an issuance of `key` is running.
    pub(super) fn is_issuing(&self, key: &CertKey) -> bool {
        self.entries().issuing.contains(key)
    }

    /// Keys being issued now, optionally only those of `identity`.
    pub(super) fn issuing_keys(&self, identity: Option<&SpiffeId>) -> HashSet<CertKey> {
        self.entries()
            .issuing
            .iter()
            .filter(|key| identity.is_none_or(|id| &key.identity == id))
            .cloned()
            .collect()
    }

    fn claim_locked(&self, entries: &mut Entries, key: &CertKey) {
        entries.issuing.insert(key.clone());
        self.counters
            .in_flight
            .store(entries.issuing.len(), Ordering::Relaxed);
    }

    /// Ends the issuance of `key` without publishing (it failed, panicked or was abandoned).
    pub(super) fn release(&self, key: &CertKey) {
        self.release_locked(&mut self.entries(), key);
    }

    fn release_locked(&self, entries: &mut Entries, key: &CertKey) {
        entries.issuing.remove(key);
        self.counters
            .in_flight
            .store(entries.issuing.len(), Ordering::Relaxed);
    }

    fn current(&self, key: &CertKey) -> Option<Arc<ServedCertificate>> {
        self.entries()
            .slots
            .get(key)
            .map(|slot| slot.sender.borrow().clone())
    }

    /// Publishes `cert` for `key`, waking subscribers, and ends the key's issuance. Returns
    /// `subscribers` new receivers for waiting callers that asked to subscribe, and whether it
    /// replaces a certificate (a renewal); `handed_out` records that callers got it.
    fn publish(
        &self,
        key: &CertKey,
        cert: Arc<ServedCertificate>,
        handed_out: bool,
        subscribers: usize,
    ) -> (Vec<watch::Receiver<Arc<ServedCertificate>>>, bool) {
        let mut entries = self.entries();
        let published = self.publish_locked(&mut entries, key, cert, handed_out, subscribers);
        self.release_locked(&mut entries, key);
        published
    }

    /// [`publish`](Self::publish) under a held lock; the caller releases the claim.
    fn publish_locked(
        &self,
        entries: &mut Entries,
        key: &CertKey,
        cert: Arc<ServedCertificate>,
        handed_out: bool,
        subscribers: usize,
    ) -> (Vec<watch::Receiver<Arc<ServedCertificate>>>, bool) {
        use std::collections::hash_map::Entry;
        let not_after = cert.info.not_after;
        // Counted before subscribers wake, so whoever sees the new certificate sees the count.
        let (slot, renewal) = match entries.slots.entry(key.clone()) {
            Entry::Occupied(slot) => {
                let slot = slot.into_mut();
                self.counters.renewed.fetch_add(1, Ordering::Relaxed);
                slot.sender.send_replace(cert);
                (slot, true)
            }
            Entry::Vacant(vacant) => {
                self.counters.issued.fetch_add(1, Ordering::Relaxed);
                let slot = vacant.insert(Slot {
                    sender: watch::Sender::new(cert),
                    requested_until: SystemTime::UNIX_EPOCH,
                });
                (slot, false)
            }
        };
        if handed_out {
            slot.requested_until = slot.requested_until.max(not_after);
        }
        let receivers = (0..subscribers).map(|_| slot.sender.subscribe()).collect();
        self.counters
            .entries
            .store(entries.slots.len(), Ordering::Relaxed);
        (receivers, renewal)
    }

    /// Publishes `cert` for `key` if the certificate published now has serial `replaces`;
    /// returns whether it did.
    fn publish_replacing(
        &self,
        key: &CertKey,
        replaces: &[u8],
        cert: Arc<ServedCertificate>,
    ) -> bool {
        let entries = self.entries();
        let Some(slot) = entries.slots.get(key) else {
            return false;
        };
        slot.sender.send_if_modified(|current| {
            if current.info.serial != replaces {
                return false;
            }
            self.counters.renewed.fetch_add(1, Ordering::Relaxed);
            *current = cert;
            true
        })
    }

    /// Drops `key` if nobody holds a receiver and every certificate handed out for it has
    /// expired. Returns whether the key is gone (or was never published).
    fn evict_if_unused(&self, key: &CertKey) -> bool {
        let now = self.clock.now();
        let mut entries = self.entries();
        let Some(slot) = entries.slots.get(key) else {
            return true;
        };
        if slot.sender.receiver_count() > 0 || slot.requested_until > now {
            return false;
        }
        entries.slots.remove(key);
        self.counters
            .entries
            .store(entries.slots.len(), Ordering::Relaxed);
        self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Identities with a published certificate, optionally only those of `identity`.
    fn published_keys(&self, identity: Option<&SpiffeId>) -> Vec<CertKey> {
        self.entries()
            .slots
            .keys()
            .filter(|key| identity.is_none_or(|id| &key.identity == id))
            .cloned()
            .collect()
    }

    /// Reads the provider's bundle, adds the extra roots, and publishes the result; returns
    /// whether it changed. Every bundle subscribers see passes through here, so the extra roots
    /// are in all of them, and leaves are validated against the same merged bundle.
    async fn refresh_trust(&self) -> Result<bool, CacheError> {
        let provider = self.provider.name();
        let after = self.settings.issue_timeout;
        let mut bundle = tokio::time::timeout(after, self.provider.trust_bundle())
            .await
            .map_err(|_| CacheError::Timeout {
                provider,
                operation: "reading the trust bundle".to_owned(),
                after,
            })?
            .map_err(|e| CacheError::TrustBundle {
                provider,
                source: Arc::new(e),
            })?;
        for root in self.settings.extra_roots.roots() {
            bundle.push(root.clone());
        }
        let changed = self.trust.send_if_modified(|current| {
            if **current == bundle {
                return false;
            }
            *current = Arc::new(bundle);
            true
        });
        if changed {
            let roots = self.trust.borrow().fingerprints();
            tracing::info!(provider, ?roots, "trust bundle changed");
        }
        Ok(changed)
    }

    /// One issuance for `key`: make a key, ask the provider, validate. Runs in its own task.
    async fn issue(&self, key: &CertKey) -> Result<Arc<ServedCertificate>, CacheError> {
        let provider = self.provider.name();
        let identity = &key.identity;
        let settings = &self.settings;
        let spec = LeafSpec::workload(identity, &settings.extra_dns, settings.lifetime);
        let provider_error = |e: ProviderError| CacheError::Provider {
            identity: identity.clone(),
            provider,
            source: Arc::new(e),
        };
        let leaf_key = generate_key(settings.key_type).await.map_err(|e| match e {
            KeyGenError::Key(e) => CacheError::Key {
                identity: identity.clone(),
                source: Arc::new(e),
            },
            KeyGenError::Task(reason) => CacheError::Internal { reason },
        })?;
        let request = IssueRequest::generated(&spec, &leaf_key);
        self.provider
            .capabilities()
            .check(&request)
            .map_err(provider_error)?;
        let after = settings.issue_timeout;
        let chain = tokio::time::timeout(after, self.provider.issue(&request))
            .await
            .map_err(|_| CacheError::Timeout {
                provider,
                operation: format!("issuing a certificate for {identity}"),
                after,
            })?
            .map_err(provider_error)?;
        let info = self.validate(key, &chain, &spec, &leaf_key).await?;
        Ok(Arc::new(ServedCertificate {
            chain,
            key: leaf_key,
            info,
            issued_by: provider,
        }))
    }

    async fn validate(
        &self,
        key: &CertKey,
        chain: &CertificateChain,
        spec: &LeafSpec,
        leaf_key: &LeafKey,
    ) -> Result<CertificateInfo, CacheError> {
        let check = validate::ChainCheck::for_provider(self.provider.capabilities());
        let bundle = self.trust.borrow().clone();
        let mut outcome =
            validate::validate(chain, &bundle, spec, leaf_key, self.clock.now(), check);
        if let Err(rejection) = &outcome
            && rejection.untrusted
        {
            // The provider may have a root we have not read yet (first use, or a rotation that
            // began since the last refresh): re-read the bundle once and try again.
            if let Err(e) = self.refresh_trust().await {
                tracing::warn!(error = %e, "could not re-read the trust bundle");
            }
            // Validate again if the bundle is not the one just used: this refresh, or one that
            // ran concurrently (the worker's first read at start), may have changed it.
            let fresh = self.trust.borrow().clone();
            if fresh != bundle {
                outcome =
                    validate::validate(chain, &fresh, spec, leaf_key, self.clock.now(), check);
            }
        }
        outcome.map_err(|rejection| CacheError::Invalid {
            identity: key.identity.clone(),
            provider: self.provider.name(),
            reason: rejection.reason,
        })
    }
}

enum KeyGenError {
    Key(KeyError),
    Task(String),
}

/// ECDSA keys take microseconds; RSA keys take up to seconds, so they are made on a blocking
/// thread to keep the runtime responsive.
async fn generate_key(key_type: KeyType) -> Result<LeafKey, KeyGenError> {
    if !key_type.is_rsa() {
        return LeafKey::generate(key_type).map_err(KeyGenError::Key);
    }
    tokio::task::spawn_blocking(move || LeafKey::generate(key_type))
        .await
        .map_err(|e| KeyGenError::Task(format!("RSA key generation failed: {e}")))?
        .map_err(KeyGenError::Key)
}

#[derive(Debug, Default)]
struct Counters {
    issued: AtomicU64,
    renewed: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    evicted: AtomicU64,
    entries: AtomicUsize,
    in_flight: AtomicUsize,
    latency: latency::IssuanceLatency,
}

impl Counters {
    /// Counts a failed issuance, once, by whoever ran it.
    fn failed(&self, error: &CacheError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if matches!(error, CacheError::Invalid { .. }) {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> CacheStats {
        CacheStats {
            issued: self.issued.load(Ordering::Relaxed),
            renewed: self.renewed.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// The valid published certificate for `key`, handed out (and subscribed to, if asked).
fn lookup_locked(
    entries: &mut Entries,
    key: &CertKey,
    subscribe: bool,
    now: SystemTime,
) -> Option<Fetched> {
    let slot = entries.slots.get_mut(key)?;
    let cert = slot.sender.borrow().clone();
    if cert.info.not_after <= now {
        return None;
    }
    slot.requested_until = slot.requested_until.max(cert.info.not_after);
    let updates = subscribe.then(|| slot.sender.subscribe());
    Some(Fetched { cert, updates })
}

/// RFC 3339 for logs and messages.
fn rfc3339(at: SystemTime) -> String {
    ::time::OffsetDateTime::from(at)
        .format(&::time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{at:?}"))
}
