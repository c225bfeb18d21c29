//! TLS for the SDS listeners (and the Istio CA listener, `crate::istio`): the server
//! certificate and the client-certificate check both follow their watch channels live, so a
//! renewal of the endpoint's certificate or a root rotation takes effect on the next handshake
//! without a restart.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use meshca_provider::TrustBundle;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::sync::watch;
use tracing::{info, warn};

use super::source::ServedCertificate;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The SDS endpoint's certificate and key were refused by rustls.
    #[error("the SDS server certificate cannot be used: {reason}")]
    ServerCertificate {
        /// rustls' reason.
        reason: String,
    },
    /// No root of the trust bundle is usable to verify clients.
    #[error("the trust bundle cannot verify SDS clients: {reason}")]
    TrustBundle {
        /// rustls' reason.
        reason: String,
    },
}

/// Whether a TLS client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// Every client presents a certificate chaining to the trust bundle (SDS with mTLS).
    Required,
    /// A client may present one (verified like a required one) or none, and authenticate
    /// otherwise, in the call (the Istio CA API: a token).
    Optional,
}

/// A rustls server configuration verifying client certificates (`client_auth`) against the
/// live trust bundle, presenting the live server certificate, speaking HTTP/2 only. `listener`
/// names the endpoint in logs (`SDS`, `Istio CA`).
pub(crate) fn server_config(
    listener: &'static str,
    certificate: watch::Receiver<Arc<ServedCertificate>>,
    bundle: watch::Receiver<Arc<TrustBundle>>,
    client_auth: ClientAuth,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = LiveClientVerifier::new(listener, bundle, provider.clone(), client_auth)?;
    let resolver = LiveServerCertificate::new(listener, certificate, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::ServerCertificate {
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Presents the newest certificate from the source's receiver.
struct LiveServerCertificate {
    listener: &'static str,
    provider: Arc<CryptoProvider>,
    state: Mutex<(watch::Receiver<Arc<ServedCertificate>>, Arc<CertifiedKey>)>,
}

impl LiveServerCertificate {
    fn new(
        listener: &'static str,
        mut receiver: watch::Receiver<Arc<ServedCertificate>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let current = certified_key(&receiver.borrow_and_update(), &provider)?;
        Ok(Self {
            listener,
            provider,
            state: Mutex::new((receiver, current)),
        })
    }
}

impl ResolvesServerCert for LiveServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = lock(&self.state);
        let (receiver, current) = &mut *state;
        if receiver.has_changed().unwrap_or(false) {
            let served = receiver.borrow_and_update().clone();
            match certified_key(&served, &self.provider) {
                Ok(key) => {
                    info!(serial = %served.info.serial_hex(), listener = self.listener, "endpoint now presents a renewed certificate");
                    *current = key;
                }
                // Keep presenting the last good certificate.
                Err(e) => {
                    warn!(error = %e, listener = self.listener, "renewed server certificate refused; keeping the previous one")
                }
            }
        }
        Some(current.clone())
    }
}

impl fmt::Debug for LiveServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveServerCertificate")
    }
}

fn certified_key(
    served: &ServedCertificate,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = PrivateKeyDer::Pkcs8(served.key.pkcs8_der().clone_key());
    CertifiedKey::from_der(served.chain.certificates().to_vec(), key, provider)
        .map(Arc::new)
        .map_err(|e| TlsError::ServerCertificate {
            reason: e.to_string(),
        })
}

/// The bundle receiver and the verifier built from the bundle it last showed.
type VerifierState = (
    watch::Receiver<Arc<TrustBundle>>,
    Arc<dyn ClientCertVerifier>,
);

/// Verifies client certificates against whatever the trust bundle holds at handshake time.
struct LiveClientVerifier {
    listener: &'static str,
    provider: Arc<CryptoProvider>,
    client_auth: ClientAuth,
    state: Mutex<VerifierState>,
}

impl LiveClientVerifier {
    fn new(
        listener: &'static str,
        mut bundle: watch::Receiver<Arc<TrustBundle>>,
        provider: Arc<CryptoProvider>,
        client_auth: ClientAuth,
    ) -> Result<Self, TlsError> {
        let current = webpki_verifier(&bundle.borrow_and_update(), &provider)?;
        Ok(Self {
            listener,
            provider,
            client_auth,
            state: Mutex::new((bundle, current)),
        })
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        let mut state = lock(&self.state);
        let (receiver, current) = &mut *state;
        if receiver.has_changed().unwrap_or(false) {
            let bundle = receiver.borrow_and_update().clone();
            match webpki_verifier(&bundle, &self.provider) {
                Ok(verifier) => {
                    info!(roots = ?bundle.fingerprints(), listener = self.listener, "client verification follows the new trust bundle");
                    *current = verifier;
                }
                Err(e) => {
                    warn!(error = %e, listener = self.listener, "new trust bundle unusable for verifying clients; keeping the previous one")
                }
            }
        }
        current.clone()
    }
}

/// rustls' WebPKI client verifier over `bundle`'s roots: what the SDS and Istio CA listeners
/// verify client certificates with (rebuilt when the bundle changes), public so that a
/// benchmark's raw TLS floor verifies clients the same way.
pub fn webpki_verifier(
    bundle: &TrustBundle,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(bundle.roots().iter().cloned());
    if added == 0 {
        return Err(TlsError::TrustBundle {
            reason: "it holds no usable root certificate".to_owned(),
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::TrustBundle {
            reason: e.to_string(),
        })
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.client_auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The roots change at run time and this must borrow from `self`; clients (Envoy
        // included) send their configured certificate without hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl fmt::Debug for LiveClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveClientVerifier")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each holder replaces the state in one assignment; a panic cannot leave it half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
