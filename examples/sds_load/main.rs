//! SDS load tool: N concurrent state-of-the-world streams, each a distinct identity (the way N
//! single-secret Envoys would connect), against meshca's own SDS server and certificate cache
//! with the Tresor CA, exactly as `meshca serve` builds them in development mode (loopback TCP,
//! a fresh CA in a temporary directory store).
//!
//! One run measures, each server in its own process (this binary re-executed with a hidden flag)
//! so that its memory is its own:
//! - (A) `--cache-only`: a fresh cache issues N certificates for distinct identities, all asked
//!   for at once (as N SDS streams would, through `subscribe`);
//! - (B) `--serve-only`: the time until all N streams hold their first certificate, served by
//!   a fresh cache of the same kind, issuance included; B/A is the figure;
//! - the push of N already issued certificates to every stream (`stage_reissue`, then timed
//!   from `publish_staged`), and a full forced re-issue with push (`renew_now`);
//! - the server's resident memory (VmRSS from /proc/<pid>/status) before and after the streams
//!   open, divided by N.
//!
//! Every stream ACKs each response as Envoy does and checks what it got, after the phase's
//! clock has stopped: the serials all streams hold are compared (by digest) with what the
//! server's cache published. The streams are driven by this tool's own HTTP/2 client
//! (`http2.rs`): it shares the two cores with the server it measures.
//!
//! With `--api workload` the same phases measure the SPIFFE Workload API instead: N concurrent
//! `FetchX509SVID` streams on its Unix socket (16 per connection, the server's HTTP/2 limit, so
//! `--connections` must be at least N/16), each attested as a distinct identity by the
//! benchmark's attestor (`CountingAttestor`: the real Unix attestor's work per call, /proc
//! reads included, then `unix:uid:<n>` from a counter, matching entry n of N), the server's
//! `maxStreams` and `maxStreamsPerCaller` raised to N. Each stream checks after the phase that
//! it holds one SVID, of an identity no other stream holds, whose serial the cache published.
//!
//! `cargo build --release --example sds_load && target/release/examples/sds_load --streams 10000`
//! (`--api workload --connections 625` for the Workload API)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{Node, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use meshca::cache::{CertKey, CertificateCache, Purpose};
use meshca::cli::serve::{cache_settings, sds_settings};
use meshca::config::{Config, SdsAuth};
use meshca::sds::convert::SECRET_TYPE_URL;
use meshca::sds::{SdsServer, SecretSource};
use meshca::time::TokioClock;
use meshca::workload_api::proto::{X509svidRequest, X509svidResponse};
use meshca::workload_api::{
    AttestError, Attestor, PeerCredentials, RegistrationEntry, Selector, UnixAttestor,
    WorkloadApiLimits, WorkloadApiServer, WorkloadApiSettings,
};
use meshca_provider::x509::sha256;
use meshca_provider::{
    CertificateChain, CertificateInfo, CertificateSummary, Clock, SpiffeId, TrustDomain,
};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use http2::Event;

mod http2;
mod mtls;
mod storm;

#[derive(Debug, Clone, Parser)]
struct Args {
    /// The API the streams call: `sds` (`StreamSecrets`, as Envoy) or `workload` (the SPIFFE
    /// Workload API's `FetchX509SVID`, always on a Unix socket).
    #[arg(long, value_enum, default_value_t = Api::Sds)]
    api: Api,
    /// Concurrent streams, one identity each.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Rounds of (A) then (B) (after one uncounted warm-up of (A)); B/A is reported per round
    /// and as the median, since (A) alone moves by ±20% between runs on a shared machine.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How the streams reach the server: `tcp` (loopback) or `unix` (a Unix socket, as proxies
    /// on the same node reach a node-local agent).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// Threads of the clients' runtime (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// How long one phase may take before the run fails.
    #[arg(long, default_value = "120s", value_parser = meshca_provider::parse_duration)]
    patience: Duration,
    /// Internal: run the SDS server for the load (driven over stdin/stdout).
    #[arg(long, hide = true)]
    serve_only: bool,
    /// mTLS, as the default `meshca serve` requires: each stream is a proxy with its own
    /// bootstrap client certificate and its own connection (`--connections` is N), over
    /// loopback TCP; the run adds the floor's handshakes (`mtls.rs`) and reports the server's
    /// CPU per proxy against it.
    #[arg(long)]
    tls: bool,
    /// With `--tls`: instead of the rounds, the restart storm (`storm.rs`): N proxies
    /// connected, the server stopped with SIGTERM and started again on the same store, every
    /// proxy reconnecting with Envoy's backoff.
    #[arg(long, requires = "tls")]
    restart_storm: bool,
    /// With `--tls`: the server processes' `sds.handshakeTimeout` (default 10s). A ClientHello
    /// that would wait past half of it is shed (answered with a TLS alert, then closed): a
    /// short one makes a restart storm shed on a machine too fast to shed at the default. The
    /// storm's proxies retry a shed handshake after their backoff; in the rounds (no retries)
    /// one shed handshake ends the run.
    #[arg(long, requires = "tls", value_parser = meshca_provider::parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Internal: time a fresh cache issuing `--streams` certificates.
    #[arg(long, hide = true)]
    cache_only: bool,
    /// Internal: run the raw rustls server of the mTLS floor (driven over stdin/stdout).
    #[arg(long, hide = true)]
    handshake_only: bool,
    /// Internal: the directory of the run's CA store (`--tls`: the bootstrap certificates'
    /// CA, shared by every server process of the run).
    #[arg(long, hide = true)]
    dir: Option<std::path::PathBuf>,
    /// Internal: the server's TCP address (the restarted server takes its predecessor's).
    #[arg(long, hide = true)]
    listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Api {
    Sds,
    Workload,
}

impl Api {
    fn protocol(self) -> Arc<dyn http2::Protocol> {
        match self {
            Self::Sds => Arc::new(http2::Sds),
            Self::Workload => Arc::new(http2::WorkloadApi),
        }
    }
}

/// The Workload API's HTTP/2 streams per connection (its `MAX_STREAMS_PER_CONNECTION`).
const WORKLOAD_STREAMS_PER_CONNECTION: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Tcp,
    Unix,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.api == Api::Workload {
        args.transport = Transport::Unix;
        // The server processes are not told the connections.
        ensure!(
            args.serve_only
                || args.cache_only
                || args.connections * WORKLOAD_STREAMS_PER_CONNECTION >= args.streams,
            "the Workload API allows {WORKLOAD_STREAMS_PER_CONNECTION} streams per connection: \
             {} streams need --connections {} at least",
            args.streams,
            args.streams.div_ceil(WORKLOAD_STREAMS_PER_CONNECTION)
        );
    }
    ensure!(
        args.streams > 0 && args.connections > 0 && args.client_threads > 0 && args.rounds > 0,
        "--streams, --connections, --client-threads and --rounds must be at least 1"
    );
    if args.tls {
        ensure!(
            args.api == Api::Sds && args.transport == Transport::Tcp,
            "--tls is SDS over TCP (--api sds --transport tcp)"
        );
        args.connections = args.streams;
    }
    let internal = args.serve_only || args.cache_only || args.handshake_only;
    if args.tls && !internal {
        // N sockets in this process and N in the server's, plus the runtime's own.
        let limit = mtls::raise_open_files(args.streams as u64 + 256)?;
        println!("open-files limit: {limit}");
    }
    if internal {
        // The runtime `meshca serve` uses: multi-threaded, one worker per CPU.
        let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
        return runtime.block_on(async {
            if args.serve_only {
                serve(&args).await
            } else if args.handshake_only {
                let dir = args
                    .dir
                    .as_deref()
                    .context("--handshake-only needs --dir")?;
                mtls::handshake_floor(&load_config(&args, dir)).await
            } else {
                cache_only(&args).await
            }
        });
    }
    let runtime = if args.client_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    }
    .context("cannot start the tokio runtime")?;
    runtime.block_on(drive(&args))
}

/// `meshca serve`'s configuration for the load: development mode on loopback TCP or a Unix
/// socket, Tresor with a directory store in `dir`, room for every stream.
fn daemon_config(streams: usize, transport: Transport, dir: &Path) -> Config {
    let mut config = Config::default();
    config.tresor.directory = dir.join("ca");
    match transport {
        Transport::Tcp => config.sds.listen = "127.0.0.1:0".to_owned(),
        Transport::Unix => {
            config.sds.listen = String::new();
            config.sds.unix_socket = dir.join("sds.sock").display().to_string();
        }
    }
    config.sds.auth = SdsAuth::Development;
    config.sds.max_streams = config.sds.max_streams.max(streams + 16);
    config
}

/// The run's configuration: [`daemon_config`], with mTLS under `--tls`.
fn load_config(args: &Args, dir: &Path) -> Config {
    let mut config = daemon_config(args.streams, args.transport, dir);
    if args.tls {
        config = mtls::mtls_config(config);
    }
    if let Some(listen) = &args.listen {
        config.sds.listen.clone_from(listen);
    }
    if let Some(timeout) = args.handshake_timeout {
        config.sds.transport.handshake_timeout = timeout;
    }
    config
}

/// The run's store directory: `--dir` when given (the CA the bootstrap certificates come
/// from), else a fresh one for this process.
fn store_dir(args: &Args) -> anyhow::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    if let Some(dir) = &args.dir {
        return Ok((dir.clone(), None));
    }
    let dir = tempfile::tempdir()?;
    Ok((dir.path().to_owned(), Some(dir)))
}

/// The daemon's cache over a freshly bootstrapped Tresor CA.
async fn daemon_cache(config: &Config) -> anyhow::Result<CertificateCache> {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let provider = meshca::providers::build(config, clock.clone()).await?;
    let cache = CertificateCache::new(provider, cache_settings(config), clock);
    cache.refresh_trust_bundle().await?;
    Ok(cache)
}

fn short_name(stream: usize) -> String {
    format!("load/sa-{stream}")
}

/// (A): N distinct identities asked for at once, each holding its receiver as a stream would.
async fn cache_only(args: &Args) -> anyhow::Result<()> {
    let (dir, _keep) = store_dir(args)?;
    let config = load_config(args, &dir);
    let cache = daemon_cache(&config).await?;
    let rss_before = vm_rss_kib(std::process::id())?;
    let cpu_before = cpu_time(std::process::id())?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for stream in 0..args.streams {
        let cache = cache.clone();
        tasks.spawn(async move {
            let identity = SpiffeId::from_short(&short_name(stream), &TrustDomain::default())?;
            anyhow::Ok(
                cache
                    .subscribe(CertKey::new(identity, Purpose::Default))
                    .await?,
            )
        });
    }
    let mut receivers = Vec::with_capacity(args.streams);
    while let Some(joined) = tasks.join_next().await {
        receivers.push(joined??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time(std::process::id())? - cpu_before;
    let rss_after = vm_rss_kib(std::process::id())?;
    println!(
        "issued {} {} {rss_before} {rss_after} {}",
        receivers.len(),
        elapsed.as_micros(),
        cpu.as_micros()
    );
    Ok(())
}

/// The benchmark's attestor: distinct identities per stream cannot come from one client
/// process's uid, gid and executable, so after the Unix attestor's own work (the same /proc
/// reads per call as in production) the uid it read is replaced by the next number of a
/// counter: call n is `unix:uid:<n>`, which entry n matches.
struct CountingAttestor {
    unix: UnixAttestor,
    next: AtomicU32,
}

#[async_trait::async_trait]
impl Attestor for CountingAttestor {
    async fn attest(&self, peer: PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        let mut selectors = self.unix.attest(peer).await?;
        let uid = self.next.fetch_add(1, Ordering::Relaxed);
        for selector in &mut selectors {
            if let Selector::Uid(_) = selector {
                *selector = Selector::Uid(uid);
            }
        }
        Ok(selectors)
    }
}

/// The Workload API for the load: entry n gives identity n to `unix:uid:<n>`, n < `streams`;
/// the stream limits (all streams come from one uid) raised to `streams`.
fn workload_api(
    streams: usize,
    dir: &Path,
    source: Arc<dyn SecretSource>,
) -> anyhow::Result<WorkloadApiServer> {
    let domain = TrustDomain::default();
    let entries: Vec<RegistrationEntry> = (0..streams)
        .map(|n| {
            Ok(RegistrationEntry {
                spiffe_id: SpiffeId::from_short(&short_name(n), &domain)?,
                selectors: vec![Selector::Uid(u32::try_from(n)?)],
                hint: String::new(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let unix = UnixAttestor::for_entries(&entries);
    let defaults = WorkloadApiLimits::default();
    let settings = WorkloadApiSettings {
        socket_path: dir.join("workload.sock"),
        socket_mode: 0o600,
        socket_group: None,
        trust_domain: domain,
        entries,
        limits: WorkloadApiLimits {
            max_streams: streams.max(defaults.max_streams),
            max_streams_per_caller: streams.max(defaults.max_streams_per_caller),
            max_connections: streams.max(defaults.max_connections),
            ..defaults
        },
    };
    Ok(
        WorkloadApiServer::new(settings, source)?.with_attestor(Arc::new(CountingAttestor {
            unix,
            next: AtomicU32::new(0),
        })),
    )
}

/// The server process: `meshca serve` in development mode (or the Workload API over the same
/// cache), answering the driver's commands.
async fn serve(args: &Args) -> anyhow::Result<()> {
    let (dir, _keep) = store_dir(args)?;
    let config = load_config(args, &dir);
    let cache = daemon_cache(&config).await?;
    let source: Arc<dyn SecretSource> = Arc::new(cache.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // SIGTERM drains the server as it drains `meshca serve` (the restart storm sends it).
    let terminated = meshca::cli::serve::shutdown_signal()?;
    // When SIGTERM came, for the `drained` line.
    let signalled = Arc::new(std::sync::OnceLock::new());
    let stopped = {
        let signalled = signalled.clone();
        async move {
            tokio::select! {
                _ = stopped => {}
                () = terminated => {
                    let _ = signalled.set(Instant::now());
                }
            }
        }
    };
    // The SDS server's TLS handshake counters, for `handshakes`.
    let mut handshakes = None;
    let (address, mut server, stats): (_, tokio::task::JoinHandle<anyhow::Result<()>>, _) =
        match args.api {
            Api::Sds => {
                let sds = SdsServer::new(sds_settings(&config).await?)?.bind().await?;
                let address = match args.transport {
                    Transport::Tcp => sds.tcp_address().context("no TCP address")?.to_string(),
                    Transport::Unix => format!(
                        "unix:{}",
                        sds.unix_path().context("no Unix socket")?.display()
                    ),
                };
                let stats = sds.stats();
                handshakes = Some(stats.clone());
                let server = tokio::spawn(async move { Ok(sds.serve(source, stopped).await?) });
                let counters: Box<dyn Fn() -> String + Send> = Box::new(move || {
                    let sds = stats.snapshot();
                    format!(
                        "{} responses, {} pushes, {} ACKs, {} NACKs, {} unauthenticated or \
                         failed handshakes ({} timed out), {} handshakes shed",
                        sds.responses,
                        sds.pushes,
                        sds.acks,
                        sds.nacks,
                        sds.unauthenticated,
                        sds.handshakes_timed_out,
                        sds.handshakes_shed
                    )
                });
                (address, server, counters)
            }
            Api::Workload => {
                let api = workload_api(args.streams, &dir, source)?;
                let metrics = api.metrics();
                let running = api.bind().await?.start(stopped);
                let address = format!("unix:{}", dir.join("workload.sock").display());
                let server = tokio::spawn(async move { Ok(running.stopped().await?) });
                let counters: Box<dyn Fn() -> String + Send> = Box::new(move || {
                    let api = metrics.snapshot();
                    format!(
                        "{} streams opened, {} SVID messages, {} refused (no entry), {} refused \
                         (limits)",
                        api.streams_total,
                        api.svid_messages,
                        api.refused_no_entry,
                        api.refused_exhausted
                    )
                });
                (address, server, counters)
            }
        };
    println!("ready {address}");

    // With mTLS the cache holds the SDS endpoint's own certificate too.
    let server_identity =
        SpiffeId::from_short(&config.sds.server_identity, &config.trust_domain())?;
    let is_proxy = |key: &CertKey| !(args.tls && key.identity == server_identity);
    let mut staged = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            // Drained after SIGTERM.
            ended = &mut server => {
                // The drain is over; what is left is the process's teardown and exit.
                if let Some(signalled) = signalled.get() {
                    println!("drained {}", signalled.elapsed().as_micros());
                }
                return ended?;
            }
        };
        let Some(line) = line else { break };
        match line.trim() {
            "digest" => {
                let certificates = cache.certificates();
                println!(
                    "digest {}",
                    digest(
                        certificates
                            .iter()
                            .filter(|(k, _)| is_proxy(k))
                            .map(|(k, c)| (&k.identity, &c.info))
                    )
                );
            }
            "stage" => {
                let started = Instant::now();
                let certificates = cache.stage_reissue(None).await?;
                let elapsed = started.elapsed();
                let proxies: Vec<_> = certificates
                    .certificates()
                    .filter(|(k, _)| is_proxy(k))
                    .collect();
                println!(
                    "staged {} {} {}",
                    proxies.len(),
                    elapsed.as_micros(),
                    digest(proxies.iter().map(|(k, c)| (&k.identity, &c.info)))
                );
                staged = Some(certificates);
            }
            "publish" => {
                let certificates = staged.take().context("publish before stage")?;
                println!("published {}", cache.publish_staged(certificates));
            }
            "reissue" => {
                cache.renew_now(None);
                println!("ok");
            }
            "stats" => {
                let cache = cache.stats();
                println!(
                    "stats {}; cache: {} issued, {} renewed",
                    stats(),
                    cache.issued,
                    cache.renewed
                );
            }
            "handshakes" => {
                let sds = handshakes
                    .as_ref()
                    .map(|s| s.snapshot())
                    .unwrap_or_default();
                println!(
                    "handshakes {} {}",
                    sds.handshakes_shed, sds.handshakes_timed_out
                );
            }
            "quit" => break,
            other => bail!("unknown command {other:?}"),
        }
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// A digest of (identity, serial) pairs, independent of their order.
fn digest<'a>(pairs: impl Iterator<Item = (&'a SpiffeId, &'a CertificateSummary)>) -> String {
    digest_of(pairs.map(|(identity, info)| (identity.to_string(), info.serial_hex())))
}

fn digest_of(pairs: impl Iterator<Item = (String, String)>) -> String {
    let mut lines: Vec<String> = pairs
        .map(|(id, serial)| format!("{id} {serial}\n"))
        .collect();
    lines.sort();
    let digest = sha256(lines.concat().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A child process of this binary, driven line by line.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl Server {
    fn start(args: &Args, flag: &str) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg(flag)
            .arg("--api")
            .arg(match args.api {
                Api::Sds => "sds",
                Api::Workload => "workload",
            })
            .arg("--streams")
            .arg(args.streams.to_string())
            .arg("--transport")
            .arg(match args.transport {
                Transport::Tcp => "tcp",
                Transport::Unix => "unix",
            })
            .args(args.tls.then_some("--tls"))
            .args(args.listen.iter().flat_map(|a| ["--listen", a.as_str()]))
            .args(args.handshake_timeout.iter().flat_map(|timeout| {
                [
                    "--handshake-timeout".to_owned(),
                    meshca_provider::format_duration(*timeout),
                ]
            }))
            .args(
                args.dir
                    .iter()
                    .flat_map(|dir| [std::ffi::OsStr::new("--dir"), dir.as_os_str()]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server process")?;
        let pid = child.id().context("the server process exited at once")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
        })
    }

    async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("the server process is gone")
    }

    /// The next line, which must start with `word`; returns the rest, split on spaces.
    async fn expect(&mut self, word: &str) -> anyhow::Result<Vec<String>> {
        let line = self
            .stdout
            .next_line()
            .await?
            .with_context(|| format!("the server process ended instead of answering {word}"))?;
        let mut parts = line.split_whitespace().map(str::to_owned);
        ensure!(
            parts.next().as_deref() == Some(word),
            "expected {word} from the server process, got {line:?}"
        );
        Ok(parts.collect())
    }

    async fn ask(&mut self, command: &str, word: &str) -> anyhow::Result<Vec<String>> {
        self.send(command).await?;
        self.expect(word).await
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        vm_rss_kib(self.pid)
    }

    /// Sends the process SIGTERM, as a rollout or `systemctl stop` does.
    fn terminate(&self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid)?)
            .context("the server process has no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("cannot send SIGTERM to the server process")
    }

    /// Waits for the process to exit by itself.
    async fn wait(mut self) -> anyhow::Result<std::process::ExitStatus> {
        drop(self.stdin);
        Ok(self.child.wait().await?)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.send("quit").await;
        drop(self.stdin);
        let status = self.child.wait().await?;
        ensure!(status.success(), "the server process failed: {status}");
        Ok(())
    }
}

/// Per-stream progress: how many responses each stream has had, the identity it was given and
/// the serial it holds.
struct Progress {
    api: Api,
    identities: Vec<String>,
    serials: Vec<String>,
    responses: Vec<u32>,
    received: mpsc::UnboundedReceiver<Event>,
    patience: Duration,
}

/// What every stream received in one phase, not yet checked.
struct Arrived {
    /// Each stream's time to its response, in arrival order.
    latencies: Vec<Duration>,
    /// Each stream's `Secret` (SDS) or `X509SVIDResponse` (Workload API), by stream.
    secrets: Vec<Vec<u8>>,
}

impl Progress {
    fn new(
        api: Api,
        n: usize,
        received: mpsc::UnboundedReceiver<Event>,
        patience: Duration,
    ) -> Self {
        let domain = TrustDomain::default();
        let identities = match api {
            // SDS: stream i asks for identity i.
            Api::Sds => (0..n)
                .map(|i| {
                    SpiffeId::from_short(&short_name(i), &domain)
                        .unwrap()
                        .to_string()
                })
                .collect(),
            // The Workload API: the attestor decides; the first response says.
            Api::Workload => vec![String::new(); n],
        };
        Self {
            api,
            identities,
            serials: vec![String::new(); n],
            responses: vec![0; n],
            received,
            patience,
        }
    }

    /// Waits until every stream has had `round` responses. Returns as the last one arrives,
    /// so that the caller can stop the clock before the responses are checked.
    async fn wait_round(&mut self, round: u32, started: Instant) -> anyhow::Result<Arrived> {
        let n = self.serials.len();
        let mut latencies = Vec::with_capacity(n);
        let mut secrets = vec![Vec::new(); n];
        let deadline = started + self.patience;
        while latencies.len() < n {
            let event = tokio::time::timeout_at(
                tokio::time::Instant::from_std(deadline),
                self.received.recv(),
            )
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {n} streams got response {round} within {:?}",
                    latencies.len(),
                    self.patience
                )
            })?
            .context("every connection task ended")?;
            match event {
                Event::Response {
                    stream,
                    payload: secret,
                } => {
                    self.responses[stream] += 1;
                    ensure!(
                        self.responses[stream] == round,
                        "stream {stream} got response {} while waiting for response {round}",
                        self.responses[stream]
                    );
                    secrets[stream] = secret;
                    latencies.push(started.elapsed());
                }
                Event::Failed { stream, error } => bail!("stream {stream} failed: {error}"),
            }
        }
        Ok(Arrived { latencies, secrets })
    }

    /// Reads the leaf serial out of every stream's new secret, which must differ from the
    /// serial it held before. Done after the clock stopped: parsing 10,000 PEM chains is the
    /// client's work, and took about 90 ms of a phase's wall time when it was inside it.
    fn check(&mut self, secrets: Vec<Vec<u8>>) -> anyhow::Result<()> {
        for (stream, secret) in secrets.into_iter().enumerate() {
            let serial = match self.api {
                Api::Sds => leaf_serial(&secret),
                Api::Workload => svid_serial(&secret, &mut self.identities[stream]),
            }
            .with_context(|| format!("stream {stream}"))?;
            ensure!(
                serial != self.serials[stream],
                "stream {stream} was pushed the serial it already held"
            );
            self.serials[stream] = serial;
        }
        Ok(())
    }

    /// A digest of every stream's (identity, serial): equal to the cache's, it says that the
    /// streams hold N distinct identities, each with the certificate the cache published.
    fn digest(&self) -> String {
        digest_of(
            self.identities
                .iter()
                .cloned()
                .zip(self.serials.iter().cloned()),
        )
    }
}

async fn drive(args: &Args) -> anyhow::Result<()> {
    let mut args = args.clone();
    let args = &mut args;
    // --tls: the proxies' bootstrap certificates come from a CA store every server process of
    // the run then serves from, issued before anything is timed.
    let mut _store = None;
    let mut clients = Vec::new();
    if args.tls {
        let store = tempfile::tempdir()?;
        args.dir = Some(store.path().to_owned());
        let started = Instant::now();
        let bundle;
        (clients, bundle) =
            mtls::bootstrap_clients(&load_config(args, store.path()), args.streams).await?;
        println!(
            "issued {} bootstrap client certificates in {:.1} s (not timed)",
            clients.len(),
            started.elapsed().as_secs_f64()
        );
        _store = Some(store);
        if args.restart_storm {
            println!("load average at the start: {}", load_average());
            storm::restart_storm(args, &clients, &bundle).await?;
            println!("load average at the end: {}", load_average());
            return Ok(());
        }
    }
    let args = &*args;
    println!("load average at the start: {}", load_average());
    // A warm-up (A), not counted: the first process of a run pays for loading this binary and
    // for cold caches, and that fell on the first (A) alone.
    let mut warm_up = Server::start(args, "--cache-only")?;
    warm_up.expect("issued").await?;
    warm_up.stop().await?;

    println!(
        "| round | transport | streams | connections | (A) cache alone issues N | (B) first cert on all streams | B/A | per stream p50 / p99 | push of issued certs to all | re-issue + push to all | server RSS per stream |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rounds = Vec::with_capacity(args.rounds);
    for index in 1..=args.rounds {
        rounds.push(round(args, index, &clients).await?);
    }
    println!();
    for round in &rounds {
        println!("{}", round.detail);
    }
    let mut ratios: Vec<f64> = rounds.iter().map(|r| r.ratio).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "\nB/A over {} rounds: median {:.2}, lowest {:.2}, highest {:.2}",
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    // Medians of each CPU figure apart: (B)'s wall time is the two processes' CPU over the
    // cores, so these say which side's work moved B/A.
    let median_ms = |cpu: fn(&RoundResult) -> Duration| {
        let mut values: Vec<Duration> = rounds.iter().map(cpu).collect();
        values.sort();
        values[values.len() / 2].as_secs_f64() * 1e3
    };
    let alone = median_ms(|r| r.alone_cpu);
    let server = median_ms(|r| r.server_cpu);
    let client = median_ms(|r| r.client_cpu);
    println!(
        "CPU medians: (A) {alone:.0} ms; (B) server {server:.0} ms, clients {client:.0} ms; \
         server (B) / (A) {:.2}; (server + clients) / (A) {:.2}",
        server / alone,
        (server + client) / alone
    );
    if args.tls {
        let median = |figure: fn(&TlsFigures) -> f64| {
            let mut values: Vec<f64> = rounds
                .iter()
                .filter_map(|r| r.tls.as_ref())
                .map(figure)
                .collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        println!(
            "mTLS medians: server CPU per proxy {:.0} µs against a floor of {:.0} µs \
             (handshake {:.0} + issuance {:.0}): ratio {:.2}; the raw handshakes are {:.0}% of \
             the server's CPU; server memory per TLS connection {:.1} KiB (raw rustls {:.1} KiB)",
            median(|t| t.server_us),
            median(|t| t.handshake_us + t.issuance_us),
            median(|t| t.handshake_us),
            median(|t| t.issuance_us),
            median(|t| t.ratio),
            median(|t| 100.0 * t.handshake_us / t.server_us),
            median(|t| t.rss_per_connection),
            median(|t| t.floor_rss_per_connection),
        );
    }
    println!("load average at the end: {}", load_average());
    Ok(())
}

/// What one round reports beyond its table row.
struct RoundResult {
    /// B/A, wall time.
    ratio: f64,
    /// CPU time of (A), and of the server and the clients in (B).
    alone_cpu: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
    /// The round's CPU and memory lines.
    detail: String,
    /// `--tls`: the server's figures per proxy against the floor's.
    tls: Option<TlsFigures>,
}

/// An mTLS round's figures per proxy: CPU in µs, memory in KiB.
struct TlsFigures {
    /// The server's CPU for handshake + stream + first certificate.
    server_us: f64,
    /// The raw rustls server's CPU for the same handshake.
    handshake_us: f64,
    /// The cache's CPU alone issuing the certificate (A).
    issuance_us: f64,
    /// `server_us / (handshake_us + issuance_us)`.
    ratio: f64,
    /// The server's resident memory per open connection (stream and certificate included).
    rss_per_connection: f64,
    /// The raw rustls server's resident memory per open connection.
    floor_rss_per_connection: f64,
}

/// The mTLS floor's handshakes, measured on the raw rustls server process.
struct Floor {
    cpu: Duration,
    wall: Duration,
    rss_per_connection: f64,
}

/// Every proxy's handshake with the raw rustls server, all started at once as in (B); the
/// connections stay open until all are done, so that the server's memory per connection can
/// be read.
async fn floor(args: &Args, clients: &[Arc<rustls::ClientConfig>]) -> anyhow::Result<Floor> {
    let mut server = Server::start(args, "--handshake-only")?;
    let address = server.expect("ready").await?.remove(0);
    let rss_before = server.rss_kib()?;
    let cpu_before = cpu_time(server.pid)?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for client in clients {
        let (address, client) = (address.clone(), client.clone());
        tasks.spawn(async move { mtls::floor_handshake(&address, client).await });
    }
    let mut open = Vec::with_capacity(clients.len());
    let deadline = tokio::time::Instant::now() + args.patience;
    while let Some(joined) = tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "floor: {} of {} handshakes within {:?}",
                open.len(),
                clients.len(),
                args.patience
            )
        })?
    {
        open.push(joined??);
    }
    let wall = started.elapsed();
    let cpu = cpu_time(server.pid)? - cpu_before;
    let rss_after = server.rss_kib()?;
    drop(open);
    server.stop().await?;
    Ok(Floor {
        cpu,
        wall,
        rss_per_connection: rss_after.saturating_sub(rss_before) as f64 / clients.len() as f64,
    })
}

/// One round: (A) in a fresh process, then (B), the push and the re-issue against a fresh
/// server process. Prints the round's row; returns B/A and the round's CPU and memory details.
async fn round(
    args: &Args,
    index: usize,
    clients: &[Arc<rustls::ClientConfig>],
) -> anyhow::Result<RoundResult> {
    let n = args.streams;

    // (A) the cache alone.
    let mut alone = Server::start(args, "--cache-only")?;
    let answer = alone.expect("issued").await?;
    let issue_alone = Duration::from_micros(answer[1].parse()?);
    let issue_alone_cpu = Duration::from_micros(answer[4].parse()?);
    let cache_rss: Vec<u64> = answer[2..4]
        .iter()
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    alone.stop().await?;

    // --tls: the raw handshakes of the floor.
    let floor = if args.tls {
        Some(floor(args, clients).await?)
    } else {
        None
    };

    // (B) the SDS server in its own process. With --tls each proxy connects inside the timed
    // phase (handshake included); otherwise the connections are made beforehand.
    let mut server = Server::start(args, "--serve-only")?;
    let address = server.expect("ready").await?.remove(0);
    let mut connections = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        if args.tls {
            break;
        }
        connections.push(connect(&address, args.api.protocol()).await?);
    }
    // Every stream's request is made and framed before the clock starts: a proxy arrives with
    // its own. Stream i goes on connection i mod C.
    let authority = if address.starts_with("unix:") {
        "localhost"
    } else {
        address.as_str()
    };
    let mut calls = vec![Vec::new(); connections.len().max(1)];
    let mut requests = Vec::new();
    for stream in 0..n {
        if args.tls {
            requests.push(first_request(args.api, stream));
        } else {
            calls[stream % connections.len()].push((stream, first_request(args.api, stream)));
        }
    }
    for (connection, calls) in connections.iter_mut().zip(calls) {
        connection.open(authority, calls)?;
    }
    let rss_before = server.rss_kib()?;
    let server_cpu = cpu_time(server.pid)?;
    let client_cpu = cpu_time(std::process::id())?;

    let (events, received) = mpsc::unbounded_channel();
    let mut progress = Progress::new(args.api, n, received, args.patience);
    let opened = Instant::now();
    for connection in connections {
        tokio::spawn(connection.run(events.clone()));
    }
    for ((stream, request), client) in requests.into_iter().enumerate().zip(clients) {
        let (events, client, address) = (events.clone(), client.clone(), address.clone());
        let protocol = args.api.protocol();
        tokio::spawn(async move {
            let connected = mtls::connect(&address, client, protocol).await;
            let opened = connected.and_then(|mut connection| {
                connection.open(&address, vec![(stream, request)])?;
                Ok(connection)
            });
            match opened {
                Ok(connection) => {
                    connection.run(events).await;
                }
                Err(error) => {
                    let _ = events.send(Event::Failed {
                        stream,
                        error: format!("{error:#}"),
                    });
                }
            }
        });
    }
    drop(events);
    let arrived = match progress.wait_round(1, opened).await {
        Ok(arrived) => arrived,
        // With mTLS a server that gave up on a handshake (sds.handshakeTimeout) shows on the
        // client only as a closed connection: its counters say how many.
        Err(error) if args.tls => {
            let counters = server.ask("stats", "stats").await?.join(" ");
            return Err(error.context(format!("server counters: {counters}")));
        }
        Err(error) => return Err(error),
    };
    let all_first = opened.elapsed();
    let first_server_cpu = cpu_time(server.pid)? - server_cpu;
    let first_client_cpu = cpu_time(std::process::id())? - client_cpu;
    let rss_after = server.rss_kib()?;
    progress.check(arrived.secrets)?;
    let mut first = arrived.latencies;
    let published = server.ask("digest", "digest").await?.remove(0);
    ensure!(
        progress.digest() == published,
        "the streams' certificates are not the ones the cache published"
    );

    // Push of certificates issued beforehand.
    let staged = server.ask("stage", "staged").await?;
    ensure!(
        staged[0].parse::<usize>()? == n,
        "staged {} certificates, expected {n}",
        staged[0]
    );
    let stage_time = Duration::from_micros(staged[1].parse()?);
    let (push_time, push_cpu) =
        pushed_phase(&mut server, &mut progress, 2, "publish", "published").await?;
    ensure!(
        progress.digest() == staged[2],
        "the streams do not hold the staged certificates"
    );

    // Forced re-issue of everything, pushed as each certificate is made.
    let (reissue_time, reissue_cpu) =
        pushed_phase(&mut server, &mut progress, 3, "reissue", "ok").await?;
    let published = server.ask("digest", "digest").await?.remove(0);
    ensure!(
        progress.digest() == published,
        "after the re-issue the streams do not hold what the cache published"
    );
    let stats = server.ask("stats", "stats").await?;
    let rss_end = server.rss_kib()?;
    server.stop().await?;

    first.sort();
    let percentile = |p: usize| first[(first.len() - 1) * p / 100];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let per_stream = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    let cache_per_cert = cache_rss[1].saturating_sub(cache_rss[0]) as f64 / n as f64;
    println!(
        "| {index} | {} | {n} | {} | {:.0} ms | {:.0} ms | {:.2} | {:.0} / {:.0} ms | {:.0} ms | {:.0} ms | {per_stream:.1} KiB |",
        if args.tls {
            "mTLS".to_owned()
        } else {
            format!("{:?}", args.transport)
        },
        args.connections,
        ms(issue_alone),
        ms(all_first),
        all_first.as_secs_f64() / issue_alone.as_secs_f64(),
        ms(percentile(50)),
        ms(percentile(99)),
        ms(push_time),
        ms(reissue_time),
    );
    let cpu = format!(
        "round {index}: CPU time (server + clients): (A) {:.0} ms; (B) {:.0} + {:.0} ms; push {:.0} + {:.0} ms; \
         re-issue + push {:.0} + {:.0} ms",
        ms(issue_alone_cpu),
        ms(first_server_cpu),
        ms(first_client_cpu),
        ms(push_cpu.0),
        ms(push_cpu.1),
        ms(reissue_cpu.0),
        ms(reissue_cpu.1),
    );
    let memory = format!(
        "round {index}: server RSS {rss_before} → {rss_after} KiB with the streams open ({rss_end} KiB at the end); \
         the cache alone grew {cache_per_cert:.1} KiB per certificate ({} → {} KiB); staging the \
         {n} re-issued certificates took {:.0} ms; server counters: {}",
        cache_rss[0],
        cache_rss[1],
        ms(stage_time),
        stats.join(" "),
    );
    let mut detail = format!("{cpu}\n{memory}");
    let tls = floor.map(|floor| {
        let per_proxy = |cpu: Duration| cpu.as_secs_f64() * 1e6 / n as f64;
        let figures = TlsFigures {
            server_us: per_proxy(first_server_cpu),
            handshake_us: per_proxy(floor.cpu),
            issuance_us: per_proxy(issue_alone_cpu),
            ratio: first_server_cpu.as_secs_f64() / (floor.cpu + issue_alone_cpu).as_secs_f64(),
            rss_per_connection: per_stream,
            floor_rss_per_connection: floor.rss_per_connection,
        };
        detail.push_str(&format!(
            "\nround {index}: mTLS per proxy: server {:.0} µs of CPU for handshake + stream + \
             first certificate; floor {:.0} µs = raw rustls handshake {:.0} µs ({n} in {:.0} ms) \
             + cache issuance {:.0} µs; ratio {:.2}; memory {:.1} KiB per connection (raw \
             rustls {:.1} KiB)",
            figures.server_us,
            figures.handshake_us + figures.issuance_us,
            figures.handshake_us,
            ms(floor.wall),
            figures.issuance_us,
            figures.ratio,
            figures.rss_per_connection,
            figures.floor_rss_per_connection,
        ));
        figures
    });
    Ok(RoundResult {
        ratio: all_first.as_secs_f64() / issue_alone.as_secs_f64(),
        alone_cpu: issue_alone_cpu,
        server_cpu: first_server_cpu,
        client_cpu: first_client_cpu,
        detail,
        tls,
    })
}

/// A phase in which the server pushes to every stream: sends `command` to the server process
/// and waits until every stream has had response `round`. Returns the time from the command
/// to the last response and the (server, client) CPU time it took; the responses are checked
/// after that.
async fn pushed_phase(
    server: &mut Server,
    progress: &mut Progress,
    round: u32,
    command: &str,
    answer: &str,
) -> anyhow::Result<(Duration, (Duration, Duration))> {
    let cpu = (cpu_time(server.pid)?, cpu_time(std::process::id())?);
    let started = Instant::now();
    server.ask(command, answer).await?;
    let arrived = progress.wait_round(round, started).await?;
    let elapsed = started.elapsed();
    let cpu = (
        cpu_time(server.pid)? - cpu.0,
        cpu_time(std::process::id())? - cpu.1,
    );
    progress.check(arrived.secrets)?;
    Ok((elapsed, cpu))
}

/// One HTTP/2 connection to the server, past its SETTINGS exchange.
async fn connect(
    address: &str,
    protocol: Arc<dyn http2::Protocol>,
) -> anyhow::Result<http2::Connection> {
    let failed = || format!("cannot connect to the server at {address}");
    let io: Box<dyn http2::Io> = match address.strip_prefix("unix:") {
        Some(path) => Box::new(UnixStream::connect(path).await.with_context(failed)?),
        None => {
            let tcp = TcpStream::connect(address).await.with_context(failed)?;
            tcp.set_nodelay(true)?;
            Box::new(tcp)
        }
    };
    http2::Connection::handshake(io, protocol)
        .await
        .with_context(|| format!("HTTP/2 with the server at {address} failed"))
}

/// Stream `stream`'s first request, framed: SDS asks for `default` with its node id; the
/// Workload API's request is empty (the caller is who the socket says).
fn first_request(api: Api, stream: usize) -> Bytes {
    if api == Api::Workload {
        return http2::grpc_frame(&X509svidRequest {});
    }
    http2::grpc_frame(&DiscoveryRequest {
        node: Some(Node {
            id: short_name(stream),
            cluster: "load".to_owned(),
            ..Node::default()
        }),
        resource_names: vec!["default".to_owned()],
        type_url: SECRET_TYPE_URL.to_owned(),
        ..DiscoveryRequest::default()
    })
}

fn leaf_serial(secret: &[u8]) -> anyhow::Result<String> {
    let chain = secret_chain(secret)?;
    Ok(CertificateInfo::parse(chain.leaf())?.serial_hex())
}

/// The certificate chain of an encoded `tls_certificate` `Secret`.
fn secret_chain(secret: &[u8]) -> anyhow::Result<CertificateChain> {
    let secret = Secret::decode(secret)?;
    let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
        bail!("{} is not a tls_certificate", secret.name);
    };
    let Some(data_source::Specifier::InlineBytes(pem)) =
        tls.certificate_chain.and_then(|c| c.specifier)
    else {
        bail!("the certificate chain is not inline");
    };
    Ok(CertificateChain::from_pem(std::str::from_utf8(&pem)?)?)
}

/// The leaf serial of the one SVID in an `X509SVIDResponse`. The stream's identity is set by
/// its first response and must stay; the leaf must carry it as its URI SAN, and the key
/// sent must be a PKCS#8 key.
fn svid_serial(message: &[u8], identity: &mut String) -> anyhow::Result<String> {
    let response = X509svidResponse::decode(message)?;
    ensure!(
        response.svids.len() == 1,
        "expected one SVID, got {}",
        response.svids.len()
    );
    let svid = &response.svids[0];
    if identity.is_empty() {
        identity.clone_from(&svid.spiffe_id);
    }
    ensure!(
        svid.spiffe_id == *identity,
        "was given {} after {identity}",
        svid.spiffe_id
    );
    ensure!(!svid.x509_svid_key.is_empty(), "an SVID without its key");
    ensure!(!svid.bundle.is_empty(), "an SVID without the bundle");
    let leaf = first_der(&svid.x509_svid)?;
    let info = CertificateInfo::parse(leaf)?;
    ensure!(
        info.uri_sans == [identity.clone()],
        "the leaf names {:?}, not {identity}",
        info.uri_sans
    );
    Ok(info.serial_hex())
}

/// The first DER certificate of several back to back (its SEQUENCE's length says where it
/// ends).
fn first_der(ders: &[u8]) -> anyhow::Result<&[u8]> {
    ensure!(ders.len() >= 2 && ders[0] == 0x30, "not a DER certificate");
    let (header, length) = match ders[1] {
        short @ 0..=0x7f => (2, usize::from(short)),
        long => {
            let bytes = usize::from(long & 0x7f);
            ensure!(
                (1..=4).contains(&bytes) && ders.len() >= 2 + bytes,
                "a malformed DER length"
            );
            let length = ders[2..2 + bytes]
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
            (2 + bytes, length)
        }
    };
    ensure!(ders.len() >= header + length, "a truncated DER certificate");
    Ok(&ders[..header + length])
}

/// CPU time (user + system) process `pid` has used so far, from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// Resident set size of process `pid`, from /proc/<pid>/status.
fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    vm_kib(pid, "VmRSS:")
}

/// A memory figure of process `pid` (`VmRSS:`, `VmHWM:` …), from /proc/<pid>/status.
fn vm_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// The machine's load averages (1, 5 and 15 minutes), from /proc/loadavg: every figure is
/// reported with the load it was measured under.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    //! The load tool's client against meshca's real SDS server, in process: if the HTTP/2
    //! driver got framing, HPACK, flow control or ACKs wrong, these fail before a benchmark
    //! could report a figure from it.

    use super::*;

    /// A development-mode SDS server over a fresh Tresor cache on loopback TCP.
    struct Running {
        cache: CertificateCache,
        stats: Arc<meshca::sds::SdsStats>,
        address: String,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<Result<(), meshca::sds::SdsError>>,
        _dir: tempfile::TempDir,
    }

    async fn start(streams: usize) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let config = daemon_config(streams, Transport::Tcp, dir.path());
        let cache = daemon_cache(&config).await.unwrap();
        let sds = SdsServer::new(sds_settings(&config).await.unwrap())
            .unwrap()
            .bind()
            .await
            .unwrap();
        let address = sds.tcp_address().unwrap().to_string();
        let stats = sds.stats();
        let source: Arc<dyn SecretSource> = Arc::new(cache.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sds.serve(source, async {
            let _ = stopped.await;
        }));
        Running {
            cache,
            stats,
            address,
            stop,
            server,
            _dir: dir,
        }
    }

    /// Opens `calls` spread over `connections` connections and drives them.
    async fn open(
        api: Api,
        address: &str,
        connections: usize,
        calls: Vec<(usize, Bytes)>,
        n: usize,
    ) -> Progress {
        let mut opened = Vec::new();
        let mut spread = vec![Vec::new(); connections];
        for (i, call) in calls.into_iter().enumerate() {
            spread[i % connections].push(call);
        }
        for calls in spread {
            let mut connection = connect(address, api.protocol()).await.unwrap();
            connection.open(address, calls).unwrap();
            opened.push(connection);
        }
        let (events, received) = mpsc::unbounded_channel();
        for connection in opened {
            tokio::spawn(connection.run(events.clone()));
        }
        Progress::new(api, n, received, Duration::from_secs(60))
    }

    fn cache_digest(cache: &CertificateCache) -> String {
        let certificates = cache.certificates();
        digest(certificates.iter().map(|(k, c)| (&k.identity, &c.info)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_get_their_certificates_and_every_renewal_until_the_server_drains() {
        let n = 60;
        let server = start(n).await;
        let calls = (0..n).map(|s| (s, first_request(Api::Sds, s))).collect();
        let mut progress = open(Api::Sds, &server.address, 3, calls, n).await;

        let arrived = progress.wait_round(1, Instant::now()).await.unwrap();
        progress.check(arrived.secrets).unwrap();
        assert_eq!(progress.digest(), cache_digest(&server.cache));
        // The first responses' ACKs are counted before the renewal is pushed: an ACK that
        // reached the server after the push would carry a stale nonce and rightly not count.
        wait_for_acks(&server.stats, n as u64).await;

        // A renewal reaches every stream (a new serial each: `check` fails on an old one).
        server.cache.renew_now(None);
        let arrived = progress.wait_round(2, Instant::now()).await.unwrap();
        progress.check(arrived.secrets).unwrap();
        assert_eq!(progress.digest(), cache_digest(&server.cache));

        // Every response was ACKed with its nonce (the server counts no other), none NACKed.
        wait_for_acks(&server.stats, 2 * n as u64).await;
        let stats = server.stats.snapshot();
        assert_eq!((stats.acks, stats.nacks), (2 * n as u64, 0));

        // Draining ends every stream with UNAVAILABLE in its trailers, decoded from HPACK.
        server.stop.send(()).unwrap();
        let mut ended = 0;
        while let Some(event) = progress.received.recv().await {
            match event {
                Event::Failed { error, .. } => {
                    assert!(error.contains("gRPC status 14"), "{error}");
                    ended += 1;
                }
                Event::Response { stream, .. } => panic!("stream {stream}: a third response"),
            }
        }
        assert_eq!(ended, n);
        server.server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mtls_proxies_each_get_the_identity_of_their_bootstrap_certificate() {
        let n = 12;
        let dir = tempfile::tempdir().unwrap();
        let config = mtls::mtls_config(daemon_config(n, Transport::Tcp, dir.path()));
        // Issued from the store first, as the run does; the server then loads the same CA.
        let (clients, _) = mtls::bootstrap_clients(&config, n).await.unwrap();
        let cache = daemon_cache(&config).await.unwrap();
        let sds = SdsServer::new(sds_settings(&config).await.unwrap())
            .unwrap()
            .bind()
            .await
            .unwrap();
        let address = sds.tcp_address().unwrap().to_string();
        let source: Arc<dyn SecretSource> = Arc::new(cache.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sds.serve(source, async {
            let _ = stopped.await;
        }));

        let (events, received) = mpsc::unbounded_channel();
        for (stream, client) in clients.iter().enumerate() {
            // The node id names another proxy: under mTLS only the certificate counts.
            let request = first_request(Api::Sds, (stream + 1) % n);
            let mut connection = mtls::connect(&address, client.clone(), Api::Sds.protocol())
                .await
                .unwrap();
            connection.open(&address, vec![(stream, request)]).unwrap();
            tokio::spawn(connection.run(events.clone()));
        }
        let mut progress = Progress::new(Api::Sds, n, received, Duration::from_secs(60));
        let arrived = progress.wait_round(1, Instant::now()).await.unwrap();
        progress.check(arrived.secrets).unwrap();
        // Proxy i holds the certificate the cache issued for load/sa-i; the cache holds the
        // endpoint's own besides.
        let endpoint =
            SpiffeId::from_short("meshca-system/meshca", &TrustDomain::default()).unwrap();
        let certificates = cache.certificates();
        assert_eq!(certificates.len(), n + 1);
        assert_eq!(
            progress.digest(),
            digest(
                certificates
                    .iter()
                    .filter(|(k, _)| k.identity != endpoint)
                    .map(|(k, c)| (&k.identity, &c.info))
            )
        );

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workload_api_streams_each_hold_their_own_identity_and_get_every_renewal() {
        // More streams than one connection may carry, and than the default per-caller limit.
        let n = 120;
        let dir = tempfile::tempdir().unwrap();
        let config = daemon_config(n, Transport::Unix, dir.path());
        let cache = daemon_cache(&config).await.unwrap();
        let source: Arc<dyn SecretSource> = Arc::new(cache.clone());
        let api = workload_api(n, dir.path(), source).unwrap();
        let metrics = api.metrics();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = api.bind().await.unwrap().start(async {
            let _ = stopped.await;
        });
        let address = format!("unix:{}", dir.path().join("workload.sock").display());
        let calls = (0..n)
            .map(|s| (s, first_request(Api::Workload, s)))
            .collect();
        let connections = n.div_ceil(WORKLOAD_STREAMS_PER_CONNECTION);
        let mut progress = open(Api::Workload, &address, connections, calls, n).await;

        let arrived = progress.wait_round(1, Instant::now()).await.unwrap();
        progress.check(arrived.secrets).unwrap();
        // N distinct identities, each with the certificate the cache holds for it.
        assert_eq!(progress.digest(), cache_digest(&cache));
        let distinct: std::collections::HashSet<_> = progress.identities.iter().collect();
        assert_eq!(distinct.len(), n);

        cache.renew_now(None);
        let arrived = progress.wait_round(2, Instant::now()).await.unwrap();
        progress.check(arrived.secrets).unwrap();
        assert_eq!(progress.digest(), cache_digest(&cache));
        let counted = metrics.snapshot();
        assert_eq!(
            (counted.streams_total, counted.svid_messages),
            (n as u64, 2 * n as u64)
        );

        stop.send(()).unwrap();
        let mut ended = 0;
        while let Some(event) = progress.received.recv().await {
            match event {
                Event::Failed { error, .. } => {
                    assert!(error.contains("gRPC status 14"), "{error}");
                    ended += 1;
                }
                Event::Response { stream, .. } => panic!("stream {stream}: a third response"),
            }
        }
        assert_eq!(ended, n);
        running.stopped().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workload_api_caller_past_the_identities_is_refused() {
        // One entry: the second call is attested as `unix:uid:1`, which nothing matches.
        let dir = tempfile::tempdir().unwrap();
        let config = daemon_config(1, Transport::Unix, dir.path());
        let cache = daemon_cache(&config).await.unwrap();
        let source: Arc<dyn SecretSource> = Arc::new(cache.clone());
        let api = workload_api(1, dir.path(), source).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = api.bind().await.unwrap().start(async {
            let _ = stopped.await;
        });
        let address = format!("unix:{}", dir.path().join("workload.sock").display());
        let calls = (0..2)
            .map(|s| (s, first_request(Api::Workload, s)))
            .collect();
        let mut progress = open(Api::Workload, &address, 2, calls, 2).await;
        let (mut answered, mut refused) = (0, 0);
        for _ in 0..2 {
            match progress.received.recv().await.unwrap() {
                Event::Response { .. } => answered += 1,
                Event::Failed { error, .. } => {
                    assert!(error.contains("gRPC status 7"), "{error}");
                    refused += 1;
                }
            }
        }
        assert_eq!((answered, refused), (1, 1));
        assert_eq!(
            cache.stats().issued,
            1,
            "nothing issued for the refused caller"
        );
        stop.send(()).unwrap();
        running.stopped().await.unwrap();
    }

    /// Waits until the server has counted `expected` ACKs (30 s at most).
    async fn wait_for_acks(stats: &meshca::sds::SdsStats, expected: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while stats.snapshot().acks < expected {
            assert!(
                Instant::now() < deadline,
                "{} of {expected} ACKs counted",
                stats.snapshot().acks,
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_call_reports_the_servers_status_and_message() {
        let server = start(2).await;
        // No node id: development mode cannot tell who is calling.
        let anonymous = http2::grpc_frame(&DiscoveryRequest {
            resource_names: vec!["default".to_owned()],
            type_url: SECRET_TYPE_URL.to_owned(),
            ..DiscoveryRequest::default()
        });
        let mut progress = open(Api::Sds, &server.address, 1, vec![(0, anonymous)], 1).await;
        match progress.received.recv().await.unwrap() {
            Event::Failed { stream, error } => {
                assert_eq!(stream, 0);
                assert!(error.contains("gRPC status 16"), "{error}");
                assert!(
                    error.contains("node"),
                    "the server's message is kept: {error}"
                );
            }
            Event::Response { .. } => panic!("an anonymous caller got a certificate"),
        }
        server.stop.send(()).unwrap();
        server.server.await.unwrap().unwrap();
    }
}
