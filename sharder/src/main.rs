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
    #[arg(long, env = "BULWARK_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    /// This process's shards, a half-open range `start..end` (e.g. 0..36);
    /// overrides the layout keys of the configuration for this process.
    #[arg(long)]
    shards: Option<String>,
    /// Shards of the bot across all processes (overrides
    /// `sharder.total_shards`).
    #[arg(long)]
    total: Option<u32>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Ask a running sharder for a live reshard (`POST /admin/reshard`
    /// with the configuration's admin token), or, without --total, show
    /// the one in progress. Any pod of several will do.
    Reshard {
        /// The new shard total.
        #[arg(long)]
        total: Option<u32>,
        /// Allow a total below the running one.
        #[arg(long)]
        force_shrink: bool,
        /// Follow the reshard to its end (a line per second); fails if it
        /// did not complete.
        #[arg(long)]
        wait: bool,
        /// The sharder's admin URL (default: sharder.http_listen of the
        /// configuration, on loopback).
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    bulwark_process::init_logging("info", LogTo::Stdout);
    let mut args = Args::parse();
    let result = match args.command.take() {
        Some(Command::Reshard {
            total,
            force_shrink,
            wait,
            url,
        }) => reshard(args.config.as_deref(), total, force_shrink, wait, url),
        None => serve(args),
    };
    match result {
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
    let runtime = bulwark_process::runtime_builder(cfg.sharder.wake_coalesce);
    let report =
        bulwark_process::run_until_signal_on(runtime, |shutdown| sharder::run(cfg, shutdown))?
            .map_err(|e| Failure::from_error(exit_code(&e), "sharder", &e))?;
    tracing::info!(
        shards = report.shards.len(),
        drained = report.drained,
        "bye"
    );
    Ok(())
}

fn reshard(
    config: Option<&Path>,
    total: Option<u32>,
    force_shrink: bool,
    wait: bool,
    url: Option<String>,
) -> Result<(), Failure> {
    let cfg = load(config).map_err(Failure::config)?;
    let cli = sharder::ReshardCli {
        url: url.unwrap_or_else(|| sharder::admin_url(cfg.sharder.http_listen)),
        admin_token: cfg.sharder.admin_token.clone(),
        total,
        force_shrink,
        wait,
        every: std::time::Duration::from_secs(1),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::from_error(EXIT_FAILURE, "sharder reshard", &e))?;
    runtime.block_on(async {
        let resolver = dnscache::Resolver::shared(&cfg.dns)
            .map_err(|e| Failure::from_error(EXIT_FAILURE, "sharder reshard", &e))?;
        sharder::reshard_command(&resolver, &cli, &mut std::io::stdout())
            .await
            .map_err(|e| {
                let code = match e {
                    sharder::ReshardCliError::Unauthorized { .. } => EXIT_AUTH,
                    _ => EXIT_FAILURE,
                };
                Failure::from_error(code, "sharder reshard", &e)
            })
    })
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
