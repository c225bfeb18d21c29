//! The timer that closes a connection sending no HTTP/2 preface or carrying no stream, and
//! the activity count ([`ConnectionActivity`], [`Busy`]) it reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Context;
use std::time::{Duration, Instant};

use std::future::Future;

use tokio::time::Sleep;
use tracing::debug;

use super::ListenerKind;
use crate::sds::SdsLimits;

/// The length of the HTTP/2 client preface (RFC 9113, 3.4), which a client sends first.
const PREFACE_LEN: usize = 24;

/// How many streams holding a slot one connection carries, and since when it carries none;
/// shared by the connection and its streams ([`PeerInfo`]).
#[derive(Debug)]
pub(crate) struct ConnectionActivity {
    streams: AtomicUsize,
    /// Milliseconds after `opened` when the last stream closed.
    idle_since: AtomicU64,
    opened: Instant,
}

impl ConnectionActivity {
    fn new() -> Self {
        Self {
            streams: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    /// Marks the connection busy (an authenticated stream or call) until the guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.streams.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn done(&self) {
        // Stored before the count drops, so whoever sees no stream also sees when the last
        // one closed (a value stored while others stay open is overwritten by the last).
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since.store(now, Ordering::Release);
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection became idle, if it is not busy now.
    fn idle_since(&self) -> Option<Instant> {
        (self.streams.load(Ordering::Acquire) == 0)
            .then(|| self.opened + Duration::from_millis(self.idle_since.load(Ordering::Acquire)))
    }
}

/// An authenticated stream or call in progress on a connection: the connection is not idle.
#[derive(Debug)]
pub(crate) struct Busy(Arc<ConnectionActivity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// Closes a connection (reading fails) that does not send the HTTP/2 client preface within
/// `preface_timeout` — hyper waits for one without a limit — or that carries no stream holding
/// a slot for `idle_timeout`: HTTP/2 keepalive only finds peers that stopped answering pings,
/// and a connection that answers them but never gets an authenticated stream would otherwise
/// hold one of `max_connections` forever.
///
/// One timer per connection. While streams are open it fires once per `idle_timeout` and is
/// re-armed (no per-stream or per-message timer work); once the last stream closes, the next
/// firing closes the connection if nothing was opened since.
pub(super) struct ConnectionTimer {
    kind: ListenerKind,
    /// Preface bytes not read yet; 0 once it is in.
    preface_left: usize,
    preface_timeout: Duration,
    idle_timeout: Duration,
    pub(super) activity: Arc<ConnectionActivity>,
    sleep: Pin<Box<Sleep>>,
}

impl ConnectionTimer {
    pub(super) fn new(limits: &SdsLimits, kind: ListenerKind) -> Self {
        Self {
            kind,
            preface_left: PREFACE_LEN,
            preface_timeout: limits.preface_timeout,
            idle_timeout: limits.connection_idle_timeout,
            activity: Arc::new(ConnectionActivity::new()),
            sleep: Box::pin(tokio::time::sleep(limits.preface_timeout)),
        }
    }

    /// `Err` when the connection is to be closed; otherwise the timer is armed with `cx`.
    pub(super) fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if self.preface_left > 0 {
                debug!(timeout = %meshca_provider::format_duration(self.preface_timeout), listener = self.kind.name, "connection sent no HTTP/2 preface in time; closing it");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no HTTP/2 client preface within {}.prefaceTimeout",
                        self.kind.config
                    ),
                ));
            }
            let now = Instant::now();
            let next = match self.activity.idle_since() {
                Some(since) if now.saturating_duration_since(since) >= self.idle_timeout => {
                    debug!(timeout = %meshca_provider::format_duration(self.idle_timeout), listener = self.kind.name, "connection idle without a call; closing it");
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no {} call on the connection within {}.connectionIdleTimeout",
                            self.kind.name, self.kind.config
                        ),
                    ));
                }
                Some(since) => since + self.idle_timeout,
                None => now + self.idle_timeout,
            };
            self.sleep.as_mut().reset(next.into());
        }
        Ok(())
    }

    pub(super) fn read(&mut self, bytes: usize) {
        if self.preface_left > 0 {
            self.preface_left = self.preface_left.saturating_sub(bytes);
            if self.preface_left == 0 {
                // Idle from now on until a stream opens.
                let since =
                    u64::try_from(self.activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.activity.idle_since.store(since, Ordering::Release);
                let deadline = Instant::now() + self.idle_timeout;
                self.sleep.as_mut().reset(deadline.into());
            }
        }
    }
}
