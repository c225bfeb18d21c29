//! Certificate signing requests as callers make them: by `openssl req` (a producer no one here
//! wrote), asking for what no caller may choose, and read back with x509-parser.

use std::path::{Path, PathBuf};
use std::process::Command;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// The SPIFFE ID a greedy CSR asks for: not the caller's.
pub const GREEDY_SPIFFE_ID: &str = "spiffe://cluster.local/ns/kube-system/sa/admin";
/// The DNS name a greedy CSR asks for: nobody gave it.
pub const GREEDY_DNS_NAME: &str = "evil.example";

/// A PEM CSR made by `openssl req` for a new key (`newkey`: its `-newkey` arguments, e.g.
/// `["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]`) that asks for what no caller
/// may choose: another workload's SPIFFE ID ([`GREEDY_SPIFFE_ID`]), a DNS name nobody gave it
/// ([`GREEDY_DNS_NAME`]) and a subject with O= and CN=. Written to `dir/<name>.csr`, the key
/// to `dir/<name>.key`; returns the CSR's path.
pub fn greedy_openssl_csr(dir: &Path, name: &str, newkey: &[&str]) -> PathBuf {
    openssl_csr(
        dir,
        name,
        newkey,
        "/O=Not meshca/CN=evil.example",
        &format!("URI:{GREEDY_SPIFFE_ID},DNS:{GREEDY_DNS_NAME}"),
    )
}

/// A PEM CSR made by `openssl req` for a new key (`newkey` as for [`greedy_openssl_csr`]) that
/// asks for exactly what istio-agent's CSRs ask for: an empty subject and one URI SAN,
/// `spiffe_id`. Written to `dir/<name>.csr`, the key to `dir/<name>.key`; returns the CSR's path.
pub fn exact_openssl_csr(dir: &Path, name: &str, spiffe_id: &str, newkey: &[&str]) -> PathBuf {
    openssl_csr(dir, name, newkey, "/", &format!("URI:{spiffe_id}"))
}

/// `openssl req -new` for a new key, with `subject` and the subjectAltName `sans`.
fn openssl_csr(dir: &Path, name: &str, newkey: &[&str], subject: &str, sans: &str) -> PathBuf {
    let csr = dir.join(format!("{name}.csr"));
    let output = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-keyout"])
        .arg(dir.join(format!("{name}.key")))
        .args(newkey)
        .args([
            "-subj",
            subject,
            "-addext",
            &format!("subjectAltName={sans}"),
            "-out",
        ])
        .arg(&csr)
        .output()
        .expect("run openssl req");
    assert!(
        output.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    csr
}

/// The SANs a DER CSR asks for, read with x509-parser after checking its signature: (URIs,
/// DNS names). Any other SAN type fails the test.
pub fn requested_sans(der: &[u8]) -> (Vec<String>, Vec<String>) {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .expect("a DER PKCS#10 request");
    csr.verify_signature()
        .expect("the CSR's signature verifies");
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    GeneralName::DNSName(name) => dns.push((*name).to_owned()),
                    other => panic!("unexpected SAN {other:?}"),
                }
            }
        }
    }
    (uris, dns)
}
