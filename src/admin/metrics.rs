//! `/metrics`: every figure read at scrape time from the cache, the SDS counters and the
//! provider's health, rendered as Prometheus / OpenMetrics text.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use meshca_provider::CertificateInfo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use super::ProviderHealth;
use crate::cache::CertificateCache;
use crate::issuance::LatencyHistogram;
use crate::sds::SdsStats;

/// Reads every figure at scrape time.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) cache: Arc<CertificateCache>,
    pub(super) sds: Arc<SdsStats>,
    pub(super) health: Arc<ProviderHealth>,
    /// Label the expiry gauge with every identity (`admin.perIdentityMetrics`).
    pub(super) per_identity: bool,
    pub(super) unauthorized: Arc<AtomicU64>,
}

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &Labels,
    value: u64,
) -> fmt::Result {
    let metric = ConstCounter::new(value);
    let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    if labels.is_empty() {
        return metric.encode(family);
    }
    metric.encode(family.encode_family(labels)?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, value) in series {
        if labels.is_empty() {
            ConstGauge::new(*value).encode(family)?;
            break;
        }
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// `meshca_issuance_duration_seconds{provider, result}`, read from the cache's atomic buckets.
fn issuance_duration(
    encoder: &mut DescriptorEncoder,
    provider: &'static str,
    histograms: &[LatencyHistogram],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "issuance_duration",
        "Time to issue one certificate: key, provider call and validation, by result.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for histogram in histograms {
        let labels: Labels = vec![
            ("provider".into(), provider.into()),
            ("result".into(), histogram.result.as_str().into()),
        ];
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(
                histogram.sum_seconds,
                histogram.count,
                &histogram.buckets,
                None,
            )?;
    }
    Ok(())
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let provider: Labels = vec![("provider".into(), self.cache.provider().name().into())];
        let stats = self.cache.stats();
        let e = &mut encoder;
        counter(
            e,
            "certificates_issued",
            "First certificates issued for a key.",
            &provider,
            stats.issued,
        )?;
        counter(
            e,
            "certificates_renewed",
            "Certificates issued to replace a previous one.",
            &provider,
            stats.renewed,
        )?;
        counter(
            e,
            "issuance_failures",
            "Failed issuances, rejected chains included.",
            &provider,
            stats.failures,
        )?;
        counter(
            e,
            "issuance_rejected",
            "Issued chains that failed validation and were not published.",
            &provider,
            stats.rejected,
        )?;
        counter(
            e,
            "issuance_retries",
            "Issuances retried after a failure.",
            &provider,
            stats.retries,
        )?;
        issuance_duration(
            e,
            self.cache.provider().name(),
            &self.cache.issuance_latency(),
        )?;
        gauge(
            e,
            "issuance_in_flight",
            "Issuances running now.",
            &[(provider.clone(), stats.in_flight as i64)],
        )?;
        gauge(
            e,
            "cached_certificates",
            "Keys holding a published certificate.",
            &[(provider.clone(), stats.entries as i64)],
        )?;

        let certificates = self.cache.certificates();
        // By purpose: (count, earliest NotAfter). A handful of purposes, whatever the number of
        // identities.
        let mut by_purpose: std::collections::BTreeMap<&'static str, (i64, i64)> =
            std::collections::BTreeMap::new();
        for (key, served) in &certificates {
            let expiry = unix_seconds(served.info.not_after);
            let entry = by_purpose
                .entry(key.purpose.as_str())
                .or_insert((0, i64::MAX));
            entry.0 += 1;
            entry.1 = entry.1.min(expiry);
        }
        let purpose = |p: &'static str| -> Labels { vec![("purpose".into(), p.into())] };
        gauge(
            e,
            "cached_certificates_by_purpose",
            "Keys holding a published certificate, by purpose.",
            &by_purpose
                .iter()
                .map(|(p, (count, _))| (purpose(p), *count))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            e,
            "certificate_expiry_earliest_timestamp_seconds",
            "Earliest NotAfter among the cached certificates of each purpose (Unix time).",
            &by_purpose
                .iter()
                .map(|(p, (_, earliest))| (purpose(p), *earliest))
                .collect::<Vec<_>>(),
        )?;
        if self.per_identity {
            let expiries: Vec<(Labels, i64)> = certificates
                .iter()
                .map(|(key, served)| {
                    let labels: Labels = vec![
                        ("identity".into(), key.identity.to_string().into()),
                        ("purpose".into(), key.purpose.as_str().into()),
                    ];
                    (labels, unix_seconds(served.info.not_after))
                })
                .collect();
            gauge(
                e,
                "certificate_expiry_timestamp_seconds",
                "NotAfter of each cached certificate (Unix time); admin.perIdentityMetrics.",
                &expiries,
            )?;
        }

        let roots: Vec<(Labels, i64)> = self
            .cache
            .trust_bundle()
            .borrow()
            .roots()
            .iter()
            .filter_map(|root| CertificateInfo::parse(root).ok())
            .map(|info| {
                let labels: Labels = vec![("subject".into(), info.subject.clone().into())];
                (labels, unix_seconds(info.not_after))
            })
            .collect();
        gauge(
            e,
            "ca_expiry_timestamp_seconds",
            "NotAfter of each trusted root (Unix time).",
            &roots,
        )?;

        let healthy = i64::from(self.health.is_healthy());
        gauge(
            e,
            "provider_healthy",
            "1 when the last provider health check passed.",
            &[(provider.clone(), healthy)],
        )?;
        counter(
            e,
            "provider_health_check_failures",
            "Failed provider health checks.",
            &provider,
            self.health.failures.load(Ordering::Relaxed),
        )?;

        let sds = self.sds.snapshot();
        let none: Labels = Vec::new();
        gauge(
            e,
            "sds_streams",
            "SDS streams open now.",
            &[(
                none.clone(),
                i64::try_from(sds.streams_open).unwrap_or(i64::MAX),
            )],
        )?;
        counter(
            e,
            "sds_streams_opened",
            "SDS streams opened.",
            &none,
            sds.streams_total,
        )?;
        counter(
            e,
            "sds_responses",
            "SDS responses sent.",
            &none,
            sds.responses,
        )?;
        counter(
            e,
            "sds_pushes",
            "SDS responses pushed after a renewal or bundle change.",
            &none,
            sds.pushes,
        )?;
        counter(
            e,
            "sds_acks",
            "SDS responses ACKed by proxies.",
            &none,
            sds.acks,
        )?;
        counter(
            e,
            "sds_nacks",
            "SDS responses NACKed by proxies.",
            &none,
            sds.nacks,
        )?;
        counter(
            e,
            "sds_unauthenticated",
            "SDS callers refused as unauthenticated.",
            &none,
            sds.unauthenticated,
        )?;
        counter(
            e,
            "sds_permission_denied",
            "SDS requests for another identity's certificate.",
            &none,
            sds.permission_denied,
        )?;
        counter(
            e,
            "sds_rejected",
            "SDS requests refused as invalid or over a limit.",
            &none,
            sds.rejected,
        )?;
        counter(
            e,
            "sds_expired_withheld",
            "Expired certificates left out of SDS responses (once per certificate and stream).",
            &none,
            sds.expired_withheld,
        )?;
        counter(
            e,
            "sds_tls_handshakes_shed",
            "SDS connections refused unprocessed after their ClientHello (a TLS internal_error \
             alert, then closed): more TLS handshakes were waiting than could be served within \
             sds.handshakeTimeout.",
            &none,
            sds.handshakes_shed,
        )?;
        counter(
            e,
            "sds_tls_handshakes_timed_out",
            "SDS TLS handshakes given up after sds.handshakeTimeout (also counted as \
             unauthenticated).",
            &none,
            sds.handshakes_timed_out,
        )?;
        counter(
            e,
            "admin_unauthorized",
            "Admin requests to change state refused for a missing, wrong or unconfigured token.",
            &none,
            self.unauthorized.load(Ordering::Relaxed),
        )?;
        Ok(())
    }
}
