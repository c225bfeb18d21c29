//! `meshca issue --secret ns/name`: a managed `kubernetes.io/tls` Secret, as a user runs it —
//! the `meshca` binary pointed by a kubeconfig at the stateful mock API server of
//! `support/kube_api.rs` (no real API server can run on these machines). What is real: the
//! binary, its kube client, the Tresor CA (a temporary directory), openssl and kubectl; what is
//! mocked: the API server. The library API the rotation cron reuses (`list_managed`,
//! `TlsSecretWriter`) is driven against the same mock at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use axum::http::Method;
use meshca::kubernetes::{ManagedTlsSecret, TlsMaterial, Written, list_managed};
use serde_json::{Value, json};
use support::cli::{failed, ok, openssl};
use support::kube_api::{MockKube, Recorded, secret_data as data};

const WEB_TLS: &str = "/api/v1/namespaces/shop/secrets/web-tls";
const SHOP_SECRETS: &str = "/api/v1/namespaces/shop/secrets";

/// A mock API server and a Tresor CA directory shared by the runs of one test.
struct Setup {
    kube: MockKube,
    ca_dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        Self {
            kube: MockKube::start().await,
            ca_dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn meshca(&self, args: &[&str]) -> Output {
        self.kube.meshca(self.ca_dir.path(), args).await
    }

    /// `meshca issue --identity shop/web --dns web.example.com --lifetime 2h --secret shop/web-tls`
    async fn issue_web(&self) -> Output {
        self.meshca(&[
            "issue",
            "--identity",
            "shop/web",
            "--dns",
            "web.example.com",
            "--lifetime",
            "2h",
            "--secret",
            "shop/web-tls",
        ])
        .await
    }

    fn root_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_dir.path().join("ca.crt")).unwrap()
    }
}

fn calls(requests: &[Recorded]) -> Vec<(String, String)> {
    requests
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect()
}

fn call(method: &str, path: &str) -> (String, String) {
    (method.to_owned(), path.to_owned())
}

/// Writes the Secret's values to files in `dir`; returns (tls.crt, tls.key, ca.crt) paths.
fn write_out(secret: &Value, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = data(secret);
    let write = |key: &str| {
        let path = dir.join(key);
        std::fs::write(&path, &data[key]).unwrap();
        path
    };
    (write("tls.crt"), write("tls.key"), write("ca.crt"))
}

/// What a user checks of a managed Secret with openssl: the chain verifies against ca.crt,
/// and tls.key is the key of tls.crt. Returns the leaf's text dump.
fn check_with_openssl(secret: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key, ca) = write_out(secret, dir.path());
    let (crt, key, ca) = (
        crt.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    // tls.crt is the leaf followed by its intermediates.
    let verified = openssl(&["verify", "-CAfile", ca, "-untrusted", crt, crt]);
    assert!(verified.trim().ends_with(": OK"), "{verified}");
    let from_certificate = openssl(&["x509", "-in", crt, "-noout", "-pubkey"]);
    let from_key = openssl(&["pkey", "-in", key, "-pubout"]);
    assert_eq!(from_certificate, from_key, "tls.key does not match tls.crt");
    let key_text = std::fs::read_to_string(key).unwrap();
    assert!(
        key_text.starts_with("-----BEGIN PRIVATE KEY-----"),
        "tls.key is not PKCS#8 PEM"
    );
    openssl(&["x509", "-in", crt, "-noout", "-text", "-enddate", "-serial"])
}

fn sha256_fingerprint(pem: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pem");
    std::fs::write(&path, pem).unwrap();
    let out = openssl(&[
        "x509",
        "-in",
        path.to_str().unwrap(),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    out.trim().split_once('=').unwrap().1.to_owned()
}

/// `notAfter=Nov 23 16:48:30 2026 GMT` → RFC 3339, via openssl's own `-dateopt iso_8601`.
fn not_after_iso(secret: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (crt, _, _) = write_out(secret, dir.path());
    let out = openssl(&[
        "x509",
        "-in",
        crt.to_str().unwrap(),
        "-noout",
        "-enddate",
        "-dateopt",
        "iso_8601",
    ]);
    // notAfter=2026-11-23 16:48:30Z
    out.trim()
        .strip_prefix("notAfter=")
        .unwrap()
        .replace(' ', "T")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_creates_a_managed_tls_secret() {
    let setup = Setup::new().await;
    let stdout = ok(&setup.issue_web().await);
    assert!(
        stdout.contains("created Secret shop/web-tls (kubernetes.io/tls"),
        "{stdout}"
    );

    // Read first, then create: exactly these requests, with the kubeconfig's credentials.
    let requests = setup.kube.requests();
    assert_eq!(
        calls(&requests),
        [call("GET", WEB_TLS), call("POST", SHOP_SECRETS)]
    );
    assert!(
        requests
            .iter()
            .all(|r| r.bearer.as_deref() == Some(MockKube::ADMIN_TOKEN))
    );
    let body = requests[1].body.as_ref().unwrap();
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "kubernetes.io/tls");
    assert_eq!(body["metadata"]["name"], "web-tls");
    assert_eq!(body["metadata"]["namespace"], "shop");
    assert!(body.get("stringData").is_none());
    assert_eq!(
        body["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "meshca", "meshca.io/managed-certificate": "true"})
    );
    assert_eq!(
        data(body).keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["ca.crt".into(), "tls.crt".into(), "tls.key".into()])
    );
    let annotations = &body["metadata"]["annotations"];
    assert_eq!(
        annotations["meshca.io/identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(annotations["meshca.io/dns-names"], "web.example.com");
    assert_eq!(annotations["meshca.io/lifetime"], "2h");
    assert_eq!(annotations["meshca.io/key-type"], "p256");
    assert_eq!(
        annotations["meshca.io/not-after"].as_str().unwrap(),
        not_after_iso(body)
    );
    // The root the leaf chains to: the CA directory's root, and ca.crt.
    assert_eq!(
        annotations["meshca.io/root-sha256"].as_str().unwrap(),
        sha256_fingerprint(&setup.root_pem())
    );
    assert_eq!(data(body)["ca.crt"], setup.root_pem());
    assert!(
        stdout.contains(&format!(
            "root SHA-256: {}",
            annotations["meshca.io/root-sha256"].as_str().unwrap()
        )),
        "{stdout}"
    );

    // What openssl says of what was stored.
    let stored = setup.kube.object(WEB_TLS).unwrap();
    let text = check_with_openssl(&stored);
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/shop/sa/web"),
        "{text}"
    );
    assert!(text.contains("DNS:web.example.com"), "{text}");

    // The command the report prints works as printed, with the real kubectl.
    let command = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Show: "))
        .expect("the report shows a kubectl command");
    assert_eq!(
        command,
        "kubectl get secret web-tls -n shop -o jsonpath='{.data.tls\\.crt}' | base64 -d | \
         openssl x509 -text -noout"
    );
    let shown = tokio::process::Command::new("sh")
        .args(["-c", command])
        .env("KUBECONFIG", setup.kube.kubeconfig())
        .output()
        .await
        .unwrap();
    let shown_text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && shown_text.contains("URI:spiffe://cluster.local/ns/shop/sa/web"),
        "kubectl | base64 | openssl failed: {}\n{shown_text}",
        String::from_utf8_lossy(&shown.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_records_an_empty_identity() {
    let setup = Setup::new().await;
    let stdout = ok(&setup
        .meshca(&[
            "issue",
            "--dns",
            "gw.example.com",
            "--dns",
            "gw.ingress.svc",
            "--key-type",
            "rsa2048",
            "--secret",
            "ingress/gw-tls",
        ])
        .await);
    assert!(stdout.contains("created Secret ingress/gw-tls"), "{stdout}");
    let stored = setup
        .kube
        .object("/api/v1/namespaces/ingress/secrets/gw-tls")
        .unwrap();
    let annotations = &stored["metadata"]["annotations"];
    assert_eq!(annotations["meshca.io/identity"], "");
    assert_eq!(
        annotations["meshca.io/dns-names"],
        "gw.example.com,gw.ingress.svc"
    );
    assert_eq!(annotations["meshca.io/key-type"], "rsa2048");
    // The default lifetime (certificateProvider.serviceCertValidityDuration).
    assert_eq!(annotations["meshca.io/lifetime"], "24h");
    let text = check_with_openssl(&stored);
    assert!(
        text.contains("DNS:gw.example.com, DNS:gw.ingress.svc"),
        "{text}"
    );
    assert!(!text.contains("URI:"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_replaces_with_the_read_resource_version() {
    let setup = Setup::new().await;
    ok(&setup.issue_web().await);
    let first = setup.kube.object(WEB_TLS).unwrap();

    // Someone adds a label and an annotation of their own; meshca must keep them.
    let mut edited = first.clone();
    edited["metadata"]["labels"]["team"] = json!("shop");
    edited["metadata"]["annotations"]["reloader.example/watch"] = json!("true");
    setup.kube.put_object(WEB_TLS, edited);
    let read_version = setup.kube.object(WEB_TLS).unwrap()["metadata"]["resourceVersion"].clone();
    setup.kube.clear_requests();

    let stdout = ok(&setup.issue_web().await);
    assert!(stdout.contains("replaced Secret shop/web-tls"), "{stdout}");
    let requests = setup.kube.requests();
    assert_eq!(
        calls(&requests),
        [call("GET", WEB_TLS), call("PUT", WEB_TLS)]
    );
    let body = requests[1].body.as_ref().unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], read_version);
    assert_eq!(body["type"], "kubernetes.io/tls");
    assert_eq!(body["metadata"]["labels"]["team"], "shop");
    assert_eq!(
        body["metadata"]["labels"]["meshca.io/managed-certificate"],
        "true"
    );
    assert_eq!(
        body["metadata"]["annotations"]["reloader.example/watch"],
        "true"
    );

    // A new certificate and key, still verifying, under the same root.
    let second = setup.kube.object(WEB_TLS).unwrap();
    assert_ne!(data(&first)["tls.crt"], data(&second)["tls.crt"]);
    assert_ne!(data(&first)["tls.key"], data(&second)["tls.key"]);
    assert_ne!(
        second["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    check_with_openssl(&second);
    assert_eq!(
        second["metadata"]["annotations"]["meshca.io/root-sha256"],
        first["metadata"]["annotations"]["meshca.io/root-sha256"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_on_put_is_retried() {
    let setup = Setup::new().await;
    ok(&setup.issue_web().await);

    // A real conflict: another client updates the Secret right after each of meshca's first
    // two reads, so the PUT carrying the version meshca read is refused by the version check.
    setup.kube.touch_after_read(WEB_TLS, 2);
    setup.kube.clear_requests();
    let stdout = ok(&setup.issue_web().await);
    assert!(stdout.contains("replaced Secret shop/web-tls"), "{stdout}");
    let requests = setup.kube.requests();
    assert_eq!(
        calls(&requests),
        [
            call("GET", WEB_TLS),
            call("PUT", WEB_TLS),
            call("GET", WEB_TLS),
            call("PUT", WEB_TLS),
            call("GET", WEB_TLS),
            call("PUT", WEB_TLS),
        ]
    );
    // Each PUT carried the version its GET had just seen (the touch happened after it).
    let stored = setup.kube.object(WEB_TLS).unwrap();
    let versions: Vec<&Value> = requests
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| &r.body.as_ref().unwrap()["metadata"]["resourceVersion"])
        .collect();
    assert_eq!(versions.len(), 3);
    assert!(versions[0] != versions[1] && versions[1] != versions[2]);
    // The final write kept the concurrent writer's annotation and is a valid Secret.
    assert!(stored["metadata"]["annotations"]["meshca.test/touched"].is_string());
    check_with_openssl(&stored);

    // An injected 409 on PUT is retried the same way.
    setup.kube.clear_requests();
    setup.kube.fail(
        Method::PUT,
        WEB_TLS,
        409,
        "Conflict",
        "the object has been modified",
        1,
    );
    ok(&setup.issue_web().await);
    assert_eq!(
        calls(&setup.kube.requests()),
        [
            call("GET", WEB_TLS),
            call("PUT", WEB_TLS),
            call("GET", WEB_TLS),
            call("PUT", WEB_TLS),
        ]
    );

    // A Secret that never stops changing: bounded, then a clear error.
    let before = setup.kube.object(WEB_TLS).unwrap();
    setup.kube.clear_requests();
    setup.kube.touch_after_read(WEB_TLS, 100);
    let stderr = failed(&setup.issue_web().await);
    assert!(
        stderr.contains("kept changing while meshca wrote it"),
        "{stderr}"
    );
    assert!(stderr.contains("5 attempts"), "{stderr}");
    let puts = setup
        .kube
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 5);
    // Only the simulated writer changed it.
    let after = setup.kube.object(WEB_TLS).unwrap();
    assert_eq!(data(&after), data(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_race_is_settled_by_replacing() {
    // Another meshca's Secret, created between our GET (answered 404 here) and our POST: the
    // POST meets the API server's 409 AlreadyExists; meshca reads it, finds it managed and
    // replaces it.
    let setup = Setup::new().await;
    let other = Setup::new().await;
    ok(&other.issue_web().await);
    setup
        .kube
        .put_object(WEB_TLS, other.kube.object(WEB_TLS).unwrap());
    setup.kube.fail(
        Method::GET,
        WEB_TLS,
        404,
        "NotFound",
        "secrets \"web-tls\" not found",
        1,
    );
    let stdout = ok(&setup.issue_web().await);
    assert!(stdout.contains("replaced Secret shop/web-tls"), "{stdout}");
    assert_eq!(
        calls(&setup.kube.requests()),
        [
            call("GET", WEB_TLS),
            call("POST", SHOP_SECRETS),
            call("GET", WEB_TLS),
            call("PUT", WEB_TLS),
        ]
    );
    check_with_openssl(&setup.kube.object(WEB_TLS).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_secret_is_refused_without_a_write() {
    let tls = |labels: Value, type_: &str| {
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": type_,
            "metadata": {"labels": labels},
            "data": {"tls.crt": "Zm9yZWlnbg==", "tls.key": "Zm9yZWlnbg=="},
        })
    };
    let cases = [
        (
            "unlabelled TLS Secret",
            tls(json!({}), "kubernetes.io/tls"),
            "it has no app.kubernetes.io/managed-by=meshca label",
        ),
        (
            "another tool's",
            tls(
                json!({"app.kubernetes.io/managed-by": "cert-manager"}),
                "kubernetes.io/tls",
            ),
            "it is labelled app.kubernetes.io/managed-by=cert-manager",
        ),
        (
            "meshca's CA bundle",
            tls(json!({"app.kubernetes.io/managed-by": "meshca"}), "Opaque"),
            "it may be the CA bundle",
        ),
        (
            "labelled but Opaque",
            tls(
                json!({"app.kubernetes.io/managed-by": "meshca", "meshca.io/managed-certificate": "true"}),
                "Opaque",
            ),
            "its type is Opaque, not kubernetes.io/tls",
        ),
    ];
    for (case, object, expected) in cases {
        let setup = Setup::new().await;
        setup.kube.put_object(WEB_TLS, object);
        let before = setup.kube.object(WEB_TLS).unwrap();
        let stderr = failed(&setup.issue_web().await);
        assert!(
            stderr.contains("Secret shop/web-tls exists and is not a meshca-managed TLS Secret"),
            "{case}: {stderr}"
        );
        assert!(stderr.contains(expected), "{case}: {stderr}");
        assert!(stderr.contains("Nothing was changed"), "{case}: {stderr}");
        assert_eq!(
            calls(&setup.kube.requests()),
            [call("GET", WEB_TLS)],
            "{case}"
        );
        assert_eq!(setup.kube.object(WEB_TLS).unwrap(), before, "{case}");
        // Refused before anything was issued: the CA directory was not even created.
        assert!(!setup.ca_dir.path().join("ca.crt").exists(), "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_gives_an_rbac_hint() {
    let setup = Setup::new().await;
    setup.kube.fail(
        Method::GET,
        WEB_TLS,
        403,
        "Forbidden",
        "secrets \"web-tls\" is forbidden: User \"alice\" cannot get resource \"secrets\" in \
         API group \"\" in the namespace \"shop\"",
        1,
    );
    let stderr = failed(&setup.issue_web().await);
    assert!(stderr.contains("Secret shop/web-tls"), "{stderr}");
    assert!(stderr.contains("forbade get"), "{stderr}");
    assert!(stderr.contains("check RBAC"), "{stderr}");
    assert!(
        stderr.contains("get, list, create and update on secrets in namespace shop"),
        "{stderr}"
    );
    assert!(setup.kube.writes().is_empty());

    // Allowed to read, not to create.
    setup.kube.clear_requests();
    setup.kube.fail(
        Method::POST,
        SHOP_SECRETS,
        403,
        "Forbidden",
        "secrets is forbidden: User \"alice\" cannot create resource \"secrets\"",
        1,
    );
    let stderr = failed(&setup.issue_web().await);
    assert!(stderr.contains("forbade create"), "{stderr}");
    assert!(stderr.contains("check RBAC"), "{stderr}");
    assert!(setup.kube.object(WEB_TLS).is_none());

    // A missing namespace.
    setup.kube.fail(
        Method::POST,
        SHOP_SECRETS,
        404,
        "NotFound",
        "namespaces \"shop\" not found",
        1,
    );
    let stderr = failed(&setup.issue_web().await);
    assert!(
        stderr.contains("check that namespace shop exists"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_destination_and_a_valid_reference() {
    let setup = Setup::new().await;
    let out_dir = setup.ca_dir.path().join("out");
    let out_dir = out_dir.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["issue", "--identity", "shop/web"],
            "the following required arguments were not provided",
        ),
        (
            vec![
                "issue",
                "--identity",
                "shop/web",
                "--out-dir",
                out_dir,
                "--secret",
                "shop/web-tls",
            ],
            "cannot be used with",
        ),
        (
            vec!["issue", "--identity", "shop/web", "--secret", "web-tls"],
            "write it as <namespace>/<name>",
        ),
        (
            vec![
                "issue",
                "--identity",
                "shop/web",
                "--secret",
                "Shop/web-tls",
            ],
            "must be a DNS label",
        ),
    ];
    for (args, expected) in cases {
        let stderr = failed(&setup.meshca(&args).await);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let stderr = failed(&setup.meshca(&["issue", "--secret", "shop/web-tls"]).await);
    assert!(stderr.contains("say what to certify"), "{stderr}");
    assert!(setup.kube.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_ca_store_signs_the_managed_secret() {
    let setup = Setup::new().await;
    let with_store = |args: &[&'static str]| {
        let mut all = vec!["--set", "tresor.store=kubernetes"];
        all.extend_from_slice(args);
        all
    };
    ok(&setup.meshca(&with_store(&["bootstrap"])).await);
    let bundle = setup
        .kube
        .object("/api/v1/namespaces/meshca-system/secrets/meshca-ca-bundle")
        .unwrap();
    ok(&setup
        .meshca(&with_store(&[
            "issue",
            "--identity",
            "shop/web",
            "--secret",
            "shop/web-tls",
        ]))
        .await);
    let stored = setup.kube.object(WEB_TLS).unwrap();
    assert_eq!(data(&stored)["ca.crt"], data(&bundle)["ca.crt"]);
    assert_eq!(
        stored["metadata"]["annotations"]["meshca.io/root-sha256"]
            .as_str()
            .unwrap(),
        sha256_fingerprint(&data(&bundle)["ca.crt"])
    );
    check_with_openssl(&stored);
    // The CA bundle Secret is meshca's but not a certificate to manage: refused as a target.
    let stderr = failed(
        &setup
            .meshca(&with_store(&[
                "issue",
                "--identity",
                "meshca-system/web",
                "--secret",
                "meshca-system/meshca-ca-bundle",
            ]))
            .await,
    );
    assert!(stderr.contains("it may be the CA bundle"), "{stderr}");
    assert_eq!(
        setup
            .kube
            .object("/api/v1/namespaces/meshca-system/secrets/meshca-ca-bundle")
            .unwrap(),
        bundle
    );
}

/// The API the rotation cron reuses: find managed Secrets by label, read their records, and
/// replace one through the writer the list returned (a PUT with the listed resourceVersion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_managed_finds_what_issue_wrote() {
    let setup = Setup::new().await;
    ok(&setup.issue_web().await);
    ok(&setup
        .meshca(&[
            "issue",
            "--dns",
            "gw.example.com",
            "--secret",
            "ingress/gw-tls",
        ])
        .await);
    // Not managed: no label, and a labelled Secret of the wrong type.
    setup
        .kube
        .put_secret("shop", "db-password", &[("password", b"x")]);
    setup.kube.put_object(
        "/api/v1/namespaces/shop/secrets/odd",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"labels": {"meshca.io/managed-certificate": "true"}}}),
    );
    setup.kube.clear_requests();

    let client = setup.kube.client().await;
    let all = list_managed(client.clone(), None).await.unwrap();
    let mut names: Vec<String> = all.iter().map(|l| l.writer.target().to_string()).collect();
    names.sort();
    assert_eq!(names, ["ingress/gw-tls", "shop/web-tls"]);
    let requests = setup.kube.requests();
    assert_eq!(requests[0].path, "/api/v1/secrets");
    assert!(
        requests[0]
            .query
            .as_deref()
            .unwrap()
            .contains("labelSelector=meshca.io%2Fmanaged-certificate%3Dtrue"),
        "{:?}",
        requests[0].query
    );

    let mut shop = list_managed(client, Some("shop")).await.unwrap();
    assert_eq!(shop.len(), 1);
    let listed = shop.pop().unwrap();
    let record: ManagedTlsSecret = listed.record.unwrap();
    assert_eq!(
        record.identity.as_ref().unwrap().to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(record.dns, ["web.example.com"]);
    assert_eq!(record.lifetime, std::time::Duration::from_secs(7200));
    let stored = setup.kube.object(WEB_TLS).unwrap();
    let listed_version = stored["metadata"]["resourceVersion"].clone();

    // Renew it through the listed writer: here with the same material and a changed record.
    let values = data(&stored);
    let text = |key: &str| String::from_utf8(values[key].clone()).unwrap();
    let material = TlsMaterial {
        chain_pem: text("tls.crt"),
        key_pem: zeroize::Zeroizing::new(text("tls.key")),
        trust_bundle_pem: text("ca.crt"),
    };
    let mut renewed = record.clone();
    renewed.lifetime = std::time::Duration::from_secs(3 * 3600);
    setup.kube.clear_requests();
    let mut writer = listed.writer;
    assert_eq!(
        writer.write(&renewed, &material).await.unwrap(),
        Written::Replaced
    );
    let requests = setup.kube.requests();
    assert_eq!(calls(&requests), [call("PUT", WEB_TLS)]);
    assert_eq!(
        requests[0].body.as_ref().unwrap()["metadata"]["resourceVersion"],
        listed_version
    );
    assert_eq!(
        setup.kube.object(WEB_TLS).unwrap()["metadata"]["annotations"]["meshca.io/lifetime"],
        "3h"
    );
}

/// A managed Secret certifies an identity of its own namespace only: `--identity` of another
/// namespace is refused before the API server, the CA or the backend is touched (the cron
/// renews a Secret's annotated identity, so a Secret in namespace `a` for `b/sa` would hand
/// `b`'s identity to whoever can read Secrets in `a`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_of_another_namespace_is_refused() {
    let setup = Setup::new().await;
    let output = setup
        .meshca(&["issue", "--identity", "b/sa", "--secret", "a/x"])
        .await;
    let stderr = failed(&output);
    assert!(
        stderr.contains("--identity b/sa is in namespace b, but --secret a/x is in namespace a"),
        "{stderr}"
    );
    assert!(stderr.contains("--secret b/<name>"), "{stderr}");
    assert!(
        setup.kube.requests().is_empty(),
        "{:?}",
        setup.kube.requests()
    );
    assert!(!setup.ca_dir.path().join("ca.crt").exists());

    // The same namespace is fine.
    ok(&setup
        .meshca(&["issue", "--identity", "a/sa", "--secret", "a/x"])
        .await);
}
