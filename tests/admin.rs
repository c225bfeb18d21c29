//! The admin listener of a real `meshca serve`: `/metrics` after an SDS exchange, `/readyz`
//! following a real OpenBao going away and coming back, and logs free of key material.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
#[path = "../providers/vault/tests/support/mod.rs"]
mod vault_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::envoy::{free_port, http_get};
use support::{SotwClient, channel, node, secrets, tls_of};
use vault_support::Bao;

/// `meshca serve` as a child process, killed on drop.
struct Daemon {
    child: std::process::Child,
    log: std::path::PathBuf,
    admin: SocketAddr,
    sds: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(extra: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("meshca.log");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let sds: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
            .arg("--ca-dir")
            .arg(dir.path().join("ca"))
            .args(["--set", "sds.auth=development", "--log-level", "debug"])
            .args(["--set", &format!("sds.listen={sds}")])
            .args(["--set", &format!("admin.listen={admin}")])
            .args(extra)
            .arg("serve")
            .env("NO_COLOR", "1")
            .env_remove("MESHCA_CONFIG")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            admin,
            sds,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` on the admin port: (status, body).
    async fn get(&self, path: &str) -> (u16, String) {
        let response = http_get(self.admin, path).await.unwrap();
        (response.status, response.body)
    }

    /// Waits until `/readyz` answers `status`.
    async fn wait_readyz(&self, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(response) = http_get(self.admin, "/readyz").await
                && response.status == status
            {
                return response.body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never answered {status}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first metric line starting with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_of_a_tresor_daemon() {
    let daemon = Daemon::start(&[]);
    daemon.wait_readyz(200).await;
    assert_eq!(daemon.get("/healthz").await, (200, "ok\n".to_owned()));

    let mut stream = SotwClient::open(
        channel(&format!("http://{}", daemon.sds)).await,
        Some(node("bookstore/bookstore-v2")),
        &["default"],
    )
    .await
    .unwrap();
    let response = stream.next().await.unwrap();
    stream.ack(&response, &["default"]).await;
    let (chain, key) = tls_of(&secrets(&response.resources)[0]);
    let not_after = chain.leaf_info().unwrap().not_after;

    // The ACK is counted asynchronously: wait for it rather than sleeping.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = daemon.get("/metrics").await;
        assert_eq!(status, 200);
        if metric(&text, "meshca_sds_acks_total") == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no ACK counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expect = |series: &str, value: f64| {
        assert_eq!(metric(&text, series), Some(value), "{series} in:\n{text}");
    };
    // The SDS endpoint's own certificate is not issued in development mode: one issuance.
    expect("meshca_certificates_issued_total{provider=\"tresor\"}", 1.0);
    expect("meshca_issuance_failures_total{provider=\"tresor\"}", 0.0);
    expect("meshca_sds_streams ", 1.0);
    expect("meshca_sds_nacks_total", 0.0);
    expect("meshca_provider_healthy{provider=\"tresor\"}", 1.0);
    let expiry = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    expect(
        "meshca_certificate_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/bookstore/sa/bookstore-v2\",purpose=\"default\"}",
        expiry,
    );
    assert!(
        text.contains("meshca_ca_expiry_timestamp_seconds{subject=\"O=meshca, CN=meshca root\"}")
            || text.contains(
                "meshca_ca_expiry_timestamp_seconds{subject=\"CN=meshca root, O=meshca\"}"
            ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE meshca_certificates_issued counter"),
        "{text}"
    );

    // `meshca rotate leaves` asks the daemon to re-issue now; the stream gets the new one.
    let rotate = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
            .arg("rotate")
            .arg("leaves")
            .args(args)
            .env_remove("MESHCA_CONFIG")
            .output()
            .await
            .unwrap()
    };
    let admin = daemon.admin.to_string();
    let done = rotate(vec![
        "--identity".into(),
        "bookstore/bookstore-v2".into(),
        "--admin".into(),
        admin.clone(),
    ])
    .await;
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        said.contains(
            "re-issuing 1 certificate(s) of spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"
        ),
        "{said}"
    );
    let pushed = stream.next().await.unwrap();
    stream.ack(&pushed, &["default"]).await;
    let (renewed, _) = tls_of(&secrets(&pushed.resources)[0]);
    assert_ne!(
        renewed.leaf_info().unwrap().serial,
        chain.leaf_info().unwrap().serial
    );

    let refused = rotate(vec![
        "--identity".into(),
        "not an identity".into(),
        "--admin".into(),
        admin,
    ])
    .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refused: 400"));
    let nobody = rotate(vec!["--admin".into(), format!("127.0.0.1:{}", free_port())]).await;
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("is `meshca serve` running there"));

    // Logs at debug level carry no key material: no PEM key block, and none of the served
    // key's bytes (base64 of its PKCS#8 body).
    drop(stream);
    let log = daemon.log();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    let key_pem = key.private_key_pem();
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !log.contains(line),
            "a line of the served key is in the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_vault_when_nothing_valid_is_cached() {
    let mut bao = Bao::persistent().await;
    bao.init_and_unseal().await;
    bao.pki("pki", "meshca admin root").await;
    let settings = [
        "certificateProvider.kind=vault".to_owned(),
        "vault.host=127.0.0.1".to_owned(),
        format!("vault.port={}", bao.port),
        format!("vault.token={}", bao.root_token),
    ];
    let args: Vec<String> = settings
        .iter()
        .flat_map(|s| ["--set".to_owned(), s.clone()])
        .collect();
    let daemon = Daemon::start(&args);
    daemon.wait_readyz(200).await;

    // Vault goes away while nothing is cached: unready, saying why.
    bao.kill();
    let body = daemon.wait_readyz(503).await;
    assert!(body.contains("provider vault unavailable"), "{body}");
    assert!(body.contains("no valid certificate cached"), "{body}");
    let (_, text) = daemon.get("/metrics").await;
    assert_eq!(
        metric(&text, "meshca_provider_healthy{provider=\"vault\"}"),
        Some(0.0)
    );

    // It comes back: ready again without a restart.
    bao.restart().await;
    bao.unseal().await;
    daemon.wait_readyz(200).await;

    // With a valid certificate cached, an outage does not make the daemon unready.
    let mut stream = SotwClient::open(
        channel(&format!("http://{}", daemon.sds)).await,
        Some(node("bookstore/bookstore-v2")),
        &["default"],
    )
    .await
    .unwrap();
    stream.next().await.unwrap();
    bao.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = daemon.get("/metrics").await;
        if metric(&text, "meshca_provider_healthy{provider=\"vault\"}") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the outage was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(daemon.get("/readyz").await.0, 200, "{}", daemon.log());
    assert!(
        !daemon.log().contains(&bao.root_token),
        "the Vault token leaked"
    );
}
