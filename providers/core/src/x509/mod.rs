//! Certificates as meshca hands them around: chains, trust bundles, and what a person (or the
//! cache) needs to read out of a certificate.
//!
//! One file per concern: PEM codecs ([`certificates_from_pem`]), [`CertificateChain`],
//! [`TrustBundle`], [`CertificateInfo`] (with its fast DER walker), and [`Fingerprint`]s.

mod bundle;
mod chain;
mod fingerprint;
mod info;
mod pem;

pub use bundle::{IssuerName, TrustBundle};
pub use chain::CertificateChain;
pub use fingerprint::{Fingerprint, sha256};
pub use info::{CertificateInfo, CertificateSummary, KeyPurposes, X509Error};
pub use pem::{PemError, certificates_from_pem, certificates_to_pem, pem_block};

/// Certificates the unit tests of this module share.
#[cfg(test)]
mod testing {
    pub(super) fn self_signed() -> (rcgen::Certificate, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a.example");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        let pem_text = cert.pem();
        (cert, pem_text)
    }
}
