//! `meshca rotate root start|advance|status|abort`: root rotation, one stage at a time.
//!
//! Tresor: every step is a compare-and-swap on the rotation record kept with the CA (see
//! `meshca_tresor::rotate`), so running one by hand while the CronJob runs another is safe.
//! The daemons follow the stored stage by themselves (see [`crate::rotation`]).
//!
//! Vault: the stage is kept in the PKI mount as issuer names (see `meshca_vault`'s `rotate`
//! module); the daemons follow the mount's default issuer (see [`crate::vault_rotation`]) and
//! report their proxies' acknowledgements to the CA store, where `advance` reads them as
//! Tresor's does before it leaves stage 1.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use meshca_provider::{Clock, SystemClock};
use meshca_tresor::rotate::{self, Advance};
use meshca_tresor::{AckSummary, CaStore, Rotation, RotationError, Stage};

use meshca_vault::{
    IssuerInfo, NEXT_ISSUER, RETIRED_PREFIX, VaultAbort, VaultAdvance, VaultProvider,
    VaultRotation, VaultRotationError,
};

use crate::cli::inspect::rfc3339 as display_time;
use crate::config::{Config, ProviderKind};
use crate::providers::BackendHandle;
use crate::stores::ConfiguredStore;

/// `meshca rotate root …`
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum RootAction {
    /// Stage 1: make a new root and trust it everywhere next to the old one (the old root
    /// keeps signing). Does nothing if a rotation is already in progress.
    Start,
    /// Move one stage on, if its condition holds: 1 → 2 once every connected proxy
    /// acknowledged the new root (or rotation.ackDeadline passed); 2 → finished once every
    /// leaf the old root signed has expired. Exits with status 3 when it has to wait.
    Advance,
    /// Show the stage, both roots and the proxies' acknowledgements.
    Status,
    /// Move one stage back: 2 → 1 makes the old root sign again; 1 → none drops the new root.
    Abort,
}

/// A step that could not run yet: printed, and the process exits with status 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Waiting(pub String);

/// Runs a `meshca rotate root` action.
pub async fn run(config: &Config, action: RootAction) -> anyhow::Result<()> {
    if config.certificate_provider.kind == ProviderKind::Vault {
        return run_vault(config, action).await;
    }
    let store = open_store(config).await?;
    let store = store.as_store();
    let clock = SystemClock;
    let policy = config.rotation_policy();
    match action {
        RootAction::Start => {
            let (rotation, started) = rotate::start(
                store,
                &crate::providers::root_options(config),
                &policy,
                &clock,
            )
            .await?;
            if started {
                println!(
                    "meshca: root rotation started in {}: {}",
                    store.describe(),
                    rotation.stage
                );
                println!(
                    "Running daemons pick this up within rotation.pollInterval ({}) and push both \
                     roots to their proxies.",
                    meshca_provider::format_duration(config.rotation.poll_interval)
                );
            } else {
                println!(
                    "meshca: a root rotation is already in progress in {}; nothing changed",
                    store.describe()
                );
            }
            print_status(config, store, &rotation).await?;
            println!("Next: `meshca rotate root advance` once every proxy has the new root.");
            Ok(())
        }
        RootAction::Advance => {
            let outcome = rotate::advance(store, &policy, &clock).await?;
            match outcome {
                Advance::AwaitingAcks { .. } | Advance::AwaitingRetirement { .. } => {
                    Err(Waiting(format!("{outcome}")).into())
                }
                _ => {
                    println!("meshca: {outcome}");
                    Ok(())
                }
            }
        }
        RootAction::Status => match store.load_rotation().await? {
            Some(rotation) => print_status(config, store, &rotation).await,
            None => {
                let ca = store
                    .load()
                    .await?
                    .context("the CA store holds no CA yet: run `meshca bootstrap`")?
                    .authority(clock.now())?;
                println!(
                    "meshca: no root rotation in progress in {}; the CA is {} (SHA-256 {}, \
                     expires {})",
                    store.describe(),
                    crate::cli::inspect::printable(ca.subject()),
                    ca.trust_bundle().fingerprints().join(","),
                    display_time(ca.not_after())
                );
                Ok(())
            }
        },
        RootAction::Abort => {
            let outcome = rotate::abort(store, &clock).await?;
            println!("meshca: {outcome}");
            Ok(())
        }
    }
}

/// `meshca rotate root <action>` for a Vault PKI mount.
async fn run_vault(config: &Config, action: RootAction) -> anyhow::Result<()> {
    let vault = connect_vault(config).await?;
    let now = SystemClock.now();
    let mount = &config.vault.pki_path;
    match action {
        RootAction::Start => {
            let (rotation, started) = vault.start_root_rotation(now).await?;
            if started {
                println!(
                    "meshca: root rotation started in Vault's {mount}: a new issuer {NEXT_ISSUER} \
                     is trusted next to the old one (the old one keeps signing)"
                );
                println!(
                    "Running daemons pick this up within rotation.pollInterval ({}) and push both \
                     roots to their proxies.",
                    meshca_provider::format_duration(config.rotation.poll_interval)
                );
            } else {
                println!(
                    "meshca: a root rotation is already in progress in Vault's {mount}; nothing \
                     changed"
                );
            }
            print_vault_status(config, &rotation);
            println!("Next: `meshca rotate root advance` once every proxy has the new root.");
            Ok(())
        }
        RootAction::Advance => {
            let policy = config.rotation_policy();
            let acked = match vault_ack_gate(config, &vault, now).await? {
                Gate::Open { acknowledged, .. } => acknowledged,
                Gate::Closed(waiting) => return Err(Waiting(waiting).into()),
            };
            match vault
                .advance_root_rotation(
                    policy.longest_leaf,
                    now,
                    acked.as_ref().map(|a| a.0.as_str()),
                )
                .await?
            {
                VaultAdvance::AwaitingRetirement { retire_after } => Err(Waiting(format!(
                    "not advancing: the old root stays trusted until {}, when every leaf it \
                     signed has expired",
                    display_time(retire_after)
                ))
                .into()),
                VaultAdvance::ToIssuing { new } => {
                    println!(
                        "meshca: advanced to stage 2: {new} is Vault's default issuer ({}); the \
                         daemons sign with it once every replica's proxies have acknowledged its \
                         root, and re-issue their certificates",
                        acked.map(|a| a.1).unwrap_or_default()
                    );
                    Ok(())
                }
                VaultAdvance::Unacknowledged { new } => Err(Waiting(format!(
                    "not advancing: the rotation changed meanwhile (its new issuer is now {new}); \
                     run `meshca rotate root advance` again"
                ))
                .into()),
                VaultAdvance::Finished { new, old_id } => {
                    println!(
                        "meshca: rotation finished: {new} is the root; the old issuer {old_id} is \
                         retired ({RETIRED_PREFIX}…, kept in the mount) and leaves the trust \
                         bundles once no leaf a daemon issued under it is unexpired"
                    );
                    Ok(())
                }
                other => bail!("unexpected rotation outcome: {other:?}"),
            }
        }
        RootAction::Status => {
            match vault.root_rotation().await? {
                Some(rotation) => {
                    print_vault_status(config, &rotation);
                    print_vault_acks(config, &rotation, now).await?;
                }
                None => println!(
                    "meshca: no root rotation in progress in Vault's {mount}; its target issuer \
                     (the default, or the role's issuer_ref) is {}",
                    vault
                        .signing_issuer()
                        .map_or_else(|| "Vault's default issuer".to_owned(), |i| i.to_string())
                ),
            }
            Ok(())
        }
        RootAction::Abort => {
            let outcome = match vault.abort_root_rotation().await? {
                VaultAbort::BackToTrusting => format!(
                    "moved back to stage 1: the old issuer is Vault's default again; abort again \
                     to delete the new issuer {NEXT_ISSUER}"
                ),
                VaultAbort::Dropped => format!(
                    "rotation aborted: the new issuer {NEXT_ISSUER} was deleted; trust bundles \
                     carry the old root only"
                ),
                other => bail!("unexpected rotation outcome: {other:?}"),
            };
            println!("meshca: {outcome}");
            Ok(())
        }
    }
}

/// Whether a Vault rotation may leave stage 1 (see [`vault_ack_gate`]).
enum Gate {
    /// Not in stage 1, or it may advance: `acknowledged` is the new issuer's ID with what lets
    /// it (the acknowledgements, and whether the deadline passed).
    Open {
        acknowledged: Option<(String, String)>,
    },
    /// Stage 1 waits: why, as `meshca rotate root advance` prints it.
    Closed(String),
}

/// In stage 1 of a Vault rotation, the same gate as Tresor's: every fresh report in the CA
/// store (one per replica, see [`crate::vault_rotation`]) says all its proxies acknowledged a
/// bundle holding the new root — or `rotation.ackDeadline` has passed since the rotation
/// started. `NotRotating` when there is no rotation.
async fn vault_ack_gate(
    config: &Config,
    vault: &VaultProvider,
    now: std::time::SystemTime,
) -> anyhow::Result<Gate> {
    let Some(rotation) = vault.root_rotation().await? else {
        return Err(VaultRotationError::NotRotating {
            pki_path: config.vault.pki_path.clone(),
        }
        .into());
    };
    let VaultRotation::Trusting { new, .. } = rotation else {
        return Ok(Gate::Open { acknowledged: None });
    };
    let (acks, deadline) = vault_acks(config, &new, now).await?;
    let deadline_passed = deadline.is_some_and(|d| now >= d);
    if !acks.complete() && !deadline_passed {
        return Ok(Gate::Closed(
            Advance::AwaitingAcks { acks, deadline }.to_string(),
        ));
    }
    let why = if acks.complete() {
        acks.to_string()
    } else {
        format!("{acks}; the acknowledgement deadline passed")
    };
    Ok(Gate::Open {
        acknowledged: Some((new.id, why)),
    })
}

/// The replicas' fresh reports about `new`'s root, and when `rotation.ackDeadline` lets stage
/// 1 advance without them.
async fn vault_acks(
    config: &Config,
    new: &IssuerInfo,
    now: std::time::SystemTime,
) -> anyhow::Result<(AckSummary, Option<std::time::SystemTime>)> {
    let store = ConfiguredStore::open(config).await?;
    let fingerprint = meshca_provider::TrustBundle::new(vec![new.root.clone()])
        .fingerprints()
        .join(",");
    let acks = AckSummary::of(
        store.as_store().ack_reports().await?,
        &fingerprint,
        config.rotation_policy().report_freshness,
        now,
    );
    let deadline = config
        .rotation
        .ack_deadline
        .zip(meshca_vault::trusting_since(new))
        .map(|(deadline, since)| since + deadline);
    Ok((acks, deadline))
}

/// `meshca rotate root status`'s acknowledgement lines for a Vault rotation in stage 1, as
/// for Tresor.
async fn print_vault_acks(
    config: &Config,
    rotation: &VaultRotation,
    now: std::time::SystemTime,
) -> anyhow::Result<()> {
    let VaultRotation::Trusting { new, .. } = rotation else {
        return Ok(());
    };
    let (acks, deadline) = vault_acks(config, new, now).await?;
    print_acks(&acks, deadline);
    Ok(())
}

/// The acknowledgement lines of `meshca rotate root status`.
fn print_acks(acks: &AckSummary, deadline: Option<std::time::SystemTime>) {
    println!(
        "proxies:      total {}, acked {}",
        acks.streams(),
        acks.acked()
    );
    for report in &acks.reports {
        println!(
            "  {}: {} of {} acknowledged (reported {})",
            report.replica,
            report.acked.min(report.streams),
            report.streams,
            display_time(report.written_at())
        );
    }
    if acks.stale > 0 {
        println!("  ({} stale report(s) ignored)", acks.stale);
    }
    for unreadable in &acks.unreadable {
        println!("  (not a report, ignored: {unreadable})");
    }
    let missing = acks.missing();
    if !missing.is_empty() {
        println!("waiting for:  {}", missing.join(", "));
    }
    match deadline {
        Some(deadline) => println!("deadline:     {}", display_time(deadline)),
        None => println!("deadline:     none (rotation.ackDeadline)"),
    }
}

/// Why `meshca rotate root` leaves Vault's issuers alone in `vault.mode: upstream`.
const UPSTREAM_ROOTS: &str = "in vault.mode: upstream meshca drives no rotation of Vault's \
    issuers: rotate the root in Vault (a new default issuer); meshca trusts the new root before \
    any leaf under it is served (providers/vault/README.md, Upstream mode)";

async fn connect_vault(config: &Config) -> anyhow::Result<std::sync::Arc<VaultProvider>> {
    if config.vault.mode == meshca_vault::VaultMode::Upstream {
        bail!("{UPSTREAM_ROOTS}");
    }
    match crate::providers::build_with_handle(config, std::sync::Arc::new(SystemClock)).await? {
        (_, Some(BackendHandle::Vault(vault))) => Ok(vault),
        _ => bail!("certificateProvider.kind is vault, but no Vault provider was built"),
    }
}

fn print_vault_status(config: &Config, rotation: &VaultRotation) {
    let issuer = |issuer: Option<&IssuerInfo>| {
        issuer.map_or_else(
            || "(deleted)".to_owned(),
            |issuer| {
                let bundle = meshca_provider::TrustBundle::new(vec![issuer.root.clone()]);
                format!(
                    "{issuer} (root SHA-256 {}, expires {})",
                    bundle.fingerprints().join(","),
                    display_time(issuer.root_not_after)
                )
            },
        )
    };
    println!("mount:        {}", config.vault.pki_path);
    match rotation {
        VaultRotation::Trusting { new, old } => {
            println!("rotation:     stage 1 (bundles trust old + new root; the old issuer signs)");
            println!("old issuer:   {}", issuer(old.as_ref()));
            println!("new issuer:   {}", issuer(Some(new)));
        }
        VaultRotation::Issuing {
            new, old, since, ..
        } => {
            println!(
                "rotation:     stage 2 (bundles trust old + new root; the new issuer is Vault's \
                 default, the daemons sign with it once every replica's proxies acknowledged it)"
            );
            println!("stage since:  {}", display_time(*since));
            println!("old issuer:   {}", issuer(old.as_ref()));
            println!("new issuer:   {}", issuer(Some(new)));
            println!(
                "old root leaves the bundles after {}",
                display_time(*since + config.rotation_policy().longest_leaf)
            );
        }
    }
}

/// The root-rotation step of `meshca rotate` (the CronJob pass): advances a Tresor root
/// rotation by at most one stage. Safe to run from several overlapping passes (and replicas)
/// at once: it never waits for a stage's condition, it looks, acts at most once, and says
/// what it found. `Ok` is the report line (what was done or why nothing was, e.g. "none in
/// progress"); `Err` is what the CronJob should alert on (a store that cannot be read,
/// unusable CA material, a stage 1 stuck for a day).
pub async fn cron_step(config: &Config) -> anyhow::Result<String> {
    match config.certificate_provider.kind {
        ProviderKind::Tresor => {}
        ProviderKind::Vault => return vault_cron_step(config).await,
        kind => {
            return Ok(format!(
                "not meshca's ({} rotates its own root; list the new root in \
                 extraTrustedRoots beforehand)",
                kind.as_str()
            ));
        }
    }
    let store = open_store(config).await?;
    let store = store.as_store();
    match rotate::advance(store, &config.rotation_policy(), &SystemClock).await {
        Ok(Advance::AwaitingAcks { acks, deadline }) => {
            let waiting = store
                .load_rotation()
                .await?
                .and_then(|r| SystemClock.now().duration_since(r.stage_since).ok())
                .unwrap_or_default();
            let message = Advance::AwaitingAcks { acks, deadline }.to_string();
            // Waiting for acknowledgements is normal for a while; a day of it is not.
            if waiting > STUCK_AFTER {
                bail!(
                    "{message} (stuck in stage 1 for {}: find the proxies that do not \
                     acknowledge, or set rotation.ackDeadline)",
                    meshca_provider::format_duration(waiting)
                );
            }
            Ok(message)
        }
        Ok(outcome) => Ok(outcome.to_string()),
        Err(RotationError::NotRotating { .. }) => Ok("none in progress".to_owned()),
        Err(e) => Err(e.into()),
    }
}

/// [`cron_step`] for Vault: advances a rotation of the PKI mount by at most one stage.
async fn vault_cron_step(config: &Config) -> anyhow::Result<String> {
    if config.vault.mode == meshca_vault::VaultMode::Upstream {
        return Ok(format!("not meshca's: {UPSTREAM_ROOTS}"));
    }
    let vault = connect_vault(config).await?;
    let policy = config.rotation_policy();
    let now = SystemClock.now();
    let acked = match vault_ack_gate(config, &vault, now).await {
        Ok(Gate::Open { acknowledged, .. }) => acknowledged,
        Ok(Gate::Closed(message)) => {
            let since = match vault.cached_root_rotation() {
                Some(VaultRotation::Trusting { new, .. }) => meshca_vault::trusting_since(&new),
                _ => None,
            };
            let waiting = since
                .and_then(|since| now.duration_since(since).ok())
                .unwrap_or_default();
            // Waiting for acknowledgements is normal for a while; a day of it is not.
            if waiting > STUCK_AFTER {
                bail!(
                    "{message} (stuck in stage 1 for {}: find the proxies that do not \
                     acknowledge, or set rotation.ackDeadline)",
                    meshca_provider::format_duration(waiting)
                );
            }
            return Ok(message);
        }
        Err(e) => {
            if let Some(VaultRotationError::NotRotating { .. }) = e.downcast_ref() {
                return Ok("none in progress".to_owned());
            }
            return Err(e);
        }
    };
    match vault
        .advance_root_rotation(
            policy.longest_leaf,
            now,
            acked.as_ref().map(|a| a.0.as_str()),
        )
        .await
    {
        Ok(VaultAdvance::ToIssuing { new }) => Ok(format!(
            "advanced to stage 2: {new} is Vault's default issuer ({})",
            acked.map(|a| a.1).unwrap_or_default()
        )),
        Ok(VaultAdvance::Unacknowledged { new }) => Ok(format!(
            "not advancing: the rotation changed meanwhile (its new issuer is now {new})"
        )),
        Ok(VaultAdvance::AwaitingRetirement { retire_after }) => Ok(format!(
            "not advancing: the old root stays trusted until {}",
            display_time(retire_after)
        )),
        Ok(VaultAdvance::Finished { new, .. }) => Ok(format!(
            "rotation finished: {new} is the root, the old issuer is retired"
        )),
        Ok(other) => Ok(format!("{other:?}")),
        Err(VaultRotationError::NotRotating { .. }) => Ok("none in progress".to_owned()),
        Err(e) => Err(e.into()),
    }
}

/// During stage 2 of a Tresor root rotation, a bundle holding the new root alone (what the
/// cron pass checks managed Secrets against); `None` otherwise, or when the store cannot be
/// read (the root step reports that).
pub async fn new_root_while_retiring(config: &Config) -> Option<meshca_provider::TrustBundle> {
    if config.certificate_provider.kind != ProviderKind::Tresor {
        return None;
    }
    let store = ConfiguredStore::open(config).await.ok()?;
    let rotation = store.as_store().load_rotation().await.ok()??;
    if rotation.stage != Stage::Issuing {
        return None;
    }
    let new_root = rotation.new.authority(SystemClock.now()).ok()?;
    Some(new_root.trust_bundle().clone())
}

/// How long stage 1 may wait for acknowledgements before the cron reports it as stuck.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

async fn open_store(config: &Config) -> anyhow::Result<ConfiguredStore> {
    if config.certificate_provider.kind != ProviderKind::Tresor {
        bail!(
            "root rotation is for the built-in CA (certificateProvider.kind: tresor); {} rotates \
             its own root: add the new root to extraTrustedRoots first, so the switch costs no \
             failed handshakes",
            config.certificate_provider.kind.as_str()
        );
    }
    ConfiguredStore::open(config).await
}

async fn print_status(
    config: &Config,
    store: &dyn CaStore,
    rotation: &Rotation,
) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let authorities = rotation.authorities(now)?;
    println!("rotation:     {}", rotation.stage);
    println!("store:        {}", store.describe());
    println!("started:      {}", display_time(rotation.started_at));
    println!("stage since:  {}", display_time(rotation.stage_since));
    for (label, root) in [
        ("old root:", &authorities.old),
        ("new root:", &authorities.new),
    ] {
        println!(
            "{label:<13} {} (SHA-256 {}, expires {})",
            crate::cli::inspect::printable(root.subject()),
            root.trust_bundle().fingerprints().join(","),
            display_time(root.not_after())
        );
    }
    match rotation.stage {
        Stage::Trusting => {
            let acks = rotate::ack_summary(store, rotation, &config.rotation_policy(), now).await?;
            print_acks(&acks, rotation.ack_deadline);
        }
        Stage::Issuing => {
            if let Some(retire_after) = rotation.retire_after {
                println!(
                    "old root leaves the bundles after {}",
                    display_time(retire_after)
                );
            }
        }
    }
    Ok(())
}
