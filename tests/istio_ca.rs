//! The Istio CA API end to end: a real `meshca serve` (Tresor) with `istio.enabled`, called by
//! the tonic client generated from `proto/istio/v1/auth/ca.proto` over TLS verified with the
//! root and the listener's DNS name, as istio-agent does. Callers authenticate with a client
//! certificate from `meshca issue` (mTLS) or with a service-account token that the fake
//! Kubernetes API server (`support/kube_api.rs`) reviews. CSRs are made by `openssl req` and ask
//! for names no caller may choose; chains are checked with `openssl verify -x509_strict`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshca::istio::proto::{IstioCertificateRequest, Struct, Value, ValueKind};
use meshca_provider::x509::certificates_from_pem;
use meshca_provider::{CertificateChain, CertificateInfo, VerifiedCsr};
use meshca_test_support as support;
use support::csr::{GREEDY_DNS_NAME, GREEDY_SPIFFE_ID, greedy_openssl_csr};
use support::daemon::MeshcaServe;
use support::istio::{ClientIdentity, ISTIOD_NAME, IstioCaClient, serve_with_istio};
use support::kube_api::MockKube;
use support::verify::{Purpose, openssl_verify};
use tonic::Code;

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
const RSA2048: &[&str] = &["-newkey", "rsa:2048"];

/// The configured service certificate lifetime: the default and the longest given.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

struct Daemon {
    serve: MeshcaServe,
    address: SocketAddr,
    root_pem: String,
}

impl Daemon {
    async fn start(kube: Option<&MockKube>) -> Self {
        let (mut builder, address) = serve_with_istio();
        builder = builder.set("certificateProvider.serviceCertValidityDuration=1h");
        builder = match kube {
            Some(kube) => builder.env("KUBECONFIG", kube.kubeconfig()),
            None => builder
                .env_remove("KUBECONFIG")
                .env("HOME", "/nonexistent-meshca-test-home"),
        };
        let mut serve = builder.start();
        serve.wait_ready().await;
        serve.wait_listening(address.port()).await;
        let root_pem = std::fs::read_to_string(ca_dir(&serve).join("ca.crt")).unwrap();
        Self {
            serve,
            address,
            root_pem,
        }
    }

    async fn client(&self, identity: Option<&ClientIdentity>) -> IstioCaClient {
        IstioCaClient::connect(self.address, ISTIOD_NAME, &self.root_pem, identity)
            .await
            .unwrap_or_else(|e| panic!("connect: {e:?}\n{}", self.serve.tail(30)))
    }

    /// A client certificate for `<ns>/<sa>` from `meshca issue` with the daemon's CA.
    fn client_identity(&self, short: &str) -> ClientIdentity {
        let out = self.serve.dir().join(short.replace('/', "-"));
        support::cli::ok(&support::cli::meshca(
            &ca_dir(&self.serve),
            &[
                "issue",
                "--identity",
                short,
                "--out-dir",
                out.to_str().unwrap(),
            ],
        ));
        ClientIdentity::from_dir(&out)
    }
}

fn ca_dir(serve: &MeshcaServe) -> PathBuf {
    serve.dir().join("ca")
}

/// A greedy CSR (another SPIFFE ID, a DNS name, O= and CN=) for a new key.
fn csr(dir: &Path, name: &str, newkey: &[&str]) -> String {
    std::fs::read_to_string(greedy_openssl_csr(dir, name, newkey)).unwrap()
}

/// Checks what a caller of `identity` must get for `csr_pem`: the chain verifies with openssl
/// (-x509_strict, as client and server) against the last element, the leaf names the caller's
/// SPIFFE ID only and certifies the CSR's key, and lives at most `lifetime` from `asked`.
fn check_issued(
    chain: &[String],
    csr_pem: &str,
    identity: &str,
    asked: SystemTime,
    lifetime: Duration,
) -> CertificateInfo {
    assert!(chain.len() >= 2, "leaf and root at least: {chain:?}");
    let (bundle, certificates) = chain.split_last().unwrap();
    let roots = certificates_from_pem(bundle).unwrap();
    assert!(!roots.is_empty(), "the last element holds the roots");
    let certificates: Vec<_> = certificates
        .iter()
        .map(|pem| {
            let mut one = certificates_from_pem(pem).unwrap();
            assert_eq!(one.len(), 1, "one certificate per element before the last");
            one.remove(0)
        })
        .collect();
    let chain = CertificateChain::new(certificates).unwrap();
    for purpose in [Purpose::Client, Purpose::Server] {
        openssl_verify(&chain, &roots, purpose).unwrap();
    }
    let info = CertificateInfo::parse(chain.leaf()).unwrap();
    assert_eq!(
        info.uri_sans,
        vec![identity.to_owned()],
        "only the caller's SPIFFE ID"
    );
    assert!(info.dns_sans.is_empty(), "no DNS name: {:?}", info.dns_sans);
    assert!(!info.uri_sans.iter().any(|u| u == GREEDY_SPIFFE_ID));
    assert!(!info.dns_sans.iter().any(|d| d == GREEDY_DNS_NAME));
    let csr = VerifiedCsr::from_pem(csr_pem).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(chain.leaf()).unwrap();
    assert_eq!(
        leaf.tbs_certificate.subject_pki.raw,
        csr.subject_public_key_info(),
        "the leaf certifies the CSR's key"
    );
    // Whole seconds in the certificate; a little slack for the time the call took.
    assert!(
        info.not_after <= asked + lifetime + Duration::from_secs(5),
        "lifetime at most {lifetime:?}: not after {:?}, asked at {asked:?}",
        info.not_after
    );
    info
}

fn id(short: &str) -> String {
    let (ns, sa) = short.split_once('/').unwrap();
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_with_a_client_certificate_or_a_token_get_their_own_identity_only() {
    let kube = MockKube::start().await;
    kube.add_token("token-web", "shop", "web", &["istio-ca"]);
    kube.add_token("token-for-vault", "shop", "web", &["vault"]);
    let daemon = Daemon::start(Some(&kube)).await;
    let dir = tempfile::tempdir().unwrap();
    let p256 = csr(dir.path(), "p256", P256);
    let rsa = csr(dir.path(), "rsa", RSA2048);

    // mTLS: a client certificate from meshca.
    let api = daemon.client_identity("shop/api");
    let mut mtls = daemon.client(Some(&api)).await;
    for (name, csr_pem) in [("P-256", &p256), ("RSA-2048", &rsa)] {
        let asked = SystemTime::now();
        let chain = mtls
            .create(csr_pem, 600, None, &[])
            .await
            .unwrap_or_else(|e| panic!("{name} over mTLS: {e:?}\n{}", daemon.serve.tail(30)));
        check_issued(
            &chain,
            csr_pem,
            &id("shop/api"),
            asked,
            Duration::from_secs(600),
        );
    }

    // A token (no client certificate), with the audience Istio's agents use.
    let mut plain = daemon.client(None).await;
    for (name, csr_pem) in [("P-256", &p256), ("RSA-2048", &rsa)] {
        let asked = SystemTime::now();
        let chain = plain
            .create(csr_pem, 0, Some("token-web"), &[])
            .await
            .unwrap_or_else(|e| panic!("{name} with a token: {e:?}\n{}", daemon.serve.tail(30)));
        // validity_duration 0: the configured lifetime.
        let info = check_issued(&chain, csr_pem, &id("shop/web"), asked, DEFAULT_LIFETIME);
        assert!(
            info.not_after >= asked + DEFAULT_LIFETIME - Duration::from_secs(60),
            "0 asks for the default lifetime"
        );
    }

    // Above the configured lifetime: shortened to it.
    let asked = SystemTime::now();
    let chain = plain
        .create(&p256, 10 * 3600, Some("token-web"), &[])
        .await
        .unwrap();
    check_issued(&chain, &p256, &id("shop/web"), asked, DEFAULT_LIFETIME);

    // Below the minimum lifetime: refused, naming it.
    let status = plain
        .create(&p256, 5, Some("token-web"), &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("minimum"), "{status:?}");

    // No credential at all.
    let status = plain.create(&p256, 0, None, &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate") && status.message().contains("Bearer"),
        "says what to send: {status:?}"
    );

    // A token for another audience.
    let status = plain
        .create(&p256, 0, Some("token-for-vault"), &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("istio.tokenAudiences"),
        "names the Istio listener's setting, not SDS's: {status:?}"
    );

    // A CSR whose signature does not verify (no proof of possession).
    let mut der = pem_contents(&p256);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let forged = meshca_provider::x509::pem_block("CERTIFICATE REQUEST", &der);
    let status = mtls.create(&forged, 0, None, &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("signature"), "{status:?}");

    // Another identity, from callers nobody trusts to impersonate.
    let other = [(
        "ImpersonatedIdentity",
        "spiffe://cluster.local/ns/bank/sa/vault",
    )];
    let status = mtls.create(&p256, 0, None, &other).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = plain
        .create(&p256, 0, Some("token-web"), &other)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Naming the caller itself is just the caller.
    let own = [(
        "ImpersonatedIdentity",
        "spiffe://cluster.local/ns/shop/sa/api",
    )];
    let asked = SystemTime::now();
    let chain = mtls.create(&p256, 600, None, &own).await.unwrap();
    check_issued(
        &chain,
        &p256,
        &id("shop/api"),
        asked,
        Duration::from_secs(600),
    );

    // Oversized input is refused before anything is issued.
    let issued_before = issued_count(&daemon.serve);
    let huge_csr = format!("{p256}{}", "A".repeat(20 * 1024));
    let status = mtls.create(&huge_csr, 0, None, &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = (0..40)
        .map(|i| {
            (
                format!("k{i}"),
                Value {
                    kind: Some(ValueKind::StringValue("v".to_owned())),
                },
            )
        })
        .collect();
    let status = mtls
        .create_request(
            IstioCertificateRequest {
                csr: p256.clone(),
                validity_duration: 0,
                metadata: Some(Struct { fields }),
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = mtls
        .create(&"A".repeat(100 * 1024), 0, None, &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(
        issued_count(&daemon.serve),
        issued_before,
        "nothing was issued for oversized requests"
    );

    // The listener's certificate is for the configured DNS name: another name does not verify.
    let wrong = IstioCaClient::connect(
        daemon.address,
        "istiod.elsewhere.svc",
        &daemon.root_pem,
        None,
    )
    .await;
    assert!(
        wrong.is_err(),
        "a name the certificate does not carry must not verify"
    );

    // Neither a token nor a CSR reaches the log; issuances do, with who asked.
    let log = daemon.serve.log();
    for secret in ["token-web", "token-for-vault", "CERTIFICATE REQUEST"] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
    assert!(
        log.contains("Istio CA API issued a certificate")
            && log.contains("caller=spiffe://cluster.local/ns/shop/sa/web")
            && log.contains(r#"kind="token""#),
        "{log}"
    );

    // Every call above is counted on /metrics.
    let metrics = support::envoy::http_get(daemon.serve.admin(), "/metrics")
        .await
        .unwrap()
        .body;
    for line in [
        r#"meshca_istio_requests_total{result="ok"} 6"#,
        r#"meshca_istio_requests_total{result="unauthenticated"} 2"#,
        r#"meshca_istio_requests_total{result="permission_denied"} 2"#,
        r#"meshca_istio_requests_total{result="invalid"} 4"#,
        r#"meshca_istio_requests_total{result="exhausted"} 0"#,
        r#"meshca_istio_requests_total{result="too_large"} 1"#,
        r#"meshca_istio_authenticated_requests_total{kind="client-certificate"} 8"#,
        r#"meshca_istio_authenticated_requests_total{kind="token"} 5"#,
        r#"meshca_istio_impersonations_total{result="denied"} 2"#,
        r#"meshca_istio_impersonations_total{result="allowed"} 0"#,
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kubernetes_api_only_client_certificates_are_accepted() {
    let mut daemon = Daemon::start(None).await;
    assert!(
        daemon.serve.log().contains("client certificates only"),
        "the log says tokens are not checked:\n{}",
        daemon.serve.log()
    );
    let dir = tempfile::tempdir().unwrap();
    let p256 = csr(dir.path(), "p256", P256);
    let mut plain = daemon.client(None).await;
    let status = plain
        .create(&p256, 0, Some("some-token"), &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("Kubernetes API"), "{status:?}");
    let api = daemon.client_identity("shop/api");
    let asked = SystemTime::now();
    let chain = daemon
        .client(Some(&api))
        .await
        .create(&p256, 0, None, &[])
        .await
        .unwrap();
    check_issued(&chain, &p256, &id("shop/api"), asked, DEFAULT_LIFETIME);

    // SIGTERM drains the Istio CA API with SDS, and the daemon exits cleanly.
    let status = daemon.serve.terminate();
    assert!(status.success(), "{status}:\n{}", daemon.serve.tail(20));
    assert!(
        daemon.serve.log().contains("Istio CA API draining"),
        "{}",
        daemon.serve.tail(20)
    );
}

fn pem_contents(pem: &str) -> Vec<u8> {
    let der = meshca_provider::csr::der_from_pem(pem).unwrap();
    assert!(!der.is_empty());
    der
}

/// How many certificates the Istio CA API has issued, from the daemon's log.
fn issued_count(serve: &MeshcaServe) -> usize {
    serve
        .log()
        .matches("Istio CA API issued a certificate")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_certificate_is_renewed_before_it_expires() {
    // 20s certificates (NotBefore back-dated 1s) renew about halfway through their life.
    let (builder, address) = serve_with_istio();
    let mut serve = builder
        .set("certificateProvider.serviceCertValidityDuration=20s")
        .set("tresor.clockSkewAllowance=1s")
        .set("renewal.floor=2s")
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent-meshca-test-home")
        .start();
    serve.wait_ready().await;
    serve.wait_listening(address.port()).await;
    serve
        .wait_for_log(
            "Istio CA listener certificate renewed",
            support::PATIENCE * 2,
        )
        .await;
    let root_pem = std::fs::read_to_string(ca_dir(&serve).join("ca.crt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p256 = csr(dir.path(), "p256", P256);
    let out = serve.dir().join("api");
    support::cli::ok(&support::cli::meshca(
        &ca_dir(&serve),
        &[
            "--set",
            "certificateProvider.serviceCertValidityDuration=20s",
            "--set",
            "tresor.clockSkewAllowance=1s",
            "issue",
            "--identity",
            "shop/api",
            "--out-dir",
            out.to_str().unwrap(),
        ],
    ));
    let api = ClientIdentity::from_dir(&out);
    // A new connection sees the renewed certificate, which still verifies for the name.
    let chain = IstioCaClient::connect(address, ISTIOD_NAME, &root_pem, Some(&api))
        .await
        .unwrap()
        .create(&p256, 0, None, &[])
        .await
        .unwrap();
    check_issued(
        &chain,
        &p256,
        &id("shop/api"),
        SystemTime::now(),
        Duration::from_secs(20),
    );
}
