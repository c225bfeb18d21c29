//! JWT-SVID signing benchmark: `cargo bench --bench jwt_svid`.
//!
//! Measures, in one run and on one thread, (a) the floor — ring signing a JWS signing input of
//! a JWT-SVID's size with ES256 (P-256, fixed-length signature) and a key parsed once — against
//! (b) meshca signing a JWT-SVID for a new SPIFFE ID each time through `JwtAuthority::sign`
//! (the current key looked up, header and claims serialised and base64url-encoded, signed).
//! (a) and (b) alternate in short blocks so that load from elsewhere on the machine hits both
//! alike; the ratio of medians is the figure. Results replace the section between the markers
//! in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshca::jwt_svid::{JwtAuthority, KeyPolicy};
use meshca_provider::{SpiffeId, TrustDomain};
use meshca_tresor::{CaStore, DirectoryStore};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

const ROUNDS: usize = 7;
const TOKENS_PER_ROUND: usize = 5_000;
const BLOCK: usize = 100;

fn main() {
    common::on_one_thread(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store: Arc<dyn CaStore> = Arc::new(DirectoryStore::new(dir.path().join("ca")));
    let authority = JwtAuthority::new(
        store,
        KeyPolicy {
            rotation_interval: Duration::from_secs(24 * 3600),
            activation_delay: Duration::from_secs(600),
            retention: Duration::from_secs(600),
        },
    );
    authority.refresh(SystemTime::now()).await.expect("a key");
    let trust_domain = TrustDomain::default();
    let audiences = vec!["vault".to_owned()];
    let ttl = Duration::from_secs(300);

    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // The signing input of a JWT-SVID like the ones (b) makes.
    let sample = authority
        .sign(
            &SpiffeId::from_short("bench/sa-0", &trust_domain).unwrap(),
            &audiences,
            ttl,
            None,
            SystemTime::now(),
        )
        .unwrap();
    let signing_input = sample.rsplit_once('.').unwrap().0.as_bytes().to_vec();

    let mut next = 0_usize;
    let (mut raw_rates, mut meshca_rates) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        let (mut raw_time, mut meshca_time) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..TOKENS_PER_ROUND / BLOCK {
            let started = Instant::now();
            for _ in 0..BLOCK {
                std::hint::black_box(key.sign(&rng, &signing_input).unwrap());
            }
            raw_time += started.elapsed();

            let subjects: Vec<SpiffeId> = (0..BLOCK)
                .map(|_| {
                    next += 1;
                    SpiffeId::from_short(&format!("bench/sa-{next}"), &trust_domain).unwrap()
                })
                .collect();
            let started = Instant::now();
            for subject in &subjects {
                let now = SystemTime::now();
                std::hint::black_box(authority.sign(subject, &audiences, ttl, None, now).unwrap());
            }
            meshca_time += started.elapsed();
        }
        let raw = common::rate(TOKENS_PER_ROUND, raw_time);
        let meshca = common::rate(TOKENS_PER_ROUND, meshca_time);
        eprintln!(
            "round {round}: raw {raw:.0}/s, meshca {meshca:.0}/s ({:.1}%)",
            100.0 * meshca / raw
        );
        if round > 0 {
            raw_rates.push(raw);
            meshca_rates.push(meshca);
        }
    }
    let ratios: Vec<f64> = raw_rates
        .iter()
        .zip(&meshca_rates)
        .map(|(raw, meshca)| meshca / raw)
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let section = format!(
        "<!-- jwt-bench:begin -->\n\
## JWT-SVID signing\n\n\
Command: `cargo bench --bench jwt_svid` (release profile, one thread). Date: {}. Machine: \
{cores} CPUs, shared; load averages (1, 5, 15 min) {} at the end.\n\n\
{ROUNDS} rounds of {TOKENS_PER_ROUND} tokens of (a) and of (b), alternating in blocks of \
{BLOCK}; medians over rounds.\n\n\
- (a) floor: ring's ES256 signature (P-256, r ‖ s) of a JWT-SVID's signing input \
({} bytes), the key parsed once.\n\
- (b) meshca: `JwtAuthority::sign` for a new SPIFFE ID each time (audience `vault`, 5 min): \
the signing key looked up by the schedule, header and claims serialised and base64url-encoded, \
signed, the signature encoded.\n\n\
| (a) raw ring ES256 | (b) meshca JWT-SVID | (b)/(a) median | (b)/(a) worst round | target |\n\
|---:|---:|---:|---:|---:|\n\
| {:.0}/s | {:.0}/s | **{:.1}%** | {:.1}% | ≥ 70% |\n\
<!-- jwt-bench:end -->\n",
        time::OffsetDateTime::now_utc().date(),
        load.join(" "),
        signing_input.len(),
        common::median(&raw_rates),
        common::median(&meshca_rates),
        100.0 * common::median(&ratios),
        100.0 * ratios.iter().copied().fold(f64::INFINITY, f64::min),
    );
    println!("{section}");
    if let Err(e) = common::write_section("jwt-bench", &section) {
        eprintln!("could not update docs/BENCHMARKS.md: {e}");
    }
}
