//! `meshca rotate …`: rotation steps run from the command line or a CronJob.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroize::Zeroizing;

use crate::admin::AdminToken;
use crate::config::Config;

use super::rotate_root::RootAction;

/// `meshca rotate [COMMAND]`: with no command, the cron pass (`rotate_cron`).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RotateArgs {
    /// A single step; without one, the pass the CronJob runs: renew managed TLS Secrets
    /// inside their renewal window, then report.
    #[command(subcommand)]
    pub command: Option<RotateCommand>,
    #[command(flatten)]
    pub cron: super::rotate_cron::CronArgs,
}

/// Runs `meshca rotate`: the command given, or the cron pass.
pub async fn dispatch(config: &Config, args: RotateArgs) -> anyhow::Result<()> {
    match args.command {
        Some(command) => run(config, command).await,
        None => super::rotate_cron::run(config, args.cron).await,
    }
}

/// `meshca rotate …`
#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Re-issue certificates now and push them to the proxies (e.g. after a suspected key
    /// leak). Asks the running daemon through its admin listener.
    Leaves {
        /// Only this identity's certificates, `<namespace>/<service-account>`; all when absent.
        #[arg(long)]
        identity: Option<String>,
        /// The daemon's admin address (default: admin.listen).
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<SocketAddr>,
        /// The file holding the daemon's admin bearer token (default: admin.tokenFile).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Rotate Tresor's root without downtime, one stage at a time.
    Root {
        #[command(subcommand)]
        action: RootAction,
    },
}

/// Runs a rotation command.
pub async fn run(config: &Config, command: RotateCommand) -> anyhow::Result<()> {
    match command {
        RotateCommand::Root { action } => super::rotate_root::run(config, action).await,
        RotateCommand::Leaves {
            identity,
            admin,
            token_file,
        } => {
            let Some(address) = admin.or_else(|| config.admin_listen()) else {
                bail!(
                    "no admin address: the daemon's admin listener is disabled (admin.listen) — \
                     pass --admin HOST:PORT of a daemon that has one"
                );
            };
            let token = match token_file.as_deref().or_else(|| config.admin_token_file()) {
                Some(path) => Some(AdminToken::read(path)?),
                None => None,
            };
            let mut path = "/rotate/leaves".to_owned();
            if let Some(identity) = &identity {
                path.push_str("?identity=");
                path.push_str(&percent_encode(identity));
            }
            let (status, body) = post(address, &path, token.as_ref())
                .await
                .with_context(|| {
                    format!(
                        "cannot reach the meshca daemon's admin listener at {address}: is \
                         `meshca serve` running there (admin.listen)?"
                    )
                })?;
            if status != 202 {
                let hint = match (status, &token) {
                    (401, None) => {
                        " (no token sent: pass --token-file or set admin.tokenFile to the \
                         daemon's token file)"
                    }
                    (401, Some(_)) => {
                        " (the token sent is not the daemon's: use the file its admin.tokenFile \
                         names)"
                    }
                    _ => "",
                };
                bail!(
                    "the daemon at {address} refused: {status} {}{hint}",
                    body.trim()
                );
            }
            println!("meshca: {}", body.trim());
            Ok(())
        }
    }
}

/// A bare HTTP/1.1 POST to the admin listener (plain text), with the bearer token when there
/// is one: (status, body).
async fn post(
    address: SocketAddr,
    path: &str,
    token: Option<&AdminToken>,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let authorization = token
            .map(|t| Zeroizing::new(format!("Authorization: Bearer {}\r\n", t.bearer())))
            .unwrap_or_default();
        let request = Zeroizing::new(format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\n{}Content-Length: 0\r\nConnection: \
             close\r\n\r\n",
            authorization.as_str()
        ));
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    Ok((status, body.to_owned()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
