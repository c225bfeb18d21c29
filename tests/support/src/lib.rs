#![doc = include_str!("../README.md")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod bao;
pub mod ca;
pub mod cli;
pub mod csr;
pub mod daemon;
pub mod envoy;
pub mod eventually;
pub mod fake_provider;
pub mod hostile;
pub mod istio;
pub mod istio_interop;
pub mod kube_api;
pub mod sds;
pub mod tools;
pub mod verify;
pub mod workload_api;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ca::{CertFiles, TestCa, cert_key, id};
pub use eventually::{eventually, eventually_blocking, eventually_ok, eventually_ok_every};
pub use sds::*;

/// How long a test waits for something the code under test must do before failing (never a
/// sleep: the wait ends as soon as the thing happens).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The workspace root: the nearest directory above this crate that holds
/// `scripts/install-tools.sh`.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("scripts/install-tools.sh").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS client configuration trusting `roots`, with ring as the one crypto provider (as
/// meshca builds its own) and no client certificate.
pub fn tls_client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// The `meshca` binary of this build: `$MESHCA_BIN`, else nextest's `NEXTEST_BIN_EXE_meshca`,
/// else `meshca` in the target directory above the running test or example (Cargo builds it
/// for the root package's integration tests).
pub fn meshca_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHCA_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(path) = std::env::var_os("NEXTEST_BIN_EXE_meshca").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the running test knows its own path");
    // target/<profile>/deps/<test> or target/<profile>/examples/<example>.
    let mut dir = exe.parent().expect("a test binary lives in a directory");
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir
            .parent()
            .expect("deps/ and examples/ live in a profile directory");
    }
    let path = dir.join("meshca");
    assert!(
        path.is_file(),
        "no meshca binary at {}: build it with `cargo build --bin meshca` (Cargo does for the \
         meshca package's tests) or set MESHCA_BIN",
        path.display()
    );
    path
}
