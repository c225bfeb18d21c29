//! The configuration turned into the settings each part of the daemon is built from: the
//! issuance pipeline, the cache and the leaf lifetime policy. It lives here, above them, so
//! that they never import the configuration (the module graph stays a DAG:
//! tests/module_cycles.rs).

use meshca_provider::LeafSpec;

use super::{Config, ConfigError, ProviderConfig};
use crate::cache::CacheSettings;
use crate::issuance::{PipelineSettings, RequestPolicy};
use crate::lifetime::{LeafKind, LifetimePolicy};

impl Config {
    /// The issuance pipeline's settings: `renewal.issueTimeout`, `extraTrustedRoots` and the
    /// `certificateProvider.*` lifetime bounds. The daemon, `meshca issue` and the `meshca
    /// rotate` cron all build their pipeline from this, so they share timeout, roots and policy.
    pub fn pipeline_settings(&self) -> Result<PipelineSettings, ConfigError> {
        Ok(PipelineSettings {
            issue_timeout: self.renewal.issue_timeout,
            extra_roots: self.extra_trusted_roots()?,
            policy: self.certificate_provider.request_policy(),
        })
    }

    /// The cache settings `certificateProvider.*` and `renewal.*` describe (what `meshca
    /// serve` runs with); the rest at their defaults.
    pub fn cache_settings(&self) -> CacheSettings {
        let renewal = &self.renewal;
        CacheSettings {
            lifetime: self.certificate_provider.service_cert_validity_duration,
            key_type: self.certificate_provider.key_type,
            renew_fraction: renewal.fraction,
            jitter_fraction: renewal.jitter,
            renew_floor: renewal.floor,
            backoff_initial: renewal.backoff_initial,
            backoff_max: renewal.backoff_max,
            issue_timeout: renewal.issue_timeout,
            ..CacheSettings::default()
        }
    }
}

impl Config {
    /// How the Vault provider schedules its intermediate in `vault.mode: upstream`: the
    /// cache's renewal settings, the workload leaf lifetime, and twice the trust bundle's
    /// re-read interval before an intermediate under a new root signs.
    pub fn upstream_policy(&self) -> meshca_vault::UpstreamPolicy {
        let cache = self.cache_settings();
        meshca_vault::UpstreamPolicy {
            trust_domain: self.trust_domain(),
            renew_fraction: cache.renew_fraction,
            jitter_fraction: cache.jitter_fraction,
            backoff_initial: cache.backoff_initial,
            backoff_max: cache.backoff_max,
            longest_leaf: self.certificate_provider.service_cert_validity_duration,
            clock_skew: self.tresor.clock_skew_allowance,
            bundle_lead: cache.trust_refresh * 2,
        }
    }
}

impl ProviderConfig {
    /// The lifetime bounds of `kind` (`certificateProvider.max*CertValidityDuration`).
    pub fn lifetime_policy(&self, kind: LeafKind) -> LifetimePolicy {
        let max = match kind {
            LeafKind::Workload => self.max_service_cert_validity_duration,
            LeafKind::Server => self.max_server_cert_validity_duration,
        };
        LifetimePolicy::new(kind, max)
    }

    /// The lifetime bounds of the kind of leaf `spec` describes.
    pub fn lifetime_policy_for(&self, spec: &LeafSpec) -> LifetimePolicy {
        self.lifetime_policy(LeafKind::of(spec))
    }

    /// The request policy of the issuance pipeline: both kinds' lifetime bounds.
    pub fn request_policy(&self) -> RequestPolicy {
        RequestPolicy {
            workload: self.lifetime_policy(LeafKind::Workload),
            server: self.lifetime_policy(LeafKind::Server),
        }
    }

    /// The longest leaf any path may ask for, and the key that sets it: what a CA must cover.
    pub fn longest_leaf(&self) -> (std::time::Duration, &'static str) {
        crate::lifetime::longest_leaf(
            &self.lifetime_policy(LeafKind::Workload),
            &self.lifetime_policy(LeafKind::Server),
        )
    }
}
