//! The pipeline's stages against a fake provider that counts its calls and records what it was
//! asked: what a stage refuses never reaches the backend, and what comes back is checked
//! against what was asked — a caller's key included.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshca_provider::{
    Capabilities, CertificateChain, CertificateProvider, CsrError, CsrNames, DnsName, IssueRequest,
    KeyType, LeafKey, LeafSpec, ProviderError, SpiffeId, SubjectKey, SystemClock, TrustBundle,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

/// A self-signed CA.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap().der().clone();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }
}

/// Signs exactly what it is asked (the spec's names, the request's key) with `signer`, and
/// reports `bundle` as its trust bundle.
#[derive(Debug)]
struct Fake {
    signer: Arc<CaHandle>,
    bundle: TrustBundle,
    capabilities: Capabilities,
    calls: AtomicUsize,
    /// The specs it was asked for.
    asked: Mutex<Vec<LeafSpec>>,
    /// Certify another key than the requested one (a broken backend).
    wrong_key: AtomicBool,
    /// Never answer.
    hang: AtomicBool,
}

struct CaHandle(Ca);

impl std::fmt::Debug for CaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaHandle")
    }
}

impl Fake {
    fn new(csr_names: CsrNames) -> Self {
        let ca = Ca::new("fake root");
        let bundle = TrustBundle::new(vec![ca.cert.clone()]);
        Self::signing_with(ca, bundle, csr_names)
    }

    fn signing_with(ca: Ca, bundle: TrustBundle, csr_names: CsrNames) -> Self {
        Self {
            signer: Arc::new(CaHandle(ca)),
            bundle,
            capabilities: Capabilities {
                max_lifetime: None,
                key_types: vec![KeyType::P256, KeyType::P384],
                uri_sans: true,
                csr_names,
                signs_in_process: false,
            },
            calls: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
            wrong_key: AtomicBool::new(false),
            hang: AtomicBool::new(false),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl CertificateProvider for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<CertificateChain, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.asked.lock().unwrap().push(request.spec.clone());
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let other = LeafKey::generate(KeyType::P256).unwrap();
        let spki = match request.key {
            _ if self.wrong_key.load(Ordering::SeqCst) => other.public_key_spki(),
            SubjectKey::Generated(key) => key.public_key_spki(),
            SubjectKey::Caller(csr) => csr.subject_public_key_info().to_vec(),
        };
        let public = rcgen::SubjectPublicKeyInfo::from_der(&spki).unwrap();
        let spec = request.spec;
        let mut params = CertificateParams::default();
        if let Some(id) = &spec.spiffe_id {
            params
                .subject_alt_names
                .push(SanType::URI(id.to_string().try_into().unwrap()));
        }
        for name in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into().unwrap()));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + spec.lifetime).into();
        let cert = params.signed_by(&public, &self.signer.0.issuer).unwrap();
        Ok(CertificateChain::new(vec![cert.der().clone()]).unwrap())
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError> {
        Ok(self.bundle.clone())
    }
}

fn pipeline(fake: &Arc<Fake>, settings: PipelineSettings) -> Pipeline {
    Pipeline::new(fake.clone(), settings, Arc::new(SystemClock))
}

fn id(short: &str) -> SpiffeId {
    SpiffeId::from_short(short, &Default::default()).unwrap()
}

fn dns(names: &[&str]) -> Vec<DnsName> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

/// A CSR for a new key of `key_type` asking for what `asked` names.
fn csr(key_type: KeyType, asked: &LeafSpec) -> (LeafKey, Vec<u8>) {
    let key = LeafKey::generate(key_type).unwrap();
    let der = key.csr_der(asked).unwrap();
    (key, der)
}

#[tokio::test]
async fn a_generated_key_is_certified_validated_and_returned() {
    let fake = Arc::new(Fake::new(CsrNames::Decided));
    let pipeline = pipeline(&fake, PipelineSettings::default());
    let spec = LeafSpec::workload(&id("a/b"), &[], HOUR);
    let issued = pipeline
        .issue(spec, KeySource::Generate(KeyType::P256))
        .await
        .unwrap();
    let key = issued.key.expect("meshca made the key");
    assert_eq!(issued.info.public_key, key.public_key());
    assert_eq!(issued.info.uri_sans, ["spiffe://cluster.local/ns/a/sa/b"]);
    assert_eq!(issued.issued_by, "fake");
    assert_eq!(fake.calls(), 1);
    let success = &pipeline.metrics().latency()[0];
    assert_eq!((success.result, success.count), (IssueResult::Success, 1));
}

#[tokio::test]
async fn a_csr_with_a_bad_signature_is_refused_and_the_provider_never_called() {
    let fake = Arc::new(Fake::new(CsrNames::Decided));
    let pipeline = pipeline(&fake, PipelineSettings::default());
    let spec = LeafSpec::workload(&id("a/b"), &[], HOUR);
    let (_, mut der) = csr(KeyType::P256, &spec);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let error = pipeline
        .issue(spec, KeySource::Csr(&der))
        .await
        .unwrap_err();
    assert!(
        matches!(error, IssueError::Csr(CsrError::BadSignature)),
        "{error}"
    );
    assert!(error.to_string().contains("does not verify"), "{error}");
    assert_eq!(fake.calls(), 0);
    assert_eq!(pipeline.metrics().failures(), 1);
}

#[tokio::test]
async fn an_unsupported_key_type_never_reaches_the_provider() {
    let fake = Arc::new(Fake::new(CsrNames::Decided));
    let pipeline = pipeline(&fake, PipelineSettings::default());
    let spec = LeafSpec::workload(&id("a/b"), &[], HOUR);
    // A key meshca would make, and a caller's key: neither is offered to the backend.
    let error = pipeline
        .issue(spec.clone(), KeySource::Generate(KeyType::Rsa2048))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            IssueError::Provider {
                source: ProviderError::Unsupported { .. },
                ..
            }
        ),
        "{error}"
    );
    let (_, der) = csr(KeyType::Rsa2048, &spec);
    let error = pipeline
        .issue(spec, KeySource::Csr(&der))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            IssueError::Provider {
                source: ProviderError::Unsupported { .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("rsa2048"), "{error}");
    assert_eq!(fake.calls(), 0);
}

#[tokio::test]
async fn a_csr_asking_for_other_names_gets_meshcas_names_or_is_refused() {
    let spec = LeafSpec::workload(&id("a/b"), &dns(&["b.example"]), HOUR);
    let theirs = LeafSpec::workload(
        &id("kube-system/admin"),
        &dns(&["b.example", "evil.example"]),
        HOUR,
    );
    let (key, der) = csr(KeyType::P256, &theirs);

    // A backend that takes meshca's names: the request carries them, whatever the CSR says.
    let decided = Arc::new(Fake::new(CsrNames::Decided));
    let issued = pipeline(&decided, PipelineSettings::default())
        .issue(spec.clone(), KeySource::Csr(&der))
        .await
        .unwrap();
    assert_eq!(*decided.asked.lock().unwrap(), std::slice::from_ref(&spec));
    assert_eq!(issued.info.uri_sans, ["spiffe://cluster.local/ns/a/sa/b"]);
    assert_eq!(issued.info.dns_sans, ["b.example"]);
    assert_eq!(issued.info.public_key, key.public_key());
    assert!(issued.key.is_none(), "meshca holds no caller's private key");

    // A backend that certifies what the CSR asks: refused before it is asked.
    let verbatim = Arc::new(Fake::new(CsrNames::FromCsr));
    let error = pipeline(&verbatim, PipelineSettings::default())
        .issue(spec, KeySource::Csr(&der))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            IssueError::Provider {
                source: ProviderError::Csr(CsrError::NamesDiffer { .. }),
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("kube-system/sa/admin"),
        "{error}"
    );
    assert_eq!(verbatim.calls(), 0);
}

#[tokio::test]
async fn a_caller_keys_certificate_is_validated_against_the_csr_key() {
    let fake = Arc::new(Fake::new(CsrNames::Decided));
    let pipeline = pipeline(&fake, PipelineSettings::default());
    let spec = LeafSpec::workload(&id("a/b"), &[], HOUR);
    let (_, der) = csr(KeyType::P384, &spec);
    fake.wrong_key.store(true, Ordering::SeqCst);
    let error = pipeline
        .issue(spec, KeySource::Csr(&der))
        .await
        .unwrap_err();
    match &error {
        IssueError::Invalid { reason, .. } => {
            assert!(reason.contains("different public key"), "{reason}");
        }
        other => panic!("expected a rejection, got {other}"),
    }
    assert_eq!(fake.calls(), 1);
    assert_eq!(
        (pipeline.metrics().failures(), pipeline.metrics().rejected()),
        (1, 1)
    );
}

#[tokio::test]
async fn a_chain_to_an_extra_root_verifies_only_with_that_root_trusted() {
    // The backend signs under a CA its own bundle does not hold (a root rotated outside
    // meshca): only extraTrustedRoots makes its chains acceptable.
    let elsewhere = Ca::new("rotated outside meshca");
    let extra = TrustBundle::new(vec![elsewhere.cert.clone()]);
    let own = TrustBundle::new(vec![Ca::new("the backend's bundle").cert]);
    let fake = Arc::new(Fake::signing_with(
        elsewhere,
        own.clone(),
        CsrNames::Decided,
    ));
    let spec = LeafSpec::workload(&id("a/b"), &[], HOUR);

    let strict = pipeline(&fake, PipelineSettings::default());
    let error = strict
        .issue(spec.clone(), KeySource::Generate(KeyType::P256))
        .await
        .unwrap_err();
    assert!(matches!(error, IssueError::Invalid { .. }), "{error}");

    let trusting = pipeline(
        &fake,
        PipelineSettings {
            extra_roots: extra.clone(),
            ..PipelineSettings::default()
        },
    );
    trusting
        .issue(spec, KeySource::Generate(KeyType::P256))
        .await
        .unwrap();
    let bundle = trusting.current_trust_bundle();
    assert_eq!(
        bundle.roots(),
        [own.roots()[0].clone(), extra.roots()[0].clone()]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_provider_times_out() {
    let fake = Arc::new(Fake::new(CsrNames::Decided));
    fake.hang.store(true, Ordering::SeqCst);
    let pipeline = pipeline(
        &fake,
        PipelineSettings {
            issue_timeout: Duration::from_secs(5),
            ..PipelineSettings::default()
        },
    );
    let spec = LeafSpec::workload(&id("a/b"), &[], HOUR);
    let error = pipeline
        .issue(spec, KeySource::Generate(KeyType::P256))
        .await
        .unwrap_err();
    assert!(matches!(error, IssueError::Timeout { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("within 5s") && text.contains("renewal.issueTimeout"),
        "{text}"
    );
}

#[tokio::test]
async fn the_backend_is_asked_for_no_more_than_it_grants_and_policy_refusals_never_reach_it() {
    let mut capped = Fake::new(CsrNames::Decided);
    capped.capabilities.max_lifetime = Some(2 * HOUR);
    let fake = Arc::new(capped);
    let pipeline = pipeline(&fake, PipelineSettings::default());
    let issued = pipeline
        .issue(
            LeafSpec::workload(&id("a/b"), &[], 24 * HOUR),
            KeySource::Generate(KeyType::P256),
        )
        .await
        .unwrap();
    assert_eq!(fake.asked.lock().unwrap()[0].lifetime, 2 * HOUR);
    assert!(issued.info.lifetime() <= 2 * HOUR + Duration::from_secs(60));

    // Longer than the configured maximum: refused, not shortened, and nobody is asked.
    let error = pipeline
        .issue(
            LeafSpec::workload(&id("a/b"), &[], 3000 * HOUR),
            KeySource::Generate(KeyType::P256),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, IssueError::Lifetime(_)), "{error}");
    assert_eq!(fake.calls(), 1);
}
