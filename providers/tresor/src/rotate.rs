//! The steps of a root rotation — start, advance, abort, status — as compare-and-swaps on
//! the [`CaStore`]'s rotation record, so that `meshca rotate root …` by hand, the CronJob and
//! a second replica can run them at the same time: each change happens once.

use std::fmt;
use std::time::{Duration, SystemTime};

use meshca_provider::Clock;

use crate::authority::{SigningAuthority, display_time};
use crate::error::AuthorityError;
use crate::material::StoreError;
use crate::options::RootOptions;
use crate::rotation::{AckReport, AckReports, Rotation, RotationChange, Stage, Swap};
use crate::store::CaStore;

/// What decides when a rotation may advance.
#[derive(Debug, Clone)]
pub struct RotationPolicy {
    /// Stage 1 advances after this long even if some proxies never acknowledged (`None`:
    /// only acknowledgements advance it).
    pub ack_deadline: Option<Duration>,
    /// The longest lifetime of a leaf the old root may have signed (plus clock skew): stage 2
    /// lasts this long.
    pub longest_leaf: Duration,
    /// A daemon's acknowledgement report older than this is from a daemon that is gone.
    pub report_freshness: Duration,
}

/// Why a step did nothing or could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// The store failed or holds unusable material.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored CA is an intermediate: its root lives elsewhere.
    #[error(
        "{store} holds an intermediate CA ({subject}), whose root is kept outside this \
         cluster: rotate that root where it is kept and import a new intermediate signed by it \
         (`meshca ca intermediate` there, `meshca ca import` here)"
    )]
    NotARoot {
        /// The store's description.
        store: String,
        /// The intermediate's subject.
        subject: String,
    },
    /// The store is empty.
    #[error("{store} holds no CA yet: run `meshca bootstrap` (or start `meshca serve`) first")]
    NoCa {
        /// The store's description.
        store: String,
    },
    /// Advance or abort without a rotation.
    #[error(
        "no root rotation is in progress in {store}: start one with `meshca rotate root start`"
    )]
    NotRotating {
        /// The store's description.
        store: String,
    },
    /// The new root could not be made.
    #[error("could not create the new root: {0}")]
    Generate(#[from] AuthorityError),
}

/// The acknowledgements of stage 1, summed over the daemons' fresh reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckSummary {
    /// Fresh reports about the new root, one per daemon.
    pub reports: Vec<AckReport>,
    /// Reports ignored: older than the freshness window, or about another root.
    pub stale: usize,
    /// Of those, the daemons whose report is about this root but older than the freshness
    /// window: gone, or alive and unable to write to the store.
    pub stale_replicas: Vec<String>,
    /// Entries of the store that are not a report (see [`AckReports::unreadable`]).
    pub unreadable: Vec<String>,
}

impl AckSummary {
    /// The fresh reports among `read` about the root with SHA-256 `fingerprint`: written at
    /// most `freshness` before `now`.
    pub fn of(read: AckReports, fingerprint: &str, freshness: Duration, now: SystemTime) -> Self {
        let mut summary = AckSummary {
            unreadable: read.unreadable,
            ..AckSummary::default()
        };
        for report in read.reports {
            let age = now
                .duration_since(report.written_at())
                .unwrap_or(Duration::ZERO);
            if report.root == fingerprint && age <= freshness {
                summary.reports.push(report);
            } else {
                if report.root == fingerprint {
                    summary.stale_replicas.push(report.replica);
                }
                summary.stale += 1;
            }
        }
        summary.reports.sort_by(|a, b| a.replica.cmp(&b.replica));
        summary.stale_replicas.sort();
        summary
    }

    /// Connected bundle-holding streams over all daemons.
    pub fn streams(&self) -> usize {
        self.reports.iter().map(|r| r.streams).sum()
    }

    /// Of those, the acknowledged ones.
    pub fn acked(&self) -> usize {
        self.reports.iter().map(|r| r.acked.min(r.streams)).sum()
    }

    /// Whether at least one daemon reported and every stream acknowledged.
    pub fn complete(&self) -> bool {
        !self.reports.is_empty() && self.reports.iter().all(AckReport::complete)
    }

    /// Callers still missing, as reported.
    pub fn missing(&self) -> Vec<&str> {
        self.reports
            .iter()
            .flat_map(|r| r.missing.iter().map(String::as_str))
            .collect()
    }
}

impl fmt::Display for AckSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} proxies acknowledged the new root ({} daemon report{}",
            self.acked(),
            self.streams(),
            self.reports.len(),
            if self.reports.len() == 1 { "" } else { "s" }
        )?;
        if self.stale > 0 {
            write!(f, ", {} stale ignored", self.stale)?;
        }
        if !self.unreadable.is_empty() {
            write!(
                f,
                ", {} unreadable ignored: {}",
                self.unreadable.len(),
                self.unreadable.join("; ")
            )?;
        }
        f.write_str(")")?;
        // Each daemon's missing callers, named with the daemon.
        let waiting: Vec<String> = self
            .reports
            .iter()
            .filter(|r| !r.missing.is_empty())
            .map(|r| format!("{} (on {})", r.missing.join(", "), r.replica))
            .collect();
        if !waiting.is_empty() {
            write!(f, "; waiting for {}", waiting.join(", "))?;
        }
        // Every daemon watches the same namespaces: the report furthest behind speaks for all.
        let behind = self
            .reports
            .iter()
            .filter_map(|r| r.distribution.as_ref())
            .filter(|d| !d.complete())
            .min_by_key(|d| (d.synced, d.holding));
        match behind {
            Some(d) if d.synced => {
                let waiting = d.namespaces.saturating_sub(d.holding);
                write!(
                    f,
                    "; {} of {} namespaces' trust bundle ConfigMaps hold the new root, waiting \
                     for namespace{} {}{}",
                    d.holding,
                    d.namespaces,
                    if waiting == 1 { "" } else { "s" },
                    d.behind.join(", "),
                    if d.behind.len() < waiting {
                        ", …"
                    } else {
                        ""
                    }
                )?;
            }
            Some(_) => f.write_str("; the trust bundle ConfigMaps have not been listed yet")?,
            None => {}
        }
        Ok(())
    }
}

/// What [`advance`] did.
#[derive(Debug)]
pub enum Advance {
    /// Stage 1 → 2: the new root signs now.
    ToIssuing {
        /// Whether the deadline, rather than the acknowledgements, allowed it.
        by_deadline: bool,
        /// The acknowledgements at that moment.
        acks: AckSummary,
    },
    /// Stage 2 → finished: the new root is the stored CA, the old one left the bundles.
    Finished,
    /// Stage 1 waits for acknowledgements.
    AwaitingAcks {
        /// What the daemons reported.
        acks: AckSummary,
        /// When the deadline lets it advance anyway.
        deadline: Option<SystemTime>,
    },
    /// Stage 2 waits for the old root's leaves to expire.
    AwaitingRetirement {
        /// When it may finish.
        retire_after: SystemTime,
    },
    /// Another run changed the rotation first; this is its stage now (`None`: finished or
    /// aborted).
    AlreadyAdvanced(Option<Stage>),
}

impl fmt::Display for Advance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Advance::ToIssuing { by_deadline, acks } => {
                write!(
                    f,
                    "advanced to {}: cached certificates are being re-issued ({acks}",
                    Stage::Issuing
                )?;
                f.write_str(if *by_deadline {
                    "; the acknowledgement deadline passed)"
                } else {
                    ")"
                })
            }
            Advance::Finished => f.write_str(
                "rotation finished: the new root is the CA, the old root left the trust bundles",
            ),
            Advance::AwaitingAcks { acks, deadline } => {
                write!(f, "not advancing: {acks}")?;
                match deadline {
                    Some(deadline) => write!(
                        f,
                        "; the deadline lets it advance after {}",
                        display_time(*deadline)
                    ),
                    None => f.write_str("; no deadline is set (rotation.ackDeadline)"),
                }
            }
            Advance::AwaitingRetirement { retire_after } => write!(
                f,
                "not advancing: the old root stays trusted until {}, when every leaf it signed \
                 has expired",
                display_time(*retire_after)
            ),
            Advance::AlreadyAdvanced(now) => match now {
                Some(stage) => write!(
                    f,
                    "another run advanced the rotation first; it is at {stage}"
                ),
                None => f.write_str("another run finished or aborted the rotation first"),
            },
        }
    }
}

/// Stage 1: makes a new root and stores the rotation record. When a rotation is already in
/// progress (started by another run, too), returns it unchanged: `Ok((rotation, false))`.
pub async fn start(
    store: &dyn CaStore,
    options: &RootOptions,
    policy: &RotationPolicy,
    clock: &dyn Clock,
) -> Result<(Rotation, bool), RotationError> {
    if let Some(rotation) = store.load_rotation().await? {
        return Ok((rotation, false));
    }
    let Some(stored) = store.load().await? else {
        return Err(RotationError::NoCa {
            store: store.describe(),
        });
    };
    let now = clock.now();
    let old = stored.authority(now)?;
    if !old.is_root() {
        return Err(RotationError::NotARoot {
            store: store.describe(),
            subject: old.subject().to_owned(),
        });
    }
    // A subject of its own, so that no verifier can confuse the two roots while both are
    // trusted.
    let mut new_options = options.clone();
    new_options.common_name = format!(
        "{} (rotated {})",
        options.common_name,
        display_time(now).trim_end_matches('Z')
    );
    let new = SigningAuthority::generate_root(&new_options, clock)?;
    let rotation = Rotation::begin(stored, new.to_stored(), now, policy.ack_deadline);
    match store
        .change_rotation(None, RotationChange::Begin(rotation.clone()))
        .await?
    {
        Swap::Applied => Ok((rotation, true)),
        Swap::Stale(Some(theirs)) => Ok((*theirs, false)),
        // A rotation was begun and finished between our read and write: start afresh.
        Swap::Stale(None) => Box::pin(start(store, options, policy, clock)).await,
    }
}

/// Moves the rotation in progress at most one stage, if its condition holds.
pub async fn advance(
    store: &dyn CaStore,
    policy: &RotationPolicy,
    clock: &dyn Clock,
) -> Result<Advance, RotationError> {
    let Some(rotation) = store.load_rotation().await? else {
        return Err(RotationError::NotRotating {
            store: store.describe(),
        });
    };
    let now = clock.now();
    let (change, outcome) = match rotation.stage {
        Stage::Trusting => {
            let acks = ack_summary(store, &rotation, policy, now).await?;
            let deadline_passed = rotation.ack_deadline.is_some_and(|d| now >= d);
            if !acks.complete() && !deadline_passed {
                return Ok(Advance::AwaitingAcks {
                    acks,
                    deadline: rotation.ack_deadline,
                });
            }
            // Both roots must still be usable before the new one signs.
            rotation.authorities(now)?;
            (
                RotationChange::Update(rotation.to_issuing(now, policy.longest_leaf)),
                Advance::ToIssuing {
                    by_deadline: !acks.complete(),
                    acks,
                },
            )
        }
        Stage::Issuing => {
            let retire_after = rotation.retire_after.unwrap_or(rotation.stage_since);
            if now < retire_after {
                return Ok(Advance::AwaitingRetirement { retire_after });
            }
            rotation.new.authority(now)?;
            (RotationChange::Finish, Advance::Finished)
        }
    };
    match store
        .change_rotation(Some(rotation.revision), change)
        .await?
    {
        Swap::Applied => Ok(outcome),
        Swap::Stale(now) => Ok(Advance::AlreadyAdvanced(now.map(|r| r.stage))),
    }
}

/// What [`abort`] did.
#[derive(Debug)]
pub enum Abort {
    /// Stage 2 → 1: the old root signs again (certificates are re-issued); abort again to
    /// drop the new root.
    BackToTrusting,
    /// Stage 1 → none: the new root is dropped; bundles carry the old root only.
    Dropped,
    /// Another run changed the rotation first; its stage now.
    AlreadyChanged(Option<Stage>),
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abort::BackToTrusting => write!(
                f,
                "moved back to {}: the old root signs again; abort again to drop the new root",
                Stage::Trusting
            ),
            Abort::Dropped => f.write_str(
                "rotation aborted: the new root was dropped; trust bundles carry the old root only",
            ),
            Abort::AlreadyChanged(Some(stage)) => {
                write!(
                    f,
                    "another run changed the rotation first; it is at {stage}"
                )
            }
            Abort::AlreadyChanged(None) => {
                f.write_str("another run finished or aborted the rotation first")
            }
        }
    }
}

/// Moves the rotation back one stage (stage 1 → none drops the new root).
pub async fn abort(store: &dyn CaStore, clock: &dyn Clock) -> Result<Abort, RotationError> {
    let Some(rotation) = store.load_rotation().await? else {
        return Err(RotationError::NotRotating {
            store: store.describe(),
        });
    };
    let (change, outcome) = match rotation.stage {
        Stage::Issuing => (
            RotationChange::Update(rotation.to_trusting(clock.now())),
            Abort::BackToTrusting,
        ),
        Stage::Trusting => (RotationChange::Abort, Abort::Dropped),
    };
    match store
        .change_rotation(Some(rotation.revision), change)
        .await?
    {
        Swap::Applied => Ok(outcome),
        Swap::Stale(now) => Ok(Abort::AlreadyChanged(now.map(|r| r.stage))),
    }
}

/// The daemons' fresh reports about `rotation`'s new root.
pub async fn ack_summary(
    store: &dyn CaStore,
    rotation: &Rotation,
    policy: &RotationPolicy,
    now: SystemTime,
) -> Result<AckSummary, RotationError> {
    let fingerprint = rotation.new_root_fingerprint(now)?;
    Ok(AckSummary::of(
        store.ack_reports().await?,
        &fingerprint,
        policy.report_freshness,
        now,
    ))
}
