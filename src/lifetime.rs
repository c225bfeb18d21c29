//! Certificate lifetimes: the one policy every path that issues a leaf applies — the daemon's
//! cache (through [`Config::validate`](crate::config::Config::validate) at startup),
//! `meshca issue`, managed TLS Secrets and the `meshca rotate` cron — and what it implies for
//! the CAs above those leaves.
//!
//! A lifetime outside `[min, max]` is refused with the limit and the configuration key that
//! sets it, never silently capped (Istio refuses a TTL above `MAX_WORKLOAD_CERT_TTL` the same
//! way). Workload certificates (those with a SPIFFE ID) and server certificates (DNS names
//! only: webhooks, gateways) have separate maxima, because server certificates may
//! legitimately live long. A CA must be able to cover the longest leaf this policy allows, so
//! a root or intermediate shorter than that is refused too. That a leaf does not outlive the
//! CA that signs it is checked where the CA is known: Tresor refuses such a leaf, Vault's
//! default `leaf_not_after_behavior` does too.
//!
//! [`LifetimePolicy::check`] is a pure function, so the issuance pipeline can run it as a
//! stage.

use std::time::{Duration, SystemTime};

use meshca_provider::{LeafSpec, format_duration, rfc3339};

/// The shortest leaf lifetime meshca issues, whatever asks: below it a certificate cannot be
/// renewed before it expires.
pub const MIN_LEAF_LIFETIME: Duration = Duration::from_secs(10);

/// Default longest lifetime of a workload certificate (`certificateProvider
/// .maxServiceCertValidityDuration`): 90 days, Istio's `MAX_WORKLOAD_CERT_TTL`.
pub const DEFAULT_MAX_WORKLOAD_LIFETIME: Duration = Duration::from_secs(2160 * 3600);

/// Default longest lifetime of a server certificate (`certificateProvider
/// .maxServerCertValidityDuration`): 365 days, for webhooks and gateways whose certificate
/// `meshca rotate` renews.
pub const DEFAULT_MAX_SERVER_LIFETIME: Duration = Duration::from_secs(8760 * 3600);

/// The configuration key of the workload maximum.
pub const MAX_WORKLOAD_KEY: &str = "certificateProvider.maxServiceCertValidityDuration";

/// The configuration key of the server maximum.
pub const MAX_SERVER_KEY: &str = "certificateProvider.maxServerCertValidityDuration";

/// Why a lifetime was refused. Durations are kept as they were; messages write them the way
/// configuration does (`24h`, `1h30m`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifetimeError {
    /// A leaf lifetime below [`MIN_LEAF_LIFETIME`].
    #[error(
        "requested lifetime {} is shorter than the minimum {}: such a certificate cannot be \
         renewed before it expires; ask for at least {}",
        format_duration(*requested), format_duration(*min), format_duration(*min)
    )]
    TooShort {
        /// What was asked for.
        requested: Duration,
        /// The minimum.
        min: Duration,
    },
    /// A leaf lifetime above the configured maximum.
    #[error(
        "requested lifetime {} is greater than the maximum allowed {} ({key}): ask for at most \
         {}, or raise {key}",
        format_duration(*requested), format_duration(*max), format_duration(*max)
    )]
    TooLong {
        /// What was asked for.
        requested: Duration,
        /// The maximum.
        max: Duration,
        /// The configuration key that sets the maximum.
        key: &'static str,
    },
    /// A configured maximum below the minimum.
    #[error(
        "{key} is {}, below the shortest lifetime meshca issues ({}): set it to at least {}",
        format_duration(*max), format_duration(*min), format_duration(*min)
    )]
    MaxBelowMin {
        /// The maximum.
        max: Duration,
        /// The minimum.
        min: Duration,
        /// Its configuration key.
        key: &'static str,
    },
    /// A CA lifetime of zero: the CA would be over before it is used.
    #[error("the {what} lifetime is {}: a CA must be valid for longer than that", format_duration(*lifetime))]
    CaNotPositive {
        /// Which CA: `intermediate (--lifetime)`, `root (tresor.rootValidityDuration)`.
        what: &'static str,
        /// What was asked for.
        lifetime: Duration,
    },
    /// A CA lifetime shorter than the longest leaf it must be able to sign.
    #[error(
        "the {what} lifetime {} is shorter than the longest leaf it must cover ({}, {leaf_key}): \
         choose at least {}, or lower {leaf_key}",
        format_duration(*lifetime), format_duration(*longest_leaf), format_duration(*longest_leaf)
    )]
    CaShorterThanLeaf {
        /// Which CA.
        what: &'static str,
        /// What was asked for.
        lifetime: Duration,
        /// The longest leaf lifetime allowed.
        longest_leaf: Duration,
        /// The key setting that leaf maximum.
        leaf_key: &'static str,
    },
    /// A CA that would end after the CA that signs it.
    #[error(
        "the {what} would end at {ends}, after its issuer {issuer} expires ({issuer_not_after}): \
         choose a lifetime of at most {}, or rotate {issuer} first",
        format_duration(*at_most)
    )]
    CaOutlivesIssuer {
        /// Which CA.
        what: &'static str,
        /// When it would end (RFC 3339).
        ends: String,
        /// The issuer's subject.
        issuer: String,
        /// The issuer's NotAfter (RFC 3339).
        issuer_not_after: String,
        /// The longest lifetime that would still fit.
        at_most: Duration,
    },
}

/// The kind of leaf, which decides its maximum lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// A certificate carrying a SPIFFE ID (with or without DNS names).
    Workload,
    /// A certificate for DNS names only (webhooks, gateways).
    Server,
}

impl LeafKind {
    /// The kind of `spec`.
    pub fn of(spec: &LeafSpec) -> Self {
        if spec.spiffe_id.is_some() {
            LeafKind::Workload
        } else {
            LeafKind::Server
        }
    }
}

/// The allowed range of one kind of leaf lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifetimePolicy {
    /// The shortest lifetime allowed.
    pub min: Duration,
    /// The longest lifetime allowed.
    pub max: Duration,
    /// The configuration key that sets `max`, named in refusals.
    pub max_key: &'static str,
}

impl LifetimePolicy {
    /// The policy for `kind` with the maximum `max` (what `certificateProvider.*` sets: see
    /// `ProviderConfig::lifetime_policy`).
    pub fn new(kind: LeafKind, max: Duration) -> Self {
        let max_key = match kind {
            LeafKind::Workload => MAX_WORKLOAD_KEY,
            LeafKind::Server => MAX_SERVER_KEY,
        };
        Self {
            min: MIN_LEAF_LIFETIME,
            max,
            max_key,
        }
    }

    /// Returns `requested` if it lies within `[min, max]`, else why not.
    pub fn check(&self, requested: Duration) -> Result<Duration, LifetimeError> {
        if self.max < self.min {
            return Err(LifetimeError::MaxBelowMin {
                max: self.max,
                min: self.min,
                key: self.max_key,
            });
        }
        if requested < self.min {
            return Err(LifetimeError::TooShort {
                requested,
                min: self.min,
            });
        }
        if requested > self.max {
            return Err(LifetimeError::TooLong {
                requested,
                max: self.max,
                key: self.max_key,
            });
        }
        Ok(requested)
    }
}

/// The longest leaf any path may ask for under the `workload` and `server` policies, and the
/// key that sets it: what a CA must be able to cover.
pub fn longest_leaf(
    workload: &LifetimePolicy,
    server: &LifetimePolicy,
) -> (Duration, &'static str) {
    if server.max > workload.max {
        (server.max, server.max_key)
    } else {
        (workload.max, workload.max_key)
    }
}

/// Checks the lifetime of a CA about to be made (`what` names it and the flag or key that
/// set the lifetime): above zero, and at least the longest leaf `config` allows.
pub fn check_ca_lifetime(
    what: &'static str,
    lifetime: Duration,
    longest: (Duration, &'static str),
) -> Result<(), LifetimeError> {
    if lifetime.is_zero() {
        return Err(LifetimeError::CaNotPositive { what, lifetime });
    }
    let (longest_leaf, leaf_key) = longest;
    if lifetime < longest_leaf {
        return Err(LifetimeError::CaShorterThanLeaf {
            what,
            lifetime,
            longest_leaf,
            leaf_key,
        });
    }
    Ok(())
}

/// Checks that a CA of `lifetime` made at `now` ends no later than its issuer
/// (`issuer_not_after`), rather than being cut short where the issuer ends.
pub fn check_within_issuer(
    what: &'static str,
    lifetime: Duration,
    now: SystemTime,
    issuer: &str,
    issuer_not_after: SystemTime,
) -> Result<(), LifetimeError> {
    let ends = now.checked_add(lifetime);
    if ends.is_some_and(|ends| ends <= issuer_not_after) {
        return Ok(());
    }
    let at_most = issuer_not_after.duration_since(now).unwrap_or_default();
    Err(LifetimeError::CaOutlivesIssuer {
        what,
        ends: ends.map_or_else(|| "beyond the year 9999".to_owned(), rfc3339),
        issuer: issuer.to_owned(),
        issuer_not_after: rfc3339(issuer_not_after),
        // Whole seconds, as certificates have them.
        at_most: Duration::from_secs(at_most.as_secs()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn workload() -> LifetimePolicy {
        LifetimePolicy::new(LeafKind::Workload, DEFAULT_MAX_WORKLOAD_LIFETIME)
    }

    fn server() -> LifetimePolicy {
        LifetimePolicy::new(LeafKind::Server, DEFAULT_MAX_SERVER_LIFETIME)
    }

    #[test]
    fn leaf_lifetimes_inside_the_range_pass_and_outside_are_refused_with_the_limit() {
        let workload = workload();
        let server = server();
        assert_eq!(workload.check(24 * HOUR), Ok(24 * HOUR));
        assert_eq!(workload.check(MIN_LEAF_LIFETIME), Ok(MIN_LEAF_LIFETIME));
        assert_eq!(workload.check(2160 * HOUR), Ok(2160 * HOUR));
        assert_eq!(server.check(8760 * HOUR), Ok(8760 * HOUR));

        let too_long = workload.check(2161 * HOUR).unwrap_err();
        assert_eq!(
            too_long.to_string(),
            "requested lifetime 2161h is greater than the maximum allowed 2160h \
             (certificateProvider.maxServiceCertValidityDuration): ask for at most 2160h, or \
             raise certificateProvider.maxServiceCertValidityDuration"
        );
        let too_long = server.check(8761 * HOUR).unwrap_err().to_string();
        assert!(
            too_long.contains(
                "maximum allowed 8760h (certificateProvider.maxServerCertValidityDuration)"
            ),
            "{too_long}"
        );
        for short in [Duration::ZERO, Duration::from_secs(9)] {
            let err = workload.check(short).unwrap_err();
            assert!(matches!(err, LifetimeError::TooShort { .. }), "{err}");
            assert!(err.to_string().contains("minimum 10s"), "{err}");
        }
    }

    #[test]
    fn the_kind_follows_the_spiffe_id() {
        let id = meshca_provider::SpiffeId::from_short("a/b", &Default::default()).unwrap();
        let workload = LeafSpec::workload(&id, &["x.example".parse().unwrap()], HOUR);
        assert_eq!(LeafKind::of(&workload), LeafKind::Workload);
        let server = LeafSpec::server(vec!["x.example".parse().unwrap()], HOUR);
        assert_eq!(LeafKind::of(&server), LeafKind::Server);
        let policy = LifetimePolicy::new(LeafKind::of(&server), HOUR);
        assert_eq!(policy.max_key, MAX_SERVER_KEY);
    }

    #[test]
    fn a_maximum_below_the_minimum_is_named() {
        let err = LifetimePolicy::new(LeafKind::Workload, Duration::from_secs(5))
            .check(Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(err, LifetimeError::MaxBelowMin { .. }), "{err}");
        assert!(err.to_string().contains(MAX_WORKLOAD_KEY), "{err}");
    }

    #[test]
    fn a_ca_must_cover_the_longest_leaf_and_fit_under_its_issuer() {
        let longest = longest_leaf(&workload(), &server());
        assert_eq!(longest, (8760 * HOUR, MAX_SERVER_KEY));
        check_ca_lifetime("intermediate (--lifetime)", 8760 * HOUR, longest).unwrap();
        let zero = check_ca_lifetime("intermediate (--lifetime)", Duration::ZERO, longest);
        assert!(matches!(zero, Err(LifetimeError::CaNotPositive { .. })));
        let short = check_ca_lifetime("intermediate (--lifetime)", 720 * HOUR, longest)
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("720h is shorter than the longest leaf it must cover (8760h"),
            "{short}"
        );

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        check_within_issuer("intermediate", 10 * HOUR, now, "CN=root", now + 10 * HOUR).unwrap();
        let err = check_within_issuer("intermediate", 11 * HOUR, now, "CN=root", now + 10 * HOUR)
            .unwrap_err();
        assert!(
            matches!(err, LifetimeError::CaOutlivesIssuer { at_most, .. } if at_most == 10 * HOUR),
            "{err}"
        );
        assert!(err.to_string().contains("at most 10h"), "{err}");
        let over = check_within_issuer("intermediate", HOUR, now, "CN=root", now - HOUR);
        assert!(over.is_err());
    }
}
