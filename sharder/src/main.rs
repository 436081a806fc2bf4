//! `sharder`: runs this process's gateway shards into RabbitMQ.
//!
//! Thin on purpose: load and validate the configuration (exit 78 on a bad
//! value), set up logging, turn SIGTERM/SIGINT into a cancellation, and
//! hand everything else to [`sharder::run`], which drains within
//! `sharder.shutdown_grace`. Exit codes: 0 after a clean shutdown, 78 for a
//! configuration error, 2 when Discord refused the token (4004 or 401),
//! 1 for any other error.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use config::{Config, EXIT_CONFIG};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

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

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut cfg = match load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let shared_lock = cfg.redis.enabled();
    if let Err(e) = sharder::apply_shard_args(
        &mut cfg.sharder,
        args.shards.as_deref(),
        args.total,
        shared_lock,
    ) {
        eprintln!("configuration error: {e}");
        std::process::exit(EXIT_CONFIG);
    }
    match serve(cfg) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("sharder: {e:#}");
            let code = match e.downcast_ref::<sharder::RunError>() {
                Some(sharder::RunError::AuthenticationFailed { .. })
                | Some(sharder::RunError::GatewayBot(sharder::GatewayBotError::Unauthorized)) => {
                    EXIT_AUTH
                }
                Some(sharder::RunError::Config(_)) => EXIT_CONFIG,
                _ => 1,
            };
            std::process::exit(code);
        }
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

fn serve(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
        let report = sharder::run(cfg, shutdown).await;
        signals.abort();
        let report = report?;
        tracing::info!(
            shards = report.shards.len(),
            drained = report.drained,
            "bye"
        );
        Ok(())
    })
}

/// Cancels `token` on SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn cancel_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the sharder");
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
}
