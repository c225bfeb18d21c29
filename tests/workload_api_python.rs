//! The SPIFFE Workload API from py-spiffe, the SPIFFE project's Python library
//! (`tests/python/workload_api_client.py`), against a real `meshca serve` with JWT-SVIDs on:
//! every X.509-SVID of the process and the bundle, each chain checked by pyca cryptography's
//! verifier, an mTLS connection between the two identities with Python's `ssl` (each side sees
//! the other's SPIFFE ID), the renewal after `meshca rotate leaves` on the one stream it holds
//! (reconnecting is not allowed; the daemon counts the streams too), and a JWT-SVID per
//! identity validated by py-spiffe against the JWT bundle and by meshca, refused for another
//! audience.
//!
//! py-spiffe comes from `scripts/install-tools.sh spiffe` (or `MESHCA_SPIFFE_PYTHONPATH`);
//! without it the test is skipped, except with `CI=true`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::ffi::OsStr;

use support::daemon::MeshcaServe;
use support::tools::{python_packages, run_python};
use support::workload_api::{metric, my_ids, socket_dir, spiffe_id, start_with, wait_for_socket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_svids_connects_with_mtls_and_sees_the_renewal_on_its_stream() {
    let Some(pythonpath) = python_packages(
        "MESHCA_SPIFFE_PYTHONPATH",
        "spiffe",
        "import spiffe, cryptography.x509.verification",
        "py-spiffe",
    ) else {
        return;
    };
    let dir = socket_dir();
    let socket = dir.path().join("workload-api.sock");
    let (uid, gid) = my_ids();
    // The Python interpreter is the caller: matched by uid, and by gid for the second identity.
    let mut daemon = start_with(
        dir.path(),
        &socket,
        &[
            ("py/server", vec![format!("unix:uid:{uid}")], "server"),
            ("py/client", vec![format!("unix:gid:{gid}")], "client"),
        ],
        MeshcaServe::builder()
            .own_ca_dir()
            .set("jwtSvid.enabled=true"),
    );
    wait_for_socket(&mut daemon, &socket).await;
    let endpoint = format!("unix://{}", socket.display());
    let meshca = support::meshca_binary();
    let admin = daemon.admin().to_string();
    let token = dir.path().join("admin-token");
    let (server, client) = (spiffe_id("py/server"), spiffe_id("py/client"));
    let args: Vec<&OsStr> = vec![
        endpoint.as_ref(),
        server.as_ref(),
        client.as_ref(),
        "--".as_ref(),
        meshca.as_os_str(),
        "rotate".as_ref(),
        "leaves".as_ref(),
        "--admin".as_ref(),
        admin.as_ref(),
        "--token-file".as_ref(),
        token.as_os_str(),
    ];
    let script = support::workspace_root().join("tests/python/workload_api_client.py");
    // Blocking this worker thread is fine: the daemon is another process.
    let out = run_python(&script, &args, &pythonpath, "the py-spiffe client failed");
    let report: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap();
    let mut expected = vec![client.clone(), server.clone()];
    expected.sort();
    assert_eq!(report["svids"], serde_json::json!(expected), "{report}");
    assert_eq!(
        report["verified_subjects"][&server],
        serde_json::json!([server]),
        "{report}"
    );
    assert_eq!(report["authorities"], 1, "{report}");
    assert_eq!(
        report["mtls"]["server_saw"],
        serde_json::json!([client]),
        "{report}"
    );
    assert_eq!(
        report["mtls"]["client_saw"],
        serde_json::json!([server]),
        "{report}"
    );
    assert_eq!(
        report["mtls"]["answer"], "hello from the server",
        "{report}"
    );
    assert_eq!(report["renewed_on_the_stream"], true, "{report}");
    // JWT-SVIDs: one per identity, valid offline (py-spiffe's verifier) and by meshca, refused
    // for another audience both ways.
    let jwt = &report["jwt"];
    assert_eq!(jwt["ids"], serde_json::json!(expected), "{report}");
    assert_eq!(jwt["keys"], 1, "{report}");
    assert_eq!(
        jwt["validated_offline"],
        serde_json::json!(expected),
        "{report}"
    );
    assert_eq!(
        jwt["validated_by_meshca"],
        serde_json::json!(expected),
        "{report}"
    );
    assert_eq!(jwt["other_audience_refused"], 4, "{report}");
    // Four streams: fetch_x509_svids, fetch_x509_bundles, fetch_jwt_bundles (one message each),
    // and the watched one, which got the renewal without another being opened.
    assert_eq!(
        metric(&daemon, "meshca_workload_api_streams_total").await,
        4.0
    );
}
