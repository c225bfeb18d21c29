//! [`CertificateInfo`]: what meshca reads out of a certificate, through the fast DER walker
//! (`fast`) or x509-parser.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

// The fast DER walker builds a CertificateInfo, so it lives under this module (a child may use
// its parent's type; as a sibling it made a cycle).
mod fast;

use super::fingerprint::hex;

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
    pub key_description: Cow<'static, str>,
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
    ///
    /// Certificates in the shapes meshca and common CAs write (v3, EC P-256/P-384 keys, names
    /// of common attributes in string types, UTC or generalized times) are read by a small DER
    /// walker that takes only what is needed here; anything else, and anything it finds
    /// malformed, goes through x509-parser, which then decides. Both give the same answer for
    /// what the walker reads (tested on generated certificates).
    pub fn parse(der: &[u8]) -> Result<Self, X509Error> {
        if let Some(info) = fast::parse(der) {
            return Ok(info);
        }
        Self::parse_full(der)
    }

    /// The DER walker alone: `None` where [`parse`](Self::parse) would hand over to
    /// x509-parser. For the differential fuzz target (`fuzz/`), not an API.
    #[doc(hidden)]
    pub fn parse_fast(der: &[u8]) -> Option<Self> {
        fast::parse(der)
    }

    /// Parses a DER certificate with x509-parser alone. Public for the differential fuzz
    /// target (`fuzz/`), not an API.
    #[doc(hidden)]
    pub fn parse_full(der: &[u8]) -> Result<Self, X509Error> {
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
            subject_key_id,
            authority_key_id,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            extended_key_usage,
        })
    }

    /// The certificate's lifetime (NotAfter − NotBefore).
    pub fn lifetime(&self) -> Duration {
        lifetime(self.not_before, self.not_after)
    }

    /// The serial number as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial, "")
    }

    /// Its validity and serial, the rest dropped.
    pub fn into_summary(self) -> CertificateSummary {
        CertificateSummary {
            not_before: self.not_before,
            not_after: self.not_after,
            serial: self.serial,
        }
    }
}

/// What a holder of many certificates keeps of each once it has been validated: when it is
/// valid and which one it is, which is what renewing, serving and logging it need. A cache of
/// tens of thousands of leaves keeps this rather than their [`CertificateInfo`], whose names,
/// key and extensions are a dozen more allocations per certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number bytes as encoded (big-endian; a leading zero keeps it positive).
    pub serial: Vec<u8>,
}

impl CertificateSummary {
    /// The certificate's lifetime (NotAfter − NotBefore).
    pub fn lifetime(&self) -> Duration {
        lifetime(self.not_before, self.not_after)
    }

    /// The serial number as lowercase hex.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial, "")
    }
}

fn lifetime(not_before: SystemTime, not_after: SystemTime) -> Duration {
    not_after.duration_since(not_before).unwrap_or_default()
}

fn describe_key(cert: &X509Certificate<'_>) -> Cow<'static, str> {
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(point)) => match point.key_size() {
            256 => "ECDSA P-256".into(),
            384 => "ECDSA P-384".into(),
            bits => format!("ECDSA {bits}-bit").into(),
        },
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()).into(),
        Ok(_) => "other".into(),
        Err(_) => "unreadable".into(),
    }
}

pub(super) fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::CertificateChain;
    use crate::x509::testing::self_signed;

    #[test]
    fn reads_names_and_fingerprint() {
        let (cert, pem_text) = self_signed();
        let info = CertificateInfo::parse(cert.der()).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("a.example"));
        assert_eq!(info.dns_sans, ["a.example"]);
        assert_eq!(info.uri_sans, ["spiffe://cluster.local/ns/a/sa/b"]);
        assert_eq!(info.key_description, "ECDSA P-256");
        assert_eq!(
            crate::x509::Fingerprint::of(cert.der()).to_string().len(),
            32 * 3 - 1
        );
        let chain = CertificateChain::from_pem(&pem_text).unwrap();
        assert_eq!(chain.leaf().as_ref(), cert.der().as_ref());
        assert_eq!(chain.to_pem(), pem_text);
    }
}
