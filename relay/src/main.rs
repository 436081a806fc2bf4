//! `relay`: the gateway for bot processes.
//!
//! Thin: logging, the configuration (exit 78 on a bad value, also one found
//! at start-up: no bot token, no Redis, an unreadable `[tls]` file), then
//! [`relay::run`] until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use bulwark_process::{Failure, LogTo};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Bulwark relay: a Discord gateway for bot processes, fed by Bulwark")]
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
    bulwark_process::run_until_signal(|shutdown| relay::run(cfg, shutdown))?
        .map_err(|e| Failure::from_run_error(e.is_config(), "relay", &e))?;
    tracing::info!("bye");
    Ok(())
}
