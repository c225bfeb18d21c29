//! The single task that decides what gets issued when.
//!
//! The worker owns all per-key scheduling state, so none of it needs a lock: who is waiting
//! for a key, how often it failed, and when it is due next. Which keys are being issued is
//! the one thing it shares (the claims in the entries map), because callers issue too. It
//! reacts to five things: a request from a caller, a caller's issuance ending, one of its own
//! issuances finishing, the earliest deadline passing, and the trust-bundle refresh tick.
//!
//! The worker's own issuances (renewals, retries, and first issuances for callers who found no
//! free slot) run as tasks in a `JoinSet`. A key is issued at most once at a time, by whoever
//! holds its claim: callers arriving meanwhile are added to its waiters, and a `renew_now`
//! arriving meanwhile sets `reissue` so a fresh issuance follows.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use meshca_provider::{Clock, SpiffeId};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

use super::policy::{RECOVERY_WINDOW, recovery_delay};
use super::{
    CacheError, CertKey, Fetched, KeyMap, KeySet, ServedCertificate, Shared, WorkerClaim, renew_in,
    retry_in, rfc3339,
};

/// What the handles ask of the worker.
pub(super) enum Command {
    /// A caller needs a valid certificate for `key` (and a receiver, if `subscribe`).
    Fetch {
        key: CertKey,
        subscribe: bool,
        reply: oneshot::Sender<Result<Fetched, CacheError>>,
    },
    /// Re-issue the keys of one identity, or all keys.
    RenewNow(Option<SpiffeId>),
    /// A caller's issuance of `key` ended: published (`renewal` if it replaced a certificate)
    /// or failed (already counted). Its claim is released.
    Issued {
        key: CertKey,
        result: Result<Arc<ServedCertificate>, CacheError>,
        renewal: bool,
    },
    /// A caller's issuance of `key` ended without a result: the caller went away.
    Abandoned(CertKey),
    /// The provider was seen healthy again (its health check passed after failing): retry
    /// every key waiting in backoff now, spread over the recovery window.
    ProviderRecovered,
    /// The provider's health check passed (again): if keys wait in backoff, retry the one due
    /// first now, a probe of whether issuing works again (a misconfiguration fixed while the
    /// health check kept passing); its success retries the others.
    ProviderHealthy,
}

struct Waiter {
    subscribe: bool,
    reply: oneshot::Sender<Result<Fetched, CacheError>>,
}

/// Scheduling state of one key.
#[derive(Default)]
struct KeyState {
    /// Callers waiting for the next issuance result.
    waiters: Vec<Waiter>,
    /// When background work (renewal or retry) is due; the entry of `Worker::timers` that
    /// holds this deadline is the live one.
    due: Option<Instant>,
    /// Queued in `Worker::urgent`.
    queued: bool,
    /// Consecutive failed issuances.
    failures: u32,
    /// `renew_now` arrived while an issuance was running.
    reissue: bool,
}

type Outcome = (CertKey, Result<Arc<ServedCertificate>, CacheError>);

/// The time by the cache's clock and by tokio's, read once for a batch of certificates.
#[derive(Clone, Copy)]
struct Now {
    wall: SystemTime,
    instant: Instant,
}

impl Now {
    fn read(clock: &dyn Clock) -> Self {
        Self {
            wall: clock.now(),
            instant: Instant::now(),
        }
    }
}

/// How long the worker lets callers' first certificates gather before scheduling their
/// renewals, one wake-up for the batch: when thousands of proxies connect at once, a wake-up
/// and message per certificate was about a seventh of what an issuance cost beyond its key and
/// signature (docs/BENCHMARKS.md, "Tresor issuance"). Renewals are due hours later; a
/// millisecond changes nothing.
const HANDOVER_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

pub(super) struct Worker {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    keys: KeyMap<KeyState>,
    /// Background deadlines, earliest first (see [`Timers`]).
    timers: Timers,
    /// Keys with waiting callers, to start before any background work.
    urgent: VecDeque<CertKey>,
    /// Keys whose last issuance failed and whose retry waits out a backoff: woken when the
    /// provider is seen working again. May hold keys since renewed or dropped (skipped then).
    backing_off: KeySet,
    running: JoinSet<Outcome>,
    /// Which key each running task issues for, to attribute a panic.
    running_keys: HashMap<Id, CertKey>,
    trust_refresh: JoinSet<()>,
    /// The buffer the next batch of handed-over certificates is swapped into (empty).
    handed_over: Vec<(CertKey, Arc<ServedCertificate>)>,
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        Self {
            shared,
            commands,
            keys: KeyMap::default(),
            timers: Timers::default(),
            urgent: VecDeque::new(),
            backing_off: KeySet::default(),
            running: JoinSet::new(),
            running_keys: HashMap::new(),
            trust_refresh: JoinSet::new(),
            handed_over: Vec::new(),
        }
    }

    /// Runs until every [`super::CertificateCache`] handle is dropped; running issuances are
    /// then aborted (dropping the `JoinSet`).
    pub(super) async fn run(mut self) {
        let mut trust_tick = tokio::time::interval(
            self.shared
                .settings
                .trust_refresh
                .max(std::time::Duration::from_secs(1)),
        );
        trust_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // One timer for the earliest deadline, moved only when that deadline changes: a new
        // sleep per loop turn would register and cancel a timer around every command.
        let wake = sleep_until(Instant::now());
        tokio::pin!(wake);
        let mut armed_for = None;
        let handover = sleep_until(Instant::now());
        tokio::pin!(handover);
        let mut handover_armed = false;
        loop {
            self.start_ready();
            let has_room = self.shared.has_room();
            self.timers.compact_if_stale(&self.keys);
            let next_due = self.timers.earliest(&self.keys);
            if next_due != armed_for {
                if let Some(at) = next_due {
                    wake.as_mut().reset(at);
                }
                armed_for = next_due;
            }
            // Certificates handed over by callers are scheduled before anything else is done,
            // so no command or deadline acts on a key whose first certificate is unknown here.
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.schedule_handed_over();
                        self.handle(command);
                    }
                    None => break,
                },
                Some(done) = self.running.join_next_with_id() => {
                    self.schedule_handed_over();
                    self.finish(done);
                }
                // Only worth waking for a deadline when it could be started.
                () = &mut wake, if has_room && armed_for.is_some() => {
                    self.schedule_handed_over();
                    // Fired: re-arm on the next turn even if the earliest deadline is the same.
                    armed_for = None;
                }
                () = self.shared.handed_over.notified(), if !handover_armed => {
                    handover.as_mut().reset(Instant::now() + HANDOVER_DELAY);
                    handover_armed = true;
                }
                () = &mut handover, if handover_armed => {
                    handover_armed = false;
                    self.schedule_handed_over();
                }
                _ = trust_tick.tick() => {
                    if self.trust_refresh.is_empty() {
                        let shared = self.shared.clone();
                        self.trust_refresh.spawn(async move {
                            if let Err(e) = shared.refresh_trust().await {
                                tracing::warn!(error = %e, "trust bundle refresh failed; keeping the previous bundle");
                            }
                        });
                    }
                }
                Some(_) = self.trust_refresh.join_next() => {}
            }
        }
        tracing::debug!("certificate cache worker stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Fetch {
                key,
                subscribe,
                reply,
            } => {
                // Published between the caller's own lookup and now?
                let issuing = match self.shared.lookup_or_issuing(&key, subscribe) {
                    Ok(fetched) => {
                        let _ = reply.send(Ok(fetched));
                        return;
                    }
                    Err(issuing) => issuing,
                };
                let state = self.keys.entry(key.clone()).or_default();
                state.waiters.push(Waiter { subscribe, reply });
                // A running issuance answers the waiter when it ends.
                if !issuing && !state.queued {
                    state.queued = true;
                    self.urgent.push_back(key);
                }
            }
            Command::RenewNow(identity) => {
                let now = Instant::now();
                // Issuances still running may predate the request (e.g. a root switch): each is
                // followed by another.
                let issuing = self.shared.issuing_keys(identity.as_ref());
                for key in &issuing {
                    self.keys.entry(key.clone()).or_default().reissue = true;
                }
                for key in self.shared.published_keys(identity.as_ref()) {
                    if !issuing.contains(&key) {
                        self.schedule(&key, now);
                    }
                }
            }
            Command::Issued {
                key,
                result,
                renewal,
            } => self.caller_issued(key, result, renewal, Now::read(&*self.shared.clock)),
            Command::Abandoned(key) => {
                let published = self.shared.current(&key).is_some();
                let state = self.keys.entry(key.clone()).or_default();
                if !state.waiters.is_empty() {
                    // Someone else still wants it: the worker issues instead.
                    if !state.queued {
                        state.queued = true;
                        self.urgent.push_back(key);
                    }
                } else if published {
                    // An expired certificate whose renewal came due while the caller held the
                    // claim: renew it now.
                    if state.due.is_none() {
                        self.schedule(&key, Instant::now());
                    }
                } else {
                    self.keys.remove(&key);
                }
            }
            Command::ProviderRecovered => self.wake_backoff("its health check passed again"),
            Command::ProviderHealthy => self.probe_backoff(),
        }
    }

    /// A caller's issuance of `key` ended: answers whoever waited, then schedules the renewal
    /// or the retry.
    fn caller_issued(
        &mut self,
        key: CertKey,
        result: Result<Arc<ServedCertificate>, CacheError>,
        renewal: bool,
        now: Now,
    ) {
        let state = self.keys.entry(key.clone()).or_default();
        if state.failures > 0 {
            self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        let waiters = std::mem::take(&mut state.waiters);
        match result {
            Ok(cert) => {
                if !waiters.is_empty() {
                    self.answer_from_published(&key, waiters);
                }
                self.renew_later(key, &cert, renewal, now);
            }
            Err(error) => self.failed(key, error, waiters),
        }
    }

    /// Schedules the renewals of the first certificates callers handed over.
    fn schedule_handed_over(&mut self) {
        let mut batch = std::mem::take(&mut self.handed_over);
        self.shared.take_handed_over(&mut batch);
        let now = Now::read(&*self.shared.clock);
        for (key, cert) in batch.drain(..) {
            self.caller_issued(key, Ok(cert), false, now);
        }
        self.handed_over = batch;
    }

    /// Retries now the key waiting in backoff whose retry is due first, unless one is due
    /// within the recovery window anyway.
    fn probe_backoff(&mut self) {
        let soon = Instant::now() + RECOVERY_WINDOW;
        let mut first: Option<(Instant, &CertKey)> = None;
        for key in &self.backing_off {
            let Some(state) = self.keys.get(key) else {
                continue;
            };
            let Some(due) = state.due.filter(|_| state.failures > 0) else {
                continue;
            };
            if due <= soon {
                return;
            }
            if first.is_none_or(|(at, _)| due < at) {
                first = Some((due, key));
            }
        }
        if let Some((_, key)) = first {
            let key = key.clone();
            tracing::debug!(identity = %key.identity, purpose = %key.purpose, "provider healthy: retrying one renewal waiting in backoff now");
            self.schedule(&key, Instant::now());
        }
    }

    /// The provider works again: every key waiting out a backoff is retried within
    /// [`RECOVERY_WINDOW`], each at its own random point of it, instead of when its backoff
    /// ends (which after a long outage is up to `renewal.backoffMax` away). A key whose retry
    /// fails again backs off as before, from where its failures had got to.
    fn wake_backoff(&mut self, why: &str) {
        if self.backing_off.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut woken = 0_usize;
        for key in std::mem::take(&mut self.backing_off) {
            let Some(state) = self.keys.get_mut(&key) else {
                continue;
            };
            // Renewed since, or being issued now (its end schedules what follows).
            let Some(due) = state.due else {
                continue;
            };
            if state.failures == 0 {
                continue;
            }
            let at = now + recovery_delay(RECOVERY_WINDOW, rand::rng().random_range(0.0..=1.0));
            if at < due {
                self.timers.set_due(state, &key, at);
                woken += 1;
            }
        }
        if woken > 0 {
            tracing::info!(
                provider = self.shared.pipeline.provider().name(),
                certificates = woken,
                within = %meshca_provider::format_duration(RECOVERY_WINDOW),
                "provider usable again ({why}): retrying the renewals waiting in backoff now"
            );
        }
    }

    /// Starts issuances while there is room: keys with waiting callers first, then keys whose
    /// background deadline has passed.
    fn start_ready(&mut self) {
        let now = Instant::now();
        while self.shared.has_room() {
            if let Some(key) = self.urgent.pop_front() {
                // Clears `queued`; starts unless an issuance is already running.
                if !self.start(key.clone(), true) {
                    // A caller took the last slot meanwhile: first in line when one frees up.
                    if let Some(state) = self.keys.get_mut(&key) {
                        state.queued = true;
                    }
                    self.urgent.push_front(key);
                    break;
                }
                continue;
            }
            let Some(at) = self.timers.earliest(&self.keys) else {
                break;
            };
            if at > now {
                break;
            }
            let Some(key) = self.timers.pop() else {
                break;
            };
            if let Some(state) = self.keys.get_mut(&key) {
                state.due = None;
            }
            if !self.due(key.clone()) {
                // No slot after all: due again as soon as there is one.
                self.schedule(&key, at);
                break;
            }
        }
    }

    /// A key's renewal or retry time has come: renew it, unless nobody uses it any more.
    /// Returns false if no issuance slot was free.
    fn due(&mut self, key: CertKey) -> bool {
        let Some(state) = self.keys.get(&key) else {
            return true;
        };
        if state.queued || self.shared.is_issuing(&key) {
            // Its completion (or the caller's issuance) schedules what comes next.
            return true;
        }
        if self.shared.evict_if_unused(&key) {
            self.keys.remove(&key);
            tracing::debug!(identity = %key.identity, purpose = %key.purpose, "dropped unused certificate");
            return true;
        }
        self.start(key, false)
    }

    /// Starts an issuance for `key`, taking it off the urgent queue; nothing if one is already
    /// running (its end serves the key's waiters). `for_waiters`: started for callers, who are
    /// answered at once if a valid certificate was published meanwhile. Returns false if no
    /// issuance slot was free.
    fn start(&mut self, key: CertKey, for_waiters: bool) -> bool {
        let Some(state) = self.keys.get_mut(&key) else {
            return true;
        };
        state.queued = false;
        match self.shared.worker_claim(&key, for_waiters) {
            WorkerClaim::Claimed => {}
            WorkerClaim::Busy => return true,
            WorkerClaim::Full => return false,
            WorkerClaim::Cached => {
                let waiters = std::mem::take(&mut state.waiters);
                self.answer_from_published(&key, waiters);
                return true;
            }
        }
        state.reissue = false;
        if state.failures > 0 {
            self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        // Its timer entry, if any, is stale from now on.
        state.due = None;
        let shared = self.shared.clone();
        let task_key = key.clone();
        let handle = self.running.spawn(async move {
            let result = shared.issue(&task_key).await;
            (task_key, result)
        });
        self.running_keys.insert(handle.id(), key);
        true
    }

    /// Answers `waiters` from `key`'s published certificate (someone else just issued it). One
    /// that expired in between sends them back to the urgent queue for an issuance after all.
    fn answer_from_published(&mut self, key: &CertKey, waiters: Vec<Waiter>) {
        let mut unanswered = Vec::new();
        for waiter in waiters {
            match self.shared.lookup(key, waiter.subscribe) {
                Some(fetched) => {
                    let _ = waiter.reply.send(Ok(fetched));
                }
                None => unanswered.push(waiter),
            }
        }
        if unanswered.is_empty() {
            return;
        }
        let state = self.keys.entry(key.clone()).or_default();
        state.waiters.append(&mut unanswered);
        if !state.queued {
            state.queued = true;
            self.urgent.push_back(key.clone());
        }
    }

    fn finish(&mut self, done: Result<(Id, Outcome), JoinError>) {
        let (key, result) = match done {
            Ok((id, outcome)) => {
                self.running_keys.remove(&id);
                outcome
            }
            Err(e) => {
                let Some(key) = self.running_keys.remove(&e.id()) else {
                    return;
                };
                let reason = format!("issuing for {key} failed unexpectedly: {e}");
                self.shared.pipeline.metrics().count_unexpected_failure();
                (key, Err(CacheError::Internal { reason }))
            }
        };
        // Failures are counted by the pipeline (a panic just above).
        if result.is_err() {
            self.shared.release(&key);
        }
        let state = self.keys.entry(key.clone()).or_default();
        let waiters = std::mem::take(&mut state.waiters);
        match result {
            Ok(cert) => self.published(key, cert, waiters),
            Err(error) => self.failed(key, error, waiters),
        }
    }

    fn published(&mut self, key: CertKey, cert: Arc<ServedCertificate>, waiters: Vec<Waiter>) {
        let shared = &self.shared;
        let subscribers = waiters.iter().filter(|w| w.subscribe).count();
        let (receivers, renewal) =
            shared.publish(&key, cert.clone(), !waiters.is_empty(), subscribers);
        let mut receivers = receivers.into_iter();
        for waiter in waiters {
            let updates = if waiter.subscribe {
                receivers.next()
            } else {
                None
            };
            // A caller that gave up is fine: the certificate stays cached.
            let _ = waiter.reply.send(Ok(Fetched {
                cert: cert.clone(),
                updates,
            }));
        }
        self.renew_later(key, &cert, renewal, Now::read(&*self.shared.clock));
    }

    /// Schedules the renewal of `key`'s newly published `cert`.
    fn renew_later(&mut self, key: CertKey, cert: &ServedCertificate, renewal: bool, read: Now) {
        let shared = &self.shared;
        let now = read.wall;
        let jitter = rand::rng().random_range(-1.0..=1.0);
        let info = &cert.info;
        // The usable lifetime starts when meshca received the certificate: a NotBefore back-dated
        // for clock skew (Tresor: 60s, Vault: 30s) is not time the certificate will be used,
        // and counting it would put a short certificate's renewal point in the past.
        let delay = renew_in(
            now,
            info.not_before.max(now),
            info.not_after,
            &shared.settings.renew_policy(),
            jitter,
        );
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        let recovered = std::mem::take(&mut state.failures) > 0;
        let at = if state.reissue {
            read.instant
        } else {
            read.instant + delay
        };
        tracing::info!(
            identity = %key.identity,
            purpose = %key.purpose,
            serial = %info.serial_hex(),
            not_after = %rfc3339(info.not_after),
            renew_at = %rfc3339(now + delay),
            provider = cert.issued_by,
            renewal,
            "certificate published"
        );
        self.timers.set_due(state, &key, at);
        if recovered {
            // This key's issuance failed before and works now: so may the others'.
            self.backing_off.remove(&key);
            self.wake_backoff("a failing renewal succeeded");
        }
    }

    /// A failed issuance (already counted) of `key`: answers the waiters, and retries with
    /// backoff if a previous certificate is still being served.
    fn failed(&mut self, key: CertKey, error: CacheError, waiters: Vec<Waiter>) {
        let shared = &self.shared;
        for waiter in waiters {
            let _ = waiter.reply.send(Err(error.clone()));
        }
        let Some(last_good) = shared.current(&key) else {
            // Nothing published to keep fresh: the next caller starts a new attempt.
            self.keys.remove(&key);
            tracing::warn!(identity = %key.identity, purpose = %key.purpose, error = %error, "certificate issuance failed");
            return;
        };
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        state.failures = state.failures.saturating_add(1);
        let now = shared.clock.now();
        let delay = retry_in(
            now,
            state.failures,
            &shared.settings.backoff(),
            rand::rng().random_range(0.0..=1.0),
            Some(last_good.info.not_after),
        );
        let expired = last_good.info.not_after <= now;
        let message = if expired {
            "certificate renewal failed; the previous certificate has expired and is not served"
        } else {
            "certificate renewal failed; still serving the previous certificate"
        };
        tracing::warn!(
            identity = %key.identity,
            purpose = %key.purpose,
            error = %error,
            failures = state.failures,
            retry_in = %meshca_provider::format_duration(delay),
            serving_serial = %last_good.info.serial_hex(),
            serving_until = %rfc3339(last_good.info.not_after),
            "{message}"
        );
        self.schedule(&key, Instant::now() + delay);
        self.backing_off.insert(key);
    }

    /// Sets `key`'s single background deadline to `at`.
    fn schedule(&mut self, key: &CertKey, at: Instant) {
        let state = self.keys.entry(key.clone()).or_default();
        self.timers.set_due(state, key, at);
    }
}

/// The background deadlines: a binary heap of `(when, order, key)` with lazy deletion. A key's live
/// entry is the one whose time is its `KeyState::due`; moving or clearing a deadline leaves the
/// old entry behind, to be skipped when it reaches the top (or dropped by a compaction once
/// stale entries outnumber live ones).
///
/// Why not an ordered set: a renewal deadline is jittered, so each new one lands at a random
/// place among all the others, and a B-tree insert there walks nodes that are not in cache any
/// more once the cache holds tens of thousands of keys: the worker's largest cost per issuance
/// in a sampling profile (docs/BENCHMARKS.md). A heap push compares with a few parents near the
/// end of one array.
///
/// Deadlines that fall at the same instant (a `renew_now` sets every key's to one `now`) are
/// taken in the order they were set: the sequence number ahead of the key means a comparison
/// never reaches the key, whose identity is behind a pointer and would be compared as text.
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, CertKey)>>,
    /// The order of the next deadline set.
    next: u64,
}

impl Timers {
    /// Sets the background deadline of `key` (whose state is `state`) to `at`.
    fn set_due(&mut self, state: &mut KeyState, key: &CertKey, at: Instant) {
        state.due = Some(at);
        self.next += 1;
        self.heap.push(Reverse((at, self.next, key.clone())));
    }

    /// The earliest live deadline, dropping the stale entries above it.
    fn earliest(&mut self, keys: &KeyMap<KeyState>) -> Option<Instant> {
        while let Some(Reverse((at, _, key))) = self.heap.peek() {
            if is_live(keys, key, *at) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes the top entry (live after [`earliest`](Self::earliest)) and returns its key.
    fn pop(&mut self) -> Option<CertKey> {
        self.heap.pop().map(|Reverse((_, _, key))| key)
    }

    /// Drops every stale entry when they make up most of the heap, so that deadlines moved
    /// over and over (`renew_now`, backoff) cannot grow it without bound. Amortised: the scan
    /// runs only once more stale entries than live keys have piled up.
    fn compact_if_stale(&mut self, keys: &KeyMap<KeyState>) {
        if self.heap.len() <= 2 * keys.len() + 64 {
            return;
        }
        self.heap
            .retain(|Reverse((at, _, key))| is_live(keys, key, *at));
    }
}

/// Whether `(at, key)` is `key`'s current deadline.
fn is_live(keys: &KeyMap<KeyState>, key: &CertKey, at: Instant) -> bool {
    keys.get(key).and_then(|state| state.due) == Some(at)
}

#[cfg(test)]
mod tests {
    use meshca_provider::TrustDomain;

    use super::*;
    use crate::cache::Purpose;

    fn key(short: &str) -> CertKey {
        let identity = SpiffeId::from_short(short, &TrustDomain::default()).expect("an identity");
        CertKey::new(identity, Purpose::Default)
    }

    #[test]
    fn deadlines_at_one_instant_are_taken_in_the_order_they_were_set() {
        let mut keys = KeyMap::<KeyState>::default();
        let mut timers = Timers::default();
        let at = Instant::now();
        // Set in an order that is not the identities' own, as a renew_now over a map would.
        let set = [key("z/z"), key("a/a"), key("m/m")];
        for key in &set {
            timers.set_due(keys.entry(key.clone()).or_default(), key, at);
        }
        let mut taken = Vec::new();
        while timers.earliest(&keys) == Some(at) {
            let key = timers.pop().expect("the live top entry");
            keys.get_mut(&key).expect("its state").due = None;
            taken.push(key);
        }
        assert_eq!(taken, set);
        assert_eq!(timers.earliest(&keys), None);
    }

    #[test]
    fn a_moved_deadline_leaves_its_old_entry_stale() {
        let mut keys = KeyMap::<KeyState>::default();
        let mut timers = Timers::default();
        let now = Instant::now();
        let (early, late) = (key("a/early"), key("a/late"));
        timers.set_due(keys.entry(early.clone()).or_default(), &early, now);
        timers.set_due(
            keys.entry(late.clone()).or_default(),
            &late,
            now + HANDOVER_DELAY,
        );
        // `early` moves after `late`: its first entry is skipped, not taken.
        let later = now + 2 * HANDOVER_DELAY;
        timers.set_due(keys.get_mut(&early).expect("its state"), &early, later);
        assert_eq!(timers.earliest(&keys), Some(now + HANDOVER_DELAY));
        assert_eq!(timers.pop(), Some(late));
        assert_eq!(timers.earliest(&keys), Some(later));
        assert_eq!(timers.pop(), Some(early));
    }
}
