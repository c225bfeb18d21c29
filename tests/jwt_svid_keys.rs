//! meshca's JWT-SVID signing keys kept in the Kubernetes Secret store (the fake API server):
//! replicas reading the same Secret adopt one key set, written with a compare-and-swap on the
//! Secret's resourceVersion, and a rotation made by one is adopted by the others.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshca::jwt_svid::{JwtAuthority, KeyPolicy};
use meshca::stores::kubernetes::KubernetesSecretStore;
use meshca_provider::{SpiffeId, TrustDomain};
use meshca_test_support::kube_api::{MockKube, secret_data};
use meshca_tresor::CaStore;

const SECRET: &str = "/api/v1/namespaces/meshca-system/secrets/meshca-ca-bundle";
const HOUR: Duration = Duration::from_secs(3600);

fn policy() -> KeyPolicy {
    KeyPolicy {
        rotation_interval: 24 * HOUR,
        activation_delay: HOUR,
        retention: HOUR,
    }
}

fn at(hours: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000) + HOUR * hours
}

fn kids(authority: &JwtAuthority) -> Vec<String> {
    authority
        .keys()
        .keys()
        .iter()
        .map(|k| k.kid().to_owned())
        .collect()
}

async fn replica(kube: &MockKube) -> JwtAuthority {
    let store: Arc<dyn CaStore> = Arc::new(KubernetesSecretStore::new(kube.client().await));
    JwtAuthority::new(store, policy())
}

#[tokio::test]
async fn replicas_on_one_secret_sign_with_one_key_set() {
    let kube = MockKube::start().await;
    kube.put_secret(
        "meshca-system",
        "meshca-ca-bundle",
        &[("ca.crt", b"root".as_slice())],
    );
    let replicas = [
        replica(&kube).await,
        replica(&kube).await,
        replica(&kube).await,
    ];
    // All three read the Secret before any writes: one write wins, the others get 409 and
    // adopt what it wrote.
    kube.hold_reads(SECRET, 3);
    let (a, b, c) = tokio::join!(
        replicas[0].refresh(at(0)),
        replicas[1].refresh(at(0)),
        replicas[2].refresh(at(0))
    );
    for outcome in [a, b, c] {
        assert!(outcome.unwrap());
    }
    let first = kids(&replicas[0]);
    assert_eq!(first.len(), 1);
    for r in &replicas[1..] {
        assert_eq!(kids(r), first);
    }
    let secret = kube.object(SECRET).unwrap();
    let data = secret_data(&secret);
    assert_eq!(
        data["ca.crt"], b"root",
        "the CA's keys are left as they were"
    );
    assert!(data.contains_key(KubernetesSecretStore::JWT_KEYS_KEY));

    // A token one replica signs validates at another.
    let td = TrustDomain::default();
    let id = SpiffeId::from_short("ns1/sa1", &td).unwrap();
    let jwt = replicas[0]
        .sign(
            &id,
            &["vault".to_owned()],
            5 * 60 * Duration::from_secs(1),
            None,
            at(0),
        )
        .unwrap();
    assert_eq!(
        replicas[2].validate(&jwt, "vault", &td, at(0)).unwrap().0,
        id
    );

    // A day on, one replica makes the next key (through a conflicting update); the others
    // adopt it on their next refresh.
    kube.touch_after_read(SECRET, 1);
    assert!(replicas[1].refresh(at(24)).await.unwrap());
    assert_eq!(kids(&replicas[1]).len(), 2);
    assert!(replicas[0].refresh(at(24)).await.unwrap());
    assert_eq!(kids(&replicas[0]), kids(&replicas[1]));
}

#[tokio::test]
async fn without_the_secret_the_error_says_to_bootstrap() {
    let kube = MockKube::start().await;
    let authority = replica(&kube).await;
    let error = authority.refresh(at(0)).await.unwrap_err().to_string();
    assert!(error.contains("meshca bootstrap"), "{error}");
}
