//! CA stores beyond the directory one built into `meshca-tresor`: implementations of
//! [`meshca_tresor::CaStore`] that need dependencies the provider crate does not carry, and
//! [`ConfiguredStore`], the store the configuration names.

pub mod kubernetes;

pub use kubernetes::KubernetesSecretStore;

use meshca_tresor::{CaStore, DirectoryStore};

use crate::config::{Config, StoreKind};

/// The CA store named by `tresor.store`.
#[derive(Debug)]
pub enum ConfiguredStore {
    /// `ca.crt` and `private.key` in `tresor.directory`.
    Directory(DirectoryStore),
    /// The Secret `caBundleSecretName` in `namespace`.
    Kubernetes(KubernetesSecretStore),
}

impl ConfiguredStore {
    /// Opens the configured store; for Kubernetes this finds credentials and builds a client
    /// (no request is made yet).
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        Ok(match config.tresor.store {
            StoreKind::Directory => Self::Directory(DirectoryStore::new(&config.tresor.directory)),
            StoreKind::Kubernetes => Self::Kubernetes(Self::secret(config).await?),
        })
    }

    /// The CA bundle Secret `namespace/caBundleSecretName`, whatever `tresor.store` says.
    pub async fn secret(config: &Config) -> anyhow::Result<KubernetesSecretStore> {
        let client = crate::kubernetes::connect().await?;
        Ok(KubernetesSecretStore::with_secret(
            client,
            &config.namespace,
            &config.ca_bundle_secret_name,
        ))
    }

    /// The store as the trait the CA code works with.
    pub fn as_store(&self) -> &dyn CaStore {
        match self {
            Self::Directory(store) => store,
            Self::Kubernetes(store) => store,
        }
    }

    /// The store, shared (the JWT-SVID keys' refresh task holds it).
    pub fn into_shared(self) -> std::sync::Arc<dyn CaStore> {
        match self {
            Self::Directory(store) => std::sync::Arc::new(store),
            Self::Kubernetes(store) => std::sync::Arc::new(store),
        }
    }

    /// Where each part of the CA is, one line each, for `meshca bootstrap`'s report.
    pub fn locations(&self) -> Vec<String> {
        match self {
            Self::Directory(store) => vec![
                format!("CA certificate: {}", store.certificate_path().display()),
                format!(
                    "private key:    {} ({})",
                    store.key_path().display(),
                    file_mode(&store.key_path())
                ),
            ],
            Self::Kubernetes(store) => vec![format!(
                "Secret:         {}/{} (type Opaque, keys {} and {})",
                store.namespace(),
                store.name(),
                KubernetesSecretStore::CERTIFICATE_KEY,
                KubernetesSecretStore::PRIVATE_KEY_KEY
            )],
        }
    }

    /// The command that shows the root with openssl.
    pub fn show_root_command(&self) -> String {
        match self {
            Self::Directory(store) => format!(
                "openssl x509 -text -noout -in {}",
                store.certificate_path().display()
            ),
            Self::Kubernetes(store) => store.show_root_command(),
        }
    }
}

/// `mode 0600` as the file system has it now (not what meshca meant to write).
fn file_mode(path: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::metadata(path) {
        Ok(meta) => format!("mode {:04o}", meta.permissions().mode() & 0o7777),
        Err(e) => format!("mode unknown: {e}"),
    }
}
