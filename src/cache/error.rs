//! Why the cache could not hand out a certificate.

use std::sync::Arc;
use std::time::Duration;

use meshca_provider::{KeyError, ProviderError, SpiffeId, format_duration};

use super::CertKey;
use crate::issuance::IssueError;

/// Why the cache could not hand out a certificate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The provider refused or failed to issue.
    #[error("{provider} could not issue a certificate for {identity}: {source}")]
    Provider {
        /// The identity asked for.
        identity: SpiffeId,
        /// The provider's name.
        provider: &'static str,
        /// The provider's error.
        #[source]
        source: Arc<ProviderError>,
    },
    /// The provider returned a chain that failed validation; it was not served.
    #[error(
        "{provider} returned an unusable certificate for {identity}, which was not served: {reason}"
    )]
    Invalid {
        /// The identity asked for.
        identity: SpiffeId,
        /// The provider's name.
        provider: &'static str,
        /// What was wrong and what to check.
        reason: String,
    },
    /// A provider call took longer than the configured timeout.
    #[error(
        "{provider} did not answer within {} while {operation}: check that it is reachable and \
         healthy, or raise the issue timeout",
        format_duration(*.after)
    )]
    Timeout {
        /// The provider's name.
        provider: &'static str,
        /// What meshca was doing.
        operation: String,
        /// The timeout.
        after: Duration,
    },
    /// The provider's trust bundle could not be read.
    #[error("could not read the trust bundle from {provider}: {source}")]
    TrustBundle {
        /// The provider's name.
        provider: &'static str,
        /// The provider's error.
        #[source]
        source: Arc<ProviderError>,
    },
    /// The leaf key could not be generated.
    #[error("could not generate a leaf key for {identity}: {source}")]
    Key {
        /// The identity asked for.
        identity: SpiffeId,
        /// What failed (never key bytes).
        #[source]
        source: Arc<KeyError>,
    },
    /// The request was refused before any backend saw it (request policy).
    #[error("refused to issue for {identity}: {reason}")]
    Refused {
        /// The identity asked for.
        identity: SpiffeId,
        /// What was refused and what to change.
        reason: String,
    },
    /// A setting is out of range.
    #[error("invalid certificate cache setting {field}: {reason}")]
    InvalidSettings {
        /// The setting.
        field: &'static str,
        /// What is wrong and what to use.
        reason: String,
    },
    /// A bug: an issuance task panicked.
    #[error("internal error in the certificate cache: {reason}; please report this bug")]
    Internal {
        /// What happened.
        reason: String,
    },
    /// The cache's worker has stopped (the daemon is shutting down).
    #[error("the certificate cache has shut down; the daemon is stopping")]
    ShuttingDown,
}

impl CacheError {
    /// The cache's error for the pipeline's `error` while issuing for `key`.
    pub(super) fn issuing(key: &CertKey, error: IssueError) -> Self {
        let identity = || key.identity.clone();
        match error {
            IssueError::Provider { provider, source } => CacheError::Provider {
                identity: identity(),
                provider,
                source: Arc::new(source),
            },
            IssueError::Invalid { provider, reason } => CacheError::Invalid {
                identity: identity(),
                provider,
                reason,
            },
            IssueError::Timeout {
                provider,
                operation,
                after,
            } => CacheError::Timeout {
                provider,
                operation: format!("{operation} for {}", key.identity),
                after,
            },
            IssueError::TrustBundle { provider, source } => CacheError::TrustBundle {
                provider,
                source: Arc::new(source),
            },
            IssueError::Key(source) => CacheError::Key {
                identity: identity(),
                source: Arc::new(source),
            },
            IssueError::Internal { reason } => CacheError::Internal {
                reason: format!("issuing for {key} failed unexpectedly: {reason}"),
            },
            other => CacheError::Refused {
                identity: identity(),
                reason: other.to_string(),
            },
        }
    }

    /// The cache's error for the pipeline's `error` while reading the trust bundle.
    pub(super) fn trust(error: IssueError) -> Self {
        match error {
            IssueError::Timeout {
                provider,
                operation,
                after,
            } => CacheError::Timeout {
                provider,
                operation: operation.to_owned(),
                after,
            },
            IssueError::TrustBundle { provider, source } => CacheError::TrustBundle {
                provider,
                source: Arc::new(source),
            },
            other => CacheError::Internal {
                reason: other.to_string(),
            },
        }
    }
}
