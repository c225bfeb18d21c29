//! The Helm chart (`deploy/charts/meshca`), rendered by Helm's real template engine.
//!
//! The checks live in `tests/helm/test_chart.py`, which drives helm-python-sdk (Helm v4's Go
//! SDK, no `helm` binary) and kubernetes-validate: render and lint for every example values
//! file, strict Kubernetes schema validation, the wiring (Vault settings in the config, the
//! CronJob's `meshca rotate`, exact RBAC rules), schema refusals, and every rendered config fed
//! to this crate's `meshca` binary. This test runs it and fails with its output.
//!
//! The Python packages come from `scripts/install-tools.sh helm` (`.tools/pip/helm`, or
//! `MESHCA_HELM_PYTHONPATH`). Without them the test is skipped with a note, except under
//! `CI=true`, where a missing tool is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Where helm-python-sdk and kubernetes-validate are installed, or `None` (skip) when they
/// cannot be imported from there.
fn helm_pythonpath() -> Option<PathBuf> {
    let path = match std::env::var_os("MESHCA_HELM_PYTHONPATH") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/pip/helm"),
    };
    let probe = Command::new(python())
        .args(["-c", "import helm_python, kubernetes_validate"])
        .env("PYTHONPATH", &path)
        .output();
    let reason = match probe {
        Ok(out) if out.status.success() => return Some(path),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(err) => format!("cannot run {}: {err}", python()),
    };
    let message = format!(
        "helm-python-sdk / kubernetes-validate not importable from {} ({reason}): run \
         scripts/install-tools.sh helm or set MESHCA_HELM_PYTHONPATH",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

#[test]
fn chart_renders_validates_and_is_wired() {
    let Some(pythonpath) = helm_pythonpath() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python())
        .arg(root.join("tests/helm/test_chart.py"))
        .args(["--meshca", env!("CARGO_BIN_EXE_meshca")])
        .env("PYTHONPATH", &pythonpath)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(root)
        .output()
        .expect("run python3 tests/helm/test_chart.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the chart test failed ({}):\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("chart checks passed"),
        "the chart test exited 0 without its summary line:\n{stdout}"
    );
}
