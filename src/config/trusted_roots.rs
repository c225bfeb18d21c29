//! `extraTrustedRoots`: roots trusted besides the provider's own, each checked to be a CA.

use meshca_provider::{CertificateInfo, TrustBundle};
use rustls_pki_types::CertificateDer;

use super::forms::PEM_BEGIN;
use super::{Config, ConfigError};

impl Config {
    /// `extraTrustedRoots`, read and checked: every entry (a file, or inline PEM) must hold at
    /// least one certificate, and every certificate must be a CA. The error names the entry.
    pub fn extra_trusted_roots(&self) -> Result<TrustBundle, ConfigError> {
        let mut bundle = TrustBundle::default();
        for (index, entry) in self.extra_trusted_roots.iter().enumerate() {
            for root in read_trusted_root(index + 1, entry)? {
                bundle.push(root);
            }
        }
        Ok(bundle)
    }
}

/// The certificates of one `extraTrustedRoots` entry (1-based `number`), each checked to be a
/// CA. Inline text is never quoted back in errors: it is named by its position.
fn read_trusted_root(
    number: usize,
    entry: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let inline = entry.trim_start().starts_with(PEM_BEGIN);
    let name = if inline {
        format!("entry {number} (inline PEM)")
    } else {
        format!("entry {number} ({})", entry.trim())
    };
    let bad = |reason: String| ConfigError::InvalidValue {
        key: "extraTrustedRoots",
        reason: format!("{name}: {reason}"),
    };
    let text = if inline {
        entry.to_owned()
    } else if entry.trim().is_empty() {
        return Err(bad(
            "is empty: give a PEM file path or inline PEM text starting with -----BEGIN \
             CERTIFICATE-----"
                .to_owned(),
        ));
    } else {
        std::fs::read_to_string(entry.trim()).map_err(|e| {
            bad(format!(
                "cannot read the file: {e}; give a readable PEM file path, or the PEM text \
                 itself starting with -----BEGIN CERTIFICATE-----"
            ))
        })?
    };
    let roots = meshca_provider::x509::certificates_from_pem(&text)
        .map_err(|e| bad(format!("{e}: expected PEM CERTIFICATE blocks")))?;
    if roots.is_empty() {
        return Err(bad(
            "holds no PEM certificate (no -----BEGIN CERTIFICATE----- block): give the CA's \
             root certificate in PEM"
                .to_owned(),
        ));
    }
    for (position, root) in roots.iter().enumerate() {
        let which = if roots.len() > 1 {
            format!("certificate {} of {}", position + 1, roots.len())
        } else {
            "the certificate".to_owned()
        };
        let info = CertificateInfo::parse(root)
            .map_err(|e| bad(format!("{which} cannot be parsed: {e}")))?;
        if !info.is_ca {
            return Err(bad(format!(
                "{which} ({}) is not a CA certificate (basicConstraints CA:true is missing): \
                 give the root that signs the peers' certificates, not a leaf",
                info.subject
            )));
        }
    }
    Ok(roots)
}
