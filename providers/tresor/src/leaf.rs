//! The leaf profile as a per-CA template: everything a leaf shares with every other leaf of
//! one CA (issuer name, signature algorithm, authority key identifier, key usage, extended key
//! usage, basicConstraints) is DER-encoded once when the CA is loaded; an issuance writes only
//! the serial, the validity, the subject, the public key, the SANs and the subject key
//! identifier around those bytes, then signs.
//!
//! The bytes are the ones rcgen writes for [`profile::leaf_params`](crate::profile) — the tests
//! below compare the two to-be-signed encodings byte for byte for every key type — so the
//! profile has one definition in `profile.rs`, and this is a faster way of writing it.

use std::time::{Duration, SystemTime};

use meshca_provider::{KeyType, LeafSpec, SpiffeId, SubjectKey};
use rcgen::SigningKey;

use crate::error::AuthorityError;
use crate::profile;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const UTF8_STRING: u8 = 0x0c;
const SET: u8 = 0x31;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const URI_NAME: u8 = 0x86;
const DNS_NAME: u8 = 0x82;

/// `[0] EXPLICIT INTEGER 2`: X.509 v3.
const VERSION_V3: &[u8] = &[0xa0, 0x03, 0x02, 0x01, 0x02];
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SAN: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
/// id-ce-subjectKeyIdentifier, 2.5.29.14.
const OID_SKI: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x0e];
/// id-ce-authorityKeyIdentifier, 2.5.29.35.
const OID_AKI: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x23];
/// `BOOLEAN TRUE`, the critical flag.
const CRITICAL: &[u8] = &[0x01, 0x01, 0xff];
/// keyUsage (critical): digitalSignature.
const KEY_USAGE_EC: &[u8] = &[
    0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x07, 0x80,
];
/// keyUsage (critical): digitalSignature, keyEncipherment.
const KEY_USAGE_RSA: &[u8] = &[
    0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x05, 0xa0,
];
/// extKeyUsage: serverAuth, clientAuth.
const EXTENDED_KEY_USAGE: &[u8] = &[
    0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25, 0x04, 0x16, 0x30, 0x14, 0x06, 0x08, 0x2b, 0x06, 0x01,
    0x05, 0x05, 0x07, 0x03, 0x01, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];
/// basicConstraints (critical): CA:FALSE (an empty sequence).
const BASIC_CONSTRAINTS_END_ENTITY: &[u8] = &[
    0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00,
];

/// What a certificate's buffer is made with, besides the issuer name: enough for a P-256 or
/// P-384 leaf with a SPIFFE ID and a few DNS names signed by an EC CA, so that one allocation
/// holds the whole certificate (an RSA leaf or CA grows it once or twice).
const CERTIFICATE_CAPACITY: usize = 896;

/// The AlgorithmIdentifier of the signatures a CA key of `key_type` makes.
fn signature_algorithm(key_type: KeyType) -> &'static [u8] {
    match key_type {
        // ecdsa-with-SHA256, no parameters.
        KeyType::P256 => &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
        ],
        // ecdsa-with-SHA384, no parameters.
        KeyType::P384 => &[
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
        ],
        // sha256WithRSAEncryption, NULL parameters.
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &[
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
            0x00,
        ],
    }
}

/// What every leaf of one CA has in common, encoded once.
#[derive(Debug, Clone)]
pub(crate) struct LeafTemplate {
    /// The CA's signature AlgorithmIdentifier (in the TBS and after it).
    signature_algorithm: &'static [u8],
    /// The CA certificate's subject Name, exactly as encoded there.
    issuer: Vec<u8>,
    /// The whole authorityKeyIdentifier extension (the CA's subject key identifier).
    authority_key_id: Vec<u8>,
}

impl LeafTemplate {
    /// A template for leaves signed by a CA with key type `ca_key_type`, subject `issuer_der`
    /// (the DER Name as it is in the CA certificate) and subject key identifier `ca_key_id`.
    pub(crate) fn new(ca_key_type: KeyType, issuer_der: &[u8], ca_key_id: &[u8]) -> Self {
        let mut key_id = Vec::with_capacity(ca_key_id.len() + 2);
        tlv(&mut key_id, 0x80, ca_key_id);
        let mut value = Vec::with_capacity(key_id.len() + 2);
        tlv(&mut value, SEQUENCE, &key_id);
        let mut body = OID_AKI.to_vec();
        tlv(&mut body, OCTET_STRING, &value);
        let mut authority_key_id = Vec::with_capacity(body.len() + 2);
        tlv(&mut authority_key_id, SEQUENCE, &body);
        Self {
            signature_algorithm: signature_algorithm(ca_key_type),
            issuer: issuer_der.to_vec(),
            authority_key_id,
        }
    }

    /// Signs a leaf for `spec` over `key`'s public key with `signer`: the profile of
    /// [`profile::leaf_params`]. Returns the DER certificate.
    ///
    /// A key meshca made and a caller's key (from a verified CSR) get the same certificate:
    /// only the public key is read from a CSR, never its subject, names or extensions.
    pub(crate) fn sign(
        &self,
        spec: &LeafSpec,
        key: SubjectKey<'_>,
        signer: &impl SigningKey,
        now: SystemTime,
        clock_skew: Duration,
        ca_not_after: SystemTime,
    ) -> Result<Vec<u8>, AuthorityError> {
        let serial = profile::serial_bytes();
        // The whole certificate is written in this one buffer: the TBS after room for the outer
        // header, signed where it lies, then the algorithm and the signature, then the header.
        let mut certificate = Vec::with_capacity(CERTIFICATE_CAPACITY + self.issuer.len());
        let contents = open(&mut certificate);
        self.write_to_be_signed(
            &mut certificate,
            spec,
            key,
            &serial,
            now,
            clock_skew,
            ca_not_after,
        )?;
        let signature =
            signer
                .sign(&certificate[contents..])
                .map_err(|e| AuthorityError::Sign {
                    reason: e.to_string(),
                })?;
        certificate.extend_from_slice(self.signature_algorithm);
        header(&mut certificate, BIT_STRING, signature.len() + 1);
        certificate.push(0);
        certificate.extend_from_slice(&signature);
        close(&mut certificate, contents, SEQUENCE);
        // The room left over (a few hundred bytes for a P-256 leaf) goes back to the allocator:
        // the cache keeps this buffer for the certificate's whole life.
        certificate.shrink_to_fit();
        Ok(certificate)
    }

    /// The DER TBSCertificate.
    #[cfg(test)]
    fn to_be_signed(
        &self,
        spec: &LeafSpec,
        key: SubjectKey<'_>,
        serial: &[u8],
        now: SystemTime,
        clock_skew: Duration,
        ca_not_after: SystemTime,
    ) -> Result<Vec<u8>, AuthorityError> {
        let mut tbs = Vec::new();
        self.write_to_be_signed(&mut tbs, spec, key, serial, now, clock_skew, ca_not_after)?;
        Ok(tbs)
    }

    /// Appends the DER TBSCertificate to `out`. Each constructed value is written in place: room
    /// for its header, its contents, then the header in that room ([`open`], [`close`]), so no
    /// part of the certificate is built in a buffer of its own and copied.
    #[allow(clippy::too_many_arguments)]
    fn write_to_be_signed(
        &self,
        out: &mut Vec<u8>,
        spec: &LeafSpec,
        key: SubjectKey<'_>,
        serial: &[u8],
        now: SystemTime,
        clock_skew: Duration,
        ca_not_after: SystemTime,
    ) -> Result<(), AuthorityError> {
        if spec.spiffe_id.is_none() && spec.dns_names.is_empty() {
            return Err(profile::nameless());
        }
        let (not_before, not_after) = profile::validity(now, clock_skew, spec.lifetime)?;
        let not_after = not_after.min(profile::to_datetime(ca_not_after)?);

        let tbs = open(out);
        out.extend_from_slice(VERSION_V3);
        write_serial(out, serial);
        out.extend_from_slice(self.signature_algorithm);
        out.extend_from_slice(&self.issuer);

        let mut validity = [0u8; 34];
        let mut used = write_time(&mut validity, not_before);
        used += write_time(&mut validity[used..], not_after);
        tlv(out, SEQUENCE, &validity[..used]);

        // Subject: the common name alone, or an empty Name.
        match &spec.common_name {
            Some(cn) => {
                let attribute_len = OID_COMMON_NAME.len() + len_of(cn.len());
                let set_len = len_of(attribute_len);
                header(out, SEQUENCE, len_of(set_len));
                header(out, SET, set_len);
                header(out, SEQUENCE, attribute_len);
                out.extend_from_slice(OID_COMMON_NAME);
                tlv(out, UTF8_STRING, cn.as_bytes());
            }
            None => out.extend_from_slice(&[SEQUENCE, 0]),
        }

        key.write_subject_public_key_info(out);

        // Extensions, in the order rcgen writes them.
        let tagged = open(out);
        let extensions = open(out);
        out.extend_from_slice(&self.authority_key_id);
        self.write_subject_alt_names(out, spec)?;
        out.extend_from_slice(if key.key_type().is_rsa() {
            KEY_USAGE_RSA
        } else {
            KEY_USAGE_EC
        });
        out.extend_from_slice(EXTENDED_KEY_USAGE);
        write_subject_key_id(out, key.public_key());
        out.extend_from_slice(BASIC_CONSTRAINTS_END_ENTITY);
        close(out, extensions, SEQUENCE);
        close(out, tagged, 0xa3);

        close(out, tbs, SEQUENCE);
        Ok(())
    }

    /// subjectAltName: the SPIFFE ID (URI), then the DNS names; critical when the subject is
    /// empty (RFC 5280 §4.2.1.6).
    fn write_subject_alt_names(
        &self,
        out: &mut Vec<u8>,
        spec: &LeafSpec,
    ) -> Result<(), AuthorityError> {
        let extension = open(out);
        out.extend_from_slice(OID_SAN);
        if spec.common_name.is_none() {
            out.extend_from_slice(CRITICAL);
        }
        let value = open(out);
        let names = open(out);
        if let Some(uri) = spec.spiffe_id.as_ref().map(SpiffeId::as_uri) {
            profile::check_ia5(uri)?;
            tlv(out, URI_NAME, uri.as_bytes());
        }
        // DnsName holds ASCII hostnames only: nothing to check.
        for name in &spec.dns_names {
            tlv(out, DNS_NAME, name.as_bytes());
        }
        close(out, names, SEQUENCE);
        close(out, value, OCTET_STRING);
        close(out, extension, SEQUENCE);
        Ok(())
    }
}

/// subjectKeyIdentifier: RFC 7093 method 1 over the leaf's raw public key
/// ([`profile::key_identifier`], written here without allocating).
fn write_subject_key_id(out: &mut Vec<u8>, subject_public_key: &[u8]) {
    let digest = ring::digest::digest(&ring::digest::SHA256, subject_public_key);
    let key_id = &digest.as_ref()[..profile::KEY_ID_LEN];
    header(out, SEQUENCE, OID_SKI.len() + 2 + 2 + key_id.len());
    out.extend_from_slice(OID_SKI);
    header(out, OCTET_STRING, 2 + key_id.len());
    tlv(out, OCTET_STRING, key_id);
}

/// A positive INTEGER from big-endian bytes, minimally encoded.
fn write_serial(out: &mut Vec<u8>, serial: &[u8]) {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    let digits = &serial[start..];
    match digits.first() {
        None => out.extend_from_slice(&[INTEGER, 1, 0]),
        Some(first) if *first >= 0x80 => {
            header(out, INTEGER, digits.len() + 1);
            out.push(0);
            out.extend_from_slice(digits);
        }
        Some(_) => tlv(out, INTEGER, digits),
    }
}

/// UTCTime for years 1950–2049, GeneralizedTime otherwise (RFC 5280 §4.1.2.5). Returns the
/// bytes written.
fn write_time(out: &mut [u8], at: time::OffsetDateTime) -> usize {
    let year = at.year();
    let utc = (1950..2050).contains(&year);
    let mut digits = [0u8; 15];
    let mut n = 0;
    let mut push = |value: u32, width: u32| {
        for place in (0..width).rev() {
            digits[n] = b'0' + u8::try_from(value / 10u32.pow(place) % 10).unwrap_or(0);
            n += 1;
        }
    };
    let year = u32::try_from(year).unwrap_or(0);
    if utc {
        push(year % 100, 2);
    } else {
        push(year, 4);
    }
    push(u32::from(u8::from(at.month())), 2);
    push(u32::from(at.day()), 2);
    push(u32::from(at.hour()), 2);
    push(u32::from(at.minute()), 2);
    push(u32::from(at.second()), 2);
    out[0] = if utc { UTC_TIME } else { GENERALIZED_TIME };
    out[1] = u8::try_from(n + 1).unwrap_or(0);
    out[2..2 + n].copy_from_slice(&digits[..n]);
    out[2 + n] = b'Z';
    n + 3
}

/// Length of a TLV whose contents are `content_len` bytes long.
fn len_of(content_len: usize) -> usize {
    1 + length_octets(content_len) + content_len
}

fn length_octets(len: usize) -> usize {
    match len {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 4,
    }
}

/// Writes a tag and a DER length.
fn header(out: &mut Vec<u8>, tag: u8, len: usize) {
    let (bytes, written) = header_bytes(tag, len);
    out.extend_from_slice(&bytes[..written]);
}

/// A tag and a DER length, and how many of the bytes they take.
fn header_bytes(tag: u8, len: usize) -> ([u8; 5], usize) {
    let mut bytes = [0u8; 5];
    bytes[0] = tag;
    let be = len.to_be_bytes();
    match length_octets(len) {
        1 => {
            bytes[1] = be[be.len() - 1];
            (bytes, 2)
        }
        octets => {
            let count = octets - 1;
            bytes[1] = 0x80 | u8::try_from(count).unwrap_or(0);
            bytes[2..2 + count].copy_from_slice(&be[be.len() - count..]);
            (bytes, 1 + octets)
        }
    }
}

fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    header(out, tag, content.len());
    out.extend_from_slice(content);
}

/// Room for a tag and a length below 65,536: the header of every value of a certificate.
const HEADER_ROOM: usize = 4;

/// Reserves room for a header at the end of `out`; returns where the contents start, for
/// [`close`].
fn open(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0; HEADER_ROOM]);
    out.len()
}

/// Makes everything written to `out` since [`open`] returned `contents` the contents of a `tag`
/// value: writes the header at the end of the room reserved before them and removes the room
/// it does not use (moving the contents back by as much: nothing for the long values, the TBS
/// and the certificate, whose headers take all four bytes).
fn close(out: &mut Vec<u8>, contents: usize, tag: u8) {
    let room = contents - HEADER_ROOM;
    let len = out.len() - contents;
    let (bytes, written) = header_bytes(tag, len);
    if written > HEADER_ROOM {
        // Contents of 64 KiB or more: not in a certificate this profile writes.
        out.splice(room..contents, bytes[..written].iter().copied());
        return;
    }
    let start = contents - written;
    out[start..contents].copy_from_slice(&bytes[..written]);
    out.drain(room..start);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::profile::SERIAL_LEN;
    use meshca_provider::{LeafKey, SpiffeId, TrustDomain, VerifiedCsr};
    use rcgen::{Issuer, KeyPair, PublicKeyData};
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn issuer(key_type: KeyType) -> (Issuer<'static, KeyPair>, LeafTemplate) {
        let key = LeafKey::generate(key_type).unwrap();
        let signer = key.signing_key().unwrap();
        let params = profile::root_params(
            &crate::RootOptions {
                key_type,
                ..Default::default()
            },
            key.public_key(),
            SystemTime::now(),
        )
        .unwrap();
        let ca = params.self_signed(&signer).unwrap();
        let (_, parsed) = X509Certificate::from_der(ca.der()).unwrap();
        let ski = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        let template = LeafTemplate::new(key_type, parsed.subject().as_raw(), &ski);
        let issuer = Issuer::from_ca_cert_der(ca.der(), signer).unwrap();
        (issuer, template)
    }

    /// The TBS part of a DER certificate.
    fn tbs_of(der: &[u8]) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        cert.tbs_certificate.as_ref().to_vec()
    }

    fn specs() -> Vec<LeafSpec> {
        let td = TrustDomain::default();
        let id = SpiffeId::from_short("bookstore/bookstore-v2", &td).unwrap();
        let long = SpiffeId::from_short(&format!("ns/{}", "a".repeat(60)), &td).unwrap();
        let dns = |names: &[&str]| -> Vec<meshca_provider::DnsName> {
            names
                .iter()
                .map(|n| meshca_provider::DnsName::with_wildcard(n).unwrap())
                .collect()
        };
        let long_name = format!("{}.example", "a".repeat(60));
        vec![
            // The default workload profile: no subject, critical SAN with the SPIFFE ID alone.
            LeafSpec::workload(&id, &[], Duration::from_secs(24 * 3600)),
            LeafSpec::workload(
                &id,
                &dns(&["bookstore", "bookstore.svc"]),
                Duration::from_secs(600),
            ),
            LeafSpec::workload(&long, &[], Duration::from_secs(3600)),
            LeafSpec::server(dns(&["webhook.meshca.svc"]), Duration::from_secs(3600)),
            // A first name over 64 characters: no common name, critical SANs.
            LeafSpec::server(dns(&[&long_name, "b.example"]), Duration::from_secs(3600)),
            LeafSpec::server(dns(&["*.gateway.example"]), Duration::from_secs(3600)),
            // Ends after 2049: GeneralizedTime.
            LeafSpec::server(dns(&["far.example"]), Duration::from_secs(40 * 365 * 86400)),
        ]
    }

    #[test]
    fn the_template_writes_what_rcgen_writes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_763_900_000_321);
        let skew = Duration::from_secs(60);
        for ca_type in [KeyType::P256, KeyType::P384, KeyType::Rsa2048] {
            let (issuer, template) = issuer(ca_type);
            for leaf_type in [KeyType::P256, KeyType::P384, KeyType::Rsa2048] {
                let key = LeafKey::generate(leaf_type).unwrap();
                for spec in specs() {
                    for serial in [[0x11; SERIAL_LEN], {
                        let mut s = [0u8; SERIAL_LEN];
                        s[1] = 0x80;
                        s[15] = 1;
                        s
                    }] {
                        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
                        let mut params = profile::leaf_params(
                            &spec,
                            leaf_type,
                            key.public_key(),
                            now,
                            skew,
                            far,
                        )
                        .unwrap();
                        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
                        let reference = params.signed_by(&key, &issuer).unwrap();
                        let ours = template
                            .to_be_signed(&spec, (&key).into(), &serial, now, skew, far)
                            .unwrap();
                        assert_eq!(
                            ours,
                            tbs_of(reference.der()),
                            "CA {ca_type}, leaf {leaf_type}, {spec:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_callers_key_gets_the_certificate_a_generated_key_gets() {
        // The caller's CSR asks for someone else's identity, extra DNS names and a subject
        // (a server spec has CN=): none of it reaches the certificate, which is byte for byte
        // the one meshca writes for the same public key and the spec's names.
        let td = TrustDomain::default();
        let theirs = SpiffeId::from_short("kube-system/admin", &td).unwrap();
        let asks = [
            LeafSpec::workload(
                &theirs,
                &["evil.example".parse().unwrap()],
                Duration::from_secs(60),
            ),
            LeafSpec::server(
                vec!["evil.example".parse().unwrap()],
                Duration::from_secs(60),
            ),
        ];
        let now = SystemTime::now();
        let far = now + Duration::from_secs(86400 * 365);
        let (_, template) = issuer(KeyType::P256);
        for leaf_type in [KeyType::P256, KeyType::P384, KeyType::Rsa2048] {
            let key = LeafKey::generate(leaf_type).unwrap();
            for asked in &asks {
                let csr = VerifiedCsr::from_der(&key.csr_der(asked).unwrap()).unwrap();
                for spec in specs() {
                    let tbs = |key: SubjectKey<'_>| {
                        template
                            .to_be_signed(&spec, key, &[7; SERIAL_LEN], now, Duration::ZERO, far)
                            .unwrap()
                    };
                    assert_eq!(
                        tbs(SubjectKey::Caller(&csr)),
                        tbs(SubjectKey::Generated(&key)),
                        "leaf {leaf_type}, CSR {asked:?}, spec {spec:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn signed_leaves_verify_under_their_ca() {
        for ca_type in [KeyType::P256, KeyType::Rsa2048] {
            let (issuer, template) = issuer(ca_type);
            let key = LeafKey::generate(KeyType::P256).unwrap();
            let spec = specs().remove(1);
            let now = SystemTime::now();
            let der = template
                .sign(
                    &spec,
                    (&key).into(),
                    issuer.key(),
                    now,
                    Duration::from_secs(60),
                    now + Duration::from_secs(86400 * 365),
                )
                .unwrap();
            let (rest, leaf) = X509Certificate::from_der(&der).unwrap();
            assert!(rest.is_empty());
            let ca_spki = issuer.key().subject_public_key_info();
            let (_, ca_spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ca_spki).unwrap();
            leaf.verify_signature(Some(&ca_spki)).unwrap();
        }
    }

    #[test]
    fn the_template_refuses_what_the_profile_refuses() {
        let (_, template) = issuer(KeyType::P256);
        let key = LeafKey::generate(KeyType::P256).unwrap();
        let now = SystemTime::now();
        let far = now + Duration::from_secs(86400 * 365);
        let tbs = |spec: &LeafSpec| {
            template.to_be_signed(
                spec,
                (&key).into(),
                &[1; SERIAL_LEN],
                now,
                Duration::ZERO,
                far,
            )
        };
        let nameless = LeafSpec::server(vec![], Duration::from_secs(60));
        assert!(matches!(
            tbs(&nameless),
            Err(AuthorityError::InvalidName { .. })
        ));
        let forever = LeafSpec::server(
            vec!["a.example".parse().unwrap()],
            Duration::from_secs(u64::MAX),
        );
        assert!(matches!(
            tbs(&forever),
            Err(AuthorityError::InvalidValidity { .. })
        ));
    }

    #[test]
    fn lengths_are_minimal_der() {
        let mut out = Vec::new();
        header(&mut out, SEQUENCE, 0x7f);
        header(&mut out, SEQUENCE, 0x80);
        header(&mut out, SEQUENCE, 0x1234);
        assert_eq!(out, [0x30, 0x7f, 0x30, 0x81, 0x80, 0x30, 0x82, 0x12, 0x34]);
        let mut serial = Vec::new();
        write_serial(&mut serial, &[0, 0, 0x7f]);
        write_serial(&mut serial, &[0, 0x80]);
        assert_eq!(serial, [0x02, 0x01, 0x7f, 0x02, 0x02, 0x00, 0x80]);
        // Headers written in the room left before contents: short form, long form, and
        // contents too long for the room.
        for (len, head) in [
            (2, &[0x04, 0x02][..]),
            (0x80, &[0x04, 0x81, 0x80]),
            (0x1234, &[0x04, 0x82, 0x12, 0x34]),
            (0x12345, &[0x04, 0x83, 0x01, 0x23, 0x45]),
        ] {
            let mut out = vec![0xee];
            let contents = open(&mut out);
            out.extend(std::iter::repeat_n(0x55, len));
            close(&mut out, contents, OCTET_STRING);
            assert_eq!(out.len(), 1 + head.len() + len, "{len}");
            assert_eq!(out[0], 0xee);
            assert_eq!(&out[1..=head.len()], head, "{len}");
            assert!(out[1 + head.len()..].iter().all(|b| *b == 0x55), "{len}");
        }
    }
}
