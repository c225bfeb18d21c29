//! Throughput of meshca's Vault provider against the floor of a raw HTTP loop.
//!
//! ```text
//! cargo run --release -p meshca-vault --example vault_bench
//! ```
//!
//! Starts an OpenBao dev server (the test support code; or uses `MESHCA_BENCH_VAULT_ADDR` +
//! `MESHCA_BENCH_VAULT_TOKEN`, with PKI at `pki` and role `meshca` as `deploy/dev/vault.sh`
//! sets them up), then measures, at concurrency 1 and 16, a fixed number of requests
//! (`MESHCA_BENCH_REQUESTS`, default 1000) of:
//! - raw: one reqwest client POSTing the same prebuilt CSR to the endpoint meshca signs with —
//!   `pki/issuer/<id>/sign/meshca`, the issuer meshca pins (so a default issuer changed in Vault
//!   signs nothing before proxies trust its root), or `pki/sign/meshca` when it pins none — and
//!   reading the answer: the floor no client can beat;
//! - meshca: `VaultProvider::issue` with a prebuilt key and request, which makes and signs a
//!   CSR per call and parses the answer into a chain, as the daemon does;
//! - raw + fresh CSR: the raw loop, but making a new CSR (`LeafKey::csr_der`) per request —
//!   to tell the cost of the CSR from the cost of the provider around it.
//!
//! The three run in turn, rotating which goes first, `ROUNDS` times; the best rate of each and
//! the median of the per-round ratios are reported, so a burst of other work on the machine
//! hurts no side alone. Beside the rates, the CPU time per request of this process (the
//! client) and of OpenBao (when the benchmark started it), summed over their threads from
//! `/proc/<pid>/task/*/schedstat` (nanoseconds): what other work on the machine moves least.
//! The figures are printed and written to `docs/BENCHMARKS.md` between
//! `<!-- vault-bench:begin -->` and `<!-- vault-bench:end -->`.
//!
//! `MESHCA_BENCH_PROFILE=raw|meshca|fresh` runs only that loop, at concurrency 1, for
//! `MESHCA_BENCH_REQUESTS` requests, and writes nothing: a loop to run under `perf record`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshca_provider::x509::pem_block;
use meshca_provider::{
    CertificateProvider, IssueRequest, KeyType, LeafKey, LeafSpec, SpiffeId, TrustDomain,
};
use meshca_test_support::bao as support;
use meshca_vault::{Secret, VaultProvider, VaultSettings};
use serde_json::json;

const CONCURRENCY: [usize; 2] = [1, 16];
const ROUNDS: usize = 5;
const WARMUP: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Meshca,
    RawFreshCsr,
}

const MODES: [Mode; 3] = [Mode::Raw, Mode::Meshca, Mode::RawFreshCsr];

/// CPU time used so far by process `pid`, summed over its live threads (nanoseconds on the CPU,
/// the first field of each thread's `schedstat`); zero when unreadable.
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// One timed loop: its rate and the CPU time per request of the client and of OpenBao.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rate: f64,
    client_us: f64,
    bao_us: f64,
}

/// Everything a worker needs, shared.
struct Bench {
    client: reqwest::Client,
    url: String,
    token: String,
    body: Vec<u8>,
    provider: VaultProvider,
    spec: LeafSpec,
    key: LeafKey,
    /// OpenBao's process, when the benchmark started it.
    bao_pid: Option<u32>,
}

impl Bench {
    fn sign_body(&self, csr_pem: String) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "csr": csr_pem,
            "common_name": self.spec.common_name,
            "alt_names": "bench.bench.svc",
            "uri_sans": self.spec.spiffe_id.as_ref().unwrap().to_string(),
            "ttl": "3600s",
            "format": "pem",
            "exclude_cn_from_sans": false,
        }))
        .unwrap()
    }

    async fn raw(&self, body: Vec<u8>) {
        let response = self
            .client
            .post(&self.url)
            .header("X-Vault-Token", &self.token)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("raw sign");
        assert!(
            response.status().is_success(),
            "raw sign: {}",
            response.status()
        );
        response.bytes().await.expect("raw sign body");
    }

    async fn one(&self, mode: Mode) {
        match mode {
            Mode::Raw => self.raw(self.body.clone()).await,
            Mode::RawFreshCsr => {
                let csr = pem_block(
                    "CERTIFICATE REQUEST",
                    &self.key.csr_der(&self.spec).unwrap(),
                );
                self.raw(self.sign_body(csr)).await;
            }
            Mode::Meshca => {
                let request = IssueRequest::generated(&self.spec, &self.key);
                self.provider.issue(&request).await.expect("meshca issue");
            }
        }
    }

    /// `requests` requests shared by `concurrency` workers.
    async fn run(self: &Arc<Self>, mode: Mode, concurrency: usize, requests: usize) -> Run {
        let remaining = Arc::new(AtomicUsize::new(requests));
        let bao_cpu = || self.bao_pid.map_or(Duration::ZERO, cpu_time);
        let (client_before, bao_before) = (cpu_time(std::process::id()), bao_cpu());
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (bench, remaining) = (self.clone(), remaining.clone());
                tokio::spawn(async move {
                    while remaining
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        bench.one(mode).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        let elapsed = started.elapsed();
        let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / requests as f64;
        Run {
            rate: requests as f64 / elapsed.as_secs_f64(),
            client_us: per_request(cpu_time(std::process::id()).saturating_sub(client_before)),
            bao_us: per_request(bao_cpu().saturating_sub(bao_before)),
        }
    }
}

struct Figures {
    concurrency: usize,
    best: [f64; 3],
    /// Median over rounds of the client's and OpenBao's CPU per request, per loop (µs).
    client_us: [f64; 3],
    bao_us: [f64; 3],
    /// Median over rounds of meshca / raw and meshca / (raw + fresh CSR).
    median_vs_raw: f64,
    median_vs_fresh: f64,
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::var("MESHCA_BENCH_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);

    let (server, address, token) = match (
        std::env::var("MESHCA_BENCH_VAULT_ADDR"),
        std::env::var("MESHCA_BENCH_VAULT_TOKEN"),
    ) {
        (Ok(address), Ok(token)) => (None, address, token),
        _ => {
            let bao = support::Bao::dev().await;
            bao.pki("pki", "meshca bench root").await;
            let (address, token) = (bao.address.clone(), bao.root_token.clone());
            (Some(bao), address, token)
        }
    };
    let settings = VaultSettings {
        address: Some(address.clone()),
        token: Some(Secret::new(token.clone())),
        ..VaultSettings::default()
    };
    let provider = VaultProvider::connect(&settings).await.expect("connect");
    let id = SpiffeId::from_short("bench/bench", &TrustDomain::default()).unwrap();
    let spec = LeafSpec::workload(
        &id,
        &["bench.bench.svc".parse().unwrap()],
        Duration::from_secs(3600),
    );
    let key = LeafKey::generate(KeyType::P256).unwrap();
    // The raw loop calls what meshca calls: OpenBao answers the issuer-pinned path measurably
    // slower than `sign/<role>` (about 10% in a plain HTTP loop), a cost of the pinning, not of
    // meshca's client.
    let url = match provider.signing_issuer() {
        Some(issuer) => format!("{address}/v1/pki/issuer/{}/sign/meshca", issuer.id),
        None => format!("{address}/v1/pki/sign/meshca"),
    };
    println!("raw loop: POST {url}");
    let mut bench = Bench {
        client: support::http_client(),
        url: url.clone(),
        token,
        body: Vec::new(),
        provider,
        spec,
        key,
        bao_pid: server.as_ref().map(support::Bao::pid),
    };
    bench.body = bench.sign_body(pem_block(
        "CERTIFICATE REQUEST",
        &bench.key.csr_der(&bench.spec).unwrap(),
    ));
    let bench = Arc::new(bench);

    let csr_cost = {
        let started = Instant::now();
        for _ in 0..200 {
            bench.key.csr_der(&bench.spec).unwrap();
        }
        started.elapsed() / 200
    };
    println!(
        "CSR generation alone: {} µs per P-256 CSR",
        csr_cost.as_micros()
    );

    if let Ok(only) = std::env::var("MESHCA_BENCH_PROFILE") {
        let mode = match only.as_str() {
            "raw" => Mode::Raw,
            "meshca" => Mode::Meshca,
            "fresh" => Mode::RawFreshCsr,
            other => panic!("MESHCA_BENCH_PROFILE={other}: raw, meshca or fresh"),
        };
        bench.run(mode, 1, WARMUP).await;
        let run = bench.run(mode, 1, requests).await;
        println!(
            "{only}: {:.1}/s, client CPU {:.1} µs/request, OpenBao CPU {:.1} µs/request",
            run.rate, run.client_us, run.bao_us
        );
        return;
    }

    let mut figures = Vec::new();
    for concurrency in CONCURRENCY {
        for mode in MODES {
            bench.run(mode, concurrency, WARMUP).await;
        }
        let mut best = [0.0f64; 3];
        let (mut vs_raw, mut vs_fresh) = (Vec::new(), Vec::new());
        let (mut client_us, mut bao_us) =
            ([(); 3].map(|()| Vec::new()), [(); 3].map(|()| Vec::new()));
        for round in 0..ROUNDS {
            let mut runs = [Run::default(); 3];
            for i in 0..MODES.len() {
                let slot = (i + round) % MODES.len();
                runs[slot] = bench.run(MODES[slot], concurrency, requests).await;
            }
            let rates = runs.map(|run| run.rate);
            println!(
                "concurrency {concurrency:>2}: raw {:>7.1}/s  meshca {:>7.1}/s  raw+fresh CSR \
                 {:>7.1}/s  meshca/raw {:.1}%  client CPU µs/request {:.1} / {:.1} / {:.1}  \
                 OpenBao {:.1} / {:.1} / {:.1}",
                rates[0],
                rates[1],
                rates[2],
                rates[1] / rates[0] * 100.0,
                runs[0].client_us,
                runs[1].client_us,
                runs[2].client_us,
                runs[0].bao_us,
                runs[1].bao_us,
                runs[2].bao_us,
            );
            for (best, rate) in best.iter_mut().zip(rates) {
                *best = best.max(rate);
            }
            for (slot, run) in runs.iter().enumerate() {
                client_us[slot].push(run.client_us);
                bao_us[slot].push(run.bao_us);
            }
            vs_raw.push(rates[1] / rates[0]);
            vs_fresh.push(rates[1] / rates[2]);
        }
        figures.push(Figures {
            concurrency,
            best,
            client_us: client_us.map(median),
            bao_us: bao_us.map(median),
            median_vs_raw: median(vs_raw),
            median_vs_fresh: median(vs_fresh),
        });
    }

    let mut table = String::from(
        "| concurrency | raw (sign/s) | meshca `issue` (sign/s) | raw + fresh CSR (sign/s) | \
         meshca / raw, best | meshca / raw, median | meshca / (raw + fresh CSR), median | \
         client CPU µs/request: raw / meshca / raw + fresh CSR | OpenBao CPU µs/request |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in &figures {
        let [raw, meshca, fresh] = f.best;
        println!(
            "concurrency {}: best raw {raw:.0}/s, meshca {meshca:.0}/s, raw+fresh CSR \
             {fresh:.0}/s; meshca/raw best {:.1}%, median {:.1}%; meshca/(raw+fresh CSR) \
             median {:.1}%",
            f.concurrency,
            meshca / raw * 100.0,
            f.median_vs_raw * 100.0,
            f.median_vs_fresh * 100.0
        );
        let [client_raw, client_meshca, client_fresh] = f.client_us;
        let [bao_raw, bao_meshca, bao_fresh] = f.bao_us;
        println!(
            "concurrency {}: client CPU per request (medians) raw {client_raw:.1} µs, meshca \
             {client_meshca:.1} µs, raw+fresh CSR {client_fresh:.1} µs; OpenBao {bao_raw:.1} / \
             {bao_meshca:.1} / {bao_fresh:.1} µs",
            f.concurrency
        );
        writeln!(
            table,
            "| {} | {raw:.0} | {meshca:.0} | {fresh:.0} | {:.1}% | {:.1}% | {:.1}% | \
             {client_raw:.0} / {client_meshca:.0} / {client_fresh:.0} | \
             {bao_raw:.0} / {bao_meshca:.0} / {bao_fresh:.0} |",
            f.concurrency,
            meshca / raw * 100.0,
            f.median_vs_raw * 100.0,
            f.median_vs_fresh * 100.0
        )
        .unwrap();
    }

    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year]-[month]-[day]"))
        .unwrap();
    let bao_version = std::process::Command::new(support::bao_binary())
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let section = format!(
        "## Vault / OpenBao provider\n\n\
         Command: `cargo run --release -p meshca-vault --example vault_bench` ({requests} \
         requests per run; {ROUNDS} rounds of the three loops, rotating which goes first; \
         {WARMUP} warm-up requests each)\n\n\
         Date: {date}. Machine: {nproc} CPUs (nproc), shared by OpenBao and the benchmark. \
         Server: {bao_version}, dev mode on loopback, EC P-256 root, role with \
         `no_store=true`. Rates on a shared machine move by about ±10% between runs while \
         other work runs; the per-round ratios are the steadier figures.\n\n\
         - raw: one reqwest client POSTing the same prebuilt CSR to the endpoint meshca signs \
         with, `{raw_path}` (the floor). meshca pins the issuer it signs with \
         (`issuer/<id>/sign/<role>`, so that a default issuer changed in Vault signs nothing \
         before proxies trust its root); OpenBao answers that path about 10% slower than \
         `sign/<role>` in a plain HTTP loop, so the raw loop calls the same path.\n\
         - meshca: `VaultProvider::issue` with a prebuilt P-256 key: a fresh CSR signed per \
         call, the answer parsed into a chain, as the daemon does.\n\
         - raw + fresh CSR: the raw loop making a new CSR per request (CSR generation alone: \
         {csr_us} µs), to separate the CSR's cost from the provider's.\n\
         - CPU µs/request: medians over the rounds of the CPU time per request of the \
         benchmark's process (the client: its HTTP client, and for meshca the provider) and of \
         OpenBao's, each summed over the process's threads (`/proc/<pid>/task/*/schedstat`); \
         other work on the machine moves these less than the rates.\n\n{table}",
        csr_us = csr_cost.as_micros(),
        raw_path = raw_path(&url),
    );
    write_section(&section);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn write_section(section: &str) {
    const BEGIN: &str = "<!-- vault-bench:begin -->";
    const END: &str = "<!-- vault-bench:end -->";
    let path = support::workspace_root().join("docs/BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nFigures with the commands that produced them.\n".to_owned()
    });
    let block = format!("{BEGIN}\n{section}{END}");
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!(
                "{}{block}{}",
                &existing[..begin],
                &existing[end + END.len()..]
            )
        }
        _ => format!("{}\n\n{block}\n", existing.trim_end()),
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, updated).unwrap();
    println!("wrote {}", path.display());
}

/// The path of `url` after `/v1/`, with an issuer ID shown as `<id>`.
fn raw_path(url: &str) -> String {
    let path = url.split_once("/v1/").map_or(url, |(_, path)| path);
    match path.split_once("/issuer/") {
        Some((mount, rest)) => {
            let after = rest.split_once('/').map_or("", |(_, after)| after);
            format!("{mount}/issuer/<id>/{after}")
        }
        None => path.to_owned(),
    }
}
