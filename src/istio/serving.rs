//! The Istio CA listener's own certificate: a server certificate for `istio.dnsNames` with a
//! key meshca makes, issued through the pipeline like every other certificate, renewed in the
//! background on the cache's schedule (`renewal.*`: a fraction of the real lifetime with
//! jitter, failures retried with backoff while the current one stays in service), and
//! published on a watch channel the TLS configuration follows.

use std::sync::Arc;
use std::time::Duration;

use meshca_provider::{Clock, DnsName, LeafSpec};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ServingSettings;
use crate::cache::{ServedCertificate, renew_in, retry_in};
use crate::issuance::{IssueError, KeySource, Pipeline};

/// Issues and renews the listener's certificate.
pub(super) struct ServingCertificate {
    pipeline: Arc<Pipeline>,
    dns_names: Vec<DnsName>,
    settings: ServingSettings,
    clock: Arc<dyn Clock>,
}

impl ServingCertificate {
    /// Issues the first certificate (an error when it cannot: the listener does not start
    /// without one) and renews it until `stop` is cancelled.
    pub(super) async fn issue(
        pipeline: Arc<Pipeline>,
        dns_names: Vec<DnsName>,
        settings: ServingSettings,
        clock: Arc<dyn Clock>,
        stop: CancellationToken,
    ) -> Result<watch::Receiver<Arc<ServedCertificate>>, IssueError> {
        let serving = Self {
            pipeline,
            dns_names,
            settings,
            clock,
        };
        let first = serving.issue_one().await?;
        info!(
            serial = %first.info.serial_hex(),
            not_after = %crate::istio::service::rfc3339(first.info.not_after),
            "Istio CA listener certificate issued"
        );
        let (tx, rx) = watch::channel(Arc::new(first));
        tokio::spawn(serving.renew(tx, stop));
        Ok(rx)
    }

    async fn issue_one(&self) -> Result<ServedCertificate, IssueError> {
        let spec = LeafSpec::server(self.dns_names.clone(), self.settings.lifetime);
        let issued = self
            .pipeline
            .issue(spec, KeySource::Generate(self.settings.key_type))
            .await?;
        let key = issued.key.ok_or_else(|| IssueError::Internal {
            reason: "the pipeline returned no key for a key it generated".to_owned(),
        })?;
        Ok(ServedCertificate {
            chain: issued.chain,
            key,
            info: issued.info.into_summary(),
            issued_by: issued.issued_by,
        })
    }

    /// Renews before expiry until `stop`; a failure keeps the current certificate and retries.
    async fn renew(self, tx: watch::Sender<Arc<ServedCertificate>>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let current = tx.borrow().clone();
            let now = self.clock.now();
            let wait = if failures == 0 {
                renew_in(
                    now,
                    current.info.not_before,
                    current.info.not_after,
                    &self.settings.renew,
                    rand::random_range(-1.0..=1.0),
                )
            } else {
                retry_in(
                    now,
                    failures,
                    &self.settings.backoff,
                    rand::random_range(0.0..=1.0),
                    Some(current.info.not_after),
                )
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait.max(MIN_WAIT)) => {}
            }
            match self.issue_one().await {
                Ok(renewed) => {
                    failures = 0;
                    info!(
                        serial = %renewed.info.serial_hex(),
                        not_after = %crate::istio::service::rfc3339(renewed.info.not_after),
                        "Istio CA listener certificate renewed"
                    );
                    tx.send_replace(Arc::new(renewed));
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    warn!(
                        %error,
                        failures,
                        not_after = %crate::istio::service::rfc3339(current.info.not_after),
                        "cannot renew the Istio CA listener certificate; the current one stays \
                         in service and the renewal is retried"
                    );
                }
            }
        }
    }
}

/// Never renew in a tighter loop than this, whatever a clock says or a lifetime shorter than
/// the clock-skew allowance (a certificate due for renewal as soon as it is issued) makes of
/// the schedule.
const MIN_WAIT: Duration = Duration::from_secs(1);
