//! SDS callers authenticated by a Kubernetes service-account token (`sds.auth: token`): a real
//! SDS server and tonic client, TokenReviews answered by the mock API server of
//! `support/kube_api.rs` (what is mocked: the API server and its token table; what is real:
//! the kube client meshca uses, the gRPC stream, the certificates).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use meshca::kubernetes::TokenReviewAuthenticator;
use meshca::sds::{AuthMode, SdsSettings};
use meshca_provider::TrustDomain;
use support::kube_api::MockKube;
use support::{PATIENCE, RunningSds, TestCa, TestSource, channel, id, request, secrets, tls_of};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

struct Setup {
    kube: MockKube,
    sds: RunningSds,
}

async fn setup(audiences: &[&str]) -> Setup {
    let kube = MockKube::start().await;
    kube.add_token("token-bookstore", "bookstore", "bookstore-v2", &["meshca"]);
    kube.add_token("token-for-vault", "bookstore", "bookstore-v2", &["vault"]);
    kube.add_token("token-buyer", "bookstore", "bookbuyer", &["meshca"]);
    let authenticator = TokenReviewAuthenticator::new(
        kube.client().await,
        audiences.iter().map(|a| (*a).to_owned()).collect(),
        TrustDomain::default(),
    );
    let settings = SdsSettings::tcp(
        "127.0.0.1:0".parse().unwrap(),
        AuthMode::Token(Arc::new(authenticator)),
    );
    let source = TestSource::new(Arc::new(TestCa::new("token")));
    let sds = RunningSds::start(settings, source).await;
    Setup { kube, sds }
}

/// Opens a stream with `authorization: Bearer <token>` and returns its first response.
async fn first_response(
    sds: &RunningSds,
    token: Option<&str>,
    names: &[&str],
) -> Result<DiscoveryResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    tx.send(request(None, names)).await.unwrap();
    let mut call = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        call.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut client = SecretDiscoveryServiceClient::new(channel(&sds.url()).await);
    let mut inbound = client.stream_secrets(call).await?.into_inner();
    let message = tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .expect("an SDS answer in time")?;
    drop(tx);
    Ok(message.expect("a response"))
}

fn reviews(kube: &MockKube) -> Vec<serde_json::Value> {
    kube.requests()
        .into_iter()
        .filter(|r| r.path == REVIEWS)
        .map(|r| r.body.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_gets_its_own_certificate_and_is_cached() {
    let Setup { kube, sds } = setup(&["meshca"]).await;
    let response = first_response(&sds, Some("token-bookstore"), &["default"])
        .await
        .unwrap();
    let secret = &secrets(&response.resources)[0];
    let (chain, _key) = tls_of(secret);
    assert_eq!(
        chain.leaf_info().unwrap().uri_sans,
        [id("bookstore/bookstore-v2").to_string()]
    );

    // The review asked the API server about this token for meshca's audience.
    let sent = reviews(&kube);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["kind"], "TokenReview");
    assert_eq!(sent[0]["spec"]["token"], "token-bookstore");
    assert_eq!(sent[0]["spec"]["audiences"], serde_json::json!(["meshca"]));

    // A second stream with the same token is not reviewed again.
    first_response(
        &sds,
        Some("token-bookstore"),
        &["service-cert:bookstore/bookstore-v2"],
    )
    .await
    .unwrap();
    assert_eq!(reviews(&kube).len(), 1, "the accepted token was not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_and_other_identities_denied() {
    let Setup { kube, sds } = setup(&["meshca"]).await;

    let status = first_response(&sds, None, &["default"]).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("authorization: Bearer"),
        "{status:?}"
    );

    let status = first_response(&sds, Some("forged"), &["default"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        !status.message().contains("forged"),
        "the token is echoed: {status:?}"
    );

    let status = first_response(&sds, Some("token-for-vault"), &["default"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A rejection is remembered briefly: retrying the same token is not reviewed again.
    let before = reviews(&kube).len();
    let status = first_response(&sds, Some("forged"), &["default"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reviews(&kube).len(), before);

    // A valid token asking for someone else's certificate.
    let status = first_response(
        &sds,
        Some("token-buyer"),
        &["service-cert:bookstore/bookstore-v2"],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Trust bundles are public.
    first_response(&sds, Some("token-buyer"), &["ROOTCA"])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_trouble_is_unavailable_with_a_hint() {
    let Setup { kube, sds } = setup(&[]).await;
    kube.fail(
        axum::http::Method::POST,
        REVIEWS,
        403,
        "Forbidden",
        "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:meshca-system:meshca\" cannot create resource \"tokenreviews\"",
        1,
    );
    let status = first_response(&sds, Some("token-bookstore"), &["default"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Without audiences configured the API server's default audience applies.
    let response = first_response(&sds, Some("token-bookstore"), &["default"]).await;
    assert!(response.is_ok(), "{response:?}");
    assert!(
        reviews(&kube)
            .iter()
            .all(|r| r["spec"]["audiences"].is_null())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_costs_one_review_per_token() {
    let Setup { kube, sds } = setup(&["meshca"]).await;
    for _ in 0..20 {
        let status = first_response(&sds, Some("flood"), &["default"])
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let flood: Vec<_> = reviews(&kube)
        .into_iter()
        .filter(|r| r["spec"]["token"] == "flood")
        .collect();
    assert_eq!(
        flood.len(),
        1,
        "one TokenReview for 20 calls with one bad token"
    );
    // Every refusal is counted, cached or not.
    assert_eq!(sds.stats.snapshot().unauthenticated, 20);
    // Another token is reviewed on its own, and a good token is unaffected.
    first_response(&sds, Some("other-bad"), &["default"])
        .await
        .unwrap_err();
    first_response(&sds, Some("token-bookstore"), &["default"])
        .await
        .unwrap();
    assert_eq!(reviews(&kube).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_bad_token_are_reviewed_at_most_as_often_as_reviews_run_at_once()
{
    let Setup { kube, sds } = setup(&["meshca"]).await;
    let sds = Arc::new(sds);
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let sds = sds.clone();
            tokio::spawn(async move { first_response(&sds, Some("storm"), &["default"]).await })
        })
        .collect();
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let storm = reviews(&kube)
        .into_iter()
        .filter(|r| r["spec"]["token"] == "storm")
        .count();
    assert!(
        (1..=TokenReviewAuthenticator::MAX_CONCURRENT_REVIEWS).contains(&storm),
        "{storm} TokenReviews for 100 concurrent calls with one token"
    );
}
