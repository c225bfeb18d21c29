//! `meshca bootstrap` and `meshca ca …`: the CA store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use meshca_provider::{Clock, SystemClock, TrustDomain, parse_duration};
use meshca_tresor::{CaStore, Created, DirectoryStore, IntermediateOptions, StoredCa};

use crate::cli::inspect;
use crate::config::Config;
use crate::providers::{tresor_authority, tresor_store};

/// `meshca ca …`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the root in the CA store if absent, or load and check the existing one
    /// (same as `meshca bootstrap`).
    Init,
    /// Show the CA certificate and its chain.
    Show,
    /// Write the trust bundle (the root certificates) as PEM.
    Export {
        /// File to write; standard output when absent.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Bring your own CA: store a root, or an intermediate followed by its chain up to the
    /// root, with its private key. Refuses when the store already holds a CA.
    Import {
        /// PEM file: the CA certificate first, then its issuers up to the root.
        #[arg(long)]
        cert: PathBuf,
        /// PEM file: the CA's unencrypted PKCS#8 private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Sign a per-cluster intermediate CA with this CA, into a new CA store directory that the
    /// other cluster's meshca uses as `tresor.directory` (or imports with `ca import`).
    Intermediate {
        /// The cluster's name (in the intermediate's subject).
        #[arg(long)]
        cluster: String,
        /// The cluster's trust domain (default: this configuration's trustDomain).
        #[arg(long = "for-trust-domain")]
        for_trust_domain: Option<String>,
        /// Lifetime of the intermediate (cut short where this CA ends).
        #[arg(long, default_value = "8760h", value_parser = parse_duration_arg)]
        lifetime: Duration,
        /// Directory to create: ca.crt (intermediate + chain to the root), private.key (0600).
        #[arg(long)]
        out_dir: PathBuf,
    },
}

pub(crate) fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// `meshca bootstrap`: create or adopt, then describe.
pub async fn bootstrap(config: &Config) -> anyhow::Result<()> {
    let (authority, outcome) = tresor_authority(config, &SystemClock).await?;
    let store = tresor_store(config);
    println!("meshca: {outcome} in {}", store.describe());
    println!("  CA certificate: {}", store.certificate_path().display());
    println!(
        "  private key:    {} (mode 0600)",
        store.key_path().display()
    );
    println!("  subject:        {}", authority.subject());
    for fingerprint in authority.trust_bundle().fingerprints() {
        println!("  root SHA-256:   {fingerprint}");
    }
    println!(
        "  expires:        {}",
        inspect::rfc3339(authority.not_after())
    );
    println!(
        "Show it with: openssl x509 -text -noout -in {}",
        store.certificate_path().display()
    );
    Ok(())
}

/// `meshca ca …`
pub async fn run(config: &Config, command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init => bootstrap(config).await,
        CaCommand::Show => {
            let stored = load_existing(config).await?;
            let chain = meshca_provider::x509::certificates_from_pem(stored.certificate_pem())?;
            print!("{}", inspect::describe(&chain, SystemClock.now())?);
            Ok(())
        }
        CaCommand::Export { out } => {
            let stored = load_existing(config).await?;
            let authority = stored.authority(SystemClock.now())?;
            let pem = authority.trust_bundle().to_pem();
            match out {
                Some(path) => {
                    std::fs::write(&path, pem)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("meshca: wrote the trust bundle to {}", path.display());
                }
                None => print!("{pem}"),
            }
            Ok(())
        }
        CaCommand::Import { cert, key } => {
            let offered = StoredCa::read_files(&cert, &key)?;
            let checked = StoredCa::import(
                offered.certificate_pem(),
                offered.key_pem(),
                SystemClock.now(),
            )
            .with_context(|| {
                format!("refusing to import {} / {}", cert.display(), key.display())
            })?;
            let store = tresor_store(config);
            store_new(&store, &checked).await?;
            println!("meshca: imported the CA into {}", store.describe());
            Ok(())
        }
        CaCommand::Intermediate {
            cluster,
            for_trust_domain,
            lifetime,
            out_dir,
        } => {
            let stored = load_existing(config).await?;
            let authority = stored.authority(SystemClock.now())?;
            let trust_domain = match for_trust_domain {
                Some(name) => TrustDomain::new(&name)?,
                None => config.trust_domain(),
            };
            let mut options = IntermediateOptions::new(cluster.clone(), trust_domain);
            options.lifetime = lifetime;
            let intermediate = authority.sign_intermediate(&options, &SystemClock)?;
            let out = DirectoryStore::new(&out_dir);
            store_new(&out, &intermediate.to_stored()).await?;
            println!(
                "meshca: wrote the intermediate for cluster {cluster} to {}",
                out.describe()
            );
            println!(
                "Use it in that cluster with --ca-dir {} (or: meshca ca import --cert {} --key {})",
                out_dir.display(),
                out.certificate_path().display(),
                out.key_path().display()
            );
            Ok(())
        }
    }
}

async fn load_existing(config: &Config) -> anyhow::Result<StoredCa> {
    let store = tresor_store(config);
    match store.load().await? {
        Some(stored) => Ok(stored),
        None => bail!(
            "no CA in {}: create one with `meshca bootstrap` or import one with `meshca ca import`",
            store.describe()
        ),
    }
}

async fn store_new(store: &DirectoryStore, ca: &StoredCa) -> anyhow::Result<()> {
    match store.create(ca).await? {
        Created::Stored => Ok(()),
        Created::AlreadyExists(found) => {
            let fingerprints = found
                .authority(SystemClock.now())
                .map(|a| a.trust_bundle().fingerprints().join(", "))
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            bail!(
                "{} already holds a CA (root {fingerprints}); refusing to replace it. Move it \
                 away first if you really mean to replace the CA",
                store.describe()
            )
        }
    }
}
