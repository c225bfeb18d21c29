//! `deploy/dev/vault.sh` as a new user runs it: it starts and configures a real OpenBao, and the
//! configuration it writes makes `meshca issue` and `meshca serve` work against it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshca_test_support::daemon::MeshcaServe;
use meshca_test_support::free_port;

struct DevVault {
    dir: tempfile::TempDir,
    port: u16,
}

impl DevVault {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/dev/vault.sh")
    }

    fn command(&self, arg: &str) -> Command {
        let mut command = Command::new(Self::script());
        command
            .arg(arg)
            .env("VAULT_PORT", self.port.to_string())
            .env("MESHCA_DEV_DIR", self.dir.path());
        command
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("vault/meshca-vault.yaml")
    }
}

impl Drop for DevVault {
    fn drop(&mut self) {
        let _ = self.command("stop").status();
    }
}

#[tokio::test]
async fn dev_script_leads_to_a_working_meshca() {
    let vault = DevVault {
        dir: tempfile::tempdir().unwrap(),
        port: free_port(),
    };
    let started = vault.command("start").output().unwrap();
    let printed = String::from_utf8_lossy(&started.stdout);
    assert!(
        started.status.success(),
        "vault.sh failed:\n{printed}\n{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(
        printed.contains("--config"),
        "the script prints how to run meshca: {printed}"
    );
    // Running it again converges instead of failing.
    assert!(vault.command("start").output().unwrap().status.success());

    let out = vault.dir.path().join("issued");
    let issued = Command::new(env!("CARGO_BIN_EXE_meshca"))
        .arg("--config")
        .arg(vault.config())
        .args([
            "issue",
            "--identity",
            "bookstore/bookstore-v2",
            "--lifetime",
            "20m",
            "--out-dir",
        ])
        .arg(&out)
        .env_remove("VAULT_TOKEN")
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let verified = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(out.join("ca.pem"))
        .arg(out.join("cert.pem"))
        .output()
        .expect("openssl is installed");
    assert!(verified.status.success(), "{verified:?}");
    let shown = Command::new(env!("CARGO_BIN_EXE_meshca"))
        .arg("inspect")
        .arg(out.join("cert.pem"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("Issuer:       CN=meshca dev root"),
        "{shown}"
    );
    assert!(
        shown.contains("Lifetime:     20m") || shown.contains("Lifetime:     20m30s"),
        "{shown}"
    );

    // The daemon starts against it and stops cleanly on SIGTERM.
    let config = vault.config().display().to_string();
    let sds = format!("sds.listen=127.0.0.1:{}", free_port());
    let mut serve = MeshcaServe::builder()
        .args(["--config", &config, "--log-format", "json"])
        .set(&sds)
        // A free port rather than the default 127.0.0.1:15014, which another daemon on the
        // machine (or another test) may hold.
        .admin()
        .env_remove("VAULT_TOKEN")
        .start();
    serve
        .wait_for_log("meshca is serving", Duration::from_secs(60))
        .await;
    assert!(serve.log().contains("vault: connected"), "{}", serve.log());
    let status = serve.terminate();
    assert!(
        status.success(),
        "meshca serve exited with {status} after SIGTERM"
    );
}
