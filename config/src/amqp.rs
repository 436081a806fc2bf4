//! `[amqp]`: the broker between sharders and workers.
//!
//! Shared by both binaries because they must agree: a shard's events go to
//! partition `shard_id % partitions` (see `envelope::topology`), and a
//! mismatch would split one shard's events over queues and lose their
//! order. The URL carries credentials, so it is a [`Secret`].

use crate::{ConfigError, Secret};
use serde::Deserialize;

/// Broker address and partitioning.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost`. Set the password through
    /// `BULWARK_AMQP__URL` from a Secret.
    pub url: Secret,
    /// Number of partition queues P; the same for every sharder and worker.
    pub partitions: u32,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            partitions: 16,
        }
    }
}

impl AmqpConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.expose();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(ConfigError::invalid(
                "amqp.url",
                "must start with amqp:// or amqps://",
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(ConfigError::invalid(
                "amqp.partitions",
                format!(
                    "{} is outside 1..=1024; use one value for every sharder and worker",
                    self.partitions
                ),
            ));
        }
        Ok(())
    }
}
