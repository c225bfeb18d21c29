//! The pipeline's metrics: how long issuances take, by result (a fixed-bucket histogram per
//! result), and how many failed or were rejected. Recorded with relaxed atomic adds only,
//! because it sits on the issuance hot path (benchmarked) and is read by `/metrics` at scrape
//! time.
//!
//! A scrape may read a bucket that already counts an issuance whose duration is not yet in the
//! sum (or the reverse); Prometheus tolerates that, and the count is always the sum of the
//! buckets read, so the `+Inf` bucket and `_count` agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::IssueError;

/// Upper bounds of the buckets, in nanoseconds: 100 µs (an in-process ECDSA issuance) to 30 s
/// (the default issuance timeout). Anything slower lands in `+Inf`.
const BOUNDS_NANOS: [u64; 17] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Buckets including `+Inf`.
const BUCKETS: usize = BOUNDS_NANOS.len() + 1;

/// How an issuance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IssueResult {
    /// A validated certificate came back.
    Success,
    /// The provider refused, failed or timed out (or the key could not be made).
    Failure,
    /// The provider answered with a chain that failed validation; nothing was published.
    Rejected,
}

impl IssueResult {
    /// Every result, in the order [`IssuanceMetrics::latency`] reports them.
    pub const ALL: [Self; 3] = [Self::Success, Self::Failure, Self::Rejected];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Rejected => "rejected",
        }
    }

    /// The result an issuance's outcome counts as.
    pub(super) fn of<T>(outcome: &Result<T, IssueError>) -> Self {
        match outcome {
            Ok(_) => Self::Success,
            Err(IssueError::Invalid { .. }) => Self::Rejected,
            Err(_) => Self::Failure,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Rejected => 2,
        }
    }
}

/// The issuance durations of one result, read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    /// Which result these issuances had.
    pub result: IssueResult,
    /// `(upper bound in seconds, issuances in this bucket alone)`, ascending, the last bound
    /// being `f64::INFINITY`. Counts are per bucket, not cumulative.
    pub buckets: Vec<(f64, u64)>,
    /// How many issuances (the sum of the bucket counts).
    pub count: u64,
    /// Their total duration in seconds.
    pub sum_seconds: f64,
}

/// What the pipeline counts: one histogram per [`IssueResult`], and the failures (rejected
/// chains included) and rejections since start.
#[derive(Debug, Default)]
pub struct IssuanceMetrics {
    by_result: [Histogram; 3],
    failures: AtomicU64,
    rejected: AtomicU64,
}

impl IssuanceMetrics {
    /// Counts one issuance of `result` that took `elapsed`.
    pub(super) fn record(&self, result: IssueResult, elapsed: Duration) {
        self.by_result[result.index()].record(elapsed);
        match result {
            IssueResult::Success => {}
            IssueResult::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
            IssueResult::Rejected => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a failure the pipeline could not see end: an issuance that panicked in meshca's
    /// own code (a provider's panic is caught and recorded by the pipeline itself).
    pub fn count_unexpected_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed issuances since start, rejected chains included.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Issued chains that failed validation since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Every result's latency histogram, in [`IssueResult::ALL`] order.
    pub fn latency(&self) -> Vec<LatencyHistogram> {
        IssueResult::ALL
            .iter()
            .map(|&result| self.by_result[result.index()].snapshot(result))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    /// Wraps after 584 years of cumulated issuance time.
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // Bounds are inclusive (`le`): the first bound at or above the duration.
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self, result: IssueResult) -> LatencyHistogram {
        let bounds = BOUNDS_NANOS
            .iter()
            .map(|&nanos| nanos as f64 / 1e9)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        LatencyHistogram {
            result,
            count: buckets.iter().map(|(_, count)| count).sum(),
            buckets,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(latency: &IssuanceMetrics, result: IssueResult) -> LatencyHistogram {
        latency
            .latency()
            .into_iter()
            .find(|h| h.result == result)
            .unwrap()
    }

    fn count_at(histogram: &LatencyHistogram, bound: f64) -> u64 {
        histogram
            .buckets
            .iter()
            .find(|(b, _)| *b == bound)
            .map(|(_, count)| *count)
            .unwrap()
    }

    #[test]
    fn durations_land_in_the_first_bucket_at_or_above_them() {
        let latency = IssuanceMetrics::default();
        latency.record(IssueResult::Success, Duration::from_micros(150));
        latency.record(IssueResult::Success, Duration::from_secs(1));
        latency.record(IssueResult::Success, Duration::from_millis(1001));
        latency.record(IssueResult::Success, Duration::from_secs(31));
        latency.record(IssueResult::Success, Duration::ZERO);

        let success = histogram(&latency, IssueResult::Success);
        assert_eq!(count_at(&success, 0.0001), 1, "zero: {success:?}");
        assert_eq!(count_at(&success, 0.00025), 1, "150 µs: {success:?}");
        assert_eq!(count_at(&success, 1.0), 1, "exactly 1 s: {success:?}");
        assert_eq!(count_at(&success, 2.5), 1, "1.001 s: {success:?}");
        assert_eq!(count_at(&success, f64::INFINITY), 1, "31 s: {success:?}");
        assert_eq!(success.count, 5);
        assert!((success.sum_seconds - 33.00115).abs() < 1e-9, "{success:?}");
    }

    #[test]
    fn results_are_kept_apart() {
        let latency = IssuanceMetrics::default();
        latency.record(IssueResult::Rejected, Duration::from_millis(3));
        latency.record(IssueResult::Failure, Duration::from_secs(30));
        latency.record(IssueResult::Failure, Duration::from_secs(30));

        assert_eq!(histogram(&latency, IssueResult::Success).count, 0);
        let rejected = histogram(&latency, IssueResult::Rejected);
        assert_eq!((rejected.count, count_at(&rejected, 0.005)), (1, 1));
        let failure = histogram(&latency, IssueResult::Failure);
        assert_eq!((failure.count, count_at(&failure, 30.0)), (2, 2));
        assert_eq!(failure.sum_seconds, 60.0);
    }

    #[test]
    fn bounds_are_ascending_and_end_in_infinity() {
        let success = histogram(&IssuanceMetrics::default(), IssueResult::Success);
        let bounds: Vec<f64> = success.buckets.iter().map(|(b, _)| *b).collect();
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        assert_eq!(bounds.first(), Some(&0.0001));
        assert_eq!(bounds[bounds.len() - 2], 30.0);
        assert_eq!(bounds.last(), Some(&f64::INFINITY));
    }

    #[test]
    fn outcomes_map_to_results_and_counters() {
        let invalid: Result<(), IssueError> = Err(IssueError::Invalid {
            provider: "test",
            reason: "wrong SAN".to_owned(),
        });
        let failed: Result<(), IssueError> = Err(IssueError::Internal {
            reason: "a bug".to_owned(),
        });
        assert_eq!(
            IssueResult::of(&Ok::<(), IssueError>(())),
            IssueResult::Success
        );
        assert_eq!(IssueResult::of(&invalid), IssueResult::Rejected);
        assert_eq!(IssueResult::of(&failed), IssueResult::Failure);

        let metrics = IssuanceMetrics::default();
        for outcome in [&invalid, &failed, &Ok(())] {
            metrics.record(IssueResult::of(outcome), Duration::from_millis(1));
        }
        metrics.count_unexpected_failure();
        assert_eq!((metrics.failures(), metrics.rejected()), (3, 1));
    }
}
