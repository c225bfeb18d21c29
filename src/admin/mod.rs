//! The admin listener: `/healthz`, `/readyz` and `/metrics` (Prometheus / OpenMetrics text),
//! and `POST /rotate/leaves`, the one route that changes state.
//!
//! Nothing here waits on issuance: readiness reads an atomic kept by a background health check
//! and a snapshot of the cache; metrics are read from counters and snapshots at scrape time.
//!
//! **Who may change state.** Reads are open to whoever reaches the listener (probes and
//! Prometheus must); every route that changes state sits behind `require_token` (in
//! `routes.rs`): it needs `Authorization: Bearer <token>` matching the file `admin.tokenFile`
//! names, compared in constant time, and answers 403 while no token is configured. A token, rather than "mutating
//! routes only on loopback", because in Kubernetes the listener must be reachable on the pod IP
//! (kubelet probes, scraping) and every container of the pod shares its loopback; a token works
//! the same in both places and tells the log which credential asked. The token itself is never
//! logged: a request is logged with its remote address and the token's fingerprint.

mod health;
mod metrics;
mod routes;
mod token;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshca_provider::TrustDomain;
use prometheus_client::registry::Registry;

pub use health::{ProviderHealth, spawn_health_checks};
use metrics::Snapshot;
pub use routes::{router, serve, serve_router};
pub use token::{AdminError, AdminToken, MIN_TOKEN_LENGTH};

use crate::cache::CertificateCache;
use crate::sds::SdsStats;

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
        Self::with_collectors(cache, trust_domain, sds, health, settings, Vec::new())
    }

    /// As [`new`](Self::new), with more figures on `/metrics`: each collector is read at
    /// scrape time, its names prefixed `meshca_` (the Istio CA API's counters, say).
    pub fn with_collectors(
        cache: Arc<CertificateCache>,
        trust_domain: TrustDomain,
        sds: Arc<SdsStats>,
        health: Arc<ProviderHealth>,
        settings: AdminSettings,
        collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
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
        for collector in collectors {
            registry.register_collector(collector);
        }
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

    /// Why the daemon is not ready, or `None` when it is. Ready means it can serve valid
    /// certificates (docs/OPERATIONS.md, "Readiness"):
    /// 1. the trust bundle is loaded; and
    /// 2. if certificates are cached, at least one is still valid (when every one has expired,
    ///    renewals are failing whatever the health check says, and nothing can be served); and
    /// 3. if none is cached, the provider passes its health check (it could issue the first).
    ///
    /// With some valid certificates cached, an outage of the provider does not make the daemon
    /// unready: it serves those while they last.
    pub fn unready_reason(&self) -> Option<String> {
        if self.cache.trust_bundle().borrow().is_empty() {
            return Some("no trust bundle loaded yet".to_owned());
        }
        let provider = self.cache.provider().name();
        let now = self.cache.now();
        let certificates = self.cache.certificates();
        let cached = certificates.len();
        let expired = certificates
            .iter()
            .filter(|(_, served)| served.info.not_after <= now)
            .count();
        if cached > 0 && expired < cached {
            return None;
        }
        let health = if !self.health.checked.load(Ordering::Acquire) {
            format!("provider {provider} not checked yet")
        } else if self.health.is_healthy() {
            format!("provider {provider} passes its health check")
        } else {
            format!(
                "provider {provider} unavailable ({})",
                self.health.last_error()
            )
        };
        if cached == 0 {
            if self.health.is_healthy() {
                return None;
            }
            return Some(format!("{health} and no certificate cached yet"));
        }
        Some(format!(
            "all {cached} cached certificate(s) have expired and none could be renewed yet; \
             {health}; see the log for the renewal errors"
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
