//! The one test CA: an in-memory root and an intermediate (rcgen) that sign workload
//! certificates for SDS tests, sign CSRs as cert-manager's CA issuer does, and sign whatever a
//! fake provider is told to (directly from the root, through the intermediate, or wrongly).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshca::sds::ServedCertificate;
use meshca_provider::{CertificateChain, KeyType, LeafKey, SpiffeId, TrustBundle, TrustDomain};
use rcgen::{Issuer, KeyPair};
use rustls_pki_types::CertificateDer;

/// A SPIFFE ID in the default trust domain from `<ns>/<sa>`.
pub fn id(short: &str) -> SpiffeId {
    SpiffeId::from_short(short, &TrustDomain::default()).unwrap()
}

/// The cache key of `<ns>/<sa>` (default trust domain) for `purpose`.
pub fn cert_key(short: &str, purpose: meshca::cache::Purpose) -> meshca::cache::CertKey {
    meshca::cache::CertKey::new(id(short), purpose)
}

/// An in-memory two-level CA: a self-signed root and an intermediate that signs leaves. The
/// trust bundle is the root alone.
pub struct TestCa {
    root: CertificateDer<'static>,
    root_issuer: Issuer<'static, KeyPair>,
    intermediate: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// CN `<name> root` and `<name> intermediate`, both valid from an hour ago for ten years
    /// (so that tests on paused time can move days ahead).
    pub fn new(name: &str) -> Self {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params(&format!("{name} root"));
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let intermediate_key = KeyPair::generate().unwrap();
        let mut intermediate_params = ca_params(&format!("{name} intermediate"));
        intermediate_params.use_authority_key_identifier_extension = true;
        let intermediate = intermediate_params
            .signed_by(&intermediate_key, &root_issuer)
            .unwrap();
        Self {
            root: root.der().clone(),
            root_issuer,
            intermediate: intermediate.der().clone(),
            issuer: Issuer::new(intermediate_params, intermediate_key),
        }
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    pub fn intermediate(&self) -> &CertificateDer<'static> {
        &self.intermediate
    }

    pub fn root_pem(&self) -> String {
        meshca_provider::x509::certificates_to_pem(std::slice::from_ref(&self.root))
    }

    pub fn intermediate_pem(&self) -> String {
        meshca_provider::x509::certificates_to_pem(std::slice::from_ref(&self.intermediate))
    }

    /// The root's signing identity (for leaves signed directly by the root).
    pub fn root_issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.root_issuer
    }

    /// The intermediate's signing identity.
    pub fn intermediate_issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(vec![self.root.clone()])
    }

    /// A workload certificate: URI SAN the SPIFFE ID, both EKUs, and — unlike what meshca
    /// issues — CN and DNS SAN `<sa>.<ns>.<trust-domain>`, so that test clients can verify an
    /// SDS server holding one by hostname.
    pub fn issue(&self, identity: &SpiffeId, lifetime: Duration) -> ServedCertificate {
        let now = time::OffsetDateTime::now_utc();
        self.issue_between(identity, now - time::Duration::seconds(60), now + lifetime)
    }

    /// As [`issue`](Self::issue), a certificate that expired an hour ago (what a cache holds
    /// after its renewals failed for longer than a lifetime).
    pub fn issue_expired(&self, identity: &SpiffeId) -> ServedCertificate {
        let now = time::OffsetDateTime::now_utc();
        self.issue_between(
            identity,
            now - time::Duration::hours(2),
            now - time::Duration::hours(1),
        )
    }

    fn issue_between(
        &self,
        identity: &SpiffeId,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> ServedCertificate {
        let key = LeafKey::generate(KeyType::P256).unwrap();
        let host = format!(
            "{}.{}.{}",
            identity.service_account(),
            identity.namespace(),
            identity.trust_domain()
        );
        let mut params = rcgen::CertificateParams::new(vec![host.clone()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        params.subject_alt_names.push(rcgen::SanType::URI(
            identity.to_string().try_into().unwrap(),
        ));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        let chain =
            CertificateChain::new(vec![leaf.der().clone(), self.intermediate.clone()]).unwrap();
        ServedCertificate {
            info: chain.leaf_info().unwrap().into_summary(),
            chain,
            key,
            issued_by: "test-ca",
        }
    }

    /// Signs a PKCS#10 CSR (DER) with the intermediate for `lifetime` from now, as
    /// cert-manager's CA issuer does: subject and SANs from the CSR, not a CA, key usage
    /// digitalSignature, EKUs serverAuth + clientAuth. Returns the leaf as PEM.
    pub fn sign_csr(&self, csr_der: &[u8], lifetime: Duration) -> String {
        let mut csr =
            rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now;
        csr.params.not_after = now + lifetime;
        csr.params.is_ca = rcgen::IsCa::ExplicitNoCa;
        csr.params.use_authority_key_identifier_extension = true;
        csr.params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let digest =
            meshca_provider::x509::sha256(format!("{csr_der:?}{:?}", SystemTime::now()).as_bytes());
        let mut serial = digest[..16].to_vec();
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        csr.params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        csr.signed_by(&self.issuer).unwrap().pem()
    }

    /// Writes a certificate, its key (0600) and the root as PEM files, for Envoy bootstraps.
    pub fn write_files(&self, dir: &Path, stem: &str, identity: &SpiffeId) -> CertFiles {
        use std::os::unix::fs::PermissionsExt;
        let served = self.issue(identity, Duration::from_secs(3600));
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            ca: dir.join(format!("{stem}-ca.crt")),
        };
        std::fs::write(&files.cert, served.chain.to_pem()).unwrap();
        std::fs::write(&files.key, served.key.private_key_pem().as_bytes()).unwrap();
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&files.ca, self.bundle().to_pem()).unwrap();
        files
    }
}

/// The files [`TestCa::write_files`] wrote.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A positive 128-bit serial.
pub fn random_serial() -> rcgen::SerialNumber {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&serial)
}

fn ca_params(name: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params
}
