//! The [`CertificateProvider`] trait: how the daemon asks a backend for a certificate.

use std::sync::Arc;
use std::time::Duration;

use crate::{CertificateChain, DnsName, KeyError, KeyType, LeafKey, SpiffeId, TrustBundle};

/// A provider shared across the daemon.
pub type SharedProvider = Arc<dyn CertificateProvider>;

/// A certificate backend: Tresor, Vault PKI, cert-manager.
///
/// Obligations of an implementation:
/// - `issue` MUST return a chain whose leaf carries exactly the SANs in the request's
///   [`LeafSpec`] and the request's public key, leaf first, followed by any intermediates, and
///   MUST NOT include the root. The daemon validates every returned chain against
///   [`trust_bundle`](Self::trust_bundle) before serving it.
/// - The requested lifetime is advisory: a backend MAY shorten it (a role's max TTL); the daemon
///   reads the real NotBefore/NotAfter from the returned leaf. A backend MUST fail with
///   [`ProviderError::Unsupported`] rather than silently drop something it cannot do (a key
///   type, a URI SAN).
/// - Implementations MUST NOT log, or put into errors, any private key material.
/// - Metrics, timeouts and chain validation are the daemon's job: they wrap the provider.
#[async_trait::async_trait]
pub trait CertificateProvider: Send + Sync + std::fmt::Debug + 'static {
    /// Short lowercase name for logs and metrics: `tresor`, `vault`, `cert-manager`.
    fn name(&self) -> &'static str;

    /// What this backend can issue. Checked by the daemon before every request.
    fn capabilities(&self) -> &Capabilities;

    /// Signs a certificate for `request`.
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<CertificateChain, ProviderError>;

    /// The roots that chains from this provider verify against.
    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError>;

    /// Whether the backend is reachable and its credentials are good, for `/readyz`.
    async fn check_health(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// What a provider can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The longest lifetime the backend will grant, if it is known to be capped.
    pub max_lifetime: Option<Duration>,
    /// The key types it signs.
    pub key_types: Vec<KeyType>,
    /// Whether it can put a URI SAN (the SPIFFE ID) in a certificate.
    pub uri_sans: bool,
    /// Whether it needs a PKCS#10 CSR ([`IssueRequest::csr_der`]); in-process backends don't.
    pub needs_csr: bool,
    /// Whether it signs in this process with CA material whose key was checked against its
    /// certificate when it was loaded (Tresor). The daemon then checks each returned chain's
    /// links (issuer names and key identifiers up to a root of the bundle) instead of verifying
    /// a signature it just watched being made; remote backends are always fully verified.
    pub signs_in_process: bool,
}

impl Capabilities {
    /// Checks a request against these capabilities.
    pub fn check(&self, spec: &LeafSpec, key_type: KeyType) -> Result<(), ProviderError> {
        if !self.key_types.contains(&key_type) {
            return Err(ProviderError::Unsupported {
                what: format!("{key_type} keys"),
            });
        }
        if spec.spiffe_id.is_some() && !self.uri_sans {
            return Err(ProviderError::Unsupported {
                what: "URI SANs (SPIFFE IDs)".to_owned(),
            });
        }
        Ok(())
    }
}

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

/// One issuance request: what to certify, and the key to certify.
#[derive(Debug, Clone, Copy)]
pub struct IssueRequest<'a> {
    /// Names and lifetime.
    pub spec: &'a LeafSpec,
    /// The leaf key made by the daemon; providers use its public half (or a CSR).
    pub key: &'a LeafKey,
}

impl IssueRequest<'_> {
    /// A PKCS#10 CSR (DER) for this request, signed by the leaf key. Built on demand: only
    /// backends that need one pay for the signature.
    pub fn csr_der(&self) -> Result<Vec<u8>, ProviderError> {
        self.key.csr_der(self.spec).map_err(ProviderError::from)
    }
}

/// Why a provider could not issue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The request asks for something this backend cannot do.
    #[error("this provider cannot issue {what}")]
    Unsupported {
        /// What was asked for.
        what: String,
    },
    /// The backend refused the request (a policy, a role): not worth retrying unchanged.
    #[error("{provider} refused the request: {reason}")]
    Rejected {
        /// The provider's name.
        provider: &'static str,
        /// The backend's reason and what to change.
        reason: String,
    },
    /// The backend's credentials were refused.
    #[error("{provider} rejected meshca's credentials: {reason}")]
    Unauthorized {
        /// The provider's name.
        provider: &'static str,
        /// The backend's reason and which setting to check.
        reason: String,
    },
    /// The backend could not be reached or answered with a server error: retry later.
    #[error("{provider} is unavailable: {reason}")]
    Unavailable {
        /// The provider's name.
        provider: &'static str,
        /// What failed.
        reason: String,
    },
    /// The backend answered with something that is not a usable certificate.
    #[error("{provider} returned an unusable answer: {reason}")]
    InvalidResponse {
        /// The provider's name.
        provider: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The CA material the provider signs with is missing or broken.
    #[error("certificate authority problem: {reason}")]
    Ca {
        /// What is wrong and where.
        reason: String,
    },
    /// The leaf key could not be used (for example to sign a CSR).
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl ProviderError {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Unavailable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrustDomain;

    fn dns(names: &[&str]) -> Vec<DnsName> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn workload_spec_carries_the_spiffe_id_alone_by_default() {
        // The collision of issue #16: namespace `svc`, service account `payments.prod`. The old
        // profile's derived name was payments.prod.svc.cluster.local, Service `payments` of
        // namespace `prod`.
        let id = SpiffeId::from_short("svc/payments.prod", &TrustDomain::default()).unwrap();
        let spec = LeafSpec::workload(&id, &[], Duration::from_secs(3600));
        assert_eq!(spec.common_name, None);
        assert!(spec.dns_names.is_empty(), "{:?}", spec.dns_names);
        assert_eq!(spec.spiffe_id.as_ref(), Some(&id));
    }

    #[test]
    fn explicit_names_are_kept_once_in_order() {
        let id = SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap();
        let spec = LeafSpec::workload(
            &id,
            &dns(&["bookstore", "Bookstore.svc", "BOOKSTORE", "bookstore.svc"]),
            Duration::from_secs(3600),
        );
        assert_eq!(spec.common_name, None);
        assert_eq!(spec.dns_names, ["bookstore", "bookstore.svc"]);
        let server = LeafSpec::server(
            dns(&["hook.svc", "HOOK.svc", "a.hook.svc"]),
            Duration::from_secs(60),
        );
        assert_eq!(server.common_name.as_deref(), Some("hook.svc"));
        assert_eq!(server.dns_names, ["hook.svc", "a.hook.svc"]);
        let long = format!("{}.example", "a".repeat(60));
        assert_eq!(
            LeafSpec::server(dns(&[&long]), Duration::ZERO).common_name,
            None
        );
    }

    #[test]
    fn csr_carries_the_requested_names() {
        let id = SpiffeId::from_short("a/b", &TrustDomain::default()).unwrap();
        let spec = LeafSpec::workload(&id, &dns(&["b.example"]), Duration::from_secs(60));
        let key = LeafKey::generate(KeyType::P256).unwrap();
        let der = IssueRequest {
            spec: &spec,
            key: &key,
        }
        .csr_der()
        .unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_der(&der.into()).unwrap();
        // A workload CSR has an empty subject (not rcgen's default CN).
        assert_eq!(
            csr.params.distinguished_name.iter().count(),
            0,
            "{:?}",
            csr.params.distinguished_name
        );
        let names: Vec<_> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| format!("{s:?}"))
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.contains("spiffe://cluster.local/ns/a/sa/b")),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n.contains("b.example")), "{names:?}");
    }

    #[test]
    fn capabilities_refuse_what_they_cannot_do() {
        let caps = Capabilities {
            max_lifetime: None,
            key_types: vec![KeyType::P256],
            uri_sans: false,
            needs_csr: true,
            signs_in_process: false,
        };
        let id = SpiffeId::from_short("a/b", &TrustDomain::default()).unwrap();
        let spec = LeafSpec::workload(&id, &[], Duration::from_secs(60));
        assert!(matches!(
            caps.check(&spec, KeyType::P384),
            Err(ProviderError::Unsupported { .. })
        ));
        assert!(caps.check(&spec, KeyType::P256).is_err());
        let server = LeafSpec::server(dns(&["x.svc"]), Duration::from_secs(60));
        assert!(caps.check(&server, KeyType::P256).is_ok());
    }
}
