//! What a full end-to-end run writes to its logs: the real `meshca serve` at `trace` level for
//! every crate (h2, tonic, hyper and reqwest included), in JSON, feeding real Envoys over SDS,
//! with `meshca issue` writing files and `meshca rotate leaves` forcing a re-issue and a push;
//! then the same against a Vault-backed daemon on a real OpenBao dev server.
//!
//! Every log line must be one JSON object with a level, a target and a message, and no output
//! of any meshca process may hold a `PRIVATE KEY` block or the bytes of a private key that was
//! served (taken from the SDS stream, which hands out the very key Envoy holds, and from the
//! files `meshca issue` wrote) — in PEM lines, base64 at any alignment, hex or as a byte list.
//!
//! Envoy is found like in `sds_envoy.rs`; without it the Tresor test is skipped (it fails with
//! `CI=true`). OpenBao is installed by the Vault test support when missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use meshca_provider::LeafKey;
use support::bao::Bao;
use support::daemon::MeshcaServe;
use support::envoy::{self, MtlsPair, http_get};
use support::{SotwClient, channel, node, secrets, tls_of};

/// Every meshca command runs with these: JSON, and everything every crate logs.
const VERBOSE: [&str; 4] = ["--log-format", "json", "--log-level", "trace"];

/// What one meshca process wrote.
struct Captured {
    what: String,
    stdout: String,
    stderr: String,
}

/// `meshca serve` logging JSON at trace level, colour as the environment has it, SDS in
/// development mode and the admin listener on free ports.
fn start_daemon(global: &[String]) -> MeshcaServe {
    MeshcaServe::builder()
        .args(VERBOSE)
        .args(global)
        .dev_sds()
        .admin()
        .keep_color()
        .start()
}

/// SIGTERM, so the shutdown is logged too; returns everything it wrote.
fn stop(mut daemon: MeshcaServe, what: &str) -> Captured {
    let status = daemon.terminate();
    assert!(
        status.success(),
        "{what} exited with {status}:\n{}",
        daemon.tail(30)
    );
    Captured {
        what: what.to_owned(),
        stdout: daemon.stdout(),
        stderr: daemon.log(),
    }
}

/// Runs a one-shot meshca command verbosely; it must succeed.
async fn meshca(what: &str, global: &[String], args: &[&str]) -> Captured {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args(VERBOSE)
        .args(global)
        .args(args)
        .env_remove("MESHCA_CONFIG")
        .env_remove("NO_COLOR")
        .output()
        .await
        .unwrap();
    let captured = Captured {
        what: what.to_owned(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    };
    assert!(
        output.status.success(),
        "{what}: {}\n{}{}",
        output.status,
        captured.stdout,
        tail(&captured.stderr)
    );
    captured
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One SDS stream asking for `name` as `node`: the key it receives first.
async fn served_key(sds: SocketAddr, node_id: &str, name: &str) -> (SotwClient, LeafKey, String) {
    let mut stream = SotwClient::open(
        channel(&format!("http://{sds}")).await,
        Some(node(node_id)),
        &[name],
    )
    .await
    .unwrap();
    let response = stream.next().await.unwrap();
    stream.ack(&response, &[name]).await;
    let (chain, key) = tls_of(&secrets(&response.resources)[0]);
    (stream, key, chain.leaf_info().unwrap().serial_hex())
}

/// The next key pushed on `stream` (after a forced re-issue).
async fn pushed_key(stream: &mut SotwClient, name: &str) -> (LeafKey, String) {
    let response = stream.next().await.unwrap();
    stream.ack(&response, &[name]).await;
    let (chain, key) = tls_of(&secrets(&response.resources)[0]);
    (key, chain.leaf_info().unwrap().serial_hex())
}

fn key_file(dir: &Path) -> LeafKey {
    LeafKey::from_pem(&std::fs::read_to_string(dir.join("key.pem")).unwrap()).unwrap()
}

/// The admin bearer token `meshca rotate leaves` sends; it must never reach a log.
const ADMIN_TOKEN: &str = "log-hygiene-admin-token-0123456789abcdef";

fn global(pairs: &[String]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|pair| ["--set".to_owned(), pair.clone()])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_to_end_run_with_envoy_logs_no_key_material() {
    let Some(binary) = envoy::binary() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let ca_dir: PathBuf = work.path().join("ca");
    let token_file = work.path().join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let global = vec![
        "--ca-dir".to_owned(),
        ca_dir.display().to_string(),
        "--set".to_owned(),
        format!("admin.tokenFile={}", token_file.display()),
    ];
    let mut daemon = start_daemon(&global);
    daemon.wait_ready().await;
    let sds_port = daemon.sds().port().to_string();

    // Two Envoys talking mTLS with what meshca serves them.
    let MtlsPair {
        server,
        client,
        client_port,
        ..
    } = MtlsPair::start(&binary, sds_port.parse().unwrap()).await;
    let through_envoys = || async {
        let response = http_get(([127, 0, 0, 1], client_port).into(), "/")
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{response:?}\n{}", client.log_tail());
    };
    through_envoys().await;

    // The SDS stream hands out the very keys the Envoys hold (one per identity and purpose).
    let mut keys = Vec::new();
    let inbound = "service-cert-inbound:ns/server";
    let outbound = "service-cert-outbound:ns/client";
    let (mut server_stream, key, serial) = served_key(daemon.sds(), "ns/server", inbound).await;
    server.wait_for_serial(&serial).await;
    keys.push(("ns/server inbound key".to_owned(), key));
    let (mut client_stream, key, serial) = served_key(daemon.sds(), "ns/client", outbound).await;
    client.wait_for_serial(&serial).await;
    keys.push(("ns/client outbound key".to_owned(), key));

    // `meshca issue` to files, from the same CA.
    let out = work.path().join("issued");
    let mut captured = vec![
        meshca(
            "meshca issue",
            &global,
            &[
                "issue",
                "--identity",
                "app/web",
                "--out-dir",
                out.to_str().unwrap(),
            ],
        )
        .await,
    ];
    keys.push(("meshca issue key.pem".to_owned(), key_file(&out)));

    // A forced re-issue through the admin listener reaches both Envoys.
    captured.push(
        meshca(
            "meshca rotate leaves",
            &global,
            &["rotate", "leaves", "--admin", &daemon.admin().to_string()],
        )
        .await,
    );
    let (key, serial) = pushed_key(&mut server_stream, inbound).await;
    server.wait_for_serial(&serial).await;
    keys.push(("ns/server re-issued key".to_owned(), key));
    let (key, serial) = pushed_key(&mut client_stream, outbound).await;
    client.wait_for_serial(&serial).await;
    keys.push(("ns/client re-issued key".to_owned(), key));
    through_envoys().await;

    drop((server_stream, client_stream, server, client));
    captured.push(stop(daemon, "meshca serve"));

    check_logs(&captured, &keys, &[("the admin token", ADMIN_TOKEN)]);
    let serve = &captured.last().unwrap().stderr;
    assert!(
        serve
            .lines()
            .any(|l| l.contains("\"TRACE\"") && l.contains("\"h2::")),
        "h2's trace events are not in the log: the test would not see what they dump"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_backed_run_logs_no_key_material_nor_token() {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca log hygiene root").await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let global = global(&[
        "certificateProvider.kind=vault".to_owned(),
        "vault.host=127.0.0.1".to_owned(),
        format!("vault.port={}", bao.port),
        format!("vault.token={}", bao.root_token),
        format!("admin.tokenFile={}", token_file.display()),
    ]);
    let mut daemon = start_daemon(&global);
    daemon.wait_ready().await;

    let mut keys = Vec::new();
    let (mut stream, key, _) = served_key(daemon.sds(), "bookstore/bookstore-v2", "default").await;
    keys.push(("bookstore default key".to_owned(), key));

    let work = tempfile::tempdir().unwrap();
    let mut captured = vec![
        meshca(
            "meshca issue (vault)",
            &global,
            &[
                "issue",
                "--identity",
                "app/web",
                "--out-dir",
                work.path().to_str().unwrap(),
            ],
        )
        .await,
    ];
    keys.push((
        "meshca issue key.pem (vault)".to_owned(),
        key_file(work.path()),
    ));

    captured.push(
        meshca(
            "meshca rotate leaves (vault)",
            &global,
            &["rotate", "leaves", "--admin", &daemon.admin().to_string()],
        )
        .await,
    );
    let (key, _) = pushed_key(&mut stream, "default").await;
    keys.push(("bookstore re-issued key".to_owned(), key));

    drop(stream);
    captured.push(stop(daemon, "meshca serve (vault)"));
    check_logs(
        &captured,
        &keys,
        &[
            ("the Vault root token", &bao.root_token),
            ("the admin token", ADMIN_TOKEN),
        ],
    );
    let serve = &captured.last().unwrap().stderr;
    assert!(
        serve
            .lines()
            .any(|l| l.contains("\"TRACE\"") && (l.contains("\"hyper") || l.contains("\"reqwest"))),
        "the HTTP client's trace events are not in the log"
    );
}

/// A startup failure under `--log-format json` is still JSON: one error event carrying the
/// whole error chain, whether the configuration failed to load (before logging is set up) or
/// the daemon failed to start.
#[tokio::test]
async fn startup_errors_are_json_lines_when_json_is_asked_for() {
    let run = |args: Vec<String>, env: Option<(&'static str, &'static str)>| async move {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshca"));
        command
            .args(&args)
            .env_remove("MESHCA_CONFIG")
            .env_remove("MESHCA_LOG_FORMAT");
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.output().await.unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let error_event = |stderr: &str| -> String {
        for line in stderr.lines() {
            check_json_line(line).unwrap_or_else(|why| panic!("{why}: {line}"));
        }
        let last: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
        assert_eq!(last["level"], "ERROR", "{stderr}");
        last["fields"]["message"].as_str().unwrap().to_owned()
    };
    let bad_kind = || {
        ["--set", "certificateProvider.kind=nonsense", "serve"]
            .map(str::to_owned)
            .to_vec()
    };

    // The configuration does not load: the format comes from the flag, --set or the variable.
    let mut flagged = vec!["--log-format".to_owned(), "json".to_owned()];
    flagged.extend(bad_kind());
    let mut set = vec!["--set".to_owned(), "log.format=json".to_owned()];
    set.extend(bad_kind());
    for (how, args, env) in [
        ("--log-format json", flagged, None),
        ("--set log.format=json", set, None),
        (
            "MESHCA_LOG_FORMAT=json",
            bad_kind(),
            Some(("MESHCA_LOG_FORMAT", "json")),
        ),
    ] {
        let (code, stderr) = run(args, env).await;
        assert_eq!(code, Some(2), "{how}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{how}: one line: {stderr}");
        let message = error_event(&stderr);
        assert!(
            message.starts_with("meshca: ") && message.contains("nonsense"),
            "{how}: {message}"
        );
    }
    // Without JSON the same failure stays a plain line.
    let (code, stderr) = run(bad_kind(), None).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with("meshca: ") && !stderr.starts_with("{"),
        "{stderr}"
    );

    // The daemon cannot start: its SDS port is taken. The chain names the step and the cause.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ca = tempfile::tempdir().unwrap();
    let (code, stderr) = run(
        [
            "--log-format",
            "json",
            "--ca-dir",
            ca.path().to_str().unwrap(),
            "--set",
            "sds.auth=development",
            "--set",
            &format!("sds.listen={}", taken.local_addr().unwrap()),
            "serve",
        ]
        .map(str::to_owned)
        .to_vec(),
        None,
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    let message = error_event(&stderr);
    assert!(
        message.contains("cannot open the SDS listener") && message.contains("in use"),
        "the step and its cause on one line: {message}"
    );
}

/// Every stderr line is a JSON log event; nothing any process wrote holds key material or
/// the `secrets` given.
fn check_logs(captured: &[Captured], keys: &[(String, LeafKey)], secrets: &[(&str, &str)]) {
    let mut needles: Vec<(String, String)> = generic_needles();
    for (whose, key) in keys {
        needles.extend(
            key_needles(key)
                .into_iter()
                .map(|(form, needle)| (format!("{whose} ({form})"), needle)),
        );
    }
    needles.extend(
        secrets
            .iter()
            .map(|(what, secret)| ((*what).to_owned(), (*secret).to_owned())),
    );
    for output in captured {
        for (number, line) in output.stderr.lines().enumerate() {
            check_json_line(line).unwrap_or_else(|why| {
                panic!(
                    "{} stderr line {}: {why}: {}",
                    output.what,
                    number + 1,
                    shorten(line)
                )
            });
        }
        for (stream, text) in [("stderr", &output.stderr), ("stdout", &output.stdout)] {
            for (what, needle) in &needles {
                if let Some(at) = text.find(needle.as_str()) {
                    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                    panic!(
                        "{what} is in the {stream} of {}: {}",
                        output.what,
                        shorten(&text[line_start..line_end])
                    );
                }
            }
        }
    }
}

fn shorten(line: &str) -> String {
    line.chars().take(400).collect()
}

/// One JSON object with a level, a target and fields. meshca's own events always carry a
/// message (tracing-subscriber puts it under `fields`); some dependency events at trace level
/// are fields only (h2: `{"state":"Flushing(_)"}`), which tracing allows.
fn check_json_line(line: &str) -> Result<(), String> {
    let event: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let level = event["level"].as_str().ok_or("no level")?;
    if !["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level) {
        return Err(format!("unknown level {level:?}"));
    }
    let target = event["target"].as_str().ok_or("no target")?;
    if target.is_empty() {
        return Err("an empty target".to_owned());
    }
    let fields = event["fields"].as_object().ok_or("no fields")?;
    if fields.is_empty() {
        return Err("no fields".to_owned());
    }
    if target.starts_with("meshca") && !fields.get("message").is_some_and(|m| m.is_string()) {
        return Err("a meshca event without a message".to_owned());
    }
    Ok(())
}

/// Forms any private key's PEM takes: the block label as text, hex, a byte list, base64.
fn generic_needles() -> Vec<(String, String)> {
    let label = b"PRIVATE KEY";
    let mut needles = vec![
        ("a PRIVATE KEY block".to_owned(), "PRIVATE KEY".to_owned()),
        ("a PEM label in hex".to_owned(), hex(label)),
        ("a PEM label in hex".to_owned(), hex(label).to_uppercase()),
        ("a PEM label as bytes".to_owned(), byte_list(label)),
    ];
    for shift in 0..3 {
        let whole = &label[shift..];
        let groups = whole.len() / 3 * 3;
        needles.push((
            "a PEM label in base64".to_owned(),
            base64::engine::general_purpose::STANDARD.encode(&whole[..groups]),
        ));
    }
    needles
}

/// Forms `key`'s secret bytes could take in a log: its PEM body lines, its PKCS#8 DER in
/// base64 at every alignment (standard and URL-safe), in hex, and as a Debug byte list.
/// Stretches that are also in the public key (which certificates carry) are left out.
fn key_needles(key: &LeafKey) -> Vec<(&'static str, String)> {
    let der = key.pkcs8_der().secret_pkcs8_der().to_vec();
    let public = key.public_key_spki();
    let secret = |bytes: &[u8]| !public.windows(bytes.len()).any(|w| w == bytes);
    let mut needles = Vec::new();
    let pem = key.private_key_pem();
    for line in pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        needles.push(("a PEM line", line.to_owned()));
    }
    // 15 bytes make exactly 20 base64 characters whatever follows them, so a base64 dump of
    // any 30 bytes of the DER contains one of these, at whichever alignment it started.
    for start in 0..der.len().saturating_sub(15) {
        let piece = &der[start..start + 15];
        if secret(piece) {
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
            ];
            for engine in engines {
                needles.push(("base64 of the DER", engine.encode(piece)));
            }
        }
    }
    for chunk in der.chunks_exact(16) {
        if secret(chunk) {
            needles.push(("hex of the DER", hex(chunk)));
            needles.push(("hex of the DER", hex(chunk).to_uppercase()));
            needles.push(("the DER as a byte list", byte_list(chunk)));
        }
    }
    needles.sort();
    needles.dedup();
    needles
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `1, 2, 3`: what `{:?}` of a byte slice or `Vec<u8>` prints between its brackets.
fn byte_list(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn the_needles_find_a_key_in_the_forms_it_could_leak_in() {
    let key = LeafKey::generate(meshca_provider::KeyType::default()).unwrap();
    let der = key.pkcs8_der().secret_pkcs8_der().to_vec();
    let needles = key_needles(&key);
    let found = |text: &str| needles.iter().any(|(_, n)| text.contains(n.as_str()));
    // A dump of part of the DER, starting anywhere, in each form.
    for start in [0, 1, 2, 7, 20, 33] {
        let part = &der[start..start + 40];
        assert!(found(
            &base64::engine::general_purpose::STANDARD.encode(part)
        ));
        assert!(found(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(part)
        ));
        assert!(found(&hex(part)));
        assert!(found(&format!("{part:?}")));
    }
    assert!(found(
        &serde_json::to_string(key.private_key_pem().as_str()).unwrap()
    ));
    // Public material is not mistaken for the key.
    let public = key.public_key_spki();
    assert!(!found(
        &base64::engine::general_purpose::STANDARD.encode(&public)
    ));
    assert!(!found(&hex(&public)));
    let generic = generic_needles();
    let pem_bytes = format!("{:?}", key.private_key_pem().as_bytes());
    assert!(generic.iter().any(|(_, n)| pem_bytes.contains(n.as_str())));
    let pem_b64 =
        base64::engine::general_purpose::STANDARD.encode(key.private_key_pem().as_bytes());
    assert!(generic.iter().any(|(_, n)| pem_b64.contains(n.as_str())));
}
