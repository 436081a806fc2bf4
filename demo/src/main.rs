//! `bulwark-demo`: the whole pipeline locally, in one command.
//!
//! Parses the flags (clap: a bad flag exits 2), runs [`bulwark_demo::run`]
//! with live progress, prints the summary table, and exits 0 when the run
//! passed, 1 when it found a false join or a cache that differs from the
//! truth (or failed), 78 on a configuration error and 130 on Ctrl-C.
#![forbid(unsafe_code)]

use bulwark_demo::{Args, Progress, run, unique_name};
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() {
    let opts = match Args::parse().into_options() {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async {
        let interrupt = CancellationToken::new();
        let on_signal = interrupt.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_signal.cancel();
            }
        });
        let mut progress = Progress::auto(opts.shards);
        let result = run(&opts, &unique_name(), &mut progress, &interrupt).await;
        progress.finish();
        match result {
            Ok(summary) => {
                print!("{}", summary.table());
                if summary.passed() { 0 } else { 1 }
            }
            Err(e) => {
                eprintln!("bulwark-demo failed: {e}");
                e.exit_code()
            }
        }
    });
    drop(rt);
    std::process::exit(code);
}
