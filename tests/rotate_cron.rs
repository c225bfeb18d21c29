//! `meshca rotate` (no command): the CronJob's pass over managed `kubernetes.io/tls` Secrets, as
//! the CronJob runs it — the real `meshca` binary pointed by a kubeconfig at the stateful mock
//! API server of `support/kube_api.rs`. What is real: the binary, its kube client, the Tresor CA
//! (a temporary directory) and openssl; what is mocked: the API server.
//!
//! Secrets that are due or expired are planted through meshca's own library (the code `meshca
//! issue --secret` runs) with a Tresor whose clock is set in the past, so no test waits for a
//! certificate to age.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::Method;
use meshca::cli::issue::issue_validated;
use meshca::config::Config;
use meshca::kubernetes::{SecretRef, TlsSecretWriter};
use meshca_provider::{Clock, KeyType, LeafSpec, SpiffeId, TrustDomain};
use serde_json::{Value, json};
use support::cli::{failed, ok, openssl};
use support::eventually_ok_every;
use support::kube_api::{MockKube, Recorded, secret_data as data};

const SHOP_SECRETS: &str = "/api/v1/namespaces/shop/secrets";
const WEB_TLS: &str = "/api/v1/namespaces/shop/secrets/web-tls";
const API_TLS: &str = "/api/v1/namespaces/shop/secrets/api-tls";
const OLD_TLS: &str = "/api/v1/namespaces/shop/secrets/old-tls";

const MINUTE: Duration = Duration::from_secs(60);

/// A clock stopped at one instant.
#[derive(Debug)]
struct StoppedClock(SystemTime);

impl Clock for StoppedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// A mock API server and a Tresor CA directory shared by the runs of one test.
struct Setup {
    kube: MockKube,
    ca_dir: tempfile::TempDir,
}

impl Setup {
    /// Creates the CA as of a day ago, so that certificates can be planted as of hours ago.
    async fn new() -> Self {
        let setup = Self {
            kube: MockKube::start().await,
            ca_dir: tempfile::tempdir().unwrap(),
        };
        let day_ago = SystemTime::now() - 24 * 60 * MINUTE;
        meshca::providers::build(&setup.config(), Arc::new(StoppedClock(day_ago)))
            .await
            .unwrap();
        setup
    }

    fn config(&self) -> Config {
        let mut config = Config::default();
        config.tresor.directory = self.ca_dir.path().to_owned();
        config
    }

    async fn meshca(&self, args: &[&str]) -> Output {
        self.kube.meshca(self.ca_dir.path(), args).await
    }

    /// `meshca rotate --namespace shop`
    async fn rotate(&self) -> Output {
        self.meshca(&["rotate", "--namespace", "shop"]).await
    }

    /// `meshca rotate --namespace shop`, which must fail (without key material in its output);
    /// returns its standard output, the per-Secret report.
    async fn rotate_failing(&self) -> String {
        let output = self.rotate().await;
        failed(&output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Writes the managed Secret `shop/<name>` as `meshca issue --secret` does, with a
    /// certificate issued `ago` for `lifetime` (Tresor back-dates NotBefore by a minute more).
    async fn plant(
        &self,
        name: &str,
        identity: Option<&str>,
        dns: &[&str],
        ago: Duration,
        lifetime: Duration,
    ) -> Value {
        self.plant_in("shop", name, identity, dns, ago, lifetime)
            .await
    }

    /// [`Self::plant`] in `namespace`.
    async fn plant_in(
        &self,
        namespace: &str,
        name: &str,
        identity: Option<&str>,
        dns: &[&str],
        ago: Duration,
        lifetime: Duration,
    ) -> Value {
        let clock = Arc::new(StoppedClock(SystemTime::now() - ago));
        let provider = meshca::providers::build(&self.config(), clock.clone())
            .await
            .unwrap();
        let dns: Vec<meshca_provider::DnsName> = dns.iter().map(|d| d.parse().unwrap()).collect();
        let spec = match identity {
            Some(short) => LeafSpec::workload(
                &SpiffeId::from_short(short, &TrustDomain::default()).unwrap(),
                &dns,
                lifetime,
            ),
            None => LeafSpec::server(dns.clone(), lifetime),
        };
        let pipeline = meshca::issuance::Pipeline::new(
            provider,
            self.config().pipeline_settings().unwrap(),
            clock,
        );
        let issued = issue_validated(&pipeline, spec, KeyType::P256)
            .await
            .unwrap();
        let (record, material) = issued.for_managed_secret(&dns, lifetime).unwrap();
        let target = SecretRef::new(namespace, name).unwrap();
        let mut writer = TlsSecretWriter::open(self.kube.client().await, target)
            .await
            .unwrap();
        writer.write(&record, &material).await.unwrap();
        self.kube
            .object(&format!("/api/v1/namespaces/{namespace}/secrets/{name}"))
            .unwrap()
    }

    fn root_path(&self) -> std::path::PathBuf {
        self.ca_dir.path().join("ca.crt")
    }
}

/// What openssl says of a Secret's certificate: (serial, notAfter as RFC 3339), after checking
/// that tls.crt verifies against the CA's own root file and against the Secret's ca.crt, and
/// that tls.key is its key.
fn check_with_openssl(secret: &Value, root: &Path) -> (String, String) {
    let values = data(secret);
    let dir = tempfile::tempdir().unwrap();
    let write = |key: &str| {
        let path = dir.path().join(key);
        std::fs::write(&path, &values[key]).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (crt, key, ca) = (write("tls.crt"), write("tls.key"), write("ca.crt"));
    let root = root.to_str().unwrap();
    for anchor in [root, ca.as_str()] {
        let verified = openssl(&["verify", "-CAfile", anchor, "-untrusted", &crt, &crt]);
        assert!(verified.trim().ends_with(": OK"), "{verified}");
    }
    assert_eq!(
        openssl(&["x509", "-in", &crt, "-noout", "-pubkey"]),
        openssl(&["pkey", "-in", &key, "-pubout"]),
        "tls.key does not match tls.crt"
    );
    let serial = openssl(&["x509", "-in", &crt, "-noout", "-serial"]);
    let not_after = openssl(&[
        "x509", "-in", &crt, "-noout", "-enddate", "-dateopt", "iso_8601",
    ]);
    (
        serial
            .trim()
            .strip_prefix("serial=")
            .unwrap()
            .to_lowercase(),
        not_after
            .trim()
            .strip_prefix("notAfter=")
            .unwrap()
            .replace(' ', "T"),
    )
}

/// openssl's view of the leaf's subjectAltName extension.
fn subject_alt_names(secret: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.crt");
    std::fs::write(&path, &data(secret)["tls.crt"]).unwrap();
    openssl(&[
        "x509",
        "-in",
        path.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ])
}

/// The leaf's serial as openssl prints it, lowercase hex.
fn serial(secret: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.crt");
    std::fs::write(&path, &data(secret)["tls.crt"]).unwrap();
    let out = openssl(&["x509", "-in", path.to_str().unwrap(), "-noout", "-serial"]);
    out.trim().strip_prefix("serial=").unwrap().to_lowercase()
}

/// Whether openssl finds the leaf expired now.
fn is_expired(secret: &Value) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.crt");
    std::fs::write(&path, &data(secret)["tls.crt"]).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-in",
            path.to_str().unwrap(),
            "-noout",
            "-checkend",
            "0",
        ])
        .output()
        .unwrap();
    !out.status.success()
}

fn resource_version(secret: &Value) -> &str {
    secret["metadata"]["resourceVersion"].as_str().unwrap()
}

fn annotation<'a>(secret: &'a Value, key: &str) -> &'a str {
    secret["metadata"]["annotations"][key].as_str().unwrap()
}

/// What the report says about `secret` (its line, after `  namespace/name: `).
fn line<'a>(stdout: &'a str, secret: &str) -> &'a str {
    let prefix = format!("  {secret}: ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no line for {secret} in:\n{stdout}"))
}

fn puts(requests: &[Recorded], path: &str) -> Vec<Recorded> {
    requests
        .iter()
        .filter(|r| r.method == "PUT" && r.path == path)
        .cloned()
        .collect()
}

/// A Secret inside its renewal window and an expired one are issued again (new serial, later
/// NotAfter, same annotations, chain verified by openssl against the CA); a fresh one is not
/// written at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_and_expired_secrets_are_renewed_and_fresh_ones_left_alone() {
    let setup = Setup::new().await;
    // Issued 50 minutes ago for an hour: halfway (renewal.fraction 0.5) is behind it.
    let web = setup
        .plant(
            "web-tls",
            Some("shop/web"),
            &["web.example.com"],
            50 * MINUTE,
            60 * MINUTE,
        )
        .await;
    // Expired an hour ago.
    let old = setup
        .plant(
            "old-tls",
            None,
            &["old.example.com", "old.shop.svc"],
            3 * 60 * MINUTE,
            60 * MINUTE,
        )
        .await;
    // Fresh, and written by the binary itself.
    ok(&setup
        .meshca(&[
            "issue",
            "--identity",
            "shop/api",
            "--lifetime",
            "2h",
            "--secret",
            "shop/api-tls",
        ])
        .await);
    let api = setup.kube.object(API_TLS).unwrap();
    let (web_serial, web_not_after) = check_with_openssl(&web, &setup.root_path());
    let old_serial = serial(&old);
    assert!(is_expired(&old), "the planted old-tls should have expired");
    setup.kube.clear_requests();

    let stdout = ok(&setup.rotate().await);

    assert!(
        stdout.starts_with("meshca rotate: 3 managed TLS Secrets in namespace shop\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\ntotals: 2 renewed, 1 not due, 0 already renewed, 0 failed\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nroot rotation: none in progress"),
        "{stdout}"
    );

    // web-tls: renewed with the same request, under the same CA.
    let renewed = setup.kube.object(WEB_TLS).unwrap();
    let (serial, not_after) = check_with_openssl(&renewed, &setup.root_path());
    assert_ne!(serial, web_serial);
    assert!(not_after > web_not_after, "{not_after} vs {web_not_after}");
    let web_line = line(&stdout, "shop/web-tls");
    assert!(web_line.starts_with("renewed (serial "), "{web_line}");
    assert!(web_line.contains(&serial), "{web_line} vs {serial}");
    assert!(web_line.contains(&not_after), "{web_line} vs {not_after}");
    assert!(web_line.contains("due since "), "{web_line}");
    for key in [
        "meshca.io/identity",
        "meshca.io/dns-names",
        "meshca.io/lifetime",
        "meshca.io/key-type",
        "meshca.io/root-sha256",
    ] {
        assert_eq!(annotation(&renewed, key), annotation(&web, key), "{key}");
    }
    assert_eq!(
        annotation(&renewed, "meshca.io/identity"),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(annotation(&renewed, "meshca.io/lifetime"), "1h");
    assert_eq!(annotation(&renewed, "meshca.io/not-after"), not_after);
    assert_eq!(renewed["metadata"]["labels"], web["metadata"]["labels"]);
    let names = subject_alt_names(&renewed);
    assert!(
        names.contains("URI:spiffe://cluster.local/ns/shop/sa/web")
            && names.contains("DNS:web.example.com"),
        "{names}"
    );

    // old-tls: was expired, renewed.
    let renewed_old = setup.kube.object(OLD_TLS).unwrap();
    let (serial, _) = check_with_openssl(&renewed_old, &setup.root_path());
    assert_ne!(serial, old_serial);
    assert_eq!(
        annotation(&renewed_old, "meshca.io/dns-names"),
        "old.example.com,old.shop.svc"
    );
    assert_eq!(annotation(&renewed_old, "meshca.io/identity"), "");
    let old_line = line(&stdout, "shop/old-tls");
    assert!(old_line.contains("had expired at "), "{old_line}");

    // api-tls: not due, not written.
    let api_line = line(&stdout, "shop/api-tls");
    assert!(api_line.starts_with("not due (renews after "), "{api_line}");
    let after = setup.kube.object(API_TLS).unwrap();
    assert_eq!(resource_version(&after), resource_version(&api));
    assert_eq!(after, api);

    // One list, then exactly the two PUTs, each carrying the version that was listed.
    let requests = setup.kube.requests();
    let writes = setup.kube.writes();
    assert_eq!(writes.len(), 2, "{writes:?}");
    for (path, listed) in [(WEB_TLS, &web), (OLD_TLS, &old)] {
        let put = puts(&requests, path);
        assert_eq!(put.len(), 1, "{path}");
        assert_eq!(put[0].status, 200);
        assert_eq!(
            put[0].body.as_ref().unwrap()["metadata"]["resourceVersion"],
            listed["metadata"]["resourceVersion"]
        );
    }
    assert!(puts(&requests, API_TLS).is_empty());

    // A second run finds nothing due and writes nothing.
    setup.kube.clear_requests();
    let stdout = ok(&setup.rotate().await);
    assert!(
        stdout.contains("\ntotals: 0 renewed, 3 not due, 0 already renewed, 0 failed\n"),
        "{stdout}"
    );
    assert!(setup.kube.writes().is_empty());
}

/// A Secret whose annotations say nothing usable is reported — even before it is due, since
/// no run could renew it — the run exits non-zero, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_annotations_fail_the_run_and_write_nothing() {
    let setup = Setup::new().await;
    let web = setup
        .plant("web-tls", Some("shop/web"), &[], 50 * MINUTE, 60 * MINUTE)
        .await;
    setup
        .plant("api-tls", Some("shop/api"), &[], MINUTE, 120 * MINUTE)
        .await;
    let mut broken = web.clone();
    broken["metadata"]["annotations"]["meshca.io/lifetime"] = json!("soon");
    setup.kube.put_object(WEB_TLS, broken);
    let mut fresh_broken = setup.kube.object(API_TLS).unwrap();
    fresh_broken["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("meshca.io/key-type");
    setup.kube.put_object(API_TLS, fresh_broken);
    setup
        .plant("gw-tls", None, &["gw.example.com"], MINUTE, 120 * MINUTE)
        .await;
    setup.kube.clear_requests();

    let output = setup.rotate().await;
    let stderr = failed(&output);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let web_line = line(&stdout, "shop/web-tls");
    assert!(
        web_line.starts_with("failed: Secret shop/web-tls: annotation meshca.io/lifetime is not a Go duration of at least 10s (\"soon\")"),
        "{web_line}"
    );
    assert!(
        web_line.contains("issue it again with `meshca issue --secret shop/web-tls"),
        "{web_line}"
    );
    let api_line = line(&stdout, "shop/api-tls");
    assert!(
        api_line.contains("annotation meshca.io/key-type is missing"),
        "{api_line}"
    );
    assert!(
        line(&stdout, "shop/gw-tls").starts_with("not due"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\ntotals: 0 renewed, 1 not due, 0 already renewed, 2 failed\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains("2 problems need attention (see the report above; exit code 1)"),
        "{stderr}"
    );
    assert!(setup.kube.writes().is_empty(), "{:?}", setup.kube.writes());
}

/// A managed Secret whose lifetime annotation asks for more than the configured maximum is
/// not renewed with it (nor silently shortened): the run fails it, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_above_the_maximum_is_refused_at_renewal() {
    let setup = Setup::new().await;
    setup
        .plant("web-tls", Some("shop/web"), &[], 50 * MINUTE, 60 * MINUTE)
        .await;
    setup.kube.clear_requests();
    let output = setup
        .meshca(&[
            "--set",
            "certificateProvider.serviceCertValidityDuration=20m",
            "--set",
            "certificateProvider.maxServiceCertValidityDuration=30m",
            "rotate",
            "--namespace",
            "shop",
        ])
        .await;
    failed(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let web_line = line(&stdout, "shop/web-tls");
    assert!(
        web_line.starts_with("failed: ")
            && web_line.contains("meshca.io/lifetime annotation")
            && web_line.contains(
                "requested lifetime 1h is greater than the maximum allowed 30m \
                 (certificateProvider.maxServiceCertValidityDuration)"
            ),
        "{web_line}"
    );
    assert!(setup.kube.writes().is_empty(), "{:?}", setup.kube.writes());
}

/// Two runs at once, both listing the same version of a due Secret (the mock answers their
/// lists together): both issue, both update with that version, exactly one update wins; the
/// other run reads the Secret again, finds it renewed, and says so without failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_renew_a_due_secret_once() {
    let setup = Setup::new().await;
    let web = setup
        .plant(
            "web-tls",
            Some("shop/web"),
            &["web.example.com"],
            50 * MINUTE,
            60 * MINUTE,
        )
        .await;
    setup.kube.clear_requests();
    setup.kube.hold_reads(SHOP_SECRETS, 2);

    let (first, second) = tokio::join!(setup.rotate(), setup.rotate());
    let outputs = [ok(&first), ok(&second)];

    let lines: Vec<&str> = outputs.iter().map(|o| line(o, "shop/web-tls")).collect();
    let winner = lines
        .iter()
        .position(|l| l.starts_with("renewed (serial "))
        .unwrap_or_else(|| panic!("no run renewed it: {lines:?}"));
    let loser = 1 - winner;
    assert!(
        lines[loser].starts_with("already renewed by another run (renews after "),
        "{lines:?}"
    );
    assert!(
        outputs[loser].contains("\ntotals: 0 renewed, 0 not due, 1 already renewed, 0 failed\n"),
        "{}",
        outputs[loser]
    );

    // Both lists were answered from the same state, both PUTs carried that version: one was
    // accepted, the other refused with 409.
    let requests = setup.kube.requests();
    let lists: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path == SHOP_SECRETS)
        .collect();
    assert_eq!(lists.len(), 2);
    let put = puts(&requests, WEB_TLS);
    assert_eq!(put.len(), 2, "{put:?}");
    for request in &put {
        assert_eq!(
            request.body.as_ref().unwrap()["metadata"]["resourceVersion"],
            web["metadata"]["resourceVersion"]
        );
    }
    let mut statuses: Vec<u16> = put.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);

    // What is stored is the winner's certificate.
    let stored = setup.kube.object(WEB_TLS).unwrap();
    let (serial, _) = check_with_openssl(&stored, &setup.root_path());
    assert!(
        lines[winner].contains(&serial),
        "{} vs {serial}",
        lines[winner]
    );
}

/// API errors carry the API server's own message and say what to check: a forbidden list
/// (namespace from the configuration's `namespace`), then a forbidden update of a due Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_api_errors_are_explained() {
    let setup = Setup::new().await;
    let web = setup
        .plant("web-tls", Some("shop/web"), &[], 50 * MINUTE, 60 * MINUTE)
        .await;
    let forbidden_list = "secrets is forbidden: User \"system:serviceaccount:meshca-system:meshca\" \
                          cannot list resource \"secrets\" in API group \"\" in the namespace \"shop\"";
    setup.kube.fail(
        Method::GET,
        SHOP_SECRETS,
        403,
        "Forbidden",
        forbidden_list,
        1,
    );

    let output = setup.meshca(&["rotate", "--set", "namespace=shop"]).await;
    let stderr = failed(&output);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("meshca rotate: 0 managed TLS Secrets in namespace shop\n"),
        "{stdout}"
    );
    let list_line = line(&stdout, "shop/*");
    assert!(
        list_line.contains("cannot list managed Secrets")
            && list_line.contains(&format!("the API server forbade list ({forbidden_list})"))
            && list_line.contains(
                "check RBAC: meshca needs get, list, create and update on secrets in namespace shop"
            ),
        "{list_line}"
    );
    assert!(stderr.contains("1 problem needs attention"), "{stderr}");

    let forbidden_update = "secrets \"web-tls\" is forbidden: User \"system:serviceaccount:meshca-system:meshca\" \
                            cannot update resource \"secrets\" in API group \"\" in the namespace \"shop\"";
    setup
        .kube
        .fail(Method::PUT, WEB_TLS, 403, "Forbidden", forbidden_update, 1);
    let stdout = setup.rotate_failing().await;
    let web_line = line(&stdout, "shop/web-tls");
    assert!(
        web_line.starts_with("failed: Secret shop/web-tls: the API server forbade update (")
            && web_line.contains(forbidden_update)
            && web_line.contains("check RBAC"),
        "{web_line}"
    );
    assert_eq!(setup.kube.object(WEB_TLS).unwrap(), web);
}

/// The cron's root rotation step with the CA in a Kubernetes Secret: two overlapping
/// `meshca rotate` runs move stage 1 → 2 once (updates carry the resourceVersion they read),
/// the managed Secret signed under the old root is renewed under the new one at once (long
/// before its own window), and a run after the longest leaf lifetime finishes: the new root
/// becomes `ca.crt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_cron_runs_advance_a_root_rotation_in_the_secret_once() {
    const CA_SECRET: &str = "/api/v1/namespaces/meshca-system/secrets/meshca-ca-bundle";
    let setup = Setup::new().await;
    let flags = [
        "--set",
        "tresor.store=kubernetes",
        "--set",
        "rotation.ackDeadline=0s",
        "--set",
        "certificateProvider.serviceCertValidityDuration=10s",
        "--set",
        "tresor.clockSkewAllowance=0s",
    ];
    let with = |args: &[&'static str]| [flags.as_slice(), args].concat();
    ok(&setup.meshca(&with(&["bootstrap"])).await);
    let old_root = data(&setup.kube.object(CA_SECRET).unwrap())["ca.crt"].clone();
    const GATEWAY: &str = "/api/v1/namespaces/meshca-system/secrets/gateway-tls";
    ok(&setup
        .meshca(&with(&[
            "issue",
            "--dns",
            "gateway.example",
            "--lifetime",
            "2h",
            "--secret",
            "meshca-system/gateway-tls",
        ]))
        .await);
    let under_old = data(&setup.kube.object(GATEWAY).unwrap())["tls.crt"].clone();
    let started = ok(&setup.meshca(&with(&["rotate", "root", "start"])).await);
    assert!(started.contains("root rotation started"), "{started}");

    let cron = with(&["rotate"]);
    let (a, b) = tokio::join!(setup.meshca(&cron), setup.meshca(&cron));
    let (a, b) = (ok(&a), ok(&b));
    let moved = [&a, &b]
        .iter()
        .filter(|out| out.contains("root rotation: advanced to stage 2"))
        .count();
    assert_eq!(moved, 1, "{a}\n---\n{b}");
    let secret = data(&setup.kube.object(CA_SECRET).unwrap());
    let record: Value = serde_json::from_slice(&secret["rotation.json"]).unwrap();
    assert_eq!(record["stage"], "issuing");
    assert_eq!(record["revision"], 2);
    assert_eq!(
        secret["ca.crt"], old_root,
        "ca.crt stays until the rotation finishes"
    );
    // The gateway's certificate (2h, far from its window) was renewed under the new root.
    let renewed_line = [&a, &b]
        .iter()
        .flat_map(|out| out.lines())
        .find(|line| line.contains("gateway-tls: renewed"))
        .map(str::to_owned);
    let renewed_line = renewed_line.unwrap_or_else(|| panic!("{a}\n---\n{b}"));
    assert!(
        renewed_line.contains("signed under the root being retired"),
        "{renewed_line}"
    );
    let gateway = data(&setup.kube.object(GATEWAY).unwrap());
    assert_ne!(gateway["tls.crt"], under_old);
    let dir = tempfile::tempdir().unwrap();
    let new_root = dir.path().join("new-root.pem");
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&new_root, record["newCertificate"].as_str().unwrap()).unwrap();
    std::fs::write(&leaf, &gateway["tls.crt"]).unwrap();
    openssl(&[
        "verify",
        "-CAfile",
        new_root.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);

    // Too early: stage 2 lasts the longest leaf lifetime.
    let early = ok(&setup.meshca(&with(&["rotate"])).await);
    assert!(early.contains("root rotation: not advancing"), "{early}");
    // Once the 10s leaf lifetime has passed, a run finishes it.
    let finished = eventually_ok_every(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "a `meshca rotate` run to finish the rotation",
        || async {
            let out = ok(&setup.meshca(&with(&["rotate"])).await);
            if out.contains("root rotation: not advancing") {
                Err(out)
            } else {
                Ok(out)
            }
        },
    )
    .await;
    assert!(
        finished.contains("root rotation: rotation finished"),
        "{finished}"
    );
    let secret = data(&setup.kube.object(CA_SECRET).unwrap());
    assert!(!secret.contains_key("rotation.json"), "{:?}", secret.keys());
    assert_eq!(
        secret["ca.crt"],
        record["newCertificate"].as_str().unwrap().as_bytes(),
        "the new root is the CA"
    );
    let status = ok(&setup.meshca(&with(&["rotate", "root", "status"])).await);
    assert!(status.contains("no root rotation in progress"), "{status}");
    let idle = ok(&setup.meshca(&with(&["rotate"])).await);
    assert!(idle.contains("root rotation: none in progress"), "{idle}");
}

/// The URI and DNS SANs of every certificate stored in any managed Secret's `tls.crt`.
fn stored_names(setup: &Setup, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|path| setup.kube.object(path))
        .filter(|secret| data(secret).contains_key("tls.crt"))
        .map(|secret| subject_alt_names(&secret))
        .collect()
}

/// Someone who may only write Secrets in namespace `attacker` labels a Secret as meshca's and
/// annotates it with the identity of `payments/payments` — once on a Secret meshca issued for
/// `attacker/web` (the annotation edited), once on a Secret with no certificate at all. The
/// cron, even with `--all-namespaces`, renews neither: both are failures that need a person,
/// nothing is written, and no certificate for `payments` exists anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_naming_another_namespaces_identity_is_not_renewed() {
    const EDITED: &str = "/api/v1/namespaces/attacker/secrets/edited-tls";
    const EMPTY: &str = "/api/v1/namespaces/attacker/secrets/empty-tls";
    let setup = Setup::new().await;
    let mut edited = setup
        .plant_in(
            "attacker",
            "edited-tls",
            Some("attacker/web"),
            &[],
            50 * MINUTE,
            60 * MINUTE,
        )
        .await;
    let payments = "spiffe://cluster.local/ns/payments/sa/payments";
    edited["metadata"]["annotations"]["meshca.io/identity"] = json!(payments);
    setup.kube.put_object(EDITED, edited);
    let mut empty = setup.kube.object(EDITED).unwrap();
    empty["data"] = json!({});
    empty["metadata"]["resourceVersion"] = json!(null);
    setup.kube.put_object(EMPTY, empty);
    let before = [
        setup.kube.object(EDITED).unwrap(),
        setup.kube.object(EMPTY).unwrap(),
    ];
    setup.kube.clear_requests();

    let output = setup.meshca(&["rotate", "--all-namespaces"]).await;
    let stderr = failed(&output);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for secret in ["attacker/edited-tls", "attacker/empty-tls"] {
        let l = line(&stdout, secret);
        assert!(l.starts_with("failed: "), "{l}");
        assert!(
            l.contains(&format!(
                "its meshca.io/identity {payments} is not in the Secret's namespace attacker"
            )),
            "{l}"
        );
        assert!(l.contains("not renewed"), "{l}");
    }
    assert!(
        stdout.contains("\ntotals: 0 renewed, 0 not due, 0 already renewed, 2 failed\n"),
        "{stdout}"
    );
    assert!(stderr.contains("2 problems need attention"), "{stderr}");
    assert!(setup.kube.writes().is_empty(), "{:?}", setup.kube.writes());
    assert_eq!(
        [
            setup.kube.object(EDITED).unwrap(),
            setup.kube.object(EMPTY).unwrap()
        ],
        before
    );
    for names in stored_names(&setup, &[EDITED, EMPTY]) {
        assert!(!names.contains("/ns/payments/"), "{names}");
    }
}

/// A certificate copied from somewhere (a TLS handshake shows it to anyone) with a key that
/// is not its own: the Secret proves nothing, and is not renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_certificate_with_another_key_is_refused() {
    const COPY: &str = "/api/v1/namespaces/shop/secrets/copy-tls";
    let setup = Setup::new().await;
    let web = setup
        .plant(
            "web-tls",
            Some("shop/web"),
            &["web.example.com"],
            50 * MINUTE,
            60 * MINUTE,
        )
        .await;
    // A Secret meshca issued to someone else in the namespace lends its own (valid) key.
    let other = setup
        .plant("other-tls", Some("shop/other"), &[], MINUTE, 120 * MINUTE)
        .await;
    let mut copy = web.clone();
    copy["data"]["tls.key"] = other["data"]["tls.key"].clone();
    copy["metadata"]["resourceVersion"] = json!(null);
    setup.kube.put_object(COPY, copy);
    let before = setup.kube.object(COPY).unwrap();
    setup.kube.clear_requests();

    let stdout = setup.rotate_failing().await;
    let l = line(&stdout, "shop/copy-tls");
    assert!(
        l.starts_with("failed: ")
            && l.contains("tls.key is not the private key of the certificate in tls.crt")
            && l.contains("not renewed")
            && l.contains("meshca issue --secret shop/copy-tls"),
        "{l}"
    );
    // The genuine Secret is renewed as usual; the copy is left as it was.
    assert!(
        line(&stdout, "shop/web-tls").starts_with("renewed (serial "),
        "{stdout}"
    );
    assert!(
        stdout.contains("\ntotals: 1 renewed, 1 not due, 0 already renewed, 1 failed\n"),
        "{stdout}"
    );
    assert_eq!(setup.kube.object(COPY).unwrap(), before);
    assert!(puts(&setup.kube.requests(), COPY).is_empty());
}

/// A DNS name added to the annotation that the current certificate does not hold (another
/// namespace's Service name) is not granted by a renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_the_certificate_does_not_hold_is_refused() {
    let setup = Setup::new().await;
    let mut web = setup
        .plant(
            "web-tls",
            None,
            &["web.example.com"],
            50 * MINUTE,
            60 * MINUTE,
        )
        .await;
    web["metadata"]["annotations"]["meshca.io/dns-names"] =
        json!("web.example.com,payments.prod.svc.cluster.local");
    setup.kube.put_object(WEB_TLS, web);
    let before = setup.kube.object(WEB_TLS).unwrap();
    setup.kube.clear_requests();

    let stdout = setup.rotate_failing().await;
    let l = line(&stdout, "shop/web-tls");
    assert!(
        l.starts_with("failed: ")
            && l.contains("payments.prod.svc.cluster.local")
            && l.contains("the certificate in tls.crt holds DNS names [\"web.example.com\"]")
            && l.contains("not renewed"),
        "{l}"
    );
    assert!(setup.kube.writes().is_empty(), "{:?}", setup.kube.writes());
    assert_eq!(setup.kube.object(WEB_TLS).unwrap(), before);
}

/// A certificate from another CA (self-signed here, for the Secret's own names, with its own
/// key) was not issued by meshca: not renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let setup = Setup::new().await;
    let mut web = setup
        .plant(
            "web-tls",
            None,
            &["web.example.com"],
            50 * MINUTE,
            60 * MINUTE,
        )
        .await;
    let key = rcgen::KeyPair::generate().unwrap();
    // Inside its renewal window, like the certificate it replaces.
    let mut params = rcgen::CertificateParams::new(vec!["web.example.com".into()]).unwrap();
    params.not_before = time::OffsetDateTime::from(SystemTime::now() - 50 * MINUTE);
    params.not_after = time::OffsetDateTime::from(SystemTime::now() + 10 * MINUTE);
    let foreign = params.self_signed(&key).unwrap();
    use base64::Engine as _;
    let b64 = |text: String| base64::engine::general_purpose::STANDARD.encode(text);
    web["data"]["tls.crt"] = json!(b64(foreign.pem()));
    web["data"]["tls.key"] = json!(b64(key.serialize_pem()));
    setup.kube.put_object(WEB_TLS, web);
    setup.kube.clear_requests();

    let stdout = setup.rotate_failing().await;
    let l = line(&stdout, "shop/web-tls");
    assert!(
        l.starts_with("failed: ")
            && l.contains("does not chain to a root of the trust bundle meshca serves")
            && l.contains("not renewed"),
        "{l}"
    );
    assert!(setup.kube.writes().is_empty(), "{:?}", setup.kube.writes());
}

/// A managed Secret with no certificate or no key (labels and annotations written by hand, or
/// its data emptied) proves nothing: earlier versions issued it afresh; now it is refused,
/// EXPIRED (workloads reading it have nothing usable), and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_without_certificate_or_key_is_not_issued_afresh() {
    const BLANK: &str = "/api/v1/namespaces/shop/secrets/blank-tls";
    const KEYLESS: &str = "/api/v1/namespaces/shop/secrets/keyless-tls";
    let setup = Setup::new().await;
    let web = setup
        .plant("web-tls", Some("shop/web"), &[], 50 * MINUTE, 60 * MINUTE)
        .await;
    let mut blank = web.clone();
    blank["data"] = json!({});
    blank["metadata"]["resourceVersion"] = json!(null);
    setup.kube.put_object(BLANK, blank);
    let mut keyless = web.clone();
    keyless["data"].as_object_mut().unwrap().remove("tls.key");
    keyless["metadata"]["resourceVersion"] = json!(null);
    setup.kube.put_object(KEYLESS, keyless);
    setup.kube.clear_requests();

    let stdout = setup.rotate_failing().await;
    let blank_line = line(&stdout, "shop/blank-tls");
    assert!(
        blank_line.starts_with("failed: EXPIRED, the Secret has no tls.crt; not renewed")
            && blank_line.contains("meshca issue --secret shop/blank-tls"),
        "{blank_line}"
    );
    let keyless_line = line(&stdout, "shop/keyless-tls");
    assert!(
        keyless_line.starts_with("failed: the Secret has no tls.key; not renewed"),
        "{keyless_line}"
    );
    assert!(
        line(&stdout, "shop/web-tls").starts_with("renewed (serial "),
        "{stdout}"
    );
    assert!(puts(&setup.kube.requests(), BLANK).is_empty());
    assert!(puts(&setup.kube.requests(), KEYLESS).is_empty());
}
