//! The seam between the SDS server and whatever holds certificates (the cache).
//!
//! The SDS server never issues anything itself: it asks a [`SecretSource`] for a `watch`
//! receiver per (identity, purpose) and pushes whatever the receiver holds, now and after every
//! renewal. The cache implements this trait; tests implement it over an in-memory CA.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use meshca_provider::{SpiffeId, TrustBundle};

use crate::cache::{CacheError, CertKey, CertificateCache};
use tokio::sync::watch;

pub use crate::cache::{Purpose, ServedCertificate};

/// Why a source could not produce a certificate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Issuing failed for now (the CA is unreachable, a renewal is backing off); the proxy
    /// should retry.
    #[error("no certificate for {identity} yet: {reason}")]
    Unavailable {
        /// The identity asked for.
        identity: String,
        /// What went wrong, without key material.
        reason: String,
    },
    /// The source will never issue this certificate (the provider refuses the identity or the
    /// key type); retrying does not help.
    #[error("a certificate for {identity} cannot be issued: {reason}")]
    Refused {
        /// The identity asked for.
        identity: String,
        /// Why, without key material.
        reason: String,
    },
    /// The source is shutting down.
    #[error("the certificate source is shutting down")]
    Closed,
}

/// Where the SDS server gets certificates and trust bundles.
///
/// Obligations of an implementation:
/// - [`certificate`](Self::certificate) returns a receiver that already holds a valid certificate
///   for exactly `identity` (issuing it first if needed); concurrent calls for one key MUST
///   share one issuance. Every renewal of that key MUST be sent on the same channel, so that
///   every SDS stream holding it is pushed the new certificate.
/// - A certificate published on a receiver MUST already have been validated (chains to the
///   trust bundle, right SANs, not expired): the SDS server serves it as is while it is valid
///   by [`now`](Self::now), and leaves it out of every response once it has expired.
/// - [`trust_bundle`](Self::trust_bundle) returns a receiver holding the roots proxies should
///   trust; during a root rotation it carries old and new roots.
/// - Dropping a receiver signals nothing: an implementation decides by itself when keys nobody
///   watches can be dropped (e.g. `watch::Sender::receiver_count`).
#[async_trait]
pub trait SecretSource: Send + Sync + 'static {
    /// The current certificate for (identity, purpose), issuing on first use; updates
    /// (renewals) arrive on the receiver.
    async fn certificate(
        &self,
        identity: &SpiffeId,
        purpose: Purpose,
    ) -> Result<watch::Receiver<Arc<ServedCertificate>>, SourceError>;

    /// The trust bundle; root rotations arrive on the receiver.
    fn trust_bundle(&self) -> watch::Receiver<Arc<TrustBundle>>;

    /// The time against which certificates' NotAfter is checked before they are sent: a
    /// certificate on a receiver may expire while its renewals fail, and the SDS server never
    /// sends an expired one. The system clock unless the source keeps its own.
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[async_trait]
impl SecretSource for CertificateCache {
    async fn certificate(
        &self,
        identity: &SpiffeId,
        purpose: Purpose,
    ) -> Result<watch::Receiver<Arc<ServedCertificate>>, SourceError> {
        self.subscribe(CertKey::new(identity.clone(), purpose))
            .await
            .map_err(|error| source_error(identity, &error))
    }

    fn trust_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        CertificateCache::trust_bundle(self)
    }

    fn now(&self) -> SystemTime {
        CertificateCache::now(self)
    }
}

/// Whether a proxy should retry: only a definite refusal (the provider's, or the pipeline's
/// request policy) is final.
fn source_error(identity: &SpiffeId, error: &CacheError) -> SourceError {
    let identity = identity.to_string();
    let reason = error.to_string();
    match error {
        CacheError::ShuttingDown => SourceError::Closed,
        CacheError::Provider { source, .. } if !source.is_transient() => {
            SourceError::Refused { identity, reason }
        }
        // The pipeline's request policy refused it: the same request is refused again.
        CacheError::Refused { .. } => SourceError::Refused { identity, reason },
        _ => SourceError::Unavailable { identity, reason },
    }
}
