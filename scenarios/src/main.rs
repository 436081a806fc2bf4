//! `bulwark-scenarios`: runs the incident scenarios against the real
//! binaries and prints a table (scenario | result | key figures).
//!
//! ```text
//! bulwark-scenarios list
//! bulwark-scenarios run all
//! bulwark-scenarios run cold-boot rolling-restart --full
//! ```
//! Exit code 0 when every scenario run passed, 1 otherwise, 2 for usage.
//! The `sharder`, `worker` and `discord-sim` executables must be built
//! first (`cargo build --workspace --bins`).
#![forbid(unsafe_code)]

use bulwark_process::LogTo;
use bulwark_scenarios::{MEASUREMENTS, SCENARIOS, ScenarioReport, Size, run_blocking};
use clap::{Parser, Subcommand};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "bulwark-scenarios", about = "Bulwark incident scenario suite")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lists the scenarios and what each asserts.
    List,
    /// Runs `all` or the named scenarios, one after the other.
    Run {
        /// `all`, or scenario names.
        #[arg(required = true)]
        names: Vec<String>,
        /// The incident-sized runs instead of the fast defaults.
        #[arg(long)]
        full: bool,
    },
}

fn main() {
    bulwark_process::init_logging("warn", LogTo::Stderr);
    let args = Args::parse();
    match args.command {
        Cmd::List => {
            for s in SCENARIOS.iter().chain(MEASUREMENTS) {
                println!(
                    "{:<18} {}\n{:<18} asserts: {}\n",
                    s.name, s.incident, "", s.asserts
                );
            }
        }
        Cmd::Run { names, full } => {
            let size = if full { Size::Full } else { Size::Fast };
            let names: Vec<String> = if names.iter().any(|n| n == "all") {
                SCENARIOS.iter().map(|s| s.name.to_owned()).collect()
            } else {
                names
            };
            if let Some(bad) = names.iter().find(|n| {
                !SCENARIOS
                    .iter()
                    .chain(MEASUREMENTS)
                    .any(|s| s.name == n.as_str())
            }) {
                eprintln!("unknown scenario {bad:?}; `bulwark-scenarios list` shows them");
                std::process::exit(2);
            }
            let mut reports = Vec::new();
            for name in &names {
                let started = Instant::now();
                eprintln!("running {name} ...");
                let report = run_blocking(name, size);
                eprintln!(
                    "{name}: {} in {:.1} s",
                    if report.passed { "pass" } else { "FAIL" },
                    started.elapsed().as_secs_f64()
                );
                reports.push((report, started.elapsed()));
            }
            print_table(&reports);
            if reports.iter().any(|(r, _)| !r.passed) {
                std::process::exit(1);
            }
        }
    }
}

fn print_table(reports: &[(ScenarioReport, std::time::Duration)]) {
    println!("| scenario | result | key figures |");
    println!("| --- | --- | --- |");
    for (r, took) in reports {
        let figures: Vec<String> = r
            .figures
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .chain(std::iter::once(format!(
                "took: {:.1} s",
                took.as_secs_f64()
            )))
            .collect();
        println!(
            "| {} | {} | {} |",
            r.name,
            if r.passed { "pass" } else { "FAIL" },
            figures.join("; ").replace('|', "/")
        );
    }
}
