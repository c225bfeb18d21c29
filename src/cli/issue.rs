//! `meshca issue`: one certificate to files or to a managed `kubernetes.io/tls` Secret, for
//! bootstrap client certificates, webhooks and gateways.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use meshca_provider::x509::Fingerprint;
use meshca_provider::{
    CertificateChain, CertificateInfo, Clock, DnsName, KeyType, LeafKey, LeafSpec, SpiffeId,
    SystemClock, TrustBundle, format_duration,
};

use crate::cli::ca::parse_duration_arg;
use crate::cli::out_dir::{OutDir, OutFile};
use crate::config::Config;
use crate::issuance::{KeySource, Pipeline};
use crate::kubernetes::{ManagedTlsSecret, SecretRef, TlsMaterial, TlsSecretWriter, Written};

/// `meshca issue` options.
#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("destination")
        .required(true)
        .multiple(false)
        .args(["out_dir", "secret"])
))]
pub struct IssueArgs {
    /// Workload identity `<namespace>/<service-account>`: the certificate carries its SPIFFE ID.
    #[arg(long)]
    pub identity: Option<String>,
    /// DNS name (repeatable), a valid hostname: with --identity, added beside the SPIFFE ID
    /// (a workload certificate has none unless asked); without, a server certificate for these
    /// names. Duplicates are dropped; names are written in lowercase.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// Accept a wildcard name (`--dns '*.example.com'`, the whole leftmost label only).
    #[arg(long)]
    pub allow_wildcard: bool,
    /// Lifetime (default: certificateProvider.serviceCertValidityDuration): at least 10s, at
    /// most certificateProvider.maxServiceCertValidityDuration (2160h) with --identity, or
    /// certificateProvider.maxServerCertValidityDuration (8760h) for a server certificate; and
    /// never past the CA's own expiry. A longer request is refused, not shortened.
    #[arg(long, value_parser = parse_duration_arg)]
    pub lifetime: Option<Duration>,
    /// Key type (default: certificateProvider.keyType).
    #[arg(long)]
    pub key_type: Option<KeyType>,
    /// Directory to write cert.pem, key.pem (mode 0600) and ca.pem into.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Instead of files, a Kubernetes Secret `<namespace>/<name>` of type kubernetes.io/tls
    /// (tls.crt, tls.key, ca.crt), labelled as meshca-managed so `meshca rotate` renews it.
    /// Created if absent, replaced if meshca manages it, refused otherwise.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub secret: Option<SecretRef>,
}

/// The files `--out-dir` receives, in the order they are listed.
const OUT_FILES: [&str; 3] = ["cert.pem", "key.pem", "ca.pem"];

/// Issues the certificate and writes it to files or to a managed Secret.
///
/// Everything the command line says is checked before the CA store, a Secret or the backend
/// is touched, so a bad argument creates nothing; the report is printed only once everything
/// was written.
pub async fn run(config: &Config, args: IssueArgs) -> anyhow::Result<()> {
    let key_type = args
        .key_type
        .unwrap_or(config.certificate_provider.key_type);
    let dns = dns_names(&args.dns, args.allow_wildcard)?;
    let requested = args
        .lifetime
        .unwrap_or(config.certificate_provider.service_cert_validity_duration);
    let spec = match &args.identity {
        Some(identity) => {
            let id = SpiffeId::from_short(identity, &config.trust_domain())
                .with_context(|| format!("--identity {identity}"))?;
            LeafSpec::workload(&id, &dns, requested)
        }
        None if dns.is_empty() => {
            bail!(
                "say what to certify: --identity <namespace>/<service-account>, or --dns NAME for a server certificate"
            )
        }
        None => LeafSpec::server(dns.clone(), requested),
    };
    // A managed Secret certifies a workload of its own namespace: one in namespace A holding
    // B's identity would give it to whoever can read Secrets in A, and `meshca rotate` refuses
    // to renew it.
    if let (Some(target), Some(id)) = (&args.secret, &spec.spiffe_id)
        && id.namespace() != target.namespace
    {
        bail!(
            "--identity {short} is in namespace {id_ns}, but --secret {target} is in namespace \
             {ns}: a managed Secret holds an identity of its own namespace only (whoever can \
             read Secrets in {ns} would hold {short}'s key). Write it to a Secret of namespace \
             {id_ns}: --secret {id_ns}/<name>",
            short = id.short(),
            id_ns = id.namespace(),
            ns = target.namespace,
        );
    }
    let lifetime = config
        .certificate_provider
        .lifetime_policy_for(&spec)
        .check(requested)
        .with_context(|| match args.lifetime {
            Some(_) => "--lifetime".to_owned(),
            None => "certificateProvider.serviceCertValidityDuration (the default --lifetime)"
                .to_owned(),
        })?;

    let out_dir = match &args.out_dir {
        Some(dir) => Some(OutDir::prepare(dir, &OUT_FILES)?),
        None => None,
    };
    // Refuse a Secret meshca may not write before issuing anything for it.
    let writer = match &args.secret {
        Some(target) => {
            let client = crate::kubernetes::connect().await?;
            Some(TlsSecretWriter::open(client, target.clone()).await?)
        }
        None => None,
    };

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let provider = crate::providers::build(config, clock.clone()).await?;
    let pipeline = Pipeline::new(provider, config.pipeline_settings()?, clock);
    let issued = issue_validated(&pipeline, spec.clone(), key_type).await?;
    let info = &issued.info;

    let subject = match &spec.spiffe_id {
        Some(id) => id.to_string(),
        None => spec
            .dns_names
            .iter()
            .map(DnsName::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    };
    // Printed from what was asked, but escaped all the same: nothing reaches the terminal raw.
    let subject = crate::cli::inspect::printable(&subject);
    let mut report = format!(
        "meshca: issued {subject} ({key_type}, serial {})\n  valid {} → {} ({})\n",
        info.serial_hex(),
        crate::cli::inspect::rfc3339(info.not_before),
        crate::cli::inspect::rfc3339(info.not_after),
        format_duration(info.lifetime())
    );

    match (writer, out_dir) {
        (Some(mut writer), _) => {
            let (record, material) = issued.for_managed_secret(&dns, lifetime)?;
            let written = writer.write(&record, &material).await?;
            let verb = match written {
                Written::Created => "created",
                Written::Replaced => "replaced",
            };
            let target = writer.target();
            report.push_str(&format!(
                "  {verb} Secret {target} (kubernetes.io/tls: tls.crt, tls.key, ca.crt), managed \
                 by meshca\n  root SHA-256: {}\nShow: {}\n",
                record.root_fingerprint,
                target.show_certificate_command()
            ));
        }
        (None, Some(out_dir)) => report.push_str(&write_files(&out_dir, &issued)?),
        (None, None) => {
            bail!("say where to write the certificate: --out-dir DIR or --secret NAMESPACE/NAME")
        }
    }
    crate::cli::print_stdout(&report)
}

/// The `--dns` names, each a valid hostname, each once; a wildcard only with
/// `--allow-wildcard`. Checked here rather than by clap, whose refusal would echo the raw
/// value (control characters included) to the terminal; ours shows it escaped.
fn dns_names(texts: &[String], wildcard_allowed: bool) -> anyhow::Result<Vec<DnsName>> {
    let mut names = Vec::with_capacity(texts.len());
    for text in texts {
        let name = DnsName::with_wildcard(text).with_context(|| "--dns".to_owned())?;
        if name.is_wildcard() && !wildcard_allowed {
            bail!(
                "--dns {name} is a wildcard name, valid for every name one label below {}: add \
                 --allow-wildcard if that is what you mean",
                &name[2..]
            );
        }
        names.push(name);
    }
    Ok(meshca_provider::dns::dedup(names))
}

/// A certificate issued and checked: what `meshca issue` writes, and what `meshca rotate`
/// writes into a managed Secret it renews.
#[derive(Debug)]
pub struct Issued {
    /// The leaf and its intermediates.
    pub chain: CertificateChain,
    /// The leaf's key (its `Debug` is redacted).
    pub key: LeafKey,
    /// The trust bundle the daemon serves: the provider's roots, then `extraTrustedRoots`.
    pub bundle: TrustBundle,
    /// What the leaf says.
    pub info: CertificateInfo,
    /// The SHA-256 fingerprint of the bundle's root the chain leads to.
    pub root_fingerprint: String,
}

impl Issued {
    /// The managed Secret's record and contents for this certificate; `dns` and `lifetime`
    /// are what was asked for (recorded so that a renewal asks for the same).
    pub fn for_managed_secret(
        &self,
        dns: &[DnsName],
        lifetime: Duration,
    ) -> anyhow::Result<(ManagedTlsSecret, TlsMaterial)> {
        let identity = self
            .info
            .uri_sans
            .first()
            .map(|uri| uri.parse::<SpiffeId>())
            .transpose()
            .context("the certificate's URI SAN is not a SPIFFE ID")?;
        let record = ManagedTlsSecret {
            identity,
            dns: meshca_provider::dns::dedup(dns.iter().cloned()),
            lifetime,
            key_type: self.key.key_type(),
            not_before: self.info.not_before,
            not_after: self.info.not_after,
            root_fingerprint: self.root_fingerprint.clone(),
        };
        let material = TlsMaterial {
            chain_pem: self.chain.to_pem(),
            key_pem: self.key.private_key_pem(),
            trust_bundle_pem: self.bundle.to_pem(),
        };
        Ok((record, material))
    }
}

/// Issues a certificate for `spec` and a new key of `key_type` through `pipeline` — the
/// daemon's path: request policy, capabilities, the provider call within
/// `renewal.issueTimeout`, validation against the trust bundle with `extraTrustedRoots` —
/// and returns it with that bundle (what `ca.pem` and a managed Secret's `ca.crt` hold).
pub async fn issue_validated(
    pipeline: &Pipeline,
    spec: LeafSpec,
    key_type: KeyType,
) -> anyhow::Result<Issued> {
    let provider = pipeline.provider().name();
    if pipeline.current_trust_bundle().is_empty() {
        pipeline.refresh_trust().await?;
    }
    let issued = pipeline.issue(spec, KeySource::Generate(key_type)).await?;
    let key = issued.key.with_context(|| {
        format!("{provider} issued a certificate, but meshca holds no private key for it")
    })?;
    let bundle = TrustBundle::clone(&pipeline.current_trust_bundle());
    let root_fingerprint = issuing_root(&issued.chain, &bundle).with_context(|| {
        format!("{provider} returned a chain whose root is not in its trust bundle")
    })?;
    Ok(Issued {
        chain: issued.chain,
        key,
        bundle,
        info: issued.info,
        root_fingerprint,
    })
}

/// Writes the set, all at once (see [`OutDir`]), and says where it went.
fn write_files(out_dir: &OutDir, issued: &Issued) -> anyhow::Result<String> {
    let key = issued.key.private_key_pem();
    let chain = issued.chain.to_pem();
    let bundle = issued.bundle.to_pem();
    let [cert_name, key_name, ca_name] = OUT_FILES;
    out_dir.write(&[
        OutFile {
            name: cert_name,
            contents: chain.as_bytes(),
            mode: 0o644,
        },
        OutFile {
            name: key_name,
            contents: key.as_bytes(),
            mode: 0o600,
        },
        OutFile {
            name: ca_name,
            contents: bundle.as_bytes(),
            mode: 0o644,
        },
    ])?;
    let (cert_path, key_path, ca_path) = (
        out_dir.path(cert_name),
        out_dir.path(key_name),
        out_dir.path(ca_name),
    );
    Ok(format!(
        "  {}  certificate chain\n  {}  private key (mode 0600)\n  {}  trust bundle\n\
         Verify: openssl verify -CAfile {} {}\n",
        cert_path.display(),
        key_path.display(),
        ca_path.display(),
        ca_path.display(),
        cert_path.display()
    ))
}

/// The SHA-256 fingerprint of the root of `bundle` that `chain` leads to: the chain's last
/// certificate itself if the bundle holds it, otherwise the root that issued it (by key
/// identifier, or by name when a certificate has none).
fn issuing_root(chain: &CertificateChain, bundle: &TrustBundle) -> anyhow::Result<String> {
    let top = chain.certificates().last().context("the chain is empty")?;
    let top_info = CertificateInfo::parse(top)?;
    if bundle.contains(top) {
        return Ok(Fingerprint::of(top).to_string());
    }
    let roots = bundle
        .roots()
        .iter()
        .filter_map(|der| Some((der, CertificateInfo::parse(der).ok()?)));
    for (der, root) in roots {
        let issued = match (&top_info.authority_key_id, &root.subject_key_id) {
            (Some(aki), Some(ski)) => aki == ski,
            _ => top_info.issuer == root.subject,
        };
        if issued {
            return Ok(Fingerprint::of(der).to_string());
        }
    }
    bail!(
        "no root of the bundle issued {}",
        crate::cli::inspect::printable(&top_info.subject)
    )
}
