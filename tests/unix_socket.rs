//! The SDS Unix socket's permissions (`sds.unixSocketMode`, `sds.unixSocketGroup`) on a real
//! `meshca serve`, checked with processes of other users: the README's unix-peer example, run
//! as written, serves a real Envoy running as the mapped uid 1337 (not root); a mode that
//! leaves a user out refuses its connection (EACCES) before meshca sees it. The Workload API
//! socket's (`workloadApi.socketMode`, `workloadApi.socketGroup`), bound by the same code, the
//! same way.
//!
//! Needs root (to run the clients under other uids with util-linux `setpriv`); skipped with a
//! note otherwise. The Envoy part needs Envoy (`MESHCA_ENVOY` or `.tools/bin/envoy`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use support::daemon::MeshcaServe;
use support::envoy::{self, Envoy, free_port};

/// The mapped uid of the README example, and a uid nobody mapped.
const PROXY_UID: u32 = 1337;
const OTHER_UID: u32 = 1338;

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

/// `setpriv` arguments running a command as `uid` (its own group, no supplementary groups).
fn as_user(uid: u32) -> Vec<String> {
    vec![
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".to_owned(),
    ]
}

/// `meshca serve` with its CA in `dir/ca`, the SDS listener on the Unix socket `socket` only,
/// the admin listener on a free port, and `--set` for each of `flags`; killed on drop.
fn start_serve(dir: &Path, socket: &Path, flags: &[&str]) -> MeshcaServe {
    let mut builder = MeshcaServe::builder()
        .args(["--ca-dir", dir.join("ca").to_str().unwrap()])
        .set("sds.listen=")
        .admin()
        .set(&format!("sds.unixSocket={}", socket.display()));
    for flag in flags {
        builder = builder.set(flag);
    }
    builder.start()
}

/// Connects to `socket` as `uid` (a plain `connect(2)` by the system's Python): `Ok` when the
/// kernel let it connect, `Err(stderr)` when it refused.
fn connect_as(uid: u32, socket: &Path) -> Result<(), String> {
    connect_with(&as_user(uid), socket)
}

/// [`connect_as`] with `setpriv` arguments `user`.
fn connect_with(user: &[String], socket: &Path) -> Result<(), String> {
    let output = Command::new("setpriv")
        .args(user)
        .args([
            "/usr/bin/python3",
            "-c",
            "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
        ])
        .arg(socket)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A directory others can traverse (tempdir makes 0700 ones).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// No private staging directory may be left next to the socket.
fn assert_no_staging_left(socket: &Path) {
    let left: Vec<_> = std::fs::read_dir(socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".meshca-"))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

/// The README's example, as written: `--set sds.unixSocket=/run/meshca/sds.sock --set
/// sds.auth=unix-peer --set sds.unixPeers=1337=bookstore/bookstore-v2` (in a temporary
/// directory instead of /run, created by meshca as /run/meshca would be). An Envoy running as
/// uid 1337 connects and gets bookstore/bookstore-v2's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_unix_peer_example_serves_an_envoy_running_as_the_mapped_uid() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to run clients as uid {PROXY_UID} (setpriv)");
        return;
    }
    let Some(binary) = envoy::binary() else {
        return;
    };
    let dir = open_dir();
    let socket = dir.path().join("run/meshca/sds.sock");
    let mut serve = start_serve(
        dir.path(),
        &socket,
        &[
            "sds.auth=unix-peer",
            "sds.unixPeers=1337=bookstore/bookstore-v2",
        ],
    );
    serve.wait_ready().await;
    assert_eq!(mode_of(&socket), 0o666, "{}", serve.log());
    assert_eq!(mode_of(socket.parent().unwrap()), 0o755);
    assert_no_staging_left(&socket);

    // A real Envoy as uid 1337, not root, reading its secrets over the socket.
    let config = envoy::bootstrap(
        "envoy-inbound.yaml",
        Some("sds-cluster-unix.yaml"),
        &[
            ("NODE_ID", "bookstore/bookstore-v2".to_owned()),
            ("ADMIN_PORT", "0".to_owned()),
            ("LISTEN_PORT", free_port().to_string()),
            (
                "ALLOWED_PEER",
                "spiffe://cluster.local/ns/bookstore/sa/bookbuyer".to_owned(),
            ),
            ("SDS_SOCKET", socket.display().to_string()),
        ],
    );
    let envoy = Envoy::start_as_user(&binary, "bookstore-v2", &config, PROXY_UID);
    envoy.wait_ready().await;
    let certs = envoy.certs().await.to_string();
    assert!(
        certs.contains("spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"),
        "{certs}"
    );
}

/// The mode decides who can connect at all: with `0660` and group 1337 the mapped proxy's
/// user connects and another user is refused by the kernel; development mode's default
/// (`0600`) lets nobody but meshca's own user in, since it believes whoever connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_mode_and_group_decide_who_can_connect() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to run clients as other uids (setpriv)");
        return;
    }
    let dir = open_dir();
    let socket = dir.path().join("group/sds.sock");
    let mut serve = start_serve(
        dir.path(),
        &socket,
        &[
            "sds.auth=unix-peer",
            "sds.unixPeers=1337=bookstore/bookstore-v2",
            "sds.unixSocketMode=0660",
            &format!("sds.unixSocketGroup={PROXY_UID}"),
        ],
    );
    serve.wait_ready().await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), PROXY_UID);
    assert_no_staging_left(&socket);
    connect_as(PROXY_UID, &socket).unwrap_or_else(|e| panic!("uid {PROXY_UID} refused: {e}"));
    let refused = connect_as(OTHER_UID, &socket).unwrap_err();
    assert!(refused.contains("PermissionError"), "{refused}");
    assert!(
        serve.log().contains("mode=0660"),
        "the bound mode is not logged:\n{}",
        serve.log()
    );
    drop(serve);

    let socket = dir.path().join("dev/sds.sock");
    let mut serve = start_serve(dir.path(), &socket, &["sds.auth=development"]);
    serve.wait_ready().await;
    assert_eq!(mode_of(&socket), 0o600);
    let refused = connect_as(PROXY_UID, &socket).unwrap_err();
    assert!(refused.contains("PermissionError"), "{refused}");
}

/// The Workload API socket is bound by the same code with its own settings: with
/// `workloadApi.socketMode=0660` and `workloadApi.socketGroup=1337`, a user whose uid and
/// primary group are neither meshca's nor 1337 connects only while 1337 is one of its
/// (supplementary) groups; the same user without it is refused by the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_api_socket_group_decides_who_can_connect() {
    if !running_as_root() {
        eprintln!("SKIPPED: needs root to run clients as other uids (setpriv)");
        return;
    }
    let dir = open_dir();
    let socket = dir.path().join("workload/workload-api.sock");
    let mut serve = start_serve(
        dir.path(),
        &dir.path().join("sds/sds.sock"),
        &[
            "workloadApi.enabled=true",
            &format!("workloadApi.socketPath={}", socket.display()),
            "workloadApi.socketMode=0660",
            &format!("workloadApi.socketGroup={PROXY_UID}"),
            &format!(
                "workloadApi.entries=[{{spiffeId: web/app, selectors: [\"unix:uid:{OTHER_UID}\"]}}]"
            ),
        ],
    );
    serve.wait_ready().await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "{}", serve.log());
    assert_eq!(meta.gid(), PROXY_UID);
    assert_no_staging_left(&socket);

    let member = [
        format!("--reuid={OTHER_UID}"),
        format!("--regid={OTHER_UID}"),
        format!("--groups={PROXY_UID}"),
    ];
    connect_with(&member, &socket)
        .unwrap_or_else(|e| panic!("uid {OTHER_UID} in group {PROXY_UID} refused: {e}"));
    let refused = connect_as(OTHER_UID, &socket).unwrap_err();
    assert!(refused.contains("PermissionError"), "{refused}");
}
