//! Counters of the SPIFFE Workload API, exported on `/metrics` (names prefixed
//! `meshca_workload_api_`): streams open and opened, X.509-SVIDs and bundle messages sent, and
//! refusals by reason. Plain atomics, read at scrape time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `workload.spiffe.io: true` metadata (INVALID_ARGUMENT).
    MissingHeader,
    /// The caller matched no registration entry, or its credentials are unknown
    /// (PERMISSION_DENIED).
    NoEntry,
    /// A stream limit was reached (RESOURCE_EXHAUSTED).
    Exhausted,
    /// The certificate could not be issued (UNAVAILABLE, FAILED_PRECONDITION).
    Unavailable,
    /// A JWT-SVID method while JWT-SVIDs are off (UNIMPLEMENTED).
    Unimplemented,
}

impl Refusal {
    const ALL: [Self; 5] = [
        Self::MissingHeader,
        Self::NoEntry,
        Self::Exhausted,
        Self::Unavailable,
        Self::Unimplemented,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::NoEntry => "no_entry",
            Self::Exhausted => "exhausted",
            Self::Unavailable => "unavailable",
            Self::Unimplemented => "unimplemented",
        }
    }
}

/// The Workload API's counters.
#[derive(Debug, Default)]
pub struct WorkloadApiMetrics {
    pub(crate) streams_open: AtomicU64,
    pub(crate) streams_total: AtomicU64,
    pub(crate) svids_sent: AtomicU64,
    pub(crate) svid_messages: AtomicU64,
    pub(crate) bundle_messages: AtomicU64,
    pub(crate) jwt_svids_sent: AtomicU64,
    pub(crate) jwt_bundle_messages: AtomicU64,
    pub(crate) jwt_validated: AtomicU64,
    pub(crate) jwt_rejected: AtomicU64,
    refusals: [AtomicU64; 5],
}

/// A copy of [`WorkloadApiMetrics`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkloadApiMetricsSnapshot {
    /// Streams open now (both methods).
    pub streams_open: u64,
    /// Streams opened since start.
    pub streams_total: u64,
    /// X.509-SVIDs sent (one per identity per message).
    pub svids_sent: u64,
    /// `FetchX509SVID` messages sent.
    pub svid_messages: u64,
    /// `FetchX509Bundles` messages sent.
    pub bundle_messages: u64,
    /// JWT-SVIDs signed and sent (`FetchJWTSVID`).
    pub jwt_svids_sent: u64,
    /// `FetchJWTBundles` messages sent.
    pub jwt_bundle_messages: u64,
    /// Tokens `ValidateJWTSVID` found valid.
    pub jwt_validated: u64,
    /// Tokens `ValidateJWTSVID` rejected.
    pub jwt_rejected: u64,
    /// Calls without the `workload.spiffe.io` header.
    pub refused_missing_header: u64,
    /// Callers matching no registration entry.
    pub refused_no_entry: u64,
    /// Calls over a stream limit.
    pub refused_exhausted: u64,
    /// Calls whose certificate could not be issued.
    pub refused_unavailable: u64,
    /// Calls to the JWT-SVID methods while `jwtSvid.enabled` is off.
    pub refused_unimplemented: u64,
}

impl WorkloadApiMetrics {
    pub(crate) fn refused(&self, reason: Refusal) {
        let index = Refusal::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        self.refusals[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> WorkloadApiMetricsSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let [
            refused_missing_header,
            refused_no_entry,
            refused_exhausted,
            refused_unavailable,
            refused_unimplemented,
        ] = self.refusals.each_ref().map(read);
        WorkloadApiMetricsSnapshot {
            streams_open: read(&self.streams_open),
            streams_total: read(&self.streams_total),
            svids_sent: read(&self.svids_sent),
            svid_messages: read(&self.svid_messages),
            bundle_messages: read(&self.bundle_messages),
            jwt_svids_sent: read(&self.jwt_svids_sent),
            jwt_bundle_messages: read(&self.jwt_bundle_messages),
            jwt_validated: read(&self.jwt_validated),
            jwt_rejected: read(&self.jwt_rejected),
            refused_missing_header,
            refused_no_entry,
            refused_exhausted,
            refused_unavailable,
            refused_unimplemented,
        }
    }

    /// A Prometheus collector reading these counters at scrape time (for the admin
    /// listener's registry, whose prefix is `meshca`).
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(Scrape(self.clone()))
    }
}

#[derive(Debug)]
struct Scrape(Arc<WorkloadApiMetrics>);

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.0.snapshot();
        let e = &mut encoder;
        let open = ConstGauge::new(i64::try_from(s.streams_open).unwrap_or(i64::MAX));
        open.encode(e.encode_descriptor(
            "workload_api_streams_open",
            "SPIFFE Workload API streams open now.",
            None,
            open.metric_type(),
        )?)?;
        counter(
            e,
            "workload_api_streams",
            "SPIFFE Workload API streams opened (FetchX509SVID and FetchX509Bundles).",
            s.streams_total,
        )?;
        counter(
            e,
            "workload_api_x509_svids_sent",
            "X.509-SVIDs sent over the Workload API (one per identity per message).",
            s.svids_sent,
        )?;
        counter(
            e,
            "workload_api_x509_bundle_messages",
            "FetchX509Bundles messages sent.",
            s.bundle_messages,
        )?;
        counter(
            e,
            "workload_api_jwt_svids_sent",
            "JWT-SVIDs signed and sent over the Workload API (FetchJWTSVID).",
            s.jwt_svids_sent,
        )?;
        counter(
            e,
            "workload_api_jwt_bundle_messages",
            "FetchJWTBundles messages sent.",
            s.jwt_bundle_messages,
        )?;
        let mut validations = e.encode_descriptor(
            "workload_api_jwt_validations",
            "JWT-SVIDs checked by ValidateJWTSVID, by result.",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (result, value) in [("valid", s.jwt_validated), ("rejected", s.jwt_rejected)] {
            ConstCounter::new(value).encode(validations.encode_family(&[("result", result)])?)?;
        }
        let mut family = e.encode_descriptor(
            "workload_api_refusals",
            "SPIFFE Workload API calls refused, by reason.",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (reason, value) in Refusal::ALL.iter().zip([
            s.refused_missing_header,
            s.refused_no_entry,
            s.refused_exhausted,
            s.refused_unavailable,
            s.refused_unimplemented,
        ]) {
            ConstCounter::new(value)
                .encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }
        Ok(())
    }
}
