//! Vault upstream-mode benchmark: `cargo bench --bench vault_upstream` (needs OpenBao, found
//! like the tests find it: `$MESHCA_BAO` or `.tools/bin/bao`).
//!
//! Measures, in one run and on one thread, against one OpenBao dev server started here:
//! (a) the floor — a raw ring loop generating a P-256 key and making one ECDSA P-256 signature;
//! (b) meshca issuing a fresh-key leaf through the cache with `vault.mode: upstream` (leaves
//! signed locally under an intermediate OpenBao signed); (c) a raw `pki/sign` loop to the same
//! OpenBao (one reqwest client posting a prebuilt CSR, one request at a time). (a) and (b)
//! alternate in short blocks, as in `benches/issuance.rs`; (c) runs after them in each round.
//! The figures: (b)/(a), and (b) against (c) both in wall time on one thread and per CPU
//! second — (c)'s CPU is the bench process's and OpenBao's together, (b)'s the bench's one
//! thread's (OpenBao does nothing for it). Results replace the section between the
//! markers in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca::cache::{CacheSettings, CertKey, CertificateCache, Purpose};
use meshca::time::TokioClock;
use meshca_provider::x509::pem_block;
use meshca_provider::{Clock, KeyType, LeafKey, LeafSpec, SpiffeId, TrustDomain};
use meshca_test_support::bao::Bao;
use meshca_vault::{UpstreamPolicy, VaultMode, VaultUpstream};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use serde_json::json;

const ROUNDS: usize = 7;
const ISSUES_PER_ROUND: usize = 2_000;
/// Iterations of (a), then of (b), back to back within a round.
const BLOCK: usize = 100;
/// `pki/sign` calls per round.
const SIGNS_PER_ROUND: usize = 1_000;

fn main() {
    common::on_one_thread(run());
}

/// CPU time of this process's main thread so far, to the nanosecond, from
/// `/proc/self/schedstat`: (b) runs on that one thread, in blocks too short for `stat`'s ticks.
fn main_thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/schedstat").expect("/proc/self/schedstat");
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("schedstat format");
    Duration::from_nanos(nanos)
}

/// CPU time (user + system, all threads) of process `pid` so far, from `/proc/<pid>/stat`, in
/// 10 ms ticks: (c) runs long enough per round for them.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, whole line).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports in USER_HZ, 100 on every architecture meshca runs on.
    Duration::from_millis(ticks * 10)
}

async fn run() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca bench root").await;
    let bao_pid = bao.pid().to_string();

    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mut settings = bao.settings(&bao.root_token);
    settings.mode = VaultMode::Upstream;
    let cache_settings = CacheSettings {
        lifetime: Duration::from_secs(3600),
        ..CacheSettings::default()
    };
    let policy = UpstreamPolicy {
        trust_domain: TrustDomain::default(),
        renew_fraction: cache_settings.renew_fraction,
        jitter_fraction: cache_settings.jitter_fraction,
        backoff_initial: cache_settings.backoff_initial,
        backoff_max: cache_settings.backoff_max,
        longest_leaf: cache_settings.lifetime,
        clock_skew: Duration::from_secs(60),
        bundle_lead: cache_settings.trust_refresh * 2,
    };
    let provider = VaultUpstream::connect(&settings, None, policy, clock.clone())
        .await
        .expect("upstream mode");
    let cache = CertificateCache::new(Arc::new(provider), cache_settings, clock);
    cache.refresh_trust_bundle().await.expect("the bundle");

    // (c): the same signature OpenBao would make for a leaf, asked the cheapest way.
    let client = meshca_test_support::bao::http_client();
    let url = format!("{}/v1/pki/sign/meshca", bao.address);
    let id = SpiffeId::from_short("bench/raw", &TrustDomain::default()).unwrap();
    let spec = LeafSpec::workload(&id, &[], Duration::from_secs(3600));
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let body = serde_json::to_vec(&json!({
        "csr": pem_block("CERTIFICATE REQUEST", &key.csr_der(&spec).unwrap()),
        "uri_sans": id.to_string(),
        "ttl": "3600s",
        "format": "pem",
    }))
    .unwrap();
    let sign = async || {
        let response = client
            .post(&url)
            .header("X-Vault-Token", &bao.root_token)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("pki/sign");
        assert!(response.status().is_success(), "{}", response.status());
        std::hint::black_box(response.bytes().await.expect("pki/sign body"));
    };

    let rng = SystemRandom::new();
    let ca_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("a CA key");
    let ca_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca_pkcs8.as_ref(), &rng)
        .expect("the CA key");
    let tbs = vec![0x5a_u8; 420];
    let trust_domain = TrustDomain::default();
    let me = std::process::id().to_string();
    let mut next_identity = 0_usize;
    let mut rounds = Vec::new();

    for round in 0..=ROUNDS {
        let (mut raw_time, mut meshca_time) = (Duration::ZERO, Duration::ZERO);
        let (mut raw_cpu, mut meshca_cpu) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..ISSUES_PER_ROUND / BLOCK {
            let cpu = main_thread_cpu();
            let started = Instant::now();
            for _ in 0..BLOCK {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                    .expect("keygen");
                std::hint::black_box(pkcs8);
                std::hint::black_box(ca_key.sign(&rng, &tbs).expect("sign"));
            }
            raw_time += started.elapsed();
            raw_cpu += main_thread_cpu() - cpu;

            let keys: Vec<CertKey> = (0..BLOCK)
                .map(|_| {
                    next_identity += 1;
                    let name = format!("bench/sa-{next_identity}");
                    let id = SpiffeId::from_short(&name, &trust_domain).expect("identity");
                    CertKey::new(id, Purpose::Default)
                })
                .collect();
            let cpu = main_thread_cpu();
            let started = Instant::now();
            for key in &keys {
                std::hint::black_box(cache.certificate(key).await.expect("issuance"));
                tokio::task::yield_now().await;
            }
            meshca_time += started.elapsed();
            meshca_cpu += main_thread_cpu() - cpu;
        }

        let (cpu, bao_cpu) = (cpu_time(&me), cpu_time(&bao_pid));
        let started = Instant::now();
        for _ in 0..SIGNS_PER_ROUND {
            sign().await;
        }
        let sign_time = started.elapsed();
        let sign_cpu = (cpu_time(&me) - cpu) + (cpu_time(&bao_pid) - bao_cpu);

        let figures = Round {
            raw: common::rate(ISSUES_PER_ROUND, raw_time),
            upstream: common::rate(ISSUES_PER_ROUND, meshca_time),
            raw_per_cpu: common::rate(ISSUES_PER_ROUND, raw_cpu),
            sign: common::rate(SIGNS_PER_ROUND, sign_time),
            upstream_per_cpu: common::rate(ISSUES_PER_ROUND, meshca_cpu),
            sign_per_cpu: common::rate(SIGNS_PER_ROUND, sign_cpu),
        };
        eprintln!(
            "round {round}: raw {:.0}/s, upstream {:.0}/s ({:.1}%; per CPU second {:.1}%), pki/sign {:.0}/s ({:.1}×; per CPU second {:.0} vs {:.0}: {:.1}×)",
            figures.raw,
            figures.upstream,
            100.0 * figures.upstream / figures.raw,
            100.0 * figures.upstream_per_cpu / figures.raw_per_cpu,
            figures.sign,
            figures.upstream / figures.sign,
            figures.upstream_per_cpu,
            figures.sign_per_cpu,
            figures.upstream_per_cpu / figures.sign_per_cpu,
        );
        if round > 0 {
            rounds.push(figures);
        }
    }

    let section = Report::from(&rounds).markdown();
    println!("{section}");
    if let Err(e) = common::write_section("vault-upstream-bench", &section) {
        eprintln!("could not update docs/BENCHMARKS.md: {e}");
    }
}

struct Round {
    raw: f64,
    upstream: f64,
    raw_per_cpu: f64,
    sign: f64,
    upstream_per_cpu: f64,
    sign_per_cpu: f64,
}

struct Report {
    raw: f64,
    upstream: f64,
    sign: f64,
    upstream_per_cpu: f64,
    sign_per_cpu: f64,
    floor_ratio: f64,
    floor_ratio_min: f64,
    floor_ratio_per_cpu: f64,
    sign_ratio: f64,
    sign_ratio_per_cpu: f64,
}

impl From<&Vec<Round>> for Report {
    fn from(rounds: &Vec<Round>) -> Self {
        let of = |f: fn(&Round) -> f64| common::median(&rounds.iter().map(f).collect::<Vec<_>>());
        let floor: Vec<f64> = rounds.iter().map(|r| r.upstream / r.raw).collect();
        Self {
            raw: of(|r| r.raw),
            upstream: of(|r| r.upstream),
            sign: of(|r| r.sign),
            upstream_per_cpu: of(|r| r.upstream_per_cpu),
            sign_per_cpu: of(|r| r.sign_per_cpu),
            floor_ratio: common::median(&floor),
            floor_ratio_min: floor.iter().copied().fold(f64::INFINITY, f64::min),
            floor_ratio_per_cpu: of(|r| r.upstream_per_cpu / r.raw_per_cpu),
            sign_ratio: of(|r| r.upstream / r.sign),
            sign_ratio_per_cpu: of(|r| r.upstream_per_cpu / r.sign_per_cpu),
        }
    }
}

impl Report {
    fn markdown(&self) -> String {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let date = time::OffsetDateTime::now_utc().date();
        format!(
            "<!-- vault-upstream-bench:begin -->\n\
## Vault upstream mode: issuance through the cache\n\n\
Command: `cargo bench --bench vault_upstream` (release profile, one thread: a current-thread \
tokio runtime; OpenBao dev server on loopback, EC P-256 root, role `no_store=true`). Date: \
{date}. Machine: {cores} CPUs, shared by OpenBao and the benchmark.\n\n\
{ROUNDS} rounds: {ISSUES_PER_ROUND} iterations of (a) and of (b) alternating in blocks of \
{BLOCK}, then {SIGNS_PER_ROUND} of (c); medians over rounds.\n\n\
- (a) floor: raw ring loop, P-256 key generation + one ECDSA P-256 signature per iteration. \
CPU, for the per-CPU-second ratio: the bench's one thread, as for (b).\n\
- (b) upstream mode: `CertificateCache::certificate` for a new identity each time, \
`VaultUpstream` provider: fresh P-256 key, leaf signed by meshca under the intermediate \
OpenBao signed, parse, validation, publication, renewal scheduling. CPU: the bench's one \
thread (`/proc/self/schedstat`).\n\
- (c) raw `pki/sign`: one reqwest client posting a prebuilt CSR to `pki/sign/meshca` of the \
same OpenBao, one request at a time. CPU: the bench process's and OpenBao's (`/proc/<pid>/stat`).\n\n\
| (a) raw ring keygen+sign | (b) upstream issuance | (c) raw `pki/sign` | (b)/(a) median | (b)/(a) worst round | (b)/(a) per CPU second | (b)/(c), wall time | (b) per CPU second | (c) per CPU second | (b)/(c) per CPU second |\n\
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
| {:.0}/s | {:.0}/s | {:.0}/s | {:.1}% | {:.1}% | {:.1}% | {:.1}× | {:.0} | {:.0} | {:.1}× |\n\
<!-- vault-upstream-bench:end -->\n",
            self.raw,
            self.upstream,
            self.sign,
            100.0 * self.floor_ratio,
            100.0 * self.floor_ratio_min,
            100.0 * self.floor_ratio_per_cpu,
            self.sign_ratio,
            self.upstream_per_cpu,
            self.sign_per_cpu,
            self.sign_ratio_per_cpu,
        )
    }
}
