//! Real OpenBao servers for the tests and the benchmark.
//!
//! [`Bao::dev`] starts `bao server -dev` on a free loopback port with a random root token;
//! [`Bao::persistent`] starts a server with raft storage (initialised and unsealed by
//! [`Bao::init_and_unseal`]) that can be killed and started again with its data. Each server
//! runs under a small shell watchdog whose stdin is a pipe from this process: dropping the
//! [`Bao`] closes the pipe and the watchdog kills the server by PID; so does this process
//! dying for any reason, so no server outlives its test.
//!
//! The `bao` binary is `$MESHCA_BAO`, else `<workspace>/.tools/bin/bao`; when it is missing
//! it is installed with `scripts/install-tools.sh bao`, except under `CI=true`, where a
//! missing tool is a loud failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshca_provider::TrustBundle;
use meshca_vault::{Protocol, Secret, VaultSettings};
use serde_json::{Value, json};

use crate::eventually_ok;
pub use crate::{free_port, workspace_root};

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `bao` binary, installed first when missing (outside CI).
pub fn bao_binary() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    if let Some(path) = std::env::var_os("MESHCA_BAO").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "MESHCA_BAO={} does not exist: unset it or run scripts/install-tools.sh bao",
            path.display()
        );
        return path;
    }
    let root = workspace_root();
    let path = root.join(".tools/bin/bao");
    let _one_install_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if works(&path) {
        return path;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "OpenBao is not installed at {}: run `scripts/install-tools.sh bao` before the \
             tests (CI=true, so the tests do not install it themselves)",
            path.display()
        );
    }
    let status = Command::new(root.join("scripts/install-tools.sh"))
        .arg("bao")
        .status()
        .expect("run scripts/install-tools.sh bao");
    assert!(
        status.success(),
        "scripts/install-tools.sh bao failed: {status}"
    );
    assert!(
        works(&path),
        "{} still missing after installing",
        path.display()
    );
    path
}

fn works(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An HTTP client for plain-HTTP OpenBao (the crate's reqwest has no built-in TLS provider).
pub fn http_client() -> reqwest::Client {
    client_trusting(rustls::RootCertStore::empty())
}

/// An HTTP client trusting the CA certificates in the PEM file `ca`.
pub fn https_client(ca: &Path) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read_to_string(ca).unwrap();
    for certificate in meshca_provider::x509::certificates_from_pem(&pem).unwrap() {
        roots.add(certificate).unwrap();
    }
    client_trusting(roots)
}

fn client_trusting(roots: rustls::RootCertStore) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(crate::tls_client_config(roots))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A running OpenBao server.
pub struct Bao {
    pub address: String,
    pub port: u16,
    pub root_token: String,
    /// For persistent servers: the key that unseals it.
    pub unseal_key: Option<String>,
    watchdog: Option<(Child, ChildStdin)>,
    pid: u32,
    dir: Arc<tempfile::TempDir>,
    args: Vec<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Bao {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bao")
            .field("address", &self.address)
            .field("pid", &self.pid)
            .finish()
    }
}

impl Bao {
    /// The server's process id (its CPU time, for the benchmarks).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A dev server (in-memory, unsealed, KV at secret/) with a random root token.
    pub async fn dev() -> Bao {
        let port = free_port();
        let root_token = format!("meshca-test-{}", random_suffix());
        let args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-listen-address=127.0.0.1:{port}"),
            format!("-dev-root-token-id={root_token}"),
            "-dev-no-store-token".to_owned(),
        ];
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut bao = Bao::spawn(port, root_token, args, dir);
        bao.wait_until(|status| status == 200).await;
        bao
    }

    /// A dev server with TLS (`-dev-tls`): its CA is at [`tls_ca`](Self::tls_ca).
    pub async fn dev_tls() -> Bao {
        let port = free_port();
        let root_token = format!("meshca-test-{}", random_suffix());
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            "-dev-tls".to_owned(),
            format!("-dev-tls-cert-dir={}", dir.path().join("tls").display()),
            format!("-dev-listen-address=127.0.0.1:{port}"),
            format!("-dev-root-token-id={root_token}"),
            "-dev-no-store-token".to_owned(),
        ];
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        let mut bao = Bao::spawn(port, root_token, args, dir);
        bao.address = format!("https://127.0.0.1:{port}");
        let ca = bao.tls_ca();
        eventually_ok(START_TIMEOUT, "OpenBao to write its TLS CA", || {
            assert!(bao.running(), "OpenBao exited:\n{}", bao.log());
            let written = !std::fs::read_to_string(&ca).unwrap_or_default().is_empty();
            let missing = format!("no {}; log:\n{}", ca.display(), bao.log());
            async move { if written { Ok(()) } else { Err(missing) } }
        })
        .await;
        bao.client = https_client(&ca);
        bao.wait_until(|status| status == 200).await;
        bao
    }

    /// The CA of a [`dev_tls`](Self::dev_tls) server's certificate.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("tls/vault-ca.pem")
    }

    /// A server with single-node raft storage under a fresh directory, not yet initialised.
    pub async fn persistent() -> Bao {
        let port = free_port();
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let config = dir.path().join("bao.hcl");
        let cluster_port = free_port();
        // OpenBao 2 has no "file" storage; single-node raft is its persistent backend.
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"meshca-test\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  \
                 cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{port}\"\n\
                 cluster_addr = \"http://127.0.0.1:{cluster_port}\"\n",
                data = dir.path().join("data").display()
            ),
        )
        .unwrap();
        let args = vec!["server".to_owned(), format!("-config={}", config.display())];
        let mut bao = Bao::spawn(port, String::new(), args, dir);
        // 501: not initialised — but answering.
        bao.wait_until(|_| true).await;
        bao
    }

    /// A persistent server ([`Bao::persistent`]), initialised and unsealed, with a PKI mount
    /// `pki` whose root is `common_name` ([`Bao::pki`]): the start of every outage test.
    pub async fn persistent_pki(common_name: &str) -> Bao {
        let mut bao = Bao::persistent().await;
        bao.init_and_unseal().await;
        bao.pki("pki", common_name).await;
        bao
    }

    /// The `--set` settings of a `meshca serve` issuing from this server's `pki` mount with
    /// the root token (`certificateProvider.kind=vault`, `vault.host`, `vault.port`,
    /// `vault.token`).
    pub fn meshca_settings(&self) -> Vec<String> {
        vec![
            "certificateProvider.kind=vault".to_owned(),
            "vault.host=127.0.0.1".to_owned(),
            format!("vault.port={}", self.port),
            format!("vault.token={}", self.root_token),
        ]
    }

    /// The `--set` arguments that `meshca serve` and `meshca rotate root` share in the Vault
    /// root rotation tests: Vault here, the CA store (where each daemon reports its proxies'
    /// acknowledgements) in `store`, 30 s leaves with 1 s clock skew (a stage 2 of about 31 s),
    /// the mount read every second.
    pub fn rotation_args(&self, store: &Path) -> Vec<String> {
        let mut settings = self.meshca_settings();
        settings.extend([
            format!("tresor.directory={}", store.display()),
            "rotation.pollInterval=1s".to_owned(),
            "certificateProvider.serviceCertValidityDuration=30s".to_owned(),
            "tresor.clockSkewAllowance=1s".to_owned(),
            "renewal.floor=2s".to_owned(),
        ]);
        settings
            .into_iter()
            .flat_map(|s| ["--set".to_owned(), s])
            .collect()
    }

    fn spawn(port: u16, root_token: String, args: Vec<String>, dir: Arc<tempfile::TempDir>) -> Bao {
        let log = dir.path().join(format!("bao-{}.log", random_suffix()));
        // The watchdog: start bao, print its PID, wait for stdin to close, kill bao.
        let script = r#"log=$1; shift; "$@" >"$log" 2>&1 & pid=$!; echo "$pid"; read -r _ignored; kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 0"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("bao-watchdog")
            .arg(&log)
            .arg(bao_binary())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OpenBao watchdog");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid: u32 = line.trim().parse().expect("the watchdog prints bao's PID");
        Bao {
            address: format!("http://127.0.0.1:{port}"),
            port,
            root_token,
            unseal_key: None,
            watchdog: Some((child, stdin)),
            pid,
            dir,
            args,
            client: http_client(),
        }
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".log") {
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Waits until `sys/health` answers with a status `ready` accepts.
    pub async fn wait_until(&mut self, ready: impl Fn(u16) -> bool) {
        let url = format!("{}/v1/sys/health", self.address);
        let what = format!("OpenBao at {} to be ready", self.address);
        eventually_ok(START_TIMEOUT, &what, || {
            assert!(self.running(), "OpenBao exited:\n{}", self.log());
            let request = self.client.get(&url).send();
            let log = self.log();
            let ready = &ready;
            async move {
                match request.await {
                    Ok(response) if ready(response.status().as_u16()) => Ok(()),
                    Ok(response) => Err(format!("sys/health {}; log:\n{log}", response.status())),
                    Err(e) => Err(format!("{e}; log:\n{log}")),
                }
            }
        })
        .await;
    }

    /// Whether the server process is alive (not gone, not a zombie). Linux `/proc`.
    fn running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().to_owned())
            })
            .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
    }

    /// Initialises a persistent server with one key share and unseals it.
    pub async fn init_and_unseal(&mut self) {
        let init = self
            .raw(
                reqwest::Method::POST,
                "sys/init",
                None,
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await
            .unwrap();
        self.root_token = init["root_token"].as_str().unwrap().to_owned();
        self.unseal_key = Some(init["keys_base64"][0].as_str().unwrap().to_owned());
        self.unseal().await;
    }

    /// Unseals a persistent server and waits until it is active.
    pub async fn unseal(&mut self) {
        let key = self.unseal_key.clone().expect("initialised");
        self.raw(
            reqwest::Method::POST,
            "sys/unseal",
            None,
            Some(json!({ "key": key })),
        )
        .await
        .unwrap();
        self.wait_until(|status| status == 200).await;
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts the same server again, same port and data, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let mut fresh = Bao::spawn(
            self.port,
            self.root_token.clone(),
            self.args.clone(),
            self.dir.clone(),
        );
        self.pid = fresh.pid;
        self.watchdog = fresh.watchdog.take();
        self.wait_until(|_| true).await;
    }

    /// The root of PKI mount `mount` (its default issuer's, `<mount>/cert/ca`) as a bundle.
    pub async fn root_bundle(&self, mount: &str) -> TrustBundle {
        let pem = self.read(&format!("{mount}/cert/ca")).await["data"]["certificate"]
            .as_str()
            .unwrap()
            .to_owned();
        TrustBundle::from_pem(&pem).unwrap()
    }

    /// An API call with the root token; `Err((status, body))` on an error status.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, (u16, String)> {
        let mut request = self
            .client
            .request(method, format!("{}/v1/{path}", self.address));
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&body).unwrap());
        }
        let response = request.send().await.map_err(|e| (0, e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err((status, text));
        }
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        })
    }

    /// POST/PUT with the root token, panicking on failure.
    pub async fn write(&self, path: &str, body: Value) -> Value {
        self.raw(
            reqwest::Method::POST,
            path,
            Some(&self.root_token.clone()),
            Some(body),
        )
        .await
        .unwrap_or_else(|(status, text)| panic!("POST {path}: {status} {text}"))
    }

    /// GET with the root token, panicking on failure.
    pub async fn read(&self, path: &str) -> Value {
        self.raw(
            reqwest::Method::GET,
            path,
            Some(&self.root_token.clone()),
            None,
        )
        .await
        .unwrap_or_else(|(status, text)| panic!("GET {path}: {status} {text}"))
    }

    /// LIST with the root token.
    pub async fn list(&self, path: &str) -> Vec<String> {
        let answer = self
            .raw(
                reqwest::Method::from_bytes(b"LIST").unwrap(),
                path,
                Some(&self.root_token.clone()),
                None,
            )
            .await
            .unwrap_or_else(|(status, text)| panic!("LIST {path}: {status} {text}"));
        answer["data"]["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A PKI engine at `mount` with an EC P-256 root `CN=<common_name>` and a role `meshca`
    /// as `deploy/dev/vault.sh` makes it (max_ttl 24h, names from meshca's parameters).
    pub async fn pki(&self, mount: &str, common_name: &str) {
        self.write(
            &format!("sys/mounts/{mount}"),
            json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}}),
        )
        .await;
        self.write(
            &format!("{mount}/root/generate/internal"),
            json!({"common_name": common_name, "key_type": "ec", "key_bits": 256, "ttl": "87600h"}),
        )
        .await;
        self.role(mount, "meshca", json!({})).await;
    }

    /// Creates or replaces a PKI role: meshca's defaults overridden by `overrides`.
    pub async fn role(&self, mount: &str, name: &str, overrides: Value) {
        let mut role = json!({
            "allow_any_name": true,
            "allowed_uri_sans": "spiffe://*",
            "key_type": "ec",
            "key_bits": 256,
            "max_ttl": "24h",
            "no_store": true,
            "require_cn": false,
            "enforce_hostnames": false,
            // meshca's parameters name the certificate, whatever a caller's CSR asks for.
            "use_csr_common_name": false,
            "use_csr_sans": false,
        });
        for (key, value) in overrides.as_object().unwrap() {
            role[key] = value.clone();
        }
        self.write(&format!("{mount}/roles/{name}"), role).await;
    }

    /// An intermediate CA at `mount`, signed by the root at `root_mount`, with the root in its
    /// chain; role `meshca` with `role_overrides`.
    pub async fn intermediate_pki(&self, mount: &str, root_mount: &str, role_overrides: Value) {
        self.write(
            &format!("sys/mounts/{mount}"),
            json!({"type": "pki", "config": {"max_lease_ttl": "43800h"}}),
        )
        .await;
        let csr = self
            .write(
                &format!("{mount}/intermediate/generate/internal"),
                json!({"common_name": "meshca test intermediate", "key_type": "ec", "key_bits": 256}),
            )
            .await["data"]["csr"]
            .as_str()
            .unwrap()
            .to_owned();
        let signed = self
            .write(
                &format!("{root_mount}/root/sign-intermediate"),
                json!({"csr": csr, "format": "pem_bundle", "ttl": "43800h"}),
            )
            .await;
        let root = self.read(&format!("{root_mount}/cert/ca")).await["data"]["certificate"]
            .as_str()
            .unwrap()
            .to_owned();
        let certificate = signed["data"]["certificate"].as_str().unwrap();
        self.write(
            &format!("{mount}/intermediate/set-signed"),
            json!({"certificate": format!("{certificate}\n{root}")}),
        )
        .await;
        self.role(mount, "meshca", role_overrides).await;
    }

    /// A policy named `name` allowing what meshca needs on `mount`.
    pub async fn meshca_policy(&self, name: &str, mount: &str) {
        let policy = format!(
            "path \"{mount}/sign/*\" {{ capabilities = [\"update\"] }}\n\
             path \"{mount}/issuer/+/sign/*\" {{ capabilities = [\"update\"] }}\n\
             path \"{mount}/issue/*\" {{ capabilities = [\"update\"] }}\n\
             path \"{mount}/roles/*\" {{ capabilities = [\"read\"] }}\n\
             path \"{mount}/cert/*\" {{ capabilities = [\"read\"] }}\n\
             path \"auth/token/lookup-self\" {{ capabilities = [\"read\"] }}\n\
             path \"auth/token/renew-self\" {{ capabilities = [\"update\"] }}\n"
        );
        self.write(
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": policy }),
        )
        .await;
    }

    /// A child token of root with `params` (`ttl`, `period`, `policies`, …).
    pub async fn token(&self, params: Value) -> String {
        self.write("auth/token/create", params).await["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `auth/token/lookup` of `token`, seen by root.
    pub async fn lookup(&self, token: &str) -> Value {
        self.write("auth/token/lookup", json!({ "token": token }))
            .await["data"]
            .clone()
    }

    /// AppRole at `approle/` with role `meshca` (policies `policy`, plus `params`); returns
    /// (role_id, secret_id).
    pub async fn approle(&self, policy: &str, params: Value) -> (String, String) {
        let _ = self
            .raw(
                reqwest::Method::POST,
                "sys/auth/approle",
                Some(&self.root_token.clone()),
                Some(json!({"type": "approle"})),
            )
            .await;
        let mut role = json!({ "token_policies": policy });
        for (key, value) in params.as_object().unwrap() {
            role[key] = value.clone();
        }
        self.write("auth/approle/role/meshca", role).await;
        let role_id = self.read("auth/approle/role/meshca/role-id").await["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let secret_id = self
            .write("auth/approle/role/meshca/secret-id", json!({}))
            .await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (role_id, secret_id)
    }

    /// Accessors of the live tokens that AppRole logins created.
    pub async fn approle_token_accessors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for accessor in self.list("auth/token/accessors").await {
            let info = self
                .raw(
                    reqwest::Method::POST,
                    "auth/token/lookup-accessor",
                    Some(&self.root_token.clone()),
                    Some(json!({ "accessor": accessor })),
                )
                .await;
            if let Ok(info) = info
                && info["data"]["path"].as_str() == Some("auth/approle/login")
            {
                out.push(accessor);
            }
        }
        out
    }

    /// Provider settings for this server with `token`, mount `pki`, role `meshca`.
    pub fn settings(&self, token: &str) -> VaultSettings {
        let https = self.address.starts_with("https://");
        VaultSettings {
            protocol: if https {
                Protocol::Https
            } else {
                Protocol::Http
            },
            host: "127.0.0.1".to_owned(),
            port: self.port,
            ca_file: https.then(|| self.tls_ca()),
            token: Some(Secret::new(token)),
            ..VaultSettings::default()
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}

fn random_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos)
}
