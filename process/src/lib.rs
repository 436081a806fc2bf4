//! How every Bulwark binary starts and stops.
//!
//! The sharder, the worker, the simulator, the demo and the scenario runner
//! are started by the same operators and stopped by the same Kubernetes
//! (SIGTERM) or terminal (SIGINT), so they share one start-up and one stop:
//!
//! * [`init_logging`]: `RUST_LOG`, else the binary's default level.
//! * [`load_config`] and [`Failure`]: a bad setting prints
//!   `configuration error: ...` naming the key and exits 78
//!   ([`config::EXIT_CONFIG`]) instead of crash-looping; any other failure
//!   prints the error with its causes and exits with the binary's code.
//! * [`run_until_signal`]: the multi-threaded runtime, and one
//!   [`CancellationToken`](tokio_util::sync::CancellationToken) cancelled on
//!   the first SIGTERM or SIGINT ([`cancel_on_signal`]), which the binary
//!   hands to its library's `run` to drain and return.
//! * [`runtime_builder`]: that runtime with its idle threads' wake-ups
//!   coalesced, unless a [`Backlog`] is held (the sharder's and the
//!   worker's `wake_coalesce`).
//! * [`prometheus()`]: the process's one Prometheus recorder.
//!
//! A crate of its own, not a module of `config`: `config` is plain data
//! that tests, the demo and the scenario runner read without a runtime,
//! and the signal path needs tokio.
#![forbid(unsafe_code)]

mod failure;
mod logging;
mod prometheus;
mod runtime;
mod signal;
mod wake_coalesce;

pub use failure::{EXIT_FAILURE, Failure, load_config};
pub use logging::{LogTo, init_logging};
pub use prometheus::prometheus;
pub use runtime::{run_until_signal, run_until_signal_on};
pub use signal::{StopSignal, StopSignals, cancel_on_signal};
pub use wake_coalesce::{Backlog, runtime_builder};
