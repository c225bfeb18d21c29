//! Vault on Kubernetes, against a real OpenBao: the Kubernetes auth method and a token kept in
//! a Kubernetes Secret.
//!
//! Real: OpenBao (its Kubernetes auth method, which makes real TokenReview calls over HTTP),
//! the Vault provider, meshca's kube client and the `meshca` binary. Mocked: the Kubernetes API
//! server (`support/kube_api.rs`), which answers OpenBao's TokenReviews from a token table and
//! serves the Secret holding the Vault token. The service-account "JWT" is JWT-shaped (OpenBao
//! parses it) but signed by nobody: with no signing keys configured OpenBao trusts the
//! TokenReview's answer, as it does in a real cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support as support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use meshca::kubernetes::SecretTokenSource;
use meshca_provider::{
    CertificateProvider, IssueRequest, KeyType, LeafKey, LeafSpec, SpiffeId, TrustDomain,
};
use meshca_vault::{KubernetesAuthSettings, TokenSecretRef, VaultProvider, VaultSettings};
use serde_json::json;
use support::bao::Bao;
use support::kube_api::MockKube;

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// A JWT-shaped service-account token for `namespace/name`.
fn service_account_jwt(namespace: &str, name: &str) -> String {
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "kubernetes.io": {
            "namespace": namespace,
            // The uid the mock's TokenReview reports: OpenBao checks that both agree.
            "serviceaccount": {"name": name, "uid": format!("uid-{namespace}-{name}")},
        },
    });
    format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "kid": "mock"})),
        b64(claims),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 64])
    )
}

/// OpenBao with PKI, meshca's policy, and its Kubernetes auth method pointed at `kube`.
async fn bao_with_kubernetes_auth(kube: &MockKube) -> Bao {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca k8s root").await;
    bao.meshca_policy("meshca", "pki").await;
    bao.write("sys/auth/kubernetes", json!({"type": "kubernetes"}))
        .await;
    bao.write(
        "auth/kubernetes/config",
        // OpenBao wants a CA for the API server even though the mock speaks plain HTTP.
        json!({
            "kubernetes_host": kube.url(),
            "disable_local_ca_jwt": true,
            "kubernetes_ca_cert": unused_ca_pem(),
        }),
    )
    .await;
    bao.write(
        "auth/kubernetes/role/meshca",
        json!({
            "bound_service_account_names": ["meshca"],
            "bound_service_account_namespaces": ["meshca-system"],
            "token_policies": ["meshca"],
            "token_ttl": "1h",
        }),
    )
    .await;
    bao
}

fn unused_ca_pem() -> String {
    support::TestCa::new("unused").root_pem()
}

async fn issue_one(provider: &VaultProvider) {
    let id = SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap();
    let spec = LeafSpec::workload(&id, &[], Duration::from_secs(1200));
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let chain = provider
        .issue(&IssueRequest::generated(&spec, &key))
        .await
        .unwrap();
    assert_eq!(chain.leaf_info().unwrap().uri_sans, [id.to_string()]);
}

fn kubernetes_settings(bao: &Bao, jwt_file: &std::path::Path) -> VaultSettings {
    VaultSettings {
        token: None,
        kubernetes: Some(KubernetesAuthSettings {
            role: "meshca".to_owned(),
            token_file: jwt_file.to_owned(),
            ..KubernetesAuthSettings::default()
        }),
        ..bao.settings("")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_method_logs_in_with_the_service_account_token() {
    let kube = MockKube::start().await;
    let bao = bao_with_kubernetes_auth(&kube).await;
    let jwt = service_account_jwt("meshca-system", "meshca");
    kube.add_token(
        &jwt,
        "meshca-system",
        "meshca",
        &["https://kubernetes.default.svc.cluster.local"],
    );
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    std::fs::write(&jwt_file, &jwt).unwrap();

    let provider = match VaultProvider::connect(&kubernetes_settings(&bao, &jwt_file)).await {
        Ok(provider) => provider,
        Err(e) => panic!(
            "{e}\nrequests: {:#?}\nbao log: {}",
            kube.requests(),
            bao.log()
        ),
    };
    issue_one(&provider).await;
    // OpenBao really asked the (mock) API server about meshca's token.
    let reviews: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.path == REVIEWS)
        .collect();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(
        reviews[0].body.as_ref().unwrap()["spec"]["token"],
        jwt.as_str()
    );

    // A service account the Vault role is not bound to: a readable refusal naming the setting.
    let other = service_account_jwt("bookstore", "bookbuyer");
    kube.add_token(
        &other,
        "bookstore",
        "bookbuyer",
        &["https://kubernetes.default.svc.cluster.local"],
    );
    std::fs::write(&jwt_file, &other).unwrap();
    let error = VaultProvider::connect(&kubernetes_settings(&bao, &jwt_file))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("auth/kubernetes/login"), "{error}");
    assert!(error.contains("vault.kubernetes.role"), "{error}");
    assert!(!error.contains(&other), "the JWT leaked: {error}");

    // A token the API server does not know.
    std::fs::write(&jwt_file, service_account_jwt("meshca-system", "forged")).unwrap();
    let error = VaultProvider::connect(&kubernetes_settings(&bao, &jwt_file))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("vault.kubernetes"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_kept_in_a_secret_is_read_and_followed_when_it_changes() {
    let kube = MockKube::start().await;
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca secret-token root").await;
    bao.meshca_policy("meshca", "pki").await;
    let first = bao
        .token(json!({"policies": ["meshca"], "ttl": "1h"}))
        .await;
    kube.put_secret(
        "meshca-system",
        "vault-token",
        &[("token", first.as_bytes())],
    );
    let settings = VaultSettings {
        token: None,
        secret: Some(TokenSecretRef {
            name: "vault-token".to_owned(),
            key: "token".to_owned(),
            namespace: String::new(),
        }),
        ..bao.settings("")
    };
    // Without a reader of Secrets the provider says what is missing.
    let error = VaultProvider::connect(&settings)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("vault.secret"), "{error}");

    let source = Arc::new(SecretTokenSource::new(
        kube.client().await,
        "meshca-system",
        "vault-token",
        "token",
    ));
    let provider = VaultProvider::connect_with(&settings, Some(source))
        .await
        .unwrap();
    issue_one(&provider).await;
    assert!(
        kube.requests()
            .iter()
            .any(|r| r.path == "/api/v1/namespaces/meshca-system/secrets/vault-token")
    );

    // The operator rotates the token: a new one in the Secret, the old one revoked. The next
    // issuance meets the refusal, re-reads the Secret and goes on with the new token.
    let second = bao
        .token(json!({"policies": ["meshca"], "ttl": "1h"}))
        .await;
    kube.put_secret(
        "meshca-system",
        "vault-token",
        &[("token", second.as_bytes())],
    );
    bao.write("auth/token/revoke", json!({"token": first}))
        .await;
    issue_one(&provider).await;

    // A Secret without the key: a clear error naming the Secret and the setting.
    kube.put_secret("meshca-system", "vault-token", &[("other", b"x")]);
    bao.write("auth/token/revoke", json!({"token": second}))
        .await;
    let id = SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap();
    let spec = LeafSpec::workload(&id, &[], Duration::from_secs(1200));
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let error = provider
        .issue(&IssueRequest::generated(&spec, &key))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Secret meshca-system/vault-token key token"),
        "{error}"
    );
    assert!(error.contains("vault.secret.key"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_vault_secret_settings() {
    let kube = MockKube::start().await;
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca binary secret root").await;
    bao.meshca_policy("meshca", "pki").await;
    let token = bao
        .token(json!({"policies": ["meshca"], "ttl": "1h"}))
        .await;
    kube.put_secret(
        "vault",
        "meshca-vault-token",
        &[("vault-token", token.as_bytes())],
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshca"))
        .args([
            "--set",
            "certificateProvider.kind=vault",
            "--set",
            "vault.host=127.0.0.1",
        ])
        .args(["--set", &format!("vault.port={}", bao.port)])
        .args(["--set", "vault.secret.name=meshca-vault-token"])
        .args(["--set", "vault.secret.key=vault-token"])
        .args(["--set", "vault.secret.namespace=vault", "bootstrap"])
        .env("KUBECONFIG", kube.kubeconfig())
        .env_remove("VAULT_TOKEN")
        .env_remove("MESHCA_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("published the vault trust bundle"),
        "{stdout}"
    );
    assert!(!stdout.contains(&token));
}
