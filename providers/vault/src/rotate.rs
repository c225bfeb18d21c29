//! `meshca rotate root …` on a Vault PKI mount: the stages of a root rotation, each a change
//! of the mount's issuers, with the stage kept in the issuer names ([`VaultRotation`]) so that
//! the CLI, the CronJob and every daemon read one state from Vault and need nothing else:
//!
//! | step | in Vault | daemons |
//! |---|---|---|
//! | `start` | a new root issuer named `meshca-next` (Vault refuses a second one of that name: of two starts, one makes it) | trust its root within `rotation.pollInterval` |
//! | `advance` (1 → 2) | the new issuer renamed `meshca-next-<now>-<old ID>`, then made the default | sign with it once every proxy they serve acknowledged its root, and re-issue |
//! | `advance` (2 → done, after the longest leaf lifetime) | the old issuer renamed `meshca-retired-<now>` (kept in the mount), the new one `meshca-root-<now>` | drop the old root from the bundles (it stays while a leaf they issued under it lives) |
//! | `abort` (2 → 1) | the old issuer the default again, the new one `meshca-next` again | sign with the old issuer again |
//! | `abort` (1 → none) | the new issuer deleted | drop its root |
//!
//! A step interrupted halfway (renamed, not yet made the default) is completed by the next
//! `advance`. Renames are `PATCH`es, which keep the issuer's other settings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshca_provider::{CertificateInfo, ProviderError};

use crate::VaultProvider;
use crate::endpoints::{
    DeleteIssuerRequest, GenerateNamedRoot, RenameIssuer, SetDefaultIssuerRequest,
};
use crate::issuers::{IssuerInfo, NEXT_ISSUER, RETIRED_PREFIX, ROOT_PREFIX, VaultRotation};

/// Why a rotation step could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultRotationError {
    /// Vault refused or failed a call.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The mount's issuers cannot be listed, so no stage can be read.
    #[error(
        "cannot list the issuers of {pki_path}: root rotation needs a Vault or OpenBao with \
         several issuers per mount (Vault 1.11+)"
    )]
    Unlisted {
        /// The mount.
        pki_path: String,
    },
    /// Advance or abort without a rotation.
    #[error(
        "no root rotation is in progress in {pki_path} (no issuer named meshca-next…): start one \
         with `meshca rotate root start`"
    )]
    NotRotating {
        /// The mount.
        pki_path: String,
    },
    /// The mount has no default issuer to rotate from.
    #[error("{pki_path} has no default issuer to rotate: generate or import a root first")]
    NoDefault {
        /// The mount.
        pki_path: String,
    },
    /// Stage 2 cannot go back: the old issuer was deleted.
    #[error(
        "the old issuer {old_id} is no longer in {pki_path}, so it cannot sign again: advance \
         instead"
    )]
    OldIssuerGone {
        /// The mount.
        pki_path: String,
        /// The old issuer's ID.
        old_id: String,
    },
}

/// What [`VaultProvider::advance_root_rotation`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum VaultAdvance {
    /// Stage 1 → 2: the new issuer is Vault's default.
    ToIssuing {
        /// The new issuer.
        new: IssuerInfo,
    },
    /// Stage 2 waits for the old root's leaves to expire.
    AwaitingRetirement {
        /// When it may finish.
        retire_after: SystemTime,
    },
    /// Stage 1 stays: the new issuer is not the one the caller found acknowledged (another run
    /// aborted and started again meanwhile); nothing was changed.
    Unacknowledged {
        /// The new issuer now in the mount.
        new: IssuerInfo,
    },
    /// Stage 2 → finished: the old issuer is retired (out of the bundles, still in the mount).
    Finished {
        /// The new issuer, now `meshca-root-<time>`.
        new: IssuerInfo,
        /// The old issuer's ID.
        old_id: String,
    },
}

/// What [`VaultProvider::abort_root_rotation`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum VaultAbort {
    /// Stage 2 → 1: the old issuer is the default again.
    BackToTrusting,
    /// Stage 1 → none: the new issuer was deleted.
    Dropped,
}

impl VaultProvider {
    /// The rotation in progress, read from the mount now.
    pub async fn root_rotation(&self) -> Result<Option<VaultRotation>, VaultRotationError> {
        self.read_issuers().await?;
        if !self.issuers().is_listed() {
            return Err(VaultRotationError::Unlisted {
                pki_path: self.paths.mount.clone(),
            });
        }
        Ok(self.issuers().rotation())
    }

    /// Stage 1: a new root issuer (EC P-256, the old root's lifetime, its common name with
    /// `(rotated <time>)`) named [`NEXT_ISSUER`]. A rotation in progress (started by another
    /// run, too) is returned unchanged: `Ok((rotation, false))`.
    pub async fn start_root_rotation(
        &self,
        now: SystemTime,
    ) -> Result<(VaultRotation, bool), VaultRotationError> {
        if let Some(rotation) = self.root_rotation().await? {
            return Ok((rotation, false));
        }
        let pki_path = self.paths.mount.clone();
        let old =
            self.issuers()
                .target()
                .cloned()
                .ok_or_else(|| VaultRotationError::NoDefault {
                    pki_path: pki_path.clone(),
                })?;
        let path = format!("{pki_path}/root/generate/internal");
        let info = CertificateInfo::parse(&old.root)
            .map_err(|e| self.invalid(&path, format!("unreadable root: {e}")))?;
        let lifetime = info
            .not_after
            .duration_since(info.not_before)
            .unwrap_or(Duration::from_secs(10 * 365 * 86_400));
        let common_name = info.common_name.unwrap_or_else(|| "meshca root".to_owned());
        let generate = GenerateNamedRoot {
            mount: pki_path.clone(),
            common_name: format!("{common_name} (rotated {})", unix(now)),
            issuer_name: NEXT_ISSUER.to_owned(),
            key_type: "ec".to_owned(),
            key_bits: 256,
            ttl: format!("{}s", lifetime.as_secs()),
        };
        let started = match self.call(&generate, None).await {
            Ok(_) => true,
            // Another run made it first.
            Err(ProviderError::Rejected { reason, .. }) if reason.contains("already in use") => {
                false
            }
            Err(error) => return Err(error.into()),
        };
        let rotation = self
            .root_rotation()
            .await?
            .ok_or(VaultRotationError::NotRotating { pki_path })?;
        Ok((rotation, started))
    }

    /// Moves the rotation at most one stage: 1 → 2 when the new issuer's ID is `acknowledged`
    /// (the caller found that every replica's proxies hold its root, or that the
    /// acknowledgement deadline passed; see `meshca rotate root advance`), 2 → finished once
    /// `longest_leaf` has passed since stage 2 began.
    pub async fn advance_root_rotation(
        &self,
        longest_leaf: Duration,
        now: SystemTime,
        acknowledged: Option<&str>,
    ) -> Result<VaultAdvance, VaultRotationError> {
        let pki_path = self.paths.mount.clone();
        let Some(rotation) = self.root_rotation().await? else {
            return Err(VaultRotationError::NotRotating { pki_path });
        };
        match rotation {
            VaultRotation::Trusting { new, .. } if acknowledged != Some(new.id.as_str()) => {
                Ok(VaultAdvance::Unacknowledged { new })
            }
            VaultRotation::Trusting { new, old } => {
                let old = old.ok_or(VaultRotationError::NoDefault { pki_path })?;
                self.rename(&new.id, &format!("{NEXT_ISSUER}-{}-{}", unix(now), old.id))
                    .await?;
                self.set_default(&new.id).await?;
                Ok(VaultAdvance::ToIssuing { new })
            }
            VaultRotation::Issuing {
                new,
                old_id,
                old,
                since,
            } => {
                // Completes a stage 1 → 2 interrupted between the rename and the default.
                if self.issuers().target().map(|t| &t.id) != Some(&new.id) {
                    self.set_default(&new.id).await?;
                }
                let retire_after = since + longest_leaf;
                if now < retire_after {
                    return Ok(VaultAdvance::AwaitingRetirement { retire_after });
                }
                if let Some(old) = old {
                    self.rename(&old.id, &format!("{RETIRED_PREFIX}{}", unix(now)))
                        .await?;
                }
                self.rename(&new.id, &format!("{ROOT_PREFIX}{}", unix(now)))
                    .await?;
                Ok(VaultAdvance::Finished { new, old_id })
            }
        }
    }

    /// Moves the rotation one stage back: 2 → 1 makes the old issuer the default again; 1 →
    /// none deletes the new issuer.
    pub async fn abort_root_rotation(&self) -> Result<VaultAbort, VaultRotationError> {
        let pki_path = self.paths.mount.clone();
        let Some(rotation) = self.root_rotation().await? else {
            return Err(VaultRotationError::NotRotating { pki_path });
        };
        match rotation {
            VaultRotation::Trusting { new, .. } => {
                let delete = DeleteIssuerRequest {
                    mount: pki_path,
                    issuer: new.id,
                };
                self.call(&delete, None).await?;
                Ok(VaultAbort::Dropped)
            }
            VaultRotation::Issuing {
                new, old_id, old, ..
            } => {
                let old = old.ok_or(VaultRotationError::OldIssuerGone { pki_path, old_id })?;
                self.set_default(&old.id).await?;
                self.rename(&new.id, NEXT_ISSUER).await?;
                Ok(VaultAbort::BackToTrusting)
            }
        }
    }

    async fn rename(&self, issuer: &str, name: &str) -> Result<(), ProviderError> {
        let rename = RenameIssuer {
            mount: self.paths.mount.clone(),
            issuer: issuer.to_owned(),
            issuer_name: name.to_owned(),
        };
        self.call(&rename, None).await.map(|_| ())
    }

    async fn set_default(&self, issuer: &str) -> Result<(), ProviderError> {
        let set = SetDefaultIssuerRequest {
            mount: self.paths.mount.clone(),
            default_issuer: issuer.to_owned(),
        };
        self.call(&set, None).await.map(|_| ())
    }
}

/// When stage 1 of the rotation to `new` began: the time `meshca rotate root start` wrote
/// into its common name (`… (rotated <Unix time>)`), else its root's NotBefore (Vault may
/// back-date it: a deadline counted from it passes early by as much).
pub fn trusting_since(new: &IssuerInfo) -> Option<SystemTime> {
    let info = CertificateInfo::parse(&new.root).ok()?;
    let stamped = info.common_name.as_deref().and_then(|name| {
        let (_, tail) = name.rsplit_once("(rotated ")?;
        let seconds = tail.strip_suffix(')')?.parse::<u64>().ok()?;
        Some(UNIX_EPOCH + Duration::from_secs(seconds))
    });
    Some(stamped.unwrap_or(info.not_before))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
