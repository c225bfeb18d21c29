//! The daemon's side of a Vault issuer change: [`VaultIssuerFollower`] re-reads the PKI mount's
//! issuers every `rotation.pollInterval`, pushes the trust bundle (the root of every issuer in
//! the mount, see `meshca_vault::VaultProvider`), and when Vault's default issuer is no longer
//! the one meshca signs with — someone ran `bao write <pki>/config/issuers default=…` — keeps
//! signing with the old issuer until every connected proxy has acknowledged a bundle holding the
//! new root, then switches and re-issues every cached certificate.
//!
//! Each daemon gates on its own proxies (the acknowledgements of another replica's proxies are
//! not visible to it); it also waits one poll interval after it first saw the change, so that
//! every replica — polling at the same interval — has pushed the new root before any leaf under
//! it is served. `rotation.ackDeadline`, when set, lets it switch anyway once that long has
//! passed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_provider::{Clock, SpiffeId};
use meshca_vault::{IssuerSwitch, VaultProvider};

use crate::cache::CertificateCache;
use crate::sds::BundleAcks;

/// Follows the default issuer of a Vault PKI mount; see the module docs.
#[derive(Debug)]
pub struct VaultIssuerFollower {
    /// The running provider, whose signing issuer a switch changes.
    pub vault: Arc<VaultProvider>,
    /// The certificates served, re-issued after a switch.
    pub cache: Arc<CertificateCache>,
    /// What each connected proxy acknowledged.
    pub acks: Arc<BundleAcks>,
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
    /// The last (streams, missing) logged, to log only changes.
    logged: Option<(usize, usize)>,
}

impl VaultIssuerFollower {
    /// Runs until the task is dropped. A failed read is logged and retried at the next poll:
    /// the daemon keeps serving with what it has.
    pub async fn run(self) {
        let mut pending: Option<Pending> = None;
        let mut acks = self.acks.changes();
        let mut failing = false;
        loop {
            match self.cache.refresh_trust_bundle().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("vault issuers: the PKI mount is readable again");
                    }
                    failing = false;
                    self.step(&mut pending);
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
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                // While a switch waits, an acknowledgement is looked at promptly (after a short
                // pause that gathers the others arriving with it).
                Ok(()) = acks.changed(), if pending.is_some() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    acks.borrow_and_update();
                    self.step(&mut pending);
                }
            }
        }
    }

    /// Looks at the switch the last read found, and makes it when its condition holds.
    fn step(&self, pending: &mut Option<Pending>) {
        let Some(switch) = self.vault.issuer_switch() else {
            *pending = None;
            return;
        };
        let now = self.clock.now();
        if pending.as_ref().map(|p| &p.switch) != Some(&switch) {
            tracing::info!(
                from = %switch.from.as_ref().map_or_else(|| "(gone)".to_owned(), ToString::to_string),
                to = %switch.to,
                "vault issuers: Vault's default issuer changed; its root is trusted now, and \
                 leaves are issued under it once every connected proxy has acknowledged it"
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
        let missing = self.acks.missing(&switch.to.root);
        let streams = self.acks.streams();
        let waited = now.duration_since(waiting.seen_at).unwrap_or_default();
        let deadline_passed = self.ack_deadline.is_some_and(|d| waited >= d);
        // With the signing issuer gone there is nothing to keep signing with.
        let forced = switch.from.is_none();
        let ready = trusted && missing.is_empty() && waited >= self.poll_interval;
        if !(ready || deadline_passed || forced) {
            if waiting.logged != Some((streams, missing.len())) {
                waiting.logged = Some((streams, missing.len()));
                tracing::info!(
                    to = %switch.to,
                    streams,
                    acked = streams - missing.len(),
                    waiting_for = %missing.iter().take(10).map(SpiffeId::short).collect::<Vec<_>>().join(","),
                    "vault issuers: proxies holding the new root"
                );
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
