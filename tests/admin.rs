//! The admin listener of a real `meshca serve`: `/metrics` after an SDS exchange, `/readyz`
//! following a real OpenBao going away and coming back, logs free of key material, and routes
//! that change state refused without the admin token; and the readiness rule in process,
//! against the fake provider in paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::net::SocketAddr;
use std::time::Duration;

use support::bao::Bao;
use support::daemon::MeshcaServe;
use support::envoy::{free_port, http_get};
use support::eventually;
use support::{SotwClient, channel, node, secrets, tls_of};

/// `meshca serve` with a CA directory of its own, debug logs, SDS in development mode and the
/// admin listener on free ports, and `extra` global arguments.
fn start_daemon(extra: &[String]) -> MeshcaServe {
    MeshcaServe::builder()
        .own_ca_dir()
        .args(["--log-level", "debug"])
        .dev_sds()
        .admin()
        .args(extra)
        .start()
}

/// GET `path` on the daemon's admin port: (status, body).
async fn get(daemon: &MeshcaServe, path: &str) -> (u16, String) {
    let response = http_get(daemon.admin(), path).await.unwrap();
    (response.status, response.body)
}

/// One sample of a Prometheus / OpenMetrics text exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition: the declared type of each family, and every sample.
#[derive(Debug)]
struct Exposition {
    types: std::collections::HashMap<String, String>,
    samples: Vec<Sample>,
}

/// Parses the OpenMetrics text format line by line and panics, naming the line, on anything
/// that is not `# TYPE`/`# HELP`/`# UNIT`, a sample of a declared family with the suffixes its
/// type allows, or the final `# EOF`.
fn parse_exposition(text: &str) -> Exposition {
    let mut types = std::collections::HashMap::new();
    let mut samples = Vec::new();
    let mut ended = false;
    for (number, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", number + 1);
        assert!(!ended, "{at}: after # EOF");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, family) = (parts.next().unwrap(), parts.next().expect(&at));
            let rest = parts.next().unwrap_or("");
            assert!(valid_name(family), "{at}: bad metric name");
            match kind {
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                    ];
                    assert!(known.contains(&rest), "{at}: unknown type");
                    let previous = types.insert(family.to_owned(), rest.to_owned());
                    assert!(previous.is_none(), "{at}: family declared twice");
                }
                "HELP" => {}
                "UNIT" => assert!(family.ends_with(&format!("_{rest}")), "{at}: unit suffix"),
                _ => panic!("{at}: unknown comment"),
            }
            continue;
        }
        let sample = parse_sample(line).unwrap_or_else(|why| panic!("{at}: {why}"));
        let declared = |suffixes: &[&'static str]| {
            suffixes.iter().find_map(|suffix| {
                let family = sample.name.strip_suffix(suffix)?;
                types
                    .get(family)
                    .map(|t| (family.to_owned(), t.clone(), *suffix))
            })
        };
        let (_, kind, suffix) = declared(&["_total", "_bucket", "_count", "_sum", "_created", ""])
            .unwrap_or_else(|| panic!("{at}: sample of an undeclared family"));
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{at}: {suffix:?} in a {kind}");
        if suffix == "_bucket" {
            assert!(sample.label("le").is_some(), "{at}: bucket without le");
        }
        samples.push(sample);
    }
    assert!(ended, "the exposition does not end with # EOF");
    Exposition { types, samples }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{label="value",…} value`
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find("=\"").ok_or("a label without =\"")?;
            let label = &inner[..eq];
            if !valid_name(label) || label.contains(':') {
                return Err(format!("bad label name {label:?}"));
            }
            let mut value = String::new();
            let mut chars = inner[eq + 2..].char_indices();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.to_owned(), value));
            inner = &inner[eq + 2 + close + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .map_err(|e| format!("value {number:?}: {e}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Checks the `meshca_issuance_duration_seconds` series of `result`: cumulative buckets up to
/// `+Inf` equal to `_count`, and returns (count, sum).
fn issuance_histogram(exposition: &Exposition, provider: &str, result: &str) -> (f64, f64) {
    let family = "meshca_issuance_duration_seconds";
    assert_eq!(
        exposition.types.get(family).map(String::as_str),
        Some("histogram")
    );
    let ours = |sample: &&Sample| {
        sample.label("provider") == Some(provider) && sample.label("result") == Some(result)
    };
    let one = |name: String| {
        let found: Vec<&Sample> = exposition
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(ours)
            .collect();
        assert_eq!(found.len(), 1, "{name} {result}: {found:?}");
        found[0].value
    };
    let count = one(format!("{family}_count"));
    let sum = one(format!("{family}_sum"));
    let buckets: Vec<(f64, f64)> = exposition
        .samples
        .iter()
        .filter(|s| s.name == format!("{family}_bucket"))
        .filter(ours)
        .map(|s| {
            let le = match s.label("le").unwrap() {
                "+Inf" => f64::INFINITY,
                bound => bound.parse().unwrap(),
            };
            (le, s.value)
        })
        .collect();
    assert!(buckets.len() >= 10, "{result}: {buckets:?}");
    assert_eq!(buckets.first().unwrap().0, 0.0001, "{buckets:?}");
    assert_eq!(buckets.last().unwrap().0, f64::INFINITY, "{buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "buckets must be ascending and cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap().1, count, "+Inf bucket vs _count");
    assert!(
        sum >= 0.0 && (count > 0.0 || sum == 0.0),
        "{result}: sum {sum}"
    );
    (count, sum)
}

/// The value of the first metric line starting with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One HTTP/1.1 request with `Connection: close` and extra header lines: (status, body).
async fn request(address: SocketAddr, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// A token file (`admin.tokenFile`) in `dir` holding `token` and a newline, as `echo` or
/// `base64` write it.
fn token_file(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

const TOKEN: &str = "admin-test-token-0123456789abcdefghijkl";

/// `meshca rotate leaves …` with the extra global flags `global`.
async fn rotate_leaves(global: &[String], args: &[String]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(global)
        .arg("rotate")
        .arg("leaves")
        .args(args)
        .env_remove("MESHCA_CONFIG")
        .output()
        .await
        .unwrap()
}

/// The defaults: no admin token, so nothing changes state over HTTP (every non-GET route
/// refused, the reason saying how to enable it), and no per-identity metric labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_nothing_changes_state_and_metrics_name_no_workload() {
    let mut daemon = start_daemon(&[]);
    daemon.wait_readyz(200).await;
    let mut stream = SotwClient::open(
        channel(&format!("http://{}", daemon.sds())).await,
        Some(node("bookstore/bookstore-v2")),
        &["default"],
    )
    .await
    .unwrap();
    let response = stream.next().await.unwrap();
    let (chain, _) = tls_of(&secrets(&response.resources)[0]);

    let (status, body) = request(daemon.admin(), "POST", "/rotate/leaves", &[]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.tokenFile"), "{body}");
    // A bearer token is no way in when none is configured.
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, _) = request(daemon.admin(), "POST", "/rotate/leaves", &[&bearer]).await;
    assert_eq!(status, 403);
    // No other method changes anything anywhere.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/rotate/leaves",
            "/rotate",
            "/",
        ] {
            let (status, body) = request(daemon.admin(), method, path, &[]).await;
            assert!(
                (400..500).contains(&status),
                "{method} {path} answered {status}: {body}"
            );
        }
    }
    let done = rotate_leaves(&[], &["--admin".into(), daemon.admin().to_string()]).await;
    let said = String::from_utf8_lossy(&done.stderr);
    assert!(!done.status.success());
    assert!(
        said.contains("refused: 403") && said.contains("admin.tokenFile"),
        "{said}"
    );

    // Nothing was re-issued.
    let (_, text) = get(&daemon, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "meshca_certificates_renewed_total{provider=\"tresor\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric(&text, "meshca_admin_unauthorized_total").unwrap() >= 3.0,
        "{text}"
    );
    drop(stream);
    assert!(!daemon.log().contains("forced re-issue requested"));

    // Metrics: the aggregates, and no series naming a workload.
    parse_exposition(&text);
    assert!(!text.contains("bookstore"), "a workload is named:\n{text}");
    assert!(!text.contains("identity="), "{text}");
    assert_eq!(
        metric(
            &text,
            "meshca_cached_certificates_by_purpose{purpose=\"default\"}"
        ),
        Some(1.0),
        "{text}"
    );
    let expiry = chain
        .leaf_info()
        .unwrap()
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert_eq!(
        metric(
            &text,
            "meshca_certificate_expiry_earliest_timestamp_seconds{purpose=\"default\"}"
        ),
        Some(expiry),
        "{text}"
    );
}

/// A token that is too short or unreadable stops the daemon at start, naming the setting.
#[tokio::test]
async fn an_unusable_admin_token_file_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let short = token_file(dir.path(), "short");
    for (file, needle) in [
        (short, "fewer than 32"),
        (
            dir.path().join("absent"),
            "cannot read the admin token file",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
            .arg("--ca-dir")
            .arg(dir.path().join("ca"))
            .args([
                "--set",
                "sds.auth=development",
                "--set",
                "sds.listen=127.0.0.1:0",
            ])
            .args(["--set", "admin.listen=127.0.0.1:0"])
            .arg("--set")
            .arg(format!("admin.tokenFile={}", file.display()))
            .arg("serve")
            .env_remove("MESHCA_CONFIG")
            .output()
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{said}");
        assert!(
            said.contains(needle) && said.contains("admin.tokenFile"),
            "{said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_of_a_tresor_daemon() {
    let tokens = tempfile::tempdir().unwrap();
    let token = token_file(tokens.path(), TOKEN);
    let with_token = [
        "--set".to_owned(),
        format!("admin.tokenFile={}", token.display()),
    ];
    let mut daemon = start_daemon(&[
        with_token[0].clone(),
        with_token[1].clone(),
        "--set".to_owned(),
        "admin.perIdentityMetrics=true".to_owned(),
    ]);
    daemon.wait_readyz(200).await;
    assert_eq!(get(&daemon, "/healthz").await, (200, "ok\n".to_owned()));

    let mut stream = SotwClient::open(
        channel(&format!("http://{}", daemon.sds())).await,
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
    let text = eventually(
        Duration::from_secs(20),
        "the ACK to be counted in /metrics",
        || async {
            let (status, text) = get(&daemon, "/metrics").await;
            assert_eq!(status, 200);
            text
        },
        |text| metric(text, "meshca_sds_acks_total") == Some(1.0),
    )
    .await;
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

    // Without the token, or with another one, nothing happens.
    let (status, body) = request(daemon.admin(), "POST", "/rotate/leaves", &[]).await;
    assert_eq!(status, 401, "{body}");
    let wrong = "Authorization: Bearer admin-test-token-0123456789abcdefghijkX";
    let (status, _) = request(daemon.admin(), "POST", "/rotate/leaves", &[wrong]).await;
    assert_eq!(status, 401);
    let no_token = rotate_leaves(&[], &["--admin".into(), daemon.admin().to_string()]).await;
    let said = String::from_utf8_lossy(&no_token.stderr);
    assert!(!no_token.status.success());
    assert!(
        said.contains("refused: 401") && said.contains("--token-file"),
        "{said}"
    );

    // `meshca rotate leaves` reads admin.tokenFile and asks the daemon to re-issue now; the
    // stream gets the new one.
    let admin = daemon.admin().to_string();
    let done = rotate_leaves(
        &with_token,
        &[
            "--identity".into(),
            "bookstore/bookstore-v2".into(),
            "--admin".into(),
            admin.clone(),
        ],
    )
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
    // The log says who asked: the remote address and the token's fingerprint, never the token.
    let log = daemon.log();
    let asked = log
        .lines()
        .find(|l| l.contains("forced re-issue requested"))
        .unwrap_or_else(|| panic!("no rotation line:\n{log}"));
    let fingerprint = meshca::admin::AdminToken::read(&token)
        .unwrap()
        .fingerprint();
    assert!(
        asked.contains("remote=127.0.0.1:") && asked.contains(&fingerprint),
        "{asked}"
    );
    assert!(!log.contains(TOKEN), "the admin token is in the log");
    let pushed = stream.next().await.unwrap();
    stream.ack(&pushed, &["default"]).await;
    let (renewed, _) = tls_of(&secrets(&pushed.resources)[0]);
    assert_ne!(
        renewed.leaf_info().unwrap().serial,
        chain.leaf_info().unwrap().serial
    );

    // Two issuances (the first and the forced one), both successful and timed.
    let (_, text) = get(&daemon, "/metrics").await;
    let exposition = parse_exposition(&text);
    let issued = metric(
        &text,
        "meshca_certificates_issued_total{provider=\"tresor\"}",
    )
    .unwrap();
    let renewed = metric(
        &text,
        "meshca_certificates_renewed_total{provider=\"tresor\"}",
    )
    .unwrap();
    assert_eq!(issued + renewed, 2.0, "{text}");
    let (count, sum) = issuance_histogram(&exposition, "tresor", "success");
    assert_eq!(count, 2.0, "{text}");
    assert!(sum > 0.0 && sum < 2.0 * 30.0, "{text}");
    assert_eq!(
        issuance_histogram(&exposition, "tresor", "failure"),
        (0.0, 0.0)
    );
    assert_eq!(
        issuance_histogram(&exposition, "tresor", "rejected"),
        (0.0, 0.0)
    );
    assert!(
        text.contains("# UNIT meshca_issuance_duration_seconds seconds"),
        "{text}"
    );

    let refused = rotate_leaves(
        &with_token,
        &[
            "--identity".into(),
            "not an identity".into(),
            "--admin".into(),
            admin,
        ],
    )
    .await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refused: 400"));
    let nobody = rotate_leaves(
        &with_token,
        &["--admin".into(), format!("127.0.0.1:{}", free_port())],
    )
    .await;
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
    let mut daemon = start_daemon(&args);
    daemon.wait_readyz(200).await;

    // Vault goes away while nothing is cached: unready, saying why.
    bao.kill();
    let body = daemon.wait_readyz(503).await;
    assert!(body.contains("provider vault unavailable"), "{body}");
    assert!(body.contains("and no certificate cached yet"), "{body}");
    let (_, text) = get(&daemon, "/metrics").await;
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
        channel(&format!("http://{}", daemon.sds())).await,
        Some(node("bookstore/bookstore-v2")),
        &["default"],
    )
    .await
    .unwrap();
    stream.next().await.unwrap();
    bao.kill();
    eventually(
        Duration::from_secs(20),
        "the outage to be noticed (meshca_provider_healthy 0)",
        || async { get(&daemon, "/metrics").await.1 },
        |text| metric(text, "meshca_provider_healthy{provider=\"vault\"}") == Some(0.0),
    )
    .await;
    assert_eq!(get(&daemon, "/readyz").await.0, 200, "{}", daemon.log());
    assert!(
        !daemon.log().contains(&bao.root_token),
        "the Vault token leaked"
    );
}

/// `/readyz` of `state`: (status, body).
async fn readyz(state: &std::sync::Arc<meshca::admin::AdminState>) -> (u16, String) {
    use tower::ServiceExt as _;
    let response = meshca::admin::router(state.clone())
        .oneshot(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The readiness rule (docs/OPERATIONS.md): ready while the daemon can serve a valid
/// certificate. With the fake provider, whose health check fails in `Mode::Fail` only, and
/// health checks every 5 s of paused time.
#[tokio::test(start_paused = true)]
async fn readiness_says_whether_a_valid_certificate_can_be_served() {
    use meshca::admin::{AdminSettings, AdminState, ProviderHealth, spawn_health_checks};
    use meshca::cache::{CacheSettings, CertificateCache, Purpose};
    use meshca_test_support::fake_provider::{FakeProvider, Mode};
    use std::sync::Arc;

    const HOUR: Duration = Duration::from_secs(3600);
    let check = Duration::from_secs(5);
    let clock = meshca::time::TokioClock::new();
    let (provider, mut calls) = FakeProvider::new(clock);
    let cache = Arc::new(CertificateCache::new(
        provider.clone(),
        CacheSettings {
            lifetime: HOUR,
            backoff_max: Duration::from_secs(30 * 60),
            ..CacheSettings::default()
        },
        Arc::new(clock),
    ));
    cache.refresh_trust_bundle().await.unwrap();
    let health = Arc::new(ProviderHealth::default());
    let checks = spawn_health_checks(cache.clone(), health.clone(), check, check);
    let state = AdminState::new(
        cache.clone(),
        "cluster.local".parse().unwrap(),
        Arc::default(),
        health,
        AdminSettings::default(),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        readyz(&state).await.0,
        200,
        "nothing cached, the provider healthy"
    );

    // Nothing cached and the provider down: unready, and the body says exactly that.
    provider.set_mode(Mode::Fail);
    tokio::time::sleep(check).await;
    let (status, body) = readyz(&state).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "not ready: provider fake unavailable (fake is unavailable: connection refused) and no \
         certificate cached yet\n"
    );

    // Certificates cached: an outage leaves the daemon ready while one of them is valid.
    provider.set_mode(Mode::Good);
    tokio::time::sleep(check).await;
    let keys: Vec<_> = (0..2)
        .map(|i| meshca_test_support::cert_key(&format!("ready/sa-{i}"), Purpose::Default))
        .collect();
    let mut receivers = Vec::new();
    for key in &keys {
        receivers.push(cache.subscribe(key.clone()).await.unwrap());
    }
    assert_eq!(readyz(&state).await.0, 200);
    provider.set_mode(Mode::Fail);
    tokio::time::sleep(check).await;
    assert_eq!(readyz(&state).await.0, 200, "valid certificates are served");

    // Longer than a lifetime: every cached certificate has expired.
    tokio::time::sleep(2 * HOUR).await;
    let (status, body) = readyz(&state).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("all 2 cached certificate(s) have expired")
            && body.contains("provider fake unavailable"),
        "{body}"
    );

    // The backend answers its health check but its chains are refused (a misconfigured
    // role, say): the health check alone would call this ready; nothing valid can be served.
    // Its recovery woke the renewals, which failed again and back off.
    while calls.try_recv().is_ok() {}
    provider.set_mode(Mode::WrongSan);
    tokio::time::sleep(check + meshca::cache::RECOVERY_WINDOW + Duration::from_secs(1)).await;
    let refused = std::iter::from_fn(|| calls.try_recv().ok())
        .filter(|call| call.mode == Mode::WrongSan)
        .count();
    assert!(refused >= 2, "both renewals were retried: {refused}");
    let (status, body) = readyz(&state).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("all 2 cached certificate(s) have expired")
            && body.contains("provider fake passes its health check"),
        "{body}"
    );

    // Fixed while the health check kept passing: the next check probes one renewal, whose
    // success retries the other at once; ready again within a check and the window.
    provider.set_mode(Mode::Good);
    tokio::time::sleep(check + meshca::cache::RECOVERY_WINDOW).await;
    assert_eq!(readyz(&state).await.0, 200);
    for rx in &mut receivers {
        assert!(rx.has_changed().unwrap(), "renewed after the recovery");
    }
    checks.abort();
}
