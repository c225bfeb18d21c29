//! The provider's health, checked in the background: readiness and `/metrics` read it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::cache::CertificateCache;

/// The provider's health as last checked in the background.
#[derive(Debug, Default)]
pub struct ProviderHealth {
    pub(super) checked: AtomicBool,
    healthy: AtomicBool,
    checks: AtomicU64,
    pub(super) failures: AtomicU64,
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

    pub(super) fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Checks the provider every `interval` (each check bounded by `timeout`) until the returned
/// task is aborted, recording the result in `health`.
///
/// When a check passes after one failed, `cache` is told ([`CertificateCache::provider_recovered`])
/// so the renewals the outage left waiting in backoff are retried at once; every other passing
/// check lets it probe one of them ([`CertificateCache::provider_healthy`]).
pub fn spawn_health_checks(
    cache: Arc<CertificateCache>,
    health: Arc<ProviderHealth>,
    interval: Duration,
    timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    let provider = cache.provider().clone();
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
            let recovered = result.is_ok() && !was;
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
            if recovered {
                cache.provider_recovered();
            } else if health.is_healthy() {
                cache.provider_healthy();
            }
        }
    })
}
