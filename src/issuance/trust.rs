//! The trust bundle every issued chain is validated against, and every path serves: the
//! provider's roots followed by `extraTrustedRoots`, each once. Subscribers (the cache, SDS)
//! see each change through a `watch` channel.

use std::sync::Arc;
use std::time::Duration;

use meshca_provider::{CertificateProvider, TrustBundle};
use tokio::sync::watch;

use super::IssueError;

/// The merged bundle and how to re-read it.
#[derive(Debug)]
pub(super) struct Trust {
    bundle: watch::Sender<Arc<TrustBundle>>,
    extra_roots: TrustBundle,
}

impl Trust {
    /// Empty until first read.
    pub(super) fn new(extra_roots: TrustBundle) -> Self {
        Self {
            bundle: watch::Sender::new(Arc::new(TrustBundle::default())),
            extra_roots,
        }
    }

    /// The bundle now.
    pub(super) fn current(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// Reads the provider's bundle (within `after`), adds the extra roots, and publishes the
    /// result; returns whether it changed. Every bundle subscribers see passes through here, so
    /// the extra roots are in all of them, and leaves are validated against the same bundle.
    pub(super) async fn refresh(
        &self,
        provider: &dyn CertificateProvider,
        after: Duration,
    ) -> Result<bool, IssueError> {
        let name = provider.name();
        let mut bundle = read(provider, after).await?;
        for root in self.extra_roots.roots() {
            bundle.push(root.clone());
        }
        let changed = self.bundle.send_if_modified(|current| {
            if **current == bundle {
                return false;
            }
            *current = Arc::new(bundle);
            true
        });
        if changed {
            let roots = self.bundle.borrow().fingerprints();
            tracing::info!(provider = name, ?roots, "trust bundle changed");
        }
        Ok(changed)
    }
}

/// The provider's own bundle, read within `after`.
pub(super) async fn read(
    provider: &dyn CertificateProvider,
    after: Duration,
) -> Result<TrustBundle, IssueError> {
    let name = provider.name();
    tokio::time::timeout(after, provider.trust_bundle())
        .await
        .map_err(|_| IssueError::Timeout {
            provider: name,
            operation: "reading the trust bundle",
            after,
        })?
        .map_err(|source| IssueError::TrustBundle {
            provider: name,
            source,
        })
}
