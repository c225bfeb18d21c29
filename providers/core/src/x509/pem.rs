//! PEM codecs: certificates in and out of PEM text.

use rustls_pki_types::CertificateDer;

/// Why PEM text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// Not PEM at all, or a damaged block.
    #[error("not valid PEM: {reason}")]
    Malformed {
        /// The parser's reason.
        reason: String,
    },
    /// No `CERTIFICATE` block in the text.
    #[error("no CERTIFICATE block found")]
    NoCertificate,
}

/// Reads every `CERTIFICATE` block of a PEM text; other blocks are ignored.
pub fn certificates_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let blocks = pem::parse_many(text).map_err(|e| PemError::Malformed {
        reason: e.to_string(),
    })?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect())
}

/// Writes certificates as concatenated PEM blocks.
pub fn certificates_to_pem(certificates: &[CertificateDer<'_>]) -> String {
    certificates
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

/// One PEM block with Unix line endings (what openssl and Envoy write).
pub fn pem_block(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), config)
}
