//! Issuance benchmark: `cargo bench --bench issuance`.
//!
//! Measures, in one run and on one thread, (a) the floor — a raw ring loop generating a P-256
//! key and making one ECDSA P-256 signature, the two operations every fresh-key issuance must
//! pay for —, (b) meshca issuing a fresh-key leaf through the cache's issue path with Tresor
//! (key generation, leaf profile, signing, parsing and validation, publication), and (c) a cache
//! hit. (a) and (b) alternate in short blocks so that load from elsewhere on the machine hits
//! both alike; the ratio of medians is the figure. Results replace the section between the
//! markers in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshca::cache::{CacheSettings, CertKey, CertificateCache, Purpose};
use meshca::time::TokioClock;
use meshca_provider::{Clock, SpiffeId, TrustDomain};
use meshca_tresor::{RootOptions, SigningAuthority, Tresor};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

const ROUNDS: usize = 7;
const ISSUES_PER_ROUND: usize = 2_000;
/// Iterations of (a), then of (b), back to back within a round.
const BLOCK: usize = 100;
const HITS_PER_ROUND: usize = 200_000;

fn main() {
    common::on_one_thread(run());
}

async fn run() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let authority =
        SigningAuthority::generate_root(&RootOptions::default(), clock.as_ref()).expect("a root");
    let provider = Arc::new(Tresor::new(authority, clock.clone()));
    let cache = CertificateCache::new(provider, CacheSettings::default(), clock);
    cache.refresh_trust_bundle().await.expect("the bundle");

    let rng = SystemRandom::new();
    let ca_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("a CA key");
    let ca_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, ca_pkcs8.as_ref(), &rng)
        .expect("the CA key");
    // About the size of a leaf's to-be-signed part.
    let tbs = vec![0x5a_u8; 420];

    let trust_domain = TrustDomain::default();
    let mut next_identity = 0_usize;
    let mut raw_rates = Vec::new();
    let mut meshca_rates = Vec::new();
    let mut hit_latencies = Vec::new();

    // One warm-up round, not counted. Within a round, (a) and (b) alternate in blocks of
    // BLOCK iterations (a few milliseconds each), so that load from elsewhere on this shared
    // machine, which comes and goes over tens of milliseconds, falls on both alike.
    for round in 0..=ROUNDS {
        let mut raw_time = Duration::ZERO;
        let mut meshca_time = Duration::ZERO;
        for _ in 0..ISSUES_PER_ROUND / BLOCK {
            let started = Instant::now();
            for _ in 0..BLOCK {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                    .expect("keygen");
                std::hint::black_box(pkcs8);
                std::hint::black_box(ca_key.sign(&rng, &tbs).expect("sign"));
            }
            raw_time += started.elapsed();

            // New identities, named before the clock starts: a caller arrives with its own.
            let keys: Vec<CertKey> = (0..BLOCK)
                .map(|_| {
                    next_identity += 1;
                    let name = format!("bench/sa-{next_identity}");
                    let id = SpiffeId::from_short(&name, &trust_domain).expect("identity");
                    CertKey::new(id, Purpose::Default)
                })
                .collect();
            let started = Instant::now();
            for key in &keys {
                std::hint::black_box(cache.certificate(key).await.expect("issuance"));
                // A first issuance runs in the caller's task and hands the renewal schedule to
                // the cache's worker task; yielding lets the worker do that share inside the
                // timed loop, on this one thread, as it must for the figure to be the whole cost.
                tokio::task::yield_now().await;
            }
            meshca_time += started.elapsed();
        }
        let raw = common::rate(ISSUES_PER_ROUND, raw_time);
        let issued = common::rate(ISSUES_PER_ROUND, meshca_time);

        let hit_key = CertKey::new(
            SpiffeId::from_short("bench/sa-1", &trust_domain).expect("identity"),
            Purpose::Default,
        );
        let started = Instant::now();
        for _ in 0..HITS_PER_ROUND {
            std::hint::black_box(cache.certificate(&hit_key).await.expect("hit"));
        }
        let hit = started.elapsed() / HITS_PER_ROUND as u32;

        if round > 0 {
            raw_rates.push(raw);
            meshca_rates.push(issued);
            hit_latencies.push(hit);
        }
        eprintln!(
            "round {round}: raw {raw:.0}/s, meshca {issued:.0}/s ({:.1}%), hit {hit:?}",
            100.0 * issued / raw
        );
    }

    let ratios: Vec<f64> = raw_rates
        .iter()
        .zip(&meshca_rates)
        .map(|(raw, meshca)| meshca / raw)
        .collect();
    let report = Report {
        raw: common::median(&raw_rates),
        meshca: common::median(&meshca_rates),
        ratio_median: common::median(&ratios),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        hit: common::median_duration(&mut hit_latencies),
    };
    let section = report.markdown();
    println!("{section}");
    if let Err(e) = common::write_section("issuance-bench", &section) {
        eprintln!("could not update docs/BENCHMARKS.md: {e}");
    }
}

struct Report {
    raw: f64,
    meshca: f64,
    ratio_median: f64,
    ratio_min: f64,
    hit: Duration,
}

impl Report {
    fn markdown(&self) -> String {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let date = time::OffsetDateTime::now_utc().date();
        format!(
            "<!-- issuance-bench:begin -->\n\
## Tresor issuance through the cache\n\n\
Command: `cargo bench --bench issuance` (release profile, one thread: a current-thread tokio \
runtime). Date: {date}. Machine: {cores} CPUs, shared.\n\n\
{ROUNDS} rounds of {ISSUES_PER_ROUND} iterations of (a) and of (b), alternating in blocks of \
{BLOCK}; medians over rounds.\n\n\
- (a) floor: raw ring loop, P-256 key generation + one ECDSA P-256 signature per iteration.\n\
- (b) meshca: `CertificateCache::certificate` for a new identity each time, Tresor provider: \
fresh P-256 key, leaf profile, signature, parse, validation, publication in the cache, and the \
cache worker scheduling the renewal (the loop yields to it after each call).\n\
- (c) cache hit: `CertificateCache::certificate` for an identity already issued.\n\n\
| (a) raw ring keygen+sign | (b) meshca fresh-key issuance | (b)/(a) median | (b)/(a) worst round | (c) cache hit |\n\
|---:|---:|---:|---:|---:|\n\
| {:.0}/s | {:.0}/s | {:.1}% | {:.1}% | {:.2} µs |\n\
<!-- issuance-bench:end -->\n",
            self.raw,
            self.meshca,
            100.0 * self.ratio_median,
            100.0 * self.ratio_min,
            self.hit.as_secs_f64() * 1e6,
        )
    }
}
