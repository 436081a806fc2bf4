//! Log set-up shared by every binary.
//!
//! `RUST_LOG` wins when set (and parses); otherwise the binary's default
//! level applies. Services log to stdout (`info`), where the cluster's log
//! collector reads; the interactive tools (the demo, the scenario runner)
//! log to stderr (`warn`), so their table on stdout stays clean.

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    /// Services: the cluster collects stdout.
    Stdout,
    /// Interactive tools whose result is on stdout.
    Stderr,
}

/// Installs the global `tracing` subscriber: `RUST_LOG`, else `default`
/// (an `EnvFilter` directive such as `info`). Call once, first thing.
pub fn init_logging(default: &str, to: LogTo) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match to {
        LogTo::Stdout => builder.init(),
        LogTo::Stderr => builder.with_writer(std::io::stderr).init(),
    }
}
