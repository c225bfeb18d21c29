//! The `meshca` binary as a user runs it: issue, inspect, bootstrap, ca — checked with
//! `openssl verify`, and the CA store's refusals checked byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use support::cli::{meshca, meshca_within, ok};

fn openssl_verify(args: &[&Path]) -> Output {
    let mut command = Command::new("openssl");
    command.args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"]);
    command.args(args);
    command
        .output()
        .expect("openssl is installed (it is the independent verifier)")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
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
        set_mode(&dir.join("private.key"), 0o600);
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

/// Runs meshca and fails the test (instead of hanging it) if it has not exited within 30s.
fn meshca_within_deadline(ca_dir: &Path, args: &[&str]) -> Output {
    meshca_within(ca_dir, args, Duration::from_secs(30))
}

fn failed(output: &Output, args: &[&str]) -> String {
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(
        output.stdout.is_empty(),
        "{args:?} failed but printed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The public key of a certificate or a private key, as openssl prints it.
fn public_key(path: &Path, of_key: bool) -> String {
    let mut command = Command::new("openssl");
    if of_key {
        command.args(["pkey", "-pubout", "-in"]);
    } else {
        command.args(["x509", "-noout", "-pubkey", "-in"]);
    }
    let output = command.arg(path).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Leaf lifetimes: refused (not shortened) outside [10s, max], with the limit and the key that
/// sets it; before anything is created.
#[test]
fn issue_refuses_lifetimes_outside_the_policy_before_creating_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    let out_arg = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "issue",
                "--identity",
                "a/b",
                "--lifetime",
                "2161h",
                "--out-dir",
                out_arg,
            ],
            "requested lifetime 2161h is greater than the maximum allowed 2160h \
             (certificateProvider.maxServiceCertValidityDuration)",
        ),
        (
            &[
                "issue",
                "--dns",
                "webhook.example",
                "--lifetime",
                "8761h",
                "--out-dir",
                out_arg,
            ],
            "maximum allowed 8760h (certificateProvider.maxServerCertValidityDuration)",
        ),
        (
            &[
                "issue",
                "--identity",
                "a/b",
                "--lifetime",
                "5s",
                "--out-dir",
                out_arg,
            ],
            "shorter than the minimum 10s",
        ),
        (
            &[
                "issue",
                "--identity",
                "a/b",
                "--lifetime",
                "0s",
                "--out-dir",
                out_arg,
            ],
            "shorter than the minimum 10s",
        ),
    ];
    for (args, expected) in cases {
        let stderr = failed(&meshca(&ca, args), args);
        assert!(stderr.contains("--lifetime"), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!ca.exists(), "{args:?} created a CA");
        assert!(!out.exists(), "{args:?} created the output directory");
    }
    // The configured maximum is the one enforced.
    ok(&meshca(
        &ca,
        &[
            "--set",
            "certificateProvider.maxServiceCertValidityDuration=2200h",
            "issue",
            "--identity",
            "a/b",
            "--lifetime",
            "2161h",
            "--out-dir",
            out_arg,
        ],
    ));
}

/// An output directory that cannot be used is found before the CA store is touched.
#[test]
fn a_bad_out_dir_creates_no_ca_and_prints_no_success() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let args = [
        "issue",
        "--identity",
        "a/b",
        "--out-dir",
        file.to_str().unwrap(),
    ];
    let stderr = failed(&meshca(&ca, &args), &args);
    assert!(stderr.contains("--out-dir"), "{stderr}");
    assert!(!ca.exists(), "a failed issue created a CA");
}

/// `--out-dir` replaces cert.pem, key.pem and ca.pem together or not at all.
#[test]
fn out_dir_is_replaced_whole_or_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    let issue = [
        "issue",
        "--identity",
        "a/b",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    ok(&meshca(&ca, &issue));
    let read_set =
        || ["cert.pem", "key.pem", "ca.pem"].map(|name| std::fs::read(out.join(name)).unwrap());
    let first = read_set();
    let stdout = ok(&meshca(&ca, &issue));
    assert!(stdout.contains("meshca: issued"), "{stdout}");
    let second = read_set();
    assert_ne!(first[0], second[0], "a new certificate");
    assert_ne!(first[1], second[1], "a new key");
    assert_eq!(
        public_key(&out.join("cert.pem"), false),
        public_key(&out.join("key.pem"), true)
    );
    assert_eq!(mode(&out.join("key.pem")), 0o600);

    // One target is in the way: the command fails, says nothing of success, and the set on
    // disk is the previous one, whole and consistent.
    std::fs::remove_file(out.join("ca.pem")).unwrap();
    std::fs::create_dir(out.join("ca.pem")).unwrap();
    let stderr = failed(&meshca(&ca, &issue), &issue);
    assert!(stderr.contains("ca.pem is a directory"), "{stderr}");
    assert_eq!(std::fs::read(out.join("cert.pem")).unwrap(), second[0]);
    assert_eq!(std::fs::read(out.join("key.pem")).unwrap(), second[1]);
    assert_eq!(
        public_key(&out.join("cert.pem"), false),
        public_key(&out.join("key.pem"), true)
    );

    // A failure after the certificate was issued, at the switch itself (`..data` became a
    // directory holding the same files): still nothing printed, the set still whole.
    std::fs::remove_dir(out.join("ca.pem")).unwrap();
    std::os::unix::fs::symlink("..data/ca.pem", out.join("ca.pem")).unwrap();
    let version = std::fs::read_link(out.join("..data")).unwrap();
    std::fs::remove_file(out.join("..data")).unwrap();
    std::fs::rename(out.join(&version), out.join("..data")).unwrap();
    let stderr = failed(&meshca(&ca, &issue), &issue);
    assert!(stderr.contains("..data"), "{stderr}");
    assert_eq!(std::fs::read(out.join("cert.pem")).unwrap(), second[0]);
    assert_eq!(std::fs::read(out.join("key.pem")).unwrap(), second[1]);
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), second[2]);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("..meshca-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `meshca inspect big.pem | head -1`: the reader goes away; meshca ends quietly.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&meshca(&ca, &["bootstrap"]));
    let root = std::fs::read_to_string(ca.join("ca.crt")).unwrap();
    let big = tmp.path().join("big.pem");
    std::fs::write(&big, root.repeat(500)).unwrap();
    for args in [
        vec!["inspect", big.to_str().unwrap()],
        vec!["ca", "show"],
        vec!["ca", "export"],
        vec!["ca", "init"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshca"))
            .arg("--ca-dir")
            .arg(&ca)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the only read end before meshca writes: every write gets EPIPE.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            output.status.success(),
            "{args:?}: {:?} {stderr}",
            output.status
        );
    }
}

/// A FIFO where the CA key (or certificate) should be is refused at once, not read forever.
#[test]
fn a_fifo_in_the_ca_store_is_refused_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["private.key", "ca.crt"] {
        let ca = tmp.path().join(format!("ca-{name}"));
        ok(&meshca(&ca, &["bootstrap"]));
        let path = ca.join(name);
        std::fs::remove_file(&path).unwrap();
        let made = Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let out = tmp.path().join("out");
        for args in [
            &["ca", "init"][..],
            &[
                "issue",
                "--identity",
                "a/b",
                "--out-dir",
                out.to_str().unwrap(),
            ][..],
            &[
                "--set",
                "sds.listen=127.0.0.1:0",
                "--set",
                "admin.listen=",
                "serve",
            ][..],
        ] {
            let output = meshca_within_deadline(&ca, args);
            let stderr = failed(&output, args);
            assert!(
                stderr.contains(&format!("{} is a FIFO, not a regular file", path.display())),
                "{args:?}: {stderr}"
            );
        }
        use std::os::unix::fs::FileTypeExt as _;
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }
}

/// A CA key group or others may read is refused with the chmod that fixes it; `ca init`
/// reports the mode it finds.
#[test]
fn a_ca_key_open_to_others_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let created = ok(&meshca(&ca, &["ca", "init"]));
    let key = ca.join("private.key");
    assert!(
        created.contains(&format!("{} (mode 0600)", key.display())),
        "{created}"
    );
    let before = std::fs::read(&key).unwrap();
    set_mode(&key, 0o644);
    for args in [
        &["ca", "init"][..],
        &[
            "issue",
            "--identity",
            "a/b",
            "--out-dir",
            tmp.path().join("o").to_str().unwrap(),
        ][..],
    ] {
        let stderr = failed(&meshca(&ca, args), args);
        assert!(
            stderr.contains(&format!("chmod 600 {}", key.display())) && stderr.contains("0644"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert_eq!(mode(&key), 0o644, "meshca does not change modes by itself");
    set_mode(&key, 0o400);
    let loaded = ok(&meshca(&ca, &["ca", "init"]));
    assert!(
        loaded.contains(&format!("{} (mode 0400)", key.display())),
        "{loaded}"
    );
}

/// `ca intermediate` refuses a lifetime that is zero, shorter than the longest leaf, or longer
/// than the root's remaining life, and writes nothing.
#[test]
fn intermediate_lifetimes_that_cannot_cover_a_leaf_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    ok(&meshca(&root, &["bootstrap"]));
    let out = tmp.path().join("east");
    let out_arg = out.to_str().unwrap();
    for (lifetime, expected) in [
        ("0s", "the intermediate (--lifetime) lifetime is 0s"),
        (
            "720h",
            "720h is shorter than the longest leaf it must cover (8760h, \
             certificateProvider.maxServerCertValidityDuration)",
        ),
        (
            "87601h",
            "after its issuer O=meshca, CN=meshca root expires",
        ),
    ] {
        let args = [
            "ca",
            "intermediate",
            "--cluster",
            "east",
            "--lifetime",
            lifetime,
            "--out-dir",
            out_arg,
        ];
        let stderr = failed(&meshca(&root, &args), &args);
        assert!(stderr.contains(expected), "{lifetime}: {stderr}");
        assert!(!out.exists(), "{lifetime}: wrote {}", out.display());
    }
}

/// A leaf that would outlive its CA is refused, naming the CA's end, rather than cut short.
#[test]
fn a_leaf_that_would_outlive_its_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    ok(&meshca(&root, &["bootstrap"]));
    let east = tmp.path().join("east");
    ok(&meshca(
        &root,
        &[
            "ca",
            "intermediate",
            "--cluster",
            "east",
            "--out-dir",
            east.to_str().unwrap(),
        ],
    ));
    let out = tmp.path().join("out");
    let args = [
        "--set",
        "certificateProvider.maxServerCertValidityDuration=9000h",
        "issue",
        "--dns",
        "gateway.example",
        "--lifetime",
        "8761h",
        "--out-dir",
        out.to_str().unwrap(),
    ];
    let stderr = failed(&meshca(&east, &args), &args);
    assert!(
        stderr.contains("a certificate of 8761h")
            && stderr.contains("after its CA O=meshca, CN=meshca intermediate east expires")
            && stderr.contains("rotate the CA"),
        "{stderr}"
    );
    assert!(!out.join("cert.pem").exists());
}

/// An intermediate made for another trust domain is not imported, nor used by a daemon or a
/// command of this one.
#[test]
fn an_intermediate_of_another_trust_domain_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    ok(&meshca(&root, &["bootstrap"]));
    let b = tmp.path().join("b");
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
            b.to_str().unwrap(),
        ],
    ));
    let target = tmp.path().join("target");
    let (cert, key) = (b.join("ca.crt"), b.join("private.key"));
    let import = [
        "ca",
        "import",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let stderr = failed(&meshca(&target, &import), &import);
    assert!(
        stderr.contains("trust domain b.example")
            && stderr.contains("serves trust domain cluster.local")
            && stderr.contains("--trust-domain"),
        "{stderr}"
    );
    assert!(!target.exists(), "a refused import created the store");
    let from_files = [
        "bootstrap",
        "--from-files",
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    ];
    let stderr = failed(&meshca(&target, &from_files), &from_files);
    assert!(stderr.contains("trust domain b.example"), "{stderr}");
    assert!(!target.exists(), "a refused bootstrap created the store");

    // A daemon (or command) of cluster.local started on B's intermediate refuses it.
    let before = std::fs::read(&cert).unwrap();
    let o = tmp.path().join("o");
    let issue = [
        "issue",
        "--identity",
        "a/b",
        "--out-dir",
        o.to_str().unwrap(),
    ];
    for args in [&["bootstrap"][..], &issue[..]] {
        let stderr = failed(&meshca(&b, args), args);
        assert!(
            stderr.contains("trust domain b.example") && stderr.contains("cluster.local"),
            "{args:?}: {stderr}"
        );
    }
    let serve = [
        "--set",
        "sds.listen=127.0.0.1:0",
        "--set",
        "admin.listen=",
        "serve",
    ];
    let stderr = failed(&meshca_within_deadline(&b, &serve), &serve);
    assert!(stderr.contains("trust domain b.example"), "{stderr}");
    assert_eq!(std::fs::read(&cert).unwrap(), before);

    // Imported into a store of its own trust domain, it is accepted.
    let mut with_domain = vec!["--trust-domain", "b.example"];
    with_domain.extend(import);
    ok(&meshca(&target, &with_domain));
}

/// `vault.issueMode: issue` would make Vault generate the private key, which meshca's contract
/// (meshca or the caller holds the key) cannot honour: every way of giving it stops the
/// configuration from loading, before anything is created, with what to use instead.
#[test]
fn vault_issue_mode_issue_is_refused_when_the_configuration_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    let config = tmp.path().join("meshca.yaml");
    std::fs::write(
        &config,
        "certificateProvider:\n  kind: vault\nvault:\n  address: http://127.0.0.1:1\n  \
         token: s.unused\n  issueMode: issue\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out_dir = out.to_str().unwrap();
    let runs: &[&[&str]] = &[
        &["--config", config, "serve"],
        &[
            "--config",
            config,
            "issue",
            "--identity",
            "a/b",
            "--out-dir",
            out_dir,
        ],
        &[
            "--set",
            "vault.issueMode=issue",
            "issue",
            "--identity",
            "a/b",
            "--out-dir",
            out_dir,
        ],
        // Refused whichever provider is selected: the value is never usable.
        &["--set", "vault.issueMode=issue", "serve"],
    ];
    for args in runs {
        let output = meshca_within_deadline(&ca, args);
        let stderr = failed(&output, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("vault.issueMode: issue is not supported")
                && stderr.contains("use vault.issueMode: sign"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!ca.exists() && !out.exists(), "something was created");
    // `sign` is still the accepted spelling.
    ok(&meshca(
        &ca,
        &[
            "--set",
            "vault.issueMode=sign",
            "issue",
            "--identity",
            "a/b",
            "--out-dir",
            out_dir,
        ],
    ));
}
