//! `meshca serve` as a child process of a test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `meshca serve` as a child process, killed on drop.
pub struct MeshcaServe {
    child: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MeshcaServe {
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("meshca.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
            .args(args)
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    pub async fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "meshca never listened:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

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
