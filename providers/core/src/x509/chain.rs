//! [`CertificateChain`]: a leaf and its intermediates.

use std::fmt;

use rustls_pki_types::CertificateDer;

use super::{
    CertificateInfo, Fingerprint, PemError, X509Error, certificates_from_pem, certificates_to_pem,
    sha256,
};

/// A certificate chain, leaf first, without the root.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateChain {
    certificates: Vec<CertificateDer<'static>>,
}

impl CertificateChain {
    /// A chain from DER certificates, leaf first. Returns `None` when empty.
    pub fn new(certificates: Vec<CertificateDer<'static>>) -> Option<Self> {
        (!certificates.is_empty()).then_some(Self { certificates })
    }

    /// The chain of `leaf` and the certificates above it (`intermediates`, nearest first):
    /// never empty, so, unlike [`new`](Self::new), nothing can fail.
    pub fn with_leaf(
        leaf: CertificateDer<'static>,
        intermediates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Self {
        let intermediates = intermediates.into_iter();
        let mut certificates = Vec::with_capacity(1 + intermediates.size_hint().0);
        certificates.push(leaf);
        certificates.extend(intermediates);
        Self { certificates }
    }

    /// Reads every `CERTIFICATE` block of a PEM text, in order (leaf first).
    pub fn from_pem(text: &str) -> Result<Self, PemError> {
        Self::new(certificates_from_pem(text)?).ok_or(PemError::NoCertificate)
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `new` refuses empty chains.
        &self.certificates[0]
    }

    /// The certificates above the leaf (intermediates), nearest first.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.certificates[1..]
    }

    /// Every certificate, leaf first.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }

    /// The chain as PEM, leaf first.
    pub fn to_pem(&self) -> String {
        certificates_to_pem(&self.certificates)
    }

    /// Parses the leaf.
    pub fn leaf_info(&self) -> Result<CertificateInfo, X509Error> {
        CertificateInfo::parse(self.leaf())
    }
}

impl fmt::Debug for CertificateChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.certificates.iter().map(|c| Fingerprint(sha256(c))))
            .finish()
    }
}
