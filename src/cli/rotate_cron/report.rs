//! What a cron pass found and did: where each managed Secret's certificate stands against the
//! renewal policy ([`standing`]), what happened to it ([`Outcome`]), and the printed
//! [`Report`].

use std::fmt;
use std::time::SystemTime;

use meshca_provider::CertificateChain;

use crate::cache::{RenewPolicy, renew_at};
use crate::cli::inspect::rfc3339;
use crate::kubernetes::SecretRef;

/// Where a certificate stands against the renewal policy at one moment.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// Outside its renewal window, which opens at `renew_at`.
    NotDue {
        /// When the window opens: the first pass after this renews it.
        renew_at: SystemTime,
    },
    /// Inside its renewal window since `since`, not expired.
    Due {
        /// When the window opened.
        since: SystemTime,
    },
    /// Expired at `since`.
    Expired {
        /// Its NotAfter.
        since: SystemTime,
    },
    /// No certificate can be read from `tls.crt`. Due, but such a Secret proves nothing and is
    /// refused ([`check_proof`](super::check_proof)).
    Unreadable {
        /// Why.
        reason: String,
    },
    /// Signed under the root a root rotation is retiring (stage 2): renewed now, so that
    /// nothing under the old root is left when it leaves the trust bundles.
    UnderRetiringRoot,
}

impl Standing {
    /// Whether a pass renews it now.
    pub fn is_due(&self) -> bool {
        !matches!(self, Self::NotDue { .. })
    }
}

/// Where the leaf of `certificate_pem` (a Secret's `tls.crt`) stands at `now`: the cache's
/// renewal point without jitter — a pass runs once per schedule, so the time it prints is the
/// time it acts on.
pub fn standing(certificate_pem: Option<&[u8]>, now: SystemTime, policy: &RenewPolicy) -> Standing {
    let Some(pem) = certificate_pem else {
        return Standing::Unreadable {
            reason: "the Secret has no tls.crt".to_owned(),
        };
    };
    let leaf = std::str::from_utf8(pem)
        .map_err(|_| "tls.crt is not PEM text".to_owned())
        .and_then(|text| {
            CertificateChain::from_pem(text).map_err(|e| format!("tls.crt is not a PEM chain: {e}"))
        })
        .and_then(|chain| {
            chain
                .leaf_info()
                .map_err(|e| format!("tls.crt's first certificate cannot be parsed: {e}"))
        });
    let leaf = match leaf {
        Ok(leaf) => leaf,
        Err(reason) => return Standing::Unreadable { reason },
    };
    if now >= leaf.not_after {
        return Standing::Expired {
            since: leaf.not_after,
        };
    }
    let renew_at = renew_at(leaf.not_before, leaf.not_after, policy, 0.0);
    if now >= renew_at {
        Standing::Due { since: renew_at }
    } else {
        Standing::NotDue { renew_at }
    }
}

/// What the pass did with one Secret.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Issued again and replaced.
    Renewed {
        /// Why it was renewed.
        was: Standing,
        /// The new leaf's serial, hex.
        serial: String,
        /// The new leaf's NotAfter.
        not_after: SystemTime,
    },
    /// Left untouched: its window opens later.
    NotDue {
        /// When.
        renew_at: SystemTime,
    },
    /// Another writer (an overlapping run) replaced it first; what it wrote is not due.
    AlreadyRenewed {
        /// When the new certificate's window opens.
        renew_at: SystemTime,
    },
    /// Deleted while this pass renewed it; nothing written.
    Deleted,
    /// Needs a person.
    Failed {
        /// What went wrong and what to do.
        reason: String,
        /// The Secret's certificate has expired (or cannot be read): workloads using it fail.
        expired: bool,
    },
}

/// The root-rotation line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootRotation {
    /// The step ran: what it did.
    Done(String),
    /// The step failed: why.
    Failed(String),
}

/// What a pass did, printed one line per Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Where it looked.
    pub scope: String,
    /// Each Secret and what happened to it, by `namespace/name`.
    pub secrets: Vec<(SecretRef, Outcome)>,
    /// The root-rotation step.
    pub root_rotation: RootRotation,
}

impl Report {
    /// How many things a CronJob should alert on.
    pub fn problems(&self) -> usize {
        let failed = self
            .secrets
            .iter()
            .filter(|(_, outcome)| matches!(outcome, Outcome::Failed { .. }))
            .count();
        failed + usize::from(matches!(self.root_rotation, RootRotation::Failed(_)))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self
            .secrets
            .iter()
            .filter(|(target, _)| target.name != "*")
            .count();
        writeln!(
            f,
            "meshca rotate: {count} managed TLS Secret{} in {}",
            if count == 1 { "" } else { "s" },
            self.scope
        )?;
        let (mut renewed, mut not_due, mut already, mut deleted, mut failed) = (0, 0, 0, 0, 0);
        for (target, outcome) in &self.secrets {
            write!(f, "  {target}: ")?;
            match outcome {
                Outcome::Renewed {
                    was,
                    serial,
                    not_after,
                } => {
                    renewed += 1;
                    let why = match was {
                        Standing::Due { since } => format!("due since {}", rfc3339(*since)),
                        Standing::Expired { since } => {
                            format!("had expired at {}", rfc3339(*since))
                        }
                        Standing::Unreadable { reason } => reason.clone(),
                        Standing::UnderRetiringRoot => {
                            "it was signed under the root being retired".to_owned()
                        }
                        Standing::NotDue { .. } => "renewed".to_owned(),
                    };
                    writeln!(
                        f,
                        "renewed (serial {serial}, valid until {}; {why})",
                        rfc3339(*not_after)
                    )?;
                }
                Outcome::NotDue { renew_at } => {
                    not_due += 1;
                    writeln!(f, "not due (renews after {})", rfc3339(*renew_at))?;
                }
                Outcome::AlreadyRenewed { renew_at } => {
                    already += 1;
                    writeln!(
                        f,
                        "already renewed by another run (renews after {})",
                        rfc3339(*renew_at)
                    )?;
                }
                Outcome::Deleted => {
                    deleted += 1;
                    writeln!(f, "deleted during this run; nothing written")?;
                }
                Outcome::Failed { reason, expired } => {
                    failed += 1;
                    let expired = if *expired { "EXPIRED, " } else { "" };
                    writeln!(f, "failed: {expired}{reason}")?;
                }
            }
        }
        match &self.root_rotation {
            RootRotation::Done(summary) => writeln!(f, "root rotation: {summary}")?,
            RootRotation::Failed(reason) => writeln!(f, "root rotation: failed: {reason}")?,
        }
        write!(
            f,
            "totals: {renewed} renewed, {not_due} not due, {already} already renewed"
        )?;
        if deleted > 0 {
            write!(f, ", {deleted} deleted meanwhile")?;
        }
        writeln!(f, ", {failed} failed")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// A self-signed certificate valid from `not_before` to `not_after`, PEM.
    fn certificate(not_before: SystemTime, not_after: SystemTime) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["web.example.com".into()]).unwrap();
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn policy() -> RenewPolicy {
        RenewPolicy {
            fraction: 0.5,
            jitter_fraction: 0.1,
            floor: Duration::from_secs(60),
        }
    }

    #[test]
    fn standing_follows_the_cache_policy_without_jitter() {
        let pem = certificate(t(0), t(4 * 3600));
        let pem = Some(pem.as_bytes());
        // Halfway is the renewal point; jitter_fraction is ignored.
        assert_eq!(
            standing(pem, t(3600), &policy()),
            Standing::NotDue {
                renew_at: t(2 * 3600)
            }
        );
        assert_eq!(
            standing(pem, t(2 * 3600), &policy()),
            Standing::Due { since: t(2 * 3600) }
        );
        assert_eq!(
            standing(pem, t(4 * 3600), &policy()),
            Standing::Expired { since: t(4 * 3600) }
        );
        // The floor: a late fraction still renews a minute before NotAfter.
        let late = RenewPolicy {
            fraction: 1.0,
            ..policy()
        };
        assert_eq!(
            standing(pem, t(4 * 3600 - 60), &late),
            Standing::Due {
                since: t(4 * 3600 - 60)
            }
        );
    }

    #[test]
    fn unreadable_certificates_are_due() {
        let cases: [(Option<&[u8]>, &str); 4] = [
            (None, "the Secret has no tls.crt"),
            (Some(b"\xff\xfe"), "tls.crt is not PEM text"),
            (Some(b"hello"), "tls.crt is not a PEM chain"),
            (
                Some(b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n"),
                "tls.crt's first certificate cannot be parsed",
            ),
        ];
        for (pem, expected) in cases {
            let got = standing(pem, t(0), &policy());
            assert!(got.is_due());
            match got {
                Standing::Unreadable { reason } => {
                    assert!(reason.starts_with(expected), "{reason}");
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    fn secret(name: &str) -> SecretRef {
        SecretRef::new("shop", name).unwrap()
    }

    #[test]
    fn the_report_has_a_line_per_secret_and_counts_problems() {
        let report = Report {
            scope: "namespace shop".into(),
            secrets: vec![
                (
                    secret("a"),
                    Outcome::Renewed {
                        was: Standing::Due { since: t(0) },
                        serial: "0a1b".into(),
                        not_after: t(HOUR.as_secs()),
                    },
                ),
                (secret("b"), Outcome::NotDue { renew_at: t(60) }),
                (secret("c"), Outcome::AlreadyRenewed { renew_at: t(120) }),
                (
                    secret("d"),
                    Outcome::Failed {
                        reason: "vault said no".into(),
                        expired: true,
                    },
                ),
            ],
            root_rotation: RootRotation::Done("none in progress".into()),
        };
        assert_eq!(report.problems(), 1);
        let text = report.to_string();
        let expected = "meshca rotate: 4 managed TLS Secrets in namespace shop\n\
             \x20 shop/a: renewed (serial 0a1b, valid until 2027-01-15T09:00:00Z; due since \
             2027-01-15T08:00:00Z)\n\
             \x20 shop/b: not due (renews after 2027-01-15T08:01:00Z)\n\
             \x20 shop/c: already renewed by another run (renews after 2027-01-15T08:02:00Z)\n\
             \x20 shop/d: failed: EXPIRED, vault said no\n\
             root rotation: none in progress\n\
             totals: 1 renewed, 1 not due, 1 already renewed, 1 failed\n";
        assert_eq!(text, expected);

        let failed_root = Report {
            root_rotation: RootRotation::Failed("stage file unreadable".into()),
            secrets: Vec::new(),
            ..report
        };
        assert_eq!(failed_root.problems(), 1);
        assert!(
            failed_root
                .to_string()
                .contains("\nroot rotation: failed: stage file unreadable\n")
        );
    }
}
