//! The provider conformance suite: what every [`CertificateProvider`] must do, checked the same
//! way for every backend (feature `conformance`, for tests).
//!
//! A backend's test calls [`run_all`] (or configures a [`Conformance`]) against a live
//! provider. Each issued chain is checked field by field and verified with rustls-webpki
//! against the provider's own [`trust_bundle`](CertificateProvider::trust_bundle), for server
//! and client authentication. A failure panics with the provider's name and every failed check.
//!
//! Both key sources of an [`IssueRequest`] are covered: keys meshca makes, and callers' keys
//! from verified CSRs (P-256, and RSA 2048 when the provider declares it) — the certificate
//! carries the CSR's public key and exactly the spec's names. A caller's CSR that asks for
//! other names (another SPIFFE ID, extra DNS names, a subject with O= and CN=) gets meshca's
//! names only from a [`CsrNames::Decided`] backend, and is refused by
//! [`Capabilities::check`](crate::Capabilities::check) for a [`CsrNames::FromCsr`] one. Every
//! request is asked as the daemon's issuance pipeline asks: capabilities first, then the
//! backend.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{
    CertificateChain, CertificateProvider, Clock, CsrError, CsrNames, DnsName, IssueRequest,
    KeyType, LeafKey, LeafSpec, ProviderError, SpiffeId, SystemClock, TrustBundle, TrustDomain,
    VerifiedCsr,
};

/// Runs the whole suite with default settings against `provider`, issuing identities in
/// `trust_domain`. Panics, naming the provider and each failed check, if any check fails.
pub async fn run_all(provider: &dyn CertificateProvider, trust_domain: &TrustDomain) {
    Conformance::new(trust_domain.clone()).run(provider).await;
}

/// Settings of the suite.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Conformance {
    /// Trust domain of the identities requested.
    pub trust_domain: TrustDomain,
    /// Lifetime requested for each leaf. Default 1h.
    pub lifetime: Duration,
    /// How much longer than requested a leaf may be valid in total (back-dating of NotBefore).
    /// Default 60s.
    pub clock_skew: Duration,
    /// Key types to issue for, among those the provider claims. Default P-256, P-384 and
    /// RSA 2048 (larger RSA keys are slow to make and add nothing to the contract).
    pub key_types: Vec<KeyType>,
    /// The time the provider's certificates are checked against; must agree with the clock
    /// the provider stamps validity from. Default the system clock.
    pub clock: Arc<dyn Clock>,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which check, e.g. `p256 workload: DNS SANs`.
    pub check: String,
    /// What was expected and what was found.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.detail)
    }
}

impl Conformance {
    /// Default settings for identities in `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            lifetime: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(60),
            key_types: vec![KeyType::P256, KeyType::P384, KeyType::Rsa2048],
            clock: Arc::new(SystemClock),
        }
    }

    /// Runs every check; panics naming the provider and each failed check.
    pub async fn run(&self, provider: &dyn CertificateProvider) {
        let failures = self.check(provider).await;
        if !failures.is_empty() {
            let list: Vec<String> = failures.iter().map(|f| format!("  - {f}")).collect();
            panic!(
                "provider `{}` failed {} conformance check(s):\n{}",
                provider.name(),
                failures.len(),
                list.join("\n")
            );
        }
    }

    /// Runs every check and returns the failures (empty when the provider conforms).
    pub async fn check(&self, provider: &dyn CertificateProvider) -> Vec<Failure> {
        let mut report = Report::default();
        let capabilities = provider.capabilities().clone();
        let bundle = match provider.trust_bundle().await {
            Ok(bundle) if !bundle.is_empty() => bundle,
            Ok(_) => {
                report.fail(
                    "trust bundle",
                    "the provider returned an empty trust bundle",
                );
                return report.failures;
            }
            Err(e) => {
                report.fail("trust bundle", format!("could not be fetched: {e}"));
                return report.failures;
            }
        };
        let id = match SpiffeId::new(self.trust_domain.clone(), "conformance", "workload") {
            Ok(id) => id,
            Err(e) => {
                report.fail("setup", e.to_string());
                return report.failures;
            }
        };
        // The default workload profile: the SPIFFE ID alone, no DNS name, no subject.
        let workload = LeafSpec::workload(&id, &[], self.lifetime);
        let server = match "conformance-webhook.meshca-system.svc".parse() {
            Ok(name) => LeafSpec::server(vec![name], self.lifetime),
            Err(e) => {
                report.fail("setup", format!("{e}"));
                return report.failures;
            }
        };

        let key_types: Vec<KeyType> = self
            .key_types
            .iter()
            .copied()
            .filter(|k| capabilities.key_types.contains(k))
            .collect();
        if key_types.is_empty() {
            report.fail(
                "capabilities",
                format!(
                    "none of {:?} is among the provider's key types {:?}",
                    self.key_types, capabilities.key_types
                ),
            );
        }
        for &key_type in &key_types {
            if capabilities.uri_sans {
                self.check_leaf(
                    provider,
                    &bundle,
                    &workload,
                    key_type,
                    KeySource::Generated,
                    &mut report,
                )
                .await;
            }
        }
        // Callers' keys: P-256, and RSA when the provider signs it.
        let spec = if capabilities.uri_sans {
            &workload
        } else {
            &server
        };
        for key_type in [KeyType::P256, KeyType::Rsa2048] {
            if capabilities.key_types.contains(&key_type) {
                self.check_leaf(
                    provider,
                    &bundle,
                    spec,
                    key_type,
                    KeySource::Caller,
                    &mut report,
                )
                .await;
                self.check_other_names(provider, &bundle, spec, key_type, &mut report)
                    .await;
            }
        }
        if let Some(&key_type) = key_types.first() {
            self.check_leaf(
                provider,
                &bundle,
                &server,
                key_type,
                KeySource::Generated,
                &mut report,
            )
            .await;
            self.check_distinct_serials(provider, spec, key_type, &mut report)
                .await;
            if !capabilities.uri_sans {
                self.expect_unsupported(provider, &workload, key_type, "URI SAN", &mut report)
                    .await;
            }
        }
        for key_type in KeyType::ALL {
            if !capabilities.key_types.contains(&key_type) {
                self.expect_unsupported(provider, &server, key_type, key_type.name(), &mut report)
                    .await;
            }
        }
        report.failures
    }

    /// Asks for a certificate for `spec` as the daemon's issuance pipeline does (capabilities
    /// first), for a new key of `key_type`: one meshca made, or a caller's, proven by a CSR
    /// that asks for exactly the spec's names. Returns the SubjectPublicKeyInfo the leaf must
    /// carry, and the chain.
    async fn issue(
        &self,
        provider: &dyn CertificateProvider,
        spec: &LeafSpec,
        key_type: KeyType,
        source: KeySource,
        report: &mut Report,
        check: &str,
    ) -> Option<(Vec<u8>, CertificateChain)> {
        let key = match LeafKey::generate(key_type) {
            Ok(key) => key,
            Err(e) => {
                report.fail(check, format!("could not make a {key_type} key: {e}"));
                return None;
            }
        };
        let csr;
        let request = match source {
            KeySource::Generated => IssueRequest::generated(spec, &key),
            KeySource::Caller => {
                csr = match key.csr_der(spec).map(|der| VerifiedCsr::from_der(&der)) {
                    Ok(Ok(csr)) => csr,
                    Ok(Err(e)) => return report.fail_with(check, format!("the CSR: {e}")),
                    Err(e) => return report.fail_with(check, format!("the CSR: {e}")),
                };
                IssueRequest::for_caller(spec, &csr)
            }
        };
        match ask(provider, &request).await {
            Ok(chain) => Some((request.key.subject_public_key_info().into_owned(), chain)),
            Err(e) => report.fail_with(check, format!("issuance failed: {e}")),
        }
    }

    async fn check_leaf(
        &self,
        provider: &dyn CertificateProvider,
        bundle: &TrustBundle,
        spec: &LeafSpec,
        key_type: KeyType,
        source: KeySource,
        report: &mut Report,
    ) {
        let kind = match (source, spec.spiffe_id.is_some()) {
            (KeySource::Generated, true) => "workload",
            (KeySource::Generated, false) => "server",
            (KeySource::Caller, true) => "caller-key workload",
            (KeySource::Caller, false) => "caller-key server",
        };
        let name = format!("{key_type} {kind}");
        let Some((spki, chain)) = self
            .issue(
                provider,
                spec,
                key_type,
                source,
                report,
                &format!("{name}: issue"),
            )
            .await
        else {
            return;
        };
        self.check_chain(bundle, spec, &spki, &chain, &name, report);
    }

    /// A caller's CSR asks for another identity, extra DNS names and a subject: a backend that
    /// takes meshca's names certifies the spec's names only; for one that certifies what a CSR
    /// says, the capability check refuses the request before the backend is asked.
    async fn check_other_names(
        &self,
        provider: &dyn CertificateProvider,
        bundle: &TrustBundle,
        spec: &LeafSpec,
        key_type: KeyType,
        report: &mut Report,
    ) {
        let name = format!("{key_type} caller-key CSR asking for other names");
        let check = format!("{name}: issue");
        let key = match LeafKey::generate(key_type) {
            Ok(key) => key,
            Err(e) => return report.fail(&check, format!("could not make a {key_type} key: {e}")),
        };
        let csr = match self.greedy_csr(&key) {
            Ok(csr) => csr,
            Err(e) => return report.fail(&check, format!("could not make the CSR: {e}")),
        };
        let request = IssueRequest::for_caller(spec, &csr);
        match provider.capabilities().csr_names {
            CsrNames::Decided => match ask(provider, &request).await {
                Ok(chain) => {
                    let spki = csr.subject_public_key_info().to_vec();
                    self.check_chain(bundle, spec, &spki, &chain, &name, report);
                }
                Err(e) => report.fail(&check, format!("issuance failed: {e}")),
            },
            CsrNames::FromCsr => match provider.capabilities().check(&request) {
                Err(ProviderError::Csr(CsrError::NamesDiffer { .. })) => {}
                Err(other) => report.fail(
                    &format!("{name}: refused by the capability check"),
                    format!("refused with a different error: {other}"),
                ),
                Ok(()) => report.fail(
                    &format!("{name}: refused by the capability check"),
                    "the capability check let it through to a backend that certifies what a \
                     CSR asks for",
                ),
            },
        }
    }

    /// A CSR for `key` asking for what no caller may choose: another workload's SPIFFE ID,
    /// a DNS name nobody asked meshca for, and a subject with an organisation and a common
    /// name.
    fn greedy_csr(&self, key: &LeafKey) -> Result<VerifiedCsr, String> {
        let other = SpiffeId::new(self.trust_domain.clone(), "kube-system", "admin")
            .map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Not meshca");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "evil.example");
        params.subject_alt_names = vec![
            rcgen::SanType::URI(other.to_string().try_into().map_err(|e| format!("{e}"))?),
            rcgen::SanType::DnsName("evil.example".try_into().map_err(|e| format!("{e}"))?),
        ];
        let signer = key.signing_key().map_err(|e| e.to_string())?;
        let csr = params
            .serialize_request(&signer)
            .map_err(|e| e.to_string())?;
        VerifiedCsr::from_der(csr.der()).map_err(|e| e.to_string())
    }

    /// Checks an issued chain field by field: it certifies `spki` and exactly `spec`'s names.
    fn check_chain(
        &self,
        bundle: &TrustBundle,
        spec: &LeafSpec,
        spki: &[u8],
        chain: &CertificateChain,
        name: &str,
        report: &mut Report,
    ) {
        let check = |what: &str| format!("{name}: {what}");
        let now = self.clock.now();
        let info = match chain.leaf_info() {
            Ok(info) => info,
            Err(e) => {
                report.fail(&check("leaf parses"), e.to_string());
                return;
            }
        };

        if let Some(root) = chain.certificates().iter().find(|c| bundle.contains(c)) {
            report.fail(
                &check("chain excludes the root"),
                format!(
                    "the chain contains root {}",
                    crate::x509::Fingerprint(crate::x509::sha256(root))
                ),
            );
        }
        match X509Certificate::from_der(chain.leaf()) {
            Ok((_, leaf)) => {
                if leaf.public_key().raw != spki {
                    report.fail(
                        &check("public key"),
                        "the leaf does not certify the request's key",
                    );
                }
                let want_subject = usize::from(spec.common_name.is_some());
                let subject: Vec<String> = leaf
                    .subject()
                    .iter_attributes()
                    .map(|a| format!("{}", a.attr_type()))
                    .collect();
                if subject.len() != want_subject {
                    report.fail(
                        &check("subject"),
                        format!(
                            "want {} (a common name only when the spec has one), got \
                             attributes {subject:?} in {}",
                            if want_subject == 0 {
                                "an empty subject"
                            } else {
                                "one attribute"
                            },
                            leaf.subject()
                        ),
                    );
                }
                match leaf.extended_key_usage() {
                    Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => {}
                    other => report.fail(
                        &check("extended key usage"),
                        format!("want serverAuth and clientAuth, got {other:?}"),
                    ),
                }
            }
            Err(e) => report.fail(&check("leaf parses"), e.to_string()),
        }
        let want_uris: Vec<String> = spec.spiffe_id.iter().map(ToString::to_string).collect();
        if info.uri_sans != want_uris {
            report.fail(
                &check("URI SANs"),
                format!("want exactly {want_uris:?}, got {:?}", info.uri_sans),
            );
        }
        let mut want_dns: Vec<String> = spec.dns_names.iter().map(ToString::to_string).collect();
        let mut got_dns: Vec<String> = info
            .dns_sans
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        want_dns.sort();
        got_dns.sort();
        if got_dns != want_dns {
            report.fail(
                &check("DNS SANs"),
                format!("want exactly {want_dns:?}, got {:?}", info.dns_sans),
            );
        }
        match (&spec.common_name, &info.common_name) {
            (Some(want), got) if got.as_ref() != Some(want) => {
                report.fail(&check("common name"), format!("want {want:?}, got {got:?}"))
            }
            (None, Some(got)) => report.fail(
                &check("common name"),
                format!(
                    "want none (a workload certificate's subject is empty), got {got:?}: a \
                     common name is a hostname to verifiers that fall back to it"
                ),
            ),
            _ => {}
        }
        if info.is_ca {
            report.fail(
                &check("basicConstraints"),
                "the leaf is a CA (want CA:FALSE)",
            );
        }
        let serial_ok =
            info.serial.len() >= 8 && info.serial.first().is_some_and(|b| b & 0x80 == 0);
        if !serial_ok {
            report.fail(
                &check("serial"),
                format!(
                    "want a positive serial of at least 64 bits, got {}",
                    info.serial_hex()
                ),
            );
        }
        if !(info.not_before <= now && now <= info.not_after) {
            report.fail(
                &check("validity covers now"),
                format!(
                    "now {now:?} is outside {:?} .. {:?}",
                    info.not_before, info.not_after
                ),
            );
        }
        // One second of slack for validity stamped in whole seconds.
        let latest_end = now + spec.lifetime + Duration::from_secs(1);
        if info.lifetime() > spec.lifetime + self.clock_skew || info.not_after > latest_end {
            report.fail(
                &check("lifetime"),
                format!(
                    "requested {:?} (+{:?} skew), got {:?} ending {:?}",
                    spec.lifetime,
                    self.clock_skew,
                    info.lifetime(),
                    info.not_after
                ),
            );
        }
        for (usage, label) in [
            (webpki::KeyUsage::server_auth(), "verifies for serverAuth"),
            (webpki::KeyUsage::client_auth(), "verifies for clientAuth"),
        ] {
            if let Err(e) = verify(chain, bundle, now, usage) {
                report.fail(&check(label), e);
            }
        }
        if let Err(e) = verify_names(chain, &spec.dns_names) {
            report.fail(&check("DNS names verify"), e);
        }
    }

    async fn check_distinct_serials(
        &self,
        provider: &dyn CertificateProvider,
        spec: &LeafSpec,
        key_type: KeyType,
        report: &mut Report,
    ) {
        let check = "two issuances for one identity get distinct serials";
        let mut serials = Vec::new();
        for _ in 0..2 {
            let Some((_, chain)) = self
                .issue(
                    provider,
                    spec,
                    key_type,
                    KeySource::Generated,
                    report,
                    check,
                )
                .await
            else {
                return;
            };
            match chain.leaf_info() {
                Ok(info) => serials.push(info.serial),
                Err(e) => return report.fail(check, e.to_string()),
            }
        }
        if serials.first() == serials.get(1) {
            report.fail(check, "both leaves have the same serial");
        }
    }

    async fn expect_unsupported(
        &self,
        provider: &dyn CertificateProvider,
        spec: &LeafSpec,
        key_type: KeyType,
        what: &str,
        report: &mut Report,
    ) {
        let check = format!("unsupported {what} is refused with ProviderError::Unsupported");
        let key = match LeafKey::generate(key_type) {
            Ok(key) => key,
            Err(e) => return report.fail(&check, e.to_string()),
        };
        match ask(provider, &IssueRequest::generated(spec, &key)).await {
            Err(ProviderError::Unsupported { .. }) => {}
            Err(other) => report.fail(&check, format!("got a different error: {other}")),
            Ok(_) => report.fail(&check, "the provider issued a certificate"),
        }
    }
}

/// Where the key of a requested certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySource {
    /// A key meshca made ([`IssueRequest::generated`]).
    Generated,
    /// A caller's key, from its CSR ([`IssueRequest::for_caller`]).
    Caller,
}

/// Asks `provider` as the daemon's issuance pipeline does: capabilities first, then the
/// backend.
async fn ask(
    provider: &dyn CertificateProvider,
    request: &IssueRequest<'_>,
) -> Result<CertificateChain, ProviderError> {
    provider.capabilities().check(request)?;
    provider.issue(request).await
}

#[derive(Default)]
struct Report {
    failures: Vec<Failure>,
}

impl Report {
    fn fail(&mut self, check: &str, detail: impl Into<String>) {
        self.failures.push(Failure {
            check: check.to_owned(),
            detail: detail.into(),
        });
    }

    /// Records a failure and gives up on the check.
    fn fail_with<T>(&mut self, check: &str, detail: impl Into<String>) -> Option<T> {
        self.fail(check, detail);
        None
    }
}

fn verify(
    chain: &CertificateChain,
    bundle: &TrustBundle,
    now: SystemTime,
    usage: webpki::KeyUsage,
) -> Result<(), String> {
    let anchors = bundle
        .roots()
        .iter()
        .map(|root| webpki::anchor_from_trusted_cert(root).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a root in the trust bundle is unusable: {e}"))?;
    let leaf = webpki::EndEntityCert::try_from(chain.leaf())
        .map_err(|e| format!("the leaf is unreadable to webpki: {e}"))?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        chain.intermediates(),
        UnixTime::since_unix_epoch(since_epoch),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("webpki rejects the chain: {e}"))
}

fn verify_names(chain: &CertificateChain, dns_names: &[DnsName]) -> Result<(), String> {
    let leaf = webpki::EndEntityCert::try_from(chain.leaf()).map_err(|e| e.to_string())?;
    for name in dns_names {
        let server_name =
            ServerName::try_from(name.as_str()).map_err(|e| format!("{name}: {e}"))?;
        leaf.verify_is_valid_for_subject_name(&server_name)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}
