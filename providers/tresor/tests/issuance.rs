//! What Tresor issues: the certificate profile field by field, chains checked by two
//! independent verifiers (rustls-webpki and `openssl verify -x509_strict`), intermediates,
//! every key type, bring-your-own CAs, and the provider conformance suite.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_provider::conformance::{Conformance, run_all};
use meshca_provider::{
    Capabilities, CertificateChain, CertificateInfo, CertificateProvider, CsrNames, IssueRequest,
    KeyType, LeafKey, LeafSpec, ProviderError, SpiffeId, SubjectKey, SystemClock, TrustBundle,
    TrustDomain,
};
use meshca_test_support::csr::requested_sans;
use meshca_test_support::verify::{
    FixedClock, Purpose, openssl_verify, run_openssl, verify_everywhere, webpki_verify,
};
use meshca_tresor::{
    CaProblem, IntermediateOptions, RootOptions, SigningAuthority, StoreError, StoredCa, Tresor,
};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

const DAY: Duration = Duration::from_secs(24 * 3600);
const SKEW: Duration = Duration::from_secs(60);

fn root(key_type: KeyType) -> SigningAuthority {
    let mut options = RootOptions::default();
    options.key_type = key_type;
    SigningAuthority::generate_root(&options, &SystemClock).unwrap()
}

fn bookstore() -> SpiffeId {
    SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap()
}

fn workload_spec() -> LeafSpec {
    LeafSpec::workload(
        &bookstore(),
        &["bookstore.bookstore.svc".parse().unwrap()],
        DAY,
    )
}

fn issue(tresor: &Tresor, spec: &LeafSpec, key_type: KeyType) -> (LeafKey, CertificateChain) {
    let key = LeafKey::generate(key_type).unwrap();
    let chain = tresor.sign(spec, &key).unwrap();
    (key, chain)
}

/// RFC 7093 §2 method 1: the leftmost 160 bits of SHA-256 over the subjectPublicKey bits.
fn rfc7093_method_1(cert: &X509Certificate<'_>) -> Vec<u8> {
    let bits = &cert.public_key().subject_public_key.data;
    ring::digest::digest(&ring::digest::SHA256, bits).as_ref()[..20].to_vec()
}

fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

#[test]
fn a_workload_leaf_follows_the_profile_field_by_field() {
    let clock = FixedClock::now_whole_seconds();
    let ca = root(KeyType::P256);
    let ca_der = ca.certificate().clone();
    let tresor = Tresor::new(ca, Arc::new(clock));
    let (key, chain) = issue(&tresor, &workload_spec(), KeyType::P256);
    assert_eq!(
        chain.certificates().len(),
        1,
        "a root-signed leaf comes alone"
    );
    let (_, leaf) = X509Certificate::from_der(chain.leaf()).unwrap();
    let (_, issuer) = X509Certificate::from_der(&ca_der).unwrap();

    // Subject and names: an empty subject, so a critical SAN (RFC 5280 §4.2.1.6) with the
    // SPIFFE ID and the DNS name asked for, nothing derived from the identity.
    assert_eq!(leaf.subject().iter().count(), 0, "{}", leaf.subject());
    assert_eq!(leaf.issuer().as_raw(), issuer.subject().as_raw());
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "an empty subject needs a critical SAN");
    let info = CertificateInfo::parse(chain.leaf()).unwrap();
    assert_eq!(
        info.uri_sans,
        ["spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"]
    );
    assert_eq!(info.dns_sans, ["bookstore.bookstore.svc"]);
    assert_eq!(leaf.public_key().raw, key.public_key_spki().as_slice());

    // Usages.
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!eku.value.any && !eku.value.code_signing && eku.value.other.is_empty());
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(
        !ku.value.key_encipherment(),
        "keyEncipherment is for RSA keys only"
    );
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(bc.critical, "basicConstraints must be critical");
    assert!(!bc.value.ca);

    // Key identifiers: SKI by RFC 7093 method 1 (SHA-256 of the public key bits, leftmost 160
    // bits), AKI = the issuer's SKI.
    assert_eq!(ski(&leaf), Some(rfc7093_method_1(&leaf)));
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(Some(aki), ski(&issuer));

    // Serial: positive, at least 64 bits.
    let serial = leaf.raw_serial();
    assert!(serial[0] & 0x80 == 0, "serial must be positive");
    assert!(
        leaf.serial.bits() >= 64,
        "serial too short: {}",
        leaf.serial.bits()
    );
    assert!(serial.len() >= 8);

    // Validity: back-dated by the skew, lasting exactly the lifetime from now.
    let now = clock.0;
    assert_eq!(info.not_before, now - SKEW);
    assert_eq!(info.not_after, now + DAY);
    assert_eq!(info.lifetime(), DAY + SKEW);

    // Signed with the CA's algorithm.
    assert_eq!(
        leaf.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );
    verify_everywhere(&chain, &TrustBundle::new(vec![ca_der]), SystemTime::now());
}

#[test]
fn serials_differ_between_issuances_for_one_identity() {
    let tresor = Tresor::new(root(KeyType::P256), Arc::new(SystemClock));
    let spec = workload_spec();
    let serials: std::collections::HashSet<_> = (0..20)
        .map(|_| {
            let (_, chain) = issue(&tresor, &spec, KeyType::P256);
            chain.leaf_info().unwrap().serial
        })
        .collect();
    assert_eq!(serials.len(), 20);
}

#[test]
fn rsa_leaves_also_get_key_encipherment() {
    let tresor = Tresor::new(root(KeyType::P256), Arc::new(SystemClock));
    let (_, chain) = issue(&tresor, &workload_spec(), KeyType::Rsa2048);
    let (_, leaf) = X509Certificate::from_der(chain.leaf()).unwrap();
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert_eq!(
        CertificateInfo::parse(chain.leaf())
            .unwrap()
            .key_description,
        "RSA 2048"
    );
    let bundle = bundle_of(&tresor);
    verify_everywhere(&chain, &bundle, SystemTime::now());
}

#[test]
fn every_leaf_key_type_under_every_common_ca_key_type_verifies() {
    for ca_type in [KeyType::P256, KeyType::P384, KeyType::Rsa2048] {
        let tresor = Tresor::new(root(ca_type), Arc::new(SystemClock));
        let bundle = bundle_of(&tresor);
        for leaf_type in [KeyType::P256, KeyType::P384, KeyType::Rsa2048] {
            let (key, chain) = issue(&tresor, &workload_spec(), leaf_type);
            let info = chain.leaf_info().unwrap();
            assert_eq!(
                CertificateInfo::parse(chain.leaf())
                    .unwrap()
                    .key_description,
                match leaf_type {
                    KeyType::P256 => "ECDSA P-256",
                    KeyType::P384 => "ECDSA P-384",
                    _ => "RSA 2048",
                },
                "{ca_type} CA, {leaf_type} leaf"
            );
            assert_eq!(key.key_type(), leaf_type);
            assert!(!info.is_ca);
            verify_everywhere(&chain, &bundle, SystemTime::now());
        }
    }
}

#[test]
fn large_rsa_keys_are_signed_too() {
    let tresor = Tresor::new(root(KeyType::P256), Arc::new(SystemClock));
    let bundle = bundle_of(&tresor);
    for (key_type, description) in [
        (KeyType::Rsa3072, "RSA 3072"),
        (KeyType::Rsa4096, "RSA 4096"),
    ] {
        let (_, chain) = issue(&tresor, &workload_spec(), key_type);
        assert_eq!(chain.leaf_info().unwrap().key_description, description);
        verify_everywhere(&chain, &bundle, SystemTime::now());
    }
}

/// Issue #16: with trust domain cluster.local, namespace `svc` and service account
/// `payments.prod`, the old profile's CN and DNS SAN `<sa>.<ns>.<trust-domain>` was
/// `payments.prod.svc.cluster.local` — the DNS name of Service `payments` in namespace `prod`.
#[test]
fn a_workload_certificate_is_not_valid_for_any_hostname() {
    let tresor = Tresor::new(root(KeyType::P256), Arc::new(SystemClock));
    let id = SpiffeId::from_short("svc/payments.prod", &TrustDomain::default()).unwrap();
    let (_, chain) = issue(&tresor, &LeafSpec::workload(&id, &[], DAY), KeyType::P256);
    let info = chain.leaf_info().unwrap();
    assert_eq!(
        info.uri_sans,
        ["spiffe://cluster.local/ns/svc/sa/payments.prod"]
    );
    assert!(info.dns_sans.is_empty(), "{:?}", info.dns_sans);
    assert_eq!(
        info.common_name, None,
        "a common name is a hostname to OpenSSL"
    );
    let leaf = webpki::EndEntityCert::try_from(chain.leaf()).unwrap();
    let service =
        rustls_pki_types::ServerName::try_from("payments.prod.svc.cluster.local").unwrap();
    assert!(leaf.verify_is_valid_for_subject_name(&service).is_err());

    // OpenSSL, which falls back to the subject CN when there is no DNS SAN, agrees.
    let dir = tempfile::tempdir().unwrap();
    let (leaf_pem, root_pem) = (dir.path().join("leaf.pem"), dir.path().join("root.pem"));
    std::fs::write(&leaf_pem, chain.to_pem()).unwrap();
    std::fs::write(&root_pem, bundle_of(&tresor).to_pem()).unwrap();
    let output = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root_pem)
        .args(["-verify_hostname", "payments.prod.svc.cluster.local"])
        .arg(&leaf_pem)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "openssl accepted the workload certificate for a Service's name: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn ca_certificates_sign_certificates_and_crls_only() {
    let root = root(KeyType::P256);
    let intermediate = root
        .sign_intermediate(
            &IntermediateOptions::new("east", TrustDomain::default()),
            &SystemClock,
        )
        .unwrap();
    for der in [root.certificate(), intermediate.certificate()] {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(
            ku.value.key_cert_sign() && ku.value.crl_sign(),
            "{}",
            ku.value
        );
        assert!(
            !ku.value.digital_signature(),
            "SPIFFE X.509-SVID Appendix A: a CA's keyUsage is keyCertSign and cRLSign only \
             ({})",
            cert.subject()
        );
        assert_eq!(ku.value.flags, 0b110_0000, "{}", ku.value);
        assert_eq!(
            ski(&cert),
            Some(rfc7093_method_1(&cert)),
            "{}",
            cert.subject()
        );
    }
}

#[test]
fn server_certificates_carry_dns_names_only() {
    let tresor = Tresor::new(root(KeyType::P256), Arc::new(SystemClock));
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let chain = tresor
        .sign_server(
            vec!["meshca-webhook.meshca-system.svc".parse().unwrap()],
            Duration::from_secs(365 * 24 * 3600),
            &key,
        )
        .unwrap();
    let info = chain.leaf_info().unwrap();
    assert_eq!(
        info.common_name.as_deref(),
        Some("meshca-webhook.meshca-system.svc")
    );
    assert_eq!(info.dns_sans, ["meshca-webhook.meshca-system.svc"]);
    assert!(info.uri_sans.is_empty());
    verify_everywhere(&chain, &bundle_of(&tresor), SystemTime::now());
}

#[test]
fn a_leaf_under_an_intermediate_verifies_against_the_root() {
    let root = root(KeyType::P256);
    let root_der = root.certificate().clone();
    let mut options = IntermediateOptions::new("east", "east.example".parse().unwrap());
    options.key_type = KeyType::P384;
    let east = root.sign_intermediate(&options, &SystemClock).unwrap();

    // The intermediate's own profile.
    let (_, cert) = X509Certificate::from_der(east.certificate()).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
    assert_eq!(east.subject(), "O=meshca, CN=meshca intermediate east");
    let info = CertificateInfo::parse(east.certificate()).unwrap();
    assert_eq!(info.uri_sans, ["spiffe://east.example"]);
    assert!(info.not_after <= CertificateInfo::parse(&root_der).unwrap().not_after);
    assert_eq!(east.trust_bundle().roots(), std::slice::from_ref(&root_der));

    let tresor = Tresor::new(east, Arc::new(SystemClock));
    let (_, chain) = issue(&tresor, &workload_spec(), KeyType::P256);
    assert_eq!(
        chain.certificates().len(),
        2,
        "leaf + intermediate, no root"
    );
    assert_eq!(&chain.intermediates()[0], tresor.authority().certificate());
    let bundle = bundle_of(&tresor);
    assert_eq!(bundle.roots(), std::slice::from_ref(&root_der));
    verify_everywhere(&chain, &bundle, SystemTime::now());

    // Without the intermediate, neither verifier accepts the leaf.
    let bare = CertificateChain::new(vec![chain.leaf().clone()]).unwrap();
    assert!(webpki_verify(&bare, &bundle, SystemTime::now(), Purpose::Server).is_err());
    assert!(openssl_verify(&bare, &[root_der], Purpose::Server).is_err());
}

#[test]
fn two_clusters_under_one_root_trust_each_other() {
    let root = root(KeyType::P256);
    let east = root
        .sign_intermediate(
            &IntermediateOptions::new("east", TrustDomain::default()),
            &SystemClock,
        )
        .unwrap();
    let west = root
        .sign_intermediate(
            &IntermediateOptions::new("west", TrustDomain::default()),
            &SystemClock,
        )
        .unwrap();
    let east = Tresor::new(east, Arc::new(SystemClock));
    let west = Tresor::new(west, Arc::new(SystemClock));
    let (_, from_east) = issue(&east, &workload_spec(), KeyType::P256);
    // West's trust bundle accepts east's workload.
    verify_everywhere(&from_east, &bundle_of(&west), SystemTime::now());
}

/// A leaf that would outlive its CA is refused, naming the CA's end — not cut short to it.
#[test]
fn a_leaf_never_outlives_its_ca() {
    let mut options = RootOptions::default();
    options.lifetime = Duration::from_secs(3600);
    let short_root = SigningAuthority::generate_root(&options, &SystemClock).unwrap();
    let tresor = Tresor::new(short_root, Arc::new(SystemClock));
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let err = tresor.sign(&workload_spec(), &key).unwrap_err();
    assert!(matches!(err, ProviderError::Ca { .. }), "{err:?}");
    assert!(
        err.to_string().contains("after its CA") && err.to_string().contains("rotate the CA"),
        "{err}"
    );
    let mut fits = workload_spec();
    fits.lifetime = Duration::from_secs(1800);
    let (_, chain) = issue(&tresor, &fits, KeyType::P256);
    assert!(chain.leaf_info().unwrap().not_after <= tresor.authority().not_after());
}

#[test]
fn an_expired_ca_refuses_to_issue() {
    let mut options = RootOptions::default();
    options.lifetime = Duration::from_secs(3600);
    let tresor = Tresor::new(
        SigningAuthority::generate_root(&options, &SystemClock).unwrap(),
        Arc::new(FixedClock(SystemTime::now() + DAY)),
    );
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let err = tresor.sign(&workload_spec(), &key).unwrap_err();
    assert!(matches!(err, ProviderError::Ca { .. }), "{err:?}");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn replacing_the_authority_switches_issuance_and_trust() {
    let first = root(KeyType::P256);
    let second = root(KeyType::P256);
    let second_der = second.certificate().clone();
    let tresor = Tresor::new(first, Arc::new(SystemClock));
    let old = tresor.replace_authority(second);
    let (_, chain) = issue(&tresor, &workload_spec(), KeyType::P256);
    let bundle = bundle_of(&tresor);
    assert_eq!(bundle.roots(), [second_der]);
    assert!(webpki_verify(&chain, &bundle, SystemTime::now(), Purpose::Client).is_ok());
    assert!(
        webpki_verify(
            &chain,
            old.trust_bundle(),
            SystemTime::now(),
            Purpose::Client
        )
        .is_err()
    );
}

#[test]
fn import_accepts_a_root_and_an_intermediate_with_its_chain() {
    let now = SystemTime::now();
    let root = root(KeyType::P256);
    let stored = root.to_stored();
    let imported = StoredCa::import(stored.certificate_pem(), stored.key_pem(), now).unwrap();
    let authority = imported.authority(now).unwrap();
    assert_eq!(authority.certificate(), root.certificate());
    assert!(authority.is_root());

    let east = root
        .sign_intermediate(
            &IntermediateOptions::new("east", TrustDomain::default()),
            &SystemClock,
        )
        .unwrap();
    let stored = east.to_stored();
    // ca.crt of an intermediate: the intermediate, then the root.
    let certs = meshca_provider::x509::certificates_from_pem(stored.certificate_pem()).unwrap();
    assert_eq!(
        certs,
        [east.certificate().clone(), root.certificate().clone()]
    );
    let imported = StoredCa::import(stored.certificate_pem(), stored.key_pem(), now).unwrap();
    let authority = imported.authority(now).unwrap();
    assert!(!authority.is_root());
    assert_eq!(
        authority.trust_bundle().roots(),
        [root.certificate().clone()]
    );
    let tresor = Tresor::new(authority, Arc::new(SystemClock));
    let (_, chain) = issue(&tresor, &workload_spec(), KeyType::P256);
    verify_everywhere(&chain, &bundle_of(&tresor), SystemTime::now());
}

fn import_problem(certificate_pem: &str, key_pem: &str) -> CaProblem {
    match StoredCa::import(certificate_pem, key_pem, SystemTime::now()) {
        Err(StoreError::Invalid { problem, .. }) => problem,
        other => panic!("expected an invalid-material error, got {other:?}"),
    }
}

#[test]
fn import_refuses_broken_chains() {
    let root = root(KeyType::P256);
    let east = root
        .sign_intermediate(
            &IntermediateOptions::new("east", TrustDomain::default()),
            &SystemClock,
        )
        .unwrap();
    let intermediate_pem =
        meshca_provider::x509::certificates_to_pem(&[east.certificate().clone()]);
    let root_pem = meshca_provider::x509::certificates_to_pem(&[root.certificate().clone()]);
    let key = east.to_stored().key_pem().to_owned();

    // The intermediate alone: the chain must go up to the root.
    assert!(matches!(
        import_problem(&intermediate_pem, &key),
        CaProblem::NotRooted { .. }
    ));
    // Root first: the order is CA first, root last.
    assert!(matches!(
        import_problem(&format!("{root_pem}{intermediate_pem}"), &key),
        CaProblem::ChainBroken { .. } | CaProblem::KeyMismatch { .. }
    ));
    // An intermediate followed by a root that did not sign it.
    let other_root = self::root(KeyType::P256);
    let other_pem = meshca_provider::x509::certificates_to_pem(&[other_root.certificate().clone()]);
    let problem = import_problem(&format!("{intermediate_pem}{other_pem}"), &key);
    assert!(
        matches!(problem, CaProblem::ChainBroken { .. }),
        "{problem:?}"
    );
    assert!(
        problem.to_string().contains("meshca intermediate east"),
        "{problem}"
    );
    // A key in a format meshca does not read gets a conversion hint.
    let sec1 = key.replace("PRIVATE KEY", "EC PRIVATE KEY");
    let problem = import_problem(&format!("{intermediate_pem}{root_pem}"), &sec1);
    assert!(problem.concerns_key());
    assert!(
        problem.to_string().contains("openssl pkcs8 -topk8"),
        "{problem}"
    );
}

/// Makes a P-256 CA with the openssl command; returns (certificate path, key path).
fn openssl_ca(
    dir: &std::path::Path,
    extra_args: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("ca.pem"), dir.join("key.pem"));
    run_openssl(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/C=US/O=Example Org/CN=Example Root CA",
            ])
            .args(extra_args)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )
    .unwrap();
    (cert, key)
}

#[test]
fn import_accepts_a_ca_made_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_ca(
        dir.path(),
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    );
    let stored = StoredCa::read_files(&cert, &key).unwrap();
    let authority = stored.authority(SystemTime::now()).unwrap();
    assert!(authority.is_root());
    assert_eq!(
        authority.subject(),
        "C=US, O=Example Org, CN=Example Root CA"
    );
    let tresor = Tresor::new(authority, Arc::new(SystemClock));
    let (_, chain) = issue(&tresor, &workload_spec(), KeyType::P256);
    // webpki matches issuer and subject names byte for byte.
    verify_everywhere(&chain, &bundle_of(&tresor), SystemTime::now());
}

#[test]
fn import_refuses_a_ca_without_key_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_ca(dir.path(), &[]);
    let err = StoredCa::read_files(&cert, &key)
        .unwrap()
        .authority(SystemTime::now())
        .unwrap_err();
    let StoreError::Invalid { location, problem } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(location, &cert.display().to_string());
    assert!(
        matches!(problem, CaProblem::CannotSign { .. }),
        "{problem:?}"
    );
    assert!(err.to_string().contains("keyCertSign"), "{err}");
}

#[tokio::test]
async fn tresor_passes_the_conformance_suite() {
    let td: TrustDomain = "conformance.example".parse().unwrap();
    let tresor = Tresor::new(root(KeyType::P256), Arc::new(SystemClock));
    assert_eq!(tresor.name(), "tresor");
    let caps = tresor.capabilities();
    assert!(caps.csr_names == CsrNames::Decided && caps.uri_sans && caps.max_lifetime.is_none());
    assert_eq!(caps.key_types, KeyType::ALL);
    run_all(&tresor, &td).await;

    let intermediate = root(KeyType::P384)
        .sign_intermediate(&IntermediateOptions::new("east", td.clone()), &SystemClock)
        .unwrap();
    run_all(&Tresor::new(intermediate, Arc::new(SystemClock)), &td).await;
}

#[tokio::test]
async fn the_conformance_suite_runs_against_the_given_clock() {
    let clock = Arc::new(FixedClock(
        SystemTime::now() + Duration::from_secs(30 * 24 * 3600),
    ));
    let tresor = Tresor::new(root(KeyType::P256), clock.clone());
    let mut suite = Conformance::new(TrustDomain::default());
    suite.clock = clock;
    suite.key_types = vec![KeyType::P256];
    assert_eq!(suite.check(&tresor).await, []);
}

/// A provider that gets things wrong on purpose, to show the suite notices.
#[derive(Debug)]
struct Broken {
    inner: Tresor,
    capabilities: Capabilities,
    adds_names: bool,
    include_root: bool,
    for_callers: CallerFault,
}

/// What a broken provider gets wrong about callers' keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallerFault {
    /// Nothing.
    None,
    /// Certifies the URI and DNS names the caller's CSR asks for instead of the spec's.
    CopiesCsrNames,
    /// Certifies a key of its own instead of the caller's.
    OwnKey,
}

#[async_trait::async_trait]
impl CertificateProvider for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<CertificateChain, ProviderError> {
        let mut spec = request.spec.clone();
        if self.adds_names {
            // As a Vault role that adds names of its own would.
            spec.dns_names.push("added.example".parse().unwrap());
            spec.common_name = Some("added.example".into());
        }
        let own_key = LeafKey::generate(request.key_type()).unwrap();
        let mut key = request.key;
        if let SubjectKey::Caller(csr) = key {
            match self.for_callers {
                CallerFault::None => {}
                CallerFault::CopiesCsrNames => {
                    let (uris, dns) = requested_sans(csr.der());
                    spec.spiffe_id = uris.first().map(|uri| uri.parse().unwrap());
                    spec.dns_names = dns.iter().map(|n| n.parse().unwrap()).collect();
                }
                CallerFault::OwnKey => key = SubjectKey::Generated(&own_key),
            }
        }
        let chain = self.inner.issue(&IssueRequest { spec: &spec, key }).await?;
        if !self.include_root {
            return Ok(chain);
        }
        let mut certs = chain.certificates().to_vec();
        certs.push(self.inner.authority().root().clone());
        Ok(CertificateChain::new(certs).unwrap())
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError> {
        self.inner.trust_bundle().await
    }
}

#[tokio::test]
async fn the_conformance_suite_catches_broken_providers() {
    let broken = |adds_names, include_root, key_types: Vec<KeyType>| Broken {
        for_callers: CallerFault::None,
        inner: Tresor::new(root(KeyType::P256), Arc::new(SystemClock)),
        capabilities: Capabilities {
            max_lifetime: None,
            key_types,
            uri_sans: true,
            csr_names: CsrNames::Decided,
            signs_in_process: false,
        },
        adds_names,
        include_root,
    };
    let mut suite = Conformance::new(TrustDomain::default());
    suite.key_types = vec![KeyType::P256];
    let checks = |failures: Vec<meshca_provider::conformance::Failure>| {
        failures.into_iter().map(|f| f.check).collect::<Vec<_>>()
    };

    let failures = checks(
        suite
            .check(&broken(true, false, KeyType::ALL.to_vec()))
            .await,
    );
    assert!(
        failures.contains(&"p256 workload: DNS SANs".to_owned()),
        "{failures:?}"
    );
    assert!(
        failures.contains(&"p256 workload: common name".to_owned()),
        "{failures:?}"
    );

    let failures = checks(
        suite
            .check(&broken(false, true, KeyType::ALL.to_vec()))
            .await,
    );
    assert!(
        failures.contains(&"p256 workload: chain excludes the root".to_owned()),
        "{failures:?}"
    );

    // Claims P-256 only, yet would issue P-384: the suite asks as the daemon's pipeline does
    // (capabilities first), so the provider is never asked and the declaration is what counts.
    let failures = checks(
        suite
            .check(&broken(false, false, vec![KeyType::P256]))
            .await,
    );
    assert!(
        !failures.iter().any(|f| f.starts_with("unsupported p384")),
        "{failures:?}"
    );

    // A caller's key: the suite asks for one, and with a CSR asking for other names.
    for (fault, want) in [
        (
            CallerFault::CopiesCsrNames,
            [
                "p256 caller-key CSR asking for other names: URI SANs",
                "p256 caller-key CSR asking for other names: DNS SANs",
            ],
        ),
        (
            CallerFault::OwnKey,
            [
                "p256 caller-key workload: public key",
                "p256 caller-key CSR asking for other names: public key",
            ],
        ),
    ] {
        let mut provider = broken(false, false, vec![KeyType::P256]);
        provider.for_callers = fault;
        let failures = checks(suite.check(&provider).await);
        for want in want {
            assert!(
                failures.contains(&want.to_owned()),
                "{fault:?}: {failures:?}"
            );
        }
        assert!(
            !failures.iter().any(|f| f.starts_with("p256 workload")),
            "{fault:?}: {failures:?}"
        );
    }
    // Names added by the backend show in callers' certificates too, subject included.
    let failures = checks(suite.check(&broken(true, false, vec![KeyType::P256])).await);
    for want in [
        "p256 caller-key workload: DNS SANs",
        "p256 caller-key CSR asking for other names: subject",
    ] {
        assert!(failures.contains(&want.to_owned()), "{failures:?}");
    }

    let panic = tokio::spawn(async move {
        let provider = broken(true, false, KeyType::ALL.to_vec());
        run_all(&provider, &TrustDomain::default()).await;
    })
    .await
    .unwrap_err()
    .into_panic();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("provider `broken` failed"), "{message}");
    assert!(message.contains("DNS SANs"), "{message}");
}

/// The provider's trust bundle, fetched synchronously (Tresor answers without awaiting).
fn bundle_of(tresor: &Tresor) -> TrustBundle {
    tresor.authority().trust_bundle().clone()
}
