//! `meshca serve` as a child process of a test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::PATIENCE;

/// `meshca serve` (this crate's binary) as a child process with its log in a file, killed on
/// drop.
pub struct MeshcaServe {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MeshcaServe {
    /// Runs `meshca <args>` (the arguments include `serve`).
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("meshca.log");
        let child = Command::new(env!("CARGO_BIN_EXE_meshca"))
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("MESHCA_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    /// Waits until something accepts TCP connections on `port`; fails with the log if the
    /// process exits first or it takes longer than [`PATIENCE`].
    pub async fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("meshca exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "meshca never listened on {port}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything meshca has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MeshcaServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MeshcaServe {
    /// Waits until the log contains `text`.
    pub async fn wait_for_log(&self, text: &str, patience: Duration) {
        let deadline = Instant::now() + patience;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "meshca never logged {text:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the daemon now (like a crashed or evicted pod).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Flags giving the daemon and `meshca rotate root` the same store and rotation policy: 30s
/// leaves, 1s clock skew (so stage 2 lasts about 31s), the stage read every second.
pub fn rotation_flags(ca_dir: &std::path::Path) -> Vec<String> {
    [
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--set",
        "rotation.pollInterval=1s",
        "--set",
        "certificateProvider.serviceCertValidityDuration=30s",
        "--set",
        "tresor.clockSkewAllowance=1s",
        "--set",
        "renewal.floor=2s",
    ]
    .map(String::from)
    .to_vec()
}

/// `meshca serve` on [`rotation_flags`], SDS in development mode on `sds_port`, no admin.
pub fn serve_for_rotation(ca_dir: &std::path::Path, sds_port: u16) -> MeshcaServe {
    let mut args = rotation_flags(ca_dir);
    args.extend(
        [
            "serve",
            "--set",
            &format!("sds.listen=127.0.0.1:{sds_port}"),
            "--set",
            "sds.auth=development",
            "--set",
            "admin.listen=",
        ]
        .map(String::from),
    );
    MeshcaServe::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `meshca rotate root <action>` with [`rotation_flags`] and `extra` flags.
pub fn rotate_root(ca_dir: &std::path::Path, extra: &[&str], action: &str) -> std::process::Output {
    let mut args = rotation_flags(ca_dir);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(["rotate", "root", action].map(String::from));
    Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(&args)
        .output()
        .unwrap()
}

/// Runs `meshca rotate root advance` until it moves a stage (exit 0; 3 means "not yet") or
/// `patience` runs out; returns what it printed.
pub async fn advance_until_moved(ca_dir: &std::path::Path, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let output = rotate_root(ca_dir, &[], "advance");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status.code() {
            Some(0) => return stdout,
            Some(3) => assert!(Instant::now() < deadline, "advance kept waiting: {stdout}"),
            _ => panic!(
                "advance failed: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
