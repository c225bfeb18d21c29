//! Names in what `meshca` issues and prints, as a user meets them: a workload certificate names
//! its SPIFFE ID alone, every `--dns` name is a valid hostname (or a clear refusal naming it and
//! the rule), duplicates are dropped, and what `inspect` and `ca show` print from a certificate
//! never reaches the terminal raw.

#![allow(clippy::unwrap_used)]

use meshca_test_support as support;

use std::process::Command;

use support::cli::{meshca, ok};

/// Issue #16's collision: trust domain cluster.local, namespace `svc`, service account
/// `payments.prod`. The old certificate carried CN and DNS SAN
/// `payments.prod.svc.cluster.local`, the name of Service `payments` in namespace `prod`.
#[test]
fn a_workload_certificate_is_not_valid_for_a_service_name() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    ok(&meshca(
        &ca,
        &[
            "issue",
            "--identity",
            "svc/payments.prod",
            "--out-dir",
            out.to_str().unwrap(),
        ],
    ));
    let shown = ok(&meshca(
        &ca,
        &["inspect", out.join("cert.pem").to_str().unwrap()],
    ));
    assert!(
        shown.contains("SPIFFE ID:    spiffe://cluster.local/ns/svc/sa/payments.prod"),
        "{shown}"
    );
    assert!(!shown.contains("DNS SANs"), "{shown}");
    assert!(!shown.contains("payments.prod.svc"), "{shown}");
    for purpose in ["sslserver", "sslclient"] {
        let verified = Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
            .arg(out.join("ca.pem"))
            .args(["-verify_hostname", "payments.prod.svc.cluster.local"])
            .arg(out.join("cert.pem"))
            .output()
            .unwrap();
        assert!(
            !verified.status.success(),
            "openssl accepts the workload certificate as {purpose} for a Service's name: {}",
            String::from_utf8_lossy(&verified.stdout)
        );
    }
}

#[test]
fn bad_dns_names_are_refused_with_the_name_and_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    let long_label = format!("{}.example.com", "a".repeat(64));
    let long_name = ["abcdefghij"; 26].join(".");
    let cases: &[(&str, &str)] = &[
        ("a..b", "empty label"),
        ("-x.com", "starts or ends with '-'"),
        ("1.2.3.4", "IP address"),
        ("::1", "IP address"),
        (&long_label, "at most 63"),
        (&long_name, "at most 253"),
        ("foo.", "without the final dot"),
        ("a_b.example", "only letters, digits and '-'"),
        ("bücher.example", "xn--"),
        ("a.*.example.com", "whole leftmost label"),
        ("", "it is empty"),
    ];
    for (name, rule) in cases {
        for identity in [None, Some("shop/web")] {
            // `--dns=NAME`, so that `-x.com` is not read as a flag.
            let flag = format!("--dns={name}");
            let mut args = vec!["issue", &flag, "--out-dir", out.to_str().unwrap()];
            if let Some(identity) = identity {
                args.extend(["--identity", identity]);
            }
            let output = meshca(&ca, &args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{name:?} was accepted");
            assert!(stderr.contains(&format!("{name:?}")), "{name:?}: {stderr}");
            assert!(stderr.contains(rule), "{name:?}: {stderr}");
            assert!(!out.exists(), "{name:?}: something was written");
        }
    }

    // A control character is named escaped, never written to the terminal as it is.
    let output = meshca(
        &ca,
        &["issue", "--dns", "x\u{1b}[2J.example", "--out-dir", "o"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert!(stderr.contains("control character"), "{stderr}");

    // A wildcard only when asked for.
    let output = meshca(
        &ca,
        &[
            "issue",
            "--dns",
            "*.apps.example.com",
            "--out-dir",
            out.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--allow-wildcard"), "{stderr}");
    assert!(!out.exists());
    ok(&meshca(
        &ca,
        &[
            "issue",
            "--dns",
            "*.apps.example.com",
            "--allow-wildcard",
            "--out-dir",
            out.to_str().unwrap(),
        ],
    ));
}

#[test]
fn duplicate_names_are_dropped_case_insensitively() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    ok(&meshca(
        &ca,
        &[
            "issue",
            "--identity",
            "shop/web",
            "--dns",
            "Web.Example.com",
            "--dns",
            "api.example.com",
            "--dns",
            "web.example.COM",
            "--dns",
            "api.example.com",
            "--out-dir",
            out.to_str().unwrap(),
        ],
    ));
    let shown = ok(&meshca(
        &ca,
        &["inspect", out.join("cert.pem").to_str().unwrap()],
    ));
    assert!(
        shown.contains("DNS SANs:     web.example.com, api.example.com\n"),
        "{shown}"
    );
}

/// A certificate whose subject, issuer and SANs carry terminal escape sequences: `inspect`
/// and `ca show` print them escaped.
#[test]
fn hostile_certificates_cannot_rewrite_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let hostile = "pwn\u{1b}]0;owned\u{7}\u{1b}[2J\r\u{9b}1m\u{7f}";
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("CA {hostile}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.subject_alt_names = vec![
        rcgen::SanType::DnsName("x\u{1b}[31m.example".try_into().unwrap()),
        rcgen::SanType::URI("spiffe://cluster.local/\u{1b}[2J".try_into().unwrap()),
    ];
    let cert = params.self_signed(&key).unwrap();
    let cert_path = tmp.path().join("hostile.pem");
    let key_path = tmp.path().join("hostile.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let check = |what: &str, output: &str| {
        let raw: Vec<char> = output
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(raw.is_empty(), "{what} printed {raw:?}: {output:?}");
        assert!(
            output.contains("CA pwn\\x1b]0;owned\\x07"),
            "{what}: {output}"
        );
        assert!(output.contains("\\x9b1m\\x7f"), "{what}: {output}");
    };
    let ca = tmp.path().join("ca");
    let shown = ok(&meshca(&ca, &["inspect", cert_path.to_str().unwrap()]));
    check("inspect", &shown);
    assert!(shown.contains("x\\x1b[31m.example"), "{shown}");
    assert!(shown.contains("spiffe://cluster.local/\\x1b[2J"), "{shown}");

    // The same certificate as a CA meshca holds: `ca show` prints it the same way.
    let imported = meshca(
        &ca,
        &[
            "ca",
            "import",
            "--cert",
            cert_path.to_str().unwrap(),
            "--key",
            key_path.to_str().unwrap(),
        ],
    );
    ok(&imported);
    check("ca show", &ok(&meshca(&ca, &["ca", "show"])));

    // A refusal that quotes the certificate (here: another trust domain) is escaped too.
    let refused = meshca(
        &tmp.path().join("other"),
        &[
            "--trust-domain",
            "other.example",
            "ca",
            "import",
            "--cert",
            cert_path.to_str().unwrap(),
            "--key",
            key_path.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("CA pwn\\x1b]0;owned"), "{stderr}");
    let raw: Vec<char> = stderr
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(raw.is_empty(), "the refusal printed {raw:?}: {stderr:?}");
}
