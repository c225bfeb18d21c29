//! `meshca bootstrap` against a Kubernetes API, as a user runs it: the `meshca` binary and
//! `kubectl` pointed by a kubeconfig at the stateful mock API server of `support/kube_api.rs`
//! (no real API server can run on these machines). What is real: the binary, its kube client,
//! kubectl, openssl, and OpenBao in the Vault case; what is mocked: the API server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use axum::http::Method;
use serde_json::Value;
use support::cli::{failed, ok};
use support::kube_api::{MockKube, secret_data};

const SECRET_PATH: &str = "/api/v1/namespaces/meshca-system/secrets/meshca-ca-bundle";
const SECRETS: &str = "/api/v1/namespaces/meshca-system/secrets";

async fn meshca(kube: &MockKube, args: &[&str]) -> Output {
    kube.meshca(&kube.dir().join("ca-dir-unused"), args).await
}

/// The `root SHA-256:` lines of a bootstrap report.
fn fingerprints(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("root SHA-256:"))
        .map(|f| f.trim().to_owned())
        .collect()
}

fn data_keys(secret: &Value) -> BTreeSet<String> {
    secret_data(secret).into_keys().collect()
}

fn value_of(secret: &Value, key: &str) -> Vec<u8> {
    secret_data(secret)
        .remove(key)
        .unwrap_or_else(|| panic!("no {key} in the Secret"))
}

/// SHA-256 of the first certificate of a PEM text, as openssl prints it.
fn openssl_fingerprint(pem: &[u8]) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .split_once('=')
        .unwrap()
        .1
        .replace(':', "")
        .to_lowercase()
}

fn normalized(fingerprint: &str) -> String {
    fingerprint.replace(':', "").to_lowercase()
}

/// A CA made by `meshca ca init` in a directory: (ca.crt, private.key) contents.
async fn directory_ca(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .arg("--ca-dir")
        .arg(dir)
        .args(["ca", "init"])
        .env_remove("MESHCA_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    (
        std::fs::read(dir.join("ca.crt")).unwrap(),
        std::fs::read(dir.join("private.key")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_creates_the_secret_and_kubectl_shows_the_root() {
    let kube = MockKube::start().await;
    let stdout = ok(&meshca(&kube, &["bootstrap", "--store", "kubernetes"]).await);
    assert!(stdout.contains("created a new root CA"), "{stdout}");

    // Read first, then create: exactly these two requests, with meshca's credentials.
    let requests = kube.requests();
    let calls: Vec<(String, String)> = requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET".to_owned(), SECRET_PATH.to_owned()),
            ("POST".to_owned(), SECRETS.to_owned())
        ]
    );
    assert!(
        requests
            .iter()
            .all(|r| r.bearer.as_deref() == Some(MockKube::ADMIN_TOKEN))
    );
    let body = requests[1].body.as_ref().unwrap();
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["metadata"]["name"], "meshca-ca-bundle");
    assert_eq!(body["metadata"]["namespace"], "meshca-system");
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshca"
    );
    assert_eq!(
        data_keys(body),
        BTreeSet::from(["ca.crt".to_owned(), "private.key".to_owned()])
    );
    assert!(
        String::from_utf8(value_of(body, "private.key"))
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );

    // The report's fingerprint is the stored root's.
    let stored = kube.object(SECRET_PATH).unwrap();
    let printed = fingerprints(&stdout);
    assert_eq!(printed.len(), 1);
    assert_eq!(
        normalized(&printed[0]),
        openssl_fingerprint(&value_of(&stored, "ca.crt"))
    );

    // The command the report prints works as printed, with the real kubectl.
    let command = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kubectl get secret"))
        .expect("the report shows the kubectl command");
    assert_eq!(
        command,
        "kubectl get secret meshca-ca-bundle -n meshca-system -o jsonpath='{.data.ca\\.crt}' \
         | base64 -d | openssl x509 -text -noout"
    );
    let shown = tokio::process::Command::new("sh")
        .args(["-c", command])
        .env("KUBECONFIG", kube.kubeconfig())
        .output()
        .await
        .expect("sh runs");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && text.contains("Subject: O = meshca, CN = meshca root"),
        "kubectl | base64 | openssl failed: {}\n{text}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(text.contains("CA:TRUE"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_adopts_a_valid_secret_without_writing() {
    let kube = MockKube::start().await;
    let first = ok(&meshca(&kube, &["bootstrap", "--store", "kubernetes"]).await);
    let before = kube.object(SECRET_PATH).unwrap();
    kube.clear_requests();

    let second = ok(&meshca(&kube, &["bootstrap", "--store", "kubernetes"]).await);
    assert!(second.contains("loaded the existing CA"), "{second}");
    assert_eq!(fingerprints(&first), fingerprints(&second));
    assert!(kube.writes().is_empty(), "wrote: {:?}", kube.writes());
    assert_eq!(kube.object(SECRET_PATH).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_bootstraps_create_one_secret() {
    let kube = MockKube::start().await;
    let runs = (0..8).map(|_| meshca(&kube, &["bootstrap", "--store", "kubernetes"]));
    let outputs = futures::future::join_all(runs).await;
    let reports: Vec<String> = outputs.iter().map(ok).collect();

    let created = reports
        .iter()
        .filter(|r| r.contains("created a new root CA"))
        .count();
    assert_eq!(created, 1, "{reports:#?}");
    let all: BTreeSet<Vec<String>> = reports.iter().map(|r| fingerprints(r)).collect();
    assert_eq!(all.len(), 1, "different roots reported: {all:?}");
    let stored = kube.object(SECRET_PATH).unwrap();
    assert_eq!(
        normalized(&all.into_iter().next().unwrap()[0]),
        openssl_fingerprint(&value_of(&stored, "ca.crt"))
    );
    // Every create after the first met 409 AlreadyExists; none updated anything.
    assert!(kube.writes().iter().all(|r| r.method == "POST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_mismatched_secrets_are_refused_without_a_write() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = directory_ca(&tmp.path().join("a")).await;
    let (_, key_b) = directory_ca(&tmp.path().join("b")).await;
    type Data<'a> = Vec<(&'a str, &'a [u8])>;
    let cases: [(&str, Data, &str); 4] = [
        (
            "corrupt ca.crt",
            vec![
                ("ca.crt", b"-----BEGIN CERTIFICATE-----\nnot base64\n"),
                ("private.key", &key_a),
            ],
            "Secret meshca-system/meshca-ca-bundle key ca.crt",
        ),
        (
            "mismatched key",
            vec![("ca.crt", &cert_a), ("private.key", &key_b)],
            "the private key does not belong to O=meshca, CN=meshca root",
        ),
        (
            "key missing",
            vec![("ca.crt", &cert_a)],
            "but Secret meshca-system/meshca-ca-bundle key private.key does not",
        ),
        (
            "empty Secret",
            vec![],
            "has neither a ca.crt nor a private.key key",
        ),
    ];
    for (case, data, expected) in cases {
        let kube = MockKube::start().await;
        kube.put_secret("meshca-system", "meshca-ca-bundle", &data);
        let before = kube.object(SECRET_PATH).unwrap();
        let stderr = failed(&meshca(&kube, &["bootstrap", "--store", "kubernetes"]).await);
        assert!(stderr.contains(expected), "{case}: {stderr}");
        assert!(stderr.contains("Nothing was changed"), "{case}: {stderr}");
        assert!(
            kube.writes().is_empty(),
            "{case}: wrote {:?}",
            kube.writes()
        );
        assert_eq!(kube.object(SECRET_PATH).unwrap(), before, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_fsm_ca_bundle_is_adopted_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = directory_ca(tmp.path()).await;
    let kube = MockKube::start().await;
    kube.put_secret(
        "fsm-system",
        "fsm-ca-bundle",
        &[("ca.crt", &cert), ("private.key", &key)],
    );

    let stdout = ok(&meshca(
        &kube,
        &[
            "bootstrap",
            "--name",
            "fsm-ca-bundle",
            "--namespace",
            "fsm-system",
        ],
    )
    .await);
    assert!(
        stdout.contains("loaded the existing CA in Kubernetes Secret fsm-system/fsm-ca-bundle"),
        "{stdout}"
    );
    assert_eq!(
        normalized(&fingerprints(&stdout)[0]),
        openssl_fingerprint(&cert)
    );
    assert!(
        stdout.contains("kubectl get secret fsm-ca-bundle -n fsm-system"),
        "{stdout}"
    );
    assert!(kube.writes().is_empty());
    assert_eq!(
        kube.requests()[0].path,
        "/api/v1/namespaces/fsm-system/secrets/fsm-ca-bundle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_files_imports_once_and_refuses_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("mine");
    let (cert, _) = directory_ca(&mine).await;
    let other = tmp.path().join("other");
    directory_ca(&other).await;
    let files = |dir: &Path| {
        [
            dir.join("ca.crt").display().to_string(),
            dir.join("private.key").display().to_string(),
        ]
    };
    let kube = MockKube::start().await;
    let [c, k] = files(&mine);
    let stdout = ok(&meshca(
        &kube,
        &["bootstrap", "--store", "kubernetes", "--from-files", &c, &k],
    )
    .await);
    assert!(stdout.contains("imported the CA"), "{stdout}");
    let stored = kube.object(SECRET_PATH).unwrap();
    assert_eq!(value_of(&stored, "ca.crt"), cert);

    let again = ok(&meshca(
        &kube,
        &["bootstrap", "--store", "kubernetes", "--from-files", &c, &k],
    )
    .await);
    assert!(
        again.contains("found the same CA already stored"),
        "{again}"
    );

    kube.clear_requests();
    let [c, k] = files(&other);
    let stderr = failed(
        &meshca(
            &kube,
            &["bootstrap", "--store", "kubernetes", "--from-files", &c, &k],
        )
        .await,
    );
    assert!(stderr.contains("already holds a CA"), "{stderr}");
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    // The create was attempted (and refused by the API server); nothing was replaced.
    assert!(kube.writes().iter().all(|r| r.method == "POST"));
    assert_eq!(kube.object(SECRET_PATH).unwrap(), stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_say_what_to_check() {
    let kube = MockKube::start().await;
    kube.fail(
        Method::GET,
        SECRET_PATH,
        403,
        "Forbidden",
        "secrets \"meshca-ca-bundle\" is forbidden: User \"system:serviceaccount:meshca-system:meshca\" \
         cannot get resource \"secrets\" in API group \"\" in the namespace \"meshca-system\"",
        1,
    );
    let stderr = failed(&meshca(&kube, &["bootstrap", "--store", "kubernetes"]).await);
    assert!(
        stderr.contains("cannot get resource \\\"secrets\\\"")
            || stderr.contains("cannot get resource \"secrets\""),
        "{stderr}"
    );
    assert!(stderr.contains("check RBAC"), "{stderr}");
    assert!(kube.writes().is_empty());

    kube.fail(
        Method::POST,
        SECRETS,
        500,
        "InternalError",
        "etcdserver: request timed out",
        1,
    );
    let stderr = failed(&meshca(&kube, &["bootstrap", "--store", "kubernetes"]).await);
    assert!(stderr.contains("answered 500"), "{stderr}");
    assert!(stderr.contains("etcdserver: request timed out"), "{stderr}");
    assert!(kube.object(SECRET_PATH).is_none());

    // Nothing listening: the address is named.
    let dead = MockKube::start().await;
    let kubeconfig = std::fs::read_to_string(dead.kubeconfig()).unwrap();
    let port = free_port();
    std::fs::write(
        dead.kubeconfig(),
        kubeconfig.replace(&dead.addr.to_string(), &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let stderr = failed(&meshca(&dead, &["bootstrap", "--store", "kubernetes"]).await);
    assert!(stderr.contains("reachable"), "{stderr}");

    // Bad names are refused before any request.
    let stderr = failed(&meshca(&kube, &["bootstrap", "--namespace", "Not_A_Namespace"]).await);
    assert!(stderr.contains("namespace"), "{stderr}");
    let stderr =
        failed(&meshca(&kube, &["bootstrap", "--store", "directory", "--name", "x"]).await);
    assert!(stderr.contains("--store directory"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_publishes_only_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, _) = directory_ca(&tmp.path().join("issuer")).await;
    let root = tmp.path().join("issuer/ca.crt").display().to_string();
    let kube = MockKube::start().await;
    let args = [
        "--set",
        "certificateProvider.kind=cert-manager",
        "bootstrap",
        "--from-files",
        &root,
    ];
    let stdout = ok(&meshca(&kube, &args).await);
    assert!(
        stdout.contains("published the cert-manager trust bundle"),
        "{stdout}"
    );
    let stored = kube.object(SECRET_PATH).unwrap();
    assert_eq!(data_keys(&stored), BTreeSet::from(["ca.crt".to_owned()]));
    assert_eq!(value_of(&stored, "ca.crt"), cert);

    let again = ok(&meshca(&kube, &args).await);
    assert!(
        again.contains("found the cert-manager trust bundle"),
        "{again}"
    );

    // Another root is not written over the published one.
    let (_, _) = directory_ca(&tmp.path().join("other")).await;
    let other = tmp.path().join("other/ca.crt").display().to_string();
    kube.clear_requests();
    let stderr = failed(
        &meshca(
            &kube,
            &[
                "--set",
                "certificateProvider.kind=cert-manager",
                "bootstrap",
                "--from-files",
                &other,
            ],
        )
        .await,
    );
    assert!(stderr.contains("already holds other roots"), "{stderr}");
    assert!(kube.writes().is_empty());

    // A key has no place in a bundle-only Secret.
    let key = tmp.path().join("issuer/private.key").display().to_string();
    let stderr = failed(
        &meshca(
            &kube,
            &[
                "--set",
                "certificateProvider.kind=cert-manager",
                "bootstrap",
                "--from-files",
                &root,
                &key,
            ],
        )
        .await,
    );
    assert!(
        stderr.contains("the CA's key stays in cert-manager"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_publishes_its_root_without_a_key() {
    // Real: OpenBao (dev server) and the meshca binary; mocked: the Kubernetes API.
    let bao = support::bao::Bao::dev().await;
    bao.pki("pki", "meshca bootstrap vault root").await;
    let vault_root = bao.read("pki/cert/ca").await["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    let kube = MockKube::start().await;
    let port = bao.port.to_string();
    let set = |kv: &str| kv.to_owned();
    let args = [
        set("--set"),
        set("certificateProvider.kind=vault"),
        set("--set"),
        set("vault.protocol=http"),
        set("--set"),
        set("vault.host=127.0.0.1"),
        set("--set"),
        format!("vault.port={port}"),
        set("--set"),
        format!("vault.token={}", bao.root_token),
        set("bootstrap"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = ok(&meshca(&kube, &args).await);
    assert!(
        stdout.contains("published the vault trust bundle"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&bao.root_token),
        "the token leaked: {stdout}"
    );
    let stored = kube.object(SECRET_PATH).unwrap();
    assert_eq!(data_keys(&stored), BTreeSet::from(["ca.crt".to_owned()]));
    assert_eq!(
        openssl_fingerprint(&value_of(&stored, "ca.crt")),
        openssl_fingerprint(vault_root.as_bytes())
    );
    assert_eq!(
        normalized(&fingerprints(&stdout)[0]),
        openssl_fingerprint(vault_root.as_bytes())
    );
}
