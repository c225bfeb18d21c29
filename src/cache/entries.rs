//! What the handles, the worker and the issuance tasks share: the published certificates and
//! the claims of running issuances (one lock, never held across an `.await`), the counters, and
//! the pipeline every issuance goes through.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use meshca_provider::{Clock, LeafSpec, SpiffeId};
use tokio::sync::{Notify, watch};

use super::policy::issue_timeout_for;
use super::{CacheError, CacheSettings, CacheStats, CertKey, KeyMap, KeySet, ServedCertificate};
use crate::issuance::{IssuanceMetrics, Issued, KeySource, Pipeline};

/// The answer to a fetch.
pub(super) struct Fetched {
    pub cert: Arc<ServedCertificate>,
    pub updates: Option<watch::Receiver<Arc<ServedCertificate>>>,
}

/// State shared by the handles, the worker and the issuance tasks.
pub(super) struct Shared {
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) settings: CacheSettings,
    pub(super) clock: Arc<dyn Clock>,
    /// Published certificates and running issuances. Locked only for map operations, never
    /// across an `.await`.
    pub(super) entries: Mutex<Entries>,
    /// How many issuances may run at once (`max_concurrent_issues`): claims beyond it wait.
    pub(super) issue_limit: usize,
    pub(super) counters: Counters,
    /// Wakes the worker when certificates were handed over to an empty queue.
    pub(super) handed_over: Notify,
}

/// What the entries lock guards.
#[derive(Default)]
pub(super) struct Entries {
    /// Published certificates.
    pub(super) slots: KeyMap<Slot>,
    /// Keys with an issuance running, by a caller or by the worker: at most one per key.
    pub(super) issuing: KeySet,
    /// Of those, the keys the worker has callers waiting on: their issuance's end is told to
    /// the worker at once.
    pub(super) awaited: KeySet,
    /// First certificates that callers issued and published, whose renewals the worker has yet
    /// to schedule: handed over in batches ([`Shared::hand_over`]).
    pub(super) handed_over: Vec<(CertKey, Arc<ServedCertificate>)>,
}

/// What a caller's lookup found.
pub(super) enum Lookup {
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
pub(super) struct Slot {
    cert: Arc<ServedCertificate>,
    /// The channel that tells subscribers of each new certificate, made by the first
    /// subscription: most keys never get one (the Istio CA API's callers, `meshca issue`), and a
    /// watch channel is a few hundred bytes and a wake-up per publication.
    updates: Option<watch::Sender<Arc<ServedCertificate>>>,
    /// The latest NotAfter of any certificate handed to a caller: until then somebody may
    /// still be using one of ours, so the key is kept.
    requested_until: SystemTime,
}

impl Slot {
    fn new(cert: Arc<ServedCertificate>) -> Self {
        Self {
            cert,
            updates: None,
            requested_until: SystemTime::UNIX_EPOCH,
        }
    }

    /// The certificate published now.
    pub(super) fn cert(&self) -> &Arc<ServedCertificate> {
        &self.cert
    }

    /// A receiver that sees every certificate published after this one.
    fn subscribe(&mut self) -> watch::Receiver<Arc<ServedCertificate>> {
        let cert = &self.cert;
        self.updates
            .get_or_insert_with(|| watch::Sender::new(cert.clone()))
            .subscribe()
    }

    /// Publishes `cert` in place of the current one, waking subscribers.
    fn replace(&mut self, cert: Arc<ServedCertificate>) {
        if let Some(updates) = &self.updates {
            updates.send_replace(cert.clone());
        }
        self.cert = cert;
    }

    /// How many receivers are alive.
    fn subscribers(&self) -> usize {
        self.updates
            .as_ref()
            .map_or(0, watch::Sender::receiver_count)
    }
}

impl Shared {
    pub(super) fn entries(&self) -> MutexGuard<'_, Entries> {
        // A panic while holding this lock leaves the map consistent (every operation on it is a
        // single insert/remove/read), so a poisoned lock is still safe to use.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The published certificate for `key` if it is still valid, recording that it was handed
    /// out (and subscribing, if asked) under the same lock the evictor takes.
    pub(super) fn lookup(&self, key: &CertKey, subscribe: bool) -> Option<Fetched> {
        let now = self.clock.now();
        lookup_locked(&mut self.entries(), key, subscribe, now)
    }

    /// A caller's lookup: the valid certificate, or else the key's claim if it and an issuance
    /// slot are free, in one critical section.
    pub(super) fn lookup_or_claim(&self, key: &CertKey, subscribe: bool) -> Lookup {
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
    /// being issued (whose end will answer the caller: the key is marked awaited, so that end
    /// reaches the worker at once rather than with the next batch).
    pub(super) fn lookup_or_issuing(
        &self,
        key: &CertKey,
        subscribe: bool,
    ) -> Result<Fetched, bool> {
        let now = self.clock.now();
        let mut entries = self.entries();
        if let Some(fetched) = lookup_locked(&mut entries, key, subscribe, now) {
            return Ok(fetched);
        }
        let issuing = entries.issuing.contains(key);
        if issuing {
            entries.awaited.insert(key.clone());
        }
        Err(issuing)
    }

    /// Queues a caller's first certificate for `key` for the worker, which schedules its
    /// renewal. Returns whether the queue was empty: only then does the worker need waking.
    pub(super) fn hand_over(
        &self,
        entries: &mut Entries,
        key: &CertKey,
        cert: Arc<ServedCertificate>,
    ) -> bool {
        entries.handed_over.push((key.clone(), cert));
        entries.handed_over.len() == 1
    }

    /// Swaps everything handed over since the last call into `batch` (empty), whose capacity
    /// the queue keeps: a storm's batches reuse two buffers instead of growing new ones.
    pub(super) fn take_handed_over(&self, batch: &mut Vec<(CertKey, Arc<ServedCertificate>)>) {
        std::mem::swap(&mut self.entries().handed_over, batch);
    }

    /// The worker claims `key` for an issuance of its own; `unless_cached` for keys started for
    /// waiting callers, who need no issuance if a valid certificate was published meanwhile.
    pub(super) fn worker_claim(&self, key: &CertKey, unless_cached: bool) -> WorkerClaim {
        let now = self.clock.now();
        let mut entries = self.entries();
        if entries.issuing.contains(key) {
            return WorkerClaim::Busy;
        }
        let valid = |slot: &Slot| slot.cert.info.not_after > now;
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
    pub(super) fn issuing_keys(&self, identity: Option<&SpiffeId>) -> KeySet {
        self.entries()
            .issuing
            .iter()
            .filter(|key| identity.is_none_or(|id| &key.identity == id))
            .cloned()
            .collect()
    }

    pub(super) fn claim_locked(&self, entries: &mut Entries, key: &CertKey) {
        entries.issuing.insert(key.clone());
        self.counters
            .in_flight
            .store(entries.issuing.len(), Ordering::Relaxed);
    }

    /// Ends the issuance of `key` without publishing (it failed, panicked or was abandoned).
    pub(super) fn release(&self, key: &CertKey) {
        self.release_locked(&mut self.entries(), key);
    }

    /// Ends the claim on `key`; returns whether the worker has callers waiting on it.
    pub(super) fn release_locked(&self, entries: &mut Entries, key: &CertKey) -> bool {
        entries.issuing.remove(key);
        self.counters
            .in_flight
            .store(entries.issuing.len(), Ordering::Relaxed);
        !entries.awaited.is_empty() && entries.awaited.remove(key)
    }

    pub(super) fn current(&self, key: &CertKey) -> Option<Arc<ServedCertificate>> {
        self.entries().slots.get(key).map(|slot| slot.cert.clone())
    }

    /// Publishes `cert` for `key`, waking subscribers, and ends the key's issuance. Returns
    /// `subscribers` new receivers for waiting callers that asked to subscribe, and whether it
    /// replaces a certificate (a renewal); `handed_out` records that callers got it.
    pub(super) fn publish(
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
    pub(super) fn publish_locked(
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
                slot.replace(cert);
                (slot, true)
            }
            Entry::Vacant(vacant) => {
                self.counters.issued.fetch_add(1, Ordering::Relaxed);
                (vacant.insert(Slot::new(cert)), false)
            }
        };
        if handed_out {
            slot.requested_until = slot.requested_until.max(not_after);
        }
        let receivers = (0..subscribers).map(|_| slot.subscribe()).collect();
        self.counters
            .entries
            .store(entries.slots.len(), Ordering::Relaxed);
        (receivers, renewal)
    }

    /// Publishes `cert` for `key` if the certificate published now has serial `replaces`;
    /// returns whether it did.
    pub(super) fn publish_replacing(
        &self,
        key: &CertKey,
        replaces: &[u8],
        cert: Arc<ServedCertificate>,
    ) -> bool {
        let mut entries = self.entries();
        let Some(slot) = entries.slots.get_mut(key) else {
            return false;
        };
        if slot.cert.info.serial != replaces {
            return false;
        }
        self.counters.renewed.fetch_add(1, Ordering::Relaxed);
        slot.replace(cert);
        true
    }

    /// Drops `key` if nobody holds a receiver and every certificate handed out for it has
    /// expired. Returns whether the key is gone (or was never published).
    pub(super) fn evict_if_unused(&self, key: &CertKey) -> bool {
        let now = self.clock.now();
        let mut entries = self.entries();
        let Some(slot) = entries.slots.get(key) else {
            return true;
        };
        if slot.subscribers() > 0 || slot.requested_until > now {
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
    pub(super) fn published_keys(&self, identity: Option<&SpiffeId>) -> Vec<CertKey> {
        self.entries()
            .slots
            .keys()
            .filter(|key| identity.is_none_or(|id| &key.identity == id))
            .cloned()
            .collect()
    }

    /// Re-reads the trust bundle through the pipeline.
    pub(super) async fn refresh_trust(&self) -> Result<bool, CacheError> {
        self.pipeline
            .refresh_trust()
            .await
            .map_err(CacheError::trust)
    }

    /// How long an issuance for `key` may take: the pipeline's timeout, bounded by the time
    /// left on the certificate it renews ([`issue_timeout_for`]).
    pub(super) fn issue_timeout(&self, key: &CertKey) -> Duration {
        let configured = self.pipeline.settings().issue_timeout;
        // A first issuance has nothing to renew, and no need of the time.
        match self.current(key) {
            Some(cert) => {
                issue_timeout_for(self.clock.now(), Some(cert.info.not_after), configured)
            }
            None => configured,
        }
    }

    /// One issuance for `key`: a new key of the configured type, through the pipeline.
    pub(super) async fn issue(&self, key: &CertKey) -> Result<Arc<ServedCertificate>, CacheError> {
        let settings = &self.settings;
        let spec = LeafSpec::workload(&key.identity, &settings.extra_dns, settings.lifetime);
        let timeout = self.issue_timeout(key);
        let issued = self
            .pipeline
            .issue_within(spec, KeySource::Generate(settings.key_type), timeout)
            .await
            .map_err(|e| CacheError::issuing(key, e))?;
        let Issued {
            chain,
            info,
            issued_by,
            key: Some(leaf_key),
        } = issued
        else {
            return Err(CacheError::Internal {
                reason: format!("the pipeline returned no private key for {key}"),
            });
        };
        Ok(Arc::new(ServedCertificate {
            chain,
            key: leaf_key,
            info: info.into_summary(),
            issued_by,
        }))
    }
}

/// What the cache counts (the pipeline counts failures, rejections and latency).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) issued: AtomicU64,
    pub(super) renewed: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) evicted: AtomicU64,
    pub(super) entries: AtomicUsize,
    pub(super) in_flight: AtomicUsize,
}

impl Counters {
    pub(super) fn snapshot(&self, issuance: &IssuanceMetrics) -> CacheStats {
        CacheStats {
            issued: self.issued.load(Ordering::Relaxed),
            renewed: self.renewed.load(Ordering::Relaxed),
            failures: issuance.failures(),
            rejected: issuance.rejected(),
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
    let cert = slot.cert.clone();
    if cert.info.not_after <= now {
        return None;
    }
    slot.requested_until = slot.requested_until.max(cert.info.not_after);
    let updates = subscribe.then(|| slot.subscribe());
    Some(Fetched { cert, updates })
}
