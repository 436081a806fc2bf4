//! `sharder`: runs this process's gateway shards into RabbitMQ.
//!
//! Thin on purpose, on the start-up every binary shares
//! (`bulwark_process`): set up logging, load and validate the configuration
//! (exit 78 on a bad value), turn SIGTERM/SIGINT into a cancellation, and
//! hand everything else to [`sharder::run`], which drains within
//! `sharder.shutdown_grace`. Exit codes: 0 after a clean shutdown, 78 for a
//! configuration error, 2 when Discord refused the token (4004 or 401),
//! 1 for any other error.
#![forbid(unsafe_code)]

use bulwark_process::{EXIT_FAILURE, Failure, LogTo};
use clap::Parser;
use config::{Config, EXIT_CONFIG};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code when Discord refused the bot token.
const EXIT_AUTH: i32 = 2;

#[derive(Parser)]
#[command(about = "Bulwark gateway sharder")]
struct Args {
    /// TOML configuration file; BULWARK_* variables override it.
    #[arg(long, env = "BULWARK_CONFIG")]
    config: Option<PathBuf>,
    /// This process's shards, a half-open range `start..end` (e.g. 0..36);
    /// overrides the layout keys of the configuration for this process.
    #[arg(long)]
    shards: Option<String>,
    /// Shards of the bot across all processes (overrides
    /// `sharder.total_shards`).
    #[arg(long)]
    total: Option<u32>,
}

fn main() -> ExitCode {
    bulwark_process::init_logging("info", LogTo::Stdout);
    let args = Args::parse();
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn serve(args: Args) -> Result<(), Failure> {
    let mut cfg = load(args.config.as_deref()).map_err(Failure::config)?;
    let shared_lock = cfg.redis.enabled();
    sharder::apply_shard_args(
        &mut cfg.sharder,
        args.shards.as_deref(),
        args.total,
        shared_lock,
    )
    .map_err(Failure::config)?;
    let report = bulwark_process::run_until_signal(|shutdown| sharder::run(cfg, shutdown))?
        .map_err(|e| Failure::from_error(exit_code(&e), "sharder", &e))?;
    tracing::info!(
        shards = report.shards.len(),
        drained = report.drained,
        "bye"
    );
    Ok(())
}

/// 2 when Discord refused the token, 78 for a configuration error, else 1.
fn exit_code(e: &sharder::RunError) -> i32 {
    match e {
        sharder::RunError::AuthenticationFailed { .. }
        | sharder::RunError::GatewayBot(sharder::GatewayBotError::Unauthorized) => EXIT_AUTH,
        sharder::RunError::Config(_) => EXIT_CONFIG,
        _ => EXIT_FAILURE,
    }
}

/// `Config::load`, plus `sharder.process_index` from the StatefulSet
/// ordinal in `POD_NAME` when neither the file nor the environment sets it.
fn load(path: Option<&Path>) -> Result<Config, config::ConfigError> {
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| config::ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            p.display().to_string(),
        ),
        None => (String::new(), "defaults".to_owned()),
    };
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(index) = sharder::ordinal_process_index(&env, Some(&text)) {
        tracing::info!(
            process_index = index,
            "process_index from the POD_NAME ordinal"
        );
        env.push((sharder::PROCESS_INDEX_ENV.to_owned(), index.to_string()));
    }
    Config::from_toml_str(&text, &origin, env)
}
