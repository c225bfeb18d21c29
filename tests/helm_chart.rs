//! The Helm chart (`deploy/charts/meshca`), rendered by Helm's real template engine.
//!
//! The checks live in `tests/helm/test_chart.py`, which drives helm-python-sdk (Helm v4's Go
//! SDK, no `helm` binary) and kubernetes-validate: render and lint for every example values
//! file, strict Kubernetes schema validation, the wiring (Vault settings in the config, the
//! CronJob's `meshca rotate`, exact RBAC rules; with `workloadApi.nodeLocal.enabled` the
//! node-local Workload API DaemonSet: hostPID, the hostPath socket directory, its ServiceAccount
//! and Role), schema refusals, and every rendered config (the DaemonSet's too) fed to this
//! crate's `meshca` binary. This test runs it and fails with its output.
//!
//! The Python packages come from `scripts/install-tools.sh helm` (`.tools/pip/helm`, or
//! `MESHCA_HELM_PYTHONPATH`). Without them the test is skipped with a note, except under
//! `CI=true`, where a missing tool is a failure.

use meshca_test_support::tools::{python_packages, run_python};
use meshca_test_support::{meshca_binary, workspace_root};

#[test]
fn chart_renders_validates_and_is_wired() {
    let Some(pythonpath) = python_packages(
        "MESHCA_HELM_PYTHONPATH",
        "helm",
        "import helm_python, kubernetes_validate",
        "helm-python-sdk / kubernetes-validate",
    ) else {
        return;
    };
    let binary = meshca_binary();
    let stdout = run_python(
        &workspace_root().join("tests/helm/test_chart.py"),
        &["--meshca".as_ref(), binary.as_os_str()],
        &pythonpath,
        "the chart test failed",
    );
    assert!(
        stdout.contains("chart checks passed"),
        "the chart test exited 0 without its summary line:\n{stdout}"
    );
}
