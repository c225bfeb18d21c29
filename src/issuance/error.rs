//! Why the pipeline did not hand out a certificate: one error for every stage, so each path
//! (the cache, `meshca issue`, managed Secrets, the cron) reports the same thing the same way.

use std::time::Duration;

use meshca_provider::{CsrError, KeyError, ProviderError, format_duration};

use crate::lifetime::LifetimeError;

/// Why an issuance failed. Never carries key material or a caller's CSR bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The requested lifetime is outside the configured bounds (refused before any backend is
    /// asked).
    #[error(transparent)]
    Lifetime(#[from] LifetimeError),
    /// The request names nothing a certificate can be issued for.
    #[error(
        "the request names nothing to certify: a certificate needs a SPIFFE ID or at least one \
         DNS name"
    )]
    NoNames,
    /// A caller's certificate signing request was refused (malformed, unsupported key, or a
    /// signature that does not verify: no proof of possession). No backend saw it.
    #[error("the certificate signing request was refused: {0}")]
    Csr(#[source] CsrError),
    /// The leaf key could not be generated.
    #[error("could not generate a leaf key: {0}")]
    Key(#[source] KeyError),
    /// The provider cannot issue this request (checked against its capabilities before it is
    /// asked), refused it, or failed.
    #[error("{provider} could not issue the certificate: {source}")]
    Provider {
        /// The provider's name.
        provider: &'static str,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// A provider call took longer than the configured timeout.
    #[error(
        "{provider} did not answer within {} while {operation}: check that it is reachable and \
         healthy, or raise renewal.issueTimeout",
        format_duration(*.after)
    )]
    Timeout {
        /// The provider's name.
        provider: &'static str,
        /// What meshca was doing.
        operation: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The provider returned a chain that failed validation; it must not be used.
    #[error("{provider} returned an unusable certificate, which was not served: {reason}")]
    Invalid {
        /// The provider's name.
        provider: &'static str,
        /// What was wrong and what to check.
        reason: String,
    },
    /// The provider's trust bundle could not be read.
    #[error("could not read the trust bundle from {provider}: {source}")]
    TrustBundle {
        /// The provider's name.
        provider: &'static str,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// A bug: a provider panicked, or a key-generation task was lost.
    #[error("internal error while issuing: {reason}; please report this bug")]
    Internal {
        /// What happened.
        reason: String,
    },
}
