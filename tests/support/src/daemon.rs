//! `meshca serve` as a child process of a test: the one way the tests start the daemon.
//!
//! [`MeshcaServe::start`] runs it with exactly the arguments given; [`MeshcaServe::builder`]
//! adds the usual pieces (a CA directory of its own, an admin listener and a development-mode SDS
//! listener on free loopback ports). Standard error (the log) and standard output go to files;
//! the process is killed on drop, or stopped with SIGTERM by [`MeshcaServe::terminate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::bao::Bao;
use crate::envoy::http_get;
use crate::{PATIENCE, eventually_ok, free_port};

/// How long a daemon may take to start (a first start creates its CA; OpenBao or the fake API
/// server may be slow on a loaded machine).
pub const START_PATIENCE: Duration = Duration::from_secs(60);

/// `meshca serve` (this build's binary) as a child process with its log in a file, killed on
/// drop.
pub struct MeshcaServe {
    child: Child,
    log: PathBuf,
    stdout: PathBuf,
    admin: Option<SocketAddr>,
    sds: Option<SocketAddr>,
    dir: tempfile::TempDir,
}

/// What [`MeshcaServe::builder`] starts.
#[derive(Debug, Default)]
pub struct ServeBuilder {
    binary: Option<PathBuf>,
    global: Vec<String>,
    env_remove: Vec<String>,
    env: Vec<(String, String)>,
    own_ca_dir: bool,
    admin: bool,
    admin_at: Option<SocketAddr>,
    sds: bool,
    sds_at: Option<SocketAddr>,
    dev_sds: bool,
    keep_color: bool,
}

impl ServeBuilder {
    /// Global arguments (before `serve`), in order, after the builder's own.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.global
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `--set <setting>`.
    pub fn set(self, setting: &str) -> Self {
        self.args(["--set", setting])
    }

    /// Issues from `bao`'s `pki` mount with its root token ([`Bao::meshca_settings`]).
    pub fn vault(self, bao: &Bao) -> Self {
        bao.meshca_settings()
            .iter()
            .fold(self, |builder, setting| builder.set(setting))
    }

    /// `--ca-dir <a fresh directory>/ca`, removed with the process.
    pub fn own_ca_dir(mut self) -> Self {
        self.own_ca_dir = true;
        self
    }

    /// The admin listener on a free loopback port ([`MeshcaServe::admin`]).
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// The SDS listener on a free loopback port ([`MeshcaServe::sds`]), authentication as
    /// configured.
    pub fn sds(mut self) -> Self {
        self.sds = true;
        self
    }

    /// The admin listener on `address` ([`MeshcaServe::admin`]): a daemon started again
    /// where the previous one listened.
    pub fn admin_at(mut self, address: SocketAddr) -> Self {
        self.admin_at = Some(address);
        self
    }

    /// The SDS listener on `address` ([`MeshcaServe::sds`]), authentication as configured.
    pub fn sds_at(mut self, address: SocketAddr) -> Self {
        self.sds_at = Some(address);
        self
    }

    /// SDS in development mode on a free loopback port ([`MeshcaServe::sds`]).
    pub fn dev_sds(mut self) -> Self {
        self.sds = true;
        self.dev_sds = true;
        self
    }

    /// Runs `binary` instead of this build's `meshca` (a tool measuring another build).
    pub fn binary(mut self, binary: &Path) -> Self {
        self.binary = Some(binary.to_owned());
        self
    }

    /// Runs without the environment variable `name`.
    pub fn env_remove(mut self, name: &str) -> Self {
        self.env_remove.push(name.to_owned());
        self
    }

    /// Runs with the environment variable `name` set to `value` (`KUBECONFIG`, say).
    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((
            name.to_owned(),
            value.as_ref().to_string_lossy().into_owned(),
        ));
        self
    }

    /// Leaves `NO_COLOR` as the environment has it (by default it is set).
    pub fn keep_color(mut self) -> Self {
        self.keep_color = true;
        self
    }

    pub fn start(self) -> MeshcaServe {
        let dir = tempfile::tempdir().unwrap();
        let mut args = Vec::new();
        if self.own_ca_dir {
            args.push("--ca-dir".to_owned());
            args.push(dir.path().join("ca").display().to_string());
        }
        let sds = self.sds_at.or_else(|| self.sds.then(loopback));
        if let Some(sds) = sds {
            if self.dev_sds {
                args.extend(["--set".to_owned(), "sds.auth=development".to_owned()]);
            }
            args.extend(["--set".to_owned(), format!("sds.listen={sds}")]);
        }
        let admin = self.admin_at.or_else(|| self.admin.then(loopback));
        if let Some(admin) = admin {
            args.extend(["--set".to_owned(), format!("admin.listen={admin}")]);
        }
        args.extend(self.global);
        args.push("serve".to_owned());
        let binary = self.binary.unwrap_or_else(crate::meshca_binary);
        let mut serve = MeshcaServe::spawn(
            &binary,
            dir,
            &args,
            self.keep_color,
            &self.env_remove,
            &self.env,
        );
        serve.admin = admin;
        serve.sds = sds;
        serve
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

impl MeshcaServe {
    /// Runs `meshca <args>` (the arguments include `serve`).
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(
            &crate::meshca_binary(),
            tempfile::tempdir().unwrap(),
            args,
            false,
            &[],
            &[],
        )
    }

    /// A daemon with the pieces asked for; see [`ServeBuilder`].
    pub fn builder() -> ServeBuilder {
        ServeBuilder::default()
    }

    fn spawn(
        binary: &Path,
        dir: tempfile::TempDir,
        args: &[impl AsRef<std::ffi::OsStr>],
        keep_color: bool,
        env_remove: &[String],
        env: &[(String, String)],
    ) -> Self {
        let log = dir.path().join("meshca.log");
        let stdout = dir.path().join("meshca.stdout");
        let mut command = Command::new(binary);
        command.args(args).env_remove("MESHCA_CONFIG");
        for name in env_remove {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        if keep_color {
            command.env_remove("NO_COLOR");
        } else {
            command.env("NO_COLOR", "1");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            child,
            log,
            stdout,
            admin: None,
            sds: None,
            dir,
        }
    }

    /// The admin listener the [`builder`](Self::builder) gave it.
    pub fn admin(&self) -> SocketAddr {
        self.admin
            .expect("started without an admin listener: use MeshcaServe::builder().admin()")
    }

    /// The SDS listener the [`builder`](Self::builder) gave it.
    pub fn sds(&self) -> SocketAddr {
        self.sds
            .expect("started without an SDS listener: use MeshcaServe::builder().dev_sds()")
    }

    /// A directory that lives as long as the process (its CA directory with
    /// [`ServeBuilder::own_ca_dir`] is `ca` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The file its log (standard error) goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything meshca has logged so far (standard error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Everything meshca has printed on standard output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics with the log if the process has exited.
    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("meshca exited with {status}:\n{}", self.log());
        }
    }

    /// Waits until something accepts TCP connections on `port`; fails with the log if the
    /// process exits first or it takes longer than [`PATIENCE`].
    pub async fn wait_listening(&mut self, port: u16) {
        let what = format!("meshca to listen on {port}");
        eventually_ok(PATIENCE, &what, || {
            self.check_running();
            let log = self.log();
            async move {
                match TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("{e}; log:\n{log}")),
                }
            }
        })
        .await;
    }

    /// Waits until the admin listener's `/readyz` answers `status`, failing with the log if
    /// the process exits first or [`START_PATIENCE`] passes; returns the body.
    pub async fn wait_readyz(&mut self, status: u16) -> String {
        let admin = self.admin();
        let what = format!("/readyz to answer {status}");
        eventually_ok(START_PATIENCE, &what, || {
            self.check_running();
            let tail = self.tail(30);
            async move {
                match http_get(admin, "/readyz").await {
                    Ok(response) if response.status == status => Ok(response.body),
                    Ok(response) => Err(format!(
                        "{} {}; log:\n{tail}",
                        response.status, response.body
                    )),
                    Err(e) => Err(format!("{e}; log:\n{tail}")),
                }
            }
        })
        .await
    }

    /// Waits until the daemon is ready (`/readyz` answers 200).
    pub async fn wait_ready(&mut self) {
        self.wait_readyz(200).await;
    }

    /// Waits until the log contains `text`; fails with the log if the process exits first.
    pub async fn wait_for_log(&mut self, text: &str, patience: Duration) {
        let what = format!("meshca to log {text:?}");
        eventually_ok(patience, &what, || {
            self.check_running();
            let log = self.log();
            async move {
                if log.contains(text) {
                    Ok(())
                } else {
                    Err(format!("the log so far:\n{log}"))
                }
            }
        })
        .await;
    }

    /// Kills the daemon now (like a crashed or evicted pod).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit; returns how it did.
    pub fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let child = &mut self.child;
        let status = crate::eventually_blocking(
            Duration::from_secs(30),
            "meshca to exit after SIGTERM",
            || child.try_wait().unwrap(),
            Option::is_some,
        );
        status.unwrap()
    }
}

impl Drop for MeshcaServe {
    fn drop(&mut self) {
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
    Command::new(crate::meshca_binary())
        .args(&args)
        .output()
        .unwrap()
}

/// Runs `meshca rotate root advance` with [`rotation_flags`] until it moves a stage or
/// `patience` runs out ([`advance_within`]); returns what it printed.
pub async fn advance_until_moved(ca_dir: &std::path::Path, patience: Duration) -> String {
    advance_within(
        &rotation_flags(ca_dir),
        patience,
        "`meshca rotate root advance` to move a stage",
    )
    .await
}

/// `meshca <args> rotate root <action>`: its exit status (0, or 3 for "not yet") and standard
/// output; any other status fails the test with both outputs.
pub fn rotate_root_with(args: &[String], action: &str) -> (i32, String) {
    let output = Command::new(crate::meshca_binary())
        .args(args)
        .args(["rotate", "root", action])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code().unwrap_or(-1);
    assert!(
        matches!(code, 0 | 3),
        "rotate root {action}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (code, stdout)
}

/// Runs [`rotate_root_with`]`(args, "advance")` every half second until it moves a stage
/// (exit 0), failing the test with the last refusal after `patience`; returns what it printed.
pub async fn advance_within(args: &[String], patience: Duration, what: &str) -> String {
    crate::eventually_ok_every(patience, Duration::from_millis(500), what, || {
        let (code, stdout) = rotate_root_with(args, "advance");
        async move { if code == 0 { Ok(stdout) } else { Err(stdout) } }
    })
    .await
}
