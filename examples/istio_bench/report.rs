//! The figures of a run, and the section of docs/BENCHMARKS.md they become.

use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::clients::Phase;

const BEGIN: &str = "<!-- istio-bench:begin -->";
const END: &str = "<!-- istio-bench:end -->";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Tresor,
    Vault,
}

/// One round: the baseline (the floor, or the raw `pki/sign` loop) and meshca, same count.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    pub(crate) baseline_rate: f64,
    pub(crate) meshca_rate: f64,
    /// Wall time of the baseline, per certificate.
    baseline_per_cert: Duration,
    /// CPU time per certificate of the server process and of the clients, in meshca's phase.
    server_cpu: Duration,
    client_cpu: Duration,
}

impl Round {
    pub(crate) fn new(
        requests: usize,
        baseline: Duration,
        meshca: &Phase,
        server_cpu: Duration,
    ) -> Self {
        let per = |d: Duration| d / u32::try_from(requests).unwrap_or(u32::MAX);
        Self {
            baseline_rate: requests as f64 / baseline.as_secs_f64(),
            meshca_rate: requests as f64 / meshca.wall.as_secs_f64(),
            baseline_per_cert: per(baseline),
            server_cpu: per(server_cpu),
            client_cpu: per(meshca.client_cpu),
        }
    }

    fn ratio(&self) -> f64 {
        self.meshca_rate / self.baseline_rate
    }
}

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "baseline {:.0}/s, meshca {:.0}/s ({:.1}%); server CPU {} µs/cert, clients {} µs/cert",
            self.baseline_rate,
            self.meshca_rate,
            100.0 * self.ratio(),
            self.server_cpu.as_micros(),
            self.client_cpu.as_micros()
        )
    }
}

/// The rounds of one backend at one concurrency.
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) backend: Backend,
    pub(crate) clients: usize,
    pub(crate) rounds: Vec<Round>,
}

impl Series {
    fn median(&self, value: impl Fn(&Round) -> f64) -> f64 {
        let mut values: Vec<f64> = self.rounds.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    fn ratio_range(&self) -> (f64, f64) {
        let ratios = self.rounds.iter().map(Round::ratio);
        (
            ratios.clone().fold(f64::INFINITY, f64::min),
            ratios.fold(0.0, f64::max),
        )
    }

    fn row(&self, threads: usize) -> String {
        let (low, high) = self.ratio_range();
        let micros = |d: &Duration| d.as_secs_f64() * 1e6;
        let mut row = format!(
            "| {} | {:.0} | {:.0} | **{:.1}%** | {:.1}–{:.1}% | {:.0} µs | {:.0} µs |",
            self.clients,
            self.median(|r| r.baseline_rate),
            self.median(|r| r.meshca_rate),
            100.0 * self.median(Round::ratio),
            100.0 * low,
            100.0 * high,
            self.median(|r| micros(&r.server_cpu)),
            self.median(|r| micros(&r.client_cpu)),
        );
        if self.backend == Backend::Tresor {
            // The floor keeps its threads busy throughout: its CPU is threads × wall.
            let floor_cpu = self.median(|r| micros(&r.baseline_per_cert)) * threads as f64;
            let _ = write!(row, " {floor_cpu:.0} µs |");
        }
        row
    }
}

/// The machine's load: /proc/loadavg and how many compilers are running.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    averages: String,
    rustc: usize,
}

impl Load {
    pub(crate) fn now() -> Self {
        let averages = std::fs::read_to_string("/proc/loadavg")
            .map(|text| {
                text.split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|_| "unknown".to_owned());
        let rustc = std::fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_to_string(e.path().join("comm"))
                            .is_ok_and(|comm| comm.trim() == "rustc")
                    })
                    .count()
            })
            .unwrap_or(0);
        Self { averages, rustc }
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} rustc running)", self.averages, self.rustc)
    }
}

/// Everything a run measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) series: Vec<Series>,
    pub(crate) rounds: usize,
    pub(crate) requests: usize,
    pub(crate) vault_requests: usize,
    /// The floor's threads: the server's runtime workers.
    pub(crate) threads: usize,
    pub(crate) load_before: Load,
    pub(crate) load_after: Load,
}

impl Report {
    pub(crate) fn markdown(&self) -> String {
        let date = time::OffsetDateTime::now_utc();
        let date = format!(
            "{}-{:02}-{:02} {:02}:{:02} UTC",
            date.year(),
            u8::from(date.month()),
            date.day(),
            date.hour(),
            date.minute()
        );
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mut out = format!(
            "{BEGIN}\n## Istio CA API: CreateCertificate\n\n\
Command: `cargo build --release --bin meshca --example istio_bench && \
target/release/examples/istio_bench` ({rounds} rounds per row, each the baseline and meshca \
one after the other, alternating which goes first; {requests} certificates per Tresor phase, \
{vault_requests} per Vault phase; ratios are per round, the median in bold). \
Date: {date}. Machine: {cpus} CPUs, shared; load averages (1, 5, 15 min) {before} at the \
start, {after} at the end.\n\n\
The server is a real `meshca serve` process (release build), the Istio CA listener on \
loopback TCP with TLS and client-certificate authentication: the daemon as deployed, its CPU \
time read apart from the clients' (`/proc/<pid>/stat`). N workloads (`bench/client-<i>`), \
each with a client certificate from the CA under test and 4 P-256 CSRs made before the run, \
call CreateCertificate over one HTTP/2 connection each (tonic's client, all on one \
current-thread runtime in the tool), each waiting for its answer before asking again. \
The clients share the {cpus} CPUs with the server: their CPU per certificate is in the \
table.\n\n",
            rounds = self.rounds,
            requests = self.requests,
            vault_requests = self.vault_requests,
            before = self.load_before,
            after = self.load_after,
        );
        let tresor: Vec<&Series> = self
            .series
            .iter()
            .filter(|s| s.backend == Backend::Tresor)
            .collect();
        if !tresor.is_empty() {
            let _ = write!(
                out,
                "### Tresor, against a raw ring floor (target ≥ 60%)\n\n\
Floor: per certificate, ring verifies the CSR's ECDSA P-256 signature, the leaf's DER is \
written by hand in Tresor's profile (random serial, validity, the CSR's public key, the \
caller's SPIFFE ID, AKI, SKI, KU, EKU, basicConstraints) and ring signs it with the same CA \
key, on {threads} threads (the server's runtime workers), CSRs taken apart beforehand.\n\n\
| clients | floor (certs/s) | meshca (certs/s) | meshca / floor | lowest–highest round | \
server CPU per cert | clients' CPU per cert | floor CPU per cert |\n\
|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                threads = self.threads
            );
            for series in tresor {
                let _ = writeln!(out, "{}", series.row(self.threads));
            }
            out.push('\n');
        }
        let vault: Vec<&Series> = self
            .series
            .iter()
            .filter(|s| s.backend == Backend::Vault)
            .collect();
        if !vault.is_empty() {
            let _ = write!(
                out,
                "### Vault (OpenBao), against a raw `pki/sign` loop (target ≥ 85%)\n\n\
OpenBao dev server on loopback (EC P-256 root, role `meshca` with `no_store=true`), sharing \
the CPUs. Raw: the same workloads' CSRs POSTed to `pki/sign/meshca` with the body meshca's \
provider sends (the CSR, the SPIFFE ID as `uri_sans`, `ttl` 86400s), N tasks on one pooled \
HTTP client in the tool. meshca: `certificateProvider.kind=vault`, the same N clients as \
above.\n\n\
| clients | raw `pki/sign` (certs/s) | meshca (certs/s) | meshca / raw | lowest–highest \
round | server CPU per cert | clients' CPU per cert |\n\
|---:|---:|---:|---:|---:|---:|---:|\n"
            );
            for series in vault {
                let _ = writeln!(out, "{}", series.row(self.threads));
            }
            out.push('\n');
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out.push_str(END);
        out.push('\n');
        out
    }
}

/// Replaces this tool's section of docs/BENCHMARKS.md (or appends it), leaving the rest.
pub(crate) fn write_section(section: &str) -> anyhow::Result<()> {
    let path = meshca_test_support::workspace_root().join("docs/BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    std::fs::write(&path, splice(&existing, section))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `existing` with the text between this tool's markers replaced by `section`, or `section`
/// appended when the markers are missing.
fn splice(existing: &str, section: &str) -> String {
    match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            let rest = &existing[end + END.len()..];
            let rest = rest.strip_prefix('\n').unwrap_or(rest);
            format!("{}{section}{rest}", &existing[..begin])
        }
        _ => format!("{}\n\n{section}", existing.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_replaces_only_its_own_markers() {
        let section = format!("{BEGIN}\nnew\n{END}\n");
        let others = "<!-- vault-bench:begin -->\nv\n<!-- vault-bench:end -->\n";
        let existing = format!("# B\n\nintro\n\n{BEGIN}\nold\n{END}\n\n{others}");
        assert_eq!(
            splice(&existing, &section),
            format!("# B\n\nintro\n\n{section}\n{others}")
        );
        assert_eq!(
            splice(&format!("# B\n\n{others}"), &section),
            format!("# B\n\n{others}\n{section}")
        );
    }
}
