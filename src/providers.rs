//! Turns the configuration into the one [`SharedProvider`] the daemon uses: the only place
//! that knows every backend.

use std::sync::Arc;

use anyhow::Context as _;
use meshca_provider::{Clock, SharedProvider};
use meshca_tresor::{Outcome, RootOptions, SigningAuthority, Tresor};

use crate::config::{Config, ProviderKind};
use crate::stores::ConfiguredStore;

/// Builds the configured provider. For Tresor this loads the CA from its store, creating a
/// root when the store is empty.
pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<SharedProvider> {
    match config.certificate_provider.kind {
        ProviderKind::Tresor => {
            let store = ConfiguredStore::open(config).await?;
            let (authority, outcome) = tresor_authority(&store, config, clock.as_ref()).await?;
            tracing::info!(
                store = %store.as_store().describe(),
                subject = authority.subject(),
                fingerprint = %authority.trust_bundle().fingerprints().join(","),
                "tresor: {outcome}"
            );
            let tresor =
                Tresor::new(authority, clock).with_clock_skew(config.tresor.clock_skew_allowance);
            Ok(Arc::new(tresor))
        }
        ProviderKind::Vault => {
            let token_source = match &config.vault.secret {
                Some(secret) if secret.is_set() => {
                    let namespace = Some(secret.namespace.as_str())
                        .filter(|n| !n.is_empty())
                        .unwrap_or(&config.namespace);
                    let source: Arc<dyn meshca_vault::TokenSource> =
                        Arc::new(crate::kubernetes::SecretTokenSource::new(
                            crate::kubernetes::connect().await?,
                            namespace,
                            &secret.name,
                            &secret.key,
                        ));
                    Some(source)
                }
                _ => None,
            };
            let vault =
                meshca_vault::VaultProvider::connect_with(&config.vault, token_source).await?;
            tracing::info!(address = %vault.address(), "vault: connected and token checked");
            Ok(Arc::new(vault))
        }
        ProviderKind::CertManager => {
            let settings = &config.cert_manager;
            let provider = meshca_cert_manager::CertManagerProvider::connect(settings)
                .await
                .context("cannot start the cert-manager provider")?;
            tracing::info!(
                issuer = %settings.issuer(),
                namespace = %settings.namespace,
                "cert-manager: CA bundle read, stale requests swept"
            );
            Ok(Arc::new(provider))
        }
    }
}

/// The root options from `tresor.*`.
pub fn root_options(config: &Config) -> RootOptions {
    let mut options = RootOptions::default();
    options.common_name = config.tresor.root_common_name.clone();
    options.organization = Some(config.tresor.root_organization.clone()).filter(|o| !o.is_empty());
    options.lifetime = config.tresor.root_validity_duration;
    options.key_type = config.tresor.root_key_type;
    options
}

/// Loads Tresor's CA from `store`, creating a root when the store is empty.
pub async fn tresor_authority(
    store: &ConfiguredStore,
    config: &Config,
    clock: &dyn Clock,
) -> anyhow::Result<(SigningAuthority, Outcome)> {
    let store = store.as_store();
    meshca_tresor::bootstrap(store, &root_options(config), clock)
        .await
        .with_context(|| format!("cannot start the Tresor CA from {}", store.describe()))
}
