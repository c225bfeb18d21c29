//! The admin listener: `/healthz`, `/readyz` and `/metrics` (Prometheus / OpenMetrics text),
//! and `POST /rotate/leaves`, the one route that changes state.
//!
//! Nothing here waits on issuance: readiness reads an atomic kept by a background health check
//! and a snapshot of the cache; metrics are read from counters and snapshots at scrape time.
//!
//! **Who may change state.** Reads are open to whoever reaches the listener (probes and
//! Prometheus must); every route that changes state sits behind [`require_token`]: it needs
//! `Authorization: Bearer <token>` matching the file `admin.tokenFile` names, compared in
//! constant time, and answers 403 while no token is configured. A token, rather than "mutating
//! routes only on loopback", because in Kubernetes the listener must be reachable on the pod IP
//! (kubelet probes, scraping) and every container of the pod shares its loopback; a token works
//! the same in both places and tells the log which credential asked. The token itself is never
//! logged: a request is logged with its remote address and the token's fingerprint.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Extension, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use meshca_provider::{CertificateInfo, SharedProvider, SpiffeId, TrustDomain};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

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

/// Shortest admin token accepted: 32 characters (e.g. 24 random bytes in base64), so that
/// guessing it over the network is hopeless.
pub const MIN_TOKEN_LENGTH: usize = 32;

/// Why the admin token could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The token file could not be read.
    #[error(
        "cannot read the admin token file {path} (admin.tokenFile): {source}; create it with \
         `head -c 32 /dev/urandom | base64 > {path} && chmod 600 {path}`, or unset \
         admin.tokenFile to disable POST /rotate/leaves"
    )]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token is too short to resist guessing.
    #[error(
        "the admin token in {path} (admin.tokenFile) has {length} characters, fewer than \
         {MIN_TOKEN_LENGTH}: write a random one, e.g. `head -c 32 /dev/urandom | base64 > {path}`"
    )]
    TokenTooShort {
        /// The file.
        path: PathBuf,
        /// Characters found (surrounding whitespace excluded).
        length: usize,
    },
}

/// The bearer token guarding the admin routes that change state. Redacted in `Debug`; only
/// its [fingerprint](AdminToken::fingerprint) may be logged.
pub struct AdminToken {
    token: Zeroizing<String>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({})", self.fingerprint())
    }
}

impl AdminToken {
    /// Reads the token from `path`: its content without surrounding whitespace (a trailing
    /// newline from `echo` or `base64` is not part of it), at least [`MIN_TOKEN_LENGTH`]
    /// characters.
    pub fn read(path: &Path) -> Result<Self, AdminError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            AdminError::TokenFile {
                path: path.to_owned(),
                source,
            }
        })?);
        let token = text.trim();
        if token.chars().count() < MIN_TOKEN_LENGTH {
            return Err(AdminError::TokenTooShort {
                path: path.to_owned(),
                length: token.chars().count(),
            });
        }
        Ok(Self {
            token: Zeroizing::new(token.to_owned()),
        })
    }

    /// The value to send as `Authorization: Bearer <value>`.
    pub fn bearer(&self) -> &str {
        &self.token
    }

    /// `sha256:` and the first 16 hex digits of the token's SHA-256: names the token in logs
    /// without revealing it.
    pub fn fingerprint(&self) -> String {
        let digest = meshca_provider::x509::sha256(self.token.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// Whether `presented` is this token. Both are hashed first, so the comparison takes the
    /// same time whatever the presented value and wherever it differs.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = meshca_provider::x509::sha256(self.token.as_bytes());
        let given = meshca_provider::x509::sha256(presented.as_bytes());
        expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// How the admin listener behaves (`admin.*`).
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// The file holding the token of the routes that change state; `None` disables them.
    /// Read again on every such request, so a rotated Secret takes effect without a restart.
    pub token_file: Option<PathBuf>,
    /// Label the certificate expiry gauge with every identity (see [`crate::config::AdminConfig`]).
    pub per_identity_metrics: bool,
}

impl AdminSettings {
    /// The settings from `admin.*`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            token_file: config.admin_token_file().map(Path::to_owned),
            per_identity_metrics: config.admin.per_identity_metrics,
        }
    }

    /// Reads the token once, so that a daemon with an unusable `admin.tokenFile` does not start.
    /// Returns the token's fingerprint, for the startup log.
    pub fn check(&self) -> Result<Option<String>, AdminError> {
        self.token_file
            .as_deref()
            .map(|path| AdminToken::read(path).map(|t| t.fingerprint()))
            .transpose()
    }
}

/// What the admin endpoints read.
pub struct AdminState {
    cache: Arc<CertificateCache>,
    trust_domain: TrustDomain,
    sds: Arc<SdsStats>,
    health: Arc<ProviderHealth>,
    settings: AdminSettings,
    unauthorized: Arc<AtomicU64>,
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
        settings: AdminSettings,
    ) -> Arc<Self> {
        let unauthorized = Arc::new(AtomicU64::new(0));
        let mut registry = Registry::with_prefix("meshca");
        registry.register_collector(Box::new(Snapshot {
            cache: cache.clone(),
            sds: sds.clone(),
            health: health.clone(),
            per_identity: settings.per_identity_metrics,
            unauthorized: unauthorized.clone(),
        }));
        Arc::new(Self {
            cache,
            trust_domain,
            sds,
            health,
            settings,
            unauthorized,
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

/// The admin routes. Every route that changes state is in `mutating`, behind
/// [`require_token`]; the others answer GET (and HEAD) only.
pub fn router(state: Arc<AdminState>) -> Router {
    let mutating = Router::new()
        .route("/rotate/leaves", post(rotate_leaves))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(mutating)
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Who asked for a state change: put in the request by [`require_token`] for the log.
#[derive(Debug, Clone)]
struct Caller {
    /// The peer's address ("unknown" when the listener does not record it).
    remote: String,
    /// The fingerprint of the token it presented.
    token: String,
}

/// Lets a request through only with `Authorization: Bearer <the token in admin.tokenFile>`.
/// No token configured: 403 saying how to configure one. No or another token: 401. Refusals
/// are counted (`meshca_admin_unauthorized_total`) and logged at debug level only, so that a
/// flood of bad requests does not become a flood of log lines.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |ConnectInfo(a)| a.to_string());
    let route = format!("{} {}", request.method(), request.uri().path());
    let Some(path) = state.settings.token_file.as_deref() else {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%remote, %route, "admin request refused: no admin.tokenFile configured");
        return (
            StatusCode::FORBIDDEN,
            format!(
                "{route} is disabled: this daemon has no admin token. Set admin.tokenFile to a \
                 file holding a random token of at least {MIN_TOKEN_LENGTH} characters (e.g. \
                 `head -c 32 /dev/urandom | base64 > FILE`), restart, and send it as \
                 `Authorization: Bearer <token>` (`meshca rotate leaves` reads admin.tokenFile)\n"
            ),
        )
            .into_response();
    };
    let token = match AdminToken::read(path) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(%remote, %route, "admin request refused: {e}");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon cannot read its admin token (admin.tokenFile): see its log\n",
            )
                .into_response();
        }
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refusal = match presented {
        None => Some(
            "this route needs `Authorization: Bearer <token>`, the token in the \
                      daemon's admin.tokenFile",
        ),
        Some(given) if !token.matches(given) => {
            Some("the bearer token is not the one in the daemon's admin.tokenFile")
        }
        Some(_) => None,
    };
    if let Some(why) = refusal {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%remote, %route, "admin request refused: {why}");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"meshca-admin\"")],
            format!("{why}\n"),
        )
            .into_response();
    }
    request.extensions_mut().insert(Caller {
        remote,
        token: token.fingerprint(),
    });
    next.run(request).await
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
    Extension(caller): Extension<Caller>,
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
    tracing::warn!(
        certificates = held,
        identity = %whose,
        remote = %caller.remote,
        token = %caller.token,
        "forced re-issue requested"
    );
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
    /// Label the expiry gauge with every identity (`admin.perIdentityMetrics`).
    per_identity: bool,
    unauthorized: Arc<AtomicU64>,
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
            "admin_unauthorized",
            "Admin requests to change state refused for a missing, wrong or unconfigured token.",
            &none,
            self.unauthorized.load(Ordering::Relaxed),
        )?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn token_in(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_token_is_read_trimmed_compared_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "0123456789abcdef0123456789abcdef-admin";
        let token = AdminToken::read(&token_in(dir.path(), &format!("{secret}\n"))).unwrap();
        assert_eq!(token.bearer(), secret);
        assert!(token.matches(secret));
        assert!(!token.matches(&format!("{secret}x")));
        assert!(!token.matches(&secret[1..]));
        assert!(!token.matches(""));
        let fingerprint = token.fingerprint();
        assert!(fingerprint.starts_with("sha256:") && fingerprint.len() == 7 + 16);
        let shown = format!("{token:?} {fingerprint}");
        assert!(
            !shown.contains(secret) && !shown.contains("0123456789"),
            "{shown}"
        );
    }

    #[test]
    fn a_short_or_missing_token_is_refused_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        let short = AdminToken::read(&token_in(dir.path(), "  short\n")).unwrap_err();
        assert!(matches!(short, AdminError::TokenTooShort { length: 5, .. }));
        assert!(short.to_string().contains("admin.tokenFile"), "{short}");
        let missing = AdminToken::read(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(missing, AdminError::TokenFile { .. }));
        assert!(missing.to_string().contains("admin.tokenFile"), "{missing}");
        let settings = AdminSettings {
            token_file: Some(dir.path().join("absent")),
            per_identity_metrics: false,
        };
        assert!(settings.check().is_err());
        assert_eq!(AdminSettings::default().check().unwrap(), None);
    }
}
