//! The provider call: the one place in the daemon that asks a backend to issue
//! (`CertificateProvider::issue`), bounded by the configured timeout. A provider that panics
//! (its bug) fails that issuance only, on every path.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt as _;
use meshca_provider::{CertificateChain, CertificateProvider, IssueRequest};

use super::IssueError;

/// Asks `provider` to issue `request`, within `after`.
pub(super) async fn issue(
    provider: &dyn CertificateProvider,
    request: &IssueRequest<'_>,
    after: Duration,
) -> Result<CertificateChain, IssueError> {
    let name = provider.name();
    let call = AssertUnwindSafe(provider.issue(request)).catch_unwind();
    match tokio::time::timeout(after, call).await {
        Ok(Ok(Ok(chain))) => Ok(chain),
        Ok(Ok(Err(source))) => Err(IssueError::Provider {
            provider: name,
            source,
        }),
        Ok(Err(panic)) => Err(IssueError::Internal {
            reason: format!(
                "the {name} provider panicked: {}",
                panic_message(panic.as_ref())
            ),
        }),
        Err(_) => Err(IssueError::Timeout {
            provider: name,
            operation: "issuing a certificate",
            after,
        }),
    }
}

/// A panic's message, if it has one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}
