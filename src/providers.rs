//! Turns the configuration into the one [`SharedProvider`] the daemon uses: the only place
//! that knows every backend.

use std::sync::Arc;

use anyhow::Context as _;
use meshca_provider::{Clock, SharedProvider};
use meshca_tresor::{RootOptions, Signing, Tresor};

use crate::config::{Config, ProviderKind};
use crate::stores::ConfiguredStore;

/// The built-in CA and the store it came from, kept by the daemon to follow root rotations.
#[derive(Debug)]
pub struct TresorHandle {
    /// The provider, whose signing authority and trust bundle a rotation switches.
    pub tresor: Arc<Tresor>,
    /// Where the CA and the rotation record live.
    pub store: Arc<ConfiguredStore>,
}

/// What the daemon keeps of its backend besides the provider, to follow root rotations.
#[derive(Debug)]
pub enum BackendHandle {
    /// The built-in CA and its store.
    Tresor(TresorHandle),
    /// The Vault provider, whose signing issuer follows the PKI mount's default issuer.
    Vault(Arc<meshca_vault::VaultProvider>),
}

/// Builds the configured provider. For Tresor this loads the CA from its store, creating a
/// root when the store is empty, and follows the stage of a root rotation in progress.
pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<SharedProvider> {
    Ok(build_with_handle(config, clock).await?.0)
}

/// [`build`], also returning the handle the daemon follows root rotations with (Tresor, Vault).
pub async fn build_with_handle(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(SharedProvider, Option<BackendHandle>)> {
    match config.certificate_provider.kind {
        ProviderKind::Tresor => {
            let store = ConfiguredStore::open(config).await?;
            let signing = tresor_authority(&store, config, clock.as_ref()).await?;
            let authority = &signing.authority;
            tracing::info!(
                store = %store.as_store().describe(),
                subject = authority.subject(),
                fingerprint = %authority.trust_bundle().fingerprints().join(","),
                trusted = %signing.bundle.fingerprints().join(","),
                "tresor: {}",
                signing.outcome
            );
            if let Some(rotation) = &signing.rotation {
                tracing::info!(
                    stage = rotation.stage.number(),
                    "tresor: root rotation at {}",
                    rotation.stage
                );
            }
            let tresor = Arc::new(
                Tresor::new(signing.authority, clock)
                    .with_clock_skew(config.tresor.clock_skew_allowance)
                    .with_trust_bundle(signing.bundle),
            );
            let provider: SharedProvider = tresor.clone();
            Ok((
                provider,
                Some(BackendHandle::Tresor(TresorHandle {
                    tresor,
                    store: Arc::new(store),
                })),
            ))
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
            if config.vault.mode == meshca_vault::VaultMode::Upstream {
                let upstream = meshca_vault::VaultUpstream::connect(
                    &config.vault,
                    token_source,
                    config.upstream_policy(),
                    clock,
                )
                .await?;
                return Ok((Arc::new(upstream), None));
            }
            let vault =
                meshca_vault::VaultProvider::connect_with(&config.vault, token_source).await?;
            tracing::info!(address = %vault.address(), "vault: connected and token checked");
            let vault = Arc::new(vault);
            Ok((vault.clone(), Some(BackendHandle::Vault(vault))))
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
            Ok((Arc::new(provider), None))
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

/// Loads Tresor's CA from `store`, creating a root when the store is empty; during a root
/// rotation, the root its stage says signs, and both roots trusted.
pub async fn tresor_authority(
    store: &ConfiguredStore,
    config: &Config,
    clock: &dyn Clock,
) -> anyhow::Result<Signing> {
    let store = store.as_store();
    let starting = || format!("cannot start the Tresor CA from {}", store.describe());
    let signing = meshca_tresor::bootstrap_signing(store, &root_options(config), clock)
        .await
        .with_context(starting)?;
    // An intermediate made for another cluster's trust domain is refused, not used to sign
    // identities in this one.
    signing
        .authority
        .check_trust_domain(&config.trust_domain())
        .map_err(|problem| {
            anyhow::anyhow!(
                "refusing to use the CA in {}: {problem}. Nothing was changed",
                store.describe()
            )
        })
        .with_context(starting)?;
    Ok(signing)
}
