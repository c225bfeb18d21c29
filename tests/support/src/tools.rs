//! The outside tools the tests run (Envoy, OpenBao, Python packages): where each is found and
//! what a missing one does — a note and a skip, except under `CI=true`, where it fails the
//! test, so CI can never pass by skipping.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Reports a missing tool: under `CI=true` the test fails with `message`; otherwise it is noted
/// on stderr (`SKIPPED: …`) and `None` returned, for the test to return early.
pub fn missing<T>(message: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// The Python interpreter: `$PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Python packages that `scripts/install-tools.sh <tool>` installs into `.tools/pip/<tool>`
/// (or the directory in `$env_var`): that directory, for `PYTHONPATH`, when `imports` (a Python
/// import statement) runs from it; otherwise [`missing`], naming `what` and the fix.
pub fn python_packages(env_var: &str, tool: &str, imports: &str, what: &str) -> Option<PathBuf> {
    let path = match std::env::var_os(env_var) {
        Some(path) => PathBuf::from(path),
        None => crate::workspace_root().join(".tools/pip").join(tool),
    };
    let probe = Command::new(python())
        .args(["-W", "ignore", "-c", imports])
        .env("PYTHONPATH", &path)
        .output();
    let reason = match probe {
        Ok(out) if out.status.success() => return Some(path),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(err) => format!("cannot run {}: {err}", python()),
    };
    missing(&format!(
        "{what} not importable from {} ({reason}): run scripts/install-tools.sh {tool} or set \
         {env_var}",
        path.display()
    ))
}

/// Runs `python3 <script> <args>` from the workspace root with `pythonpath`, prints what it
/// wrote (shown when the test fails) and asserts it exited 0 (else fails with `failure`, the
/// status and the output); returns its standard output.
pub fn run_python(script: &Path, args: &[&OsStr], pythonpath: &Path, failure: &str) -> String {
    let output = Command::new(python())
        .arg(script)
        .args(args)
        .env("PYTHONPATH", pythonpath)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(crate::workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("run {} {}: {e}", python(), script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{failure} ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}
