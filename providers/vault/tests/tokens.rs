//! Tokens over time: AppRole login, renewal, re-login when a token dies, token files, and the
//! clear failure of a static token that was revoked.

#![allow(clippy::unwrap_used)]

use meshca_test_support::bao as support;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use meshca_provider::{
    CertificateChain, CertificateProvider, IssueRequest, KeyType, LeafKey, LeafSpec, ProviderError,
};
use meshca_test_support::eventually;
use meshca_vault::{AppRoleSettings, Secret, VaultProvider, VaultSettings};
use serde_json::json;
use support::Bao;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long a renewal or re-login may take to be observed: several TTLs of the short-lived
/// tokens below, so a loaded machine does not fail the test.
const OBSERVE: Duration = Duration::from_secs(40);

async fn dev_with_pki_and_policy() -> Bao {
    let bao = Bao::dev().await;
    bao.pki("pki", "meshca dev root").await;
    bao.meshca_policy("meshca", "pki").await;
    bao
}

async fn issue(provider: &VaultProvider) -> Result<CertificateChain, ProviderError> {
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let spec = LeafSpec::server(
        vec!["hook.meshca-system.svc".parse().unwrap()],
        Duration::from_secs(600),
    );
    provider.issue(&IssueRequest::generated(&spec, &key)).await
}

fn app_role_settings(bao: &Bao, role_id: String, secret_id: String) -> VaultSettings {
    VaultSettings {
        token: None,
        app_role: Some(AppRoleSettings {
            role_id,
            secret_id: Some(Secret::new(secret_id)),
            ..AppRoleSettings::default()
        }),
        ..bao.settings("")
    }
}

fn expire_time(lookup: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::parse(lookup["expire_time"].as_str().unwrap(), &Rfc3339).unwrap()
}

#[tokio::test]
async fn app_role_logs_in_and_issues() {
    let bao = dev_with_pki_and_policy().await;
    let (role_id, secret_id) = bao.approle("meshca", json!({"token_ttl": "1h"})).await;
    let provider = VaultProvider::connect(&app_role_settings(&bao, role_id, secret_id))
        .await
        .unwrap();
    issue(&provider).await.unwrap();
    provider.check_health().await.unwrap();
    assert_eq!(bao.approle_token_accessors().await.len(), 1);
}

#[tokio::test]
async fn app_role_secret_id_can_come_from_a_file() {
    let bao = dev_with_pki_and_policy().await;
    let (role_id, secret_id) = bao.approle("meshca", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret-id");
    std::fs::write(&file, format!("{secret_id}\n")).unwrap();
    let settings = VaultSettings {
        token: None,
        app_role: Some(AppRoleSettings {
            role_id,
            secret_id_file: Some(file),
            ..AppRoleSettings::default()
        }),
        ..bao.settings("")
    };
    let provider = VaultProvider::connect(&settings).await.unwrap();
    issue(&provider).await.unwrap();
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_expires() {
    let bao = dev_with_pki_and_policy().await;
    let token = bao
        .token(json!({"policies": ["meshca"], "ttl": "6s", "period": "6s", "renewable": true}))
        .await;
    let first_expiry = expire_time(&bao.lookup(&token).await);
    let provider = VaultProvider::connect(&bao.settings(&token)).await.unwrap();

    // The provider renews at two thirds of the TTL: Vault's expire_time moves forward, and the
    // token outlives its first expiry.
    eventually(
        OBSERVE,
        "the token's expire_time to move past its first expiry",
        || async {
            (
                OffsetDateTime::now_utc(),
                expire_time(&bao.lookup(&token).await),
            )
        },
        |(now, expiry)| *now > first_expiry + time::Duration::seconds(1) && *expiry > first_expiry,
    )
    .await;
    issue(&provider).await.unwrap();
    provider.check_health().await.unwrap();
}

#[tokio::test]
async fn an_app_role_token_at_its_max_ttl_is_replaced_by_a_fresh_login() {
    let bao = dev_with_pki_and_policy().await;
    let (role_id, secret_id) = bao
        .approle("meshca", json!({"token_ttl": "3s", "token_max_ttl": "6s"}))
        .await;
    let provider = VaultProvider::connect(&app_role_settings(&bao, role_id, secret_id))
        .await
        .unwrap();
    let started = SystemTime::now();
    let seen: Mutex<HashSet<String>> =
        Mutex::new(bao.approle_token_accessors().await.into_iter().collect());
    assert_eq!(seen.lock().unwrap().len(), 1);
    eventually(
        OBSERVE,
        "a second AppRole login",
        || async {
            let live = bao.approle_token_accessors().await;
            let mut seen = seen.lock().unwrap();
            seen.extend(live);
            seen.clone()
        },
        |seen| seen.len() >= 2,
    )
    .await;
    // Past the first token's max TTL, issuance still works.
    eventually(
        OBSERVE,
        "the first token's max TTL to pass",
        || async { started.elapsed().unwrap() },
        |elapsed| *elapsed > Duration::from_secs(7),
    )
    .await;
    issue(&provider).await.unwrap();
}

#[tokio::test]
async fn a_revoked_app_role_token_is_replaced_on_the_next_request() {
    let bao = dev_with_pki_and_policy().await;
    let (role_id, secret_id) = bao.approle("meshca", json!({"token_ttl": "1h"})).await;
    let provider = VaultProvider::connect(&app_role_settings(&bao, role_id, secret_id))
        .await
        .unwrap();
    let before = bao.approle_token_accessors().await;
    for accessor in &before {
        bao.write(
            "auth/token/revoke-accessor",
            json!({ "accessor": accessor }),
        )
        .await;
    }
    assert!(bao.approle_token_accessors().await.is_empty());
    issue(&provider).await.unwrap();
    let after = bao.approle_token_accessors().await;
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
}

#[tokio::test]
async fn a_revoked_static_token_fails_clearly() {
    let bao = dev_with_pki_and_policy().await;
    let token = bao
        .token(json!({"policies": ["meshca"], "ttl": "1h"}))
        .await;
    let provider = VaultProvider::connect(&bao.settings(&token)).await.unwrap();
    issue(&provider).await.unwrap();
    bao.write("auth/token/revoke", json!({ "token": token }))
        .await;

    let err = issue(&provider).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err:?}");
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains(&format!("vault token rejected by {}", bao.address)),
        "{message}"
    );
    assert!(message.contains("vault.token / VAULT_TOKEN"), "{message}");
    assert!(!message.contains(&token), "the token leaked: {message}");

    let health = provider.check_health().await.unwrap_err();
    assert!(
        matches!(health, ProviderError::Unauthorized { .. }),
        "{health:?}"
    );
}

#[tokio::test]
async fn a_token_file_is_re_read_when_vault_refuses_the_old_token() {
    let bao = dev_with_pki_and_policy().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let first = bao
        .token(json!({"policies": ["meshca"], "ttl": "1h"}))
        .await;
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let settings = VaultSettings {
        token: None,
        token_file: Some(file.clone()),
        ..bao.settings("")
    };
    let provider = VaultProvider::connect(&settings).await.unwrap();
    issue(&provider).await.unwrap();

    // Vault Agent writes a new token and the old one dies.
    let second = bao
        .token(json!({"policies": ["meshca"], "ttl": "1h"}))
        .await;
    std::fs::write(&file, &second).unwrap();
    bao.write("auth/token/revoke", json!({ "token": first }))
        .await;
    issue(&provider).await.unwrap();

    // Revoked with nothing new in the file: a clear failure naming the file.
    bao.write("auth/token/revoke", json!({ "token": second }))
        .await;
    let err = issue(&provider).await.unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("vault.tokenFile"), "{err}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_policy_is_reported_without_logging_in_again() {
    let bao = dev_with_pki_and_policy().await;
    let (role_id, secret_id) = bao.approle("default", json!({"token_ttl": "1h"})).await;
    let provider = VaultProvider::connect(&app_role_settings(&bao, role_id, secret_id))
        .await
        .unwrap();
    for _ in 0..2 {
        let err = issue(&provider).await.unwrap_err();
        assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("policies do not allow pki/sign/meshca"),
            "{err}"
        );
    }
    assert_eq!(
        bao.approle_token_accessors().await.len(),
        1,
        "no new logins"
    );
}

/// Log lines written while the guard of [`capture_logs`] is held, on this thread (the tests'
/// runtime runs the provider's renewal task on it too).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn lines_with(&self, text: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(text))
            .map(str::to_owned)
            .collect()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_token_given_up_on_is_not_renewed_again_and_said_once() {
    let (logs, _guard) = capture_logs();
    let bao = dev_with_pki_and_policy().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let token = bao
        .token(json!({"policies": ["meshca"], "ttl": "3s", "renewable": true}))
        .await;
    std::fs::write(&file, &token).unwrap();
    let settings = VaultSettings {
        token: None,
        token_file: Some(file.clone()),
        ..bao.settings("")
    };
    let provider = VaultProvider::connect(&settings).await.unwrap();
    // Revoked with nothing new in the file: the renewal (at two thirds of 3 s) is refused and
    // the token is given up on.
    bao.write("auth/token/revoke", json!({ "token": token }))
        .await;
    eventually(
        OBSERVE,
        "the renewal task to give up on the revoked token",
        || async { logs.lines_with("stops renewing this token") },
        |lines| !lines.is_empty(),
    )
    .await;
    // The token file is polled every 10 s: two more polls find the same token, which is
    // neither renewed nor reported again.
    tokio::time::sleep(Duration::from_secs(23)).await;
    let errors = logs.lines_with("ERROR");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("waits for a new one in its file or Secret"),
        "{errors:#?}"
    );
    assert!(!errors[0].contains(&token), "the token leaked: {errors:#?}");
    drop(provider);
}
