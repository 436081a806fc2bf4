//! `worker`: consumes the partition queues into the cache.
//!
//! Thin on purpose: set up logging, load and validate the configuration
//! (exit 78 on a bad value, also one found at start-up: a read API
//! without its token, an unreadable `[tls]` file), and run [`worker::run`] until SIGTERM or
//! SIGINT, which drains within [`worker::DRAIN_GRACE`]. Exit codes: 0 after
//! a clean shutdown, 78 for a configuration error, 1 for any other error
//! (including `worker.store = "redis"` without `redis.url`).
#![forbid(unsafe_code)]

use bulwark_process::{Failure, LogTo};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Bulwark cache worker")]
struct Args {
    /// TOML configuration file; BULWARK_* variables override it.
    #[arg(long, env = "BULWARK_CONFIG")]
    config: Option<PathBuf>,
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
    let cfg = bulwark_process::load_config(args.config.as_deref())?;
    let runtime = bulwark_process::runtime_builder(cfg.worker.wake_coalesce);
    let report =
        bulwark_process::run_until_signal_on(runtime, |shutdown| worker::run(cfg, shutdown))?
            .map_err(|e| Failure::from_run_error(e.is_config(), "worker", &e))?;
    tracing::info!(
        partitions = report.partitions.len(),
        drained = report.drained,
        "bye"
    );
    Ok(())
}
