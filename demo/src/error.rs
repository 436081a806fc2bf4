//! Why a demo run could not produce a summary, and the exit code for it.
//!
//! A run that finishes but finds a problem (a false join, a cache that
//! differs from the truth) is not an error: it returns a
//! [`crate::Summary`] whose verdict fails. These are the runs that could
//! not get that far.

/// A demo run that stopped before its summary.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The generated configuration was refused (a bad URL, mostly).
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("simulator: {0}")]
    Simulator(#[from] discord_sim::SimError),
    #[error("sharder: {0}")]
    Sharder(#[from] sharder::RunError),
    #[error("RabbitMQ ({what}): {source}")]
    Amqp {
        what: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("cache store: {0}")]
    Store(#[from] worker::StoreError),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("live reshard: {0}")]
    Reshard(#[from] sharder::ReshardCliError),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl DemoError {
    /// The process exit code: 78 for configuration (as every Bulwark
    /// binary), 130 for an interrupt, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => config::EXIT_CONFIG,
            Self::Interrupted => 130,
            _ => 1,
        }
    }

    pub(crate) fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |source| Self::Amqp { what, source }
    }
}
