//! A real Envoy for end-to-end tests: found via `MESHCA_ENVOY` or `<workspace>/.tools/bin/envoy`
//! (installed by `scripts/install-tools.sh envoy`), configured from the bootstrap templates in
//! `deploy/examples/`, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::free_port;
use crate::{PATIENCE, eventually_ok};

/// The Envoy binary, or `None` (with a note on stderr) when it is not installed. With `CI=true`
/// a missing Envoy fails the test instead: CI must run the end-to-end tests.
pub fn binary() -> Option<PathBuf> {
    let path = match std::env::var_os("MESHCA_ENVOY") {
        Some(path) => PathBuf::from(path),
        None => crate::workspace_root().join(".tools/bin/envoy"),
    };
    if path.is_file() {
        return Some(path);
    }
    crate::tools::missing(&format!(
        "Envoy not found at {}: run scripts/install-tools.sh envoy or set MESHCA_ENVOY",
        path.display()
    ))
}

/// A bootstrap from `deploy/examples/<template>`, optionally with the `meshca-sds` cluster
/// replaced by the one in `deploy/examples/<sds_cluster>`, with `${NAME}` placeholders filled.
pub fn bootstrap(template: &str, sds_cluster: Option<&str>, values: &[(&str, String)]) -> String {
    let examples = crate::workspace_root().join("deploy/examples");
    let mut text = std::fs::read_to_string(examples.join(template)).unwrap();
    if let Some(snippet) = sds_cluster {
        let replacement = std::fs::read_to_string(examples.join(snippet)).unwrap();
        let begin = "  # --- meshca-sds cluster ---";
        let end = "  # --- end meshca-sds cluster ---";
        let start = text
            .find(begin)
            .expect("template has no meshca-sds cluster marker");
        let stop = text.find(end).expect("template has no end marker") + end.len();
        text.replace_range(start..stop, replacement.trim_end());
    }
    for (name, value) in values {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = text.find("${") {
        panic!(
            "unfilled placeholder in {template}: {}",
            &text[at..(at + 40).min(text.len())]
        );
    }
    text
}

/// The client's identity in the two-Envoy tests (`ns/client`, default trust domain).
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/ns/sa/client";

/// The inbound (server-side) bootstrap for `ns/server` listening on `listen`, admitting only
/// `allowed_peer`, fed by meshca SDS on `sds_port` (or by the `meshca-sds` cluster snippet
/// `cluster.0` with its extra placeholders `cluster.1`).
pub fn inbound_bootstrap(
    sds_port: u16,
    listen: u16,
    allowed_peer: &str,
    cluster: Option<(&str, &[(&str, String)])>,
) -> String {
    proxy_bootstrap(
        "envoy-inbound.yaml",
        "ns/server",
        sds_port,
        listen,
        &[("ALLOWED_PEER", allowed_peer.to_owned())],
        cluster,
    )
}

/// The outbound (client-side) bootstrap for `node` calling `upstream_identity` (`<ns>/<sa>`)
/// at `upstream`, listening for plain HTTP on `listen`.
pub fn outbound_bootstrap(
    node: &str,
    upstream_identity: &str,
    sds_port: u16,
    listen: u16,
    upstream: u16,
    cluster: Option<(&str, &[(&str, String)])>,
) -> String {
    proxy_bootstrap(
        "envoy-outbound.yaml",
        node,
        sds_port,
        listen,
        &[
            ("UPSTREAM_PORT", upstream.to_string()),
            ("UPSTREAM_IDENTITY", upstream_identity.to_owned()),
        ],
        cluster,
    )
}

/// `template` for `node` listening on `listen`, its admin on a free port, fed by meshca SDS on
/// `sds_port` (or the `cluster` snippet), with the template's own `values`.
fn proxy_bootstrap(
    template: &str,
    node: &str,
    sds_port: u16,
    listen: u16,
    values: &[(&str, String)],
    cluster: Option<(&str, &[(&str, String)])>,
) -> String {
    let mut all = vec![
        ("NODE_ID", node.to_owned()),
        ("ADMIN_PORT", "0".to_owned()),
        ("LISTEN_PORT", listen.to_string()),
        ("SDS_PORT", sds_port.to_string()),
    ];
    all.extend_from_slice(values);
    all.extend(cluster.map(|c| c.1.to_vec()).unwrap_or_default());
    bootstrap(template, cluster.map(|c| c.0), &all)
}

/// An inbound Envoy for `ns/server` that admits only [`CLIENT_ID`].
pub fn inbound(
    binary: &Path,
    sds_port: u16,
    listen: u16,
    cluster: Option<(&str, &[(&str, String)])>,
) -> Envoy {
    Envoy::start(
        binary,
        "server",
        &inbound_bootstrap(sds_port, listen, CLIENT_ID, cluster),
    )
}

/// An outbound Envoy for `node` calling `upstream_identity` at `upstream`.
pub fn outbound(
    binary: &Path,
    node: &str,
    upstream_identity: &str,
    sds_port: u16,
    listen: u16,
    upstream: u16,
    cluster: Option<(&str, &[(&str, String)])>,
) -> Envoy {
    Envoy::start(
        binary,
        node,
        &outbound_bootstrap(node, upstream_identity, sds_port, listen, upstream, cluster),
    )
}

/// A server Envoy (`ns/server`, admitting only [`CLIENT_ID`]) and a client Envoy (`ns/client`)
/// calling it over mTLS, both fed by meshca SDS on loopback `sds_port`, both ready.
pub struct MtlsPair {
    pub server: Envoy,
    pub client: Envoy,
    pub server_port: u16,
    /// Where the client Envoy takes plain HTTP requests for the server.
    pub client_port: u16,
}

impl MtlsPair {
    pub async fn start(binary: &Path, sds_port: u16) -> Self {
        Self::start_with(binary, sds_port, None, |config| config).await
    }

    /// [`MtlsPair::start`] with the server's `meshca-sds` cluster replaced (see
    /// [`inbound_bootstrap`]) and the client's bootstrap rewritten by `client_config`.
    pub async fn start_with(
        binary: &Path,
        sds_port: u16,
        server_cluster: Option<(&str, &[(&str, String)])>,
        client_config: impl FnOnce(String) -> String,
    ) -> Self {
        let server_port = free_port();
        let server = inbound(binary, sds_port, server_port, server_cluster);
        let client_port = free_port();
        let client = Envoy::start(
            binary,
            "ns/client",
            &client_config(outbound_bootstrap(
                "ns/client",
                "ns/server",
                sds_port,
                client_port,
                server_port,
                None,
            )),
        );
        server.wait_ready().await;
        client.wait_ready().await;
        Self {
            server,
            client,
            server_port,
            client_port,
        }
    }
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

/// A running Envoy process.
pub struct Envoy {
    pub name: String,
    pub admin: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `config` and waits until its admin endpoint is up (not until it is
    /// ready: see [`Envoy::wait_ready`]).
    pub fn start(binary: &Path, name: &str, config: &str) -> Self {
        Self::spawn(binary, name, config, None)
    }

    /// [`Envoy::start`] as the user and group `uid` (through `setpriv`; the test runs as root),
    /// for tests where who the proxy is matters (Unix socket peer credentials).
    pub fn start_as_user(binary: &Path, name: &str, config: &str, uid: u32) -> Self {
        Self::spawn(binary, name, config, Some(uid))
    }

    fn spawn(binary: &Path, name: &str, config: &str, uid: Option<u32>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
        }
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let base_id = (std::process::id() % 10_000) * 100 + BASE_ID.fetch_add(1, Ordering::Relaxed);
        let mut command = match uid {
            Some(uid) => {
                let mut setpriv = Command::new("setpriv");
                setpriv
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(binary);
                setpriv
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("-c")
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .args(["--base-id", &base_id.to_string()])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--log-level", "info", "--concurrency", "1"])
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut envoy = Self {
            name: name.to_owned(),
            admin: "127.0.0.1:1".parse().unwrap(),
            child,
            log,
            _dir: dir,
        };
        let what = format!("{name}: Envoy to write its admin address");
        let admin = crate::eventually_blocking(
            PATIENCE,
            &what,
            || {
                if let Ok(Some(status)) = envoy.child.try_wait() {
                    panic!("{name}: Envoy exited with {status}:\n{}", envoy.log_tail());
                }
                let address = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|text| text.trim().parse::<SocketAddr>().ok());
                (address, envoy.log_tail())
            },
            |(address, _)| address.is_some(),
        );
        envoy.admin = admin.0.unwrap();
        envoy
    }

    /// Waits until `/ready` says LIVE: every listener and cluster has its secrets (with
    /// `initial_fetch_timeout: 0s` Envoy waits for SDS before it is ready).
    pub async fn wait_ready(&self) {
        let what = format!("{} to become ready", self.name);
        eventually_ok(PATIENCE, &what, || async {
            match http_get(self.admin, "/ready").await {
                Ok(response) if response.status == 200 => Ok(()),
                Ok(response) => Err(format!("/ready {}:\n{}", response.status, self.log_tail())),
                Err(e) => Err(format!("{e}:\n{}", self.log_tail())),
            }
        })
        .await;
    }

    /// `/certs` as JSON.
    pub async fn certs(&self) -> serde_json::Value {
        let response = http_get(self.admin, "/certs").await.unwrap();
        assert_eq!(response.status, 200);
        serde_json::from_str(&response.body).unwrap()
    }

    /// The serial numbers (lowercase hex, no leading zeros) of every leaf Envoy holds.
    pub async fn leaf_serials(&self) -> Vec<String> {
        let certs = self.certs().await;
        let mut serials = Vec::new();
        for entry in certs["certificates"].as_array().into_iter().flatten() {
            for cert in entry["cert_chain"].as_array().into_iter().flatten() {
                if let Some(serial) = cert["serial_number"].as_str() {
                    serials.push(normalize_serial(serial));
                }
            }
        }
        serials
    }

    /// Waits until Envoy holds a leaf with `serial`.
    pub async fn wait_for_serial(&self, serial: &str) {
        let wanted = normalize_serial(serial);
        let what = format!("{} to present serial {wanted}", self.name);
        eventually_ok(PATIENCE, &what, || async {
            let held = self.leaf_serials().await;
            if held.contains(&wanted) {
                Ok(())
            } else {
                Err(format!("holds {held:?}:\n{}", self.log_tail()))
            }
        })
        .await;
    }

    /// The last lines of Envoy's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn normalize_serial(serial: &str) -> String {
    let lower = serial.to_ascii_lowercase().replace(':', "");
    let trimmed = lower.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`.
pub async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(PATIENCE, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP exchange timed out")
        })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad response: {head}"),
            )
        })?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Rewrites the outbound bootstrap's upstream validation context (`validation_context_sds_secret_config`)
/// into a `combined_validation_context`: the bundle from the SDS secret `bundle_name` plus a
/// static exact URI-SAN matcher for `peer_uri`. This is how a proxy accepts a peer whose SPIFFE
/// ID is in another trust domain than its meshca's: `root-cert-for-mtls-outbound:<ns>/<sa>`
/// names the peer in meshca's own trust domain.
pub fn with_peer_matcher(config: &str, bundle_name: &str, peer_uri: &str) -> String {
    use serde_yaml::{Mapping, Value};
    let mut doc: Value = serde_yaml::from_str(config).unwrap();
    let common = &mut doc["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"];
    let Value::Mapping(common) = common else {
        panic!("the outbound bootstrap's first cluster has no common_tls_context");
    };
    let mut sds = common
        .remove("validation_context_sds_secret_config")
        .expect("the outbound bootstrap names a validation_context_sds_secret_config");
    sds["name"] = Value::String(bundle_name.to_owned());
    let matcher: Value = serde_yaml::from_str(&format!(
        "match_typed_subject_alt_names:\n- san_type: URI\n  matcher: {{ exact: \"{peer_uri}\" }}\n"
    ))
    .unwrap();
    let mut combined = Mapping::new();
    combined.insert("default_validation_context".into(), matcher);
    combined.insert("validation_context_sds_secret_config".into(), sds);
    common.insert(
        "combined_validation_context".into(),
        Value::Mapping(combined),
    );
    serde_yaml::to_string(&doc).unwrap()
}

/// Makes a client Envoy's bootstrap open a new upstream connection for every request and never
/// resume a TLS session, so every request is a full handshake against the current certificates.
pub fn fresh_handshake_per_request(config: String) -> String {
    let cluster = "  - name: upstream\n    type: STATIC\n";
    let tls = "UpstreamTlsContext\n";
    assert!(config.contains(cluster) && config.contains(tls));
    // The `upstream` cluster comes first in envoy-outbound.yaml, so the first TLS context is
    // its own, not the `meshca-sds` cluster's when that one speaks mTLS.
    assert!(config.find(tls) > config.find(cluster));
    config
        .replacen(
            cluster,
            &format!(
                "{cluster}    typed_extension_protocol_options:\n      \
                 envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
                 \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
                 common_http_protocol_options: {{ max_requests_per_connection: 1 }}\n        \
                 explicit_http_config: {{ http_protocol_options: {{}} }}\n"
            ),
            1,
        )
        .replacen(tls, &format!("{tls}        max_session_keys: 0\n"), 1)
}

impl Envoy {
    /// The serials of the CA certificates in the Envoy's validation contexts.
    pub async fn trusted_serials(&self) -> std::collections::BTreeSet<String> {
        let certs = self.certs().await;
        certs["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|entry| entry["ca_cert"].as_array().cloned().unwrap_or_default())
            .filter_map(|cert| cert["serial_number"].as_str().map(normalize_serial))
            .collect()
    }

    /// Waits (30 s at most) until the validation contexts hold exactly `want`.
    pub async fn wait_until_trusted(&self, want: &std::collections::BTreeSet<String>) {
        let what = format!("{} to trust exactly {want:?}", self.name);
        crate::eventually(
            std::time::Duration::from_secs(30),
            &what,
            || self.trusted_serials(),
            |held| held == want,
        )
        .await;
    }

    /// Waits (30 s at most) until every leaf held is none of `before`; returns their serials.
    pub async fn wait_for_new_leaf(&self, before: &[String]) -> Vec<String> {
        let what = format!("{} to present a leaf other than {before:?}", self.name);
        crate::eventually(
            std::time::Duration::from_secs(30),
            &what,
            || self.leaf_serials(),
            |held| !held.is_empty() && held.iter().all(|s| !before.contains(s)),
        )
        .await
    }

    /// A counter line from `/stats`.
    pub async fn stat(&self, name: &str) -> u64 {
        let response = http_get(self.admin, &format!("/stats?filter=^{name}$"))
            .await
            .unwrap();
        response
            .body
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A request loop through a client Envoy, every outcome counted, until [`Traffic::stop`].
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl Traffic {
    /// Starts `GET /` on `client_port` every 20 ms.
    pub fn start(client_port: u16) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, ok) = (stop.clone(), ok.clone());
            async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http_get(([127, 0, 0, 1], client_port).into(), "/").await {
                        Ok(response) if response.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => {
                            failures.push(format!("{} {}", response.status, response.body));
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                (ok.load(Ordering::Relaxed), failures)
            }
        });
        Self { stop, ok, task }
    }

    /// The successful requests so far.
    pub fn succeeded(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `at_least` requests have succeeded in all.
    pub async fn wait_for_successes(&self, at_least: u64) {
        let what = format!("{at_least} successful requests through the Envoys");
        crate::eventually(
            crate::PATIENCE,
            &what,
            || async { self.succeeded() },
            |n| *n >= at_least,
        )
        .await;
    }

    /// Stops the loop; returns the successful requests and every failure.
    pub async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}
