//! Node-agent impersonation against the mock Kubernetes API of `support/kube_api.rs`: the pod a
//! token is bound to, read from the TokenReview's extra fields; pods looked up by name and by
//! node with a field selector; and `NodeAuthorizer` deciding from both, as the Istio CA API does
//! when ztunnel asks for a workload's certificate (what is mocked: the API server; what is
//! real: the kube client meshca uses and everything of meshca's).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::sync::Arc;

use axum::http::Method;
use meshca::istio::{Caller, CallerKind, ImpersonationCheck, NodeAuthorizer, PodBinding};
use meshca::kubernetes::{
    KubePodDirectory, PodDirectory, PodLookupError, TokenReviewAuthenticator,
};
use meshca::sds::TokenAuthenticator;
use meshca_provider::{SpiffeId, TrustDomain};
use support::kube_api::{MockKube, TokenPod, pod_object};

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const ZTUNNEL_TOKEN: &str = "token-ztunnel";

fn id(short: &str) -> SpiffeId {
    SpiffeId::from_short(short, &TrustDomain::default()).unwrap()
}

/// The API server of a two-node cluster: ztunnel-abc on node-1 (its token bound to it), a pod
/// of ns1/sa1 on node-1, one of ns2/sa2 on node-2.
async fn cluster() -> MockKube {
    let kube = MockKube::start().await;
    kube.add_token(ZTUNNEL_TOKEN, "istio-system", "ztunnel", &["istio-ca"]);
    kube.bind_token_to_pod(
        ZTUNNEL_TOKEN,
        TokenPod {
            name: "ztunnel-abc".into(),
            uid: Some("uid-ztunnel-abc".into()),
            node: Some("node-1".into()),
        },
    );
    kube.put_pod("istio-system", "ztunnel-abc", "ztunnel", "node-1");
    kube.put_pod("ns1", "app-1", "sa1", "node-1");
    kube.put_pod("ns2", "app-2", "sa2", "node-2");
    kube
}

async fn reviewer(kube: &MockKube) -> TokenReviewAuthenticator {
    TokenReviewAuthenticator::new(
        kube.client().await,
        vec!["istio-ca".to_owned()],
        TrustDomain::default(),
    )
}

#[tokio::test]
async fn a_bound_tokens_review_names_its_pod_and_the_binding_is_cached_with_it() {
    let kube = cluster().await;
    kube.add_token("token-unbound", "ns1", "sa1", &["istio-ca"]);
    let reviewer = reviewer(&kube).await;

    let (identity, pod) = reviewer.authenticate_caller(ZTUNNEL_TOKEN).await.unwrap();
    assert_eq!(identity, id("istio-system/ztunnel"));
    let expected = PodBinding {
        name: "ztunnel-abc".into(),
        uid: Some("uid-ztunnel-abc".into()),
        node: Some("node-1".into()),
    };
    assert_eq!(pod.as_ref(), Some(&expected));

    let again = reviewer.authenticate_caller(ZTUNNEL_TOKEN).await.unwrap();
    assert_eq!(again, (identity.clone(), Some(expected)));
    let reviews = kube.requests().iter().filter(|r| r.path == REVIEWS).count();
    assert_eq!(reviews, 1, "the second call is answered from the cache");

    // `authenticate` (SDS) is the same review, without the pod.
    assert_eq!(
        reviewer.authenticate(ZTUNNEL_TOKEN).await.unwrap(),
        identity
    );

    // The mock reports an unbound token as bound to `pod-1`, no UID, no node: what older API
    // servers send for a projected token.
    let (_, pod) = reviewer.authenticate_caller("token-unbound").await.unwrap();
    assert_eq!(
        pod,
        Some(PodBinding {
            name: "pod-1".into(),
            uid: None,
            node: None,
        })
    );
}

#[tokio::test]
async fn pods_are_looked_up_by_name_and_by_node_with_a_field_selector() {
    let kube = cluster().await;
    let mut finished = pod_object("job-2", "sa2", "node-1", "Succeeded");
    finished["metadata"]["namespace"] = "ns2".into();
    kube.put_object("/api/v1/namespaces/ns2/pods/job-2", finished);
    let pods = KubePodDirectory::new(kube.client().await);

    let ztunnel = pods
        .pod("istio-system", "ztunnel-abc")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ztunnel.uid.as_deref(), Some("uid-ztunnel-abc"));
    assert_eq!(ztunnel.service_account.as_deref(), Some("ztunnel"));
    assert_eq!(ztunnel.node.as_deref(), Some("node-1"));
    assert!(!ztunnel.has_finished());
    assert_eq!(
        pods.pod("istio-system", "ztunnel-gone").await.unwrap(),
        None
    );

    let found = pods.running_on_node("ns1", "sa1", "node-1").await.unwrap();
    assert_eq!(found.map(|p| p.name).as_deref(), Some("app-1"));
    assert_eq!(
        pods.running_on_node("ns1", "sa1", "node-2").await.unwrap(),
        None
    );
    assert_eq!(
        pods.running_on_node("ns2", "sa2", "node-1").await.unwrap(),
        None,
        "a finished pod on the node does not count"
    );

    let list = kube
        .requests()
        .into_iter()
        .rfind(|r| r.is("GET", "/api/v1/namespaces/ns2/pods"))
        .expect("a list of ns2's pods");
    let selector = &list.params["fieldSelector"];
    for term in [
        "spec.nodeName=node-1",
        "spec.serviceAccountName=sa2",
        "status.phase!=Succeeded",
        "status.phase!=Failed",
    ] {
        assert!(selector.contains(term), "{term} in {selector}");
    }
    assert_eq!(list.params["limit"], "100", "the listing is paged");
}

#[tokio::test]
async fn a_refused_pod_lookup_says_which_permission_meshca_needs() {
    let kube = cluster().await;
    kube.fail(
        Method::GET,
        "/api/v1/namespaces/istio-system/pods/ztunnel-abc",
        403,
        "Forbidden",
        "pods \"ztunnel-abc\" is forbidden",
        1,
    );
    let pods = KubePodDirectory::new(kube.client().await);
    let error = pods.pod("istio-system", "ztunnel-abc").await.unwrap_err();
    assert!(matches!(error, PodLookupError::Unavailable { .. }));
    assert!(
        error.to_string().contains("get and list on pods"),
        "{error}"
    );
}

/// What the Istio CA API does with ztunnel's call: review the token, then ask the authorizer.
async fn impersonate(kube: &MockKube, token: &str, target: &str) -> Result<(), String> {
    let (identity, pod) = reviewer(kube)
        .await
        .authenticate_caller(token)
        .await
        .unwrap();
    let caller = Caller {
        identity,
        kind: CallerKind::Token,
        pod,
    };
    let authorizer = NodeAuthorizer::new(
        vec![id("istio-system/ztunnel")],
        Arc::new(KubePodDirectory::new(kube.client().await)),
    );
    authorizer
        .authorize(&caller, &target.parse().unwrap())
        .await
        .map_err(|denied| denied.reason)
}

#[tokio::test]
async fn ztunnel_may_have_the_identities_on_its_node_only() {
    let kube = cluster().await;
    impersonate(&kube, ZTUNNEL_TOKEN, "spiffe://cluster.local/ns/ns1/sa/sa1")
        .await
        .unwrap();
    let reason = impersonate(&kube, ZTUNNEL_TOKEN, "spiffe://cluster.local/ns/ns2/sa/sa2")
        .await
        .unwrap_err();
    assert!(reason.contains("node node-1"), "{reason}");

    // ztunnel's pod was re-created under the same name: the old token no longer speaks for it.
    kube.put_object(
        "/api/v1/namespaces/istio-system/pods/ztunnel-abc",
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "ztunnel-abc", "uid": "uid-new"},
            "spec": {"serviceAccountName": "ztunnel", "nodeName": "node-1",
                "containers": [{"name": "ztunnel", "image": "ztunnel"}]},
            "status": {"phase": "Running"},
        }),
    );
    let reason = impersonate(&kube, ZTUNNEL_TOKEN, "spiffe://cluster.local/ns/ns1/sa/sa1")
        .await
        .unwrap_err();
    assert!(reason.contains("re-created"), "{reason}");

    // A workload's own token, even bound to a pod on node-1, is no node agent's.
    kube.add_token("token-sa1", "ns1", "sa1", &["istio-ca"]);
    let reason = impersonate(&kube, "token-sa1", "spiffe://cluster.local/ns/ns2/sa/sa2")
        .await
        .unwrap_err();
    assert!(reason.contains("istio.trustedNodeAgents"), "{reason}");
}
