//! Istio's CA API (`istio.v1.auth.IstioCertificateService/CreateCertificate`) driven from outside
//! meshca's code: a real `meshca serve` with `istio.enabled`, called by the Python grpcio client
//! `tests/python/istio_ca_client.py` (stubs generated from `proto/` at run time), and the checks
//! a user of istio-agent would make on what comes back — `openssl verify -x509_strict` with the
//! last `cert_chain` element as the CA file, the caller's SPIFFE ID and nothing else, the CSR's
//! own key, the requested lifetime at most.
//!
//! [`conformance`] runs the whole list against one daemon; the Tresor and Vault tests call it
//! with their provider's settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use meshca_provider::x509::CertificateChain;
use serde_json::Value;
use x509_parser::prelude::FromDer;

use crate::csr::greedy_openssl_csr;
use crate::daemon::MeshcaServe;
use crate::istio::{ISTIOD_NAME, istio_flags};
use crate::kube_api::{MockKube, TokenPod};
use crate::verify::run_openssl;
use crate::{free_port, id};

/// The audience Istio's agents ask their tokens for.
pub const ISTIO_AUDIENCE: &str = "istio-ca";
/// A lifetime every provider's policy accepts, asked for by the checks (seconds).
pub const REQUESTED_SECONDS: u64 = 3600;

/// `openssl req -newkey` arguments for a P-256 key.
pub const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
/// `openssl req -newkey` arguments for an RSA 2048 key.
pub const RSA2048: &[&str] = &["-newkey", "rsa:2048"];

/// A running `meshca serve` with the Istio CA listener on loopback, token authentication
/// through a fake Kubernetes API server, and the global arguments it was started with (for
/// `meshca issue` against the same CA).
pub struct IstioCa {
    pub daemon: MeshcaServe,
    /// The Istio CA listener.
    pub addr: SocketAddr,
    /// The fake API server answering the daemon's TokenReviews.
    pub kube: MockKube,
    /// Global arguments (before the subcommand) naming the provider and its settings.
    pub global: Vec<String>,
    /// Files the checks write (CSRs, keys, client certificates).
    pub work: tempfile::TempDir,
}

impl IstioCa {
    /// [`IstioCa::start`] with Tresor and its CA in a fresh directory.
    pub async fn start_tresor() -> Self {
        Self::start_tresor_with(&[]).await
    }

    /// [`IstioCa::start_tresor`] with more `--set` settings (`istio.maxConnections=8`).
    pub async fn start_tresor_with(settings: &[&str]) -> Self {
        let work = tempfile::tempdir().unwrap();
        let mut global = vec![
            "--ca-dir".to_owned(),
            work.path().join("ca").display().to_string(),
        ];
        for setting in settings {
            global.extend(["--set".to_owned(), (*setting).to_owned()]);
        }
        Self::start_in(work, &global).await
    }

    /// Starts `meshca <global> serve` with the Istio CA listener on a free loopback port
    /// ([`ISTIOD_NAME`] on its certificate, tokens for [`ISTIO_AUDIENCE`]), the admin listener,
    /// development-mode SDS, and `KUBECONFIG` pointing at a fresh [`MockKube`]; waits until it
    /// is ready and listening.
    pub async fn start(global: &[String]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), global).await
    }

    /// [`IstioCa::start`] against `kube`, prepared by the caller (the cert-manager provider
    /// reads its CA bundle Secret and CertificateRequests there).
    pub async fn start_with_kube(kube: MockKube, global: &[String]) -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), kube, global).await
    }

    async fn start_in(work: tempfile::TempDir, global: &[String]) -> Self {
        Self::start_with(work, MockKube::start().await, global).await
    }

    async fn start_with(work: tempfile::TempDir, kube: MockKube, global: &[String]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut daemon = MeshcaServe::builder()
            .admin()
            .dev_sds()
            .args(global)
            .args(istio_flags(addr))
            .set(&format!("istio.tokenAudiences={ISTIO_AUDIENCE}"))
            .env("KUBECONFIG", kube.kubeconfig())
            .start();
        daemon.wait_ready().await;
        daemon.wait_listening(addr.port()).await;
        Self {
            daemon,
            addr,
            kube,
            global: global.to_vec(),
            work,
        }
    }

    /// `meshca <global> issue --identity <short> --out-dir <work>/<short>`: a client certificate
    /// from the same CA (cert.pem, key.pem, ca.pem), as istio-agent holds after its first
    /// certificate. Returns the directory.
    pub fn issue_client_certificate(&self, short: &str) -> PathBuf {
        let out = self.work.path().join(short.replace('/', "_"));
        let output = Command::new(crate::meshca_binary())
            .args(&self.global)
            .args(["issue", "--identity", short, "--out-dir"])
            .arg(&out)
            .env_remove("MESHCA_CONFIG")
            .env("KUBECONFIG", self.kube.kubeconfig())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "meshca issue --identity {short}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        out
    }

    /// The CA's trust bundle as `meshca issue` wrote it: what the clients verify the listener
    /// with (istio-agent's configured root certificate).
    pub fn root_ca(&self) -> PathBuf {
        let dir = self.work.path().join("trust");
        if !dir.join("ca.pem").is_file() {
            let issued = self.issue_client_certificate("trust/reader");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(issued.join("ca.pem"), dir.join("ca.pem")).unwrap();
        }
        dir.join("ca.pem")
    }

    /// A call of CreateCertificate to this daemon by the Python client.
    pub fn call<'a>(&'a self, client: &'a PythonClient, csr: &'a Path) -> Call<'a> {
        Call {
            client,
            ca: self,
            csr,
            credential: Credential::None,
            validity: REQUESTED_SECONDS,
            impersonate: None,
        }
    }
}

/// How a call authenticates.
#[derive(Debug, Clone)]
pub enum Credential {
    None,
    /// A client certificate: the `meshca issue` output directory (cert.pem, key.pem).
    Certificate(PathBuf),
    /// A service-account token in `authorization: Bearer`.
    Token(String),
}

/// One CreateCertificate call being set up.
pub struct Call<'a> {
    client: &'a PythonClient,
    ca: &'a IstioCa,
    csr: &'a Path,
    credential: Credential,
    validity: u64,
    impersonate: Option<String>,
}

/// What the server answered with instead of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The gRPC status code's name (`INVALID_ARGUMENT`).
    pub code: String,
    pub details: String,
}

impl Call<'_> {
    pub fn credential(mut self, credential: Credential) -> Self {
        self.credential = credential;
        self
    }

    pub fn validity(mut self, seconds: u64) -> Self {
        self.validity = seconds;
        self
    }

    /// Asks for `spiffe_id` in the `ImpersonatedIdentity` metadata.
    pub fn impersonate(mut self, spiffe_id: &str) -> Self {
        self.impersonate = Some(spiffe_id.to_owned());
        self
    }

    /// Runs the Python client: the `cert_chain` PEM strings, or the status it got.
    pub async fn send(self) -> Result<Vec<String>, Refusal> {
        let root_ca = self.ca.root_ca();
        let mut command = tokio::process::Command::new(crate::tools::python());
        command
            .arg(crate::workspace_root().join("tests/python/istio_ca_client.py"))
            .arg("--address")
            .arg(self.ca.addr.to_string())
            .args(["--server-name", ISTIOD_NAME])
            .arg("--root-ca")
            .arg(&root_ca)
            .arg("--csr")
            .arg(self.csr)
            .arg("--validity")
            .arg(self.validity.to_string())
            .arg("--proto-dir")
            .arg(crate::workspace_root().join("proto"));
        match &self.credential {
            Credential::None => {}
            Credential::Certificate(dir) => {
                command
                    .arg("--cert")
                    .arg(dir.join("cert.pem"))
                    .arg("--key")
                    .arg(dir.join("key.pem"));
            }
            Credential::Token(token) => {
                command.args(["--token", token]);
            }
        }
        if let Some(target) = &self.impersonate {
            command.args(["--impersonate", target]);
        }
        let output = command
            .env("PYTHONPATH", &self.client.pythonpath)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(crate::workspace_root())
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {}: {e}", crate::tools::python()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let answer: Value = match output.status.code() {
            Some(0 | 3) => serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("the client printed no JSON ({e}): {stdout}{stderr}")),
            _ => panic!(
                "the Python client failed ({}):\n{stdout}\n{stderr}\nmeshca's log:\n{}",
                output.status,
                self.ca.daemon.tail(30)
            ),
        };
        if answer["ok"] == true {
            Ok(answer["cert_chain"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pem| pem.as_str().unwrap().to_owned())
                .collect())
        } else {
            Err(Refusal {
                code: answer["code"].as_str().unwrap().to_owned(),
                details: answer["details"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }
}

/// Python with grpcio and grpcio-tools importable (`scripts/install-tools.sh grpc`, or
/// `$MESHCA_GRPC_PYTHONPATH`).
pub struct PythonClient {
    pythonpath: PathBuf,
}

impl PythonClient {
    /// The client, or `None` (a skip; a failure under `CI=true`) when grpcio is missing.
    pub fn find() -> Option<Self> {
        crate::tools::python_packages(
            "MESHCA_GRPC_PYTHONPATH",
            "grpc",
            "import grpc, grpc_tools.protoc",
            "Python grpcio and grpcio-tools",
        )
        .map(|pythonpath| Self { pythonpath })
    }
}

/// A copy of the PEM CSR at `csr` whose signature no longer matches its content (the last
/// byte of the signature flipped), at `<csr>.bad`.
pub fn with_bad_signature(csr: &Path) -> PathBuf {
    let parsed = pem::parse(std::fs::read(csr).unwrap()).unwrap();
    let mut der = parsed.contents().to_vec();
    *der.last_mut().unwrap() ^= 0x01;
    let bad = csr.with_extension("bad");
    std::fs::write(
        &bad,
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der)),
    )
    .unwrap();
    bad
}

/// Everything istio-agent relies on in a `cert_chain` for a CSR signed for `short`
/// (`<ns>/<sa>`), asked for `requested` seconds:
/// - at least a leaf and the trust bundle, the bundle last;
/// - `openssl verify -x509_strict` accepts the leaf with the last element as `-CAfile` and
///   the elements between as `-untrusted`, for TLS servers and clients;
/// - the leaf's names are the SPIFFE ID of `short` and nothing else (no DNS name, nothing
///   from the CSR's subject);
/// - the leaf's key is the CSR's;
/// - it expires no later than `requested` seconds from now.
///
/// Returns the leaf and its intermediates.
pub fn check_chain(
    cert_chain: &[String],
    csr: &Path,
    short: &str,
    requested: u64,
) -> CertificateChain {
    let checked_at = SystemTime::now();
    assert!(
        cert_chain.len() >= 2,
        "cert_chain holds the leaf and, last, the trust bundle: {cert_chain:?}"
    );
    let (bundle, issued) = cert_chain.split_last().unwrap();
    let chain = CertificateChain::from_pem(&issued.concat()).unwrap();
    let bundle_roots = CertificateChain::from_pem(bundle).unwrap();
    for root in bundle_roots.certificates() {
        let (_, root) = x509_parser::certificate::X509Certificate::from_der(root).unwrap();
        assert_eq!(
            root.subject(),
            root.issuer(),
            "the last element holds roots only: {}",
            root.subject()
        );
    }
    for purpose in ["sslserver", "sslclient"] {
        openssl_verify_pem(&chain, bundle, purpose).unwrap_or_else(|e| panic!("{e}"));
    }

    let info = chain.leaf_info().unwrap();
    assert_eq!(
        info.uri_sans,
        [id(short).to_string()],
        "the caller's SPIFFE ID only, not the CSR's"
    );
    assert!(
        info.dns_sans.is_empty(),
        "names from the CSR: {:?}",
        info.dns_sans
    );
    assert!(
        !info.subject.contains("evil.example") && !info.subject.contains("Not meshca"),
        "the CSR's subject was copied: {}",
        info.subject
    );
    assert!(!info.is_ca);

    let csr_der = pem::parse(std::fs::read(csr).unwrap()).unwrap();
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr_der.contents())
            .unwrap();
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(chain.leaf()).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        request.certification_request_info.subject_pki.raw,
        "the leaf certifies the CSR's key"
    );

    let latest = checked_at + Duration::from_secs(requested);
    assert!(
        info.not_after <= latest,
        "asked for {requested}s, got a certificate valid until {:?} (now {checked_at:?})",
        info.not_after
    );
    chain
}

/// `openssl verify -x509_strict -purpose <purpose> -CAfile <bundle> [-untrusted <intermediates>]
/// <leaf>`, with the bundle as the PEM text the server sent.
pub fn openssl_verify_pem(
    chain: &CertificateChain,
    bundle_pem: &str,
    purpose: &str,
) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let pem_of = |certs: &[rustls_pki_types::CertificateDer<'static>]| {
        meshca_provider::x509::certificates_to_pem(certs)
    };
    let mut command = Command::new("openssl");
    command
        .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
        .arg(write("root-cert.pem", bundle_pem));
    if !chain.intermediates().is_empty() {
        command
            .arg("-untrusted")
            .arg(write("intermediates.pem", &pem_of(chain.intermediates())));
    }
    command.arg(write("leaf.pem", &pem_of(&chain.certificates()[..1])));
    let stdout = run_openssl(&mut command)?;
    if stdout.contains("leaf.pem: OK") {
        Ok(())
    } else {
        Err(format!("openssl verify did not say OK: {stdout}"))
    }
}

/// One caller with a client certificate from the CA (`bookstore/bookbuyer`) and one with a
/// service-account token for [`ISTIO_AUDIENCE`] (`bookstore/bookstore-v2`).
pub struct TwoCallers {
    pub mtls_caller: &'static str,
    pub token_caller: &'static str,
    pub certificate: Credential,
    pub token: Credential,
}

impl TwoCallers {
    /// Issues the client certificate and registers the token with `ca`'s fake API server.
    pub fn of(ca: &IstioCa) -> Self {
        let mtls_caller = "bookstore/bookbuyer";
        let certificate = Credential::Certificate(ca.issue_client_certificate(mtls_caller));
        ca.kube.add_token(
            "token-bookstore",
            "bookstore",
            "bookstore-v2",
            &[ISTIO_AUDIENCE],
        );
        Self {
            mtls_caller,
            token_caller: "bookstore/bookstore-v2",
            certificate,
            token: Credential::Token("token-bookstore".to_owned()),
        }
    }
}

/// The checks of issue #18 with a client no one here wrote, against one running daemon:
/// P-256 and RSA CSRs (each asking for another identity's names) over mTLS and over a token
/// get chains that pass [`check_chain`]; a CSR with a bad signature is INVALID_ARGUMENT; a call
/// with no credential is UNAUTHENTICATED; an untrusted caller asking for another identity is
/// PERMISSION_DENIED.
pub async fn conformance(ca: &IstioCa, client: &PythonClient) {
    let work = ca.work.path();
    let TwoCallers {
        mtls_caller,
        token_caller,
        certificate,
        token,
    } = TwoCallers::of(ca);

    for (key_name, newkey) in [("p256", P256), ("rsa2048", RSA2048)] {
        for (credential, caller) in [(&certificate, mtls_caller), (&token, token_caller)] {
            let csr = greedy_openssl_csr(
                work,
                &format!("{key_name}-{}", caller.replace('/', "_")),
                newkey,
            );
            let chain = ca
                .call(client, &csr)
                .credential(credential.clone())
                .send()
                .await
                .unwrap_or_else(|refusal| {
                    panic!(
                        "{key_name} CSR as {caller} ({credential:?}) refused: {refusal:?}\n{}",
                        ca.daemon.tail(30)
                    )
                });
            check_chain(&chain, &csr, caller, REQUESTED_SECONDS);
        }
    }

    let csr = greedy_openssl_csr(work, "refused", P256);
    let bad = with_bad_signature(&csr);
    let refusal = ca
        .call(client, &bad)
        .credential(certificate.clone())
        .send()
        .await
        .expect_err("a CSR with a bad signature is refused");
    assert_eq!(refusal.code, "INVALID_ARGUMENT", "{refusal:?}");

    let refusal = ca
        .call(client, &csr)
        .send()
        .await
        .expect_err("a call with no credential is refused");
    assert_eq!(refusal.code, "UNAUTHENTICATED", "{refusal:?}");

    let other = id("bookstore/bookstore-v2").to_string();
    for credential in [&certificate, &token] {
        let refusal = ca
            .call(client, &csr)
            .credential(credential.clone())
            .impersonate(&id("kube-system/admin").to_string())
            .send()
            .await
            .expect_err("an untrusted caller cannot impersonate");
        assert_eq!(
            refusal.code, "PERMISSION_DENIED",
            "{credential:?}: {refusal:?}"
        );
    }
    // The token caller naming itself is just itself; the certificate caller naming it is not.
    let chain = ca
        .call(client, &csr)
        .credential(token.clone())
        .impersonate(&other)
        .send()
        .await
        .unwrap();
    check_chain(&chain, &csr, token_caller, REQUESTED_SECONDS);
    let refusal = ca
        .call(client, &csr)
        .credential(certificate.clone())
        .impersonate(&other)
        .send()
        .await
        .expect_err("bookbuyer cannot ask for bookstore-v2");
    assert_eq!(refusal.code, "PERMISSION_DENIED", "{refusal:?}");
}

/// ztunnel's projected token in [`node_agent_cluster`] (istio-system/ztunnel, bound to its pod
/// ztunnel-abc on node-1).
pub const ZTUNNEL_TOKEN: &str = "token-ztunnel";
/// The workload ns1/sa1's own token in [`node_agent_cluster`] (bound to its pod app-1 on node-1).
pub const SA1_TOKEN: &str = "token-sa1";

/// Makes `kube` a two-node cluster for node-agent impersonation: ztunnel-abc of
/// istio-system/ztunnel on node-1 (its token [`ZTUNNEL_TOKEN`] bound to it), app-1 of ns1/sa1
/// on node-1 (its own token [`SA1_TOKEN`] bound to it), app-2 of ns2/sa2 on node-2. Both tokens
/// are for [`ISTIO_AUDIENCE`].
pub fn node_agent_cluster(kube: &MockKube) {
    kube.add_token(ZTUNNEL_TOKEN, "istio-system", "ztunnel", &[ISTIO_AUDIENCE]);
    kube.bind_token_to_pod(
        ZTUNNEL_TOKEN,
        TokenPod {
            name: "ztunnel-abc".into(),
            uid: Some("uid-ztunnel-abc".into()),
            node: Some("node-1".into()),
        },
    );
    kube.add_token(SA1_TOKEN, "ns1", "sa1", &[ISTIO_AUDIENCE]);
    kube.bind_token_to_pod(
        SA1_TOKEN,
        TokenPod {
            name: "app-1".into(),
            uid: Some("uid-app-1".into()),
            node: Some("node-1".into()),
        },
    );
    kube.put_pod("istio-system", "ztunnel-abc", "ztunnel", "node-1");
    kube.put_pod("ns1", "app-1", "sa1", "node-1");
    kube.put_pod("ns2", "app-2", "sa2", "node-2");
}
