//! Configuration errors that say which key is wrong and what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// Upper bound of every duration key: a year. `humantime` accepts values up
/// to `u64::MAX` seconds, and `Instant::now() + d` (a cache entry's expiry,
/// a deadline) panics on overflow far below that; no setting needs a year.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the configuration could not be loaded. Every variant names where the
/// bad value came from (file, environment variable or key) and what is
/// allowed, so an operator can fix it without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; check the path given with --config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type.
    #[error("config {origin} is invalid: {message}")]
    Parse { origin: String, message: String },
    /// An environment override could not be applied.
    #[error("environment variable {var} is invalid: {message}")]
    Env { var: String, message: String },
    /// A value parsed but is outside its bounds.
    #[error("config key `{key}` is invalid: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// Shorthand for a bounds violation on `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `Err` naming `key` when `value` is above [`MAX_DURATION`].
pub(crate) fn check_duration(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value > MAX_DURATION {
        return Err(ConfigError::invalid(
            key,
            format!("{value:?} is above the 365-day bound of every duration"),
        ));
    }
    Ok(())
}
