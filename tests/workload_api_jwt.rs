//! JWT-SVIDs over the SPIFFE Workload API on a real `meshca serve` (`jwtSvid.enabled`),
//! through rust-spiffe: its `WorkloadApiClient` fetches a token for each identity of the
//! caller and the JWT bundle, validates them offline against that bundle (rust-spiffe's own
//! verifier, RustCrypto: not meshca's code) and through `ValidateJWTSVID`; its `JwtSource`
//! fetches one too. Refusals: a wrong audience, an expired token, a token of a key meshca never
//! published, an identity the caller does not hold, no audience. A key rotated in by another
//! replica reaches the open FetchJWTBundles stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use meshca::jwt_svid::{JwtAuthority, KeyPolicy};
use meshca::workload_api::proto::JwtsvidRequest;
use meshca::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshca_provider::{SpiffeId, TrustDomain};
use meshca_tresor::{CaStore, DirectoryStore};
use support::daemon::MeshcaServe;
use support::workload_api::{
    TRUST_DOMAIN, my_ids, socket_dir, spiffe_id, start_with, wait_for_socket,
};
use tonic::Code;

const AUDIENCE: &str = "vault";

fn replica(ca_dir: &std::path::Path, rotation_interval: Duration) -> JwtAuthority {
    let store: Arc<dyn CaStore> = Arc::new(DirectoryStore::new(ca_dir));
    JwtAuthority::new(
        store,
        KeyPolicy {
            rotation_interval,
            activation_delay: Duration::ZERO,
            retention: Duration::from_secs(600),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_spiffe_fetches_validates_and_follows_jwt_svids() {
    let dir = socket_dir();
    let socket = dir.path().join("workload-api.sock");
    let (uid, gid) = my_ids();
    let mut daemon = start_with(
        dir.path(),
        &socket,
        &[
            ("web/server", vec![format!("unix:uid:{uid}")], "server"),
            ("web/client", vec![format!("unix:gid:{gid}")], "client"),
        ],
        MeshcaServe::builder()
            .own_ca_dir()
            .set("jwtSvid.enabled=true")
            .set("jwtSvid.keyRefreshInterval=1s")
            .set("jwtSvid.keyActivationDelay=1s"),
    );
    wait_for_socket(&mut daemon, &socket).await;
    let endpoint = format!("unix://{}", socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .unwrap();
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();

    // A token for each identity, for the audience asked.
    let svids = client.fetch_all_jwt_svids([AUDIENCE], None).await.unwrap();
    let mut ids: Vec<String> = svids.iter().map(|s| s.spiffe_id().to_string()).collect();
    ids.sort();
    assert_eq!(ids, [spiffe_id("web/client"), spiffe_id("web/server")]);
    for svid in &svids {
        assert_eq!(svid.audience(), [AUDIENCE]);
    }

    // rust-spiffe's own verifier checks them against the bundle meshca streams.
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let bundle = bundles.get(&td).expect("a JWT bundle for the trust domain");
    assert_eq!(bundle.jwt_authorities().count(), 1);
    for svid in &svids {
        let checked = spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &[AUDIENCE])
            .expect("rust-spiffe validates meshca's JWT-SVID against meshca's bundle");
        assert_eq!(checked.spiffe_id(), svid.spiffe_id());
        assert!(
            spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &["someone-else"]).is_err()
        );
    }

    // And so does meshca, through ValidateJWTSVID.
    let token = svids[0].token().to_owned();
    let validated = client.validate_jwt_token(AUDIENCE, &token).await.unwrap();
    assert_eq!(validated.spiffe_id(), svids[0].spiffe_id());
    let wrong = client.validate_jwt_token("db", &token).await.unwrap_err();
    assert!(
        wrong.to_string().contains("not for this audience"),
        "{wrong}"
    );

    let ca_dir = daemon.dir().join("ca");
    let server_id = SpiffeId::from_short("web/server", &TrustDomain::default()).unwrap();
    let old = replica(&ca_dir, Duration::from_secs(24 * 3600));
    old.refresh(SystemTime::now()).await.unwrap();
    let expired = old
        .sign(
            &server_id,
            &[AUDIENCE.to_owned()],
            Duration::from_secs(300),
            None,
            SystemTime::now() - Duration::from_secs(600),
        )
        .unwrap();
    let refused = client
        .validate_jwt_token(AUDIENCE, &expired)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("expired"), "{refused}");
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = replica(stranger_dir.path(), Duration::from_secs(24 * 3600));
    stranger.refresh(SystemTime::now()).await.unwrap();
    let forged = stranger
        .sign(
            &server_id,
            &[AUDIENCE.to_owned()],
            Duration::from_secs(300),
            None,
            SystemTime::now(),
        )
        .unwrap();
    let refused = client
        .validate_jwt_token(AUDIENCE, &forged)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("unknown kid"), "{refused}");

    // JwtSource, rust-spiffe's long-lived source.
    let source = spiffe::JwtSource::builder()
        .endpoint(&endpoint)
        .build()
        .await
        .unwrap();
    let svid = source.fetch_jwt_svid([AUDIENCE]).await.unwrap();
    assert!(ids.contains(&svid.spiffe_id().to_string()));
    source.shutdown().await;

    // Refusals through the raw client: another identity, no audience.
    let channel = support::unix_channel(&socket).await;
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let ask = |audience: Vec<String>, spiffe_id: &str| {
        let mut request = tonic::Request::new(JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.to_owned(),
        });
        request
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        request
    };
    let refused = raw
        .fetch_jwtsvid(ask(vec![AUDIENCE.to_owned()], &spiffe_id("web/other")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = raw.fetch_jwtsvid(ask(vec![], "")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let one = raw
        .fetch_jwtsvid(ask(vec![AUDIENCE.to_owned()], &spiffe_id("web/client")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.svids.len(), 1);
    assert_eq!(one.svids[0].hint, "client");

    // Another replica rotates the key: the open bundle stream delivers both keys.
    let mut stream = client.stream_jwt_bundles().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.get(&td).unwrap().jwt_authorities().count(), 1);
    let rotating = replica(&ca_dir, Duration::from_millis(1));
    assert!(rotating.refresh(SystemTime::now()).await.unwrap());
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the rotated key set within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.get(&td).unwrap().jwt_authorities().count(), 2);
    daemon.terminate();
}
