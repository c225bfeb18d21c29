//! Zero-downtime root rotation: the record a [`CaStore`](crate::CaStore) keeps while a new root
//! replaces the old one, and what the daemons report about their proxies.
//!
//! Stages (SPEC.md "Root rotation"):
//! 1. [`Stage::Trusting`] — a new root exists; every trust bundle carries old + new; issuing
//!    still uses the old root.
//! 2. [`Stage::Issuing`] — every connected proxy has acknowledged a bundle with the new root
//!    (or the deadline passed): issuing uses the new root, cached certificates are re-issued;
//!    bundles still carry both, because leaves the old root signed are still out there.
//! 3. Finished — once the longest leaf lifetime has passed, the new root becomes the stored CA
//!    and the record (with the old root) is removed: bundles carry the new root only.
//!
//! Each change is a compare-and-swap on [`Rotation::revision`], so of two runs that try to
//! advance the same stage, one does and the other finds it done.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshca_provider::TrustBundle;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::authority::SigningAuthority;
use crate::material::{StoreError, StoredCa};

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Stage 1: bundles carry old + new; the old root signs.
    Trusting,
    /// Stage 2: bundles carry old + new; the new root signs.
    Issuing,
}

impl Stage {
    /// The stage's number in SPEC.md's terms.
    pub fn number(self) -> u8 {
        match self {
            Stage::Trusting => 1,
            Stage::Issuing => 2,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Trusting => "stage 1 (bundles trust old + new root; the old root signs)",
            Stage::Issuing => "stage 2 (bundles trust old + new root; the new root signs)",
        })
    }
}

/// A root rotation in progress, as persisted with the CA. Holds both CA keys: never log it
/// (its `Debug` shows neither key).
#[derive(Clone)]
pub struct Rotation {
    /// The current stage.
    pub stage: Stage,
    /// Bumped by every change; the compare-and-swap token.
    pub revision: u64,
    /// When `meshca rotate root start` ran.
    pub started_at: SystemTime,
    /// When the current stage began.
    pub stage_since: SystemTime,
    /// Stage 1 may advance at this time even if some proxies never acknowledged.
    pub ack_deadline: Option<SystemTime>,
    /// Stage 2 may finish at this time: every leaf the old root signed has expired.
    pub retire_after: Option<SystemTime>,
    /// The root being retired (the CA stored before the rotation).
    pub old: StoredCa,
    /// The root taking over.
    pub new: StoredCa,
}

/// A [`Rotation`] with its CA material checked and ready to sign.
#[derive(Debug)]
pub struct RotationAuthorities {
    /// The old root.
    pub old: SigningAuthority,
    /// The new root.
    pub new: SigningAuthority,
}

impl RotationAuthorities {
    /// The root that signs in `stage`.
    pub fn issuing(self, stage: Stage) -> SigningAuthority {
        match stage {
            Stage::Trusting => self.old,
            Stage::Issuing => self.new,
        }
    }
}

impl Rotation {
    /// Stage 1 of a rotation from `old` to `new`, started `now`.
    pub fn begin(
        old: StoredCa,
        new: StoredCa,
        now: SystemTime,
        ack_deadline: Option<Duration>,
    ) -> Self {
        Self {
            stage: Stage::Trusting,
            revision: 1,
            started_at: now,
            stage_since: now,
            ack_deadline: ack_deadline.map(|d| now + d),
            retire_after: None,
            old,
            new,
        }
    }

    /// Stage 2, entered `now`; the old root may leave the bundles after `longest_leaf`.
    #[must_use]
    pub fn to_issuing(&self, now: SystemTime, longest_leaf: Duration) -> Self {
        Self {
            stage: Stage::Issuing,
            revision: self.revision + 1,
            stage_since: now,
            retire_after: Some(now + longest_leaf),
            ..self.clone()
        }
    }

    /// Back to stage 1 from stage 2 (an abort): the old root signs again.
    #[must_use]
    pub fn to_trusting(&self, now: SystemTime) -> Self {
        Self {
            stage: Stage::Trusting,
            revision: self.revision + 1,
            stage_since: now,
            retire_after: None,
            ack_deadline: None,
            ..self.clone()
        }
    }

    /// The SHA-256 fingerprint of the new root, as daemons name it in their [`AckReport`]s.
    pub fn new_root_fingerprint(&self, now: SystemTime) -> Result<String, StoreError> {
        Ok(self
            .new
            .authority(now)?
            .trust_bundle()
            .fingerprints()
            .join(","))
    }

    /// Checks both roots at `now`.
    pub fn authorities(&self, now: SystemTime) -> Result<RotationAuthorities, StoreError> {
        Ok(RotationAuthorities {
            old: self.old.authority(now)?,
            new: self.new.authority(now)?,
        })
    }

    /// The bundle every proxy trusts during the rotation: old root, then new root.
    pub fn trust_bundle(authorities: &RotationAuthorities) -> TrustBundle {
        TrustBundle::new(vec![
            authorities.old.root().clone(),
            authorities.new.root().clone(),
        ])
    }

    /// The persisted form (JSON; it contains both keys, so stores keep it like a key file).
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let record = Record {
            format: FORMAT,
            stage: self.stage,
            revision: self.revision,
            started_at: unix(self.started_at),
            stage_since: unix(self.stage_since),
            ack_deadline: self.ack_deadline.map(unix),
            retire_after: self.retire_after.map(unix),
            old_certificate: self.old.certificate_pem().to_owned(),
            old_key: Zeroizing::new(self.old.key_pem().to_owned()),
            new_certificate: self.new.certificate_pem().to_owned(),
            new_key: Zeroizing::new(self.new.key_pem().to_owned()),
        };
        // Serialising plain strings and numbers cannot fail.
        Zeroizing::new(serde_json::to_vec_pretty(&record).unwrap_or_default())
    }

    /// Reads the persisted form; `location` names where it came from, for errors.
    pub fn from_json(bytes: &[u8], location: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidRotation {
            location: location.to_owned(),
            reason,
        };
        // The format first: a record from a newer meshca is reported as such, not as broken.
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a rotation record: {e}")))?;
        if header.format != FORMAT {
            return Err(invalid(format!(
                "format {} is not the format {FORMAT} this meshca understands (written by a \
                 newer meshca?)",
                header.format
            )));
        }
        let record: Record = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a rotation record: {e}")))?;
        let origin = |what: &str| format!("{location} ({what})");
        Ok(Self {
            stage: record.stage,
            revision: record.revision,
            started_at: from_unix(record.started_at),
            stage_since: from_unix(record.stage_since),
            ack_deadline: record.ack_deadline.map(from_unix),
            retire_after: record.retire_after.map(from_unix),
            old: StoredCa::new(record.old_certificate, record.old_key)
                .with_origins(origin("old root certificate"), origin("old root key")),
            new: StoredCa::new(record.new_certificate, record.new_key)
                .with_origins(origin("new root certificate"), origin("new root key")),
        })
    }
}

impl fmt::Debug for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotation")
            .field("stage", &self.stage)
            .field("revision", &self.revision)
            .field("started_at", &self.started_at)
            .field("stage_since", &self.stage_since)
            .field("ack_deadline", &self.ack_deadline)
            .field("retire_after", &self.retire_after)
            .field("old", &self.old)
            .field("new", &self.new)
            .finish()
    }
}

/// A change to the rotation record, applied only if the stored revision is the expected one.
#[derive(Debug)]
pub enum RotationChange {
    /// Store a first record (expected: no record).
    Begin(Rotation),
    /// Replace the record.
    Update(Rotation),
    /// Make the record's new root the stored CA and remove the record.
    Finish,
    /// Remove the record; the stored CA (the old root) stays.
    Abort,
}

/// What a compare-and-swap did.
#[derive(Debug)]
pub enum Swap {
    /// The change was stored.
    Applied,
    /// Someone else changed the record first; this is what is stored now.
    Stale(Option<Box<Rotation>>),
}

/// What one daemon knows about its proxies during stage 1: how many connected streams hold a
/// trust bundle, and how many acknowledged one containing the new root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckReport {
    /// The daemon (pod name or host name).
    pub replica: String,
    /// SHA-256 fingerprint of the new root the counts are about.
    pub root: String,
    /// Connected streams holding a trust bundle.
    pub streams: usize,
    /// Of those, the ones whose proxy acknowledged a bundle with the new root.
    pub acked: usize,
    /// Some of the callers that have not (at most [`AckReport::MAX_MISSING`]).
    pub missing: Vec<String>,
    /// When the daemon wrote this, seconds since the Unix epoch.
    pub at: u64,
    /// Where the daemon publishes the trust bundle into the cluster (the ConfigMap in every
    /// namespace), which namespaces hold the new root; absent when it publishes none. Read
    /// as absent from reports written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<DistributionReport>,
}

/// Every daemon's latest report as a [`CaStore`](crate::CaStore) holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckReports {
    /// The readable reports.
    pub reports: Vec<AckReport>,
    /// The entries that are not a report (unreadable, too large, not a regular file, not a
    /// report's JSON), each as `<file or key>: <why>`. They count for no daemon: they neither
    /// hold a rotation back nor let it advance, and whoever reads them says so.
    pub unreadable: Vec<String>,
}

impl AckReports {
    /// Sorts an entry read as `name` into the reports or the unreadable ones.
    pub fn push(&mut self, name: &str, bytes: &[u8]) {
        match AckReport::parse(bytes) {
            Ok(report) => self.reports.push(report),
            Err(why) => self.unreadable.push(format!("{name}: {why}")),
        }
    }
}

/// Of the namespaces a daemon keeps the trust bundle ConfigMap in, those holding the new root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributionReport {
    /// Whether the daemon has seen every namespace and ConfigMap yet (until then it cannot
    /// vouch for any, and the report is not complete).
    pub synced: bool,
    /// Namespaces that should hold the bundle.
    pub namespaces: usize,
    /// Of those, the ones whose ConfigMap holds the new root.
    pub holding: usize,
    /// Some of the namespaces still behind (at most [`AckReport::MAX_MISSING`]).
    pub behind: Vec<String>,
}

impl DistributionReport {
    /// Whether every namespace holds the new root.
    pub fn complete(&self) -> bool {
        self.synced && self.holding >= self.namespaces
    }
}

impl AckReport {
    /// How many missing callers a report names.
    pub const MAX_MISSING: usize = 10;

    /// The largest report read; anything larger is left out as unreadable.
    pub const MAX_BYTES: usize = 64 * 1024;

    /// When the report was written.
    pub fn written_at(&self) -> SystemTime {
        from_unix(self.at)
    }

    /// Whether every stream acknowledged, and every namespace the daemon publishes the trust
    /// bundle in holds the new root.
    pub fn complete(&self) -> bool {
        self.acked >= self.streams
            && self
                .distribution
                .as_ref()
                .is_none_or(DistributionReport::complete)
    }

    /// The persisted form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the persisted form; `None` for anything unreadable (a report is advisory, and a
    /// broken one must not block the rotation: it is treated as absent).
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        Self::parse(bytes).ok()
    }

    /// Reads the persisted form, or says why it is not a report: larger than
    /// [`AckReport::MAX_BYTES`] (a report is a few hundred bytes), or not its JSON.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(format!(
                "larger than {} bytes, not a report",
                Self::MAX_BYTES
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("not a report: {e}"))
    }

    /// A replica name safe in a file name or a Secret data key.
    pub fn key_safe(replica: &str) -> String {
        let safe: String = replica
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .take(120)
            .collect();
        if safe.is_empty() || safe.starts_with('.') {
            format!("r{safe}")
        } else {
            safe
        }
    }
}

/// The version of the persisted record this code writes and reads.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Record {
    format: u32,
    stage: Stage,
    revision: u64,
    started_at: u64,
    stage_since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack_deadline: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire_after: Option<u64>,
    old_certificate: String,
    old_key: Zeroizing<String>,
    new_certificate: String,
    new_key: Zeroizing<String>,
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::RootOptions;
    use meshca_provider::SystemClock;

    fn root() -> StoredCa {
        SigningAuthority::generate_root(&RootOptions::default(), &SystemClock)
            .unwrap()
            .to_stored()
    }

    #[test]
    fn the_record_round_trips_and_debug_hides_both_keys() {
        let now = SystemTime::now();
        let begun = Rotation::begin(root(), root(), now, Some(Duration::from_secs(600)));
        let issuing = begun.to_issuing(now, Duration::from_secs(3600));
        let read = Rotation::from_json(&issuing.to_json(), "rotation.json").unwrap();
        assert_eq!(read.stage, Stage::Issuing);
        assert_eq!(read.revision, 2);
        assert_eq!(read.new.key_pem(), issuing.new.key_pem());
        assert_eq!(read.retire_after.map(unix), Some(unix(now) + 3600));
        assert_eq!(read.ack_deadline.map(unix), Some(unix(now) + 600));
        let debug = format!("{read:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        read.authorities(now).unwrap();
    }

    #[test]
    fn a_broken_record_is_refused_with_its_location() {
        let err = Rotation::from_json(b"{\"format\": 1}", "/ca/rotation.json").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/ca/rotation.json"), "{message}");
        assert!(message.contains("Nothing was changed"), "{message}");
        let err = Rotation::from_json(b"{\"format\": 9}", "x").unwrap_err();
        assert!(err.to_string().contains("format"), "{err}");
    }

    #[test]
    fn replica_names_become_safe_keys() {
        assert_eq!(AckReport::key_safe("meshca-7d9f-x2"), "meshca-7d9f-x2");
        assert_eq!(AckReport::key_safe("a/b c"), "a_b_c");
        assert_eq!(AckReport::key_safe(".hidden"), "r.hidden");
        assert_eq!(AckReport::key_safe(""), "r");
    }

    #[test]
    fn a_report_is_complete_only_when_every_namespace_holds_the_new_root() {
        let mut report = AckReport {
            replica: "r".into(),
            root: "new".into(),
            streams: 2,
            acked: 2,
            missing: vec![],
            at: 1,
            distribution: None,
        };
        assert!(report.complete());
        // Reports written before distribution existed read as without one.
        let json = String::from_utf8(report.to_json()).unwrap();
        assert!(!json.contains("distribution"), "{json}");
        assert_eq!(AckReport::from_json(json.as_bytes()), Some(report.clone()));
        report.distribution = Some(DistributionReport {
            synced: true,
            namespaces: 3,
            holding: 2,
            behind: vec!["b".into()],
        });
        assert!(!report.complete());
        assert_eq!(
            AckReport::from_json(&report.to_json()),
            Some(report.clone())
        );
        report.distribution = Some(DistributionReport {
            synced: false,
            namespaces: 0,
            holding: 0,
            behind: vec![],
        });
        assert!(!report.complete(), "nothing listed yet vouches for nothing");
        report.distribution = Some(DistributionReport {
            synced: true,
            namespaces: 3,
            holding: 3,
            behind: vec![],
        });
        assert!(report.complete());
    }
}
