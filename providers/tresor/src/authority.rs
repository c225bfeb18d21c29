//! A signing authority: a CA certificate, the chain above it, the roots it chains to, and its
//! key — loaded and checked once, then used for every issuance.

use std::fmt;
use std::time::{Duration, SystemTime};

use meshca_provider::x509::{Fingerprint, certificates_from_pem, certificates_to_pem, sha256};
use meshca_provider::{
    CertificateChain, Clock, KeyError, KeyType, LeafKey, LeafSpec, PemError, SubjectKey,
    TrustBundle, TrustDomain,
};
use rcgen::{Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
use zeroize::Zeroizing;

use crate::error::{AuthorityError, CaProblem};
use crate::leaf::LeafTemplate;
use crate::options::{IntermediateOptions, RootOptions};
use crate::profile;

/// A CA that signs: its certificate, the chain above it, the roots, and its key.
///
/// Construct it with [`generate_root`](Self::generate_root), [`from_pem`](Self::from_pem) (or
/// [`StoredCa::authority`]), or [`sign_intermediate`](Self::sign_intermediate). The rcgen
/// issuer is built once here, so signing a leaf costs only building its fields and one
/// signature. `Debug` never shows the key.
pub struct SigningAuthority {
    certificate: CertificateDer<'static>,
    /// Certificates between `certificate` and the root, nearest first.
    chain: Vec<CertificateDer<'static>>,
    /// The self-signed root at the top of this CA's chain (`certificate` itself for a root).
    root: CertificateDer<'static>,
    roots: TrustBundle,
    /// What follows a leaf in an issued chain: the CA certificate and `chain` for an
    /// intermediate, nothing for a root.
    leaf_tail: Vec<CertificateDer<'static>>,
    key: LeafKey,
    issuer: Issuer<'static, KeyPair>,
    /// The constant part of every leaf this CA signs, encoded once.
    template: LeafTemplate,
    subject: String,
    /// The earliest NotAfter along the chain: nothing signed can be valid after it.
    not_after: SystemTime,
    path_len: Option<u32>,
}

impl SigningAuthority {
    /// Makes a new key and a self-signed root certificate.
    pub fn generate_root(options: &RootOptions, clock: &dyn Clock) -> Result<Self, AuthorityError> {
        let key = LeafKey::generate(options.key_type)?;
        let signer = key.signing_key()?;
        let params = profile::root_params(options, key.public_key(), clock.now())?;
        let certificate = params.self_signed(&signer).map_err(sign_error)?;
        let der = certificate.der().clone();
        Self::assemble(der.clone(), Vec::new(), der, key, signer).map_err(|problem| {
            AuthorityError::Sign {
                reason: problem.to_string(),
            }
        })
    }

    /// Loads and checks CA material: `certificate_chain_pem` holds the CA certificate first,
    /// then each issuer up to and including the root (just the root for a root CA);
    /// `key_pem` is the CA's unencrypted PKCS#8 key.
    ///
    /// Refuses material that is unreadable, not a CA, expired or not yet valid at `now`, not
    /// chained by valid signatures to a self-signed root, or whose key does not match.
    pub fn from_pem(
        certificate_chain_pem: &str,
        key_pem: &str,
        now: SystemTime,
    ) -> Result<Self, CaProblem> {
        let ders = certificates_from_pem(certificate_chain_pem).map_err(|e| match e {
            PemError::NoCertificate => CaProblem::NoCertificate,
            PemError::Malformed { reason } => CaProblem::Unreadable { reason },
            other => CaProblem::Unreadable {
                reason: other.to_string(),
            },
        })?;
        let Some(last_der) = ders.last().cloned() else {
            return Err(CaProblem::NoCertificate);
        };
        let parsed = ders
            .iter()
            .enumerate()
            .map(|(index, der)| match X509Certificate::from_der(der) {
                Ok(([], cert)) => Ok(cert),
                Ok(_) => Err(CaProblem::MalformedCertificate {
                    position: index + 1,
                    reason: "trailing bytes after the certificate".into(),
                }),
                Err(e) => Err(CaProblem::MalformedCertificate {
                    position: index + 1,
                    reason: e.to_string(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;

        for (index, cert) in parsed.iter().enumerate() {
            check_is_ca(cert, index + 1)?;
            check_validity(cert, now)?;
        }
        for pair in parsed.windows(2) {
            if let [child, parent] = pair {
                check_signed_by(child, parent)?;
            }
        }
        if let Some(top) = parsed.last() {
            let self_signed = top.issuer().as_raw() == top.subject().as_raw()
                && top.verify_signature(None).is_ok();
            if !self_signed {
                return Err(CaProblem::NotRooted {
                    subject: top.subject().to_string(),
                });
            }
        }
        let ca = parsed.first().ok_or(CaProblem::NoCertificate)?;
        let subject = ca.subject().to_string();
        let has_ski = ca.extensions().iter().any(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::SubjectKeyIdentifier(_)
            )
        });
        if !has_ski {
            return Err(CaProblem::MissingSubjectKeyId { subject });
        }
        // rcgen copies the subject attribute by attribute; it supports one attribute per RDN.
        if ca.subject().iter().any(|rdn| rdn.iter().count() != 1) {
            return Err(CaProblem::UnsupportedSubject {
                subject,
                reason: "multi-valued relative distinguished names are not supported".into(),
            });
        }

        let unreadable_key = |e: KeyError| CaProblem::UnreadableKey {
            reason: e.to_string(),
        };
        let key = LeafKey::from_pem(key_pem).map_err(unreadable_key)?;
        if ca.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key)
        {
            return Err(CaProblem::KeyMismatch { subject });
        }
        let signer = key.signing_key().map_err(unreadable_key)?;
        // The chain between the CA and the root; a root's chain is empty.
        let chain = ders
            .get(1..ders.len().saturating_sub(1))
            .unwrap_or_default()
            .to_vec();
        let certificate = ders.first().cloned().ok_or(CaProblem::NoCertificate)?;
        let authority = Self::assemble(certificate, chain, last_der, key, signer)?;
        authority.check_issuer_name(ca)?;
        Ok(authority)
    }

    /// Makes a new key and a CA certificate for one cluster, signed by this authority, with
    /// path length 0 (it signs leaves only). Several clusters whose intermediates share a root
    /// trust each other's workloads.
    pub fn sign_intermediate(
        &self,
        options: &IntermediateOptions,
        clock: &dyn Clock,
    ) -> Result<SigningAuthority, AuthorityError> {
        let now = clock.now();
        self.check_not_expired(now)?;
        if self.path_len == Some(0) {
            return Err(AuthorityError::PathLength {
                subject: self.subject.clone(),
            });
        }
        let key = LeafKey::generate(options.key_type)?;
        let signer = key.signing_key()?;
        let params = profile::intermediate_params(options, key.public_key(), now, self.not_after)?;
        let certificate = params
            .signed_by(&signer, &self.issuer)
            .map_err(sign_error)?;
        let chain = if self.is_root() {
            Vec::new()
        } else {
            let mut chain = vec![self.certificate.clone()];
            chain.extend(self.chain.iter().cloned());
            chain
        };
        let mut intermediate = Self::assemble(
            certificate.der().clone(),
            chain,
            self.root.clone(),
            key,
            signer,
        )
        .map_err(|problem| AuthorityError::Sign {
            reason: problem.to_string(),
        })?;
        intermediate.roots = self.roots.clone();
        Ok(intermediate)
    }

    /// Signs a leaf for `spec` over `key`'s public key — a [`LeafKey`] meshca made, or a
    /// caller's key from a [`VerifiedCsr`](meshca_provider::VerifiedCsr), whose names are not
    /// read — and returns it with the intermediates above it (never the root).
    ///
    /// NotBefore is `now − clock_skew`; NotAfter is `now + spec.lifetime`. A leaf that would
    /// end after the CA chain is refused ([`AuthorityError::OutlivesCa`]), not cut short.
    pub fn sign_leaf<'k>(
        &self,
        spec: &LeafSpec,
        key: impl Into<SubjectKey<'k>>,
        now: SystemTime,
        clock_skew: Duration,
    ) -> Result<CertificateChain, AuthorityError> {
        self.check_not_expired(now)?;
        self.check_covers(now, spec.lifetime)?;
        let leaf = self.template.sign(
            spec,
            key.into(),
            self.issuer.key(),
            now,
            clock_skew,
            self.not_after,
        )?;
        Ok(CertificateChain::with_leaf(
            CertificateDer::from(leaf),
            self.leaf_tail.iter().cloned(),
        ))
    }

    /// The CA certificate that signs.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// Certificates between the CA certificate and the root, nearest first (empty for a root
    /// or an intermediate signed directly by the root).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The self-signed root this CA chains to (the CA certificate itself for a root).
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The roots that certificates from this authority verify against.
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.roots
    }

    /// Whether this authority is a self-signed root.
    pub fn is_root(&self) -> bool {
        self.certificate == self.root
    }

    /// The CA certificate's subject, as text.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The trust domains the CA certificate's SPIFFE IDs (URI SANs `spiffe://<trust-domain>`)
    /// name: the one a per-cluster intermediate was made for. Empty for a CA without a SPIFFE
    /// ID (meshca's roots, most imported CAs).
    pub fn spiffe_trust_domains(&self) -> Vec<String> {
        let Ok((_, ca)) = X509Certificate::from_der(&self.certificate) else {
            return Vec::new();
        };
        let Ok(Some(names)) = ca.subject_alternative_name() else {
            return Vec::new();
        };
        names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => {
                    let rest = uri.strip_prefix("spiffe://")?;
                    Some(rest.split('/').next().unwrap_or_default().to_owned())
                }
                _ => None,
            })
            .collect()
    }

    /// Refuses a CA whose SPIFFE ID names another trust domain than `configured`: leaves it
    /// signed in `configured` would carry IDs its own certificate disowns. A CA without a
    /// SPIFFE ID passes.
    pub fn check_trust_domain(&self, configured: &TrustDomain) -> Result<(), CaProblem> {
        match self
            .spiffe_trust_domains()
            .into_iter()
            .find(|found| found != configured.as_str())
        {
            None => Ok(()),
            Some(found) => Err(CaProblem::ForeignTrustDomain {
                subject: self.subject.clone(),
                found,
                configured: configured.to_string(),
            }),
        }
    }

    /// The CA key's type.
    pub fn key_type(&self) -> KeyType {
        self.key.key_type()
    }

    /// The earliest NotAfter along the chain: certificates issued later than this would not
    /// verify, and leaves that would end later are refused.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The certificate chain as stored: CA certificate first, then each issuer up to and
    /// including the root.
    pub fn certificate_chain_pem(&self) -> String {
        let mut all = vec![self.certificate.clone()];
        if !self.is_root() {
            all.extend(self.chain.iter().cloned());
            all.push(self.root.clone());
        }
        certificates_to_pem(&all)
    }

    /// The CA's private key, PKCS#8 PEM, for [`to_stored`](Self::to_stored). Never log it.
    pub(crate) fn private_key_pem(&self) -> Zeroizing<String> {
        self.key.private_key_pem()
    }

    fn assemble(
        certificate: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        root: CertificateDer<'static>,
        key: LeafKey,
        signer: KeyPair,
    ) -> Result<Self, CaProblem> {
        let unsupported =
            |subject: String, reason: String| CaProblem::UnsupportedSubject { subject, reason };
        let (_, ca) = X509Certificate::from_der(&certificate).map_err(|e| {
            CaProblem::MalformedCertificate {
                position: 1,
                reason: e.to_string(),
            }
        })?;
        let subject = ca.subject().to_string();
        let key_id = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
                _ => None,
            });
        let Some(key_id) = key_id else {
            return Err(CaProblem::MissingSubjectKeyId { subject });
        };
        let template = LeafTemplate::new(key.key_type(), ca.subject().as_raw(), key_id);
        let path_len = ca
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|bc| bc.value.path_len_constraint);
        let mut not_after = to_system_time(ca.validity().not_after.timestamp());
        for der in chain.iter().chain(std::iter::once(&root)) {
            if let Ok((_, cert)) = X509Certificate::from_der(der) {
                not_after = not_after.min(to_system_time(cert.validity().not_after.timestamp()));
            }
        }
        // Owns its copy of the CA's name, key usages and key identifier (so the AKI of every
        // leaf is exactly the CA's SKI).
        let issuer = Issuer::from_ca_cert_der(&certificate, signer)
            .map_err(|e| unsupported(subject.clone(), e.to_string()))?;
        let leaf_tail = if certificate == root {
            Vec::new()
        } else {
            let mut tail = vec![certificate.clone()];
            tail.extend(chain.iter().cloned());
            tail
        };
        Ok(Self {
            roots: TrustBundle::new(vec![root.clone()]),
            certificate,
            chain,
            root,
            leaf_tail,
            key,
            issuer,
            template,
            subject,
            not_after,
            path_len,
        })
    }

    /// Signs a throwaway certificate and checks that its issuer name is byte-for-byte the CA's
    /// subject: verifiers match names exactly, and rcgen re-encodes the name it was given.
    fn check_issuer_name(&self, ca: &X509Certificate<'_>) -> Result<(), CaProblem> {
        let unsupported = |reason: String| CaProblem::UnsupportedSubject {
            subject: self.subject.clone(),
            reason,
        };
        let mut params = rcgen::CertificateParams::default();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
        let probe = params
            .signed_by(self.issuer.key(), &self.issuer)
            .map_err(|e| unsupported(e.to_string()))?;
        let (_, probe) =
            X509Certificate::from_der(probe.der()).map_err(|e| unsupported(e.to_string()))?;
        if probe.issuer().as_raw() != ca.subject().as_raw() {
            return Err(unsupported(
                "its subject name uses an encoding meshca cannot reproduce exactly".into(),
            ));
        }
        probe
            .verify_signature(Some(ca.public_key()))
            .map_err(|_| CaProblem::KeyMismatch {
                subject: self.subject.clone(),
            })
    }

    /// Whether a leaf of `lifetime` made at `now` ends (in whole seconds, as X.509 writes it)
    /// no later than this CA's chain.
    fn check_covers(&self, now: SystemTime, lifetime: Duration) -> Result<(), AuthorityError> {
        let whole = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let ends = now.checked_add(lifetime);
        if ends.is_some_and(|ends| whole(ends) <= whole(self.not_after)) {
            return Ok(());
        }
        let at_most = Duration::from_secs(whole(self.not_after).saturating_sub(whole(now)));
        Err(AuthorityError::OutlivesCa {
            lifetime: meshca_provider::format_duration(lifetime),
            ends: ends.map_or_else(|| "beyond the year 9999".to_owned(), display_time),
            subject: self.subject.clone(),
            not_after: display_time(self.not_after),
            at_most: meshca_provider::format_duration(at_most),
        })
    }

    fn check_not_expired(&self, now: SystemTime) -> Result<(), AuthorityError> {
        if now > self.not_after {
            return Err(AuthorityError::CaExpired {
                subject: self.subject.clone(),
                not_after: display_time(self.not_after),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for SigningAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningAuthority")
            .field("subject", &self.subject)
            .field("certificate", &Fingerprint(sha256(&self.certificate)))
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots)
            .field("key_type", &self.key.key_type())
            .field("not_after", &display_time(self.not_after))
            .field("private_key", &"<redacted>")
            .finish()
    }
}

fn check_is_ca(cert: &X509Certificate<'_>, position: usize) -> Result<(), CaProblem> {
    let subject = || cert.subject().to_string();
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(CaProblem::NotCa { subject: subject() });
    }
    match cert.key_usage() {
        Ok(Some(usage)) if usage.value.key_cert_sign() => Ok(()),
        Ok(_) => Err(CaProblem::CannotSign { subject: subject() }),
        Err(e) => Err(CaProblem::MalformedCertificate {
            position,
            reason: format!("{}: unreadable key usage: {e}", subject()),
        }),
    }
}

fn check_validity(cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), CaProblem> {
    let validity = cert.validity();
    let not_before = to_system_time(validity.not_before.timestamp());
    let not_after = to_system_time(validity.not_after.timestamp());
    if now > not_after {
        return Err(CaProblem::Expired {
            subject: cert.subject().to_string(),
            not_after: display_time(not_after),
        });
    }
    if now < not_before {
        return Err(CaProblem::NotYetValid {
            subject: cert.subject().to_string(),
            not_before: display_time(not_before),
        });
    }
    Ok(())
}

fn check_signed_by(
    child: &X509Certificate<'_>,
    parent: &X509Certificate<'_>,
) -> Result<(), CaProblem> {
    let broken = |reason: &str| CaProblem::ChainBroken {
        subject: child.subject().to_string(),
        issuer: parent.subject().to_string(),
        reason: reason.to_owned(),
    };
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Err(broken("its issuer name is different"));
    }
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|e| broken(&format!("the signature does not verify ({e})")))
}

/// A time as an RFC 3339 string, for messages.
pub(crate) fn display_time(t: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    profile::to_datetime(t)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{t:?}"))
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs()),
    }
}

fn sign_error(error: rcgen::Error) -> AuthorityError {
    AuthorityError::Sign {
        reason: error.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use meshca_provider::SystemClock;

    #[test]
    fn a_generated_root_loads_back_from_its_pem() {
        let root = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock).unwrap();
        assert!(root.is_root());
        assert_eq!(root.subject(), "O=meshca, CN=meshca root CA");
        let stored = root.to_stored();
        let loaded = SigningAuthority::from_pem(
            stored.certificate_pem(),
            stored.key_pem(),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(loaded.certificate(), root.certificate());
        assert_eq!(loaded.trust_bundle(), root.trust_bundle());
    }

    #[test]
    fn debug_hides_the_key() {
        let root = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock).unwrap();
        let debug = format!("{root:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let key_pem = root.to_stored().key_pem().to_owned();
        let body = key_pem.lines().nth(1).unwrap();
        assert!(!debug.contains(body));
    }

    #[test]
    fn an_intermediate_cannot_sign_another_intermediate() {
        let root = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock).unwrap();
        let options = IntermediateOptions::new("east", TrustDomain::default());
        let east = root.sign_intermediate(&options, &SystemClock).unwrap();
        assert!(!east.is_root());
        assert_eq!(east.root(), root.certificate());
        assert!(matches!(
            east.sign_intermediate(&options, &SystemClock),
            Err(AuthorityError::PathLength { .. })
        ));
    }

    #[test]
    fn a_leaf_that_would_outlive_its_ca_is_refused_not_cut_short() {
        let options = RootOptions {
            lifetime: Duration::from_secs(3600),
            ..RootOptions::default()
        };
        let root = SigningAuthority::generate_root(&options, &SystemClock).unwrap();
        let key = LeafKey::generate(KeyType::P256).unwrap();
        let id = meshca_provider::SpiffeId::from_short("a/b", &TrustDomain::default()).unwrap();
        let now = SystemTime::now();
        let fits = LeafSpec::workload(&id, &[], Duration::from_secs(1800));
        root.sign_leaf(&fits, &key, now, Duration::from_secs(60))
            .unwrap();
        let long = LeafSpec::workload(&id, &[], Duration::from_secs(24 * 3600));
        let err = root
            .sign_leaf(&long, &key, now, Duration::from_secs(60))
            .unwrap_err();
        assert!(matches!(err, AuthorityError::OutlivesCa { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("a certificate of 24h")
                && text.contains(&display_time(root.not_after()))
                && text.contains("rotate the CA"),
            "{text}"
        );
    }

    #[test]
    fn an_intermediate_belongs_to_the_trust_domain_it_was_made_for() {
        let root = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock).unwrap();
        assert!(root.spiffe_trust_domains().is_empty());
        root.check_trust_domain(&TrustDomain::new("any.example").unwrap())
            .unwrap();
        let b = TrustDomain::new("b.example").unwrap();
        let options = IntermediateOptions::new("b", b.clone());
        let east = root.sign_intermediate(&options, &SystemClock).unwrap();
        assert_eq!(east.spiffe_trust_domains(), ["b.example"]);
        east.check_trust_domain(&b).unwrap();
        let err = east
            .check_trust_domain(&TrustDomain::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("trust domain b.example")
                && err.contains("serves trust domain cluster.local")
                && err.contains("--trust-domain"),
            "{err}"
        );
    }

    #[test]
    fn key_problems_are_told_apart_from_certificate_problems() {
        assert!(
            CaProblem::KeyMismatch {
                subject: "x".into()
            }
            .concerns_key()
        );
        assert!(!CaProblem::NoCertificate.concerns_key());
    }
}
