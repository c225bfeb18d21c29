//! [`LeafSpec`]: what the daemon asks a backend to certify — names and lifetime, the key apart.
//! Below the provider contract, the keys and the CSRs, which all read it.

use std::time::Duration;

use crate::{DnsName, SpiffeId};

/// The certificate the daemon wants: names and lifetime. The key comes separately.
///
/// The profile (SPEC "Identity and certificate profile"): a workload certificate names its
/// SPIFFE ID as a URI SAN and nothing else unless DNS names were explicitly asked for, and has
/// an empty subject. No DNS name is ever derived from the identity: `<sa>.<ns>.<trust-domain>`
/// can be a Kubernetes Service's name (namespace `svc`, service account `payments.prod` →
/// `payments.prod.svc.cluster.local`), and a common name is a hostname to verifiers that fall
/// back to it (OpenSSL's `X509_check_host` does when there is no DNS SAN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject common name: for server certificates, their first DNS name when it fits X.509's
    /// 64-character limit; never for workload certificates.
    pub common_name: Option<String>,
    /// The workload identity (URI SAN), for service and bootstrap certificates.
    pub spiffe_id: Option<SpiffeId>,
    /// DNS SANs, in order, each once: only names explicitly asked for, each a valid hostname.
    pub dns_names: Vec<DnsName>,
    /// Requested lifetime (advisory).
    pub lifetime: Duration,
}

/// X.509's upper bound on a common name (RFC 5280, ub-common-name).
const MAX_COMMON_NAME: usize = 64;

impl LeafSpec {
    /// A service certificate: the SPIFFE ID as URI SAN, an empty subject, and the DNS names
    /// explicitly asked for (`dns_names`, duplicates dropped) — none by default.
    pub fn workload(id: &SpiffeId, dns_names: &[DnsName], lifetime: Duration) -> Self {
        Self {
            common_name: None,
            spiffe_id: Some(id.clone()),
            dns_names: crate::dns::dedup(dns_names.iter().cloned()),
            lifetime,
        }
    }

    /// A server certificate for a webhook or gateway: DNS SANs `dns_names` (duplicates
    /// dropped), CN the first of them, no SPIFFE ID.
    pub fn server(dns_names: Vec<DnsName>, lifetime: Duration) -> Self {
        let dns_names = crate::dns::dedup(dns_names);
        let common_name = dns_names
            .first()
            .filter(|n| n.len() <= MAX_COMMON_NAME)
            .map(ToString::to_string);
        Self {
            common_name,
            spiffe_id: None,
            dns_names,
            lifetime,
        }
    }
}
