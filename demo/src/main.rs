//! `bulwark-demo`: the whole pipeline locally, in one command.
//!
//! Parses the flags (clap: a bad flag exits 2), runs [`bulwark_demo::run`]
//! with live progress, prints the summary table, and exits 0 when the run
//! passed, 1 when it found a false join or a cache that differs from the
//! truth (or failed), 78 on a configuration error and 130 on Ctrl-C (or
//! SIGTERM: the signal path every Bulwark binary shares, `bulwark_process`).
#![forbid(unsafe_code)]

use bulwark_demo::{Args, Progress, run, unique_name};
use bulwark_process::LogTo;
use clap::Parser;

fn main() {
    let opts = match Args::parse().into_options() {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    bulwark_process::init_logging("warn", LogTo::Stderr);
    let ran = bulwark_process::run_until_signal(|interrupt| async move {
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
    let code = match ran {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("{failure}");
            failure.code()
        }
    };
    std::process::exit(code);
}
