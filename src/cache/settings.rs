//! How the cache issues and renews ([`CacheSettings`]): one default per setting, and the one
//! validator of the `renewal.*` settings, run when the configuration loads.

use std::time::Duration;

use meshca_provider::{DnsName, KeyType, TrustBundle, format_duration};

use super::CacheError;
use super::policy::{
    Backoff, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_JITTER_FRACTION,
    DEFAULT_RENEW_FLOOR, DEFAULT_RENEW_FRACTION, RenewPolicy,
};
use crate::issuance::{DEFAULT_ISSUE_TIMEOUT, PipelineSettings, RequestPolicy};

/// Default lifetime of a workload certificate
/// (`certificateProvider.serviceCertValidityDuration`).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How the cache issues and renews.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Lifetime requested for leaf certificates (providers may grant less).
    pub lifetime: Duration,
    /// Type of the leaf keys the cache generates.
    pub key_type: KeyType,
    /// Renew at this fraction of the real lifetime.
    pub renew_fraction: f64,
    /// Spread renewals by ± this fraction of the lifetime.
    pub jitter_fraction: f64,
    /// Never renew later than this long before expiry (shrunk to half of very short lifetimes).
    pub renew_floor: Duration,
    /// First delay after a failed issuance; doubled on each further failure.
    pub backoff_initial: Duration,
    /// Longest delay between retries.
    pub backoff_max: Duration,
    /// DNS SANs added to every workload certificate (none by default: a workload certificate
    /// names its SPIFFE ID alone).
    pub extra_dns: Vec<DnsName>,
    /// How long one provider call (issue or trust bundle) may take. Used by
    /// [`CertificateCache::new`](super::CertificateCache::new) to build its pipeline; a cache
    /// made [`with_pipeline`](super::CertificateCache::with_pipeline) uses the pipeline's.
    pub issue_timeout: Duration,
    /// How many issuances may run at once.
    pub max_concurrent_issues: usize,
    /// How often the trust bundle is re-read from the provider.
    pub trust_refresh: Duration,
    /// Roots trusted besides the provider's (`extraTrustedRoots`): merged into every bundle
    /// the pipeline publishes, after the provider's own roots. Like `issue_timeout`, for the
    /// pipeline [`CertificateCache::new`](super::CertificateCache::new) builds.
    pub extra_roots: TrustBundle,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            lifetime: DEFAULT_LIFETIME,
            key_type: KeyType::P256,
            renew_fraction: DEFAULT_RENEW_FRACTION,
            jitter_fraction: DEFAULT_JITTER_FRACTION,
            renew_floor: DEFAULT_RENEW_FLOOR,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            extra_dns: Vec::new(),
            issue_timeout: DEFAULT_ISSUE_TIMEOUT,
            max_concurrent_issues: 64,
            trust_refresh: Duration::from_secs(5 * 60),
            extra_roots: TrustBundle::default(),
        }
    }
}

impl CacheSettings {
    /// The renewal policy these settings describe.
    pub fn renew_policy(&self) -> RenewPolicy {
        RenewPolicy {
            fraction: self.renew_fraction,
            jitter_fraction: self.jitter_fraction,
            floor: self.renew_floor,
        }
    }

    /// The retry backoff these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.backoff_initial,
            max: self.backoff_max,
        }
    }

    /// The pipeline settings of a cache made with
    /// [`CertificateCache::new`](super::CertificateCache::new): these settings' timeout and
    /// extra roots, the default request policy.
    pub fn pipeline(&self) -> PipelineSettings {
        PipelineSettings {
            issue_timeout: self.issue_timeout,
            extra_roots: self.extra_roots.clone(),
            policy: RequestPolicy::default(),
        }
    }

    /// Checks the settings: the one validator of each `renewal.*` setting, run by
    /// [`Config::validate`](crate::config::Config::validate) when the configuration loads (the
    /// cache itself clamps nonsense instead of failing). An error's `field` is the
    /// configuration key.
    pub fn validate(&self) -> Result<(), CacheError> {
        let invalid = |field: &'static str, reason: String| {
            Err(CacheError::InvalidSettings { field, reason })
        };
        // The same minimum as every other path (`crate::lifetime`).
        if self.lifetime < crate::lifetime::MIN_LEAF_LIFETIME {
            return invalid(
                "certificateProvider.serviceCertValidityDuration",
                format!(
                    "{} is too short: use at least {}",
                    format_duration(self.lifetime),
                    format_duration(crate::lifetime::MIN_LEAF_LIFETIME)
                ),
            );
        }
        let (fraction, jitter) = (self.renew_fraction, self.jitter_fraction);
        if !(fraction > 0.0 && fraction < 1.0) {
            return invalid(
                "renewal.fraction",
                format!("{fraction} is not between 0 and 1 (default {DEFAULT_RENEW_FRACTION})"),
            );
        }
        if !(0.0..=0.5).contains(&jitter) || jitter >= fraction || jitter + fraction >= 1.0 {
            return invalid(
                "renewal.jitter",
                format!(
                    "{jitter} must be between 0 and 0.5 and keep fraction ± jitter inside (0, 1) \
                     (default {DEFAULT_JITTER_FRACTION})"
                ),
            );
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return invalid(
                "renewal.backoffMax",
                format!(
                    "renewal.backoffInitial ({}) must be above zero and renewal.backoffMax ({}) \
                     at least renewal.backoffInitial (defaults {} and {})",
                    format_duration(self.backoff_initial),
                    format_duration(self.backoff_max),
                    format_duration(DEFAULT_BACKOFF_INITIAL),
                    format_duration(DEFAULT_BACKOFF_MAX)
                ),
            );
        }
        if self.issue_timeout.is_zero() {
            return invalid(
                "renewal.issueTimeout",
                format!(
                    "must be above zero (default {})",
                    format_duration(DEFAULT_ISSUE_TIMEOUT)
                ),
            );
        }
        if self.max_concurrent_issues == 0 {
            return invalid("max_concurrent_issues", "must be ≥ 1".to_owned());
        }
        if self.trust_refresh.is_zero() {
            return invalid("trust_refresh", "must be > 0".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, Overrides, RenewalConfig};

    #[test]
    fn the_configuration_defaults_are_the_cache_defaults() {
        let from_config = Config::default().cache_settings();
        assert_eq!(from_config, CacheSettings::default());
        assert_eq!(RenewalConfig::default().floor, DEFAULT_RENEW_FLOOR);
        assert_eq!(RenewPolicy::default().floor, DEFAULT_RENEW_FLOOR);
        // As documented (README, `renewal.floor`).
        assert_eq!(DEFAULT_RENEW_FLOOR, Duration::from_secs(60));
    }

    #[test]
    fn bad_renewal_settings_are_refused_when_the_configuration_loads() {
        let load = |settings: &[&str]| {
            let mut overrides = Overrides::default();
            for setting in settings {
                overrides.set(setting).unwrap();
            }
            Config::load(None, &overrides)
        };
        let error = load(&["renewal.backoffInitial=10m", "renewal.backoffMax=1m"]).unwrap_err();
        match &error {
            ConfigError::InvalidValue { key, reason } => {
                assert_eq!(*key, "renewal.backoffMax");
                assert!(
                    reason.contains("(10m)") && reason.contains("(1m)"),
                    "{reason}"
                );
            }
            other => panic!("expected an invalid value, got {other}"),
        }
        // The same rule as the cache applies, not a laxer copy of it.
        let error = load(&["renewal.fraction=0.3", "renewal.jitter=0.3"]).unwrap_err();
        assert!(error.to_string().contains("renewal.jitter"), "{error}");
        let error = load(&["renewal.issueTimeout=0s"]).unwrap_err();
        assert!(
            error.to_string().contains("renewal.issueTimeout"),
            "{error}"
        );
        assert!(error.to_string().contains("default 30s"), "{error}");
        load(&["renewal.floor=5m", "renewal.jitter=0"]).unwrap();
    }
}
