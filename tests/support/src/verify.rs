//! Helpers shared by the integration tests: a fixed clock, two independent verifiers
//! (rustls-webpki and the `openssl verify` command), and a rustls server verifier that
//! authenticates a peer by its SPIFFE ID, as SPIFFE-aware TLS libraries do.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use meshca_provider::x509::certificates_to_pem;
use meshca_provider::{CertificateChain, CertificateInfo, Clock, TrustBundle};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A clock that always reads the same time.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub SystemTime);

impl FixedClock {
    /// The current time truncated to whole seconds, so validity fields compare exactly.
    pub fn now_whole_seconds() -> Self {
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        Self(SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()))
    }
}

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// Which extended key usage a verification asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Server,
    Client,
}

/// Verifies `chain` (leaf + intermediates) against `bundle` with rustls-webpki at `at`.
pub fn webpki_verify(
    chain: &CertificateChain,
    bundle: &TrustBundle,
    at: SystemTime,
    purpose: Purpose,
) -> Result<(), webpki::Error> {
    let anchors: Vec<_> = bundle
        .roots()
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let leaf = webpki::EndEntityCert::try_from(chain.leaf()).unwrap();
    let usage = match purpose {
        Purpose::Server => webpki::KeyUsage::server_auth(),
        Purpose::Client => webpki::KeyUsage::client_auth(),
    };
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        chain.intermediates(),
        UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap()),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

/// Runs `openssl verify -x509_strict -purpose … -CAfile root.pem [-untrusted chain.pem]
/// leaf.pem` at the current time. Panics if openssl is not installed.
pub fn openssl_verify(
    chain: &CertificateChain,
    roots: &[CertificateDer<'static>],
    purpose: Purpose,
) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, certs: &[CertificateDer<'_>]| {
        let path = dir.path().join(name);
        std::fs::write(&path, certificates_to_pem(certs)).unwrap();
        path
    };
    let root_file = write("root.pem", roots);
    let leaf_file = write("leaf.pem", &chain.certificates()[..1]);
    let mut command = Command::new("openssl");
    command
        .arg("verify")
        .arg("-x509_strict")
        .arg("-purpose")
        .arg(match purpose {
            Purpose::Server => "sslserver",
            Purpose::Client => "sslclient",
        })
        .arg("-CAfile")
        .arg(&root_file);
    if !chain.intermediates().is_empty() {
        command
            .arg("-untrusted")
            .arg(write("chain.pem", chain.intermediates()));
    }
    command.arg(&leaf_file);
    let stdout = run_openssl(&mut command)?;
    if stdout.contains("leaf.pem: OK") {
        Ok(())
    } else {
        Err(format!("openssl verify did not say OK: {stdout}"))
    }
}

/// Runs an openssl command and returns its standard output; panics with a clear message when
/// openssl is missing.
pub fn run_openssl(command: &mut Command) -> Result<String, String> {
    let output = command.output().unwrap_or_else(|e| {
        panic!("these tests need the `openssl` command (openssl 3) on PATH: {e}")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(stdout.into_owned())
    } else {
        Err(format!("{command:?} failed: {stdout}{stderr}"))
    }
}

/// Verifies with both verifiers, for both purposes, panicking with the verifier's message.
pub fn verify_everywhere(chain: &CertificateChain, bundle: &TrustBundle, at: SystemTime) {
    for purpose in [Purpose::Server, Purpose::Client] {
        webpki_verify(chain, bundle, at, purpose)
            .unwrap_or_else(|e| panic!("webpki rejects the chain for {purpose:?}: {e}"));
        openssl_verify(chain, bundle.roots(), purpose).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Every entry in `dir` with its bytes (directories end in `/`), sorted by name.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                (format!("{name}/"), Vec::new())
            } else {
                (name, std::fs::read(e.path()).unwrap())
            }
        })
        .collect();
    files.sort();
    files
}

/// Accepts a server whose chain verifies against `root` and whose only URI SAN is `expected`
/// (SPIFFE authentication: no DNS name is involved).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    /// The SPIFFE ID the server must have.
    pub expected: String,
    /// The roots its chain must verify against.
    pub root: TrustBundle,
    /// Verifies the handshake's signatures.
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = CertificateChain::with_leaf(
            end_entity.clone().into_owned(),
            intermediates.iter().map(|c| c.clone().into_owned()),
        );
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        webpki_verify(&chain, &self.root, at, Purpose::Server)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let uris = CertificateInfo::parse(end_entity)
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .uri_sans;
        if uris != [self.expected.clone()] {
            return Err(rustls::Error::General(format!(
                "the server is {uris:?}, not {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
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
