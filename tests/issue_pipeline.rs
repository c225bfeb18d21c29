//! `meshca issue` goes through the daemon's issuance pipeline: `extraTrustedRoots` and
//! `renewal.issueTimeout` apply to it as they do to the daemon. The backend is a minimal fake
//! Vault (token lookup, CA chain, `pki/sign`) in this process, so that it can sign under a root
//! its own CA chain does not hold, or never answer; `meshca issue` is the real binary.
#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use meshca_provider::TrustBundle;
use serde_json::{Value, json};

/// The fake Vault's state.
struct FakeVault {
    /// What `cert/ca_chain` answers: a root that did not sign what `sign` returns.
    advertised_root_pem: String,
    /// The CA that really signs.
    signer: rcgen::Issuer<'static, rcgen::KeyPair>,
    signer_root_pem: String,
    /// `sign` never answers.
    hang: AtomicBool,
    signs: AtomicUsize,
}

fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let pem = params.self_signed(&key).unwrap().pem();
    (rcgen::Issuer::new(params, key), pem)
}

async fn handle(State(vault): State<Arc<FakeVault>>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path();
    let answer = |data: Value| (StatusCode::OK, json!({ "data": data }).to_string());
    if path.ends_with("/auth/token/lookup-self") {
        return answer(json!({ "ttl": 0, "renewable": false })).into_response();
    }
    // Answers shaped as Vault and OpenBao write them (the fields vaultrs's response types
    // require: providers/vault/src/openbao-2.7.2/ holds real ones).
    if path.ends_with("/cert/ca_chain") {
        return answer(json!({
            "certificate": vault.advertised_root_pem,
            "ca_chain": vault.advertised_root_pem,
            "revocation_time": 0,
            "revocation_time_rfc3339": "",
        }))
        .into_response();
    }
    if path.contains("/sign/") {
        vault.signs.fetch_add(1, Ordering::SeqCst);
        if vault.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let request: Value = serde_json::from_slice(&body).unwrap();
        let csr = request["csr"].as_str().unwrap();
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr).unwrap();
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(1);
        csr.params.not_after = now + time::Duration::hours(1);
        csr.params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = csr.signed_by(&vault.signer).unwrap();
        let serial = vault.signs.load(Ordering::SeqCst);
        return answer(json!({
            "certificate": leaf.pem(),
            "issuing_ca": vault.signer_root_pem,
            "ca_chain": [vault.signer_root_pem],
            "serial_number": format!("00:00:00:{serial:02x}"),
            "expiration": (now + time::Duration::hours(1)).unix_timestamp(),
        }))
        .into_response();
    }
    // Anything else (the role): not readable with this token, which meshca tolerates.
    (
        StatusCode::FORBIDDEN,
        json!({ "errors": ["permission denied"] }).to_string(),
    )
        .into_response()
}

/// Starts the fake Vault; returns it and its port.
async fn fake_vault() -> (Arc<FakeVault>, u16) {
    let (_, advertised_root_pem) = ca("the root Vault's CA chain names");
    let (signer, signer_root_pem) = ca("a root rotated outside meshca");
    let vault = Arc::new(FakeVault {
        advertised_root_pem,
        signer,
        signer_root_pem,
        hang: AtomicBool::new(false),
        signs: AtomicUsize::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = Router::new().fallback(handle).with_state(vault.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (vault, port)
}

/// Runs `meshca issue --identity shop/web --out-dir <dir>/out` against the fake Vault, with
/// `extra` settings; returns the output and how long it took.
async fn issue(
    dir: &std::path::Path,
    port: u16,
    extra: &[String],
) -> (std::process::Output, Duration) {
    let mut args: Vec<String> = [
        "certificateProvider.kind=vault",
        "vault.protocol=http",
        "vault.host=127.0.0.1",
        "vault.token=fake-token",
        "vault.requestTimeout=60s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("vault.port={port}")])
    .chain(extra.iter().cloned())
    .flat_map(|setting| ["--set".to_owned(), setting])
    .collect();
    let out = dir.join("out");
    args.extend(["issue", "--identity", "shop/web", "--out-dir"].map(str::to_owned));
    args.push(out.display().to_string());
    let ca_dir = dir.join("ca");
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        support::cli::meshca(&ca_dir, &args)
    })
    .await
    .unwrap();
    (output, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshca_issue_validates_with_the_extra_trusted_roots() {
    let (vault, port) = fake_vault().await;
    let dir = tempfile::tempdir().unwrap();

    // Without the signing root trusted, the chain does not verify: nothing is written.
    let (output, _) = issue(dir.path(), port, &[]).await;
    let stderr = support::cli::failed(&output);
    assert!(stderr.contains("unusable certificate"), "{stderr}");
    assert!(stderr.contains("does not verify"), "{stderr}");
    assert!(!dir.path().join("out").join("cert.pem").exists());

    // With it in extraTrustedRoots, as the daemon would accept it.
    let roots = dir.path().join("extra.pem");
    std::fs::write(&roots, &vault.signer_root_pem).unwrap();
    let (output, _) = issue(
        dir.path(),
        port,
        &[format!("extraTrustedRoots={}", roots.display())],
    )
    .await;
    support::cli::ok(&output);
    let out = dir.path().join("out");
    let written =
        TrustBundle::from_pem(&std::fs::read_to_string(out.join("ca.pem")).unwrap()).unwrap();
    let advertised = TrustBundle::from_pem(&vault.advertised_root_pem).unwrap();
    let extra = TrustBundle::from_pem(&vault.signer_root_pem).unwrap();
    assert_eq!(
        written.roots(),
        [advertised.roots()[0].clone(), extra.roots()[0].clone()],
        "ca.pem: Vault's root, then the extra root"
    );
    let verified = support::cli::openssl(&[
        "verify",
        "-CAfile",
        roots.to_str().unwrap(),
        out.join("cert.pem").to_str().unwrap(),
    ]);
    assert!(verified.trim().ends_with(": OK"), "{verified}");
    assert_eq!(vault.signs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshca_issue_gives_up_after_the_issue_timeout() {
    let (vault, port) = fake_vault().await;
    vault.hang.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let (output, took) = issue(dir.path(), port, &["renewal.issueTimeout=2s".to_owned()]).await;
    let stderr = support::cli::failed(&output);
    assert!(
        stderr.contains("vault did not answer within 2s while issuing a certificate"),
        "{stderr}"
    );
    assert!(stderr.contains("renewal.issueTimeout"), "{stderr}");
    assert_eq!(vault.signs.load(Ordering::SeqCst), 1);
    // Well before vault.requestTimeout (60s) would have ended it.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!dir.path().join("out").join("cert.pem").exists());
}
