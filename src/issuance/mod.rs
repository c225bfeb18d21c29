//! The issuance pipeline: the one path from "what to issue, for which key" to "a validated
//! chain", taken by every way a certificate is asked for — the cache (SDS), `meshca issue`,
//! managed TLS Secrets and the `meshca rotate` cron.
//!
//! The entry point is [`Pipeline::issue`]. Each concern is a stage in its own file, run in this
//! order around the `dyn CertificateProvider`:
//! 1. **request policy** (`policy.rs`): the request names something, its lifetime lies inside
//!    the configured bounds, and is capped at what the backend grants;
//! 2. **the key** (`key.rs`): made by meshca (RSA on a blocking thread), or a caller's, taken
//!    from a PKCS#10 request whose signature verified — before any backend sees it;
//! 3. **capabilities** (`policy.rs`): the request with its key against what the backend
//!    declares ([`Capabilities::check`](meshca_provider::Capabilities::check)), once;
//! 4. **the provider call** (`call.rs`): the only call of `CertificateProvider::issue` in the
//!    daemon, within the configured timeout;
//! 5. **validation** (`validate.rs`): the chain leads to a root of the trust bundle
//!    (`trust.rs`: the provider's roots plus `extraTrustedRoots`, re-read once when a chain
//!    does not verify), and the leaf carries exactly the requested names and public key, is
//!    valid now, is no CA, and allows both serverAuth and clientAuth;
//! 6. **metrics** (`metrics.rs`): how long each issuance took, by result, and the failures and
//!    rejections, around all of the above.
//!
//! A stage that refuses ends the issuance: nothing after it runs, in particular no backend is
//! asked for a request the policy, a CSR check or the capabilities refused.

mod call;
mod error;
mod key;
mod metrics;
mod policy;
mod trust;
pub(crate) mod validate;

use std::sync::Arc;
use std::time::Duration;

use meshca_provider::{
    CertificateChain, CertificateInfo, Clock, LeafKey, LeafSpec, SharedProvider, TrustBundle,
};
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) use call::panic_message;
pub use error::IssueError;
pub use key::KeySource;
pub use metrics::{IssuanceMetrics, IssueResult, LatencyHistogram};
pub use policy::RequestPolicy;

/// How long one provider call may take by default (`renewal.issueTimeout`).
pub const DEFAULT_ISSUE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the pipeline is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSettings {
    /// How long one provider call (issue or trust bundle) may take.
    pub issue_timeout: Duration,
    /// Roots trusted besides the provider's (`extraTrustedRoots`): merged into every bundle,
    /// after the provider's own roots.
    pub extra_roots: TrustBundle,
    /// Names and lifetime bounds.
    pub policy: RequestPolicy,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            issue_timeout: DEFAULT_ISSUE_TIMEOUT,
            extra_roots: TrustBundle::default(),
            policy: RequestPolicy::default(),
        }
    }
}

/// A certificate issued and validated.
#[derive(Debug)]
pub struct Issued {
    /// Leaf first, then intermediates; no root.
    pub chain: CertificateChain,
    /// The parsed leaf.
    pub info: CertificateInfo,
    /// The provider that issued it (`tresor`, `vault`, …).
    pub issued_by: &'static str,
    /// The leaf's private key when meshca made it ([`KeySource::Generate`]); `None` for a
    /// caller's key, whose private half meshca never holds.
    pub key: Option<LeafKey>,
}

/// The issuance pipeline around one provider; see the module docs. Shared by reference (or
/// in an `Arc`) by everything that issues.
#[derive(Debug)]
pub struct Pipeline {
    provider: SharedProvider,
    settings: PipelineSettings,
    clock: Arc<dyn Clock>,
    trust: trust::Trust,
    metrics: IssuanceMetrics,
}

impl Pipeline {
    /// A pipeline around `provider`. Its trust bundle is empty until first read
    /// ([`refresh_trust`](Self::refresh_trust), or on the first chain that needs it).
    pub fn new(
        provider: SharedProvider,
        settings: PipelineSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let trust = trust::Trust::new(settings.extra_roots.clone());
        Self {
            provider,
            settings,
            clock,
            trust,
            metrics: IssuanceMetrics::default(),
        }
    }

    /// Issues a certificate for `spec` and the key `key` names, through every stage (see the
    /// module docs); its duration and result are recorded in [`metrics`](Self::metrics).
    pub async fn issue(&self, spec: LeafSpec, key: KeySource<'_>) -> Result<Issued, IssueError> {
        self.issue_within(spec, key, self.settings.issue_timeout)
            .await
    }

    /// [`issue`](Self::issue) with the provider call and the chain's validation each bounded by
    /// `timeout` instead of the configured `issue_timeout` (the cache shortens it to fit the
    /// renewal window of the certificate being replaced).
    pub async fn issue_within(
        &self,
        spec: LeafSpec,
        key: KeySource<'_>,
        timeout: Duration,
    ) -> Result<Issued, IssueError> {
        // tokio's clock, so tests under a paused clock see the time they let pass.
        let started = Instant::now();
        let outcome = self.issue_unmeasured(spec, key, timeout).await;
        self.metrics
            .record(IssueResult::of(&outcome), started.elapsed());
        outcome
    }

    async fn issue_unmeasured(
        &self,
        mut spec: LeafSpec,
        key: KeySource<'_>,
        timeout: Duration,
    ) -> Result<Issued, IssueError> {
        let provider = self.provider.as_ref();
        let capabilities = provider.capabilities();
        self.settings.policy.apply(&mut spec, capabilities)?;
        // Refused before an RSA key (up to a second of work) is made for nothing.
        if let KeySource::Generate(key_type) = key {
            capabilities
                .check_key_type(key_type)
                .map_err(|source| IssueError::Provider {
                    provider: provider.name(),
                    source,
                })?;
        }
        let key = key::SubjectKey::resolve(key).await?;
        let request = key.request(&spec);
        policy::check_capabilities(provider.name(), capabilities, &request)?;
        let chain = call::issue(provider, &request, timeout).await?;
        let info = validate::validate_issued(
            &chain,
            &request,
            provider,
            &self.trust,
            self.clock.as_ref(),
            timeout,
        )
        .await?;
        Ok(Issued {
            chain,
            info,
            issued_by: provider.name(),
            key: key.into_generated(),
        })
    }

    /// Re-reads the provider's trust bundle (within the issue timeout), adds the extra roots,
    /// and publishes it if it changed; returns whether it did.
    pub async fn refresh_trust(&self) -> Result<bool, IssueError> {
        self.trust
            .refresh(self.provider.as_ref(), self.settings.issue_timeout)
            .await
    }

    /// The provider's own roots, without the extra roots, read now within the issue timeout:
    /// what the rotation cron checks that a Secret's certificate was issued under.
    pub async fn provider_trust_bundle(&self) -> Result<TrustBundle, IssueError> {
        trust::read(self.provider.as_ref(), self.settings.issue_timeout).await
    }

    /// The trust bundle now: the provider's roots, then the extra roots.
    pub fn current_trust_bundle(&self) -> Arc<TrustBundle> {
        self.trust.current()
    }

    /// The trust bundle; the receiver sees every change.
    pub fn trust_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.trust.subscribe()
    }

    /// The provider behind the pipeline (its name, health, capabilities).
    pub fn provider(&self) -> &SharedProvider {
        &self.provider
    }

    /// The settings the pipeline was built with.
    pub fn settings(&self) -> &PipelineSettings {
        &self.settings
    }

    /// Latency, failures and rejections since start.
    pub fn metrics(&self) -> &IssuanceMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests;
