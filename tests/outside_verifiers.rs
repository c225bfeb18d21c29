//! What meshca issues, judged by verifiers meshca does not share code with: pkilint's RFC 5280
//! linter, `openssl verify -x509_strict` and pyca cryptography's X.509 path verifier.
//!
//! The real `meshca` binary makes a P-256 root and an RSA root (`meshca bootstrap`), a
//! per-cluster intermediate (`meshca ca intermediate`) and leaves of every profile (`meshca
//! issue`): a workload certificate with its SPIFFE ID alone, one with explicit `--dns` names, a
//! DNS-only server certificate, a wildcard server certificate, RSA and P-256 leaf keys, and
//! leaves signed by the intermediate. Callers' keys too: CSRs made by `openssl req` (a producer
//! meshca shares no code with) for a P-256 and an RSA key, asking for names meshca does not give,
//! signed by Tresor over the same root. `tests/x509/lint.py` then lints every certificate and every
//! issuer/subject pair with pkilint (no WARNING or ERROR beyond its one known false positive on
//! `spiffe://` URIs, described there and in docs/SECURITY.md), verifies each leaf with `openssl
//! verify -x509_strict` for the purposes its profile has, and with pyca's client verifier
//! (SPIFFE leaves) and server verifier (DNS leaves), and checks with openssl that a caller's leaf
//! carries its CSR's public key and no attribute of its CSR's subject.
//!
//! pkilint and cryptography come from `scripts/install-tools.sh x509lint` (`.tools/pip/x509lint`,
//! or `MESHCA_X509LINT_PYTHONPATH`). Without them the test is skipped with a note, except under
//! `CI=true`, where a missing tool is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_provider::x509::certificates_to_pem;
use meshca_provider::{
    CertificateInfo, CertificateProvider, IssueRequest, LeafSpec, SpiffeId, SystemClock,
    TrustDomain, VerifiedCsr,
};
use meshca_test_support::cli::{self, ok};
use meshca_test_support::csr::greedy_openssl_csr;
use meshca_test_support::tools::{python_packages, run_python};
use meshca_test_support::workspace_root;
use meshca_tresor::{DirectoryStore, StoredCa, Tresor};
use serde_json::{Value, json};

/// Runs `meshca --ca-dir <ca_dir> <args>` and insists it succeeds.
fn meshca(ca_dir: &Path, args: &[&str]) {
    ok(&cli::meshca(ca_dir, args));
}

/// The PEM certificates in `path`, each as its own PEM text.
fn pem_blocks(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let end = "-----END CERTIFICATE-----";
    text.split_inclusive(end)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----"))
        .map(|block| format!("{}\n", block.trim()))
        .collect()
}

/// Writes the `index`th certificate of `from` alone to `to`; returns `to` as a string.
fn single(from: &Path, index: usize, to: PathBuf) -> String {
    let blocks = pem_blocks(from);
    std::fs::write(&to, &blocks[index]).unwrap();
    to.to_string_lossy().into_owned()
}

/// One `meshca issue` profile.
struct Profile {
    name: &'static str,
    args: &'static [&'static str],
    spiffe_id: Option<&'static str>,
    /// Hostnames the leaf must be valid for.
    hosts: &'static [&'static str],
    /// Whether it holds a wildcard name (`--allow-wildcard`).
    wildcard: bool,
}

const ROOT_PROFILES: &[Profile] = &[
    Profile {
        name: "workload p256 (SPIFFE ID only)",
        args: &["--identity", "svc/payments.prod"],
        spiffe_id: Some("spiffe://cluster.local/ns/svc/sa/payments.prod"),
        hosts: &[],
        wildcard: false,
    },
    Profile {
        name: "workload p256 + --dns",
        args: &[
            "--identity",
            "shop/web",
            "--dns",
            "web.example.com",
            "--dns",
            "web.shop.svc",
        ],
        spiffe_id: Some("spiffe://cluster.local/ns/shop/sa/web"),
        hosts: &["web.example.com", "web.shop.svc"],
        wildcard: false,
    },
    Profile {
        name: "server p256",
        args: &["--dns", "meshca-webhook.meshca-system.svc"],
        spiffe_id: None,
        hosts: &["meshca-webhook.meshca-system.svc"],
        wildcard: false,
    },
    Profile {
        name: "server p256 wildcard",
        args: &["--dns", "*.apps.example.com", "--allow-wildcard"],
        spiffe_id: None,
        hosts: &["shop.apps.example.com"],
        wildcard: true,
    },
    Profile {
        name: "workload rsa2048",
        args: &["--identity", "shop/api", "--key-type", "rsa2048"],
        spiffe_id: Some("spiffe://cluster.local/ns/shop/sa/api"),
        hosts: &[],
        wildcard: false,
    },
    Profile {
        name: "server rsa2048",
        args: &["--dns", "gateway.example.com", "--key-type", "rsa2048"],
        spiffe_id: None,
        hosts: &["gateway.example.com"],
        wildcard: false,
    },
];

const INTERMEDIATE_PROFILES: &[Profile] = &[
    Profile {
        name: "workload p256",
        args: &["--identity", "east/app"],
        spiffe_id: Some("spiffe://cluster.local/ns/east/sa/app"),
        hosts: &[],
        wildcard: false,
    },
    Profile {
        name: "server p256",
        args: &["--dns", "hook.east.example"],
        spiffe_id: None,
        hosts: &["hook.east.example"],
        wildcard: false,
    },
];

/// Issues every profile of `profiles` from the CA in `ca_dir` (called `ca` in the names);
/// returns the manifest entries.
fn issue_all(
    ca: &str,
    ca_dir: &Path,
    work: &Path,
    profiles: &[Profile],
    issuer: &str,
    root: &str,
    chain: &[String],
) -> Vec<Value> {
    let mut leaves = Vec::new();
    for (index, profile) in profiles.iter().enumerate() {
        let out = work.join(format!(
            "{}-{index}",
            ca_dir.file_name().unwrap().to_string_lossy()
        ));
        let out_str = out.to_string_lossy().into_owned();
        let mut args = vec!["issue", "--out-dir", &out_str];
        args.extend_from_slice(profile.args);
        meshca(ca_dir, &args);
        let leaf = single(&out.join("cert.pem"), 0, out.join("leaf.pem"));
        leaves.push(json!({
            "name": format!("{} from {ca}", profile.name),
            "cert": leaf,
            "issuer": issuer,
            "root": root,
            "chain": chain,
            "spiffe_id": profile.spiffe_id,
            "dns": profile.hosts,
            "wildcard": profile.wildcard,
        }));
    }
    leaves
}

/// Callers' keys: Tresor, over the CA in `ca_dir`, signs `openssl req` CSRs for a P-256 and
/// an RSA 2048 key with meshca's names; returns the manifest entries.
fn issue_for_callers(ca_dir: &Path, work: &Path, root: &str) -> Vec<Value> {
    let stored = StoredCa::read_files(
        &ca_dir.join(DirectoryStore::CERTIFICATE_FILE),
        &ca_dir.join(DirectoryStore::KEY_FILE),
    )
    .unwrap();
    let tresor = Tresor::new(
        stored.authority(SystemTime::now()).unwrap(),
        Arc::new(SystemClock),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let id = SpiffeId::from_short("shop/checkout", &TrustDomain::default()).unwrap();
    let day = Duration::from_secs(24 * 3600);
    let cases: [(&str, &[&str], LeafSpec); 3] = [
        (
            "caller key p256 workload",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            LeafSpec::workload(&id, &[], day),
        ),
        (
            "caller key rsa2048 workload + dns",
            &["-newkey", "rsa:2048"],
            LeafSpec::workload(&id, &["checkout.shop.svc".parse().unwrap()], day),
        ),
        (
            "caller key p256 server",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            LeafSpec::server(vec!["checkout.example.com".parse().unwrap()], day),
        ),
    ];
    let mut leaves = Vec::new();
    for (index, (name, newkey, spec)) in cases.into_iter().enumerate() {
        let csr_path = greedy_openssl_csr(work, &format!("caller-{index}"), newkey);
        let csr = VerifiedCsr::from_pem(&std::fs::read_to_string(&csr_path).unwrap()).unwrap();
        let request = IssueRequest::for_caller(&spec, &csr);
        tresor.capabilities().check(&request).unwrap();
        let chain = runtime.block_on(tresor.issue(&request)).unwrap();
        let info = CertificateInfo::parse(chain.leaf()).unwrap();
        assert_eq!(
            info.public_key,
            csr.public_key(),
            "{name}: the caller's key"
        );
        let uris: Vec<String> = spec.spiffe_id.iter().map(ToString::to_string).collect();
        assert_eq!(info.uri_sans, uris, "{name}: meshca's SPIFFE ID only");
        let dns: Vec<&str> = spec.dns_names.iter().map(|n| n.as_str()).collect();
        assert_eq!(info.dns_sans, dns, "{name}: meshca's DNS names only");
        let leaf = work.join(format!("caller-{index}.pem"));
        std::fs::write(&leaf, certificates_to_pem(&chain.certificates()[..1])).unwrap();
        leaves.push(json!({
            "name": format!("{name} (openssl req CSR) from root p256"),
            "cert": leaf.to_string_lossy(),
            "issuer": root,
            "root": root,
            "chain": [],
            "spiffe_id": spec.spiffe_id.as_ref().map(ToString::to_string),
            "dns": dns,
            "wildcard": false,
            "csr": csr_path.to_string_lossy(),
        }));
    }
    leaves
}

#[test]
fn every_profile_passes_pkilint_openssl_strict_and_pyca() {
    let Some(pythonpath) = python_packages(
        "MESHCA_X509LINT_PYTHONPATH",
        "x509lint",
        "import pkilint, validators; from cryptography.x509 import verification",
        "pkilint / cryptography",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();

    // A P-256 root, an intermediate it signs, and an RSA root.
    let root_dir = work.join("root");
    meshca(&root_dir, &["bootstrap"]);
    let root = single(&root_dir.join("ca.crt"), 0, work.join("root.pem"));
    let east_dir = work.join("east");
    let east_str = east_dir.to_string_lossy().into_owned();
    meshca(
        &root_dir,
        &[
            "ca",
            "intermediate",
            "--cluster",
            "east",
            "--out-dir",
            &east_str,
        ],
    );
    let east = single(&east_dir.join("ca.crt"), 0, work.join("east.pem"));
    let rsa_dir = work.join("rsa-root");
    meshca(
        &rsa_dir,
        &["--set", "tresor.rootKeyType=rsa3072", "bootstrap"],
    );
    let rsa_root = single(&rsa_dir.join("ca.crt"), 0, work.join("rsa-root.pem"));

    let mut leaves = issue_all(
        "root p256",
        &root_dir,
        work,
        ROOT_PROFILES,
        &root,
        &root,
        &[],
    );
    leaves.extend(issue_all(
        "intermediate east",
        &east_dir,
        work,
        INTERMEDIATE_PROFILES,
        &east,
        &root,
        std::slice::from_ref(&east),
    ));
    leaves.extend(issue_all(
        "root rsa3072",
        &rsa_dir,
        work,
        &ROOT_PROFILES[..3],
        &rsa_root,
        &rsa_root,
        &[],
    ));
    leaves.extend(issue_for_callers(&root_dir, work, &root));
    let manifest = json!({
        "cas": [
            {"name": "root p256", "cert": root, "issuer": null},
            {"name": "intermediate east", "cert": east, "issuer": root},
            {"name": "root rsa3072", "cert": rsa_root, "issuer": null},
        ],
        "leaves": leaves,
    });
    let manifest_path = work.join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let stdout = run_python(
        &workspace_root().join("tests/x509/lint.py"),
        &[manifest_path.as_os_str()],
        &pythonpath,
        "an outside verifier refused what meshca issued",
    );
    assert!(
        stdout.contains("outside verifiers: all checks passed"),
        "tests/x509/lint.py exited 0 without its summary line:\n{stdout}"
    );
    // Every leaf went through every verifier that applies to it.
    let leaves = manifest["leaves"].as_array().unwrap();
    for leaf in leaves {
        let name = leaf["name"].as_str().unwrap();
        assert!(
            stdout.contains(&format!("ok   pkilint lint_pkix_cert {name}\n")),
            "{name} not linted:\n{stdout}"
        );
        if !leaf["spiffe_id"].is_null() {
            assert!(
                stdout.contains(&format!("ok   pyca client verifier {name}\n")),
                "{name} not verified by pyca:\n{stdout}"
            );
        }
        if !leaf["csr"].is_null() {
            for check in ["openssl public key = CSR's", "no CSR subject in"] {
                assert!(
                    stdout.contains(&format!("ok   {check} {name}\n")),
                    "{name}: `{check}` did not pass:\n{stdout}"
                );
            }
        }
    }
}
