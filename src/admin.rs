//! The admin listener: `/healthz`, `/readyz` and `/metrics` (Prometheus / OpenMetrics text).
//!
//! Nothing here waits on issuance: readiness reads an atomic kept by a background health check
//! and a snapshot of the cache; metrics are read from counters and snapshots at scrape time.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use meshca_provider::{CertificateInfo, SharedProvider, SpiffeId, TrustDomain};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::cache::{CertificateCache, LatencyHistogram};
use crate::sds::SdsStats;

/// The provider's health as last checked in the background.
#[derive(Debug, Default)]
pub struct ProviderHealth {
    checked: AtomicBool,
    healthy: AtomicBool,
    checks: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<String>,
}

impl ProviderHealth {
    /// Whether the last check passed (false before the first one).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn record(&self, result: Result<(), String>) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                last.clear();
                self.healthy.store(true, Ordering::Release);
            }
            Err(reason) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                *last = reason;
                self.healthy.store(false, Ordering::Release);
            }
        }
        self.checked.store(true, Ordering::Release);
    }

    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Checks the provider every `interval` (each check bounded by `timeout`) until the returned
/// task is aborted, recording the result in `health`.
pub fn spawn_health_checks(
    provider: SharedProvider,
    health: Arc<ProviderHealth>,
    interval: Duration,
    timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = match tokio::time::timeout(timeout, provider.check_health()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "{} did not answer a health check within {}",
                    provider.name(),
                    meshca_provider::format_duration(timeout)
                )),
            };
            let was = health.is_healthy() || !health.checked.load(Ordering::Acquire);
            match &result {
                Err(reason) if was => {
                    tracing::warn!(provider = provider.name(), "provider unhealthy: {reason}")
                }
                Ok(()) if !was => {
                    tracing::info!(provider = provider.name(), "provider healthy again")
                }
                _ => {}
            }
            health.record(result);
        }
    })
}

/// What the admin endpoints read.
pub struct AdminState {
    cache: Arc<CertificateCache>,
    trust_domain: TrustDomain,
    sds: Arc<SdsStats>,
    health: Arc<ProviderHealth>,
    registry: Registry,
}

impl fmt::Debug for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

impl AdminState {
    /// The state for a daemon serving `cache` over an SDS server counting into `sds`.
    pub fn new(
        cache: Arc<CertificateCache>,
        trust_domain: TrustDomain,
        sds: Arc<SdsStats>,
        health: Arc<ProviderHealth>,
    ) -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshca");
        registry.register_collector(Box::new(Snapshot {
            cache: cache.clone(),
            sds: sds.clone(),
            health: health.clone(),
        }));
        Arc::new(Self {
            cache,
            trust_domain,
            sds,
            health,
            registry,
        })
    }

    /// Why the daemon is not ready, or `None` when it is: CA material loaded, and the provider
    /// reachable or every cached certificate still valid.
    pub fn unready_reason(&self) -> Option<String> {
        if self.cache.trust_bundle().borrow().is_empty() {
            return Some("no trust bundle loaded yet".to_owned());
        }
        if self.health.is_healthy() {
            return None;
        }
        let now = SystemTime::now();
        let certificates = self.cache.certificates();
        let all_valid = !certificates.is_empty()
            && certificates
                .iter()
                .all(|(_, served)| served.info.not_after > now);
        if all_valid {
            return None;
        }
        let why = if self.health.checked.load(Ordering::Acquire) {
            self.health.last_error()
        } else {
            "the provider has not been checked yet".to_owned()
        };
        Some(format!(
            "provider {} unavailable ({why}) and no valid certificate cached",
            self.cache.provider().name()
        ))
    }

    fn metrics_text(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The SDS counters this state reads.
    pub fn sds_stats(&self) -> &Arc<SdsStats> {
        &self.sds
    }
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/rotate/leaves", post(rotate_leaves))
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    match state.unready_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// `POST /rotate/leaves[?identity=ns/sa]`: re-issue now (a suspected key leak) and push.
async fn rotate_leaves(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<RotateQuery>,
) -> Response {
    let identity = match query.identity.as_deref().filter(|i| !i.is_empty()) {
        None => None,
        Some(text) => match SpiffeId::from_short(text, &state.trust_domain)
            .or_else(|_| text.parse::<SpiffeId>())
        {
            Ok(id) => Some(id),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("identity {text:?}: {e}: give <namespace>/<service-account>\n"),
                )
                    .into_response();
            }
        },
    };
    let held = state
        .cache
        .certificates()
        .iter()
        .filter(|(key, _)| identity.as_ref().is_none_or(|id| *id == key.identity))
        .count();
    state.cache.renew_now(identity.as_ref());
    let whose = identity.map_or_else(|| "every identity".to_owned(), |id| id.to_string());
    tracing::warn!(certificates = held, identity = %whose, "forced re-issue requested");
    (
        StatusCode::ACCEPTED,
        format!("re-issuing {held} certificate(s) of {whose}; proxies get them as they arrive\n"),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct RotateQuery {
    identity: Option<String>,
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match state.metrics_text() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

/// Reads every figure at scrape time.
#[derive(Debug)]
struct Snapshot {
    cache: Arc<CertificateCache>,
    sds: Arc<SdsStats>,
    health: Arc<ProviderHealth>,
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

        let expiries: Vec<(Labels, i64)> = self
            .cache
            .certificates()
            .into_iter()
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
            "NotAfter of each cached certificate (Unix time).",
            &expiries,
        )?;

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
        Ok(())
    }
}
