//! Shared machinery of the sharder's benchmarks.
//!
//! Why it looks like this: the gateway simulator is far more expensive per
//! event than the sharder (BENCHMARKS.md of `discord-sim`), so it always runs
//! as its own process ([`sim::SimProcess`]), and every measurement runs in a
//! fresh child process of the bench binary ([`child`]) so that its CPU
//! seconds (`/proc/<pid>/stat`) and RSS (`/proc/<pid>/status`) are the
//! sharder's (or the peer's) alone, with no allocator or thread left over
//! from an earlier measurement. The parent starts the simulator, runs the
//! children, reads their one-line JSON results and prints min/median/max.
#![allow(dead_code)]

pub mod args;
pub mod child;
pub mod measure;
/// min/median/max, the Markdown table, machine, date and CSV: the test
/// kit's, shared with the other crates' benches.
pub use testkit::bench_report as report;
pub mod sharder_run;
pub mod sim;
pub mod twilight;
pub mod worker_run;
