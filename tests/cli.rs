//! The `meshca` binary as a user runs it: issue, inspect, bootstrap, ca — checked with
//! `openssl verify`, and the CA store's refusals checked byte for byte.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

fn meshca(ca_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshca"))
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(args)
        .env_remove("MESHCA_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("the meshca binary runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "meshca failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn openssl_verify(args: &[&Path]) -> Output {
    let mut command = Command::new("openssl");
    command.args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"]);
    command.args(args);
    command
        .output()
        .expect("openssl is installed (it is the independent verifier)")
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn issue_then_openssl_verify_and_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    let stdout = ok(&meshca(
        &ca,
        &[
            "issue",
            "--identity",
            "bookstore/bookstore-v2",
            "--dns",
            "bookstore.bookstore.svc",
            "--lifetime",
            "1h30m",
            "--out-dir",
            out.to_str().unwrap(),
        ],
    ));
    assert!(
        stdout.contains("spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"),
        "{stdout}"
    );
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    assert_eq!(mode(&ca.join("private.key")), 0o600);

    let verified = openssl_verify(&[&out.join("ca.pem"), &out.join("cert.pem")]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );

    let shown = ok(&meshca(
        &ca,
        &["inspect", out.join("cert.pem").to_str().unwrap()],
    ));
    assert!(
        shown.contains("SPIFFE ID:    spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"),
        "{shown}"
    );
    assert!(shown.contains("bookstore.bookstore.svc"), "{shown}");
    assert!(
        shown.contains("Time left:    1h29m") || shown.contains("Time left:    1h30m"),
        "{shown}"
    );
    assert!(shown.contains("Key:          ECDSA P-256"), "{shown}");
    // The key file is not a certificate, and inspect says so.
    let key = meshca(&ca, &["inspect", out.join("key.pem").to_str().unwrap()]);
    assert!(!key.status.success());
    assert!(String::from_utf8_lossy(&key.stderr).contains("no CERTIFICATE block"));
}

#[test]
fn server_certificates_and_other_key_types() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    for (key_type, shown) in [("p384", "ECDSA P-384"), ("rsa2048", "RSA 2048")] {
        let out = tmp.path().join(key_type);
        ok(&meshca(
            &ca,
            &[
                "issue",
                "--dns",
                "meshca-webhook.meshca-system.svc",
                "--lifetime",
                "8760h",
                "--key-type",
                key_type,
                "--out-dir",
                out.to_str().unwrap(),
            ],
        ));
        let mut command = Command::new("openssl");
        command.args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"]);
        let verified = command
            .arg(out.join("ca.pem"))
            .arg(out.join("cert.pem"))
            .output()
            .unwrap();
        assert!(verified.status.success(), "{key_type}: {verified:?}");
        let text = ok(&meshca(
            &ca,
            &["inspect", out.join("cert.pem").to_str().unwrap()],
        ));
        assert!(text.contains(shown), "{text}");
        assert!(!text.contains("SPIFFE ID"), "{text}");
    }
}

#[test]
fn bad_arguments_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    let cases: &[(&[&str], &str)] = &[
        (
            &["issue", "--identity", "bookstore", "--out-dir", "x"],
            "<namespace>/<service-account>",
        ),
        (
            &["issue", "--identity", "Book/x", "--out-dir", "x"],
            "invalid namespace",
        ),
        (
            &[
                "issue",
                "--identity",
                "a/b",
                "--lifetime",
                "3d",
                "--out-dir",
                "x",
            ],
            "unknown unit",
        ),
        (
            &[
                "issue",
                "--identity",
                "a/b",
                "--key-type",
                "ed25519",
                "--out-dir",
                "x",
            ],
            "unknown key type",
        ),
        (&["issue", "--out-dir", "x"], "--identity"),
        (
            &[
                "--set",
                "certificateProvider.kind=vaultt",
                "issue",
                "--identity",
                "a/b",
                "--out-dir",
                "x",
            ],
            "--set certificateProvider.kind=vaultt",
        ),
    ];
    for (args, expected) in cases {
        let output = meshca(&ca, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!out.exists());
}

#[test]
fn bootstrap_twice_keeps_the_same_root() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let first = ok(&meshca(&ca, &["bootstrap"]));
    assert!(first.contains("created a new root CA"), "{first}");
    let second = ok(&meshca(&ca, &["bootstrap"]));
    assert!(second.contains("loaded the existing CA"), "{second}");
    let fingerprint = |text: &str| {
        text.lines()
            .find(|l| l.contains("root SHA-256"))
            .map(str::to_owned)
            .unwrap()
    };
    assert_eq!(fingerprint(&first), fingerprint(&second));
    let exported = ok(&meshca(&ca, &["ca", "export"]));
    assert_eq!(
        exported,
        std::fs::read_to_string(ca.join("ca.crt")).unwrap()
    );
}

/// Each kind of bad CA material: non-zero exit, a message naming the file and the problem, and
/// both files exactly as they were.
#[test]
fn bad_ca_material_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    ok(&meshca(&good, &["bootstrap"]));
    let other = tmp.path().join("other");
    ok(&meshca(&other, &["bootstrap"]));

    let (expired_cert, expired_key) = self_signed(true, true);
    let (leaf_cert, leaf_key) = self_signed(false, false);
    let good_cert = std::fs::read_to_string(good.join("ca.crt")).unwrap();
    let other_key = std::fs::read_to_string(other.join("private.key")).unwrap();
    let cases: Vec<(&str, String, String, &str, &str)> = vec![
        (
            "corrupt",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
            other_key.clone(),
            "ca.crt",
            "",
        ),
        (
            "mismatched",
            good_cert.clone(),
            other_key.clone(),
            "private.key",
            "match",
        ),
        ("expired", expired_cert, expired_key, "ca.crt", "expired"),
        ("not-a-ca", leaf_cert, leaf_key, "ca.crt", "not a CA"),
    ];
    for (name, cert, key, file, problem) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), &cert).unwrap();
        std::fs::write(dir.join("private.key"), &key).unwrap();
        for args in [
            &["bootstrap"][..],
            &[
                "issue",
                "--identity",
                "a/b",
                "--out-dir",
                "/nonexistent/out",
            ][..],
        ] {
            let output = meshca(&dir, args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{name}: {args:?} succeeded");
            let named = dir.join(file);
            assert!(
                stderr.contains(&named.display().to_string()),
                "{name}: {stderr}"
            );
            assert!(
                stderr.contains(problem),
                "{name}: expected {problem:?} in {stderr}"
            );
            assert_eq!(
                std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
                cert,
                "{name}"
            );
            assert_eq!(
                std::fs::read_to_string(dir.join("private.key")).unwrap(),
                key,
                "{name}"
            );
        }
    }
}

#[test]
fn intermediate_for_another_cluster_chains_to_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    ok(&meshca(&root, &["bootstrap"]));
    let cluster_b = tmp.path().join("cluster-b");
    ok(&meshca(
        &root,
        &[
            "ca",
            "intermediate",
            "--cluster",
            "b",
            "--for-trust-domain",
            "b.example",
            "--out-dir",
            cluster_b.to_str().unwrap(),
        ],
    ));
    assert_eq!(mode(&cluster_b.join("private.key")), 0o600);
    // Running it again must not replace the intermediate.
    let again = meshca(
        &root,
        &[
            "ca",
            "intermediate",
            "--cluster",
            "b",
            "--out-dir",
            cluster_b.to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to replace"));

    let out = tmp.path().join("leaf");
    ok(&meshca(
        &cluster_b,
        &[
            "--trust-domain",
            "b.example",
            "issue",
            "--identity",
            "shop/cart",
            "--out-dir",
            out.to_str().unwrap(),
        ],
    ));
    let root_pem = tmp.path().join("root.pem");
    std::fs::write(&root_pem, ok(&meshca(&root, &["ca", "export"]))).unwrap();
    assert_eq!(
        std::fs::read(&root_pem).unwrap(),
        std::fs::read(out.join("ca.pem")).unwrap()
    );
    let cert = out.join("cert.pem");
    let mut command = Command::new("openssl");
    command
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&root_pem)
        .arg("-untrusted")
        .arg(&cert)
        .arg(&cert);
    let verified = command.output().unwrap();
    assert!(verified.status.success(), "{verified:?}");
    let shown = ok(&meshca(&cluster_b, &["inspect", cert.to_str().unwrap()]));
    assert!(shown.contains("(intermediate)"), "{shown}");
    assert!(
        shown.contains("spiffe://b.example/ns/shop/sa/cart"),
        "{shown}"
    );
}

#[test]
fn import_refuses_to_replace_and_accepts_a_fresh_store() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    ok(&meshca(&source, &["bootstrap"]));
    let target = tmp.path().join("target");
    let cert = source.join("ca.crt");
    let key = source.join("private.key");
    let args = [
        "ca",
        "import",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    ok(&meshca(&target, &args));
    assert_eq!(
        std::fs::read(target.join("ca.crt")).unwrap(),
        std::fs::read(&cert).unwrap()
    );
    let again = meshca(&target, &args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a CA"));
}

fn self_signed(is_ca: bool, expired: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test");
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
    }
    let now = SystemTime::now();
    if expired {
        params.not_before = (now - Duration::from_secs(7200)).into();
        params.not_after = (now - Duration::from_secs(3600)).into();
    }
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}
