//! Throughput of the Istio CA API (`IstioCertificateService/CreateCertificate`) against the floors
//! it is judged by.
//!
//! ```text
//! cargo build --release --bin meshca --example istio_bench
//! target/release/examples/istio_bench            # --clients 16,64 --rounds 5
//! ```
//!
//! **Tresor.** A real `meshca serve` process (the release binary next to this example's
//! directory, or `--meshca`) with the Istio CA listener on loopback, its CA a Tresor directory
//! store made by this tool before the server starts. N workloads, each with a client
//! certificate from that CA and a few P-256 CSRs made before anything is timed, call
//! CreateCertificate over mTLS, one HTTP/2 connection each (the tonic client generated from
//! `proto/`), each waiting for its answer before it asks again. Against it, the **floor**: a raw ring loop doing the
//! cryptographic work of each certificate (verify the CSR's signature, write the leaf's DER in
//! Tresor's profile, sign it with the same CA key; `floor.rs`) on as many threads as the server
//! has runtime workers (tokio's default: one per CPU).
//!
//! **Vault.** The same with `certificateProvider.kind=vault` against an OpenBao dev server (the
//! test support's harness: `$MESHCA_BAO` or `.tools/bin/bao`), and as the floor, a raw loop
//! POSTing the same CSRs to `pki/sign/meshca` with the body meshca's provider sends, at the
//! same concurrency, from one pooled HTTP client.
//!
//! Why a separate process: it is the daemon as deployed (its runtime, listener, TLS and logging
//! as `meshca serve` sets them up), its CPU time is read apart from the clients' from
//! `/proc/<pid>/stat`, and the clients' runtime does not share its scheduler. The clients run
//! on one current-thread runtime in this process, as cheaply as tonic allows; their CPU is
//! taken from the same two cores, so it is reported beside the server's.
//!
//! Each N: a warm-up (and one checked answer per client: the leaf names exactly the caller and
//! certifies the CSR's key, the root last), then `--rounds` rounds of the floor and meshca,
//! alternating which goes first; the ratio is taken per round and its median reported. The
//! figures are printed and written to docs/BENCHMARKS.md between `<!-- istio-bench:begin -->`
//! and `<!-- istio-bench:end -->` (unless `--no-write`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod floor;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use clap::{Parser, ValueEnum};
use meshca_provider::{SharedProvider, SystemClock};
use meshca_test_support::bao::Bao;
use meshca_test_support::daemon::MeshcaServe;

use crate::clients::{GrpcClient, RawVault, Workload};
use crate::floor::Floor;
use crate::report::{Backend, Load, Report, Round, Series};

/// The name the Istio CA listener's certificate carries, as istio-agent checks it.
const SERVER_NAME: &str = "istiod.istio-system.svc";

#[derive(Debug, Parser)]
struct Args {
    /// The meshca binary (default: `meshca` next to this example's directory).
    #[arg(long)]
    meshca: Option<PathBuf>,
    /// Concurrent clients (one connection each), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    clients: Vec<usize>,
    /// Certificates per timed phase, Tresor.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Certificates per timed phase, Vault.
    #[arg(long, default_value_t = 1000)]
    vault_requests: usize,
    /// Rounds (each: the floor and meshca, alternating which goes first).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// CSRs per client (each for a new P-256 key), sent in turn.
    #[arg(long, default_value_t = 4)]
    csrs: usize,
    /// Which backends.
    #[arg(long, value_enum, default_value = "both")]
    backend: Which,
    /// Print the figures only; leave docs/BENCHMARKS.md alone.
    #[arg(long)]
    no_write: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Tresor,
    Vault,
    Both,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = run(&args)?;
    let section = report.markdown();
    println!("{section}");
    if !args.no_write {
        report::write_section(&section)?;
    }
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<Report> {
    ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|n| *n > 0),
        "--clients needs at least one count above zero"
    );
    ensure!(
        args.rounds > 0 && args.csrs > 0,
        "--rounds and --csrs must be at least 1"
    );
    let binary = meshca_binary(args)?;
    // The clients' runtime: one thread, so that what they cost is easy to read and bounded.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let load_before = Load::now();
    let mut series = Vec::new();
    if args.backend != Which::Vault {
        series.extend(runtime.block_on(tresor(args, &binary))?);
    }
    if args.backend != Which::Tresor {
        series.extend(runtime.block_on(vault(args, &binary))?);
    }
    Ok(Report {
        series,
        rounds: args.rounds,
        requests: args.requests,
        vault_requests: args.vault_requests,
        csrs_per_client: args.csrs,
        threads: server_threads(),
        load_before,
        load_after: Load::now(),
    })
}

/// The meshca binary to measure.
fn meshca_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match &args.meshca {
        Some(path) => path.clone(),
        // target/<profile>/examples/istio_bench[-hash] → target/<profile>/meshca
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

/// The worker threads of `meshca serve`'s runtime (tokio's default: one per CPU).
fn server_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `meshca serve` with the Istio CA listener on a free loopback port and `settings`; waits
/// until it is ready and the listener accepts.
async fn start_server(
    binary: &Path,
    global: &[String],
    settings: &[String],
) -> (MeshcaServe, SocketAddr) {
    let istio = SocketAddr::from(([127, 0, 0, 1], meshca_test_support::free_port()));
    let mut builder = MeshcaServe::builder()
        .binary(binary)
        .args(global)
        .sds()
        .admin()
        .set("istio.enabled=true")
        .set(&format!("istio.listen={istio}"))
        .set(&format!("istio.dnsNames={SERVER_NAME}"));
    for setting in settings {
        builder = builder.set(setting);
    }
    let mut server = builder.start();
    server.wait_ready().await;
    server.wait_listening(istio.port()).await;
    (server, istio)
}

async fn tresor(args: &Args, binary: &Path) -> anyhow::Result<Vec<Series>> {
    let dir = tempfile::tempdir()?;
    let ca_dir = dir.path().join("ca");
    let store = meshca_tresor::DirectoryStore::new(&ca_dir);
    let (authority, _) =
        meshca_tresor::bootstrap(&store, &meshca_tresor::RootOptions::default(), &SystemClock)
            .await?;
    let roots_pem = authority.trust_bundle().to_pem();
    let provider: SharedProvider =
        Arc::new(meshca_tresor::Tresor::new(authority, Arc::new(SystemClock)));
    let most = args.clients.iter().copied().max().unwrap_or(1);
    let workloads = clients::workloads(&provider, most, args.csrs).await;
    let floor = Floor::from_ca_dir(&ca_dir);
    let ca_dir_arg = ca_dir.display().to_string();
    let (server, address) = start_server(binary, &["--ca-dir".to_owned(), ca_dir_arg], &[]).await;
    eprintln!(
        "tresor: meshca serve (pid {}) on {address}; floor on {} threads",
        server.pid(),
        server_threads()
    );

    let mut all = Vec::new();
    for &n in &args.clients {
        let clients = clients::connect(address, SERVER_NAME, &roots_pem, &workloads[..n]).await;
        let csrs = clients::floor_csrs(&workloads[..n]);
        let meter = Meter {
            server: server.pid(),
            bao: None,
        };
        warm_up(&clients, &workloads, &roots_pem, args.requests / 10).await;
        floor.run(&csrs, args.requests / 10, server_threads());

        let mut rounds = Vec::new();
        for round in 0..args.rounds {
            let mut phases = [Measured::default(); 2];
            for step in 0..2 {
                let which = (step + round) % 2;
                let before = meter.now();
                phases[which] = if which == 0 {
                    let wall = floor.run(&csrs, args.requests, server_threads());
                    meter.since(before, wall)
                } else {
                    let wall = clients::run_grpc(&clients, args.requests).await;
                    meter.since(before, wall)
                };
            }
            let round = Round::new(args.requests, phases[0], phases[1]);
            eprintln!("tresor, {n} clients, round {}: {round}", rounds.len() + 1);
            rounds.push(round);
        }
        all.push(Series {
            backend: Backend::Tresor,
            clients: n,
            rounds,
        });
    }
    Ok(all)
}

async fn vault(args: &Args, binary: &Path) -> anyhow::Result<Vec<Series>> {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca istio bench root").await;
    let settings = bao.settings(&bao.root_token);
    let provider: SharedProvider = Arc::new(
        meshca_vault::VaultProvider::connect(&settings)
            .await
            .context("cannot reach the OpenBao dev server")?,
    );
    let roots_pem = provider.trust_bundle().await?.to_pem();
    let most = args.clients.iter().copied().max().unwrap_or(1);
    let workloads = clients::workloads(&provider, most, args.csrs).await;
    let raw = Arc::new(RawVault::new(&bao.address, &bao.root_token, &workloads));
    let (server, address) = start_server(
        binary,
        &[],
        &[
            "certificateProvider.kind=vault".to_owned(),
            "vault.host=127.0.0.1".to_owned(),
            format!("vault.port={}", bao.port),
            format!("vault.token={}", bao.root_token),
        ],
    )
    .await;
    eprintln!(
        "vault: meshca serve (pid {}) on {address}, OpenBao at {}",
        server.pid(),
        bao.address
    );

    let mut all = Vec::new();
    for &n in &args.clients {
        let clients = clients::connect(address, SERVER_NAME, &roots_pem, &workloads[..n]).await;
        let requests = args.vault_requests;
        let meter = Meter {
            server: server.pid(),
            bao: Some(bao.pid()),
        };
        warm_up(&clients, &workloads, &roots_pem, requests / 10).await;
        raw.run(n, requests / 10).await;

        let mut rounds = Vec::new();
        for round in 0..args.rounds {
            let mut phases = [Measured::default(); 2];
            for step in 0..2 {
                let which = (step + round) % 2;
                let before = meter.now();
                let wall = if which == 0 {
                    raw.run(n, requests).await
                } else {
                    clients::run_grpc(&clients, requests).await
                };
                phases[which] = meter.since(before, wall);
            }
            let round = Round::new(requests, phases[0], phases[1]);
            eprintln!("vault, {n} clients, round {}: {round}", rounds.len() + 1);
            rounds.push(round);
        }
        all.push(Series {
            backend: Backend::Vault,
            clients: n,
            rounds,
        });
    }
    drop(server);
    drop(bao);
    Ok(all)
}

/// One checked answer per client, then `requests` untimed calls.
async fn warm_up(clients: &[GrpcClient], workloads: &[Workload], roots_pem: &str, requests: usize) {
    for client in clients {
        client.clone().check(workloads, roots_pem).await;
    }
    clients::run_grpc(clients, requests).await;
}

/// The processes whose CPU time a phase is charged with.
struct Meter {
    server: u32,
    bao: Option<u32>,
}

/// A phase's wall time, and the CPU time each process spent over it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) wall: Duration,
    /// This tool: the floor's threads, or the clients.
    pub(crate) tool: Duration,
    pub(crate) server: Duration,
    pub(crate) bao: Duration,
}

impl Meter {
    fn now(&self) -> Measured {
        Measured {
            wall: Duration::ZERO,
            tool: cpu_time(std::process::id()),
            server: cpu_time(self.server),
            bao: self.bao.map_or(Duration::ZERO, cpu_time),
        }
    }

    fn since(&self, before: Measured, wall: Duration) -> Measured {
        let now = self.now();
        Measured {
            wall,
            tool: now.tool.saturating_sub(before.tool),
            server: now.server.saturating_sub(before.server),
            bao: now.bao.saturating_sub(before.bao),
        }
    }
}

/// CPU time (user + system) process `pid` has used so far, from /proc/<pid>/stat (10 ms
/// resolution).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces), utime and stime are the 12th and 13th
    // fields, in clock ticks (USER_HZ, 100 on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

#[cfg(test)]
mod tests {
    //! A short run of the whole tool (two clients, a few dozen certificates, one round), so
    //! that CI runs it end to end against the real binary and OpenBao; the figures are the
    //! release build's, in docs/BENCHMARKS.md.

    use super::*;

    #[test]
    fn a_short_run_measures_both_backends() {
        let args = Args::parse_from([
            "istio_bench",
            "--clients",
            "2",
            "--requests",
            "40",
            "--vault-requests",
            "20",
            "--rounds",
            "1",
            "--csrs",
            "2",
            "--no-write",
        ]);
        if meshca_binary(&args).is_err() {
            // `cargo test --example istio_bench` alone does not build the binary; the
            // workspace test run (scripts/test.sh) does.
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{}",
                meshca_binary(&args).unwrap_err()
            );
            eprintln!("SKIPPED: {}", meshca_binary(&args).unwrap_err());
            return;
        }
        let report = run(&args).unwrap();
        let section = report.markdown();
        assert_eq!(report.series.len(), 2, "{section}");
        for series in &report.series {
            assert_eq!(series.rounds.len(), 1, "{section}");
            let round = &series.rounds[0];
            assert!(
                round.baseline_rate > 0.0 && round.meshca_rate > 0.0,
                "{section}"
            );
        }
        assert!(
            section.starts_with("<!-- istio-bench:begin -->"),
            "{section}"
        );
        assert!(section.ends_with("<!-- istio-bench:end -->\n"), "{section}");
    }
}
