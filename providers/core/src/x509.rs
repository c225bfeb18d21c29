//! Certificates as meshca hands them around: chains, trust bundles, and what a person (or the
//! cache) needs to read out of a certificate.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

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

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509Error {
    /// DER that is not an X.509 certificate.
    #[error("not a valid X.509 certificate: {reason}")]
    Malformed {
        /// The parser's reason.
        reason: String,
    },
}

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

/// What meshca reads out of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject distinguished name, as text.
    pub subject: String,
    /// Subject common name, if any.
    pub common_name: Option<String>,
    /// Issuer distinguished name, as text.
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number bytes as encoded (big-endian; a leading zero keeps it positive).
    pub serial: Vec<u8>,
    /// URI subject alternative names.
    pub uri_sans: Vec<String>,
    /// DNS subject alternative names.
    pub dns_sans: Vec<String>,
    /// basicConstraints CA flag.
    pub is_ca: bool,
    /// The public key algorithm and size, e.g. `ECDSA P-256` or `RSA 2048`.
    pub key_description: String,
    /// SHA-256 of the DER certificate, colon-separated hex.
    pub sha256_fingerprint: String,
    /// Subject key identifier.
    pub subject_key_id: Option<Vec<u8>>,
    /// Authority key identifier.
    pub authority_key_id: Option<Vec<u8>>,
    /// The subject public key (the SPKI bit string's contents).
    pub public_key: Vec<u8>,
    /// The extended key usage, if the certificate has the extension.
    pub extended_key_usage: Option<KeyPurposes>,
}

/// What an extended key usage extension allows, as far as mTLS cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPurposes {
    /// anyExtendedKeyUsage.
    pub any: bool,
    /// id-kp-serverAuth.
    pub server_auth: bool,
    /// id-kp-clientAuth.
    pub client_auth: bool,
}

impl CertificateInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, X509Error> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| X509Error::Malformed {
            reason: e.to_string(),
        })?;
        let mut uri_sans = Vec::new();
        let mut dns_sans = Vec::new();
        let mut subject_key_id = None;
        let mut authority_key_id = None;
        let mut extended_key_usage = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) => uri_sans.push((*uri).to_owned()),
                            GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::SubjectKeyIdentifier(ski) => subject_key_id = Some(ski.0.to_vec()),
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    extended_key_usage = Some(KeyPurposes {
                        any: eku.any,
                        server_auth: eku.server_auth,
                        client_auth: eku.client_auth,
                    });
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                _ => {}
            }
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(Self {
            subject: cert.subject().to_string(),
            common_name,
            issuer: cert.issuer().to_string(),
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            serial: cert.raw_serial().to_vec(),
            uri_sans,
            dns_sans,
            is_ca: cert.is_ca(),
            key_description: describe_key(&cert),
            sha256_fingerprint: Fingerprint(sha256(der)).to_string(),
            subject_key_id,
            authority_key_id,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            extended_key_usage,
        })
    }

    /// The certificate's lifetime (NotAfter − NotBefore).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// The serial number as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial, "")
    }
}

fn describe_key(cert: &X509Certificate<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(point)) => match point.key_size() {
            256 => "ECDSA P-256".to_owned(),
            384 => "ECDSA P-384".to_owned(),
            bits => format!("ECDSA {bits}-bit"),
        },
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(_) => "other".to_owned(),
        Err(_) => "unreadable".to_owned(),
    }
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs()),
    }
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

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A SHA-256 fingerprint shown as colon-separated uppercase hex, the way `openssl x509
/// -fingerprint -sha256` prints it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0, ":").to_ascii_uppercase())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex(&self.0[..8], ""))
    }
}

fn hex(bytes: &[u8], separator: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (rcgen::Certificate, String) {
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

    #[test]
    fn reads_names_and_fingerprint() {
        let (cert, pem_text) = self_signed();
        let info = CertificateInfo::parse(cert.der()).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("a.example"));
        assert_eq!(info.dns_sans, ["a.example"]);
        assert_eq!(info.uri_sans, ["spiffe://cluster.local/ns/a/sa/b"]);
        assert_eq!(info.key_description, "ECDSA P-256");
        assert_eq!(info.sha256_fingerprint.len(), 32 * 3 - 1);
        let chain = CertificateChain::from_pem(&pem_text).unwrap();
        assert_eq!(chain.leaf().as_ref(), cert.der().as_ref());
        assert_eq!(chain.to_pem(), pem_text);
    }

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
