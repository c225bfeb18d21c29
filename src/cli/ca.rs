//! `meshca bootstrap` and `meshca ca …`: the CA store.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use meshca_provider::{Clock, SystemClock, TrustBundle, TrustDomain, parse_duration};
use meshca_tresor::{
    CaStore, Created, DirectoryStore, IntermediateOptions, Outcome, SigningAuthority, StoredCa,
};

use crate::cli::{inspect, print_stdout};
use crate::config::{Config, ProviderKind, StoreKind};
use crate::providers::tresor_authority;
use crate::stores::{ConfiguredStore, KubernetesSecretStore};

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
        /// Lifetime of the intermediate: at least the longest leaf lifetime allowed
        /// (certificateProvider.maxServerCertValidityDuration or maxServiceCertValidityDuration,
        /// whichever is longer), and ending before this CA does.
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

/// `meshca bootstrap`: where the CA goes and where it comes from.
#[derive(Debug, Default, Args)]
pub struct BootstrapArgs {
    /// Where Tresor keeps its CA: directory or kubernetes (tresor.store).
    #[arg(long, value_enum)]
    pub store: Option<StoreKind>,
    /// Name of the CA bundle Secret (caBundleSecretName, default meshca-ca-bundle; an existing
    /// fsm-ca-bundle can be adopted). Implies --store kubernetes.
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace of the CA bundle Secret (namespace, default meshca-system). Implies --store
    /// kubernetes.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Store this CA instead of generating a root: a PEM chain (the CA certificate first, up to
    /// its root) and its unencrypted PKCS#8 key. With Vault or cert-manager: the root
    /// certificate(s) alone, published as ca.crt.
    #[arg(long, num_args = 1..=2, value_names = ["CERT", "KEY"])]
    pub from_files: Vec<PathBuf>,
}

impl BootstrapArgs {
    /// The configuration with this command's flags applied.
    fn apply(&self, config: &Config) -> anyhow::Result<Config> {
        let mut config = config.clone();
        let names_secret = self.name.is_some() || self.namespace.is_some();
        if let Some(name) = &self.name {
            config.ca_bundle_secret_name.clone_from(name);
        }
        if let Some(namespace) = &self.namespace {
            config.namespace.clone_from(namespace);
        }
        match (self.store, names_secret) {
            (Some(StoreKind::Directory), true) => bail!(
                "--name and --namespace name a Kubernetes Secret, but --store directory keeps \
                 the CA in {}: drop one or the other",
                config.tresor.directory.display()
            ),
            (Some(kind), _) => config.tresor.store = kind,
            (None, true) => config.tresor.store = StoreKind::Kubernetes,
            (None, false) => {}
        }
        config.validate()?;
        Ok(config)
    }
}

/// `meshca bootstrap`: create or adopt the CA (Tresor) or publish the backend's trust bundle
/// (Vault, cert-manager), then describe it.
pub async fn bootstrap(config: &Config, args: BootstrapArgs) -> anyhow::Result<()> {
    let config = args.apply(config)?;
    match config.certificate_provider.kind {
        ProviderKind::Tresor => bootstrap_tresor(&config, &args.from_files).await,
        ProviderKind::Vault | ProviderKind::CertManager => {
            publish_bundle(&config, &args.from_files).await
        }
    }
}

async fn bootstrap_tresor(config: &Config, from_files: &[PathBuf]) -> anyhow::Result<()> {
    let store = ConfiguredStore::open(config).await?;
    let (authority, outcome) = match from_files {
        [] => {
            let signing = tresor_authority(&store, config, &SystemClock).await?;
            (signing.authority, signing.outcome)
        }
        [cert, key] => {
            let checked = read_import(cert, key, &config.trust_domain())?;
            let outcome = match store.as_store().create(&checked).await? {
                Created::Stored => "imported the CA",
                Created::AlreadyExists(found) if same_certificate(&found, &checked) => {
                    "found the same CA already stored"
                }
                Created::AlreadyExists(found) => refuse_replacing(store.as_store(), &found)?,
            };
            let authority = checked.authority(SystemClock.now())?;
            return print_stdout(&format!(
                "meshca: {outcome} in {}\n{}",
                store.as_store().describe(),
                describe_authority(&store, &authority)
            ));
        }
        [_] => bail!(
            "--from-files needs the CA certificate and its key with Tresor: --from-files \
             ca.crt private.key"
        ),
        _ => unreachable!("clap allows one or two files"),
    };
    print_stdout(&format!(
        "meshca: {outcome} in {}\n{}",
        store.as_store().describe(),
        describe_authority(&store, &authority)
    ))
}

/// Where the CA is and what it is, for `bootstrap`'s report.
fn describe_authority(store: &ConfiguredStore, authority: &SigningAuthority) -> String {
    let mut out = String::new();
    for line in store.locations() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(
        out,
        "  subject:        {}",
        inspect::printable(authority.subject())
    );
    for fingerprint in authority.trust_bundle().fingerprints() {
        let _ = writeln!(out, "  root SHA-256:   {fingerprint}");
    }
    let _ = writeln!(
        out,
        "  expires:        {}",
        inspect::rfc3339(authority.not_after())
    );
    let _ = writeln!(out, "Show the root with:\n  {}", store.show_root_command());
    out
}

/// With Vault or cert-manager the CA's key stays in the backend: the Secret carries the trust
/// bundle alone, for proxies and `kubectl` to read.
async fn publish_bundle(config: &Config, from_files: &[PathBuf]) -> anyhow::Result<()> {
    let kind = config.certificate_provider.kind.as_str();
    let bundle = match from_files {
        [] => {
            let provider = crate::providers::build(config, Arc::new(SystemClock)).await?;
            provider
                .trust_bundle()
                .await
                .with_context(|| format!("cannot read the {kind} trust bundle"))?
        }
        [cert] => {
            let text = std::fs::read_to_string(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?;
            TrustBundle::from_pem(&text)
                .with_context(|| format!("{} is not a PEM certificate file", cert.display()))?
        }
        _ => bail!(
            "with certificateProvider.kind={kind} the CA's key stays in {kind}: give only the \
             root certificate, --from-files ca.crt"
        ),
    };
    check_roots(&bundle, SystemClock.now())?;
    let secret = ConfiguredStore::secret(config).await?;
    let outcome = secret.publish_trust_bundle(&bundle).await?;
    let verb = match outcome {
        Outcome::Created => "published",
        Outcome::Loaded => "found",
        Outcome::Adopted => "found (published concurrently)",
    };
    let mut out = format!(
        "meshca: {verb} the {kind} trust bundle in {}\n",
        secret.describe()
    );
    let _ = writeln!(
        out,
        "  Secret:         {}/{} (type Opaque, key {} only: the key stays in {kind})",
        secret.namespace(),
        secret.name(),
        KubernetesSecretStore::CERTIFICATE_KEY
    );
    for fingerprint in bundle.fingerprints() {
        let _ = writeln!(out, "  root SHA-256:   {fingerprint}");
    }
    let _ = writeln!(out, "Show the root with:\n  {}", secret.show_root_command());
    print_stdout(&out)
}

/// A trust bundle worth publishing: at least one certificate, each a CA, none expired.
fn check_roots(bundle: &TrustBundle, now: std::time::SystemTime) -> anyhow::Result<()> {
    if bundle.is_empty() {
        bail!("the trust bundle holds no certificate");
    }
    for root in bundle.roots() {
        let info = meshca_provider::CertificateInfo::parse(root)?;
        if !info.is_ca {
            bail!(
                "{} is not a CA certificate (basicConstraints CA:false): give the issuing root",
                inspect::printable(&info.subject)
            );
        }
        if info.not_after <= now {
            bail!(
                "{} expired at {}: a bundle with an expired root would break every proxy",
                inspect::printable(&info.subject),
                inspect::rfc3339(info.not_after)
            );
        }
    }
    Ok(())
}

/// Reads and checks CA material to import: usable (see [`StoredCa::import`]), and, for an
/// intermediate with a SPIFFE ID, made for `trust_domain`.
fn read_import(cert: &Path, key: &Path, trust_domain: &TrustDomain) -> anyhow::Result<StoredCa> {
    let refusing = || format!("refusing to import {} / {}", cert.display(), key.display());
    let offered = StoredCa::read_files(cert, key)?;
    let now = SystemClock.now();
    let checked = StoredCa::import(offered.certificate_pem(), offered.key_pem(), now)
        .with_context(refusing)?;
    checked
        .authority(now)?
        .check_trust_domain(trust_domain)
        .with_context(refusing)?;
    Ok(checked)
}

fn same_certificate(a: &StoredCa, b: &StoredCa) -> bool {
    let first = |ca: &StoredCa| {
        meshca_provider::x509::certificates_from_pem(ca.certificate_pem())
            .ok()
            .and_then(|chain| chain.into_iter().next())
    };
    first(a).is_some() && first(a) == first(b)
}

/// `meshca ca …`
pub async fn run(config: &Config, command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init => bootstrap(config, BootstrapArgs::default()).await,
        CaCommand::Show => {
            let stored = load_existing(config).await?;
            let chain = meshca_provider::x509::certificates_from_pem(stored.certificate_pem())?;
            print_stdout(&inspect::describe(&chain, SystemClock.now())?)
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
                None => print_stdout(&pem)?,
            }
            Ok(())
        }
        CaCommand::Import { cert, key } => {
            let checked = read_import(&cert, &key, &config.trust_domain())?;
            let store = ConfiguredStore::open(config).await?;
            store_new(store.as_store(), &checked).await?;
            print_stdout(&format!(
                "meshca: imported the CA into {}\n",
                store.as_store().describe()
            ))
        }
        CaCommand::Intermediate {
            cluster,
            for_trust_domain,
            lifetime,
            out_dir,
        } => {
            let what = "intermediate (--lifetime)";
            crate::lifetime::check_ca_lifetime(
                what,
                lifetime,
                config.certificate_provider.longest_leaf(),
            )?;
            let trust_domain = match for_trust_domain {
                Some(name) => TrustDomain::new(&name)?,
                None => config.trust_domain(),
            };
            let stored = load_existing(config).await?;
            let now = SystemClock.now();
            let authority = stored.authority(now)?;
            crate::lifetime::check_within_issuer(
                what,
                lifetime,
                now,
                authority.subject(),
                authority.not_after(),
            )?;
            let mut options = IntermediateOptions::new(cluster.clone(), trust_domain);
            options.lifetime = lifetime;
            let intermediate = authority.sign_intermediate(&options, &SystemClock)?;
            let out = DirectoryStore::new(&out_dir);
            store_new(&out, &intermediate.to_stored()).await?;
            print_stdout(&format!(
                "meshca: wrote the intermediate for cluster {cluster} to {}\nUse it in that \
                 cluster with --ca-dir {} (or: meshca ca import --cert {} --key {})\n",
                out.describe(),
                out_dir.display(),
                out.certificate_path().display(),
                out.key_path().display()
            ))
        }
    }
}

async fn load_existing(config: &Config) -> anyhow::Result<StoredCa> {
    let store = ConfiguredStore::open(config).await?;
    let store = store.as_store();
    match store.load().await? {
        Some(stored) => Ok(stored),
        None => bail!(
            "no CA in {}: create one with `meshca bootstrap` or import one with `meshca ca import`",
            store.describe()
        ),
    }
}

async fn store_new(store: &dyn CaStore, ca: &StoredCa) -> anyhow::Result<()> {
    match store.create(ca).await? {
        Created::Stored => Ok(()),
        Created::AlreadyExists(found) => refuse_replacing(store, &found),
    }
}

fn refuse_replacing<T>(store: &dyn CaStore, found: &StoredCa) -> anyhow::Result<T> {
    let fingerprints = found
        .authority(SystemClock.now())
        .map(|a| a.trust_bundle().fingerprints().join(", "))
        .unwrap_or_else(|e| format!("unreadable: {e}"));
    bail!(
        "{} already holds a CA (root {fingerprints}); refusing to replace it. Nothing was \
         changed: move it away first if you really mean to replace the CA",
        store.describe()
    )
}
