//! The `meshca` binary.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use meshca::cli::{Cli, Command, GlobalArgs};
use meshca::config::{LogConfig, LogFormat, env_name};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.global.load_config() {
        Ok(config) => config,
        Err(err) => {
            // The configuration did not load, so neither did `log.*`: honour the format asked
            // for on the command line or in the environment, so that a JSON log pipeline still
            // gets the reason as one JSON line.
            let log = LogConfig {
                format: requested_format(&cli.global),
                ..LogConfig::default()
            };
            init_logging(&log);
            report(log.format, &err);
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    let log_format = config.log.format;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            let err = anyhow::Error::new(err).context("cannot start the async runtime");
            report(log_format, &err);
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
        Err(err) if err.is::<meshca::cli::rotate_root::Waiting>() => {
            // Not a failure: the step's condition does not hold yet.
            println!("meshca: {err}");
            ExitCode::from(3)
        }
        Err(err) => {
            report(log_format, &err);
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
        LogFormat::Json => {
            builder.json().init();
            // The default hook writes plain text to stderr, which would break the one object
            // per line a JSON log pipeline expects.
            std::panic::set_hook(Box::new(|panic| {
                tracing::error!(target: "meshca::panic", "meshca panicked: {panic}");
            }));
        }
        LogFormat::Text => builder.init(),
    }
}

/// Tells the user why meshca stopped: the whole error chain on one line, as a JSON log event
/// when JSON logs were asked for. Control characters in it (a certificate's subject quoted in
/// a refusal, say) are escaped, so an error cannot rewrite the terminal either.
fn report(format: LogFormat, err: &anyhow::Error) {
    let message = format!("{err:#}");
    let message = meshca::cli::inspect::printable_message(&message);
    match format {
        LogFormat::Json => tracing::error!(target: "meshca", "meshca: {message}"),
        LogFormat::Text => eprintln!("meshca: {message}"),
    }
}

/// `log.format` from the flags or the environment alone, for when the configuration as a
/// whole could not be loaded: `--log-format`, then `--set log.format=…`, then the variable.
fn requested_format(global: &GlobalArgs) -> LogFormat {
    let parse = |text: &str| LogFormat::from_str(text.trim(), true).ok();
    global
        .log_format
        .or_else(|| {
            global
                .set
                .iter()
                .rev()
                .filter_map(|assignment| assignment.split_once('='))
                .find(|(key, _)| key.trim() == "log.format")
                .and_then(|(_, value)| parse(value))
        })
        .or_else(|| {
            std::env::var(env_name("log.format"))
                .ok()
                .and_then(|value| parse(&value))
        })
        .unwrap_or(LogFormat::Text)
}
