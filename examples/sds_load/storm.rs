//! `--restart-storm` (mTLS): N proxies hold their certificates over their own connections;
//! the server process is stopped with SIGTERM and started again on the same address and the
//! same CA store, and every proxy reconnects as Envoy's gRPC client does ([`Backoff`]),
//! keeping the certificate it holds meanwhile.
//!
//! Measured: the time from SIGTERM (and from the new server's `ready`) until every proxy holds
//! a certificate of the new server; the old server's drain (from its SIGTERM until its streams
//! and connections are closed, as it measures it) and its exit; the new server's CPU until then and its peak resident
//! memory (VmHWM); against the floor's time for N handshakes plus N issuances (the raw rustls
//! server and the cache alone, each timed on its own). Checked, after the clock stopped, from
//! every response each proxy received with its arrival time: every certificate verifies up to
//! the CA's root at its arrival, every proxy's post-restart certificate is a new one, and at
//! every check (every [`CHECK_EVERY`] from the moment all proxies first hold one) every proxy
//! holds a certificate whose NotAfter is later than the check. Counted: the handshakes the
//! proxies saw shed (the server's TLS alert), apart from other failures, and each server's own
//! counts of handshakes shed and timed out (`--handshake-timeout` shortens the servers'
//! `sds.handshakeTimeout` so that a storm sheds).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use meshca_provider::{CertificateInfo, TrustBundle};
use rand::Rng as _;
use rustls::ClientConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::http2::Event;
use crate::{Api, Args, Server, cpu_time, mtls};

/// How often the holder checks that every proxy holds a certificate.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Envoy's reconnection backoff for a gRPC stream (`JitteredExponentialBackOffStrategy`, as
/// its gRPC async client's streams use it: base 500 ms, cap 30 s): each wait is uniform in
/// [0, current), and current doubles from the base up to the cap after each wait; a stream
/// that got a response resets it.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn envoy() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            current: base,
        }
    }

    /// The next wait, given a uniform random fraction in [0, 1).
    fn next_with(&mut self, fraction: f64) -> Duration {
        let wait = self.current.mul_f64(fraction).min(self.cap);
        self.current = (self.current * 2).min(self.cap);
        wait
    }

    pub(crate) fn next(&mut self) -> Duration {
        self.next_with(rand::rng().random::<f64>())
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.base;
    }
}

/// One proxy for the whole run: connects (mTLS, HTTP/2, its SDS stream), and whenever the
/// connection ends or cannot be made, waits as Envoy would and connects again, until the
/// run drops the task.
async fn proxy(
    index: usize,
    address: String,
    client: Arc<ClientConfig>,
    request: Bytes,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut backoff = Backoff::envoy();
    loop {
        match mtls::connect(&address, client.clone(), Api::Sds.protocol()).await {
            Ok(mut connection) => {
                let answered = match connection.open(&address, vec![(index, request.clone())]) {
                    Ok(()) => connection.run(events.clone()).await,
                    Err(_) => 0,
                };
                if answered > 0 {
                    backoff.reset();
                }
            }
            Err(error) => {
                let _ = events.send(Event::Failed {
                    stream: index,
                    error: format!("{error:#}"),
                });
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// A response a proxy received: when, from which server (1 before the restart, 2 after), and
/// the `Secret`, decoded after the run.
struct Arrival {
    at: SystemTime,
    generation: u32,
    secret: Vec<u8>,
}

/// What the holder recorded.
#[derive(Default)]
struct Log {
    arrivals: Vec<Vec<Arrival>>,
    /// The checks made once every proxy held a certificate, and how many proxies held none
    /// at each.
    checks: Vec<(SystemTime, usize)>,
    /// Connections that ended or could not be made, by reason.
    failures: std::collections::BTreeMap<String, usize>,
}

/// Records every event; publishes how many proxies hold a certificate of the current
/// generation; checks every [`CHECK_EVERY`] that every proxy holds one once all did.
async fn hold(
    n: usize,
    mut received: mpsc::UnboundedReceiver<Event>,
    generation: Arc<AtomicU32>,
    progress: watch::Sender<(u32, usize)>,
    mut stop: watch::Receiver<bool>,
) -> Log {
    let mut log = Log {
        arrivals: (0..n).map(|_| Vec::new()).collect(),
        ..Log::default()
    };
    let mut latest = vec![0u32; n];
    let mut current = (1, 0);
    let mut holding = 0;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            event = received.recv() => match event {
                Some(Event::Response { stream, payload }) => {
                    let g = generation.load(Ordering::Relaxed);
                    if latest[stream] == 0 {
                        holding += 1;
                    }
                    if g != current.0 {
                        current = (g, 0);
                    }
                    if latest[stream] != g {
                        latest[stream] = g;
                        current.1 += 1;
                        let _ = progress.send(current);
                    }
                    log.arrivals[stream].push(Arrival { at: SystemTime::now(), generation: g, secret: payload });
                }
                Some(Event::Failed { error, .. }) => {
                    *log.failures.entry(failure_kind(&error)).or_default() += 1;
                }
                None => break,
            },
            _ = ticks.tick() => {
                if log.checks.is_empty() && holding < n {
                    continue;
                }
                log.checks.push((SystemTime::now(), n - holding));
            }
            _ = stop.changed() => break,
        }
    }
    log
}

/// The report's class of a handshake the server shed: its TLS alert (`internal_error`, as
/// rustls reports it to the client; see `SHED_ALERT` in `src/sds/transport/accept.rs`).
const SHED: &str = "TLS handshake shed (alert internal_error)";

/// A short class of a connection failure, for the report.
fn failure_kind(error: &str) -> String {
    for (needle, kind) in [
        ("received fatal alert: InternalError", SHED),
        ("Connection refused", "connection refused (no server)"),
        ("gRPC status 14", "stream ended UNAVAILABLE (drain)"),
        ("GOAWAY", "GOAWAY"),
        ("TLS handshake", "TLS handshake failed"),
        ("reset", "connection reset"),
        ("closed the connection", "closed by the server"),
        ("HTTP/2", "HTTP/2 failed"),
    ] {
        if error.contains(needle) {
            return kind.to_owned();
        }
    }
    error.chars().take(80).collect()
}

/// The run: floor, connect, SIGTERM, restart, all back; then the checks.
pub(crate) async fn restart_storm(
    args: &Args,
    clients: &[Arc<ClientConfig>],
    bundle: &TrustBundle,
) -> anyhow::Result<()> {
    let n = clients.len();

    // The floor: the cache alone issuing N, and N raw handshakes, each in its own process.
    let mut alone = Server::start(args, "--cache-only")?;
    let answer = alone.expect("issued").await?;
    let issue_alone = Duration::from_micros(answer[1].parse()?);
    alone.stop().await?;
    let floor = crate::floor(args, clients).await?;
    let floor_time = floor.wall + issue_alone;

    let mut server = Server::start(args, "--serve-only")?;
    let address = server.expect("ready").await?.remove(0);
    let generation = Arc::new(AtomicU32::new(1));
    let (progress_tx, mut progress) = watch::channel((1, 0));
    let (stop_tx, stop) = watch::channel(false);
    let (events, received) = mpsc::unbounded_channel();
    let holder = tokio::spawn(hold(n, received, generation.clone(), progress_tx, stop));
    let mut proxies = JoinSet::new();
    for (index, client) in clients.iter().enumerate() {
        proxies.spawn(proxy(
            index,
            address.clone(),
            client.clone(),
            crate::first_request(Api::Sds, index),
            events.clone(),
        ));
    }
    drop(events);
    let started = Instant::now();
    wait_for(&mut progress, (1, n), started, args.patience).await?;
    let connected = started.elapsed();
    let rss_connected = server.rss_kib()?;
    println!(
        "{n} proxies connected over mTLS and hold their certificates after {:.1} s; server RSS \
         {rss_connected} KiB",
        connected.as_secs_f64()
    );

    // The storm.
    let old_handshakes = handshake_counters(&mut server).await?;
    let overflows_before = listen_overflows();
    generation.store(2, Ordering::Relaxed);
    let terminated = Instant::now();
    server.terminate()?;
    let drained = Duration::from_micros(server.expect("drained").await?[0].parse()?);
    let status = server.wait().await?;
    ensure!(
        status.success(),
        "the server did not stop cleanly on SIGTERM: {status}"
    );
    let stopped = terminated.elapsed();
    let mut restarted = args.clone();
    restarted.listen = Some(address.trim_start_matches("unix:").to_owned());
    let mut server = Server::start(&restarted, "--serve-only")?;
    let ready_address = server.expect("ready").await?.remove(0);
    ensure!(
        ready_address == address,
        "the restarted server listens on {ready_address}, not {address}"
    );
    let ready = terminated.elapsed();
    wait_for(&mut progress, (2, n), terminated, args.patience).await?;
    let all_back = terminated.elapsed();
    let overflows = listen_overflows()
        .zip(overflows_before)
        .map(|(a, b)| a.saturating_sub(b));
    let cpu = cpu_time(server.pid)?;
    let peak_rss = crate::vm_kib(server.pid, "VmHWM:")?;
    let counters = server.ask("stats", "stats").await?.join(" ");
    let new_handshakes = handshake_counters(&mut server).await?;
    // The record ends here: the server's final drain is not part of the storm.
    let _ = stop_tx.send(true);
    let log = holder.await?;
    server.stop().await?;
    proxies.shutdown().await;

    // The checks, on what every proxy received.
    let checked = check(&log, bundle)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "restart storm, {n} proxies over mTLS: SIGTERM → old server drained {:.0} ms, gone {:.0} \
         ms → new server ready {:.0} ms → every proxy holds a new certificate {:.0} ms ({:.0} ms \
         after ready); \
         floor {:.0} ms ({n} raw handshakes {:.0} ms + the cache alone issuing {n} {:.0} ms): \
         all back in {:.2}× the floor",
        ms(drained),
        ms(stopped),
        ms(ready),
        ms(all_back),
        ms(all_back - ready),
        ms(floor_time),
        ms(floor.wall),
        ms(issue_alone),
        all_back.as_secs_f64() / floor_time.as_secs_f64(),
    );
    println!(
        "new server: CPU {:.0} ms from start to all back ({:.0} µs per proxy), peak RSS (VmHWM) \
         {peak_rss} KiB; counters: {counters}",
        ms(cpu),
        cpu.as_secs_f64() * 1e6 / n as f64,
    );
    println!(
        "checks: {} certificates received, every one verified up to the root at arrival; {} \
         checks every {} ms from the moment all held one: {} proxy-checks without a \
         certificate, {} with an expired one",
        checked.certificates,
        log.checks.len(),
        CHECK_EVERY.as_millis(),
        checked.without,
        checked.expired,
    );
    let failures: Vec<String> = log
        .failures
        .iter()
        .map(|(kind, count)| format!("{count} × {kind}"))
        .collect();
    println!(
        "TLS handshakes shed: {} answered with the shed alert at the proxies; the servers \
         counted {} shed and {} timed out before the restart, {} shed and {} timed out after",
        log.failures.get(SHED).copied().unwrap_or(0),
        old_handshakes.0,
        old_handshakes.1,
        new_handshakes.0,
        new_handshakes.1,
    );
    println!(
        "connections ended or refused: {}; the kernel's accept queues overflowed {} times \
         (TcpExt ListenOverflows, machine-wide: a SYN dropped, retried by the client 1 s, 3 s … \
         later)",
        failures.join("; "),
        overflows.map_or_else(|| "an unknown number of".to_owned(), |o| o.to_string()),
    );
    ensure!(
        checked.without == 0 && checked.expired == 0,
        "a proxy was without a valid certificate during the storm"
    );
    Ok(())
}

/// A server process's TLS handshakes shed and timed out so far.
async fn handshake_counters(server: &mut Server) -> anyhow::Result<(u64, u64)> {
    let answer = server.ask("handshakes", "handshakes").await?;
    let [shed, timed_out] = answer.as_slice() else {
        anyhow::bail!("a malformed handshakes answer: {answer:?}");
    };
    Ok((shed.parse()?, timed_out.parse()?))
}

/// The machine's count of connections dropped because a listener's accept queue was full
/// (`TcpExt: ListenOverflows` in /proc/net/netstat).
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Waits until `want.1` proxies hold a certificate of generation `want.0`.
async fn wait_for(
    progress: &mut watch::Receiver<(u32, usize)>,
    want: (u32, usize),
    started: Instant,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::from_std(started + patience);
    let waited = tokio::time::timeout_at(
        deadline,
        progress.wait_for(|p| p.0 == want.0 && p.1 >= want.1),
    )
    .await
    .map(|held| held.is_ok());
    match waited {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!("the holder stopped"),
        Err(_) => {
            let (generation, holding) = *progress.borrow();
            anyhow::bail!(
                "only {holding} of {} proxies hold a certificate of server {generation} within \
                 {patience:?}",
                want.1
            )
        }
    }
}

/// What [`check`] found.
struct Checked {
    certificates: usize,
    without: usize,
    expired: usize,
}

/// Verifies every certificate received at its arrival, that each proxy got a new one from the
/// restarted server, and counts, at each check, the proxies holding none or an expired one.
fn check(log: &Log, bundle: &TrustBundle) -> anyhow::Result<Checked> {
    let mut certificates = 0;
    let mut held: Vec<Vec<(SystemTime, SystemTime)>> = Vec::with_capacity(log.arrivals.len());
    for (proxy, arrivals) in log.arrivals.iter().enumerate() {
        let mut serials = [None, None];
        let mut timeline = Vec::with_capacity(arrivals.len());
        for arrival in arrivals {
            let chain =
                crate::secret_chain(&arrival.secret).with_context(|| format!("proxy {proxy}"))?;
            meshca_provider::verify::verify_chain(&chain, bundle, arrival.at)
                .with_context(|| format!("proxy {proxy}: a certificate that does not verify"))?;
            let info = CertificateInfo::parse(chain.leaf())?;
            serials[arrival.generation as usize - 1] = Some(info.serial_hex());
            timeline.push((arrival.at, info.not_after));
            certificates += 1;
        }
        ensure!(
            serials[1].is_some(),
            "proxy {proxy} got no certificate from the restarted server"
        );
        ensure!(
            serials[0] != serials[1],
            "proxy {proxy} was given its old certificate again"
        );
        held.push(timeline);
    }
    let (mut without, mut expired) = (0, 0);
    for (at, _) in &log.checks {
        for timeline in &held {
            match timeline.iter().rev().find(|(arrived, _)| arrived <= at) {
                None => without += 1,
                Some((_, not_after)) if not_after <= at => expired += 1,
                Some(_) => {}
            }
        }
    }
    Ok(Checked {
        certificates,
        without,
        expired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_a_doubling_ceiling_capped_at_thirty_seconds() {
        let mut backoff = Backoff::envoy();
        let ceilings: Vec<Duration> = (0..10)
            .map(|_| {
                // The largest fraction below 1 gives the ceiling of each wait.
                backoff.next_with(0.999_999)
            })
            .collect();
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [
                499, 999, 1999, 3999, 7999, 15_999, 29_999, 29_999, 29_999, 29_999
            ]
        );
        assert_eq!(backoff.next_with(0.0), Duration::ZERO, "uniform from zero");
        backoff.reset();
        assert_eq!(backoff.next_with(0.5), Duration::from_millis(250));
        // Random waits stay below their ceiling.
        let mut backoff = Backoff::envoy();
        for ceiling in [500, 1000, 2000] {
            assert!(backoff.next() < Duration::from_millis(ceiling));
        }
    }
}
