//! What the benchmarks share: medians and rates, and writing a section of docs/BENCHMARKS.md
//! between its markers.

use std::time::Duration;

/// Runs `work` on a current-thread tokio runtime: the figures are one thread's.
pub(crate) fn on_one_thread<F: std::future::Future>(work: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(work)
}

/// Operations per second.
pub(crate) fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// The median (the upper one of an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The median duration.
#[allow(dead_code)]
pub(crate) fn median_duration(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Replaces (or appends) the section of docs/BENCHMARKS.md between `<!-- {name}:begin -->`
/// and `<!-- {name}:end -->`; `section` includes both markers.
pub(crate) fn write_section(name: &str, section: &str) -> std::io::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->\n"),
    );
    let updated = match (current.find(&begin), current.find(&end)) {
        (Some(start), Some(stop)) if stop > start => {
            format!(
                "{}{section}{}",
                &current[..start],
                &current[stop + end.len()..]
            )
        }
        _ => format!("{}\n\n{section}", current.trim_end()),
    };
    std::fs::write(path, updated)
}
