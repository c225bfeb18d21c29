//! A fake `CertificateProvider` for the cache's tests on paused time: it signs real
//! certificates with a [`TestCa`] stamped with the virtual clock, reports every `issue` call on
//! a channel, and can be told to fail, panic, be slow, or return a chain that is wrong in one
//! way, so that validation has something to refuse.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshca::time::TokioClock;
use meshca_provider::{
    Capabilities, CertificateChain, CertificateProvider, Clock, CsrNames, IssueRequest, KeyType,
    LeafKey, LeafSpec, ProviderError, SpiffeId, SubjectKey, TrustBundle,
};
use rand::Rng;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::TestCa;

const HOUR: Duration = Duration::from_secs(3600);

/// How far the fake back-dates NotBefore (as Tresor does).
pub const BACKDATE: Duration = Duration::from_secs(60);

/// What the fake provider does on the next `issue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Good,
    ViaIntermediate,
    Fail,
    WrongSan,
    Expired,
    WrongKey,
    ForeignCa,
    ServerAuthOnly,
    /// A bug in the provider.
    Panic,
}

/// One `issue` call as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub identity: SpiffeId,
    pub at: SystemTime,
    pub mode: Mode,
}

pub struct FakeProvider {
    /// Signs good chains: from its root directly, or through its intermediate.
    pub ca: TestCa,
    /// Signs chains that do not verify against the bundle.
    pub foreign: TestCa,
    clock: TokioClock,
    mode: Mutex<Mode>,
    /// What `trust_bundle` returns (at first, `ca`'s root).
    pub bundle: Mutex<TrustBundle>,
    /// Virtual time each issue call takes.
    pub latency: Mutex<Duration>,
    /// How long reading the trust bundle takes.
    pub bundle_latency: Mutex<Duration>,
    issued: AtomicUsize,
    calls: mpsc::UnboundedSender<Call>,
    capabilities: Capabilities,
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider").finish_non_exhaustive()
    }
}

impl FakeProvider {
    /// A provider signing with a fresh test CA on `clock`, and the receiver of its calls.
    pub fn new(clock: TokioClock) -> (Arc<Self>, mpsc::UnboundedReceiver<Call>) {
        let ca = TestCa::new("test");
        let (calls, log) = mpsc::unbounded_channel();
        let provider = Arc::new(Self {
            bundle: Mutex::new(ca.bundle()),
            ca,
            foreign: TestCa::new("somebody else's"),
            clock,
            mode: Mutex::new(Mode::Good),
            latency: Mutex::new(Duration::ZERO),
            bundle_latency: Mutex::new(Duration::ZERO),
            issued: AtomicUsize::new(0),
            calls,
            capabilities: Capabilities {
                max_lifetime: None,
                key_types: vec![KeyType::P256, KeyType::P384],
                uri_sans: true,
                csr_names: CsrNames::Decided,
                signs_in_process: false,
            },
        });
        (provider, log)
    }

    /// What the next `issue` calls do.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// How many times `issue` was called.
    pub fn calls(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    fn sign(
        &self,
        spec: &LeafSpec,
        public: &impl PublicKeyData,
        issuer: &Issuer<'_, KeyPair>,
        not_before: SystemTime,
        not_after: SystemTime,
        mode: Mode,
    ) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        if let Some(cn) = &spec.common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        let uri = match (mode, &spec.spiffe_id) {
            (Mode::WrongSan, Some(_)) => {
                Some("spiffe://cluster.local/ns/evil/sa/impostor".to_owned())
            }
            (_, id) => id.as_ref().map(ToString::to_string),
        };
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        for name in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into().unwrap()));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if mode == Mode::ServerAuthOnly {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let mut serial: [u8; 16] = rand::rng().random();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.signed_by(public, issuer).unwrap().der().clone()
    }
}

#[async_trait::async_trait]
impl CertificateProvider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<CertificateChain, ProviderError> {
        let mode = *self.mode.lock().unwrap();
        let latency = *self.latency.lock().unwrap();
        let now = self.clock.now();
        self.issued.fetch_add(1, Ordering::SeqCst);
        let identity = request.spec.spiffe_id.clone().unwrap();
        let _ = self.calls.send(Call {
            identity,
            at: now,
            mode,
        });
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let spec = request.spec;
        let (not_before, not_after) = if mode == Mode::Expired {
            (now - 2 * HOUR, now - HOUR)
        } else {
            (now - BACKDATE, now + spec.lifetime)
        };
        let other_key = (mode == Mode::WrongKey).then(|| LeafKey::generate(KeyType::P256).unwrap());
        let SubjectKey::Generated(requested) = request.key else {
            panic!("the cache asks for certificates of keys it made");
        };
        let public = other_key.as_ref().unwrap_or(requested);
        let chain = match mode {
            Mode::Panic => panic!("the fake provider's own bug"),
            Mode::Fail => {
                return Err(ProviderError::Unavailable {
                    provider: "fake",
                    reason: "connection refused".to_owned(),
                });
            }
            Mode::ForeignCa => vec![self.sign(
                spec,
                public,
                self.foreign.root_issuer(),
                not_before,
                not_after,
                mode,
            )],
            Mode::ViaIntermediate => vec![
                self.sign(
                    spec,
                    public,
                    self.ca.intermediate_issuer(),
                    not_before,
                    not_after,
                    mode,
                ),
                self.ca.intermediate().clone(),
            ],
            _ => vec![self.sign(
                spec,
                public,
                self.ca.root_issuer(),
                not_before,
                not_after,
                mode,
            )],
        };
        Ok(CertificateChain::new(chain).unwrap())
    }

    /// Unhealthy while issuance fails outright ([`Mode::Fail`], the backend down); healthy in
    /// every other mode, even those whose chains are refused (a backend that answers but is
    /// misconfigured).
    async fn check_health(&self) -> Result<(), ProviderError> {
        if *self.mode.lock().unwrap() == Mode::Fail {
            return Err(ProviderError::Unavailable {
                provider: "fake",
                reason: "connection refused".to_owned(),
            });
        }
        Ok(())
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError> {
        let latency = *self.bundle_latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(self.bundle.lock().unwrap().clone())
    }
}
