//! The floor: the cryptographic work of signing a caller's CSR, with ring and nothing else.
//!
//! Per certificate: verify the CSR's ECDSA P-256 signature over its `certificationRequestInfo`
//! (ring), write the leaf's to-be-signed DER by hand in Tresor's profile (serial, validity,
//! empty subject, the CSR's public key, AKI, critical SAN with the caller's SPIFFE ID, KU, EKU,
//! SKI by RFC 7093 method 1, basicConstraints), sign it with the CA's P-256 key (ring) and
//! wrap the certificate. The CSRs are taken apart before the clock starts: what is timed is the
//! crypto and the DER, not a parser, so the floor is as fast as such a signer can be.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use meshca_provider::x509::certificates_from_pem;
use meshca_provider::{LeafKey, SpiffeId};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// One caller's CSR, taken apart.
pub(crate) struct FloorCsr {
    /// The DER `certificationRequestInfo`: what the CSR's signature covers.
    info: Vec<u8>,
    signature: Vec<u8>,
    /// The raw subject public key (the BIT STRING's contents).
    public_key: Vec<u8>,
    /// The DER SubjectPublicKeyInfo, copied into the leaf.
    spki: Vec<u8>,
    /// The caller's SPIFFE ID: the leaf's only name.
    uri: String,
}

impl FloorCsr {
    pub(crate) fn new(der: &[u8], identity: &SpiffeId) -> Self {
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der).unwrap();
        let info = &csr.certification_request_info;
        Self {
            info: info.raw.to_vec(),
            signature: csr.signature_value.data.to_vec(),
            public_key: info.subject_pki.subject_public_key.data.to_vec(),
            spki: info.subject_pki.raw.to_vec(),
            uri: identity.as_uri().to_owned(),
        }
    }
}

/// The CA the floor signs with: the same key and name as the one meshca serves with.
pub(crate) struct Floor {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// The CA certificate's subject Name, DER.
    issuer: Vec<u8>,
    /// The whole authorityKeyIdentifier extension.
    authority_key_id: Vec<u8>,
}

const SEQUENCE: u8 = 0x30;
/// ecdsa-with-SHA256.
const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
/// keyUsage (critical): digitalSignature.
const KEY_USAGE: &[u8] = &[
    0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x07, 0x80,
];
/// extKeyUsage: serverAuth, clientAuth.
const EXTENDED_KEY_USAGE: &[u8] = &[
    0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25, 0x04, 0x16, 0x30, 0x14, 0x06, 0x08, 0x2b, 0x06, 0x01,
    0x05, 0x05, 0x07, 0x03, 0x01, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];
/// basicConstraints (critical): CA:FALSE.
const BASIC_CONSTRAINTS: &[u8] = &[
    0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00,
];
/// The clock-skew allowance meshca back-dates NotBefore by, and its default lifetime.
const BACKDATE: Duration = Duration::from_secs(60);
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl Floor {
    /// The CA in a Tresor directory store (`ca.crt`, `private.key`).
    pub(crate) fn from_ca_dir(dir: &std::path::Path) -> Self {
        let certificate_pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        let certificate = certificates_from_pem(&certificate_pem).unwrap().remove(0);
        let key_pem = std::fs::read_to_string(dir.join("private.key")).unwrap();
        let ca_key = LeafKey::from_pem(&key_pem).unwrap();
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            ca_key.pkcs8_der().secret_pkcs8_der(),
            &rng,
        )
        .unwrap();
        let (_, ca) = X509Certificate::from_der(certificate.as_ref()).unwrap();
        let ski = meshca_provider::CertificateInfo::parse(certificate.as_ref())
            .unwrap()
            .subject_key_id
            .expect("the CA certificate has a subject key identifier");
        let mut key_id = Vec::new();
        tlv(&mut key_id, 0x80, &ski);
        let mut value = Vec::new();
        tlv(&mut value, SEQUENCE, &key_id);
        let mut body = vec![0x06, 0x03, 0x55, 0x1d, 0x23];
        tlv(&mut body, 0x04, &value);
        let mut authority_key_id = Vec::new();
        tlv(&mut authority_key_id, SEQUENCE, &body);
        Self {
            key,
            rng,
            issuer: ca.tbs_certificate.subject.as_raw().to_vec(),
            authority_key_id,
        }
    }

    /// Signs one certificate for `csr`; returns its DER.
    pub(crate) fn sign(&self, csr: &FloorCsr) -> Vec<u8> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &csr.public_key)
            .verify(&csr.info, &csr.signature)
            .expect("the CSR's signature verifies");

        let mut serial = [0u8; 16];
        self.rng.fill(&mut serial).unwrap();
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        let now = SystemTime::now();
        let mut validity = Vec::with_capacity(34);
        utc_time(&mut validity, now - BACKDATE);
        utc_time(&mut validity, now + LIFETIME);

        let mut san = Vec::with_capacity(csr.uri.len() + 4);
        tlv(&mut san, 0x86, csr.uri.as_bytes());
        let mut san_value = Vec::with_capacity(san.len() + 4);
        tlv(&mut san_value, SEQUENCE, &san);
        let mut san_body = vec![0x06, 0x03, 0x55, 0x1d, 0x11, 0x01, 0x01, 0xff];
        tlv(&mut san_body, 0x04, &san_value);

        let digest = ring::digest::digest(&ring::digest::SHA256, &csr.public_key);
        let mut ski_value = Vec::with_capacity(22);
        tlv(&mut ski_value, 0x04, &digest.as_ref()[..20]);
        let mut ski_body = vec![0x06, 0x03, 0x55, 0x1d, 0x0e];
        tlv(&mut ski_body, 0x04, &ski_value);

        let mut extensions = Vec::with_capacity(320);
        extensions.extend_from_slice(&self.authority_key_id);
        tlv(&mut extensions, SEQUENCE, &san_body);
        extensions.extend_from_slice(KEY_USAGE);
        extensions.extend_from_slice(EXTENDED_KEY_USAGE);
        tlv(&mut extensions, SEQUENCE, &ski_body);
        extensions.extend_from_slice(BASIC_CONSTRAINTS);
        let mut extensions_seq = Vec::with_capacity(extensions.len() + 4);
        tlv(&mut extensions_seq, SEQUENCE, &extensions);

        let mut body = Vec::with_capacity(600);
        body.extend_from_slice(&[0xa0, 0x03, 0x02, 0x01, 0x02]);
        tlv(&mut body, 0x02, &serial);
        body.extend_from_slice(ECDSA_SHA256);
        body.extend_from_slice(&self.issuer);
        tlv(&mut body, SEQUENCE, &validity);
        body.extend_from_slice(&[SEQUENCE, 0]);
        body.extend_from_slice(&csr.spki);
        tlv(&mut body, 0xa3, &extensions_seq);
        let mut tbs = Vec::with_capacity(body.len() + 4);
        tlv(&mut tbs, SEQUENCE, &body);

        let signature = self.key.sign(&self.rng, &tbs).unwrap();
        let mut certificate = Vec::with_capacity(tbs.len() + 100);
        certificate.extend_from_slice(&tbs);
        certificate.extend_from_slice(ECDSA_SHA256);
        let mut bits = Vec::with_capacity(signature.as_ref().len() + 1);
        bits.push(0);
        bits.extend_from_slice(signature.as_ref());
        tlv(&mut certificate, 0x03, &bits);
        let mut der = Vec::with_capacity(certificate.len() + 4);
        tlv(&mut der, SEQUENCE, &certificate);
        der
    }

    /// Signs `count` certificates, the CSRs taken in turn, on `threads` threads; returns the
    /// wall time.
    pub(crate) fn run(&self, csrs: &[FloorCsr], count: usize, threads: usize) -> Duration {
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        std::hint::black_box(self.sign(&csrs[i % csrs.len()]));
                    }
                });
            }
        });
        started.elapsed()
    }
}

/// UTCTime `YYMMDDHHMMSSZ` (the floor's dates all fall before 2050).
fn utc_time(out: &mut Vec<u8>, at: SystemTime) {
    let at = time::OffsetDateTime::from(at);
    let text = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        at.year() % 100,
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    tlv(out, 0x17, text.as_bytes());
}

fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor's certificate is a real one: it parses, carries the caller's name and key, and
    /// its signature verifies under the CA's key — so the floor does the work it claims.
    #[test]
    fn the_floor_signs_a_certificate_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = meshca_tresor::DirectoryStore::new(dir.path().join("ca"));
        runtime
            .block_on(meshca_tresor::bootstrap(
                &store,
                &meshca_tresor::RootOptions::default(),
                &meshca_provider::SystemClock,
            ))
            .unwrap();
        let floor = Floor::from_ca_dir(&dir.path().join("ca"));
        let id = SpiffeId::from_short("bench/floor", &Default::default()).unwrap();
        let key = LeafKey::generate(meshca_provider::KeyType::P256).unwrap();
        let spec = meshca_provider::LeafSpec::workload(&id, &[], LIFETIME);
        let csr = FloorCsr::new(&key.csr_der(&spec).unwrap(), &id);
        let der = floor.sign(&csr);

        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca/ca.crt")).unwrap();
        let ca_der = certificates_from_pem(&ca_pem).unwrap().remove(0);
        let (_, ca) = X509Certificate::from_der(ca_der.as_ref()).unwrap();
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        let info = meshca_provider::CertificateInfo::parse(&der).unwrap();
        assert_eq!(info.uri_sans, [id.as_uri()]);
        assert_eq!(info.public_key, key.public_key());
        assert!(!info.is_ca);
    }
}
