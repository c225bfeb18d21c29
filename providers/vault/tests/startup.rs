//! What `VaultProvider::connect` says when something is wrong: each message names Vault's
//! address and the setting or Vault object to fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshca_test_support::bao as support;

use meshca_provider::{
    CertificateProvider, IssueRequest, KeyType, LeafKey, LeafSpec, ProviderError,
};
use meshca_vault::{AppRoleSettings, Secret, VaultError, VaultProvider, VaultSettings};
use serde_json::json;
use support::Bao;

async fn connect_err(settings: &VaultSettings) -> VaultError {
    VaultProvider::connect(settings)
        .await
        .expect_err("connect should fail")
}

#[tokio::test]
async fn a_bad_token_names_the_address_and_the_setting() {
    let bao = Bao::dev().await;
    bao.pki("pki", "root").await;
    let err = connect_err(&bao.settings("not-a-token")).await;
    assert!(matches!(err, VaultError::TokenRejected { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("vault token rejected by {} (403", bao.address)),
        "{message}"
    );
    assert!(message.contains("vault.token / VAULT_TOKEN"), "{message}");
    assert!(
        !message.contains("not-a-token"),
        "the token leaked: {message}"
    );
}

#[tokio::test]
async fn an_unreachable_address_suggests_the_address_settings() {
    let port = support::free_port();
    let settings = VaultSettings {
        host: "127.0.0.1".into(),
        port,
        token: Some(Secret::new("x")),
        ..VaultSettings::default()
    };
    let err = connect_err(&settings).await;
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains(&format!("http://127.0.0.1:{port}")),
        "{message}"
    );
    assert!(
        message.contains("vault.host, vault.port and vault.protocol"),
        "{message}"
    );
    assert!(message.to_lowercase().contains("refused"), "{message}");
}

#[tokio::test]
async fn https_to_a_plain_http_vault_is_reported_as_unreachable() {
    let bao = Bao::dev().await;
    let settings = VaultSettings {
        address: Some(format!("https://127.0.0.1:{}", bao.port)),
        host: String::new(),
        ..bao.settings(&bao.root_token)
    };
    let err = connect_err(&settings).await;
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("vault.protocol"), "{err}");
}

#[tokio::test]
async fn a_missing_role_mount_or_ca_is_named() {
    let bao = Bao::dev().await;
    bao.pki("pki", "root").await;

    let err = connect_err(&VaultSettings {
        role: "nope".into(),
        ..bao.settings(&bao.root_token)
    })
    .await;
    assert!(matches!(err, VaultError::RoleNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("pki/roles/nope"), "{err}");
    assert!(err.to_string().contains("vault.role"), "{err}");

    let err = connect_err(&VaultSettings {
        pki_path: "elsewhere".into(),
        ..bao.settings(&bao.root_token)
    })
    .await;
    assert!(matches!(err, VaultError::NoPkiEngine { .. }), "{err:?}");
    assert!(err.to_string().contains("vault.pkiPath"), "{err}");

    bao.write("sys/mounts/empty", json!({"type": "pki"})).await;
    bao.role("empty", "meshca", json!({})).await;
    let err = connect_err(&VaultSettings {
        pki_path: "empty".into(),
        ..bao.settings(&bao.root_token)
    })
    .await;
    assert!(matches!(err, VaultError::NoCa { .. }), "{err:?}");
}

#[tokio::test]
async fn a_refused_app_role_login_names_the_app_role_settings() {
    let bao = Bao::dev().await;
    bao.pki("pki", "root").await;
    bao.meshca_policy("meshca", "pki").await;
    let (role_id, _) = bao.approle("meshca", json!({})).await;
    let settings = VaultSettings {
        token: None,
        app_role: Some(AppRoleSettings {
            role_id,
            secret_id: Some(Secret::new("wrong-secret-id")),
            ..AppRoleSettings::default()
        }),
        ..bao.settings("")
    };
    let err = connect_err(&settings).await;
    assert!(matches!(err, VaultError::LoginRejected { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&bao.address), "{message}");
    assert!(message.contains("auth/approle/login"), "{message}");
    assert!(message.contains("vault.appRole"), "{message}");
    assert!(!message.contains("wrong-secret-id"), "{message}");
}

#[tokio::test]
async fn a_token_without_pki_policy_is_refused_with_the_path_to_grant() {
    let bao = Bao::dev().await;
    bao.pki("pki", "root").await;
    // The default policy only: may look itself up, may not sign.
    let token = bao
        .token(json!({"policies": ["default"], "ttl": "1h"}))
        .await;
    let provider = VaultProvider::connect(&bao.settings(&token)).await.unwrap();
    assert_eq!(
        provider.capabilities().max_lifetime,
        None,
        "role unreadable: cap unknown"
    );
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let spec = LeafSpec::server(
        vec!["hook.svc".parse().unwrap()],
        std::time::Duration::from_secs(600),
    );
    let err = provider
        .issue(&IssueRequest::generated(&spec, &key))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unauthorized { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("policies do not allow pki/sign/meshca"),
        "{err}"
    );
}

#[tokio::test]
async fn https_with_vault_ca_file_works_and_without_it_is_refused() {
    let bao = Bao::dev_tls().await;
    bao.pki("pki", "root").await;
    let settings = bao.settings(&bao.root_token);
    assert!(settings.ca_file.is_some());
    let provider = VaultProvider::connect(&settings).await.unwrap();
    assert!(provider.address().starts_with("https://"));
    let key = LeafKey::generate(KeyType::P256).unwrap();
    let spec = LeafSpec::server(
        vec!["hook.svc".parse().unwrap()],
        std::time::Duration::from_secs(600),
    );
    provider
        .issue(&IssueRequest::generated(&spec, &key))
        .await
        .unwrap();

    // The system trust store does not know OpenBao's dev CA.
    let err = connect_err(&VaultSettings {
        ca_file: None,
        ..settings.clone()
    })
    .await;
    assert!(matches!(err, VaultError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("vault.caFile"), "{err}");

    let err = connect_err(&VaultSettings {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..settings
    })
    .await;
    assert!(matches!(err, VaultError::CaFile { .. }), "{err:?}");
}
