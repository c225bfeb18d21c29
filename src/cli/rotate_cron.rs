//! `meshca rotate` with no command: the pass the Helm CronJob runs.
//!
//! One pass
//! 1. runs the root-rotation step ([`RootRotationStep`], Tresor's is
//!    [`CronRootStep`](crate::cli::rotate_root::CronRootStep)): moves a root rotation in
//!    progress at most one stage;
//! 2. lists the meshca-managed `kubernetes.io/tls` Secrets (those `meshca issue --secret`
//!    writes) and, for each, reads the real NotBefore/NotAfter of its `tls.crt`: a certificate
//!    inside its renewal window (the cache's policy, `renewal.*`) or expired is issued again
//!    through the configured provider — same identity, DNS names, lifetime and key type, from
//!    the Secret's annotations — and the Secret is replaced; the others are not written at all;
//! 3. prints one line per Secret and the totals, and fails (exit 1) when something needs a
//!    person: a renewal failed (an expired Secret that could not be renewed among them), a
//!    Secret's annotations are unusable or name an identity of another namespace, a due
//!    Secret does not prove it holds what it asks for (below), the Secrets could not be
//!    listed, or the root-rotation step failed.
//!
//! # What a renewal may grant
//!
//! Labels and annotations are written by whoever may write Secrets in a namespace, a much
//! weaker right than holding a workload's key. So a renewal grants only what an authorised
//! issuance already granted to that Secret ([`check_proof`]):
//! - the identity on record is in the Secret's own namespace
//!   ([`ManagedTlsSecret::check_namespace`], checked on every pass, due or not);
//! - the current `tls.crt` chains to the trust bundle of the configured provider (the roots
//!   meshca issues under; `extraTrustedRoots` are other CAs' roots and do not count), with
//!   signatures verified by webpki;
//! - its SANs are exactly what the renewal would ask for: the annotated SPIFFE ID as the only
//!   URI SAN (none for a server certificate) and the annotated DNS names, no more, no fewer;
//! - the current `tls.key` is that certificate's private key (proof of possession: a
//!   certificate copied from a TLS handshake does not pass).
//!
//! A Secret failing any of these is not renewed: its line says what failed and to have an
//! admin run `meshca issue --secret` again. A Secret with no readable `tls.crt` or `tls.key`
//! proves nothing and is refused the same way. An expired certificate whose key matches is
//! still renewed: its chain is verified as of one second before its NotAfter (signatures, the
//! validity of the leaf and intermediates then, a root the provider still serves now), so
//! a cron that did not run for a while recovers on its own; what it proves is the same grant,
//! and a root removed from the bundle (a finished root rotation) is not accepted.
//!
//! Several runs may overlap (a slow run and the next schedule, a manual run). Every write is a
//! replace carrying the resourceVersion that was read, so exactly one run renews a Secret: the
//! other gets `409 Conflict`, reads the Secret again, finds it no longer due and reports it as
//! already renewed — not as an error.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use meshca_provider::{CertificateChain, Clock, LeafKey, LeafSpec, SystemClock, TrustBundle};
use zeroize::Zeroizing;

use crate::cache::{RenewPolicy, renew_at};
use crate::cli::inspect::rfc3339;
use crate::cli::issue::issue_validated;
use crate::config::{Config, is_dns_label};
use crate::issuance::Pipeline;
use crate::kubernetes::managed_secret::{
    CERTIFICATE_KEY, DNS_ANNOTATION, IDENTITY_ANNOTATION, LIFETIME_ANNOTATION, MAX_ATTEMPTS,
    PRIVATE_KEY_KEY,
};
use crate::kubernetes::{
    ManagedTlsSecret, Replaced, SecretRef, TlsMaterial, TlsSecretWriter, list_managed,
};
use crate::lifetime::LifetimePolicy;

/// Options of the cron pass (`meshca rotate` without a command).
#[derive(Debug, Args)]
pub struct CronArgs {
    /// Renew the managed Secrets of this namespace (repeatable). Default: `namespace`, meshca's
    /// own — what the Helm chart's Role allows.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// Renew the managed Secrets of every namespace (needs list, get and update on secrets
    /// cluster-wide).
    #[arg(long, conflicts_with = "namespaces")]
    pub all_namespaces: bool,
}

/// The root-rotation step of a cron pass: advances a root rotation by at most one stage.
///
/// Implementations must be safe to run from several overlapping passes (and replicas) at once
/// and must not wait for a stage's condition: they look, act at most once, and say what they
/// found.
#[async_trait::async_trait]
pub trait RootRotationStep: Send + Sync {
    /// Runs the step once. `Ok` is the report line's text (what was done or why nothing was,
    /// e.g. "no rotation in progress"); `Err` is something a CronJob should alert on.
    async fn advance(&self, config: &Config) -> anyhow::Result<String>;
}

/// The root-rotation step this build runs in the pass.
pub fn root_rotation_step() -> Option<&'static dyn RootRotationStep> {
    Some(&crate::cli::rotate_root::CronRootStep)
}

/// Runs the pass with this build's root-rotation step, prints the report, and fails when
/// something needs attention.
pub async fn run(config: &Config, args: CronArgs) -> anyhow::Result<()> {
    let scope = Scope::from_args(config, &args)?;
    let client = crate::kubernetes::connect().await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let report = run_pass(config, client, &scope, clock, root_rotation_step()).await;
    print!("{report}");
    let problems = report.problems();
    if problems > 0 {
        bail!(
            "{problems} problem{} need{} attention (see the report above; exit code 1)",
            if problems == 1 { "" } else { "s" },
            if problems == 1 { "s" } else { "" },
        );
    }
    Ok(())
}

/// Which namespaces a pass looks in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// These namespaces.
    Namespaces(Vec<String>),
    /// Every namespace.
    All,
}

impl Scope {
    /// From the flags; meshca's own namespace when none is named.
    pub fn from_args(config: &Config, args: &CronArgs) -> anyhow::Result<Self> {
        if args.all_namespaces {
            return Ok(Self::All);
        }
        if args.namespaces.is_empty() {
            return Ok(Self::Namespaces(vec![config.namespace.clone()]));
        }
        for namespace in &args.namespaces {
            if !is_dns_label(namespace) {
                bail!(
                    "--namespace {namespace:?} is not a Kubernetes namespace name (lowercase \
                     letters, digits and '-', at most 63 characters)"
                );
            }
        }
        let mut namespaces = args.namespaces.clone();
        namespaces.sort();
        namespaces.dedup();
        Ok(Self::Namespaces(namespaces))
    }

    fn lists(&self) -> Vec<Option<&str>> {
        match self {
            Self::Namespaces(namespaces) => namespaces.iter().map(|n| Some(n.as_str())).collect(),
            Self::All => vec![None],
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Namespaces(namespaces) if namespaces.len() == 1 => {
                write!(f, "namespace {}", namespaces[0])
            }
            Self::Namespaces(namespaces) => write!(f, "namespaces {}", namespaces.join(", ")),
            Self::All => f.write_str("all namespaces"),
        }
    }
}

/// One pass: the root-rotation step, then every managed Secret in `scope`. Never fails as a
/// whole: what went wrong is in the report.
pub async fn run_pass(
    config: &Config,
    client: kube::Client,
    scope: &Scope,
    clock: Arc<dyn Clock>,
    root_step: Option<&dyn RootRotationStep>,
) -> Report {
    // The root step runs first: a stage that switches issuing to a new root then applies to
    // the Secrets this same pass renews (the provider is built after it).
    let root_rotation = match root_step {
        None => RootRotation::NotChecked,
        Some(step) => match step.advance(config).await {
            Ok(summary) => RootRotation::Done(summary),
            Err(error) => RootRotation::Failed(format!("{error:#}")),
        },
    };
    let policy = crate::cli::serve::cache_settings(config).renew_policy();
    let new_root_only = crate::cli::rotate_root::new_root_while_retiring(config).await;
    let mut renewer = Renewer {
        config,
        clock,
        policy,
        pipeline: None,
        bundle: None,
        new_root_only,
    };
    let mut lines = Vec::new();
    for namespace in scope.lists() {
        let listed = match list_managed(client.clone(), namespace).await {
            Ok(listed) => listed,
            Err(error) => {
                let scope = SecretRef {
                    namespace: namespace.unwrap_or("*").to_owned(),
                    name: "*".to_owned(),
                };
                lines.push((
                    scope,
                    Outcome::Failed {
                        reason: format!("cannot list managed Secrets: {error}"),
                        expired: false,
                    },
                ));
                continue;
            }
        };
        for secret in listed {
            let target = secret.writer.target().clone();
            let outcome = renewer.renew_if_due(secret.writer).await;
            lines.push((target, outcome));
        }
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    Report {
        scope: scope.to_string(),
        secrets: lines,
        root_rotation,
    }
}

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
    /// refused ([`check_proof`]).
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
    /// No root-rotation step is plugged into this build.
    NotChecked,
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
            RootRotation::NotChecked => writeln!(
                f,
                "root rotation: not checked (this meshca has no root-rotation step in its cron \
                 pass)"
            )?,
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

/// Renews Secrets through the daemon's issuance pipeline and the configured provider, built on
/// first need (a pass where nothing
/// is due never contacts the backend).
struct Renewer<'a> {
    config: &'a Config,
    clock: Arc<dyn Clock>,
    policy: RenewPolicy,
    /// The issuance pipeline around the provider, or why it could not be built (said once per
    /// due Secret).
    pipeline: Option<Result<Arc<Pipeline>, String>>,
    /// The provider's trust bundle, read once per pass (after the root-rotation step): what a
    /// due Secret's certificate must chain to.
    bundle: Option<TrustBundle>,
    /// During stage 2 of a root rotation, the new root alone: a Secret whose chain does not
    /// verify under it is renewed even before its window opens.
    new_root_only: Option<TrustBundle>,
}

/// A certificate issued for one record, kept across a conflict so that a retry with the same
/// request writes it rather than issuing again.
struct Prepared {
    asked: ManagedTlsSecret,
    record: ManagedTlsSecret,
    material: TlsMaterial,
    serial: String,
}

impl Renewer<'_> {
    /// Whether `certificate_pem` is a chain that does not verify under the new root of a root
    /// rotation at stage 2.
    fn under_retiring_root(&self, certificate_pem: Option<&[u8]>, now: SystemTime) -> bool {
        let Some(new_root) = &self.new_root_only else {
            return false;
        };
        certificate_pem
            .and_then(|pem| std::str::from_utf8(pem).ok())
            .and_then(|text| CertificateChain::from_pem(text).ok())
            .is_some_and(|chain| meshca_provider::verify_chain(&chain, new_root, now).is_err())
    }

    /// Looks at the Secret `writer` holds and renews it if it is due; on a conflicting change
    /// looks again at what is there now, at most [`MAX_ATTEMPTS`] times.
    async fn renew_if_due(&mut self, mut writer: TlsSecretWriter) -> Outcome {
        let mut prepared: Option<Prepared> = None;
        for attempt in 1..=MAX_ATTEMPTS {
            if !writer.exists() {
                return Outcome::Deleted;
            }
            let now = self.clock.now();
            let standing = match standing(writer.certificate_pem(), now, &self.policy) {
                Standing::NotDue { .. }
                    if self.under_retiring_root(writer.certificate_pem(), now) =>
                {
                    Standing::UnderRetiringRoot
                }
                standing => standing,
            };
            let expired = matches!(
                standing,
                Standing::Expired { .. } | Standing::Unreadable { .. }
            );
            // Unusable annotations are reported even before the Secret is due: when it is,
            // this pass could not renew it.
            let asked = match writer.recorded() {
                Some(Ok(record)) => record,
                Some(Err(error)) => {
                    return Outcome::Failed {
                        reason: error.to_string(),
                        expired,
                    };
                }
                None => return Outcome::Deleted,
            };
            if let Err(error) = asked.check_namespace(writer.target()) {
                return Outcome::Failed {
                    reason: error.to_string(),
                    expired,
                };
            }
            if let Standing::NotDue { renew_at } = standing {
                return if attempt == 1 {
                    Outcome::NotDue { renew_at }
                } else {
                    Outcome::AlreadyRenewed { renew_at }
                };
            }
            if let Err(what) = self.check_proof(&writer, &asked, now).await {
                return Outcome::Failed {
                    reason: what,
                    expired,
                };
            }
            let ready = match prepared.take().filter(|p| same_request(&p.asked, &asked)) {
                Some(ready) => ready,
                None => match self.issue(&asked).await {
                    Ok(ready) => ready,
                    Err(error) => {
                        return Outcome::Failed {
                            reason: format!("{error:#}"),
                            expired,
                        };
                    }
                },
            };
            match writer
                .replace_unchanged(&ready.record, &ready.material)
                .await
            {
                Ok(Replaced::Replaced) => {
                    tracing::info!(secret = %writer.target(), serial = %ready.serial, "renewed");
                    return Outcome::Renewed {
                        was: standing,
                        serial: ready.serial.clone(),
                        not_after: ready.record.not_after,
                    };
                }
                Ok(Replaced::Changed) => prepared = Some(ready),
                Err(error) => {
                    return Outcome::Failed {
                        reason: error.to_string(),
                        expired,
                    };
                }
            }
        }
        Outcome::Failed {
            reason: format!(
                "it changed under this run {MAX_ATTEMPTS} times in a row (each update answered \
                 409): something else keeps writing it; find that writer"
            ),
            expired: false,
        }
    }

    /// Issues a certificate for `asked` (identity, DNS names, lifetime, key type), validated
    /// as `meshca issue` does, within `renewal.issueTimeout`.
    async fn issue(&mut self, asked: &ManagedTlsSecret) -> anyhow::Result<Prepared> {
        let spec = spec_for(asked);
        // The annotation is checked like `meshca issue --lifetime`: a Secret edited (or
        // written under a laxer configuration) to ask for more is refused, not renewed.
        LifetimePolicy::for_spec(&self.config.certificate_provider, &spec)
            .check(asked.lifetime)
            .with_context(|| format!("its {LIFETIME_ANNOTATION} annotation"))?;
        let pipeline = self.pipeline().await?;
        let issued = issue_validated(&pipeline, spec, asked.key_type)
            .await
            .with_context(|| format!("{} could not issue it again", pipeline.provider().name()))?;
        let (record, material) = issued.for_managed_secret(&asked.dns, asked.lifetime)?;
        Ok(Prepared {
            asked: asked.clone(),
            serial: issued.info.serial_hex(),
            record,
            material,
        })
    }

    /// Whether the Secret `writer` holds proves that `asked` was granted to it
    /// ([`check_proof`]); `Err` is the report's reason: what failed and what to do.
    async fn check_proof(
        &mut self,
        writer: &TlsSecretWriter,
        asked: &ManagedTlsSecret,
        now: SystemTime,
    ) -> Result<(), String> {
        let bundle = self
            .trust_bundle()
            .await
            .map_err(|e| format!("cannot check it before renewing it: {e:#}"))?;
        check_proof(
            writer.certificate_pem(),
            writer.private_key_pem(),
            &spec_for(asked),
            &bundle,
            now,
        )
        .map_err(|what| {
            format!(
                "{what}; not renewed: meshca renews only a certificate it issued for exactly the \
                 annotated names, held with its own key. If this Secret should hold it, have an \
                 admin issue it again with `meshca issue --secret {} …`; otherwise delete it",
                writer.target()
            )
        })
    }

    /// The provider's trust bundle, read on first need.
    async fn trust_bundle(&mut self) -> anyhow::Result<TrustBundle> {
        if let Some(bundle) = &self.bundle {
            return Ok(bundle.clone());
        }
        let pipeline = self.pipeline().await?;
        let bundle = pipeline.provider_trust_bundle().await.with_context(|| {
            format!(
                "{} could not give its trust bundle",
                pipeline.provider().name()
            )
        })?;
        self.bundle = Some(bundle.clone());
        Ok(bundle)
    }

    /// The issuance pipeline (the daemon's, from the same configuration), built on first need.
    async fn pipeline(&mut self) -> anyhow::Result<Arc<Pipeline>> {
        let built = match &self.pipeline {
            Some(built) => built.clone(),
            None => {
                let built = match crate::providers::build(self.config, self.clock.clone()).await {
                    Ok(provider) => {
                        Pipeline::from_config(self.config, provider, self.clock.clone())
                            .map(Arc::new)
                            .map_err(|e| format!("{e}"))
                    }
                    Err(e) => Err(format!(
                        "cannot set up the {} provider: {e:#}",
                        self.config.certificate_provider.kind.as_str()
                    )),
                };
                self.pipeline = Some(built.clone());
                built
            }
        };
        built.map_err(anyhow::Error::msg)
    }
}

/// What a renewal of `asked` requests.
fn spec_for(asked: &ManagedTlsSecret) -> LeafSpec {
    match &asked.identity {
        Some(identity) => LeafSpec::workload(identity, &asked.dns, asked.lifetime),
        None => LeafSpec::server(asked.dns.clone(), asked.lifetime),
    }
}

/// Why a managed Secret's `tls.crt` and `tls.key` do not prove that what its annotations ask
/// for was granted to it. Never carries Secret data; names from the certificate are shown
/// with `Debug` (control characters escaped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// `tls.crt` or `tls.key` is absent.
    #[error("the Secret has no {key}")]
    Missing {
        /// The data key.
        key: &'static str,
    },
    /// `tls.crt` or `tls.key` cannot be read.
    #[error("{key} is unreadable ({reason})")]
    Unreadable {
        /// The data key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The chain does not verify up to a root of the provider's trust bundle.
    #[error(
        "the certificate in tls.crt does not chain to a root of the trust bundle meshca serves \
         ({reason})"
    )]
    Untrusted {
        /// webpki's reason.
        reason: String,
    },
    /// The leaf's URI SANs are not the annotated identity.
    #[error(
        "its {IDENTITY_ANNOTATION} annotation asks for URI SANs {wanted:?} but the certificate \
         in tls.crt holds URI SANs {held:?}"
    )]
    OtherIdentity {
        /// What a renewal would ask for.
        wanted: Vec<String>,
        /// What the certificate holds.
        held: Vec<String>,
    },
    /// The leaf's DNS SANs are not the annotated DNS names.
    #[error(
        "its {DNS_ANNOTATION} annotation asks for DNS names {wanted:?} but the certificate in \
         tls.crt holds DNS names {held:?}"
    )]
    OtherNames {
        /// What a renewal would ask for.
        wanted: Vec<String>,
        /// What the certificate holds.
        held: Vec<String>,
    },
    /// `tls.key` is not the leaf's private key.
    #[error("tls.key is not the private key of the certificate in tls.crt")]
    KeyMismatch,
}

/// Checks that a managed Secret's `tls.crt` and `tls.key` prove an authorised issuance of
/// what `spec` (the renewal's request) asks for: the chain verifies up to a root of `bundle`
/// (webpki: signatures, validity, key usage); its leaf's SANs are exactly `spec`'s (URI SAN the
/// SPIFFE ID or none, DNS SANs the same set in any order and case); `tls.key` is the leaf's
/// private key. An expired leaf is verified as of one second before its NotAfter, so only time
/// is forgiven.
pub fn check_proof(
    certificate_pem: Option<&[u8]>,
    key_pem: Option<&[u8]>,
    spec: &LeafSpec,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<(), ProofError> {
    let unreadable = |key: &'static str, reason: String| ProofError::Unreadable { key, reason };
    let text = |key: &'static str, pem: Option<&[u8]>| {
        let pem = pem.ok_or(ProofError::Missing { key })?;
        std::str::from_utf8(pem)
            .map(str::to_owned)
            .map_err(|_| unreadable(key, "not PEM text".to_owned()))
    };
    let chain = CertificateChain::from_pem(&text(CERTIFICATE_KEY, certificate_pem)?)
        .map_err(|e| unreadable(CERTIFICATE_KEY, format!("not a PEM chain: {e}")))?;
    let leaf = chain.leaf_info().map_err(|e| {
        unreadable(
            CERTIFICATE_KEY,
            format!("its first certificate cannot be parsed: {e}"),
        )
    })?;
    let at = if now >= leaf.not_after {
        leaf.not_after
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(leaf.not_after)
    } else {
        now
    };
    meshca_provider::verify_chain(&chain, bundle, at).map_err(|e| ProofError::Untrusted {
        reason: e.to_string(),
    })?;
    let wanted: Vec<String> = spec
        .spiffe_id
        .iter()
        .map(|id| id.as_uri().to_owned())
        .collect();
    if leaf.uri_sans != wanted {
        return Err(ProofError::OtherIdentity {
            wanted,
            held: leaf.uri_sans.clone(),
        });
    }
    let wanted: Vec<String> = spec
        .dns_names
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    let held = &leaf.dns_sans;
    let has = |names: &[String], name: &str| names.iter().any(|n| n.eq_ignore_ascii_case(name));
    if !(held.iter().all(|n| has(&wanted, n)) && wanted.iter().all(|n| has(held, n))) {
        return Err(ProofError::OtherNames {
            wanted,
            held: held.clone(),
        });
    }
    // LeafKey reads the key with ring, which refuses a PKCS#8 document whose public half does
    // not belong to its private half; so a matching public half proves possession.
    let key = LeafKey::from_pem(&Zeroizing::new(text(PRIVATE_KEY_KEY, key_pem)?))
        .map_err(|e| unreadable(PRIVATE_KEY_KEY, e.to_string()))?;
    if key.public_key() != leaf.public_key.as_slice() {
        return Err(ProofError::KeyMismatch);
    }
    Ok(())
}

/// Whether two records ask for the same certificate (what was issued may differ).
fn same_request(a: &ManagedTlsSecret, b: &ManagedTlsSecret) -> bool {
    a.identity == b.identity
        && a.dns == b.dns
        && a.lifetime == b.lifetime
        && a.key_type == b.key_type
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

    /// A root valid from `t(0)` to `t(until)` (same subject for every call: only the key tells
    /// two roots apart).
    fn root(
        until: u64,
    ) -> (
        rcgen::Issuer<'static, rcgen::KeyPair>,
        rustls_pki_types::CertificateDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "meshca root");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        params.not_before = time::OffsetDateTime::from(t(0));
        params.not_after = time::OffsetDateTime::from(t(until));
        let der = params.self_signed(&key).unwrap().der().clone();
        (rcgen::Issuer::new(params, key), der)
    }

    /// A leaf for `spec` signed by `issuer`, valid from `t(0)` for an hour: (chain PEM, key PEM).
    fn leaf_pem(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        spec: &LeafSpec,
    ) -> (String, zeroize::Zeroizing<String>) {
        let key = LeafKey::generate(meshca_provider::KeyType::P256).unwrap();
        let names: Vec<String> = spec.dns_names.iter().map(ToString::to_string).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if let Some(id) = &spec.spiffe_id {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(id.to_string().try_into().unwrap()));
        }
        params.not_before = time::OffsetDateTime::from(t(0));
        params.not_after = time::OffsetDateTime::from(t(3600));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.private_key_pem())
    }

    fn web_spec() -> LeafSpec {
        let id = meshca_provider::SpiffeId::from_short(
            "shop/web",
            &meshca_provider::TrustDomain::default(),
        )
        .unwrap();
        LeafSpec::workload(&id, &["web.example.com".parse().unwrap()], HOUR)
    }

    /// Only time is forgiven: an expired leaf with its key is accepted under the root that
    /// signed it, and refused under a lookalike root (same subject, another key).
    #[test]
    fn an_expired_certificate_proves_its_grant_only_time_is_forgiven() {
        const YEAR: u64 = 365 * 24 * 3600;
        let (issuer, root_der) = root(YEAR);
        let (_, lookalike) = root(YEAR);
        let spec = web_spec();
        let (crt, key) = leaf_pem(&issuer, &spec);
        let (crt, key) = (Some(crt.as_bytes()), Some(key.as_bytes()));
        let bundle = TrustBundle::new(vec![root_der]);
        for now in [t(60), t(3600), t(10 * 24 * 3600), t(2 * YEAR)] {
            check_proof(crt, key, &spec, &bundle, now).unwrap();
        }
        let wrong = TrustBundle::new(vec![lookalike]);
        let error = check_proof(crt, key, &spec, &wrong, t(60)).unwrap_err();
        assert!(matches!(error, ProofError::Untrusted { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("the certificate in tls.crt does not chain to a root"),
            "{error}"
        );
    }

    /// The identity and names on record must be exactly the certificate's.
    #[test]
    fn the_names_on_record_must_be_the_certificates() {
        let (issuer, root_der) = root(24 * 3600);
        let bundle = TrustBundle::new(vec![root_der]);
        let spec = web_spec();
        let (crt, key) = leaf_pem(&issuer, &spec);
        let (crt, key) = (Some(crt.as_bytes()), Some(key.as_bytes()));
        let other = meshca_provider::SpiffeId::from_short(
            "payments/payments",
            &meshca_provider::TrustDomain::default(),
        )
        .unwrap();
        let asked = LeafSpec::workload(&other, &spec.dns_names, HOUR);
        let error = check_proof(crt, key, &asked, &bundle, t(60)).unwrap_err();
        assert!(matches!(error, ProofError::OtherIdentity { .. }), "{error}");
        // Fewer names than the certificate holds is not the same grant either.
        let id = spec.spiffe_id.clone().unwrap();
        let fewer = LeafSpec::workload(&id, &[], HOUR);
        let error = check_proof(crt, key, &fewer, &bundle, t(60)).unwrap_err();
        assert!(matches!(error, ProofError::OtherNames { .. }), "{error}");
        // Case does not matter.
        let upper = LeafSpec::workload(&id, &["WEB.example.com".parse().unwrap()], HOUR);
        check_proof(crt, key, &upper, &bundle, t(60)).unwrap();
        let error = check_proof(crt, Some(b"junk"), &spec, &bundle, t(60)).unwrap_err();
        assert!(
            matches!(error, ProofError::Unreadable { key: "tls.key", .. }),
            "{error}"
        );
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
            root_rotation: RootRotation::NotChecked,
        };
        assert_eq!(report.problems(), 1);
        let text = report.to_string();
        let expected = "meshca rotate: 4 managed TLS Secrets in namespace shop\n\
             \x20 shop/a: renewed (serial 0a1b, valid until 2027-01-15T09:00:00Z; due since \
             2027-01-15T08:00:00Z)\n\
             \x20 shop/b: not due (renews after 2027-01-15T08:01:00Z)\n\
             \x20 shop/c: already renewed by another run (renews after 2027-01-15T08:02:00Z)\n\
             \x20 shop/d: failed: EXPIRED, vault said no\n\
             root rotation: not checked (this meshca has no root-rotation step in its cron \
             pass)\n\
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

    #[test]
    fn scope_defaults_to_meshcas_namespace() {
        let config = Config::default();
        let args = |namespaces: &[&str], all: bool| CronArgs {
            namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            all_namespaces: all,
        };
        assert_eq!(
            Scope::from_args(&config, &args(&[], false)).unwrap(),
            Scope::Namespaces(vec!["meshca-system".into()])
        );
        assert_eq!(
            Scope::from_args(&config, &args(&["b", "a", "b"], false)).unwrap(),
            Scope::Namespaces(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            Scope::from_args(&config, &args(&[], true)).unwrap(),
            Scope::All
        );
        let error = Scope::from_args(&config, &args(&["Shop"], false)).unwrap_err();
        assert!(
            error.to_string().contains("--namespace \"Shop\""),
            "{error}"
        );
    }
}
