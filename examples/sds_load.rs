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
//! Every stream ACKs each response as Envoy does and checks what it got: the serials all
//! streams hold are compared (by digest) with what the server's cache published.
//!
//! `cargo build --release --example sds_load && target/release/examples/sds_load --streams 10000`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::{Node, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use meshca::cache::{CertKey, CertificateCache, Purpose};
use meshca::cli::serve::{cache_settings, sds_settings};
use meshca::config::{Config, SdsAuth};
use meshca::sds::convert::SECRET_TYPE_URL;
use meshca::sds::{PATH_STREAM, SdsServer, SecretSource};
use meshca::time::TokioClock;
use meshca_provider::x509::sha256;
use meshca_provider::{CertificateChain, CertificateInfo, Clock, SpiffeId, TrustDomain};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
struct Args {
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
    /// Internal: time a fresh cache issuing `--streams` certificates.
    #[arg(long, hide = true)]
    cache_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Tcp,
    Unix,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.streams > 0 && args.connections > 0 && args.client_threads > 0 && args.rounds > 0,
        "--streams, --connections, --client-threads and --rounds must be at least 1"
    );
    if args.serve_only || args.cache_only {
        // The runtime `meshca serve` uses: multi-threaded, one worker per CPU.
        let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
        return runtime.block_on(async {
            if args.serve_only {
                serve(&args).await
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
    let dir = tempfile::tempdir()?;
    let config = daemon_config(args.streams, args.transport, dir.path());
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

/// The server process: `meshca serve` in development mode, answering the driver's commands.
async fn serve(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = daemon_config(args.streams, args.transport, dir.path());
    let cache = daemon_cache(&config).await?;
    let sds = SdsServer::new(sds_settings(&config).await?)?.bind().await?;
    let address = match args.transport {
        Transport::Tcp => sds.tcp_address().context("no TCP address")?.to_string(),
        Transport::Unix => format!(
            "unix:{}",
            sds.unix_path().context("no Unix socket")?.display()
        ),
    };
    let stats = sds.stats();
    let source: Arc<dyn SecretSource> = Arc::new(cache.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sds.serve(source, async {
        let _ = stopped.await;
    }));
    println!("ready {address}");

    let mut staged = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "digest" => {
                let certificates = cache.certificates();
                println!(
                    "digest {}",
                    digest(certificates.iter().map(|(k, c)| (&k.identity, &c.info)))
                );
            }
            "stage" => {
                let started = Instant::now();
                let certificates = cache.stage_reissue(None).await?;
                let elapsed = started.elapsed();
                println!(
                    "staged {} {} {}",
                    certificates.len(),
                    elapsed.as_micros(),
                    digest(
                        certificates
                            .certificates()
                            .map(|(k, c)| (&k.identity, &c.info))
                    )
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
                let sds = stats.snapshot();
                let cache = cache.stats();
                println!(
                    "stats {} {} {} {} {} {}",
                    sds.responses, sds.pushes, sds.acks, sds.nacks, cache.issued, cache.renewed
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
fn digest<'a>(pairs: impl Iterator<Item = (&'a SpiffeId, &'a CertificateInfo)>) -> String {
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
            .arg("--streams")
            .arg(args.streams.to_string())
            .arg("--transport")
            .arg(match args.transport {
                Transport::Tcp => "tcp",
                Transport::Unix => "unix",
            })
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

    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.send("quit").await;
        drop(self.stdin);
        let status = self.child.wait().await?;
        ensure!(status.success(), "the server process failed: {status}");
        Ok(())
    }
}

/// What a client stream reports.
enum Event {
    /// A response arrived; its one resource (an encoded `Secret`) is checked after the timed
    /// phase, so that the client's parsing does not take CPU from the server while it is timed.
    Response {
        stream: usize,
        secret: Vec<u8>,
    },
    Failed {
        stream: usize,
        error: String,
    },
}

/// Per-stream progress: how many responses each stream has had and the serial it holds.
struct Progress {
    serials: Vec<String>,
    responses: Vec<u32>,
    received: mpsc::UnboundedReceiver<Event>,
    patience: Duration,
}

impl Progress {
    /// Waits until every stream has had `round` responses; returns each stream's time to it.
    async fn wait_round(&mut self, round: u32, started: Instant) -> anyhow::Result<Vec<Duration>> {
        let n = self.serials.len();
        let mut latencies = Vec::with_capacity(n);
        let mut received = vec![Vec::new(); n];
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
            .context("every stream task ended")?;
            match event {
                Event::Response { stream, secret } => {
                    self.responses[stream] += 1;
                    ensure!(
                        self.responses[stream] == round,
                        "stream {stream} got response {} while waiting for response {round}",
                        self.responses[stream]
                    );
                    received[stream] = secret;
                    latencies.push(started.elapsed());
                }
                Event::Failed { stream, error } => bail!("stream {stream} failed: {error}"),
            }
        }
        for (stream, secret) in received.into_iter().enumerate() {
            let serial = leaf_serial(&secret).with_context(|| format!("stream {stream}"))?;
            ensure!(
                serial != self.serials[stream],
                "stream {stream} was pushed the serial it already held"
            );
            self.serials[stream] = serial;
        }
        Ok(latencies)
    }

    fn digest(&self) -> String {
        let domain = TrustDomain::default();
        digest_of(self.serials.iter().enumerate().map(|(stream, serial)| {
            let identity = SpiffeId::from_short(&short_name(stream), &domain).unwrap();
            (identity.to_string(), serial.clone())
        }))
    }
}

async fn drive(args: &Args) -> anyhow::Result<()> {
    // A warm-up (A), not counted: the first process of a run pays for loading this binary and
    // for cold caches, and that fell on the first (A) alone.
    let mut warm_up = Server::start(args, "--cache-only")?;
    warm_up.expect("issued").await?;
    warm_up.stop().await?;

    println!(
        "| round | transport | streams | connections | (A) cache alone issues N | (B) first cert on all streams | B/A | per stream p50 / p99 | push of issued certs to all | re-issue + push to all | server RSS per stream |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::with_capacity(args.rounds);
    let mut details = Vec::with_capacity(args.rounds);
    for index in 1..=args.rounds {
        let (ratio, detail) = round(args, index).await?;
        ratios.push(ratio);
        details.push(detail);
    }
    println!();
    for detail in details {
        println!("{detail}");
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "\nB/A over {} rounds: median {:.2}, lowest {:.2}, highest {:.2}",
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    Ok(())
}

/// One round: (A) in a fresh process, then (B), the push and the re-issue against a fresh
/// server process. Prints the round's row; returns B/A and the round's CPU and memory details.
async fn round(args: &Args, index: usize) -> anyhow::Result<(f64, String)> {
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

    // (B) the SDS server in its own process.
    let mut server = Server::start(args, "--serve-only")?;
    let address = server.expect("ready").await?.remove(0);
    let mut connections = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        connections.push(connect(&address).await?);
    }
    // Every stream's request is made before the clock starts: a proxy arrives with its own.
    let authority = if address.starts_with("unix:") {
        "localhost"
    } else {
        address.as_str()
    };
    let uri: http::Uri = format!("http://{authority}{PATH_STREAM}").parse()?;
    let opening: Vec<(http::Request<()>, Bytes)> = (0..n)
        .map(|stream| (grpc_request(&uri), first_request(stream)))
        .collect();
    let rss_before = server.rss_kib()?;
    let server_cpu = cpu_time(server.pid)?;
    let client_cpu = cpu_time(std::process::id())?;

    let (events, received) = mpsc::unbounded_channel();
    let mut progress = Progress {
        serials: vec![String::new(); n],
        responses: vec![0; n],
        received,
        patience: args.patience,
    };
    let opened = Instant::now();
    for (stream, (request, first)) in opening.into_iter().enumerate() {
        let connection = connections[stream % connections.len()].clone();
        let events = events.clone();
        tokio::spawn(async move {
            if let Err(status) = client_stream(connection, request, first, stream, &events).await {
                let _ = events.send(Event::Failed {
                    stream,
                    error: status.to_string(),
                });
            }
        });
    }
    drop(events);
    let mut first = progress.wait_round(1, opened).await?;
    let all_first = opened.elapsed();
    let first_server_cpu = cpu_time(server.pid)? - server_cpu;
    let first_client_cpu = cpu_time(std::process::id())? - client_cpu;
    let rss_after = server.rss_kib()?;
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
    let cpu = (cpu_time(server.pid)?, cpu_time(std::process::id())?);
    let pushed = Instant::now();
    server.ask("publish", "published").await?;
    progress.wait_round(2, pushed).await?;
    let push_time = pushed.elapsed();
    let push_cpu = (
        cpu_time(server.pid)? - cpu.0,
        cpu_time(std::process::id())? - cpu.1,
    );
    ensure!(
        progress.digest() == staged[2],
        "the streams do not hold the staged certificates"
    );

    // Forced re-issue of everything, pushed as each certificate is made.
    let cpu = (cpu_time(server.pid)?, cpu_time(std::process::id())?);
    let reissued = Instant::now();
    server.ask("reissue", "ok").await?;
    progress.wait_round(3, reissued).await?;
    let reissue_time = reissued.elapsed();
    let reissue_cpu = (
        cpu_time(server.pid)? - cpu.0,
        cpu_time(std::process::id())? - cpu.1,
    );
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
        "| {index} | {:?} | {n} | {} | {:.0} ms | {:.0} ms | {:.2} | {:.0} / {:.0} ms | {:.0} ms | {:.0} ms | {per_stream:.1} KiB |",
        args.transport,
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
         {n} re-issued certificates took {:.0} ms; server counters: {} responses, {} pushes, {} ACKs, \
         {} NACKs; cache: {} issued, {} renewed",
        cache_rss[0],
        cache_rss[1],
        ms(stage_time),
        stats[0],
        stats[1],
        stats[2],
        stats[3],
        stats[4],
        stats[5],
    );
    Ok((
        all_first.as_secs_f64() / issue_alone.as_secs_f64(),
        format!("{cpu}\n{memory}"),
    ))
}

/// One HTTP/2 connection to the SDS server, its driver spawned.
///
/// The load client speaks gRPC over h2 directly rather than through tonic's client: it shares
/// the machine's two cores with the server it measures, and tonic's client stack (a buffer task
/// in front of hyper's dispatcher, a request queue per stream) cost it more CPU per stream than
/// the server spends on the same stream. What goes over the wire is the same: HTTP/2 streams
/// carrying length-prefixed protobuf messages, as Envoy's gRPC client sends them.
async fn connect(address: &str) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let failed = || format!("cannot connect to the SDS server at {address}");
    match address.strip_prefix("unix:") {
        Some(path) => handshake(UnixStream::connect(path).await.with_context(failed)?).await,
        None => {
            let tcp = TcpStream::connect(address).await.with_context(failed)?;
            tcp.set_nodelay(true)?;
            handshake(tcp).await
        }
    }
}

/// Envoy's default `initial_stream_window_size` and `initial_connection_window_size`.
const ENVOY_WINDOW: u32 = 256 * 1024 * 1024;

async fn handshake<T>(io: T) -> anyhow::Result<h2::client::SendRequest<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Flow-control windows as Envoy's defaults (256 MiB per stream and per connection): the
    // server never waits for the client's WINDOW_UPDATE frames, as with real proxies.
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(ENVOY_WINDOW)
        .initial_connection_window_size(ENVOY_WINDOW)
        .handshake(io)
        .await
        .context("HTTP/2 handshake with the SDS server failed")?;
    // A connection that fails ends its streams, which report it; the reset when the server
    // process quits at the end of a round is expected.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// The headers of a `StreamSecrets` call.
fn grpc_request(uri: &http::Uri) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::POST)
        .uri(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())
        .expect("a valid request")
}

/// Stream `stream`'s first request, framed: it asks for `default` with its node id.
fn first_request(stream: usize) -> Bytes {
    grpc_frame(&DiscoveryRequest {
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

/// A gRPC message on the wire: uncompressed flag, big-endian length, protobuf bytes.
fn grpc_frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(len).expect("a small message"));
    message.encode(&mut frame).expect("capacity reserved");
    frame.freeze()
}

/// The next whole gRPC message at the front of `buffer`, if it has arrived.
fn next_message(buffer: &mut Bytes) -> anyhow::Result<Option<Bytes>> {
    if buffer.len() < 5 {
        return Ok(None);
    }
    ensure!(buffer[0] == 0, "the server sent a compressed message");
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + len {
        return Ok(None);
    }
    buffer.advance(5);
    Ok(Some(buffer.split_to(len)))
}

/// One stream, as a single-secret Envoy: sends its first request, ACKs every response,
/// reports each certificate it receives.
async fn client_stream(
    connection: h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    first: Bytes,
    stream: usize,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), anyhow::Error> {
    let mut connection = connection.ready().await?;
    let (response, mut outbound) = connection.send_request(request, false)?;
    outbound.send_data(first, false)?;
    let response = response.await?;
    ensure!(
        response.status() == http::StatusCode::OK,
        "HTTP status {}",
        response.status()
    );
    // A call refused at once ends with its status in the headers (a trailers-only response).
    grpc_status(response.headers())?;
    let mut body = response.into_body();
    let mut partial = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let mut chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        // A DATA frame usually carries exactly one whole message, read in place; only the
        // pieces of a message split across frames are gathered in `partial`.
        if !partial.is_empty() {
            partial.extend_from_slice(&chunk);
            chunk = partial.split().freeze();
        }
        while let Some(message) = next_message(&mut chunk)? {
            let mut response = DiscoveryResponse::decode(message)?;
            ensure!(
                response.resources.len() == 1,
                "expected one resource, got {}",
                response.resources.len()
            );
            let secret = std::mem::take(&mut response.resources[0].value);
            let _ = events.send(Event::Response { stream, secret });
            outbound.send_data(
                grpc_frame(&DiscoveryRequest {
                    version_info: response.version_info,
                    response_nonce: response.nonce,
                    resource_names: vec!["default".to_owned()],
                    type_url: SECRET_TYPE_URL.to_owned(),
                    ..DiscoveryRequest::default()
                }),
                false,
            )?;
        }
        partial.extend_from_slice(&chunk);
    }
    // The server ended the stream: a gRPC status other than OK is a failure.
    match body.trailers().await? {
        Some(trailers) => grpc_status(&trailers),
        None => Ok(()),
    }
}

/// Fails on a `grpc-status` other than OK in `headers`.
fn grpc_status(headers: &http::HeaderMap) -> anyhow::Result<()> {
    match headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("0") => Ok(()),
        Some(code) => {
            let message = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            bail!("the server ended the stream with gRPC status {code}: {message}")
        }
    }
}

/// The serial of the leaf in an encoded `tls_certificate` secret.
fn leaf_serial(secret: &[u8]) -> anyhow::Result<String> {
    let secret = Secret::decode(secret)?;
    let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
        bail!("{} is not a tls_certificate", secret.name);
    };
    let Some(data_source::Specifier::InlineBytes(pem)) =
        tls.certificate_chain.and_then(|c| c.specifier)
    else {
        bail!("the certificate chain is not inline");
    };
    let chain = CertificateChain::from_pem(std::str::from_utf8(&pem)?)?;
    Ok(CertificateInfo::parse(chain.leaf())?.serial_hex())
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
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}
