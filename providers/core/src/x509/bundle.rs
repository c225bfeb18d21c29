//! [`TrustBundle`]: the roots a peer is verified against.

use std::fmt;

use rustls_pki_types::CertificateDer;

use super::{
    CertificateInfo, Fingerprint, PemError, certificates_from_pem, certificates_to_pem, sha256,
};

/// The set of root certificates a peer is verified against.
#[derive(Clone, Default)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    /// Subject and key identifier of each readable root, parsed once on first use.
    issuers: std::sync::OnceLock<Vec<IssuerName>>,
}

/// What names a CA as the issuer of a certificate: its subject and subject key identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerName {
    /// Subject distinguished name, as text.
    pub subject: String,
    /// Subject key identifier.
    pub key_id: Option<Vec<u8>>,
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.roots == other.roots
    }
}

impl Eq for TrustBundle {}

impl TrustBundle {
    /// A bundle of the given roots, with duplicates removed (order kept).
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Self {
        let mut bundle = Self::default();
        for root in roots {
            bundle.push(root);
        }
        bundle
    }

    /// Reads every `CERTIFICATE` block of a PEM text.
    pub fn from_pem(text: &str) -> Result<Self, PemError> {
        let roots = certificates_from_pem(text)?;
        if roots.is_empty() {
            return Err(PemError::NoCertificate);
        }
        Ok(Self::new(roots))
    }

    /// Adds a root unless it is already present.
    pub fn push(&mut self, root: CertificateDer<'static>) {
        if !self.roots.contains(&root) {
            self.roots.push(root);
            self.issuers = std::sync::OnceLock::new();
        }
    }

    /// Subject and key identifier of every readable root, parsed once per bundle.
    pub fn issuer_names(&self) -> &[IssuerName] {
        self.issuers.get_or_init(|| {
            self.roots
                .iter()
                .filter_map(|root| CertificateInfo::parse(root).ok())
                .map(|info| IssuerName {
                    subject: info.subject,
                    key_id: info.subject_key_id,
                })
                .collect()
        })
    }

    /// Every root in the bundle.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Whether the bundle holds this exact certificate.
    pub fn contains(&self, certificate: &CertificateDer<'_>) -> bool {
        self.roots
            .iter()
            .any(|r| r.as_ref() == certificate.as_ref())
    }

    /// Whether the bundle is empty.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The bundle as concatenated PEM blocks.
    pub fn to_pem(&self) -> String {
        certificates_to_pem(&self.roots)
    }

    /// SHA-256 fingerprints of the roots, for logs and status output.
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|r| Fingerprint(sha256(r)).to_string())
            .collect()
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.roots.iter().map(|c| Fingerprint(sha256(c))))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::testing::self_signed;

    #[test]
    fn bundles_deduplicate_and_reject_empty_text() {
        let (cert, pem_text) = self_signed();
        let twice = format!("{pem_text}{pem_text}");
        let bundle = TrustBundle::from_pem(&twice).unwrap();
        assert_eq!(bundle.roots().len(), 1);
        assert!(bundle.contains(cert.der()));
        assert_eq!(TrustBundle::from_pem(""), Err(PemError::NoCertificate));
        assert!(matches!(
            TrustBundle::from_pem("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"),
            Err(PemError::Malformed { .. })
        ));
        assert!(CertificateInfo::parse(b"junk").is_err());
    }
}
