//! `meshca issue`: one certificate to files, for bootstrap client certificates, webhooks and
//! gateways.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use meshca_provider::{
    Clock, IssueRequest, KeyType, LeafKey, LeafSpec, SpiffeId, SystemClock, format_duration,
};

use crate::cache::validate::{ChainCheck, validate};
use crate::cli::ca::parse_duration_arg;
use crate::config::Config;

/// `meshca issue` options.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Workload identity `<namespace>/<service-account>`: the certificate carries its SPIFFE ID.
    #[arg(long)]
    pub identity: Option<String>,
    /// Extra DNS name (repeatable). Without --identity, a server certificate for these names.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// Lifetime (default: certificateProvider.serviceCertValidityDuration).
    #[arg(long, value_parser = parse_duration_arg)]
    pub lifetime: Option<Duration>,
    /// Key type (default: certificateProvider.keyType).
    #[arg(long)]
    pub key_type: Option<KeyType>,
    /// Directory to write cert.pem, key.pem (mode 0600) and ca.pem into.
    #[arg(long)]
    pub out_dir: PathBuf,
}

/// Issues and writes the files.
pub async fn run(config: &Config, args: IssueArgs) -> anyhow::Result<()> {
    let lifetime = args
        .lifetime
        .unwrap_or(config.certificate_provider.service_cert_validity_duration);
    if lifetime.is_zero() {
        bail!("--lifetime must be above zero");
    }
    let key_type = args
        .key_type
        .unwrap_or(config.certificate_provider.key_type);
    let spec = match &args.identity {
        Some(identity) => {
            let id = SpiffeId::from_short(identity, &config.trust_domain())
                .with_context(|| format!("--identity {identity}"))?;
            LeafSpec::workload(&id, &args.dns, lifetime)
        }
        None if args.dns.is_empty() => {
            bail!(
                "say what to certify: --identity <namespace>/<service-account>, or --dns NAME for a server certificate"
            )
        }
        None => LeafSpec::server(args.dns.clone(), lifetime),
    };

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let provider = crate::providers::build(config, clock.clone()).await?;
    provider.capabilities().check(&spec, key_type)?;
    let key = tokio::task::spawn_blocking(move || LeafKey::generate(key_type))
        .await
        .context("key generation was interrupted")??;
    let chain = provider
        .issue(&IssueRequest {
            spec: &spec,
            key: &key,
        })
        .await?;
    let bundle = provider.trust_bundle().await?;
    let check = ChainCheck::for_provider(provider.capabilities());
    let info = validate(&chain, &bundle, &spec, &key, clock.now(), check).map_err(|rejection| {
        anyhow::anyhow!(
            "{} returned a certificate meshca will not hand out: {}",
            provider.name(),
            rejection.reason
        )
    })?;

    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let cert_path = args.out_dir.join("cert.pem");
    let key_path = args.out_dir.join("key.pem");
    let ca_path = args.out_dir.join("ca.pem");
    write_file(&key_path, key.private_key_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, chain.to_pem().as_bytes(), 0o644)?;
    write_file(&ca_path, bundle.to_pem().as_bytes(), 0o644)?;

    let subject = spec
        .spiffe_id
        .as_ref()
        .map_or_else(|| spec.dns_names.join(", "), ToString::to_string);
    println!(
        "meshca: issued {subject} ({key_type}, serial {})",
        info.serial_hex()
    );
    println!(
        "  valid {} → {} ({})",
        crate::cli::inspect::rfc3339(info.not_before),
        crate::cli::inspect::rfc3339(info.not_after),
        format_duration(info.lifetime())
    );
    println!("  {}  certificate chain", cert_path.display());
    println!("  {}  private key (mode 0600)", key_path.display());
    println!("  {}  trust bundle", ca_path.display());
    println!(
        "Verify: openssl verify -CAfile {} {}",
        ca_path.display(),
        cert_path.display()
    );
    Ok(())
}

/// Writes `contents` to `path` through a temporary file in the same directory created with
/// `mode` (so a key is never readable by others, not even briefly), then renames it into place.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
