//! The [`CertificateProvider`] trait: how the daemon asks a backend for a certificate.

use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;

use crate::{
    CertificateChain, CsrError, KeyError, KeyType, LeafKey, LeafSpec, TrustBundle, VerifiedCsr,
};

/// A provider shared across the daemon.
pub type SharedProvider = Arc<dyn CertificateProvider>;

/// A certificate backend: Tresor, Vault PKI, cert-manager.
///
/// Obligations of an implementation:
/// - `issue` MUST return a chain whose leaf carries exactly the SANs in the request's
///   [`LeafSpec`] and the request's public key — a key meshca made or a caller's
///   ([`SubjectKey`]) — leaf first, followed by any intermediates, and MUST NOT include the
///   root. The names come from the [`LeafSpec`], never from a caller's CSR, unless the
///   backend declares [`CsrNames::FromCsr`]. The daemon validates every returned chain against
///   [`trust_bundle`](Self::trust_bundle) before serving it.
/// - The requested lifetime is advisory: a backend MAY shorten it (a role's max TTL); the daemon
///   reads the real NotBefore/NotAfter from the returned leaf.
/// - [`capabilities`](Self::capabilities) MUST be truthful: the daemon's issuance pipeline
///   checks every request against them ([`Capabilities::check`]) before calling `issue`, so
///   `issue` is never asked for a key type or a URI SAN the backend did not declare. Anything
///   else a backend cannot do it MUST refuse with [`ProviderError::Unsupported`] rather than
///   silently drop.
/// - Implementations MUST NOT log, or put into errors, any private key material.
/// - Request policy, timeouts, chain validation and metrics are the daemon's job: its issuance
///   pipeline (`src/issuance/`) wraps every call to `issue`.
#[async_trait::async_trait]
pub trait CertificateProvider: Send + Sync + std::fmt::Debug + 'static {
    /// Short lowercase name for logs and metrics: `tresor`, `vault`, `cert-manager`.
    fn name(&self) -> &'static str;

    /// What this backend can issue. Checked by the daemon's issuance pipeline, once, before
    /// every request: an implementation need not check it again.
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
    /// The longest lifetime the backend will grant, if it is known to be capped (a Vault
    /// role's `max_ttl`). The issuance pipeline asks for no more than this.
    pub max_lifetime: Option<Duration>,
    /// The key types it signs.
    pub key_types: Vec<KeyType>,
    /// Whether it can put a URI SAN (the SPIFFE ID) in a certificate.
    pub uri_sans: bool,
    /// Where the names of a certificate for a CSR come from.
    pub csr_names: CsrNames,
    /// Whether it signs in this process with CA material whose key was checked against its
    /// certificate when it was loaded (Tresor). The daemon then checks each returned chain's
    /// links (issuer names and key identifiers up to a root of the bundle) instead of verifying
    /// a signature it just watched being made; remote backends are always fully verified.
    pub signs_in_process: bool,
}

/// Where a backend takes a certificate's names from when it is handed a CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrNames {
    /// From meshca's request ([`LeafSpec`]), whatever a CSR asks for: Tresor, and Vault's
    /// `pki/sign` with the names passed as parameters.
    Decided,
    /// From the CSR itself (cert-manager's CertificateRequest): a caller's CSR must then ask
    /// for exactly the names meshca decided ([`VerifiedCsr::requests_exactly`]) before it is
    /// forwarded.
    FromCsr,
}

impl Capabilities {
    /// Checks a key type alone: what can be refused before a key of that type is made.
    pub fn check_key_type(&self, key_type: KeyType) -> Result<(), ProviderError> {
        if self.key_types.contains(&key_type) {
            Ok(())
        } else {
            Err(ProviderError::Unsupported {
                what: format!("{key_type} keys"),
            })
        }
    }

    /// Checks a request against these capabilities: the key type, a URI SAN, and — for a
    /// backend that certifies what a CSR asks for — that a caller's CSR asks for exactly the
    /// request's names.
    pub fn check(&self, request: &IssueRequest<'_>) -> Result<(), ProviderError> {
        self.check_key_type(request.key_type())?;
        if request.spec.spiffe_id.is_some() && !self.uri_sans {
            return Err(ProviderError::Unsupported {
                what: "URI SANs (SPIFFE IDs)".to_owned(),
            });
        }
        if let (CsrNames::FromCsr, SubjectKey::Caller(csr)) = (self.csr_names, request.key) {
            csr.requests_exactly(request.spec)?;
        }
        Ok(())
    }
}

/// One issuance request: what to certify, and the key to certify.
#[derive(Debug, Clone, Copy)]
pub struct IssueRequest<'a> {
    /// Names and lifetime.
    pub spec: &'a LeafSpec,
    /// The key the certificate is for.
    pub key: SubjectKey<'a>,
}

/// The key a certificate is issued for.
#[derive(Debug, Clone, Copy)]
pub enum SubjectKey<'a> {
    /// A key meshca made; meshca hands the private half to the workload that owns it.
    Generated(&'a LeafKey),
    /// A caller's key, from a CSR whose signature verified (proof of possession). meshca never
    /// holds the private half. A [`VerifiedCsr`] exists only once its signature has verified
    /// ([`VerifiedCsr::from_der`]), so a CSR with a bad signature cannot reach a backend. Only
    /// its public key is certified; the names are the spec's (see [`CsrNames`]).
    Caller(&'a VerifiedCsr),
}

impl<'a> SubjectKey<'a> {
    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match self {
            SubjectKey::Generated(key) => key.key_type(),
            SubjectKey::Caller(csr) => csr.key_type(),
        }
    }

    /// The public key: the SubjectPublicKeyInfo's BIT STRING contents (an uncompressed EC
    /// point, or an RSAPublicKey).
    pub fn public_key(&self) -> &'a [u8] {
        match self {
            SubjectKey::Generated(key) => key.public_key(),
            SubjectKey::Caller(csr) => csr.public_key(),
        }
    }

    /// The DER SubjectPublicKeyInfo a certificate for this key embeds: written for a key
    /// meshca made, as the caller's CSR carried it for a caller's key.
    pub fn subject_public_key_info(&self) -> Cow<'a, [u8]> {
        match self {
            SubjectKey::Generated(key) => Cow::Owned(key.public_key_spki()),
            SubjectKey::Caller(csr) => Cow::Borrowed(csr.subject_public_key_info()),
        }
    }

    /// Appends [`subject_public_key_info`](Self::subject_public_key_info) to `out`, without
    /// a buffer of its own for a key meshca made.
    pub fn write_subject_public_key_info(&self, out: &mut Vec<u8>) {
        match self {
            SubjectKey::Generated(key) => key.write_public_key_spki(out),
            SubjectKey::Caller(csr) => out.extend_from_slice(csr.subject_public_key_info()),
        }
    }
}

impl<'a> From<&'a LeafKey> for SubjectKey<'a> {
    fn from(key: &'a LeafKey) -> Self {
        SubjectKey::Generated(key)
    }
}

impl<'a> From<&'a VerifiedCsr> for SubjectKey<'a> {
    fn from(csr: &'a VerifiedCsr) -> Self {
        SubjectKey::Caller(csr)
    }
}

impl<'a> IssueRequest<'a> {
    /// A request for a key meshca made.
    pub fn generated(spec: &'a LeafSpec, key: &'a LeafKey) -> Self {
        Self {
            spec,
            key: SubjectKey::Generated(key),
        }
    }

    /// A request for a caller's key, proven by its verified CSR.
    pub fn for_caller(spec: &'a LeafSpec, csr: &'a VerifiedCsr) -> Self {
        Self {
            spec,
            key: SubjectKey::Caller(csr),
        }
    }

    /// The type of the key to certify.
    pub fn key_type(&self) -> KeyType {
        self.key.key_type()
    }

    /// The public key to certify: the SubjectPublicKeyInfo's BIT STRING contents (an
    /// uncompressed EC point, or an RSAPublicKey).
    pub fn public_key(&self) -> &'a [u8] {
        self.key.public_key()
    }

    /// A PKCS#10 CSR (DER) for this request. For a key meshca made, built on demand (only
    /// backends that need one pay for the signature) and naming exactly the spec's names. For a
    /// caller's key, the caller's own request as it was received: a backend must then take the
    /// names from the spec, not from the CSR, unless it declares [`CsrNames::FromCsr`] (the
    /// pipeline has then checked the CSR asks for exactly the spec's names).
    pub fn csr_der(&self) -> Result<Cow<'a, [u8]>, ProviderError> {
        match self.key {
            SubjectKey::Generated(key) => Ok(Cow::Owned(key.csr_der(self.spec)?)),
            SubjectKey::Caller(csr) => Ok(Cow::Borrowed(csr.der())),
        }
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
    /// A caller's CSR cannot be forwarded as it is (it asks for other names).
    #[error(transparent)]
    Csr(#[from] CsrError),
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
    use crate::{DnsName, SpiffeId, TrustDomain};

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
        let der = IssueRequest::generated(&spec, &key).csr_der().unwrap();
        let csr =
            rcgen::CertificateSigningRequestParams::from_der(&der.into_owned().into()).unwrap();
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
            csr_names: CsrNames::Decided,
            signs_in_process: false,
        };
        let id = SpiffeId::from_short("a/b", &TrustDomain::default()).unwrap();
        let spec = LeafSpec::workload(&id, &[], Duration::from_secs(60));
        let p384 = LeafKey::generate(KeyType::P384).unwrap();
        let p256 = LeafKey::generate(KeyType::P256).unwrap();
        assert!(matches!(
            caps.check(&IssueRequest::generated(&spec, &p384)),
            Err(ProviderError::Unsupported { .. })
        ));
        assert!(caps.check(&IssueRequest::generated(&spec, &p256)).is_err());
        let server = LeafSpec::server(dns(&["x.svc"]), Duration::from_secs(60));
        assert!(caps.check(&IssueRequest::generated(&server, &p256)).is_ok());
    }

    #[test]
    fn a_backend_that_certifies_csr_names_gets_only_csrs_asking_for_the_decided_names() {
        let verbatim = Capabilities {
            max_lifetime: None,
            key_types: KeyType::ALL.to_vec(),
            uri_sans: true,
            csr_names: CsrNames::FromCsr,
            signs_in_process: false,
        };
        let decided = Capabilities {
            csr_names: CsrNames::Decided,
            ..verbatim.clone()
        };
        let td = TrustDomain::default();
        let me = SpiffeId::from_short("a/b", &td).unwrap();
        let other = SpiffeId::from_short("kube-system/admin", &td).unwrap();
        let spec = LeafSpec::workload(&me, &dns(&["b.example"]), Duration::from_secs(60));
        let key = LeafKey::generate(KeyType::P256).unwrap();
        // The caller's CSR asks for exactly the decided names (another case, another order).
        let same = LeafSpec::workload(&me, &dns(&["B.example"]), Duration::from_secs(60));
        let csr = VerifiedCsr::from_der(&key.csr_der(&same).unwrap()).unwrap();
        verbatim
            .check(&IssueRequest::for_caller(&spec, &csr))
            .unwrap();
        // It asks for someone else's identity: refused for the verbatim backend, naming both.
        let theirs = LeafSpec::workload(&other, &dns(&["b.example"]), Duration::from_secs(60));
        let csr = VerifiedCsr::from_der(&key.csr_der(&theirs).unwrap()).unwrap();
        let err = verbatim
            .check(&IssueRequest::for_caller(&spec, &csr))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kube-system/sa/admin"), "{err}");
        assert!(err.contains("spiffe://cluster.local/ns/a/sa/b"), "{err}");
        // A backend that takes meshca's names is not bothered by what the CSR says.
        decided
            .check(&IssueRequest::for_caller(&spec, &csr))
            .unwrap();
        // Extra DNS names, a subject, or no SPIFFE ID: refused as well.
        for asked in [
            LeafSpec::workload(&me, &dns(&["b.example", "evil.example"]), Duration::ZERO),
            LeafSpec::server(dns(&["b.example"]), Duration::ZERO),
        ] {
            let csr = VerifiedCsr::from_der(&key.csr_der(&asked).unwrap()).unwrap();
            assert!(
                matches!(
                    verbatim.check(&IssueRequest::for_caller(&spec, &csr)),
                    Err(ProviderError::Csr(CsrError::NamesDiffer { .. }))
                ),
                "{asked:?}"
            );
        }
    }
}
