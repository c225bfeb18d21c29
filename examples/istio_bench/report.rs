//! The figures of a run, and the section of docs/BENCHMARKS.md they become.

use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::Measured;

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
    /// CPU time per certificate of each process, in each phase.
    baseline: Measured,
    meshca: Measured,
}

impl Round {
    pub(crate) fn new(requests: usize, baseline: Measured, meshca: Measured) -> Self {
        let count = u32::try_from(requests).unwrap_or(u32::MAX);
        let per = |m: Measured| Measured {
            wall: m.wall / count,
            tool: m.tool / count,
            server: m.server / count,
            bao: m.bao / count,
        };
        Self {
            baseline_rate: requests as f64 / baseline.wall.as_secs_f64(),
            meshca_rate: requests as f64 / meshca.wall.as_secs_f64(),
            baseline: per(baseline),
            meshca: per(meshca),
        }
    }

    fn ratio(&self) -> f64 {
        self.meshca_rate / self.baseline_rate
    }
}

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |d: Duration| d.as_micros();
        write!(
            f,
            "baseline {:.0}/s (CPU µs/cert: tool {}, OpenBao {}), meshca {:.0}/s (server {}, \
             clients {}, OpenBao {}): {:.1}%",
            self.baseline_rate,
            us(self.baseline.tool),
            us(self.baseline.bao),
            self.meshca_rate,
            us(self.meshca.server),
            us(self.meshca.tool),
            us(self.meshca.bao),
            100.0 * self.ratio(),
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

    /// The median CPU time per certificate `field` picks, in µs.
    fn cpu(&self, field: impl Fn(&Round) -> Duration) -> String {
        format!("{:.0} µs", self.median(|r| field(r).as_secs_f64() * 1e6))
    }

    fn row(&self) -> String {
        let (low, high) = self.ratio_range();
        let mut row = format!(
            "| {} | {:.0} | {:.0} | **{:.1}%** | {:.1}–{:.1}% |",
            self.clients,
            self.median(|r| r.baseline_rate),
            self.median(|r| r.meshca_rate),
            100.0 * self.median(Round::ratio),
            100.0 * low,
            100.0 * high,
        );
        let secs = |d: Duration| d.as_secs_f64();
        let percent = |value: f64| format!("{:.1}%", 100.0 * value);
        let columns = match self.backend {
            Backend::Tresor => vec![
                self.cpu(|r| r.baseline.tool),
                self.cpu(|r| r.meshca.server),
                self.cpu(|r| r.meshca.tool),
                percent(self.median(|r| secs(r.baseline.tool) / secs(r.meshca.server))),
                percent(
                    self.median(|r| secs(r.baseline.tool) / secs(r.meshca.server + r.meshca.tool)),
                ),
            ],
            Backend::Vault => vec![
                self.cpu(|r| r.baseline.bao),
                self.cpu(|r| r.baseline.tool),
                self.cpu(|r| r.meshca.bao),
                self.cpu(|r| r.meshca.server),
                self.cpu(|r| r.meshca.tool),
                percent(self.median(|r| {
                    secs(r.baseline.bao + r.baseline.tool)
                        / secs(r.meshca.bao + r.meshca.server + r.meshca.tool)
                })),
            ],
        };
        for column in columns {
            let _ = write!(row, " {column} |");
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
    /// CSRs each workload made before the run (`--csrs`).
    pub(crate) csrs_per_client: usize,
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
each with a client certificate from the CA under test and {csrs} P-256 CSRs made before the run, \
call CreateCertificate over one HTTP/2 connection each (the tonic client generated from \
`proto/`, all on one current-thread runtime in the tool), each waiting for its answer before \
asking again. The server runs with its default settings (it logs each issuance at `info`). \
The clients share the {cpus} CPUs with the server: their CPU per certificate is in the \
table.\n\n",
            rounds = self.rounds,
            requests = self.requests,
            vault_requests = self.vault_requests,
            csrs = self.csrs_per_client,
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
CPU time per certificate (user + system, from `/proc`, medians over rounds): the floor's \
threads; in meshca's phase the server and the clients; then the floor's CPU against the \
server's alone (the ratio if the clients cost nothing) and against the server's and the \
clients' (what the wall-time ratio tends to when the two CPUs are the limit).\n\n\
| clients | floor (certs/s) | meshca (certs/s) | meshca / floor | lowest–highest round | \
floor CPU | server CPU | clients' CPU | floor / server CPU | floor / (server + clients) CPU |\n\
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                threads = self.threads
            );
            for series in tresor {
                let _ = writeln!(out, "{}", series.row());
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
CPU time per certificate: in the raw phase OpenBao and the raw client; in meshca's phase \
OpenBao, the server and the clients; then all the raw phase's CPU against all of meshca's \
(what the wall-time ratio tends to when the CPUs are the limit).\n\n\
| clients | raw `pki/sign` (certs/s) | meshca (certs/s) | meshca / raw | lowest–highest \
round | raw: OpenBao CPU | raw: client CPU | meshca: OpenBao CPU | meshca: server CPU | \
meshca: clients' CPU | raw / meshca CPU |\n\
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            );
            for series in vault {
                let _ = writeln!(out, "{}", series.row());
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
