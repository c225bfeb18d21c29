//! The SPIFFE Workload API tests' daemon (`tests/workload_api*.rs`): `meshca serve` with the
//! Workload API on a socket in a directory other users can search, registration entries written
//! to its configuration file, an admin listener with a token (for `meshca rotate leaves` and
//! `/metrics`).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use meshca_provider::TrustBundle;

use crate::daemon::{MeshcaServe, START_PATIENCE, ServeBuilder};
use crate::envoy::http_get;

/// The daemon's trust domain (the default).
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The admin token, in `<dir>/admin-token`.
pub const ADMIN_TOKEN: &str = "workload-api-test-token-0123456789abcdef";

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>` for `<ns>/<sa>`.
pub fn spiffe_id(short: &str) -> String {
    let (ns, sa) = short.split_once('/').unwrap();
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

/// This process's uid and gid, as the kernel reports them to the socket's server.
pub fn my_ids() -> (u32, u32) {
    let meta = std::fs::metadata("/proc/self").unwrap();
    (meta.uid(), meta.gid())
}

/// A directory for the socket that other users may search (a client under another uid
/// connects).
pub fn socket_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `meshca serve` (its own CA directory) with the Workload API on `socket` and `entries`
/// (SPIFFE ID, selectors, hint), the admin token in `dir/admin-token`, an admin listener, SDS
/// in development mode on a free port.
pub fn start(dir: &Path, socket: &Path, entries: &[(&str, Vec<String>, &str)]) -> MeshcaServe {
    start_with(dir, socket, entries, MeshcaServe::builder().own_ca_dir())
}

/// [`start`] from `builder` (which names the CA directory and any other flag).
pub fn start_with(
    dir: &Path,
    socket: &Path,
    entries: &[(&str, Vec<String>, &str)],
    builder: ServeBuilder,
) -> MeshcaServe {
    let mut yaml = format!(
        "workloadApi:\n  enabled: true\n  socketPath: {}\n  entries:\n",
        socket.display()
    );
    for (id, selectors, hint) in entries {
        let selectors: Vec<String> = selectors.iter().map(|s| format!("{s:?}")).collect();
        yaml.push_str(&format!(
            "  - spiffeId: {id}\n    hint: {hint:?}\n    selectors: [{}]\n",
            selectors.join(", ")
        ));
    }
    let config = dir.join("meshca.yaml");
    std::fs::write(&config, yaml).unwrap();
    let token = dir.join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    builder
        .dev_sds()
        .admin()
        .args(["--config", config.to_str().unwrap()])
        .set(&format!("admin.tokenFile={}", token.display()))
        .start()
}

/// Waits until the daemon says the Workload API listens; the socket has the default mode.
pub async fn wait_for_socket(daemon: &mut MeshcaServe, socket: &Path) {
    daemon
        .wait_for_log("SPIFFE Workload API listening", START_PATIENCE)
        .await;
    assert!(socket.exists(), "{}", daemon.tail(20));
    let mode = std::fs::metadata(socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "the default workloadApi.socketMode");
}

/// One sample of the daemon's `/metrics` (the line starting with `sample`).
pub async fn metric(daemon: &MeshcaServe, sample: &str) -> f64 {
    let body = http_get(daemon.admin(), "/metrics").await.unwrap().body;
    body.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{body}"))
}

/// The root in the CA directory `ca_dir` (`ca.crt`).
pub fn root(ca_dir: &Path) -> TrustBundle {
    TrustBundle::from_pem(&std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap()).unwrap()
}
