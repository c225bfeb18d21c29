//! Adversarial run: hostile callers against real `meshca serve` processes while a real Envoy
//! keeps its certificates and receives a renewal.
//!
//! Two daemons share one Tresor CA (a temporary directory store):
//! - **A**, development mode (the node id is believed) on loopback TCP *and* a Unix socket,
//!   with `sds.maxStreams` lowered (`--max-streams`) so that floods reach the limit; a real
//!   Envoy 1.40 takes its secrets from A over TCP;
//! - **B**, mTLS on loopback TCP (the production mode); a second real Envoy takes its secrets
//!   from B with a bootstrap client certificate from `meshca issue`.
//!
//! The phases, each bounded in count and time, run one after the other:
//! 1. *unauthenticated streams*: `--streams` calls without a node id (refused), then as many
//!    silent calls that send no request at all, held for `--hold` while a legitimate caller asks
//!    for a certificate;
//! 2. *idle connections* on every listener kind, held for `--hold`: A's TCP and Unix listeners
//!    (nothing sent; only the HTTP/2 preface), B's TLS listener (no ClientHello; a completed
//!    handshake with a meshca client certificate, then nothing) — it counts how many the
//!    server closed, and when;
//! 3. *large node ids*: requests whose node id fills the request message limit (≈1 MiB);
//! 4. *Delta `initial_resource_versions`*: Delta requests whose map fills the message limit;
//! 5. *NACK storm*: one stream NACKs its response `--nacks` times with an `error_detail` of
//!    `--nack-detail-bytes`.
//!
//! Then `meshca rotate leaves` (with the daemons' admin token) forces a renewal on each, and
//! each Envoy must present the new certificate with no SDS update rejected. Throughout, the tool reads each server's
//! memory (VmHWM and VmRSS from /proc/<pid>/status) and the size of its log, and at the end
//! checks them against `--max-rss-mib` and `--max-log-growth-bytes`: it exits 1 when a bound
//! is exceeded or Envoy lost or failed to renew its certificate. It reports what it sees (the
//! status codes each phase got, how many idle connections were closed) without judging the
//! server's limits, which change with meshca's hardening.
//!
//! Loopback only; stops by itself. `cargo build --release --bin meshca --example sds_attack &&
//! target/release/examples/sds_attack` (the meshca binary next to the example's directory is
//! used, or `--meshca PATH`; Envoy from `MESHCA_ENVOY` or `.tools/bin/envoy`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshca::sds::convert::SECRET_TYPE_URL;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

// The test support's Envoy launcher (bootstraps from deploy/examples, /ready, /certs), shared
// with the end-to-end tests rather than copied.
use meshca_test_support::daemon::MeshcaServe;
use meshca_test_support::envoy;

/// How long the tool waits for anything that should answer (a server start, Envoy, a renewal).
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
struct Args {
    /// The meshca binary (default: `meshca` next to this example's directory).
    #[arg(long)]
    meshca: Option<PathBuf>,
    /// Unauthenticated calls (no node id), and again silent calls (no request at all).
    #[arg(long, default_value_t = 2_000)]
    streams: usize,
    /// `sds.maxStreams` of server A, so that the floods reach it.
    #[arg(long, default_value_t = 1_000)]
    max_streams: usize,
    /// Idle connections per kind (TCP silent, TCP preface only, Unix silent, TLS no
    /// ClientHello, TLS handshake then silent).
    #[arg(long, default_value_t = 500)]
    idle: usize,
    /// How long silent streams and idle connections are held open.
    #[arg(long, default_value = "40s", value_parser = meshca_provider::parse_duration)]
    hold: Duration,
    /// Requests whose node id fills the message limit.
    #[arg(long, default_value_t = 50)]
    big_node_requests: usize,
    /// Delta requests whose `initial_resource_versions` fills the message limit.
    #[arg(long, default_value_t = 50)]
    delta_requests: usize,
    /// NACKs on one stream.
    #[arg(long, default_value_t = 500)]
    nacks: usize,
    /// Bytes of each NACK's `error_detail` message.
    #[arg(long, default_value_t = 512 * 1024)]
    nack_detail_bytes: usize,
    /// Bound on each server's peak resident memory (VmHWM), MiB: the Helm chart's limit.
    #[arg(long, default_value_t = 256)]
    max_rss_mib: u64,
    /// Bound on each server's log growth over the whole run, bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_log_growth_bytes: u64,
}

/// The largest request message meshca accepts by default (`sds.maxMessageBytes`).
const MESSAGE_LIMIT: usize = 1 << 20;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    let report = runtime.block_on(run(&args))?;
    println!("{report}");
    if !report.passed() {
        bail!("the adversarial run exceeded a bound or an Envoy lost its certificates (see above)");
    }
    Ok(())
}

/// The meshca binary to attack.
fn meshca_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match &args.meshca {
        Some(path) => path.clone(),
        // target/<profile>/examples/sds_attack[-hash] → target/<profile>/meshca
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("cannot locate the target directory")?
            .join("meshca"),
    };
    ensure!(
        path.is_file(),
        "no meshca binary at {}: build it (`cargo build --release --bin meshca`) or pass --meshca",
        path.display()
    );
    Ok(path)
}

/// A `meshca serve` process (the test support's daemon harness) with its log in a file;
/// killed on drop.
struct Server {
    name: &'static str,
    serve: MeshcaServe,
    sds: SocketAddr,
    admin: SocketAddr,
    unix: Option<PathBuf>,
}

impl Server {
    fn start(
        binary: &Path,
        name: &'static str,
        dir: &Path,
        settings: &[String],
        unix: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let ca_dir = dir.join("ca");
        let mut builder = MeshcaServe::builder()
            .binary(binary)
            .args(["--ca-dir", ca_dir.to_str().context("CA dir is not UTF-8")?])
            .sds()
            .admin();
        if let Some(path) = &unix {
            builder = builder.set(&format!("sds.unixSocket={}", path.display()));
        }
        for setting in settings {
            builder = builder.set(setting);
        }
        let serve = builder.start();
        Ok(Self {
            name,
            sds: serve.sds(),
            admin: serve.admin(),
            serve,
            unix,
        })
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.serve.wait_ready().await;
        Ok(())
    }

    /// (VmHWM, VmRSS) in KiB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.serve.pid()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    fn log_bytes(&self) -> u64 {
        std::fs::metadata(self.serve.log_path()).map_or(0, |m| m.len())
    }

    fn alive(&mut self) -> bool {
        self.serve.is_running()
    }

    fn log_tail(&self) -> String {
        self.serve
            .tail(20)
            .lines()
            .map(|l| l.chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What one phase saw.
#[derive(Debug, Default)]
struct Phase {
    name: String,
    /// Outcome → count (a gRPC code, "closed by server after Ns", "still open", …).
    outcomes: BTreeMap<String, usize>,
    seconds: f64,
    /// Per server: (VmHWM KiB, VmRSS KiB, log bytes) after the phase.
    servers: Vec<(&'static str, u64, u64, u64)>,
    /// Notes (a legitimate caller served or not, Envoy still ready).
    notes: Vec<String>,
}

impl Phase {
    fn count(&mut self, outcome: impl Into<String>) {
        *self.outcomes.entry(outcome.into()).or_default() += 1;
    }
}

/// The whole run.
struct Report {
    command: String,
    phases: Vec<Phase>,
    /// Per server: (name, log bytes at start, VmHWM KiB, log bytes at end).
    totals: Vec<(&'static str, u64, u64, u64)>,
    bounds: (u64, u64),
    /// Per Envoy: what it did, or how it failed.
    envoys: Vec<(&'static str, Result<String, String>)>,
}

impl Report {
    fn exceeded(&self) -> Vec<String> {
        let (rss_mib, log_bytes) = self.bounds;
        let mut out = Vec::new();
        for (name, start, hwm, end) in &self.totals {
            if *hwm > rss_mib * 1024 {
                out.push(format!(
                    "server {name}: VmHWM {} MiB > {rss_mib} MiB",
                    hwm / 1024
                ));
            }
            if end.saturating_sub(*start) > log_bytes {
                out.push(format!(
                    "server {name}: log grew {} bytes > {log_bytes}",
                    end - start
                ));
            }
        }
        out
    }

    fn passed(&self) -> bool {
        self.exceeded().is_empty() && self.envoys.iter().all(|(_, r)| r.is_ok())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sds_attack: {}", self.command)?;
        for phase in &self.phases {
            writeln!(f, "\n## {} ({:.1} s)", phase.name, phase.seconds)?;
            for (outcome, count) in &phase.outcomes {
                writeln!(f, "  {count:>7}  {outcome}")?;
            }
            for note in &phase.notes {
                writeln!(f, "  note: {note}")?;
            }
            for (name, hwm, rss, log) in &phase.servers {
                writeln!(
                    f,
                    "  server {name}: VmHWM {:.1} MiB, VmRSS {:.1} MiB, log {log} bytes",
                    *hwm as f64 / 1024.0,
                    *rss as f64 / 1024.0
                )?;
            }
        }
        writeln!(f, "\n## Bounds")?;
        let (rss_mib, log_bytes) = self.bounds;
        for (name, start, hwm, end) in &self.totals {
            let growth = end.saturating_sub(*start);
            writeln!(
                f,
                "  server {name}: peak RSS {:.1} MiB (bound {rss_mib} MiB) {}; log growth {growth} bytes (bound {log_bytes}) {}",
                *hwm as f64 / 1024.0,
                if *hwm <= rss_mib * 1024 {
                    "ok"
                } else {
                    "EXCEEDED"
                },
                if growth <= log_bytes {
                    "ok"
                } else {
                    "EXCEEDED"
                },
            )?;
        }
        for (name, result) in &self.envoys {
            match result {
                Ok(what) => writeln!(f, "  {name}: ok — {what}")?,
                Err(what) => writeln!(f, "  {name}: FAILED — {what}")?,
            }
        }
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        write!(f, "result: {verdict}")
    }
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let binary = meshca_binary(args)?;
    let envoy_binary = envoy::binary().context("Envoy is needed for the adversarial run")?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("admin-token");
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(&token_file, &token)?;

    let mut a = Server::start(
        &binary,
        "A (development: TCP + Unix)",
        dir.path(),
        &[
            "sds.auth=development".to_owned(),
            format!("sds.maxStreams={}", args.max_streams),
            format!("admin.tokenFile={}", token_file.display()),
        ],
        Some(dir.path().join("sds.sock")),
    )?;
    a.wait_ready().await?;
    let tls_dir = dir.path().join("tls-client");
    issue(&binary, dir.path(), "attack/tls-client", &tls_dir)?;
    let mut b = Server::start(
        &binary,
        "B (mTLS: TCP)",
        dir.path(),
        &[
            "sds.auth=mtls".to_owned(),
            format!("admin.tokenFile={}", token_file.display()),
        ],
        None,
    )?;
    b.wait_ready().await?;

    // Real Envoys on A (development mode) and B (mTLS with a bootstrap certificate), ready with
    // their secrets before anything hostile happens.
    let allowed = "spiffe://cluster.local/ns/ns/sa/client";
    let envoy_a = envoy::Envoy::start(
        &envoy_binary,
        "Envoy on A",
        &envoy::inbound_bootstrap(a.sds.port(), envoy::free_port(), allowed, None),
    );
    let bootstrap = dir.path().join("envoy-b");
    issue(&binary, dir.path(), "ns/server", &bootstrap)?;
    let mtls_cluster = [
        ("SDS_ADDRESS", "127.0.0.1".to_owned()),
        (
            "BOOTSTRAP_CERT",
            bootstrap.join("cert.pem").display().to_string(),
        ),
        (
            "BOOTSTRAP_KEY",
            bootstrap.join("key.pem").display().to_string(),
        ),
        (
            "BOOTSTRAP_CA",
            bootstrap.join("ca.pem").display().to_string(),
        ),
        (
            "SDS_SERVER_ID",
            "spiffe://cluster.local/ns/meshca-system/sa/meshca".to_owned(),
        ),
    ];
    let envoy_b = envoy::Envoy::start(
        &envoy_binary,
        "Envoy on B",
        &envoy::inbound_bootstrap(
            b.sds.port(),
            envoy::free_port(),
            allowed,
            Some(("sds-cluster-mtls.yaml", &mtls_cluster)),
        ),
    );
    envoy_a.wait_ready().await;
    envoy_b.wait_ready().await;
    let first_a = envoy_a.leaf_serials().await;
    let first_b = envoy_b.leaf_serials().await;
    ensure!(
        !first_a.is_empty() && !first_b.is_empty(),
        "an Envoy holds no certificate"
    );
    let envoys = [&envoy_a, &envoy_b];

    let start_logs = [a.log_bytes(), b.log_bytes()];
    let mut phases = Vec::new();
    let tls = tls_connector(&tls_dir)?;

    let mut phase = unauthenticated_streams(args, &a).await?;
    finish(&mut phase, &mut [&mut a, &mut b], &envoys).await;
    phases.push(phase);

    let mut phase = idle_connections(args, &a, &b, &tls).await?;
    finish(&mut phase, &mut [&mut a, &mut b], &envoys).await;
    phases.push(phase);

    let mut phase = big_node_ids(args, &a).await?;
    finish(&mut phase, &mut [&mut a, &mut b], &envoys).await;
    phases.push(phase);

    let mut phase = delta_versions(args, &a).await?;
    finish(&mut phase, &mut [&mut a, &mut b], &envoys).await;
    phases.push(phase);

    let mut phase = nack_storm(args, &a).await?;
    finish(&mut phase, &mut [&mut a, &mut b], &envoys).await;
    phases.push(phase);

    let envoys = vec![
        (
            "Envoy on A",
            renewal(&binary, &a, &token_file, &envoy_a, &first_a).await,
        ),
        (
            "Envoy on B",
            renewal(&binary, &b, &token_file, &envoy_b, &first_b).await,
        ),
    ];
    let totals = vec![
        (a.name, start_logs[0], a.memory().0, a.log_bytes()),
        (b.name, start_logs[1], b.memory().0, b.log_bytes()),
    ];
    Ok(Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        phases,
        totals,
        bounds: (args.max_rss_mib, args.max_log_growth_bytes),
        envoys,
    })
}

/// `meshca issue` of `identity` from the run's CA into `out` (cert.pem, key.pem, ca.pem).
fn issue(binary: &Path, dir: &Path, identity: &str, out: &Path) -> anyhow::Result<()> {
    let issued = Command::new(binary)
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .args(["issue", "--identity", identity, "--out-dir"])
        .arg(out)
        .env_remove("MESHCA_CONFIG")
        .output()?;
    ensure!(
        issued.status.success(),
        "meshca issue --identity {identity} failed: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
    Ok(())
}

/// Records the servers' memory and logs after a phase, and whether they and the Envoys are well.
async fn finish(phase: &mut Phase, servers: &mut [&mut Server], envoys: &[&envoy::Envoy]) {
    for server in servers.iter_mut() {
        if !server.alive() {
            phase.notes.push(format!(
                "server {} DIED:\n{}",
                server.name,
                server.log_tail()
            ));
        }
        let (hwm, rss) = server.memory();
        phase
            .servers
            .push((server.name, hwm, rss, server.log_bytes()));
    }
    for envoy in envoys {
        let ready = envoy::http_get(envoy.admin, "/ready")
            .await
            .map(|r| r.status)
            .unwrap_or(0);
        phase
            .notes
            .push(format!("{}: /ready answers {ready}", envoy.name));
    }
}

async fn channel_tcp(address: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await?)
}

async fn channel_unix(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_owned();
    Ok(Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?)
}

fn sotw(node: Option<Node>, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        ..DiscoveryRequest::default()
    }
}

fn node(id: String) -> Node {
    Node {
        id,
        cluster: "attack".to_owned(),
        ..Node::default()
    }
}

/// One SotW call with `requests`: the first response's outcome, as a label.
async fn one_call(channel: Channel, requests: Vec<DiscoveryRequest>) -> String {
    let (tx, rx) = mpsc::channel(requests.len().max(1));
    for request in requests {
        let _ = tx.send(request).await;
    }
    let mut client = SecretDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let call = async {
        match client.stream_secrets(ReceiverStream::new(rx)).await {
            Err(status) => format!("{:?}", status.code()),
            Ok(response) => match response.into_inner().message().await {
                Ok(Some(_)) => "answered with secrets".to_owned(),
                Ok(None) => "ended without an answer".to_owned(),
                Err(status) => format!("{:?}", status.code()),
            },
        }
    };
    match tokio::time::timeout(PATIENCE, call).await {
        Ok(outcome) => outcome,
        Err(_) => format!("no answer within {}s", PATIENCE.as_secs()),
    }
}

/// A legitimate caller's certificate, asked for during a flood: how long it took, or why not.
async fn legitimate(address: SocketAddr) -> String {
    let started = Instant::now();
    let outcome = match channel_tcp(address).await {
        Ok(channel) => {
            one_call(
                channel,
                vec![sotw(Some(node("legit/caller".into())), &["default"])],
            )
            .await
        }
        Err(e) => format!("cannot connect: {e}"),
    };
    format!(
        "a legitimate caller during the flood: {outcome} after {:.2} s",
        started.elapsed().as_secs_f64()
    )
}

/// Calls without a node id, then silent calls held open while a legitimate caller asks.
async fn unauthenticated_streams(args: &Args, a: &Server) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let mut phase = Phase {
        name: format!(
            "unauthenticated streams: {} calls without a node id, then {} silent calls held {} s (A, maxStreams {})",
            args.streams,
            args.streams,
            args.hold.as_secs(),
            args.max_streams
        ),
        ..Phase::default()
    };
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(channel_tcp(a.sds).await?);
    }
    let mut calls = JoinSet::new();
    for i in 0..args.streams {
        let channel = channels[i % channels.len()].clone();
        calls.spawn(async move { one_call(channel, vec![sotw(None, &["default"])]).await });
        if calls.len() >= 256
            && let Some(done) = calls.join_next().await
        {
            phase.count(format!("no node id: {}", done?));
        }
    }
    while let Some(done) = calls.join_next().await {
        phase.count(format!("no node id: {}", done?));
    }

    // Silent calls: the request stream stays open and empty.
    let mut senders = Vec::new();
    let mut silent = JoinSet::new();
    for i in 0..args.streams {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
        senders.push(tx);
        let mut client = SecretDiscoveryServiceClient::new(channels[i % channels.len()].clone());
        let hold = args.hold;
        silent.spawn(async move {
            let opened = Instant::now();
            let call = async {
                match client.stream_secrets(ReceiverStream::new(rx)).await {
                    Err(status) => format!("{:?}", status.code()),
                    Ok(response) => match response.into_inner().message().await {
                        Ok(Some(_)) => "answered (unexpected)".to_owned(),
                        Ok(None) => "ended".to_owned(),
                        Err(status) => format!("{:?}", status.code()),
                    },
                }
            };
            match tokio::time::timeout(hold, call).await {
                Ok(outcome) => format!("silent: {outcome} after {}", bucket(opened.elapsed())),
                Err(_) => "silent: still open at the end of the hold".to_owned(),
            }
        });
    }
    // Give the silent calls time to reach the server, then a legitimate caller asks.
    tokio::time::sleep(Duration::from_millis(500).min(args.hold / 2)).await;
    phase.notes.push(legitimate(a.sds).await);
    while let Some(done) = silent.join_next().await {
        phase.count(done?);
    }
    drop(senders);
    phase.seconds = started.elapsed().as_secs_f64();
    Ok(phase)
}

/// A coarse label for when something happened: "<1 s", "1-5 s", "5-15 s", "15-35 s", ">35 s".
fn bucket(elapsed: Duration) -> String {
    let s = elapsed.as_secs_f64();
    match s {
        s if s < 1.0 => "<1 s",
        s if s < 5.0 => "1-5 s",
        s if s < 15.0 => "5-15 s",
        s if s < 35.0 => "15-35 s",
        _ => ">35 s",
    }
    .to_owned()
}

/// Reads (and discards) until the server closes the connection or `hold` passes.
async fn held<S: AsyncRead + Unpin>(mut io: S, hold: Duration) -> String {
    let opened = Instant::now();
    let mut buffer = [0u8; 4096];
    let wait = async {
        loop {
            match io.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(hold, wait).await {
        Ok(()) => format!("closed by the server after {}", bucket(opened.elapsed())),
        Err(_) => "still open at the end of the hold".to_owned(),
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Idle connections of every kind, all held at once.
async fn idle_connections(
    args: &Args,
    a: &Server,
    b: &Server,
    tls: &tokio_rustls::TlsConnector,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let mut phase = Phase {
        name: format!(
            "idle connections: {} of each kind held {} s",
            args.idle,
            args.hold.as_secs()
        ),
        ..Phase::default()
    };
    let hold = args.hold;
    let unix = a.unix.clone().context("server A has no Unix socket")?;
    let mut set = JoinSet::new();
    let mut failed: HashMap<&'static str, usize> = HashMap::new();
    for _ in 0..args.idle {
        match tokio::net::TcpStream::connect(a.sds).await {
            Ok(s) => {
                set.spawn(async move { format!("A TCP, nothing sent: {}", held(s, hold).await) });
            }
            Err(_) => {
                *failed
                    .entry("A TCP, nothing sent: connect failed")
                    .or_default() += 1
            }
        }
        match tokio::net::TcpStream::connect(a.sds).await {
            Ok(mut s) => {
                let _ = s.write_all(PREFACE).await;
                set.spawn(async move { format!("A TCP, preface only: {}", held(s, hold).await) });
            }
            Err(_) => {
                *failed
                    .entry("A TCP, preface only: connect failed")
                    .or_default() += 1
            }
        }
        match tokio::net::UnixStream::connect(&unix).await {
            Ok(s) => {
                set.spawn(async move { format!("A Unix, nothing sent: {}", held(s, hold).await) });
            }
            Err(_) => {
                *failed
                    .entry("A Unix, nothing sent: connect failed")
                    .or_default() += 1
            }
        }
        match tokio::net::TcpStream::connect(b.sds).await {
            Ok(s) => {
                set.spawn(async move { format!("B TLS, no ClientHello: {}", held(s, hold).await) });
            }
            Err(_) => {
                *failed
                    .entry("B TLS, no ClientHello: connect failed")
                    .or_default() += 1
            }
        }
        let connector = tls.clone();
        let address = b.sds;
        set.spawn(async move {
            let name = rustls_pki_types::ServerName::try_from("meshca.invalid").unwrap();
            let tcp = match tokio::net::TcpStream::connect(address).await {
                Ok(tcp) => tcp,
                Err(_) => return "B TLS, handshake then nothing: connect failed".to_owned(),
            };
            match tokio::time::timeout(PATIENCE, connector.connect(name, tcp)).await {
                Ok(Ok(stream)) => format!(
                    "B TLS, handshake then nothing: {}",
                    held(stream, hold).await
                ),
                Ok(Err(e)) => format!("B TLS, handshake then nothing: handshake failed ({e})"),
                Err(_) => "B TLS, handshake then nothing: handshake timed out".to_owned(),
            }
        });
    }
    for (outcome, count) in failed {
        *phase.outcomes.entry(outcome.to_owned()).or_default() += count;
    }
    // While they are all open, a legitimate caller asks.
    phase.notes.push(legitimate(a.sds).await);
    while let Some(done) = set.join_next().await {
        phase.count(done?);
    }
    phase.seconds = started.elapsed().as_secs_f64();
    Ok(phase)
}

/// Requests whose node id fills the message limit (minus room for the rest of the request).
async fn big_node_ids(args: &Args, a: &Server) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let size = MESSAGE_LIMIT - 1024;
    let mut phase = Phase {
        name: format!(
            "large node ids: {} requests, node id {} bytes (`ns/sa` followed by padding), half over TCP, half over the Unix socket (A)",
            args.big_node_requests, size
        ),
        ..Phase::default()
    };
    let tcp = channel_tcp(a.sds).await?;
    let unix = channel_unix(a.unix.as_deref().context("no Unix socket")?).await?;
    let mut set = JoinSet::new();
    for i in 0..args.big_node_requests {
        let mut id = format!("attack/big-{i}/");
        id.extend(std::iter::repeat_n('x', size - id.len()));
        let channel = if i % 2 == 0 {
            tcp.clone()
        } else {
            unix.clone()
        };
        set.spawn(async move { one_call(channel, vec![sotw(Some(node(id)), &["default"])]).await });
        if set.len() >= 8
            && let Some(done) = set.join_next().await
        {
            phase.count(done?);
        }
    }
    while let Some(done) = set.join_next().await {
        phase.count(done?);
    }
    phase.seconds = started.elapsed().as_secs_f64();
    Ok(phase)
}

/// Delta requests whose `initial_resource_versions` fills the message limit.
async fn delta_versions(args: &Args, a: &Server) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let mut versions = HashMap::new();
    let mut bytes = 0;
    while bytes < MESSAGE_LIMIT - 4096 {
        let name = format!("service-cert:attack/delta-{}", versions.len());
        bytes += name.len() + 8 + 6;
        versions.insert(name, "1".to_owned());
    }
    let mut phase = Phase {
        name: format!(
            "Delta initial_resource_versions: {} requests with {} entries each (A)",
            args.delta_requests,
            versions.len()
        ),
        ..Phase::default()
    };
    let channel = channel_tcp(a.sds).await?;
    let mut set = JoinSet::new();
    for i in 0..args.delta_requests {
        let request = DeltaDiscoveryRequest {
            node: Some(node(format!("attack/delta-{i}"))),
            type_url: SECRET_TYPE_URL.to_owned(),
            resource_names_subscribe: vec!["default".to_owned()],
            initial_resource_versions: versions.clone(),
            ..DeltaDiscoveryRequest::default()
        };
        let channel = channel.clone();
        set.spawn(async move {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.send(request).await;
            let mut client = SecretDiscoveryServiceClient::new(channel)
                .max_encoding_message_size(usize::MAX)
                .max_decoding_message_size(usize::MAX);
            let call = async {
                match client.delta_secrets(ReceiverStream::new(rx)).await {
                    Err(status) => format!("{:?}", status.code()),
                    Ok(response) => match response.into_inner().message().await {
                        Ok(Some(r)) => format!("answered with {} resources", r.resources.len()),
                        Ok(None) => "ended without an answer".to_owned(),
                        Err(status) => format!("{:?}", status.code()),
                    },
                }
            };
            let outcome = tokio::time::timeout(PATIENCE, call)
                .await
                .unwrap_or_else(|_| "no answer".to_owned());
            drop(tx);
            outcome
        });
        if set.len() >= 8
            && let Some(done) = set.join_next().await
        {
            phase.count(done?);
        }
    }
    while let Some(done) = set.join_next().await {
        phase.count(done?);
    }
    phase.seconds = started.elapsed().as_secs_f64();
    Ok(phase)
}

/// One stream NACKs its response `--nacks` times with a large `error_detail`; a last request
/// changing the names must still be answered (so every NACK was read).
async fn nack_storm(args: &Args, a: &Server) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let mut phase = Phase {
        name: format!(
            "NACK storm: {} NACKs of {} bytes on one stream (A)",
            args.nacks, args.nack_detail_bytes
        ),
        ..Phase::default()
    };
    let (tx, rx) = mpsc::channel(4);
    tx.send(sotw(Some(node("attack/nack".into())), &["default"]))
        .await?;
    let mut client = SecretDiscoveryServiceClient::new(channel_tcp(a.sds).await?)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let mut inbound = client
        .stream_secrets(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .context("no first response")??
        .context("the stream ended")?;
    let detail = "n".repeat(args.nack_detail_bytes);
    let mut sent = 0;
    for _ in 0..args.nacks {
        let nack = DiscoveryRequest {
            response_nonce: first.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: detail.clone(),
                details: Vec::new(),
            }),
            ..sotw(None, &["default"])
        };
        if tx.send(nack).await.is_err() {
            break;
        }
        sent += 1;
    }
    phase.count(format!("NACKs sent: {sent} (count)"));
    let _ = tx
        .send(DiscoveryRequest {
            response_nonce: first.nonce.clone(),
            version_info: first.version_info.clone(),
            ..sotw(None, &["default", "ROOTCA"])
        })
        .await;
    let outcome = match tokio::time::timeout(PATIENCE, inbound.message()).await {
        Ok(Ok(Some(_))) => "the stream answered the request after the NACKs".to_owned(),
        Ok(Ok(None)) => "the server ended the stream".to_owned(),
        Ok(Err(status)) => format!("the server ended the stream: {:?}", status.code()),
        Err(_) => "no answer after the NACKs".to_owned(),
    };
    phase.count(outcome);
    phase.seconds = started.elapsed().as_secs_f64();
    Ok(phase)
}

/// `meshca rotate leaves` with the admin token; Envoy must present a new certificate and have
/// rejected no SDS update.
async fn renewal(
    binary: &Path,
    a: &Server,
    token_file: &Path,
    envoy: &envoy::Envoy,
    before: &[String],
) -> Result<String, String> {
    let output = Command::new(binary)
        .args([
            "--set",
            &format!("admin.tokenFile={}", token_file.display()),
        ])
        .args(["rotate", "leaves", "--admin", &a.admin.to_string()])
        .env_remove("MESHCA_CONFIG")
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "meshca rotate leaves failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let deadline = Instant::now() + PATIENCE;
    let renewed = loop {
        // Renewed: a serial it did not hold appeared and one it held left (a bootstrap client
        // certificate read from a file stays).
        let now = envoy.leaf_serials().await;
        if now.iter().any(|s| !before.contains(s)) && before.iter().any(|s| !now.contains(s)) {
            break now;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "Envoy still presents {now:?} {}s after the forced renewal (before: {before:?})",
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stats = envoy::http_get(envoy.admin, "/stats?filter=sds")
        .await
        .map_err(|e| e.to_string())?
        .body;
    let rejected: u64 = stats
        .lines()
        .filter(|l| l.contains("update_rejected"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum();
    if rejected > 0 {
        return Err(format!("Envoy rejected {rejected} SDS update(s):\n{stats}"));
    }
    let ready = envoy::http_get(envoy.admin, "/ready")
        .await
        .map_err(|e| e.to_string())?
        .status;
    if ready != 200 {
        return Err(format!("Envoy /ready answers {ready}"));
    }
    Ok(format!(
        "ready throughout the run's end, renewed {} → {} (serials), 0 SDS updates rejected",
        before.join(","),
        renewed.join(",")
    ))
}

/// A TLS client with meshca's client certificate from `dir` (cert.pem, key.pem). The server's
/// certificate is not checked: the tool attacks a server it started itself, on loopback.
fn tls_connector(dir: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("cert.pem"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts any server certificate (signatures still checked): see [`tls_connector`].
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    //! A short adversarial run (small counts, a 3 s hold) so that CI exercises the tool end to
    //! end against the real binary and a real Envoy; the full run is documented in
    //! docs/SECURITY.md.

    use super::*;

    #[test]
    fn a_short_adversarial_run_keeps_envoy_served() {
        if envoy::binary().is_none() {
            return;
        }
        let args = Args::parse_from([
            "sds_attack",
            "--streams",
            "40",
            "--max-streams",
            "20",
            "--idle",
            "5",
            "--hold",
            "3s",
            "--big-node-requests",
            "2",
            "--delta-requests",
            "2",
            "--nacks",
            "5",
            "--nack-detail-bytes",
            "4096",
        ]);
        if args.meshca.is_none() && meshca_binary(&args).is_err() {
            // `cargo test --example sds_attack` alone does not build the binary; the workspace
            // test run (scripts/test.sh) does.
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{}",
                meshca_binary(&args).unwrap_err()
            );
            eprintln!("SKIPPED: {}", meshca_binary(&args).unwrap_err());
            return;
        }
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let report = runtime.block_on(run(&args)).unwrap();
        println!("{report}");
        assert_eq!(report.envoys.len(), 2, "{report}");
        assert!(report.envoys.iter().all(|(_, r)| r.is_ok()), "{report}");
        assert_eq!(report.phases.len(), 5, "{report}");
        for phase in &report.phases {
            assert!(!phase.notes.iter().any(|n| n.contains("DIED")), "{report}");
        }
        assert!(report.passed(), "{report}");
    }
}
