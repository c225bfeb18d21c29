//! Request policy: what may be asked for, checked before a key is made or a backend is asked.
//!
//! - **Names**: a certificate names a SPIFFE ID or at least one DNS name (each already a valid
//!   [`DnsName`](meshca_provider::DnsName) by type).
//! - **Lifetime**: inside the configured bounds of its kind ([`LifetimePolicy`]): refused, not
//!   shortened, when outside. Then capped at what the backend declares it grants
//!   ([`Capabilities::max_lifetime`], a Vault role's `max_ttl`): the lifetime is advisory, and
//!   asking for more than the backend grants only earns a shorter certificate or a refusal.
//! - **Capabilities**: the request (with its key) against what the backend can do
//!   ([`Capabilities::check`]), once per issuance, so `issue` is never asked for a key type, a
//!   URI SAN, or — for a backend that certifies what a CSR says — names it would not certify.

use meshca_provider::{Capabilities, IssueRequest, LeafSpec};

use super::IssueError;
use crate::lifetime::{
    DEFAULT_MAX_SERVER_LIFETIME, DEFAULT_MAX_WORKLOAD_LIFETIME, LeafKind, LifetimePolicy,
};

/// The bounds a request must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPolicy {
    /// Lifetimes of certificates carrying a SPIFFE ID.
    pub workload: LifetimePolicy,
    /// Lifetimes of certificates for DNS names only.
    pub server: LifetimePolicy,
}

impl RequestPolicy {
    /// Checks `spec`'s names and lifetime, then caps the lifetime at what the backend grants.
    pub(super) fn apply(
        &self,
        spec: &mut LeafSpec,
        capabilities: &Capabilities,
    ) -> Result<(), IssueError> {
        if spec.spiffe_id.is_none() && spec.dns_names.is_empty() {
            return Err(IssueError::NoNames);
        }
        let bounds = match LeafKind::of(spec) {
            LeafKind::Workload => &self.workload,
            LeafKind::Server => &self.server,
        };
        bounds.check(spec.lifetime)?;
        if let Some(max) = capabilities.max_lifetime {
            spec.lifetime = spec.lifetime.min(max);
        }
        Ok(())
    }
}

impl Default for RequestPolicy {
    /// The bounds of the default configuration.
    fn default() -> Self {
        Self {
            workload: LifetimePolicy::new(LeafKind::Workload, DEFAULT_MAX_WORKLOAD_LIFETIME),
            server: LifetimePolicy::new(LeafKind::Server, DEFAULT_MAX_SERVER_LIFETIME),
        }
    }
}

/// The one capability check of an issuance (see the module docs).
pub(super) fn check_capabilities(
    provider: &'static str,
    capabilities: &Capabilities,
    request: &IssueRequest<'_>,
) -> Result<(), IssueError> {
    capabilities
        .check(request)
        .map_err(|source| IssueError::Provider { provider, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use meshca_provider::{CsrNames, KeyType, SpiffeId};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn capabilities(max_lifetime: Option<Duration>) -> Capabilities {
        Capabilities {
            max_lifetime,
            key_types: vec![KeyType::P256],
            uri_sans: true,
            csr_names: CsrNames::Decided,
            signs_in_process: false,
        }
    }

    fn workload(lifetime: Duration) -> LeafSpec {
        let id = SpiffeId::from_short("a/b", &Default::default()).unwrap();
        LeafSpec::workload(&id, &[], lifetime)
    }

    #[test]
    fn the_lifetime_is_checked_then_capped_at_what_the_backend_grants() {
        let policy = RequestPolicy::default();
        let mut spec = workload(48 * HOUR);
        policy
            .apply(&mut spec, &capabilities(Some(24 * HOUR)))
            .unwrap();
        assert_eq!(
            spec.lifetime,
            24 * HOUR,
            "asked the backend for its maximum"
        );
        let mut spec = workload(HOUR);
        policy
            .apply(&mut spec, &capabilities(Some(24 * HOUR)))
            .unwrap();
        assert_eq!(spec.lifetime, HOUR, "a shorter request is left alone");

        // Outside the configured bounds: refused, whatever the backend would grant.
        let mut spec = workload(2161 * HOUR);
        let error = policy.apply(&mut spec, &capabilities(None)).unwrap_err();
        assert!(matches!(error, IssueError::Lifetime(_)), "{error}");
        assert!(
            error.to_string().contains("maxServiceCertValidityDuration"),
            "{error}"
        );
        let mut spec = workload(Duration::from_secs(1));
        assert!(policy.apply(&mut spec, &capabilities(None)).is_err());
    }

    #[test]
    fn a_request_without_names_is_refused() {
        let mut spec = LeafSpec::server(Vec::new(), HOUR);
        let error = RequestPolicy::default()
            .apply(&mut spec, &capabilities(None))
            .unwrap_err();
        assert!(matches!(error, IssueError::NoNames), "{error}");
    }
}
