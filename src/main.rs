//! The `meshca` binary.

use std::process::ExitCode;

use clap::Parser;
use meshca::cli::{Cli, Command};
use meshca::config::{LogConfig, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.global.load_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("meshca: {err:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("meshca: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => meshca::cli::serve::run(config, args).await,
            Command::Bootstrap(args) => meshca::cli::ca::bootstrap(&config, args).await,
            Command::Issue(args) => meshca::cli::issue::run(&config, args).await,
            Command::Inspect { file } => meshca::cli::inspect::run(&file),
            Command::Ca(command) => meshca::cli::ca::run(&config, command).await,
            Command::Rotate(args) => meshca::cli::rotate::dispatch(&config, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshca: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
