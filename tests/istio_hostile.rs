//! The Istio CA API under hostile callers: a real `meshca serve` (Tresor) with `istio.enabled`
//! and low limits, attacked over raw TCP, raw TLS, a raw gRPC codec and the tonic client
//! generated from `proto/istio/v1/auth/ca.proto`, while a legitimate caller (a client
//! certificate from `meshca issue`) keeps getting certificates on its own connection:
//! - connections past `istio.maxConnections` are closed as soon as they are accepted (one
//!   throttled warning), connections that never finish a TLS handshake, send no HTTP/2 preface
//!   or carry no call are closed after their timeouts;
//! - calls without a credential or with a forged token are UNAUTHENTICATED without their body
//!   being read, however large it is or if it never ends;
//! - an authenticated message over `istio.maxMessageBytes` is refused from its length prefix;
//! - odd metadata is INVALID_ARGUMENT with a short message free of control characters;
//! - the server's memory stays bounded and nothing the attackers sent reaches its log.
//!
//! A CSR bomb (more concurrent signings than `istio.maxConcurrentSignings`) runs against the
//! cert-manager provider on the fake Kubernetes API server, whose CertificateRequests can be
//! left unsigned to hold the signing slots for as long as the test needs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BufMut;
use meshca::istio::PATH_CREATE_CERTIFICATE;
use meshca::istio::proto::{
    IstioCertificateRequest, IstioCertificateResponse, Struct, Value, ValueKind,
};
use meshca::sds::SdsCodec;
use meshca_provider::CertificateInfo;
use meshca_provider::x509::certificates_from_pem;
use meshca_test_support as support;
use support::csr::{exact_openssl_csr, greedy_openssl_csr};
use support::istio::{ClientIdentity, ISTIOD_NAME, IstioCaClient};
use support::istio_interop::{ISTIO_AUDIENCE, IstioCa, P256};
use support::kube_api::Step;
use support::kube_api::cert_manager::{REQUESTS_PATH, fake, signing_issuer};
use support::{PATIENCE, TestCa, eventually, eventually_ok, id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_stream::StreamExt as _;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

const MAX_CONNECTIONS: usize = 12;
const MAX_MESSAGE_BYTES: usize = 8 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const PREFACE_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// In everything the attackers send, to look for in the log.
const PAYLOAD: &str = "hostile-payload-7f3a";
/// The legitimate caller.
const LEGIT: &str = "shop/legit";
/// The caller whose token is valid but who sends what no agent would (attacker/evil).
const ATTACKER_TOKEN: &str = "hostile-payload-7f3a-valid-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_callers_get_nothing_and_a_legitimate_caller_keeps_getting_certificates() {
    let ca = IstioCa::start_tresor_with(&[
        &format!("istio.maxConnections={MAX_CONNECTIONS}"),
        &format!("istio.maxMessageBytes={MAX_MESSAGE_BYTES}"),
        &format!("istio.handshakeTimeout={}s", HANDSHAKE_TIMEOUT.as_secs()),
        &format!("istio.prefaceTimeout={}s", PREFACE_TIMEOUT.as_secs()),
        &format!("istio.connectionIdleTimeout={}s", IDLE_TIMEOUT.as_secs()),
    ])
    .await;
    ca.kube
        .add_token(ATTACKER_TOKEN, "attacker", "evil", &[ISTIO_AUDIENCE]);
    let legit = Legit::new(&ca).await;
    let lines_at_start = log_lines(&ca).len();
    let memory = RssSampler::start(ca.daemon.pid());
    let background = legit.keep_calling();
    let handshakes_refused_before = metric(&ca, "meshca_istio_tls_handshakes_refused_total").await;

    let tls = Arc::new(tls_client(&legit.root_pem));
    // (c) Connections that finish no handshake, or send nothing or no preface after one, or no
    // call after the preface: each closed after its timeout.
    let silent_tcp = async {
        let tcp = TcpStream::connect(ca.addr).await.unwrap();
        closed_after(tcp, Instant::now()).await
    };
    let half_hello = async {
        let mut tcp = TcpStream::connect(ca.addr).await.unwrap();
        let started = Instant::now();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        closed_after(tcp, started).await
    };
    let silent_tls = async {
        let started = Instant::now();
        let tls_stream = tls_connect(ca.addr, &tls).await.unwrap();
        closed_after(tls_stream, started).await
    };
    let partial_preface = async {
        let started = Instant::now();
        let mut tls_stream = tls_connect(ca.addr, &tls).await.unwrap();
        tls_stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        closed_after(tls_stream, started).await
    };
    let no_call = async {
        let started = Instant::now();
        let connection = open_idle_connection(ca.addr, &tls).await.unwrap();
        closed_after(connection, started).await
    };
    let (silent_tcp, half_hello, silent_tls, partial_preface, no_call) =
        tokio::join!(silent_tcp, half_hello, silent_tls, partial_preface, no_call);
    for (what, lived, timeout) in [
        ("no ClientHello", silent_tcp, HANDSHAKE_TIMEOUT),
        ("half a ClientHello", half_hello, HANDSHAKE_TIMEOUT),
        ("no preface", silent_tls, PREFACE_TIMEOUT),
        ("part of the preface", partial_preface, PREFACE_TIMEOUT),
        ("no call", no_call, IDLE_TIMEOUT),
    ] {
        assert!(
            lived >= timeout.mul_f32(0.9) && lived < timeout + PATIENCE,
            "a connection with {what} was closed after {lived:?} (timeout {timeout:?})"
        );
    }
    eventually(
        PATIENCE,
        "the two abandoned handshakes to be counted",
        || metric(&ca, "meshca_istio_tls_handshakes_refused_total"),
        |refused| *refused == handshakes_refused_before + 2,
    )
    .await;

    // (c) At the cap: every connection but the legitimate caller's is the attacker's. The one
    // past it is closed as soon as it is accepted (its handshake fails at once, not after
    // handshakeTimeout), while the legitimate caller is still served on its connection.
    // (The server frees the slots of the connections above just after closing them: the
    // attacker retries until it holds all but the legitimate caller's.)
    let mut held = Vec::new();
    let filling = Instant::now();
    while held.len() < MAX_CONNECTIONS - 1 {
        if let Ok(connection) = open_idle_connection(ca.addr, &tls).await {
            held.push(connection);
        }
        assert!(
            filling.elapsed() < PATIENCE,
            "only {} connections besides the legitimate caller's",
            held.len()
        );
    }
    for _ in 0..20 {
        let started = Instant::now();
        let refused = tls_connect(ca.addr, &tls).await;
        assert!(refused.is_err(), "a connection past the cap is refused");
        assert!(
            started.elapsed() < HANDSHAKE_TIMEOUT / 2,
            "closed when accepted, not left to time out: {:?}",
            started.elapsed()
        );
    }
    legit.certificate().await.unwrap();
    let warnings = eventually(
        PATIENCE,
        "a warning naming istio.maxConnections",
        || async { ca.daemon.log().matches("istio.maxConnections").count() },
        |warnings| *warnings > 0,
    )
    .await;
    assert_eq!(
        warnings,
        1,
        "one warning for 20 refusals:\n{}",
        ca.daemon.tail(20)
    );
    drop(held);

    // (a) A flood of calls without a credential or with forged tokens, some with bodies far
    // over maxMessageBytes: UNAUTHENTICATED, never OUT_OF_RANGE (the body is not read).
    let attacker = eventually_ok(PATIENCE, "a connection once the cap is free", || {
        IstioCaClient::connect(ca.addr, ISTIOD_NAME, &legit.root_pem, None)
    })
    .await;
    let csr = legit.csr.clone();
    let huge = PAYLOAD.repeat(1024 * 1024 / PAYLOAD.len());
    const FLOOD: usize = 120;
    let mut flood = JoinSet::new();
    for i in 0..FLOOD {
        let mut client = attacker.clone();
        let csr = if i % 2 == 0 {
            csr.clone()
        } else {
            huge.clone()
        };
        flood.spawn(async move {
            let token = format!("{PAYLOAD}-forged-{i}");
            let token = (i % 3 != 0).then_some(token.as_str());
            client.create(&csr, 3600, token, &[]).await
        });
    }
    while let Some(answer) = flood.join_next().await {
        let status = answer
            .unwrap()
            .expect_err("an unauthenticated call is refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // The body never ends: the answer comes anyway, so nothing waited for it.
    let channel = eventually_ok(PATIENCE, "a second connection", || {
        IstioCaClient::channel(ca.addr, ISTIOD_NAME, &legit.root_pem, None)
    })
    .await;
    let forged = format!("{PAYLOAD}-forged");
    for token in [None, Some(forged.as_str())] {
        let status = endless_call(channel.clone(), token, huge.as_bytes().to_vec()).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    legit.certificate().await.unwrap();

    // (b) An authenticated message over maxMessageBytes: refused from its length prefix with
    // tonic's code, OUT_OF_RANGE, also when the rest of it never comes.
    let mut evil = attacker.clone();
    let status = evil
        .create(
            &huge[..2 * MAX_MESSAGE_BYTES],
            3600,
            Some(ATTACKER_TOKEN),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&MAX_MESSAGE_BYTES.to_string()),
        "{status:?}"
    );
    let status = endless_call(
        channel.clone(),
        Some(ATTACKER_TOKEN),
        huge.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // (e) Odd metadata: INVALID_ARGUMENT, with a short message free of control characters.
    let odd = odd_metadata();
    for (what, metadata) in &odd {
        let status = evil
            .create_request(
                IstioCertificateRequest {
                    csr: csr.clone(),
                    validity_duration: 3600,
                    metadata: Some(metadata.clone()),
                },
                Some(ATTACKER_TOKEN),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let message = status.message();
        assert!(
            !message.chars().any(char::is_control),
            "{what}: control characters in {message:?}"
        );
        assert!(
            message.len() < 1024,
            "{what}: a message of {} bytes: {message:?}",
            message.len()
        );
    }

    // After everything: the legitimate caller was served throughout and still is; nothing
    // else was issued, and every refusal is counted.
    background.stop().await;
    legit.certificate().await.unwrap();
    let served = legit.served.load(Ordering::Relaxed);
    assert!(
        served >= 5,
        "the legitimate caller got {served} certificates"
    );
    let unauthenticated = u64::try_from(FLOOD + 2).unwrap();
    let invalid = u64::try_from(odd.len()).unwrap();
    // The two oversized messages.
    let oversized = 2;
    for (series, want) in [
        (r#"meshca_istio_requests_total{result="ok"}"#, served),
        (
            r#"meshca_istio_requests_total{result="unauthenticated"}"#,
            unauthenticated,
        ),
        (r#"meshca_istio_requests_total{result="invalid"}"#, invalid),
        (r#"meshca_istio_requests_total{result="exhausted"}"#, 0),
        (
            r#"meshca_istio_requests_total{result="too_large"}"#,
            oversized,
        ),
        (
            r#"meshca_istio_authenticated_requests_total{kind="client-certificate"}"#,
            served,
        ),
        (
            r#"meshca_istio_authenticated_requests_total{kind="token"}"#,
            invalid + oversized,
        ),
    ] {
        assert_eq!(metric(&ca, series).await, want, "{series}");
    }

    // (f) Memory stayed bounded, and the log holds nothing the attackers sent and no more
    // lines than the one warning (besides the legitimate caller's issuances).
    // Buffering the flood's bodies alone would take 60 MiB; the attack costs a few.
    let (baseline, peak) = memory.stop().await;
    assert!(
        peak < baseline + 32 * 1024,
        "VmRSS grew from {baseline} KiB to {peak} KiB under attack"
    );
    let log = ca.daemon.log();
    assert!(!log.contains(PAYLOAD), "attacker bytes in the log:\n{log}");
    assert!(!log.contains('\u{1b}'), "an escape sequence in the log");
    let new_lines: Vec<String> = log_lines(&ca)
        .into_iter()
        .skip(lines_at_start)
        .filter(|line| !line.contains("Istio CA API issued a certificate"))
        .collect();
    assert!(
        new_lines.len() <= 2,
        "the attack made the log grow:\n{}",
        new_lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_bomb_is_refused_after_the_signing_queue_timeout() {
    const SLOTS: usize = 2;
    const BOMB: usize = 24;
    const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
    /// How long cert-manager is waited for: how long the holders hold their slots.
    const CERT_MANAGER_TIMEOUT: Duration = Duration::from_secs(8);
    // cert-manager signs while its watches play an outcome: the listener's certificate, the
    // legitimate caller's first certificate.
    let signer = Arc::new(TestCa::new("istio hostile cert-manager"));
    let kube = fake(signing_issuer(&signer), Some(&signer.root_pem()), vec![]).await;
    kube.set_default_watch(Some(vec![Step::Pending, Step::Outcome]));
    kube.add_token("token-legit", "shop", "legit", &[ISTIO_AUDIENCE]);
    kube.add_token(ATTACKER_TOKEN, "attacker", "evil", &[ISTIO_AUDIENCE]);
    let global: Vec<String> = [
        "certificateProvider.kind=cert-manager".to_owned(),
        "certManager.issuerName=meshca-ca".to_owned(),
        format!("certManager.timeout={}s", CERT_MANAGER_TIMEOUT.as_secs()),
        format!("istio.maxConcurrentSignings={SLOTS}"),
        format!("istio.signingQueueTimeout={}s", QUEUE_TIMEOUT.as_secs()),
    ]
    .into_iter()
    .flat_map(|setting| ["--set".to_owned(), setting])
    .collect();
    let ca = IstioCa::start_with_kube(kube, &global).await;
    let client = IstioCaClient::connect(ca.addr, ISTIOD_NAME, &signer.root_pem(), None)
        .await
        .unwrap();
    // cert-manager signs what a CSR asks for: meshca forwards only CSRs naming the caller.
    let legit_csr = std::fs::read_to_string(exact_openssl_csr(
        ca.work.path(),
        "legit",
        &id(LEGIT).to_string(),
        P256,
    ))
    .unwrap();
    let evil_csr = std::fs::read_to_string(exact_openssl_csr(
        ca.work.path(),
        "evil",
        &id("attacker/evil").to_string(),
        P256,
    ))
    .unwrap();
    client
        .clone()
        .create(&legit_csr, 3600, Some("token-legit"), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", ca.daemon.tail(30)));

    // From now on no CertificateRequest is signed: the first SLOTS calls hold the slots.
    ca.kube.set_default_watch(None);
    let created = || {
        ca.kube
            .requests()
            .iter()
            .filter(|r| r.is("POST", REQUESTS_PATH))
            .count()
    };
    let created_before = created();
    let mut holders = JoinSet::new();
    for _ in 0..SLOTS {
        let mut client = client.clone();
        let csr = evil_csr.clone();
        holders.spawn(async move { client.create(&csr, 3600, Some(ATTACKER_TOKEN), &[]).await });
    }
    eventually(
        PATIENCE,
        "the holders' CertificateRequests",
        || async { created() },
        |created| *created == created_before + SLOTS,
    )
    .await;

    // The bomb: every call waits at most signingQueueTimeout for a slot, then is refused;
    // none reaches the backend.
    let started = Instant::now();
    let mut bomb = JoinSet::new();
    for _ in 0..BOMB {
        let mut client = client.clone();
        let csr = evil_csr.clone();
        bomb.spawn(async move {
            let answer = client.create(&csr, 3600, Some(ATTACKER_TOKEN), &[]).await;
            (answer, started.elapsed())
        });
    }
    while let Some(done) = bomb.join_next().await {
        let (answer, after) = done.unwrap();
        let status = answer.expect_err("no slot for the bomb");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("istio.maxConcurrentSignings"),
            "{status:?}"
        );
        assert!(
            after >= QUEUE_TIMEOUT.mul_f32(0.9) && after < CERT_MANAGER_TIMEOUT / 2,
            "refused after {after:?}: the queue timeout is {QUEUE_TIMEOUT:?}, the slots are held \
             for {CERT_MANAGER_TIMEOUT:?}"
        );
    }
    assert_eq!(
        created(),
        created_before + SLOTS,
        "the bomb reached cert-manager"
    );
    assert_eq!(
        metric(&ca, r#"meshca_istio_requests_total{result="exhausted"}"#).await,
        u64::try_from(BOMB).unwrap()
    );

    // The holders give up when cert-manager does not answer in certManager.timeout; their
    // slots are free again and the legitimate caller is signed for.
    ca.kube
        .set_default_watch(Some(vec![Step::Pending, Step::Outcome]));
    while let Some(held) = holders.join_next().await {
        let status = held.unwrap().expect_err("never signed");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let chain = client
        .clone()
        .create(&legit_csr, 3600, Some("token-legit"), &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", ca.daemon.tail(30)));
    assert_eq!(leaf_uris(&chain), [id(LEGIT).to_string()]);
}

/// Issue #21, on the Istio CA listener (which shares the SDS listeners' transport): 100
/// connections that send nothing and 100 that send their ClientHello, get the server's answer
/// and then stall hold no turn at the CPU for TLS handshakes; a legitimate agent connecting
/// afterwards completes its handshake and gets its certificate well within
/// `istio.handshakeTimeout` (10 s), and nobody is shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_hold_back_a_legitimate_caller() {
    let ca = IstioCa::start_tresor_with(&[]).await;
    let root_pem =
        std::fs::read_to_string(ca.issue_client_certificate("shop/stalled").join("ca.pem"))
            .unwrap();
    let tls = Arc::new(tls_client(&root_pem));
    let name = rustls_pki_types::ServerName::try_from(ISTIOD_NAME).unwrap();
    let (idle, stalled) =
        support::hostile::idle_and_stalled_handshakes(ca.addr, &tls, &name, 100).await;

    let started = Instant::now();
    let legit = Legit::new(&ca).await;
    legit.certificate().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the agent took {took:?}");
    assert_eq!(
        metric(&ca, "meshca_istio_tls_handshakes_shed_total").await,
        0
    );
    // Exposed, and none has timed out yet (10 s).
    assert_eq!(
        metric(&ca, "meshca_istio_tls_handshakes_timed_out_total").await,
        0
    );
    drop((idle, stalled));
}

/// The legitimate caller: a client certificate from `meshca issue`, its own connection.
#[derive(Clone)]
struct Legit {
    client: IstioCaClient,
    csr: String,
    root_pem: String,
    served: Arc<AtomicU64>,
}

impl Legit {
    async fn new(ca: &IstioCa) -> Self {
        let dir = ca.issue_client_certificate(LEGIT);
        let root_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let identity = ClientIdentity::from_dir(&dir);
        let client = IstioCaClient::connect(ca.addr, ISTIOD_NAME, &root_pem, Some(&identity))
            .await
            .unwrap();
        let csr =
            std::fs::read_to_string(greedy_openssl_csr(ca.work.path(), "legit", P256)).unwrap();
        Self {
            client,
            csr,
            root_pem,
            served: Arc::default(),
        }
    }

    /// One certificate, for the caller's identity only.
    async fn certificate(&self) -> Result<(), Status> {
        let chain = self
            .client
            .clone()
            .create(&self.csr, 3600, None, &[])
            .await?;
        assert_eq!(leaf_uris(&chain), [id(LEGIT).to_string()]);
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Asks for certificates one after the other (a pause between: its connection is never
    /// idle) until stopped; any refusal fails the test.
    fn keep_calling(&self) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let legit = self.clone();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            while !stopping.load(Ordering::Relaxed) {
                legit.certificate().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        });
        Background { stop, task }
    }
}

struct Background {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), Status>>,
}

impl Background {
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .unwrap()
            .expect("the legitimate caller was served throughout");
    }
}

/// The largest VmRSS of a process, sampled every 50 ms, and the first sample.
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let baseline = rss_kib(pid);
            let mut peak = baseline;
            while !stopping.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (baseline, peak.max(rss_kib(pid)))
        });
        Self { stop, task }
    }

    /// The first sample and the peak, in KiB.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn log_lines(ca: &IstioCa) -> Vec<String> {
    ca.daemon.log().lines().map(str::to_owned).collect()
}

/// The value of one series on the admin listener's /metrics.
async fn metric(ca: &IstioCa, series: &str) -> u64 {
    let body = support::envoy::http_get(ca.daemon.admin(), "/metrics")
        .await
        .unwrap()
        .body;
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
        .parse()
        .unwrap()
}

/// The URI SANs of the leaf (the first element of `cert_chain`).
fn leaf_uris(chain: &[String]) -> Vec<String> {
    let leaf = certificates_from_pem(&chain[0]).unwrap().remove(0);
    CertificateInfo::parse(&leaf).unwrap().uri_sans
}

/// Request metadata no agent sends, each with what it is.
fn odd_metadata() -> Vec<(&'static str, Struct)> {
    let string = |s: &str| Value {
        kind: Some(ValueKind::StringValue(s.to_owned())),
    };
    let one = |key: &str, value: Value| Struct {
        fields: BTreeMap::from([(key.to_owned(), value)]),
    };
    let impersonate = |value: Value| one("ImpersonatedIdentity", value);
    let kind = |kind: ValueKind| Value { kind: Some(kind) };
    vec![
        (
            "more fields than allowed",
            Struct {
                fields: (0..33)
                    .map(|i| (format!("{PAYLOAD}-{i}"), string("v")))
                    .collect(),
            },
        ),
        (
            "a huge key with an escape sequence",
            one(
                &format!("\u{1b}[2J{PAYLOAD}{}", "K".repeat(3000)),
                string("v"),
            ),
        ),
        (
            "a huge value under a key with control characters",
            one(
                &format!("\u{1b}]0;{PAYLOAD}\r\n"),
                string(&"v".repeat(2000)),
            ),
        ),
        (
            "ImpersonatedIdentity a number",
            impersonate(kind(ValueKind::NumberValue(1.0))),
        ),
        (
            "ImpersonatedIdentity a boolean",
            impersonate(kind(ValueKind::BoolValue(true))),
        ),
        (
            "ImpersonatedIdentity null",
            impersonate(kind(ValueKind::NullValue(0))),
        ),
        (
            "ImpersonatedIdentity a Struct",
            impersonate(kind(ValueKind::StructValue(one(
                "ImpersonatedIdentity",
                string("spiffe://cluster.local/ns/shop/sa/legit"),
            )))),
        ),
        (
            "ImpersonatedIdentity a list",
            impersonate(kind(ValueKind::ListValue(prost_types::ListValue {
                values: vec![string("spiffe://cluster.local/ns/shop/sa/legit")],
            }))),
        ),
        (
            "a SPIFFE ID with control characters",
            impersonate(string(&format!(
                "spiffe://cluster.local/ns/\u{1b}[31m{PAYLOAD}\r\n/sa/b\u{7}"
            ))),
        ),
        (
            "a SPIFFE ID of control characters, within the value bound",
            impersonate(string(&format!(
                "spiffe://cluster.local/ns/{}",
                "\u{1}".repeat(990)
            ))),
        ),
    ]
}

/// A rustls client trusting `root_pem`, offering h2, without a client certificate.
fn tls_client(root_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates_from_pem(root_pem).unwrap() {
        roots.add(root).unwrap();
    }
    let mut config = support::tls_client_config(roots);
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

async fn tls_connect(
    address: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let name = rustls_pki_types::ServerName::try_from(ISTIOD_NAME).unwrap();
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a connection, but no call.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A TLS connection that has sent the HTTP/2 preface and nothing more.
async fn open_idle_connection(
    address: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut tls = tls_connect(address, config).await?;
    tls.write_all(PREFACE_AND_SETTINGS).await?;
    tls.flush().await?;
    Ok(tls)
}

/// Waits until the server closes `stream` (EOF or an error), reading whatever it sends;
/// returns how long after `since` that was.
async fn closed_after(mut stream: impl tokio::io::AsyncRead + Unpin, since: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection")
}

/// A CreateCertificate call whose body is `message` (raw bytes, gRPC-framed) and then never
/// ends; the status it gets.
async fn endless_call(channel: Channel, token: Option<&str>, message: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let body = tokio_stream::iter([message]).chain(tokio_stream::pending());
    let mut request = tonic::Request::new(body);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::from_static(PATH_CREATE_CERTIFICATE);
    tokio::time::timeout(PATIENCE, grpc.client_streaming(request, path, RawCodec))
        .await
        .expect("an answer without the rest of the body")
        .expect_err("refused")
}

/// Sends raw bytes as gRPC messages; decodes responses as the server encodes them.
struct RawCodec;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = IstioCertificateResponse;
    type Encoder = RawEncoder;
    type Decoder = <SdsCodec<IstioCertificateRequest, IstioCertificateResponse> as Codec>::Decoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        SdsCodec::<IstioCertificateRequest, IstioCertificateResponse>::default().decoder()
    }
}
