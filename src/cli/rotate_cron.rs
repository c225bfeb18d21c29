//! `meshca rotate` with no command: the pass the Helm CronJob runs.
//!
//! One pass
//! 1. runs the root-rotation step ([`rotate_root::cron_step`]): moves a Tresor root rotation
//!    in progress at most one stage;
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
//!
//! This file runs the pass and renews; `rotate_cron/report.rs` says where each Secret stands
//! and prints what the pass did; `rotate_cron/proof.rs` checks what a Secret proves before it
//! is renewed.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use clap::Args;
use meshca_provider::{CertificateChain, Clock, LeafSpec, SystemClock, TrustBundle};

use crate::cache::RenewPolicy;
use crate::cli::issue::issue_validated;
use crate::cli::rotate_root;
use crate::config::{Config, is_dns_label};
use crate::issuance::Pipeline;
use crate::kubernetes::managed_secret::{LIFETIME_ANNOTATION, MAX_ATTEMPTS};
use crate::kubernetes::{
    ManagedTlsSecret, Replaced, SecretRef, TlsMaterial, TlsSecretWriter, list_managed,
};

mod proof;
mod report;

pub use proof::{ProofError, check_proof};
pub use report::{Outcome, Report, RootRotation, Standing, standing};

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

/// Runs the pass, prints the report, and fails when something needs attention.
pub async fn run(config: &Config, args: CronArgs) -> anyhow::Result<()> {
    let scope = Scope::from_args(config, &args)?;
    let client = crate::kubernetes::connect().await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let report = run_pass(config, client, &scope, clock).await;
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
) -> Report {
    // The root step runs first: a stage that switches issuing to a new root then applies to
    // the Secrets this same pass renews (the provider is built after it).
    let root_rotation = match rotate_root::cron_step(config).await {
        Ok(summary) => RootRotation::Done(summary),
        Err(error) => RootRotation::Failed(format!("{error:#}")),
    };
    let policy = crate::cli::serve::cache_settings(config).renew_policy();
    let new_root_only = rotate_root::new_root_while_retiring(config).await;
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
        self.config
            .certificate_provider
            .lifetime_policy_for(&spec)
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
                    Ok(provider) => self
                        .config
                        .pipeline_settings()
                        .map(|settings| {
                            Arc::new(Pipeline::new(provider, settings, self.clock.clone()))
                        })
                        .map_err(|e| format!("{e}")),
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
    use super::*;

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
