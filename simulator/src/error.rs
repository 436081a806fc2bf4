//! Errors of the simulator library.

/// Why the simulator could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration value is out of bounds; `key` names the knob (the
    /// CLI flag is the same name with dashes).
    #[error("simulator setting `{key}` is invalid: {message}")]
    Config { key: String, message: String },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl SimError {
    /// Shorthand for a bounds violation on `key`.
    pub(crate) fn config(key: &str, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}
