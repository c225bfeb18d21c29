//! JWT-SVIDs against a real OpenBao's JWT auth method, configured with the JWKS `meshca
//! serve` publishes on its admin listener: a login with a JWT-SVID maps to the role bound to
//! its SPIFFE ID and no other, and still succeeds after the signing key is rotated (by
//! another replica sharing meshca's CA store, which the daemon follows).
//!
//! The tokens are signed here, as a second replica over the daemon's CA directory would sign
//! them; the Workload API's FetchJWTSVID serves the same tokens to workloads.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca::jwt_svid::{JwtAuthority, KeyPolicy};
use meshca_provider::{SpiffeId, TrustDomain};
use meshca_test_support::bao::Bao;
use meshca_test_support::daemon::MeshcaServe;
use meshca_test_support::eventually;
use meshca_tresor::{CaStore, DirectoryStore};
use serde_json::{Value, json};

const AUDIENCE: &str = "openbao";

fn id(short: &str) -> SpiffeId {
    SpiffeId::from_short(short, &TrustDomain::default()).unwrap()
}

async fn login(bao: &Bao, role: &str, jwt: &str) -> Result<Value, (u16, String)> {
    bao.raw(
        reqwest::Method::POST,
        "auth/jwt/login",
        None,
        Some(json!({"role": role, "jwt": jwt})),
    )
    .await
}

fn policies(answer: &Value) -> Vec<String> {
    answer["auth"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

async fn published_kids(client: &reqwest::Client, url: &str) -> Vec<String> {
    let body = client.get(url).send().await.unwrap().text().await.unwrap();
    let keys: Value = serde_json::from_str(&body).unwrap();
    keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn openbao_logs_workloads_in_by_their_jwt_svid_through_meshcas_jwks() {
    let mut serve = MeshcaServe::builder()
        .own_ca_dir()
        .admin()
        .set("jwtSvid.enabled=true")
        .set("jwtSvid.keyRefreshInterval=1s")
        .set("jwtSvid.keyActivationDelay=1s")
        .start();
    serve.wait_ready().await;
    let keys_url = format!("http://{}/keys", serve.admin());
    let client = meshca_test_support::bao::http_client();
    let first_kids = published_kids(&client, &keys_url).await;
    assert_eq!(first_kids.len(), 1, "the daemon made its first key");

    // A second replica over the same CA directory adopts the daemon's key.
    let store: Arc<dyn CaStore> = Arc::new(DirectoryStore::new(serve.dir().join("ca")));
    let policy = KeyPolicy {
        rotation_interval: Duration::from_secs(24 * 3600),
        activation_delay: Duration::from_secs(1),
        retention: Duration::from_secs(600),
    };
    let replica = JwtAuthority::new(store.clone(), policy);
    replica.refresh(SystemTime::now()).await.unwrap();
    assert_eq!(
        replica
            .keys()
            .keys()
            .iter()
            .map(|k| k.kid().to_owned())
            .collect::<Vec<_>>(),
        first_kids
    );
    let sign = |authority: &JwtAuthority, who: &SpiffeId| {
        authority
            .sign(
                who,
                &[AUDIENCE.to_owned()],
                Duration::from_secs(300),
                None,
                SystemTime::now(),
            )
            .unwrap()
    };

    let bao = Bao::dev().await;
    bao.write("sys/auth/jwt", json!({"type": "jwt"})).await;
    bao.write(
        "auth/jwt/config",
        json!({"jwks_url": keys_url, "jwt_supported_algs": ["ES256"]}),
    )
    .await;
    for (role, who) in [("sa1", "ns1/sa1"), ("sa2", "ns2/sa2")] {
        bao.write(
            &format!("auth/jwt/role/{role}"),
            json!({
                "role_type": "jwt",
                "bound_audiences": [AUDIENCE],
                "bound_subject": id(who).as_uri(),
                "user_claim": "sub",
                "token_policies": [format!("policy-{role}")],
                "token_ttl": "1m",
            }),
        )
        .await;
    }

    let sa1 = sign(&replica, &id("ns1/sa1"));
    let answer = login(&bao, "sa1", &sa1).await.expect("sa1 logs in as sa1");
    assert!(policies(&answer).contains(&"policy-sa1".to_owned()));
    let (status, text) = login(&bao, "sa2", &sa1).await.unwrap_err();
    assert_eq!(status, 400, "sa1's token is not sa2's: {text}");
    let sa2 = sign(&replica, &id("ns2/sa2"));
    let answer = login(&bao, "sa2", &sa2).await.expect("sa2 logs in as sa2");
    assert!(policies(&answer).contains(&"policy-sa2".to_owned()));
    assert!(!policies(&answer).contains(&"policy-sa1".to_owned()));

    // Another replica rotates the signing key (its schedule says a new key is due now): the
    // daemon reads it from the store and publishes both keys; OpenBao accepts tokens signed
    // by the new key, and by the old one while it is still published.
    let rotating = JwtAuthority::new(
        store,
        KeyPolicy {
            rotation_interval: Duration::from_millis(1),
            activation_delay: Duration::ZERO,
            retention: Duration::from_secs(600),
        },
    );
    assert!(rotating.refresh(SystemTime::now()).await.unwrap());
    let rotated: Vec<String> = rotating
        .keys()
        .keys()
        .iter()
        .map(|k| k.kid().to_owned())
        .collect();
    assert_eq!(rotated.len(), 2);
    eventually(
        Duration::from_secs(10),
        "the daemon publishes the new key",
        || published_kids(&client, &keys_url),
        |kids| *kids == rotated,
    )
    .await;
    let new_token = sign(&rotating, &id("ns1/sa1"));
    let header = jsonwebtoken::decode_header(&new_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(rotated[1].as_str()));
    let answer = login(&bao, "sa1", &new_token)
        .await
        .expect("a token signed by the new key logs in");
    assert!(policies(&answer).contains(&"policy-sa1".to_owned()));
    login(&bao, "sa1", &sa1)
        .await
        .expect("a token signed by the previous key still logs in");

    // A token signed by a key meshca never published is refused.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = JwtAuthority::new(
        Arc::new(DirectoryStore::new(stranger_dir.path().join("ca"))),
        policy,
    );
    stranger.refresh(SystemTime::now()).await.unwrap();
    let (status, text) = login(&bao, "sa1", &sign(&stranger, &id("ns1/sa1")))
        .await
        .unwrap_err();
    assert_eq!(status, 400, "{text}");
    serve.terminate();
}
