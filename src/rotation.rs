//! The daemon's side of a root rotation: [`RotationFollower`] watches the CA store, applies
//! each stage to the running Tresor (which root signs, which roots are trusted), pushes the
//! result over SDS, and reports what the connected proxies acknowledged so that
//! `meshca rotate root advance` — run by hand or by the CronJob, anywhere — can decide.
//!
//! When the daemon publishes the trust bundle into the cluster (the ConfigMap in every
//! namespace, `crate::kubernetes::trust_distribution`), its report also says which namespaces'
//! ConfigMaps hold the new root, and `advance` waits for those too: workloads that read the
//! bundle from a ConfigMap must trust the new root before any leaf it signs is issued.

use std::sync::Arc;
use std::time::Duration;

use meshca_provider::{Clock, SpiffeId};
use meshca_tresor::{AckReport, DistributionReport, Rotation, Stage, Tresor, unix};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::cache::CertificateCache;
use crate::kubernetes::trust_distribution::DistributionStatus;
use crate::sds::BundleAcks;
use crate::stores::ConfiguredStore;

/// Follows the rotation stage stored with the CA.
#[derive(Debug)]
pub struct RotationFollower {
    /// Where the CA and the rotation record live.
    pub store: Arc<ConfiguredStore>,
    /// The running CA.
    pub tresor: Arc<Tresor>,
    /// The certificates served, re-issued when the signing root changes.
    pub cache: Arc<CertificateCache>,
    /// What each connected proxy acknowledged.
    pub acks: Arc<BundleAcks>,
    /// What every namespace's trust bundle ConfigMap holds, when the daemon publishes them.
    pub distribution: Option<watch::Receiver<DistributionStatus>>,
    /// This daemon's name in its reports.
    pub replica: String,
    /// How often the store is read.
    pub poll_interval: Duration,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// What the follower last applied.
#[derive(Debug, Default)]
struct Applied {
    stage: Option<Stage>,
    /// The new root's fingerprint while a rotation is in progress.
    new_root: Option<String>,
}

impl RotationFollower {
    /// Runs until the task is dropped. Store errors are logged and retried at the next poll:
    /// the daemon keeps serving with what it has.
    pub async fn run(self) {
        let mut applied = Applied::default();
        let mut reporter = AckReporter::new(
            self.store.clone(),
            self.acks.clone(),
            self.distribution.clone(),
            self.replica.clone(),
            self.poll_interval,
            self.clock.clone(),
        );
        let mut acks = self.acks.changes();
        let mut distribution = self.distribution.clone();
        let mut failing = false;
        loop {
            match self.poll(&mut applied, &mut reporter).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("root rotation: the CA store is readable again");
                    }
                    failing = false;
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(
                        error = %format!("{error:#}"),
                        "root rotation: cannot read the CA store; serving with the current CA \
                         and retrying"
                    );
                }
                Err(error) => tracing::debug!(error = %format!("{error:#}"), "still failing"),
            }
            let waiting_for_acks = applied.stage == Some(Stage::Trusting);
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                // During stage 1, an acknowledgement is reported promptly (after a short pause
                // that gathers the others arriving with it).
                Ok(()) = acks.changed(), if waiting_for_acks => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    acks.borrow_and_update();
                }
                // Likewise when a namespace's ConfigMap changes.
                Ok(()) = changed(&mut distribution), if waiting_for_acks => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Some(distribution) = &mut distribution {
                        distribution.borrow_and_update();
                    }
                }
            }
        }
    }

    /// Reads the store once; applies a change; reports acknowledgements during stage 1.
    async fn poll(&self, applied: &mut Applied, reporter: &mut AckReporter) -> anyhow::Result<()> {
        let store = self.store.as_store();
        let rotation = store.load_rotation().await?;
        let now = self.clock.now();
        let (stage, new_root) = match &rotation {
            Some(r) => (Some(r.stage), Some(r.new_root_fingerprint(now)?)),
            None => (None, None),
        };
        if (stage, &new_root) != (applied.stage, &applied.new_root) {
            self.apply(rotation.as_ref()).await?;
            applied.stage = stage;
            applied.new_root = new_root.clone();
            reporter.forget();
        }
        if let (Some(Stage::Trusting), Some(root)) = (stage, new_root)
            && let Some(certificate) = self.tresor_root(&root)
        {
            reporter.report(root, &certificate).await?;
        }
        Ok(())
    }

    /// Switches the running CA to what `rotation` (or, with none, the stored CA) says, pushes
    /// the trust bundle, and re-issues every cached certificate if the signing root changed.
    async fn apply(&self, rotation: Option<&Rotation>) -> anyhow::Result<()> {
        let store = self.store.as_store();
        let now = self.clock.now();
        let (authority, bundle) = match rotation {
            Some(rotation) => {
                let authorities = rotation.authorities(now)?;
                let bundle = Rotation::trust_bundle(&authorities);
                (authorities.issuing(rotation.stage), bundle)
            }
            None => {
                let Some(stored) = store.load().await? else {
                    anyhow::bail!("{} no longer holds a CA", store.describe());
                };
                let authority = stored.authority(now)?;
                let bundle = authority.trust_bundle().clone();
                (authority, bundle)
            }
        };
        let current = self.tresor.authority();
        let signer_changed = current.certificate() != authority.certificate();
        if !signer_changed && self.tresor.trusted_bundle() == bundle {
            return Ok(());
        }
        let fingerprints = bundle.fingerprints().join(",");
        let subject = authority.subject().to_owned();
        self.tresor.switch(authority, bundle);
        // Trust first, then the new leaves: a proxy must never receive a leaf its peers'
        // bundles do not yet hold.
        self.cache.refresh_trust_bundle().await?;
        match rotation {
            Some(rotation) => tracing::info!(
                stage = rotation.stage.number(),
                signing = %subject,
                trusted = %fingerprints,
                "root rotation: now at {}",
                rotation.stage
            ),
            None => tracing::info!(
                signing = %subject,
                trusted = %fingerprints,
                "root rotation: no rotation in progress; trusting the stored CA only"
            ),
        }
        if signer_changed {
            let cached = self.cache.certificates().len();
            self.cache.renew_now(None);
            tracing::info!(
                certificates = cached,
                "root rotation: re-issuing every cached certificate under {subject}"
            );
        }
        Ok(())
    }

    /// The new root's certificate, found in the running trust bundle by fingerprint.
    fn tresor_root(&self, fingerprint: &str) -> Option<CertificateDer<'static>> {
        let bundle = self.tresor.trusted_bundle();
        bundle
            .roots()
            .iter()
            .zip(bundle.fingerprints())
            .find(|(_, f)| f == fingerprint)
            .map(|(root, _)| root.clone())
    }
}

/// Writes this daemon's [`AckReport`]s to the CA store: how many of its connected proxies
/// acknowledged a trust bundle holding a new root (and, when it publishes the bundle into the
/// cluster, which namespaces' ConfigMaps hold it). Tresor's stage 1 and a change of Vault's
/// issuer (`crate::vault_rotation`) report the same way, so that whoever gates the next step
/// reads every replica's report.
#[derive(Debug)]
pub struct AckReporter {
    store: Arc<ConfiguredStore>,
    acks: Arc<BundleAcks>,
    distribution: Option<watch::Receiver<DistributionStatus>>,
    replica: String,
    poll_interval: Duration,
    clock: Arc<dyn Clock>,
    /// The last report written, to skip writing an identical one before it needs refreshing.
    last: Option<AckReport>,
}

impl AckReporter {
    /// A reporter that writes as `replica` to `store`, at least every `poll_interval`.
    pub fn new(
        store: Arc<ConfiguredStore>,
        acks: Arc<BundleAcks>,
        distribution: Option<watch::Receiver<DistributionStatus>>,
        replica: String,
        poll_interval: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            acks,
            distribution,
            replica,
            poll_interval,
            clock,
            last: None,
        }
    }

    /// The store written to.
    pub fn store(&self) -> &ConfiguredStore {
        &self.store
    }

    /// This daemon's name in its reports.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Forgets the last report, so that the next one is written (and logged) afresh.
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// Writes this daemon's report about the new root `root` (its SHA-256 fingerprint) and
    /// `new_root` (its certificate) when it changed, or when the last one is about to go stale.
    pub async fn report(
        &mut self,
        root: String,
        new_root: &CertificateDer<'static>,
    ) -> anyhow::Result<()> {
        let missing = self.acks.missing(new_root);
        let streams = self.acks.streams();
        let now = self.clock.now();
        let report = AckReport {
            replica: self.replica.clone(),
            streams,
            acked: streams.saturating_sub(missing.len()),
            missing: missing
                .iter()
                .take(AckReport::MAX_MISSING)
                .map(SpiffeId::short)
                .collect(),
            at: unix(now),
            distribution: self.distribution.as_ref().map(|status| {
                let status = status.borrow();
                let behind = status.behind(&root);
                DistributionReport {
                    synced: status.synced,
                    namespaces: status.namespaces.len(),
                    holding: status.namespaces.len() - behind.len(),
                    behind: behind
                        .iter()
                        .take(AckReport::MAX_MISSING)
                        .map(|namespace| (*namespace).to_owned())
                        .collect(),
                }
            }),
            root,
        };
        let unchanged = self.last.as_ref().is_some_and(|last| {
            AckReport {
                at: last.at,
                ..report.clone()
            } == *last
                && unix(now) < last.at + self.poll_interval.as_secs().max(1)
        });
        if unchanged {
            return Ok(());
        }
        self.store.as_store().report_acks(&report).await?;
        if self.last.as_ref().map(|r| (r.streams, r.acked)) != Some((streams, report.acked)) {
            tracing::info!(
                streams,
                acked = report.acked,
                "root rotation: proxies holding the new root"
            );
        }
        if let Some(distribution) = &report.distribution
            && self.last.as_ref().and_then(|r| r.distribution.as_ref()) != Some(distribution)
        {
            tracing::info!(
                namespaces = distribution.namespaces,
                holding = distribution.holding,
                behind = %distribution.behind.join(","),
                "root rotation: namespaces whose trust bundle ConfigMap holds the new root"
            );
        }
        self.last = Some(report);
        Ok(())
    }
}

/// Resolves when `status` changes; never when there is none (or its sender is gone).
async fn changed(status: &mut Option<watch::Receiver<DistributionStatus>>) -> Result<(), ()> {
    if let Some(status) = status
        && status.changed().await.is_ok()
    {
        return Ok(());
    }
    std::future::pending().await
}
