//! The `meshca` command line.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat, Overrides};

pub mod ca;
pub mod inspect;
pub mod issue;
pub mod out_dir;
pub mod rotate;
pub mod rotate_cron;
pub mod rotate_root;
pub mod serve;

/// meshca: a certificate authority and identity service for service meshes.
#[derive(Debug, Parser)]
#[command(name = "meshca", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes: where configuration comes from.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// YAML configuration file (keys mirror the Helm values).
    #[arg(long, short = 'c', global = true, env = "MESHCA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Set any configuration key, e.g. --set certificateProvider.kind=vault (repeatable;
    /// overrides the file and MESHCA_* variables).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
    /// Trust domain (trustDomain).
    #[arg(long, global = true)]
    pub trust_domain: Option<String>,
    /// Directory of Tresor's CA store (tresor.directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Log format (log.format).
    #[arg(long, global = true)]
    pub log_format: Option<LogFormat>,
    /// Log filter such as info or meshca=debug (log.level).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
}

impl GlobalArgs {
    /// Loads the configuration with this command line's overrides on top of the environment.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        let mut overrides = Overrides::from_env(std::env::vars());
        let named = [
            ("trustDomain", self.trust_domain.clone()),
            (
                "tresor.directory",
                self.ca_dir.as_ref().map(|d| d.display().to_string()),
            ),
            (
                "log.format",
                self.log_format.map(|f| match f {
                    LogFormat::Text => "text".to_owned(),
                    LogFormat::Json => "json".to_owned(),
                }),
            ),
            ("log.level", self.log_level.clone()),
        ];
        for assignment in &self.set {
            overrides.set(assignment)?;
        }
        for (key, value) in named {
            if let Some(value) = value {
                overrides.flags.push((key.to_owned(), value));
            }
        }
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: issue, cache and renew certificates, serve them over SDS.
    Serve(serve::ServeArgs),
    /// Create the CA (a directory or the CA bundle Secret) if it is absent, or adopt and check
    /// the one that exists; with Vault or cert-manager, publish their root as the bundle.
    Bootstrap(ca::BootstrapArgs),
    /// Issue one certificate to files: cert.pem, key.pem (0600), ca.pem.
    Issue(issue::IssueArgs),
    /// Show a certificate file: subject, SPIFFE ID, SANs, issuer, validity, time left, serial,
    /// key type, fingerprint — for every certificate of a chain.
    Inspect {
        /// A PEM (or DER) certificate or chain.
        file: PathBuf,
    },
    /// Manage the CA: init, show, export, import, intermediate.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Rotation: without a command, the CronJob's pass (move a root rotation at most one
    /// stage, renew managed TLS Secrets inside their renewal window, report, exit 1 on what
    /// needs attention); `root`: Tresor root rotation by hand; `leaves`: re-issue now.
    Rotate(rotate::RotateArgs),
}

/// Writes `text` to standard output, in one piece.
///
/// A reader that went away (`meshca inspect chain.pem | head -1`) is not an error: what it did
/// not want is dropped and the command ends quietly, with status 0. (`println!` would panic.)
/// Other write errors are reported.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}
