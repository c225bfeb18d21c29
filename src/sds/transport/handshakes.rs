//! Admission control for TLS handshakes: who gets the CPU next, and who is refused at once.
//!
//! A TLS 1.3 server handshake costs CPU at two moments: when the ClientHello arrives (key
//! exchange and the CertificateVerify signature) and when the client's second flight arrives
//! (its certificate chain and CertificateVerify checked). When thousands of proxies reconnect
//! at once (a restart), starting every handshake as it comes makes second steps queue behind
//! ever more first steps, so handshakes finish late or not at all (`handshakeTimeout`) and the
//! clients retry, doing the work twice.
//!
//! Every handshake's stream is wrapped in a [`Gated`] reader: bytes read from the network are
//! handed to rustls (which processes them at once) only when the [`HandshakeQueue`] grants a
//! step, and the step ends at the handshake's next read or write, i.e. when rustls is done
//! with the bytes. So a step holds one of the queue's slots (a few per CPU) only while there is
//! CPU work to do, never across a network wait: a client that sends a ClientHello and then
//! nothing, or nothing at all, holds no slot. The queue serves steps past the first before any
//! first step (a handshake already started finishes before a new one starts), and first steps
//! in turn by source address (round-robin), so one host cannot push the others back.
//!
//! A first step whose wait (the work ahead of it, at the measured cost of a step, spread over
//! the CPUs) would exceed half of `handshakeTimeout` is refused: its ClientHello is left
//! unprocessed, answered with a fatal TLS alert (`SHED_ALERT` in `accept.rs`) and the
//! connection closed, before any CPU is spent on it, and the client retries with its backoff
//! rather than waiting for a timeout. The work ahead is the steps queued, and one later step
//! for each handshake between steps (past its ClientHello, waiting for its client's next
//! flight, which will go first): when thousands reconnect at once, the slots free up between
//! steps while the handshakes under way are already more work than the timeout allows, and
//! counting only the queue let every new one in to time out later. The first steps counted
//! ahead of a source's step are at most its own queued steps plus one, times the number of
//! sources with steps queued, and the handshakes between steps likewise: a host flooding the
//! queue, or holding many handshakes open without finishing them, is refused long before a
//! host with nothing queued is.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a handshake comes from: its peer's IP address (`None` for a Unix socket peer).
pub(super) type Source = Option<IpAddr>;

/// Which CPU step of a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The ClientHello.
    First,
    /// The client's later flights (its certificate and Finished).
    Later,
}

/// The error a refused handshake ends with (see [`is_shed`]).
#[derive(Debug)]
struct Shed;

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TLS handshake refused: the handshake queue is full")
    }
}

impl std::error::Error for Shed {}

/// Whether a handshake failed because the queue refused it.
pub(super) fn is_shed(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<Shed>())
}

/// The handshake steps of one listener: slots for steps running, and the steps waiting.
#[derive(Debug)]
pub(super) struct HandshakeQueue {
    state: Mutex<State>,
    slots: usize,
    /// The CPUs the steps share, for the estimate of a wait.
    cpus: usize,
    /// A first step waiting longer than this (estimated) is refused.
    budget: Duration,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    /// Steps past the first, first come first served.
    later: VecDeque<Arc<Waiter>>,
    /// First steps still waiting (not abandoned), in `later` and `sources`.
    waiting_later: usize,
    waiting_first: usize,
    /// First steps, by source.
    sources: HashMap<Source, SourceQueue>,
    /// Sources with first steps queued, in turn order.
    turns: VecDeque<Source>,
    /// Sources with waiting first steps.
    active_sources: usize,
    /// Handshakes past their first step with no step queued or running: waiting for their
    /// client's next flight, whose step will go before any new handshake's. In all, and by
    /// source (sources with none left out).
    between: usize,
    between_by_source: HashMap<Source, usize>,
    /// The measured CPU time of a step, by kind (moving averages, nanoseconds).
    cost: [f64; 2],
}

#[derive(Debug, Default)]
struct SourceQueue {
    waiters: VecDeque<Arc<Waiter>>,
    /// Waiters not abandoned.
    waiting: usize,
}

#[derive(Debug)]
struct Waiter {
    step: Step,
    source: Source,
    state: Mutex<WaiterState>,
}

#[derive(Debug)]
enum WaiterState {
    Waiting(Option<Waker>),
    Granted,
    /// Given up (the connection closed or timed out) before its turn.
    Abandoned,
}

/// Steps granted at once per CPU. A granted step runs only when its task's turn comes in the
/// runtime's queue, behind whatever else is ready (streams, issuance, other connections'
/// reads): with one slot per CPU the CPUs would wait on that latency between steps (a restart
/// storm of 10,000 proxies took 30% longer); a few per CPU keep them busy while the order
/// (later steps first) still holds whenever steps wait.
const SLOTS_PER_CPU: usize = 8;

/// What a step is assumed to cost before one has been measured.
const INITIAL_COST: Duration = Duration::from_micros(500);
/// Weight of a new measurement in the moving average of a step's cost.
const COST_WEIGHT: f64 = 1.0 / 16.0;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HandshakeQueue {
    /// A queue granting `slots` steps at once on `cpus` CPUs, refusing first steps that would
    /// wait longer than half of `handshake_timeout`.
    pub(super) fn new(slots: usize, cpus: usize, handshake_timeout: Duration) -> Self {
        let initial = INITIAL_COST.as_nanos() as f64;
        Self {
            state: Mutex::new(State {
                cost: [initial; 2],
                ..State::default()
            }),
            slots: slots.max(1),
            cpus: cpus.max(1),
            budget: handshake_timeout / 2,
        }
    }

    /// [`SLOTS_PER_CPU`] slots per CPU the process may use.
    pub(super) fn per_cpu(handshake_timeout: Duration) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cpus * SLOTS_PER_CPU, cpus, handshake_timeout)
    }

    /// Queues a step; `None` if it is a first step that would wait too long.
    fn enqueue(self: &Arc<Self>, step: Step, source: Source) -> Option<Ticket> {
        let mut state = lock(&self.state);
        let waiter = Arc::new(Waiter {
            step,
            source,
            state: Mutex::new(WaiterState::Waiting(None)),
        });
        match step {
            Step::Later => {
                state.later.push_back(waiter.clone());
                state.waiting_later += 1;
            }
            Step::First => {
                if self.first_wait(&state, source) > self.budget {
                    return None;
                }
                let queue = state.sources.entry(source).or_default();
                queue.waiters.push_back(waiter.clone());
                queue.waiting += 1;
                let (newly_active, new_turn) = (queue.waiting == 1, queue.waiters.len() == 1);
                if newly_active {
                    state.active_sources += 1;
                }
                if new_turn {
                    state.turns.push_back(source);
                }
                state.waiting_first += 1;
            }
        }
        self.dispatch(&mut state);
        Some(Ticket {
            queue: self.clone(),
            waiter,
        })
    }

    /// The estimated wait of a new first step from `source`.
    fn first_wait(&self, state: &State, source: Source) -> Duration {
        let own = state.sources.get(&source).map_or(0, |q| q.waiting);
        let sources = state.active_sources + usize::from(own == 0);
        let first_ahead = state.waiting_first.min((own + 1).saturating_mul(sources));
        let [first, later] = state.cost;
        // Handshakes between steps, counted as first steps are: those of sources with many
        // (a host holding many handshakes open without finishing them) count for those
        // sources, not for the others.
        let own_between = state.between_by_source.get(&source).copied().unwrap_or(0);
        let between_sources = state.between_by_source.len() + usize::from(own_between == 0);
        let between_ahead = state
            .between
            .min((own_between + 1).saturating_mul(between_sources));
        let later_ahead = state.waiting_later + between_ahead;
        let nanos =
            (later_ahead as f64 * later + first_ahead as f64 * (first + later)) / self.cpus as f64;
        Duration::from_nanos(nanos as u64)
    }

    /// Grants waiting steps while slots are free: later steps first, then first steps by
    /// source in turn.
    fn dispatch(&self, state: &mut State) {
        while state.running < self.slots {
            let waiter = if let Some(waiter) = state.later.pop_front() {
                waiter
            } else if let Some(source) = state.turns.pop_front() {
                let Some(queue) = state.sources.get_mut(&source) else {
                    continue;
                };
                let Some(waiter) = queue.waiters.pop_front() else {
                    state.sources.remove(&source);
                    continue;
                };
                if queue.waiters.is_empty() {
                    state.sources.remove(&source);
                } else {
                    state.turns.push_back(source);
                }
                waiter
            } else {
                return;
            };
            let mut waiter_state = lock(&waiter.state);
            let WaiterState::Waiting(waker) = &mut *waiter_state else {
                // Abandoned: already taken out of the counts.
                continue;
            };
            let waker = waker.take();
            *waiter_state = WaiterState::Granted;
            drop(waiter_state);
            state.running += 1;
            match waiter.step {
                Step::Later => state.waiting_later -= 1,
                Step::First => {
                    state.waiting_first -= 1;
                    self.left_source(state, waiter.source);
                }
            }
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// A waiting first step of `source` was granted or abandoned.
    fn left_source(&self, state: &mut State, source: Source) {
        if let Some(queue) = state.sources.get_mut(&source) {
            queue.waiting -= 1;
            if queue.waiting == 0 {
                state.active_sources -= 1;
            }
        } else {
            // Its queue was emptied when this, its last waiter, was granted.
            state.active_sources -= 1;
        }
    }

    /// A handshake from `source` is now (`true`) or no longer between steps.
    fn set_between(&self, source: Source, between: bool) {
        let mut state = lock(&self.state);
        if between {
            state.between += 1;
            *state.between_by_source.entry(source).or_default() += 1;
        } else {
            state.between -= 1;
            if let Some(count) = state.between_by_source.get_mut(&source) {
                *count -= 1;
                if *count == 0 {
                    state.between_by_source.remove(&source);
                }
            }
        }
    }

    /// A granted step took `spent`.
    fn measured(&self, step: Step, spent: Duration) {
        let mut state = lock(&self.state);
        let cost = &mut state.cost[step as usize];
        *cost += (spent.as_nanos() as f64 - *cost) * COST_WEIGHT;
    }

    /// Ends a ticket: frees its slot if granted, leaves the queue if waiting.
    fn done(&self, waiter: &Waiter) {
        let mut state = lock(&self.state);
        let mut waiter_state = lock(&waiter.state);
        match *waiter_state {
            WaiterState::Granted => state.running -= 1,
            WaiterState::Waiting(_) => {
                *waiter_state = WaiterState::Abandoned;
                match waiter.step {
                    Step::Later => state.waiting_later -= 1,
                    Step::First => {
                        state.waiting_first -= 1;
                        self.left_source(&mut state, waiter.source);
                    }
                }
            }
            WaiterState::Abandoned => {}
        }
        drop(waiter_state);
        self.dispatch(&mut state);
    }

    /// A queue that sheds every new handshake from another address than 192.0.2.1-2, and what
    /// keeps it so while held: its one slot taken, one first step waiting, a step's wait above
    /// the budget.
    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    pub(super) fn shedding() -> (Arc<Self>, Box<dyn std::any::Any + Send>) {
        let queue = Arc::new(Self::new(1, 1, Duration::from_millis(1)));
        let running = queue.enqueue(Step::First, Some(IpAddr::from([192, 0, 2, 1])));
        let waiting = queue.enqueue(Step::First, Some(IpAddr::from([192, 0, 2, 2])));
        (queue, Box::new((running.unwrap(), waiting.unwrap())))
    }

    #[cfg(test)]
    fn between(&self) -> usize {
        lock(&self.state).between
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize, usize) {
        let state = lock(&self.state);
        (
            state.running,
            state.waiting_later,
            state.waiting_first,
            state.active_sources,
        )
    }
}

/// A step's place in the queue; its slot (once granted) or place is given up when dropped.
#[derive(Debug)]
struct Ticket {
    queue: Arc<HandshakeQueue>,
    waiter: Arc<Waiter>,
}

impl Ticket {
    fn poll_granted(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.waiter.state);
        match &mut *state {
            WaiterState::Waiting(waker) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            WaiterState::Granted | WaiterState::Abandoned => Poll::Ready(()),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.done(&self.waiter);
    }
}

/// Size of the buffer a handshake reads into before its step is granted: what rustls reads at
/// once.
const READ_CHUNK: usize = 4096;

/// A stream whose reads, until [`Gated::handshake_done`], reach the reader only when the
/// [`HandshakeQueue`] grants a step (see the module documentation); after it, a plain stream.
#[derive(Debug)]
pub(crate) struct Gated<S> {
    inner: S,
    gate: Option<Box<Gate>>,
    /// Bytes read during the handshake that rustls had not taken when it ended.
    leftover: Vec<u8>,
}

#[derive(Debug)]
struct Gate {
    queue: Arc<HandshakeQueue>,
    source: Source,
    /// Steps granted so far.
    steps: u32,
    /// Bytes read but not yet handed over: `input[start..end]`.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// The step waiting for its turn.
    waiting: Option<(Ticket, Step)>,
    /// The step running: its slot, when it started, and its kind.
    running: Option<(Ticket, Instant, Step)>,
    /// Counted in the queue as between steps (see [`State::between`]).
    between: bool,
}

impl Gate {
    /// The running step (if any) is over: the reader is back for more bytes or writing, and
    /// the handshake is between steps until its next step is queued or it ends.
    fn step_over(&mut self) {
        if let Some((ticket, started, step)) = self.running.take() {
            self.queue.measured(step, started.elapsed());
            drop(ticket);
            self.set_between(true);
        }
    }

    fn set_between(&mut self, between: bool) {
        if self.between != between {
            self.between = between;
            self.queue.set_between(self.source, between);
        }
    }
}

impl Drop for Gate {
    /// The handshake is over (done, failed or dropped): no longer between steps.
    fn drop(&mut self) {
        self.set_between(false);
    }
}

impl<S> Gated<S> {
    /// `inner`, whose handshake steps from `source` go through `queue`.
    pub(super) fn new(inner: S, queue: Arc<HandshakeQueue>, source: Source) -> Self {
        Self {
            inner,
            gate: Some(Box::new(Gate {
                queue,
                source,
                steps: 0,
                input: vec![0; READ_CHUNK],
                start: 0,
                end: 0,
                waiting: None,
                running: None,
                between: false,
            })),
            leftover: Vec::new(),
        }
    }

    /// The handshake is over: frees its slot; reads go straight through from now on.
    pub(super) fn handshake_done(&mut self) {
        if let Some(mut gate) = self.gate.take() {
            gate.step_over();
            self.leftover = gate.input[gate.start..gate.end].to_vec();
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(gate) = this.gate.as_deref_mut() else {
            if this.leftover.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let n = buf.remaining().min(this.leftover.len());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.drain(..n);
            return Poll::Ready(Ok(()));
        };
        gate.step_over();
        if gate.start == gate.end {
            let mut input = ReadBuf::new(&mut gate.input);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut input))?;
            let read = input.filled().len();
            if read == 0 {
                // End of stream: nothing for rustls to process.
                return Poll::Ready(Ok(()));
            }
            (gate.start, gate.end) = (0, read);
        }
        if gate.waiting.is_none() {
            gate.set_between(false);
            let step = if gate.steps == 0 {
                Step::First
            } else {
                Step::Later
            };
            let Some(ticket) = gate.queue.enqueue(step, gate.source) else {
                return Poll::Ready(Err(io::Error::other(Shed)));
            };
            gate.waiting = Some((ticket, step));
        }
        if let Some((ticket, _)) = &gate.waiting {
            ready!(ticket.poll_granted(cx));
        }
        if let Some((ticket, step)) = gate.waiting.take() {
            gate.running = Some((ticket, Instant::now(), step));
            gate.steps += 1;
        }
        let n = buf.remaining().min(gate.end - gate.start);
        buf.put_slice(&gate.input[gate.start..gate.start + n]);
        gate.start += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(gate) = this.gate.as_deref_mut() {
            gate.step_over();
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(gate) = this.gate.as_deref_mut() {
            gate.step_over();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(gate) = this.gate.as_deref_mut() {
            gate.step_over();
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(gate) = this.gate.as_deref_mut() {
            gate.step_over();
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn source(last: u8) -> Source {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    fn granted(ticket: &Ticket) -> bool {
        ticket
            .poll_granted(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn later_steps_go_first_then_first_steps_by_source_in_turn() {
        let queue = Arc::new(HandshakeQueue::new(1, 1, Duration::from_secs(10)));
        let running = queue.enqueue(Step::First, source(1)).unwrap();
        assert!(granted(&running), "a free slot is granted at once");
        // Three first steps from host 1, one from host 2, then a later step.
        let a1 = queue.enqueue(Step::First, source(1)).unwrap();
        let a2 = queue.enqueue(Step::First, source(1)).unwrap();
        let b1 = queue.enqueue(Step::First, source(2)).unwrap();
        let later = queue.enqueue(Step::Later, source(1)).unwrap();
        assert_eq!(queue.counts(), (1, 1, 3, 2));
        let mut order = Vec::new();
        let mut current = running;
        let mut waiting = vec![("a1", a1), ("a2", a2), ("b1", b1), ("later", later)];
        while !waiting.is_empty() {
            drop(current);
            let next = waiting.iter().position(|(_, t)| granted(t)).unwrap();
            assert_eq!(
                waiting.iter().filter(|(_, t)| granted(t)).count(),
                1,
                "one slot"
            );
            let (name, ticket) = waiting.remove(next);
            order.push(name);
            current = ticket;
        }
        assert_eq!(order, ["later", "a1", "b1", "a2"]);
        drop(current);
        assert_eq!(queue.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn abandoned_steps_give_back_their_place_and_their_slot() {
        let queue = Arc::new(HandshakeQueue::new(1, 1, Duration::from_secs(10)));
        let running = queue.enqueue(Step::First, source(1)).unwrap();
        let gone = queue.enqueue(Step::First, source(2)).unwrap();
        let next = queue.enqueue(Step::First, source(3)).unwrap();
        drop(gone);
        assert_eq!(queue.counts(), (1, 0, 1, 1));
        drop(running);
        assert!(granted(&next), "the abandoned step is skipped");
        drop(next);
        assert_eq!(queue.counts(), (0, 0, 0, 0));
        assert!(granted(&queue.enqueue(Step::First, source(1)).unwrap()));
    }

    #[test]
    fn a_flooding_host_is_shed_and_other_hosts_are_not() {
        // 1 ms a step, one slot, 100 ms to spare (half of the timeout): about 50 handshakes.
        let queue = Arc::new(HandshakeQueue::new(1, 1, Duration::from_millis(200)));
        lock(&queue.state).cost = [1e6, 1e6];
        let _running = queue.enqueue(Step::First, source(1)).unwrap();
        let mut flood = Vec::new();
        while let Some(ticket) = queue.enqueue(Step::First, source(1)) {
            flood.push(ticket);
            assert!(flood.len() < 1000, "the flood is never shed");
        }
        assert!(
            (40..=60).contains(&flood.len()),
            "{} queued before shedding",
            flood.len()
        );
        // Another host waits behind one of the flood's steps, not all of them.
        let polite = queue.enqueue(Step::First, source(2));
        assert!(polite.is_some(), "a host with nothing queued is shed");
        // Later steps (handshakes under way) are never shed.
        assert!(queue.enqueue(Step::Later, source(1)).is_some());
        // Once the queue drains, the flooding host is served again.
        drop(flood);
        drop(polite);
        assert!(queue.enqueue(Step::First, source(1)).is_some());
    }

    /// A client that connects and says nothing, or sends its ClientHello and then nothing,
    /// holds no slot: the slot is held only from a read that returned data to the reader's
    /// next read or write.
    #[tokio::test]
    async fn a_stalled_handshake_holds_no_slot() {
        let queue = Arc::new(HandshakeQueue::new(1, 1, Duration::from_secs(10)));
        let (mut stalled_client, stalled_server) = tokio::io::duplex(64);
        let mut stalled = Gated::new(stalled_server, queue.clone(), source(1));
        let (mut polite_client, polite_server) = tokio::io::duplex(64);
        let mut polite = Gated::new(polite_server, queue.clone(), source(2));

        let mut buf = [0; 16];
        // Nothing sent: the read waits for the network, holding nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), stalled.read(&mut buf))
                .await
                .is_err()
        );
        assert_eq!(queue.counts(), (0, 0, 0, 0));
        // A ClientHello: its step runs (the slot held) until the next read or write ...
        stalled_client.write_all(b"hello").await.unwrap();
        assert_eq!(stalled.read(&mut buf).await.unwrap(), 5);
        assert_eq!(queue.counts().0, 1, "the step holds the slot");
        // ... while another handshake's step waits for it.
        polite_client.write_all(b"hello").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), polite.read(&mut buf))
                .await
                .is_err()
        );
        assert_eq!(queue.counts(), (1, 0, 1, 1));
        // The stalled handshake writes its answer and waits for the client: the slot is free,
        // and the handshake is between steps.
        stalled.write_all(b"server hello").await.unwrap();
        assert_eq!(queue.between(), 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), stalled.read(&mut buf))
                .await
                .is_err()
        );
        assert_eq!(polite.read(&mut buf).await.unwrap(), 5);
        polite.write_all(b"server hello").await.unwrap();
        // The polite client's second flight is a later step; after the handshake, reads go
        // straight through.
        polite_client.write_all(b"finished").await.unwrap();
        assert_eq!(polite.read(&mut buf[..3]).await.unwrap(), 3);
        assert_eq!(queue.between(), 1, "the polite one's later step runs");
        polite.handshake_done();
        assert_eq!(queue.counts(), (0, 0, 0, 0));
        assert_eq!(queue.between(), 1, "only the stalled one is between steps");
        assert_eq!(
            polite.read(&mut buf).await.unwrap(),
            5,
            "the bytes left over"
        );
        assert_eq!(&buf[..5], b"ished");
        polite_client.write_all(b"data").await.unwrap();
        assert_eq!(polite.read(&mut buf).await.unwrap(), 4);
        assert_eq!(queue.counts(), (0, 0, 0, 0));
        drop(stalled);
        assert_eq!(queue.counts(), (0, 0, 0, 0));
        assert_eq!(queue.between(), 0);
    }

    /// Handshakes past their ClientHello, waiting for their clients' next flight, will each
    /// take a later step before a new handshake's: counted ahead of a new ClientHello even
    /// when slots are free, as first steps are counted, by source.
    #[test]
    fn handshakes_between_steps_are_work_ahead_of_a_new_one() {
        // 1 ms a step, 2 CPUs, 100 ms to spare: 200 later steps ahead fill the budget.
        let queue = Arc::new(HandshakeQueue::new(16, 2, Duration::from_millis(200)));
        lock(&queue.state).cost = [1e6, 1e6];
        for _ in 0..150 {
            queue.set_between(source(1), true);
        }
        assert!(
            queue.enqueue(Step::First, source(1)).is_some(),
            "75 ms ahead: served"
        );
        for _ in 0..100 {
            queue.set_between(source(1), true);
        }
        assert_eq!(queue.counts().0, 0, "every slot free");
        assert!(
            queue.enqueue(Step::First, source(1)).is_none(),
            "125 ms ahead: shed"
        );
        // Another host counts one of the first host's handshakes per turn, not all of them.
        assert!(queue.enqueue(Step::First, source(2)).is_some());
        for _ in 0..100 {
            queue.set_between(source(1), false);
        }
        assert!(queue.enqueue(Step::First, source(1)).is_some());
        assert_eq!(queue.between(), 150);
    }
}
