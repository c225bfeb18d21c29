//! The daemon's side of a Vault issuer change: [`VaultIssuerFollower`] re-reads the PKI mount's
//! issuers every `rotation.pollInterval`, pushes the trust bundle (the root of every issuer in
//! the mount, see `meshca_vault::VaultProvider`), and when Vault's default issuer is no longer
//! the one meshca signs with — stage 2 of `meshca rotate root`, or someone ran
//! `bao write <pki>/config/issuers default=…` — keeps signing with the old issuer until every
//! replica's proxies have acknowledged a bundle holding the new root, then switches and
//! re-issues every cached certificate.
//!
//! The gate spans the replicas as Tresor's does ([`crate::rotation`]): while a new root waits
//! (stage 1 of `meshca rotate root`, or a switch seen and not made), each daemon writes an
//! [`AckReport`](meshca_tresor::AckReport) to the CA store (`tresor.store`) through the same
//! [`AckReporter`], and switches only when
//! - every report about the new root is fresh (written within the staleness window, three
//!   poll intervals and at least 30 s) and says all its proxies — and, when it publishes the
//!   bundle into the cluster, all namespaces' ConfigMaps — hold the new root, its own among
//!   them: a replica whose report went stale (gone, or unable to write to the store) holds
//!   the switch back, reports about other roots are ignored, and so are entries of the store
//!   that are not a report (logged);
//! - it saw the change at least one poll interval ago, so that every replica — polling at
//!   the same interval — has pushed the new root before any leaf under it is served.
//!
//! `rotation.ackDeadline`, when set, lets it switch anyway once that long has passed since it
//! saw the change; with the signing issuer gone from the mount it switches at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_provider::{Clock, TrustBundle};
use meshca_tresor::AckSummary;
use meshca_vault::{IssuerSwitch, VaultProvider, VaultRotation};
use rustls_pki_types::CertificateDer;

use crate::cache::CertificateCache;
use crate::rotation::AckReporter;
use crate::sds::BundleAcks;

/// Follows the default issuer of a Vault PKI mount; see the module docs.
#[derive(Debug)]
pub struct VaultIssuerFollower {
    /// The running provider, whose signing issuer a switch changes.
    pub vault: Arc<VaultProvider>,
    /// The certificates served, re-issued after a switch.
    pub cache: Arc<CertificateCache>,
    /// What each connected proxy acknowledged (the reporter's too: it wakes the loop).
    pub acks: Arc<BundleAcks>,
    /// Writes this replica's reports to the CA store, where every replica's are read.
    pub reporter: AckReporter,
    /// A report older than this is stale.
    pub report_freshness: Duration,
    /// How often the mount's issuers are read.
    pub poll_interval: Duration,
    /// A switch happens this long after it was seen even if some proxies never acknowledged.
    pub ack_deadline: Option<Duration>,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// A switch seen and not made yet.
#[derive(Debug)]
struct Pending {
    switch: IssuerSwitch,
    seen_at: SystemTime,
    /// The last state logged, to log only changes.
    logged: Option<String>,
}

impl VaultIssuerFollower {
    /// Runs until the task is dropped. A failed read is logged and retried at the next poll:
    /// the daemon keeps serving with what it has.
    pub async fn run(mut self) {
        let mut pending: Option<Pending> = None;
        let mut acks = self.acks.changes();
        let mut failing = false;
        let mut store_failing = false;
        loop {
            match self.cache.refresh_trust_bundle().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("vault issuers: the PKI mount is readable again");
                    }
                    failing = false;
                    self.report_and_step(&mut pending, &mut store_failing).await;
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(
                        %error,
                        "vault issuers: cannot read the PKI mount's issuers; serving with the \
                         current ones and retrying"
                    );
                }
                Err(error) => tracing::debug!(%error, "still failing"),
            }
            let waiting = pending.is_some()
                || matches!(
                    self.vault.cached_root_rotation(),
                    Some(VaultRotation::Trusting { .. })
                );
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                // While a new root waits, an acknowledgement is reported promptly (after a
                // short pause that gathers the others arriving with it).
                Ok(()) = acks.changed(), if waiting => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    acks.borrow_and_update();
                    self.report_and_step(&mut pending, &mut store_failing).await;
                }
            }
        }
    }

    /// Reports this replica's acknowledgements of the root waiting to sign, if any, and makes
    /// the switch the last read found when every replica's report allows it.
    async fn report_and_step(&mut self, pending: &mut Option<Pending>, store_failing: &mut bool) {
        let switch = self.vault.issuer_switch();
        let waiting_root = match (&switch, self.vault.cached_root_rotation()) {
            (Some(switch), _) => Some(switch.to.root.clone()),
            (None, Some(VaultRotation::Trusting { new, .. })) => Some(new.root),
            (None, _) => None,
        };
        let Some(root) = waiting_root else {
            *pending = None;
            self.reporter.forget();
            return;
        };
        let fingerprint = fingerprint(&root);
        let reported = self.reporter.report(fingerprint.clone(), &root).await;
        let summary = match reported {
            Ok(()) => self.summary(&fingerprint).await,
            Err(error) => Err(error),
        };
        match &summary {
            Ok(_) if *store_failing => {
                *store_failing = false;
                tracing::info!(
                    "vault issuers: the CA store takes and gives acknowledgement reports again"
                );
            }
            Ok(_) => {}
            Err(error) if !*store_failing => {
                *store_failing = true;
                tracing::warn!(
                    error = %format!("{error:#}"),
                    store = %self.reporter.store().as_store().describe(),
                    "vault issuers: cannot write or read the acknowledgement reports in the CA \
                     store; no switch to a new issuer until it works again (or \
                     rotation.ackDeadline passes)"
                );
            }
            Err(error) => tracing::debug!(error = %format!("{error:#}"), "still failing"),
        }
        if let Some(switch) = switch {
            self.step(pending, switch, summary.ok());
        } else {
            *pending = None;
        }
    }

    /// Every replica's fresh reports about the root with SHA-256 `fingerprint`.
    async fn summary(&self, fingerprint: &str) -> anyhow::Result<AckSummary> {
        let read = self.reporter.store().as_store().ack_reports().await?;
        Ok(AckSummary::of(
            read,
            fingerprint,
            self.report_freshness,
            self.clock.now(),
        ))
    }

    /// Looks at `switch`, and makes it when its condition holds: see the module docs.
    fn step(&self, pending: &mut Option<Pending>, switch: IssuerSwitch, acks: Option<AckSummary>) {
        let now = self.clock.now();
        if pending.as_ref().map(|p| &p.switch) != Some(&switch) {
            tracing::info!(
                from = %switch.from.as_ref().map_or_else(|| "(gone)".to_owned(), ToString::to_string),
                to = %switch.to,
                "vault issuers: Vault's default issuer changed; its root is trusted now, and \
                 leaves are issued under it once every replica's proxies have acknowledged it"
            );
            *pending = Some(Pending {
                switch: switch.clone(),
                seen_at: now,
                logged: None,
            });
        }
        let Some(waiting) = pending.as_mut() else {
            return;
        };
        let bundle = self.cache.trust_bundle().borrow().clone();
        let trusted = bundle.contains(&switch.to.root);
        let waited = now.duration_since(waiting.seen_at).unwrap_or_default();
        let deadline_passed = self.ack_deadline.is_some_and(|d| waited >= d);
        // With the signing issuer gone there is nothing to keep signing with.
        let forced = switch.from.is_none();
        let replica = self.reporter.replica();
        let acked = acks.as_ref().is_some_and(|acks| {
            acks.complete()
                && acks.stale_replicas.is_empty()
                && acks.reports.iter().any(|r| r.replica == replica)
        });
        let ready = trusted && acked && waited >= self.poll_interval;
        if !(ready || deadline_passed || forced) {
            // What the log says, without the reports' times.
            let state = match &acks {
                Some(acks) => format!(
                    "{:?}",
                    (
                        acks.reports
                            .iter()
                            .map(|r| (&r.replica, r.streams, r.acked, &r.missing, r.complete()))
                            .collect::<Vec<_>>(),
                        &acks.stale_replicas,
                        &acks.unreadable,
                    )
                ),
                None => "unreadable".to_owned(),
            };
            if waiting.logged.as_ref() != Some(&state) {
                waiting.logged = Some(state);
                log_waiting(&switch, acks.as_ref());
            }
            return;
        }
        if !self.vault.adopt(&switch) {
            // The default changed again meanwhile: the next read sees the new one.
            return;
        }
        let cached = self.cache.certificates().len();
        self.cache.renew_now(None);
        tracing::info!(
            issuer = %switch.to,
            certificates = cached,
            by_deadline = !ready && deadline_passed,
            "vault issuers: signing with the new default issuer; re-issuing every cached \
             certificate under it (the old root stays trusted while its issuer is in the mount \
             or a leaf it signed is unexpired)"
        );
        *pending = None;
    }
}

/// Says what a switch waits for.
fn log_waiting(switch: &IssuerSwitch, acks: Option<&AckSummary>) {
    let Some(acks) = acks else {
        tracing::info!(
            to = %switch.to,
            "vault issuers: waiting to read every replica's acknowledgement report"
        );
        return;
    };
    if !acks.unreadable.is_empty() {
        tracing::warn!(
            unreadable = %acks.unreadable.join("; "),
            "vault issuers: entries of the CA store that are not an acknowledgement report are \
             ignored (they count for no replica); remove them"
        );
    }
    tracing::info!(
        to = %switch.to,
        streams = acks.streams(),
        acked = acks.acked(),
        replicas = %acks
            .reports
            .iter()
            .map(|r| format!("{}:{}/{}", r.replica, r.acked.min(r.streams), r.streams))
            .collect::<Vec<_>>()
            .join(","),
        stale = %acks.stale_replicas.join(","),
        waiting_for = %acks.missing().join(","),
        "vault issuers: proxies holding the new root, over every replica's report ({acks})"
    );
}

/// The SHA-256 fingerprint of `root`, as reports name it.
fn fingerprint(root: &CertificateDer<'static>) -> String {
    TrustBundle::new(vec![root.clone()])
        .fingerprints()
        .into_iter()
        .next()
        .unwrap_or_default()
}
