//! `meshca serve`: the daemon.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use meshca_provider::Clock;

use crate::cache::{CacheSettings, CertificateCache};
use crate::config::Config;
use crate::time::TokioClock;

/// `meshca serve` options (everything else is configuration).
#[derive(Debug, Args)]
pub struct ServeArgs {}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(config: Config, _args: ServeArgs) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let provider = crate::providers::build(&config, clock.clone()).await?;
    let cache = CertificateCache::new(provider, cache_settings(&config), clock);
    cache
        .refresh_trust_bundle()
        .await
        .context("cannot read the provider's trust bundle")?;
    tracing::info!(
        provider = config_kind(&config),
        trust_domain = %config.trust_domain,
        "meshca is running; stop it with SIGTERM or Ctrl-C"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    Ok(())
}

/// The cache settings from `certificateProvider.*` and `renewal.*`.
pub fn cache_settings(config: &Config) -> CacheSettings {
    let renewal = &config.renewal;
    CacheSettings {
        lifetime: config.certificate_provider.service_cert_validity_duration,
        key_type: config.certificate_provider.key_type,
        renew_fraction: renewal.fraction,
        jitter_fraction: renewal.jitter,
        renew_floor: renewal.floor,
        backoff_initial: renewal.backoff_initial,
        backoff_max: renewal.backoff_max,
        issue_timeout: renewal.issue_timeout,
        ..CacheSettings::default()
    }
}

fn config_kind(config: &Config) -> String {
    format!("{:?}", config.certificate_provider.kind).to_lowercase()
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot listen for SIGTERM ({err}); only Ctrl-C stops meshca");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
