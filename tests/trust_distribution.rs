//! Trust bundle distribution against the fake Kubernetes API (in process, through kube's
//! `Client`): the trust bundle ConfigMap in every namespace (new namespaces get it, edits and
//! deletions are repaired, excluded and terminating namespaces get none, someone else's
//! ConfigMap is left alone, a bundle change reaches every namespace, watches resume after the
//! server ends them or forgets their version, a resync repairs what no event reported) and the
//! ClusterTrustBundle (created, updated, restored; `v1beta1` when `v1` is not served; a cluster
//! serving neither is tolerated). Last, a real `meshca serve` and `meshca rotate root`: a root
//! rotation puts both roots in every namespace before any leaf under the new root is issued —
//! `advance` refuses, naming the namespaces behind, until then. The metrics follow along:
//! objects created, updated and restored, refused writes, namespaces behind, and whether each
//! kind holds the served bundle (also on the daemon's `/metrics`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use meshca::config::TrustDistributionConfig;
use meshca::kubernetes::trust_distribution::{
    DistributionMetricsSnapshot, DistributionStatus, KindSnapshot, Running, TrustDistribution,
};
use meshca_provider::TrustBundle;
use meshca_test_support::daemon::{MeshcaServe, advance_until_moved, rotate_root, rotation_flags};
use meshca_test_support::envoy::http_get;
use meshca_test_support::kube_api::MockKube;
use meshca_test_support::{
    PATIENCE, SotwClient, TestCa, assert_chains_to, channel, eventually, eventually_ok_every,
    free_port, node, secret_named, secrets, tls_of,
};
use serde_json::{Value, json};
use tokio::sync::watch;

const CM: &str = "istio-ca-root-cert";
const KEY: &str = "root-cert.pem";
const CTB_V1: &str = "/apis/certificates.k8s.io/v1/clustertrustbundles";
const CTB_V1BETA1: &str = "/apis/certificates.k8s.io/v1beta1/clustertrustbundles";
const CTB_NAME: &str = "meshca.dev:trust-bundle:roots";

fn config_map_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/configmaps/{CM}")
}

fn config(config_maps: bool, cluster_trust_bundle: bool) -> TrustDistributionConfig {
    let mut config = TrustDistributionConfig::default();
    config.config_map.enabled = config_maps;
    config.cluster_trust_bundle.enabled = cluster_trust_bundle;
    config
}

/// Starts the distribution of `bundle` through the mock, in process.
fn start(
    mock: &MockKube,
    config: &TrustDistributionConfig,
    bundle: &TrustBundle,
) -> (Running, watch::Sender<Arc<TrustBundle>>) {
    let (sender, receiver) = watch::channel(Arc::new(bundle.clone()));
    let running = TrustDistribution::new(config, mock.in_process_client())
        .expect("something is enabled")
        .spawn(receiver);
    (running, sender)
}

/// The PEM held by the ConfigMap in `namespace`, if any.
fn held(mock: &MockKube, namespace: &str) -> Option<String> {
    mock.object(&config_map_path(namespace))
        .and_then(|cm| cm["data"][KEY].as_str().map(str::to_owned))
}

/// Waits for the distribution's metrics to satisfy `done` (they follow a write's answer, which
/// comes after the mock has stored it).
async fn wait_for_metrics(
    running: &Running,
    what: &str,
    done: impl Fn(&DistributionMetricsSnapshot) -> bool,
) -> DistributionMetricsSnapshot {
    let metrics = running.metrics();
    eventually(
        PATIENCE,
        what,
        || std::future::ready(metrics.snapshot()),
        done,
    )
    .await
}

/// The ConfigMaps' figures.
fn config_maps(snapshot: &DistributionMetricsSnapshot) -> KindSnapshot {
    snapshot.config_map.expect("ConfigMaps enabled")
}

/// The ClusterTrustBundle's figures.
fn cluster_trust_bundle(snapshot: &DistributionMetricsSnapshot) -> KindSnapshot {
    snapshot
        .cluster_trust_bundle
        .expect("ClusterTrustBundle enabled")
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn wait_for_pem(mock: &MockKube, namespaces: &[&str], pem: &str) {
    eventually(
        PATIENCE,
        &format!("the ConfigMaps of {namespaces:?} to hold the bundle"),
        || async {
            namespaces
                .iter()
                .map(|ns| (ns.to_string(), held(mock, ns)))
                .collect::<Vec<_>>()
        },
        |held| held.iter().all(|(_, p)| p.as_deref() == Some(pem)),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn every_namespace_gets_the_config_map_new_ones_promptly_excluded_and_terminating_none() {
    let mock = MockKube::start().await;
    for namespace in ["default", "apps", "kube-system", "leaving"] {
        mock.create_namespace(namespace);
    }
    mock.terminate_namespace("leaving");
    let ca = TestCa::new("dist");
    let pem = ca.bundle().to_pem();
    let (running, _bundle) = start(&mock, &config(true, false), &ca.bundle());
    wait_for_pem(&mock, &["default", "apps"], &pem).await;
    let object = mock.object(&config_map_path("apps")).unwrap();
    assert_eq!(
        object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshca"
    );
    assert_eq!(
        object["data"].as_object().unwrap().len(),
        1,
        "only the bundle: {object}"
    );
    mock.create_namespace("fresh");
    wait_for_pem(&mock, &["fresh"], &pem).await;
    assert_eq!(held(&mock, "kube-system"), None, "excluded by default");
    assert_eq!(held(&mock, "leaving"), None, "terminating");
    let status = running.status().unwrap().borrow().clone();
    assert!(status.synced);
    assert_eq!(
        status.namespaces.keys().collect::<Vec<_>>(),
        ["apps", "default", "fresh"]
    );
    assert!(status.behind(&ca.bundle().fingerprints()[0]).is_empty());
    // Nothing was written to the namespaces it skipped, not even an attempt.
    assert!(
        !mock
            .writes()
            .iter()
            .any(|r| r.path.contains("/kube-system/") || r.path.contains("/leaving/")),
        "{:?}",
        mock.writes()
    );
}

#[tokio::test(start_paused = true)]
async fn a_deleted_or_edited_config_map_is_restored_and_someone_elses_is_left_alone() {
    let mock = MockKube::start().await;
    for namespace in ["a", "b", "c"] {
        mock.create_namespace(namespace);
    }
    let foreign = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"labels": {"istio.io/config": "true"}},
        "data": {KEY: "istiod's own root"}});
    mock.put_object(&config_map_path("c"), foreign.clone());
    let ca = TestCa::new("dist");
    let pem = ca.bundle().to_pem();
    let (running, _bundle) = start(&mock, &config(true, false), &ca.bundle());
    wait_for_pem(&mock, &["a", "b"], &pem).await;
    // c holds someone else's root: the ConfigMaps are not current, and c is behind.
    let first = wait_for_metrics(&running, "a and b created, c behind", |s| {
        config_maps(s).created == 2 && s.namespaces == 3 && s.namespaces_behind == 1
    })
    .await;
    assert!(!config_maps(&first).current, "{first:?}");
    assert_eq!(config_maps(&first).last_current_unix_seconds, 0, "never");
    assert_eq!(first.cluster_trust_bundle, None, "not enabled");

    assert!(mock.delete_object(&config_map_path("a")));
    wait_for_pem(&mock, &["a"], &pem).await;
    wait_for_metrics(&running, "a restored", |s| config_maps(s).restored == 1).await;

    let mut edited = mock.object(&config_map_path("b")).unwrap();
    edited["data"][KEY] = json!("tampered");
    edited["data"]["extra"] = json!("x");
    mock.put_object(&config_map_path("b"), edited);
    wait_for_pem(&mock, &["b"], &pem).await;
    let restored = mock.object(&config_map_path("b")).unwrap();
    assert_eq!(restored["data"].as_object().unwrap().len(), 1, "{restored}");
    let repaired = wait_for_metrics(&running, "b restored", |s| config_maps(s).restored == 2).await;
    assert_eq!(
        (
            config_maps(&repaired).created,
            config_maps(&repaired).updated
        ),
        (2, 0),
        "restores are not counted as creations or updates: {repaired:?}"
    );

    // Someone else's: never written, and reported as behind.
    let status = eventually(
        PATIENCE,
        "the status to list c",
        || async { running.status().unwrap().borrow().clone() },
        |s: &DistributionStatus| s.namespaces.contains_key("c"),
    )
    .await;
    assert_eq!(status.behind(&ca.bundle().fingerprints()[0]), ["c"]);
    assert_eq!(held(&mock, "c").as_deref(), Some("istiod's own root"));
    assert!(
        !mock
            .writes()
            .iter()
            .any(|r| r.path.contains("/namespaces/c/")),
        "{:?}",
        mock.writes()
    );
    // Handed over by labelling it: then meshca keeps it.
    let mut labelled = mock.object(&config_map_path("c")).unwrap();
    labelled["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("meshca");
    mock.put_object(&config_map_path("c"), labelled);
    let before = unix_now();
    wait_for_pem(&mock, &["c"], &pem).await;
    let adopted = mock.object(&config_map_path("c")).unwrap();
    assert_eq!(adopted["metadata"]["labels"]["istio.io/config"], "true");
    // c's ConfigMap held another bundle: updated. Now every namespace holds the bundle.
    let all = wait_for_metrics(&running, "every namespace current", |s| {
        config_maps(s).current
    })
    .await;
    assert_eq!(config_maps(&all).updated, 1, "{all:?}");
    assert_eq!((all.namespaces, all.namespaces_behind), (3, 0));
    assert!(
        config_maps(&all).last_current_unix_seconds >= before,
        "{all:?}"
    );
    assert_eq!(config_maps(&all).write_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_bundle_change_reaches_every_namespace_and_the_status_names_those_behind() {
    let mock = MockKube::start().await;
    for namespace in ["a", "b", "c"] {
        mock.create_namespace(namespace);
    }
    let old = TestCa::new("old");
    let new = TestCa::new("new");
    let (running, bundle) = start(&mock, &config(true, false), &old.bundle());
    wait_for_pem(&mock, &["a", "b", "c"], &old.bundle().to_pem()).await;
    let status = running.status().unwrap();
    let new_root = new.bundle().fingerprints()[0].clone();
    assert_eq!(status.borrow().behind(&new_root), ["a", "b", "c"]);

    // b's update fails for a while (and conflicts once): it is retried.
    mock.fail(
        http::Method::PUT,
        &config_map_path("b"),
        500,
        "InternalError",
        "etcd is slow",
        3,
    );
    mock.touch_after_read(&config_map_path("c"), 1);
    let both = TrustBundle::new(vec![old.root().clone(), new.root().clone()]);
    bundle.send_replace(Arc::new(both.clone()));
    let behind = eventually(
        PATIENCE,
        "a and c to hold the new root",
        || std::future::ready(status.borrow().clone()),
        |s: &DistributionStatus| !s.behind(&new_root).contains(&"a"),
    )
    .await;
    assert!(behind.synced);
    wait_for_pem(&mock, &["a", "b", "c"], &both.to_pem()).await;
    eventually(
        PATIENCE,
        "no namespace behind",
        || std::future::ready(status.borrow().clone()),
        |s: &DistributionStatus| s.behind(&new_root).is_empty(),
    )
    .await;
    let failed_puts = mock
        .requests()
        .iter()
        .filter(|r| r.is("PUT", &config_map_path("b")) && r.status == 500)
        .count();
    assert_eq!(failed_puts, 3);
    let after = wait_for_metrics(&running, "every namespace current again", |s| {
        config_maps(s).current && config_maps(s).updated == 3
    })
    .await;
    let figures = config_maps(&after);
    assert_eq!(figures.write_failures, 3, "each refused write: {after:?}");
    assert_eq!((figures.created, figures.restored), (3, 0), "{after:?}");
    assert_eq!(after.namespaces_behind, 0);
}

#[tokio::test(start_paused = true)]
async fn watches_resume_after_the_server_ends_them_and_relist_after_410() {
    let mock = MockKube::start().await;
    mock.create_namespace("a");
    let ca = TestCa::new("dist");
    let pem = ca.bundle().to_pem();
    let (_running, _bundle) = start(&mock, &config(true, false), &ca.bundle());
    wait_for_pem(&mock, &["a"], &pem).await;
    eventually(
        PATIENCE,
        "both watches open",
        || async {
            (
                mock.open_watches("namespaces"),
                mock.open_watches("configmaps"),
            )
        },
        |open| *open == (1, 1),
    )
    .await;

    // The server ends the watches (their timeout): they resume from the version they saw.
    mock.end_watches();
    mock.create_namespace("b");
    wait_for_pem(&mock, &["b"], &pem).await;

    // The history is compacted and the watches end: resuming gets 410, so they list again.
    mock.clear_requests();
    mock.compact_history();
    mock.end_watches();
    mock.create_namespace("c");
    wait_for_pem(&mock, &["c"], &pem).await;
    let lists = mock
        .requests()
        .iter()
        .filter(|r| r.is("GET", "/api/v1/namespaces") && !r.params.contains_key("watch"))
        .count();
    assert!(lists >= 1, "a relist: {:?}", mock.requests());
}

#[tokio::test(start_paused = true)]
async fn a_resync_repairs_what_no_watch_event_reported() {
    let mock = MockKube::start().await;
    mock.create_namespace("a");
    let ca = TestCa::new("dist");
    let pem = ca.bundle().to_pem();
    let mut config = config(true, false);
    config.resync_interval = Duration::from_secs(5);
    let (_running, _bundle) = start(&mock, &config, &ca.bundle());
    wait_for_pem(&mock, &["a"], &pem).await;
    let mut edited = mock.object(&config_map_path("a")).unwrap();
    edited["data"][KEY] = json!("drifted");
    mock.put_object_unwatched(&config_map_path("a"), edited);
    // Within one resync interval (virtual time), without any event.
    wait_for_pem(&mock, &["a"], &pem).await;
}

fn ctb(mock: &MockKube, collection: &str) -> Option<Value> {
    mock.object(&format!("{collection}/{CTB_NAME}"))
}

async fn wait_for_ctb(mock: &MockKube, collection: &str, pem: &str) -> Value {
    eventually(
        PATIENCE,
        "the ClusterTrustBundle to hold the bundle",
        || async { ctb(mock, collection) },
        |object| {
            object
                .as_ref()
                .is_some_and(|o| o["spec"]["trustBundle"].as_str() == Some(pem))
        },
    )
    .await
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_cluster_trust_bundle_is_created_updated_and_restored() {
    let mock = MockKube::start().await;
    let old = TestCa::new("old");
    let new = TestCa::new("new");
    let (running, bundle) = start(&mock, &config(false, true), &old.bundle());
    let object = wait_for_ctb(&mock, CTB_V1, &old.bundle().to_pem()).await;
    assert_eq!(object["spec"]["signerName"], "meshca.dev/trust-bundle");
    assert_eq!(object["apiVersion"], "certificates.k8s.io/v1");
    assert_eq!(
        object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshca"
    );

    let created = wait_for_metrics(&running, "the ClusterTrustBundle current", |s| {
        cluster_trust_bundle(s).current
    })
    .await;
    assert_eq!(cluster_trust_bundle(&created).created, 1, "{created:?}");
    assert_eq!(created.config_map, None, "not enabled");

    // The first update is refused (RBAC not yet granted, say): counted, then retried.
    mock.fail(
        http::Method::PUT,
        &format!("{CTB_V1}/{CTB_NAME}"),
        403,
        "Forbidden",
        "cannot update clustertrustbundles",
        1,
    );
    let both = TrustBundle::new(vec![old.root().clone(), new.root().clone()]);
    bundle.send_replace(Arc::new(both.clone()));
    wait_for_ctb(&mock, CTB_V1, &both.to_pem()).await;
    let updated = wait_for_metrics(&running, "the update counted", |s| {
        cluster_trust_bundle(s).updated == 1
    })
    .await;
    assert_eq!(cluster_trust_bundle(&updated).write_failures, 1);

    assert!(mock.delete_object(&format!("{CTB_V1}/{CTB_NAME}")));
    wait_for_ctb(&mock, CTB_V1, &both.to_pem()).await;

    let mut edited = ctb(&mock, CTB_V1).unwrap();
    edited["spec"]["trustBundle"] = json!(old.root_pem());
    mock.put_object(&format!("{CTB_V1}/{CTB_NAME}"), edited);
    wait_for_ctb(&mock, CTB_V1, &both.to_pem()).await;
    let restored = wait_for_metrics(&running, "two restores counted", |s| {
        cluster_trust_bundle(s).restored == 2 && cluster_trust_bundle(s).current
    })
    .await;
    let figures = cluster_trust_bundle(&restored);
    assert_eq!(
        (figures.created, figures.updated, figures.write_failures),
        (1, 1, 1),
        "{restored:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn v1beta1_is_used_where_v1_is_not_served_and_a_cluster_serving_neither_is_tolerated() {
    let mock = MockKube::start().await;
    mock.not_served(CTB_V1);
    let ca = TestCa::new("dist");
    let pem = ca.bundle().to_pem();
    let (_running, _bundle) = start(&mock, &config(false, true), &ca.bundle());
    let object = wait_for_ctb(&mock, CTB_V1BETA1, &pem).await;
    assert_eq!(object["spec"]["signerName"], "meshca.dev/trust-bundle");
    drop(_running);

    let mock = MockKube::start().await;
    mock.not_served(CTB_V1);
    mock.not_served(CTB_V1BETA1);
    mock.create_namespace("a");
    let (_running, _bundle) = start(&mock, &config(true, true), &ca.bundle());
    wait_for_pem(&mock, &["a"], &pem).await;
    assert!(ctb(&mock, CTB_V1).is_none() && ctb(&mock, CTB_V1BETA1).is_none());
    assert!(
        !mock
            .writes()
            .iter()
            .any(|r| r.path.contains("clustertrustbundles")),
        "{:?}",
        mock.writes()
    );
}

/// The roots held by the ConfigMap in `namespace` (none if absent or unreadable).
fn roots_in(mock: &MockKube, namespace: &str) -> Vec<String> {
    held(mock, namespace)
        .and_then(|pem| TrustBundle::from_pem(&pem).ok())
        .map(|bundle| bundle.fingerprints())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_reaches_every_namespace_before_the_new_root_signs() {
    let mock = MockKube::start().await;
    for namespace in ["a", "b", "c"] {
        mock.create_namespace(namespace);
    }
    // A cluster that serves no ClusterTrustBundles: one warning, and the ConfigMaps still work.
    mock.not_served(CTB_V1);
    mock.not_served(CTB_V1BETA1);
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let sds_port = free_port();
    let kubeconfig = mock.kubeconfig().display().to_string();
    let mut daemon = MeshcaServe::builder()
        .args(rotation_flags(&ca_dir))
        .set(&format!("sds.listen=127.0.0.1:{sds_port}"))
        .set("sds.auth=development")
        .set("trustDistribution.configMap.enabled=true")
        .set("trustDistribution.clusterTrustBundle.enabled=true")
        .admin()
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .start();
    daemon.wait_listening(sds_port).await;
    let url = format!("http://127.0.0.1:{sds_port}");
    let namespaces = ["a", "b", "c"];
    let old_roots = eventually(
        PATIENCE,
        "every namespace to hold the CA's root",
        || async { namespaces.map(|ns| roots_in(&mock, ns)) },
        |held| held.iter().all(|roots| roots.len() == 1),
    )
    .await;
    let old_root = old_roots[0][0].clone();
    daemon
        .wait_for_log("does not serve ClusterTrustBundles", PATIENCE)
        .await;

    // A workload holding its certificate, signed under the old root.
    let mut serving = SotwClient::open(channel(&url).await, Some(node("ns/server")), &["default"])
        .await
        .unwrap();
    let (old_leaf, _) = tls_of(secret_named(
        &secrets(&serving.next().await.unwrap().resources),
        "default",
    ));

    // Namespace b's ConfigMap cannot be updated for now.
    mock.fail(
        http::Method::PUT,
        &config_map_path("b"),
        500,
        "InternalError",
        "etcd is unavailable",
        usize::MAX,
    );
    let started = rotate_root(&ca_dir, &[], "start");
    assert!(started.status.success(), "{started:?}");
    let both = eventually(
        PATIENCE,
        "a and c to hold both roots",
        || async { namespaces.map(|ns| roots_in(&mock, ns)) },
        |held| held[0].len() == 2 && held[2].len() == 2,
    )
    .await;
    let new_root = both[0].iter().find(|r| **r != old_root).unwrap().clone();
    assert_eq!(
        both[1],
        std::slice::from_ref(&old_root),
        "b is still behind"
    );

    // advance waits, naming the namespace behind.
    let waiting = eventually_ok_every(
        PATIENCE,
        Duration::from_millis(500),
        "advance to name namespace b",
        || {
            let output = rotate_root(&ca_dir, &[], "advance");
            async move {
                let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
                assert_eq!(output.status.code(), Some(3), "advance must wait: {stdout}");
                if stdout.contains("2 of 3 namespaces")
                    && stdout.contains("waiting for namespace b")
                {
                    Ok(stdout)
                } else {
                    Err(stdout)
                }
            }
        },
    )
    .await;
    assert!(waiting.contains("not advancing"), "{waiting}");
    assert_eq!(roots_in(&mock, "b"), std::slice::from_ref(&old_root));

    // b catches up: then, and only then, the new root signs.
    mock.clear_faults();
    let advanced = advance_until_moved(&ca_dir, PATIENCE).await;
    assert!(advanced.contains("stage 2"), "{advanced}");
    for namespace in namespaces {
        let held = roots_in(&mock, namespace);
        assert!(
            held.contains(&old_root) && held.contains(&new_root),
            "{namespace} holds {held:?} when the new root starts signing"
        );
    }
    let renewed = loop {
        let response = serving.next().await.unwrap();
        let (chain, _) = tls_of(secret_named(&secrets(&response.resources), "default"));
        serving.ack(&response, &["default"]).await;
        if chain.leaf() != old_leaf.leaf() {
            break chain;
        }
    };
    let new_root_der = TrustBundle::from_pem(&held(&mock, "a").unwrap())
        .unwrap()
        .roots()
        .iter()
        .find(|r| {
            !TrustBundle::new(vec![(*r).clone()])
                .fingerprints()
                .contains(&old_root)
        })
        .unwrap()
        .clone();
    assert_chains_to(&renewed, &TrustBundle::new(vec![new_root_der]));
    let log = daemon.log();
    assert_eq!(
        log.matches("does not serve ClusterTrustBundles").count(),
        1,
        "one warning: {log}"
    );
    assert!(log.contains("runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true"));
    // b's failures: one warning saying what failed, then one line when it recovered.
    assert_eq!(
        log.matches("cannot write ConfigMap b/istio-ca-root-cert")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("ConfigMap b/istio-ca-root-cert written after failing"),
        "{log}"
    );
    // The same story on /metrics: b's refused writes, every namespace current, and no
    // ClusterTrustBundle held (the cluster serves none).
    let admin = daemon.admin();
    let metrics = eventually(
        PATIENCE,
        "/metrics to show the ConfigMaps current",
        || async { http_get(admin, "/metrics").await.unwrap().body },
        |text| text.contains("meshca_trust_distribution_current{kind=\"config_map\"} 1"),
    )
    .await;
    let sample = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(sample("meshca_trust_distribution_write_failures_total{kind=\"config_map\"}") >= 1.0);
    assert_eq!(sample("meshca_trust_distribution_namespaces"), 3.0);
    assert_eq!(sample("meshca_trust_distribution_namespaces_behind"), 0.0);
    assert_eq!(
        sample("meshca_trust_distribution_writes_total{kind=\"config_map\",action=\"updated\"}"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        sample("meshca_trust_distribution_current{kind=\"cluster_trust_bundle\"}"),
        0.0
    );
    assert!(
        sample("meshca_trust_distribution_last_current_timestamp_seconds{kind=\"config_map\"}")
            > 0.0
    );
    drop(daemon);
}

#[tokio::test]
async fn serve_refuses_to_start_when_distribution_is_on_and_no_api_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // An API server address where nothing listens.
    let port = free_port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: \
             http://127.0.0.1:{port}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- \
             name: gone\n  context:\n    cluster: gone\n    user: u\ncurrent-context: gone\n"
        ),
    )
    .unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(meshca_test_support::meshca_binary())
            .args(["--ca-dir", dir.path().join("ca").to_str().unwrap()])
            .args(["--set", "sds.listen=127.0.0.1:0", "--set", "admin.listen="])
            .args(["--set", "trustDistribution.configMap.enabled=true", "serve"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("MESHCA_CONFIG")
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("serve exits")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("trust distribution is enabled")
            && stderr.contains("trustDistribution.configMap.enabled=false"),
        "{stderr}"
    );
}

#[tokio::test(start_paused = true)]
async fn many_namespaces_each_get_one_write() {
    let mock = MockKube::start().await;
    let namespaces: Vec<String> = (0..60).map(|i| format!("ns-{i:02}")).collect();
    for namespace in &namespaces {
        mock.create_namespace(namespace);
    }
    let ca = TestCa::new("dist");
    let pem = ca.bundle().to_pem();
    let (_running, _bundle) = start(&mock, &config(true, false), &ca.bundle());
    let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    wait_for_pem(&mock, &names, &pem).await;
    let writes = mock.writes();
    assert_eq!(writes.len(), namespaces.len(), "{writes:?}");
    assert!(writes.iter().all(|w| w.method == "POST" && w.status == 201));
}
