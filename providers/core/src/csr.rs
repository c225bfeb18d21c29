//! PKCS#10 certificate signing requests (RFC 2986) from callers that bring their own key.
//!
//! A CSR is the caller's proof of possession: it carries a public key and is signed with the
//! matching private key. [`VerifiedCsr::from_der`] parses one, checks that it is a single,
//! well-formed request of a bounded size, that its key is of a type meshca issues for
//! ([`KeyType`]), and that its signature verifies with that key. What a caller may *not* choose
//! — the identity, names, lifetime and extensions of the certificate — is not read from the
//! request at all: a CA decides those from the caller's authenticated identity, so a
//! [`VerifiedCsr`] exposes only the key.

use std::fmt;

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
    Oid,
};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::AlgorithmIdentifier;

use crate::KeyType;

/// The largest CSR accepted, in bytes. A request for one RSA 4096 key with a few names is under
/// 2 KiB; the bound keeps a hostile caller from making meshca parse megabytes.
pub const MAX_CSR_LEN: usize = 64 * 1024;

/// Why a certificate signing request was refused. Never carries the request's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// More than [`MAX_CSR_LEN`] bytes.
    #[error(
        "the certificate signing request is {len} bytes, more than the limit of {max}: a \
         PKCS#10 request for one key is a few KiB at most"
    )]
    TooLarge {
        /// The size given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not DER-encoded PKCS#10.
    #[error(
        "not a PKCS#10 certificate signing request: {reason} (expected one DER-encoded request, \
         as `openssl req -new -outform DER` writes)"
    )]
    Malformed {
        /// What the parser found wrong.
        reason: String,
    },
    /// Bytes after the request.
    #[error(
        "{len} bytes follow the certificate signing request: send exactly one request and \
         nothing after it"
    )]
    TrailingData {
        /// How many bytes follow.
        len: usize,
    },
    /// A version other than v1 (encoded 0), the only one PKCS#10 defines.
    #[error("unsupported certificate signing request version {version}: PKCS#10 defines only 0")]
    UnsupportedVersion {
        /// The version number as encoded.
        version: u32,
    },
    /// A public key of a type or size meshca does not issue for.
    #[error(
        "unsupported public key in the certificate signing request: {found}; use ECDSA P-256, \
         ECDSA P-384, or RSA with a 2048, 3072 or 4096-bit modulus"
    )]
    UnsupportedKey {
        /// What the key is.
        found: String,
    },
    /// A signature algorithm outside the allowed set.
    #[error(
        "unsupported certificate signing request signature algorithm {found}: sign with \
         ECDSA SHA-256/SHA-384, or RSA PKCS#1 v1.5 with SHA-256, SHA-384 or SHA-512"
    )]
    UnsupportedSignature {
        /// The algorithm as named in the request (a name, or the OID).
        found: String,
    },
    /// A signature algorithm of the wrong family for the key (an RSA signature on an EC key).
    #[error(
        "the certificate signing request is signed with {signature}, which a {key} key cannot \
         make: sign it with the private key of the public key it carries"
    )]
    SignatureKeyMismatch {
        /// The signature algorithm.
        signature: &'static str,
        /// The key type.
        key: KeyType,
    },
    /// The signature does not verify with the request's own public key.
    #[error(
        "the certificate signing request's signature does not verify with the public key it \
         carries: it was altered, or signed with another key"
    )]
    BadSignature,
    /// The request asks for names or extensions other than the ones meshca decided, for a
    /// backend that certifies what a request asks for (see [`VerifiedCsr::requests_exactly`]).
    #[error(
        "the certificate signing request asks for {found}, but this certificate may only name \
         {allowed}: request exactly those names (an empty subject unless a common name is \
         listed) and no other extensions"
    )]
    NamesDiffer {
        /// What the request asks for that differs, as printable text.
        found: String,
        /// What meshca allows for this caller.
        allowed: String,
    },
}

/// The signature algorithms a [`VerifiedCsr`] may be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CsrSignatureAlgorithm {
    /// ecdsa-with-SHA256 (also what `openssl req` uses for P-384 keys by default).
    EcdsaSha256,
    /// ecdsa-with-SHA384.
    EcdsaSha384,
    /// sha256WithRSAEncryption (PKCS#1 v1.5).
    RsaPkcs1Sha256,
    /// sha384WithRSAEncryption (PKCS#1 v1.5).
    RsaPkcs1Sha384,
    /// sha512WithRSAEncryption (PKCS#1 v1.5).
    RsaPkcs1Sha512,
}

impl CsrSignatureAlgorithm {
    /// The algorithm's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaSha256 => "ecdsa-with-SHA256",
            Self::EcdsaSha384 => "ecdsa-with-SHA384",
            Self::RsaPkcs1Sha256 => "sha256WithRSAEncryption",
            Self::RsaPkcs1Sha384 => "sha384WithRSAEncryption",
            Self::RsaPkcs1Sha512 => "sha512WithRSAEncryption",
        }
    }

    fn is_ecdsa(self) -> bool {
        matches!(self, Self::EcdsaSha256 | Self::EcdsaSha384)
    }

    /// The ring verification algorithm for this signature on a key of `key_type`, if the
    /// two fit together.
    fn verification(self, key_type: KeyType) -> Option<&'static dyn VerificationAlgorithm> {
        Some(match (self, key_type) {
            (Self::EcdsaSha256, KeyType::P256) => &signature::ECDSA_P256_SHA256_ASN1,
            (Self::EcdsaSha384, KeyType::P256) => &signature::ECDSA_P256_SHA384_ASN1,
            (Self::EcdsaSha256, KeyType::P384) => &signature::ECDSA_P384_SHA256_ASN1,
            (Self::EcdsaSha384, KeyType::P384) => &signature::ECDSA_P384_SHA384_ASN1,
            (Self::RsaPkcs1Sha256, k) if k.is_rsa() => &signature::RSA_PKCS1_2048_8192_SHA256,
            (Self::RsaPkcs1Sha384, k) if k.is_rsa() => &signature::RSA_PKCS1_2048_8192_SHA384,
            (Self::RsaPkcs1Sha512, k) if k.is_rsa() => &signature::RSA_PKCS1_2048_8192_SHA512,
            _ => return None,
        })
    }
}

impl fmt::Display for CsrSignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A PKCS#10 request whose signature verified with its own public key: proof that the caller
/// holds the private key of [`subject_public_key_info`](Self::subject_public_key_info).
///
/// Only the key is exposed. The subject and requested extensions are deliberately not: a
/// certificate's names come from who the caller is, never from what the caller asks for. The
/// one use of them is [`requests_exactly`](Self::requests_exactly), for backends that certify
/// what a request says (cert-manager): there the request itself must already say only what
/// meshca decided.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    der: Vec<u8>,
    spki: Vec<u8>,
    public_key: Vec<u8>,
    key_type: KeyType,
    signature_algorithm: CsrSignatureAlgorithm,
    requested: Requested,
}

/// What a request asks to be certified, read once at parse time, compared, never trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Requested {
    /// Subject attributes, each as `short-name=value` (a common name as `CN=…`).
    subject: Vec<String>,
    /// URI SANs.
    uris: Vec<String>,
    /// DNS SANs, lowercased.
    dns_names: Vec<String>,
    /// Anything else: other SAN types, extensions other than SAN/keyUsage/extKeyUsage, a CA
    /// basicConstraints, unreadable attributes.
    other: Vec<String>,
}

/// The DER of the one PKCS#10 request in a PEM text (`-----BEGIN CERTIFICATE REQUEST-----`, or
/// `NEW CERTIFICATE REQUEST` as older tools write it), not verified yet: for callers that hand
/// the DER on (the issuance pipeline verifies it). Refused: more than [`MAX_CSR_LEN`] bytes of
/// DER worth of text, unreadable PEM, no block or several, a block of another kind.
pub fn der_from_pem(text: &str) -> Result<Vec<u8>, CsrError> {
    // Base64 is 4/3 of the DER, plus line breaks and the armour.
    if text.len() > MAX_CSR_LEN * 3 / 2 {
        return Err(CsrError::TooLarge {
            len: text.len(),
            max: MAX_CSR_LEN * 3 / 2,
        });
    }
    let blocks = pem::parse_many(text).map_err(|e| CsrError::Malformed {
        reason: format!("unreadable PEM: {e}"),
    })?;
    match <[pem::Pem; 1]>::try_from(blocks) {
        Ok([block])
            if block.tag() == "CERTIFICATE REQUEST" || block.tag() == "NEW CERTIFICATE REQUEST" =>
        {
            Ok(block.into_contents())
        }
        Ok([block]) => Err(CsrError::Malformed {
            reason: format!(
                "the PEM block is a {:?}, not a CERTIFICATE REQUEST",
                block.tag()
            ),
        }),
        Err(blocks) => Err(CsrError::Malformed {
            reason: format!(
                "expected one PEM CERTIFICATE REQUEST block, found {} blocks",
                blocks.len()
            ),
        }),
    }
}

impl VerifiedCsr {
    /// Parses one DER-encoded PKCS#10 request and verifies its self-signature.
    ///
    /// Refused: more than [`MAX_CSR_LEN`] bytes, anything that is not exactly one well-formed
    /// request, a version other than v1, keys other than ECDSA P-256/P-384 and RSA
    /// 2048/3072/4096, signature algorithms other than those of [`CsrSignatureAlgorithm`]
    /// (SHA-1, RSASSA-PSS, Ed25519 among them), and a signature that does not verify.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        if der.len() > MAX_CSR_LEN {
            return Err(CsrError::TooLarge {
                len: der.len(),
                max: MAX_CSR_LEN,
            });
        }
        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingData { len: rest.len() });
        }
        let info = &csr.certification_request_info;
        if info.version.0 != 0 {
            return Err(CsrError::UnsupportedVersion {
                version: info.version.0,
            });
        }
        let spki = &info.subject_pki;
        let key_type = key_type_of(spki)?;
        let signature_algorithm = signature_algorithm_of(&csr.signature_algorithm)?;
        let verification =
            signature_algorithm
                .verification(key_type)
                .ok_or(CsrError::SignatureKeyMismatch {
                    signature: signature_algorithm.name(),
                    key: key_type,
                })?;
        // A signature is a whole number of bytes; unused bits would be ignored by the
        // verifier, so they would let two encodings carry one signature.
        if csr.signature_value.unused_bits != 0 || spki.subject_public_key.unused_bits != 0 {
            return Err(CsrError::Malformed {
                reason: "a signature or public key BIT STRING has unused bits".to_owned(),
            });
        }
        UnparsedPublicKey::new(verification, &spki.subject_public_key.data)
            .verify(info.raw, &csr.signature_value.data)
            .map_err(|_| CsrError::BadSignature)?;
        Ok(Self {
            der: der.to_vec(),
            spki: spki.raw.to_vec(),
            public_key: spki.subject_public_key.data.to_vec(),
            key_type,
            signature_algorithm,
            requested: requested_of(&csr),
        })
    }

    /// Parses the PEM form (`-----BEGIN CERTIFICATE REQUEST-----`, or `NEW CERTIFICATE
    /// REQUEST` as older tools write it): exactly one block ([`der_from_pem`]), then as
    /// [`from_der`](Self::from_der).
    pub fn from_pem(text: &str) -> Result<Self, CsrError> {
        Self::from_der(&der_from_pem(text)?)
    }

    /// The requested key's SubjectPublicKeyInfo, DER-encoded as the request carried it (what
    /// a certificate for this key embeds).
    pub fn subject_public_key_info(&self) -> &[u8] {
        &self.spki
    }

    /// The public key itself: the SubjectPublicKeyInfo's BIT STRING contents (an uncompressed
    /// EC point, or an RSAPublicKey), as [`LeafKey::public_key`](crate::LeafKey::public_key)
    /// gives it for keys meshca makes.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The algorithm the request was signed with.
    pub fn signature_algorithm(&self) -> CsrSignatureAlgorithm {
        self.signature_algorithm
    }

    /// The request exactly as the caller sent it (DER), for a backend that must be handed the
    /// caller's own proof of possession (Vault's `pki/sign`, cert-manager).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Checks that the request asks for exactly what `spec` decides and nothing else: the
    /// subject is empty, or only `CN=<spec.common_name>` when the spec has one; the URI SANs
    /// are the spec's SPIFFE ID alone (or none); the DNS SANs are the spec's names (in any
    /// order and case); no other SAN type, no extension but subjectAltName, keyUsage and
    /// extKeyUsage, and no CA basicConstraints.
    ///
    /// Backends that take the names meshca passes do not need this; a backend that certifies
    /// what the request says (cert-manager's CertificateRequest) does, before it is forwarded.
    pub fn requests_exactly(&self, spec: &crate::LeafSpec) -> Result<(), CsrError> {
        let mut allowed = Requested::default();
        if let Some(cn) = &spec.common_name {
            allowed.subject.push(format!("CN={cn}"));
        }
        if let Some(id) = &spec.spiffe_id {
            allowed.uris.push(id.to_string());
        }
        allowed.dns_names = spec
            .dns_names
            .iter()
            .map(|n| n.as_str().to_ascii_lowercase())
            .collect();
        let mut asked = self.requested.clone();
        // A request that leaves the subject empty is fine where a common name is allowed.
        if asked.subject.is_empty() {
            allowed.subject.clear();
        }
        allowed.dns_names.sort();
        allowed.dns_names.dedup();
        asked.dns_names.sort();
        asked.dns_names.dedup();
        if asked == allowed {
            return Ok(());
        }
        Err(CsrError::NamesDiffer {
            found: escape(&asked.describe()),
            allowed: escape(&allowed.describe()),
        })
    }
}

impl Requested {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        let subject = if self.subject.is_empty() {
            "an empty subject".to_owned()
        } else {
            format!("subject {}", self.subject.join(", "))
        };
        parts.push(subject);
        parts.extend(self.uris.iter().map(|u| format!("URI {u}")));
        parts.extend(self.dns_names.iter().map(|d| format!("DNS {d}")));
        parts.extend(self.other.iter().cloned());
        parts.join("; ")
    }
}

/// A caller's text made safe for messages and logs: control, format (bidi) and other
/// non-printable characters escaped.
fn escape(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).collect()
}

/// Reads what the request asks for. Nothing here can fail the parse: anything unusual is kept
/// in `other`, which [`VerifiedCsr::requests_exactly`] refuses.
fn requested_of(csr: &X509CertificationRequest<'_>) -> Requested {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::ParsedCriAttribute;

    let info = &csr.certification_request_info;
    let mut requested = Requested::default();
    for attribute in info.subject.iter_attributes() {
        let name = x509_parser::objects::oid2abbrev(
            attribute.attr_type(),
            x509_parser::objects::oid_registry(),
        )
        .map_or_else(|_| attribute.attr_type().to_id_string(), ToOwned::to_owned);
        let value = attribute.as_str().unwrap_or("<not a string>");
        requested.subject.push(format!("{name}={value}"));
    }
    for attribute in info.iter_attributes() {
        match attribute.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(request) => {
                for extension in &request.extensions {
                    match extension.parsed_extension() {
                        ParsedExtension::SubjectAlternativeName(san) => {
                            for name in &san.general_names {
                                match name {
                                    GeneralName::URI(uri) => requested.uris.push((*uri).to_owned()),
                                    GeneralName::DNSName(dns) => {
                                        requested.dns_names.push(dns.to_ascii_lowercase());
                                    }
                                    other => requested.other.push(format!("SAN {other}")),
                                }
                            }
                        }
                        ParsedExtension::KeyUsage(_) | ParsedExtension::ExtendedKeyUsage(_) => {}
                        ParsedExtension::BasicConstraints(bc) if !bc.ca => {}
                        ParsedExtension::BasicConstraints(_) => {
                            requested
                                .other
                                .push("a CA certificate (basicConstraints cA)".to_owned());
                        }
                        _ => requested
                            .other
                            .push(format!("extension {}", oid_name(&extension.oid))),
                    }
                }
            }
            ParsedCriAttribute::ChallengePassword(_) => {
                requested.other.push("a challenge password".to_owned());
            }
            _ => requested
                .other
                .push(format!("attribute {}", oid_name(&attribute.oid))),
        }
    }
    requested
}

impl fmt::Debug for VerifiedCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCsr")
            .field("key_type", &self.key_type)
            .field("signature_algorithm", &self.signature_algorithm)
            .field(
                "spki_sha256",
                &crate::x509::Fingerprint(crate::x509::sha256(&self.spki)),
            )
            .finish()
    }
}

/// The key type of a SubjectPublicKeyInfo, if meshca issues for it.
fn key_type_of(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyType, CsrError> {
    let unsupported = |found: String| CsrError::UnsupportedKey { found };
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| unsupported("an EC key without a named curve".to_owned()))?;
        let (key_type, point_len) = if curve == OID_EC_P256 {
            (KeyType::P256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (KeyType::P384, 97)
        } else {
            return Err(unsupported(format!("an EC key on curve {curve}")));
        };
        // Uncompressed points only, as meshca's own keys and every mainstream tool write them.
        let point = &spki.subject_public_key.data;
        if point.len() != point_len || point.first() != Some(&0x04) {
            return Err(unsupported(format!(
                "a {key_type} key that is not an uncompressed point"
            )));
        }
        Ok(key_type)
    } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let modulus = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.modulus,
            _ => return Err(unsupported("an unreadable RSA key".to_owned())),
        };
        let bits = significant_bits(modulus);
        KeyType::ALL
            .into_iter()
            .find(|k| k.rsa_bits() == Some(bits))
            .ok_or_else(|| unsupported(format!("an RSA key with a {bits}-bit modulus")))
    } else {
        Err(unsupported(format!("algorithm {}", oid_name(algorithm))))
    }
}

/// The number of bits of a big-endian unsigned integer, leading zeros aside.
fn significant_bits(bytes: &[u8]) -> usize {
    let mut digits = bytes.iter().skip_while(|b| **b == 0);
    match digits.next() {
        Some(first) => digits.count() * 8 + 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

fn signature_algorithm_of(
    algorithm: &AlgorithmIdentifier<'_>,
) -> Result<CsrSignatureAlgorithm, CsrError> {
    let oid = &algorithm.algorithm;
    let found = if *oid == OID_SIG_ECDSA_WITH_SHA256 {
        CsrSignatureAlgorithm::EcdsaSha256
    } else if *oid == OID_SIG_ECDSA_WITH_SHA384 {
        CsrSignatureAlgorithm::EcdsaSha384
    } else if *oid == OID_PKCS1_SHA256WITHRSA {
        CsrSignatureAlgorithm::RsaPkcs1Sha256
    } else if *oid == OID_PKCS1_SHA384WITHRSA {
        CsrSignatureAlgorithm::RsaPkcs1Sha384
    } else if *oid == OID_PKCS1_SHA512WITHRSA {
        CsrSignatureAlgorithm::RsaPkcs1Sha512
    } else {
        return Err(CsrError::UnsupportedSignature {
            found: oid_name(oid),
        });
    };
    // RFC 5758: ECDSA identifiers have no parameters. RFC 4055: PKCS#1 v1.5 ones have NULL
    // (some encoders omit it, which is harmless).
    let parameters_fit = match &algorithm.parameters {
        None => true,
        Some(any) => {
            !found.is_ecdsa()
                && any.header.tag() == x509_parser::der_parser::asn1_rs::Tag::Null
                && any.data.is_empty()
        }
    };
    if !parameters_fit {
        return Err(CsrError::Malformed {
            reason: format!("unexpected parameters for {}", found.name()),
        });
    }
    Ok(found)
}

/// An OID's name where it is one people meet, else its dotted form.
fn oid_name(oid: &Oid<'_>) -> String {
    let known = [
        (&OID_PKCS1_SHA1WITHRSA, "sha1WithRSAEncryption"),
        (&OID_PKCS1_RSASSAPSS, "RSASSA-PSS"),
        (&OID_SIG_ED25519, "Ed25519"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == oid)
        .map_or_else(|| oid.to_id_string(), |(_, name)| (*name).to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::LeafKey;

    /// A CSR signed by rcgen with a key meshca generates.
    fn rcgen_csr(key: &LeafKey) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rcgen");
        let signer = key.signing_key().unwrap();
        params.serialize_request(&signer).unwrap().der().to_vec()
    }

    /// DER written by `openssl req -new -outform DER` (OpenSSL 3.0), an independent producer.
    fn openssl(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/csr/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn requests_made_by_rcgen_verify_and_carry_the_key() {
        for key_type in [KeyType::P256, KeyType::P384, KeyType::Rsa2048] {
            let key = LeafKey::generate(key_type).unwrap();
            let csr = VerifiedCsr::from_der(&rcgen_csr(&key)).unwrap();
            assert_eq!(csr.key_type(), key_type);
            assert_eq!(csr.public_key(), key.public_key(), "{key_type}");
            assert_eq!(
                csr.subject_public_key_info(),
                key.public_key_spki(),
                "{key_type}"
            );
            let expected = if key_type.is_rsa() {
                CsrSignatureAlgorithm::RsaPkcs1Sha256
            } else if key_type == KeyType::P256 {
                CsrSignatureAlgorithm::EcdsaSha256
            } else {
                CsrSignatureAlgorithm::EcdsaSha384
            };
            assert_eq!(csr.signature_algorithm(), expected);
        }
    }

    #[test]
    fn requests_made_by_openssl_verify() {
        let cases = [
            ("openssl-p256.der", KeyType::P256),
            // `openssl req` signs with SHA-256 whatever the curve.
            ("openssl-p384.der", KeyType::P384),
            ("openssl-rsa2048.der", KeyType::Rsa2048),
        ];
        for (file, key_type) in cases {
            let csr = VerifiedCsr::from_der(&openssl(file)).unwrap();
            assert_eq!(csr.key_type(), key_type, "{file}");
        }
        let p384 = VerifiedCsr::from_der(&openssl("openssl-p384.der")).unwrap();
        assert_eq!(
            p384.signature_algorithm(),
            CsrSignatureAlgorithm::EcdsaSha256
        );
    }

    #[test]
    fn a_flipped_signature_byte_is_refused() {
        for der in [
            openssl("openssl-p256.der"),
            openssl("openssl-rsa2048.der"),
            rcgen_csr(&LeafKey::generate(KeyType::P384).unwrap()),
        ] {
            let mut tampered = der.clone();
            let last = tampered.len() - 1;
            tampered[last] ^= 0x01;
            assert_eq!(
                VerifiedCsr::from_der(&tampered),
                Err(CsrError::BadSignature)
            );
        }
    }

    #[test]
    fn a_changed_request_body_is_refused() {
        let mut der = openssl("openssl-p256.der");
        let at = der
            .windows(b"openssl p256".len())
            .position(|w| w == b"openssl p256")
            .unwrap();
        der[at] = b'O';
        assert_eq!(VerifiedCsr::from_der(&der), Err(CsrError::BadSignature));
    }

    #[test]
    fn unsupported_algorithms_are_refused_by_name() {
        let error = VerifiedCsr::from_der(&openssl("openssl-rsa2048-sha1.der")).unwrap_err();
        assert!(
            matches!(&error, CsrError::UnsupportedSignature { found } if found == "sha1WithRSAEncryption"),
            "{error:?}"
        );
        let error = VerifiedCsr::from_der(&openssl("openssl-rsa2048-pss.der")).unwrap_err();
        assert!(
            matches!(&error, CsrError::UnsupportedSignature { found } if found == "RSASSA-PSS"),
            "{error:?}"
        );
        let error = VerifiedCsr::from_der(&openssl("openssl-ed25519.der")).unwrap_err();
        assert!(
            matches!(&error, CsrError::UnsupportedKey { found } if found.contains("Ed25519")),
            "{error:?}"
        );
        let error = VerifiedCsr::from_der(&openssl("openssl-rsa1024.der")).unwrap_err();
        assert_eq!(
            error,
            CsrError::UnsupportedKey {
                found: "an RSA key with a 1024-bit modulus".to_owned()
            }
        );
        assert!(
            error
                .to_string()
                .contains("RSA with a 2048, 3072 or 4096-bit modulus")
        );
    }

    #[test]
    fn trailing_data_truncation_and_size_are_refused() {
        let der = openssl("openssl-p256.der");
        let mut trailing = der.clone();
        trailing.extend_from_slice(&[0, 0]);
        assert_eq!(
            VerifiedCsr::from_der(&trailing),
            Err(CsrError::TrailingData { len: 2 })
        );
        let error = VerifiedCsr::from_der(&der[..der.len() - 1]).unwrap_err();
        assert!(matches!(error, CsrError::Malformed { .. }), "{error:?}");
        assert!(matches!(
            VerifiedCsr::from_der(&[]),
            Err(CsrError::Malformed { .. })
        ));
        let huge = vec![0x30; MAX_CSR_LEN + 1];
        assert_eq!(
            VerifiedCsr::from_der(&huge),
            Err(CsrError::TooLarge {
                len: MAX_CSR_LEN + 1,
                max: MAX_CSR_LEN
            })
        );
    }

    #[test]
    fn pem_takes_exactly_one_request_block() {
        let der = openssl("openssl-p384.der");
        let pem = crate::x509::pem_block("CERTIFICATE REQUEST", &der);
        assert_eq!(
            VerifiedCsr::from_pem(&pem).unwrap(),
            VerifiedCsr::from_der(&der).unwrap()
        );
        let old = crate::x509::pem_block("NEW CERTIFICATE REQUEST", &der);
        assert!(VerifiedCsr::from_pem(&old).is_ok());
        let error = VerifiedCsr::from_pem(&format!("{pem}{pem}")).unwrap_err();
        assert!(error.to_string().contains("found 2 blocks"), "{error}");
        let error =
            VerifiedCsr::from_pem(&crate::x509::pem_block("CERTIFICATE", &der)).unwrap_err();
        assert!(
            error.to_string().contains("not a CERTIFICATE REQUEST"),
            "{error}"
        );
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let csr = VerifiedCsr::from_der(&openssl("openssl-p256.der")).unwrap();
        let debug = format!("{csr:?}");
        assert!(
            debug.contains("P256") && debug.contains("spki_sha256"),
            "{debug}"
        );
        assert!(debug.len() < 200, "{debug}");
    }

    #[test]
    fn significant_bits_ignores_leading_zeros() {
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x01]), 1);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[]), 0);
    }
}
