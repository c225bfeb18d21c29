//! Checks on a finished `meshca` process, shared by the tests that run the binary.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs the `meshca` binary with the CA store in `ca_dir`, no configuration file from the
/// environment and no colour.
pub fn meshca(ca_dir: &Path, args: &[&str]) -> Output {
    Command::new(crate::meshca_binary())
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(args)
        .env_remove("MESHCA_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("the meshca binary runs")
}

/// [`meshca`], failing the test (instead of hanging it) when the process has not exited within
/// `limit`: it is killed, and its standard error is in the failure message.
pub fn meshca_within(ca_dir: &Path, args: &[&str], limit: Duration) -> Output {
    let child = Command::new(crate::meshca_binary())
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(args)
        .env_remove("MESHCA_CONFIG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the meshca binary runs");
    let pid = child.id().to_string();
    let (finished, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = finished.send(child.wait_with_output());
    });
    match outcome.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            let output = outcome.recv().unwrap().unwrap();
            panic!(
                "meshca {args:?} still running after {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Asserts the run succeeded and printed no key material; returns its standard output.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "meshca failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stdout.contains("PRIVATE KEY") && !stderr.contains("PRIVATE KEY"),
        "key material in the output"
    );
    stdout
}

/// Asserts the run failed without printing key material; returns its standard error.
pub fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "meshca should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("PRIVATE KEY"), "key material in: {stderr}");
    stderr
}

/// Runs openssl with `args`; returns stdout, failing the test on a non-zero exit.
pub fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
