//! The production [`EventSink`]: envelopes to RabbitMQ with publisher
//! confirms, confirmed back to the shards only once the broker has them.
//!
//! [`AmqpSink::send`] puts the event in a bounded channel (`sink_buffer`
//! events) and returns; when the channel is full it waits, so the shard
//! stops reading and Discord keeps the rest for a resume (backpressure).
//! One publisher task (`amqp_publisher.rs`, where its algorithm is) owns
//! the broker connection, frames what the channel holds into messages,
//! publishes them and confirms every event to its shard once the broker
//! has it. When every [`AmqpSink`] clone is dropped, the task publishes
//! what is left, waits for its confirms and ends: that is the drain at
//! shutdown.

use crate::amqp_publisher::Publisher;
use crate::sink::{EventSink, ShardEvent, SinkClosed, TrySend};
use config::Secret;
use envelope::topology::AmqpTopology;
use lapin::Connection;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Settings of the AMQP sink.
#[derive(Debug, Clone)]
pub struct AmqpSinkConfig {
    /// Broker URL (with credentials; never logged).
    pub url: Secret,
    pub topology: AmqpTopology,
    /// Events held before `send` waits.
    pub buffer: usize,
    /// Messages awaiting their publisher confirm.
    pub confirm_window: usize,
    /// Events of one shard in one message at most.
    pub batch_max_events: usize,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// A confirm slower than this counts as a broken connection.
    pub confirm_timeout: Duration,
    /// How long a round may stay open for more events (0: none).
    pub linger: Duration,
}

impl AmqpSinkConfig {
    /// From `[amqp]` and `[sharder]`.
    pub fn from_config(cfg: &config::Config) -> Self {
        let s = &cfg.sharder;
        Self {
            url: cfg.amqp.url.clone(),
            topology: AmqpTopology::named(&s.amqp_topology_base, cfg.amqp.partitions),
            buffer: s.sink_buffer,
            confirm_window: s.confirm_window,
            batch_max_events: s.batch_max_events.clamp(1, envelope::MAX_BATCH_EVENTS),
            reconnect_base: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(15),
            confirm_timeout: Duration::from_secs(30),
            linger: s.publish_linger,
        }
    }
}

/// Counters of the sink, for tests and `/metrics`.
#[derive(Debug, Default)]
pub struct AmqpSinkStats {
    /// Messages published (republishes included).
    pub published: AtomicU64,
    /// Events confirmed by the broker.
    pub confirmed_events: AtomicU64,
    /// Messages published again after a nack or a lost connection.
    pub republished: AtomicU64,
    /// Events the envelope refused (skipped and confirmed).
    pub invalid_events: AtomicU64,
    /// Connections opened.
    pub connections: AtomicU64,
    /// Most events held unconfirmed by the task at once (buffer bound check).
    pub max_held_events: AtomicU64,
    /// Events held unconfirmed now (the status page).
    pub held_events: AtomicU64,
    /// Events waiting in the buffer, as of the last publish round (the
    /// status page).
    pub buffered_events: AtomicU64,
    /// The publisher's connection is up (the status page).
    pub connected: std::sync::atomic::AtomicBool,
}

/// Sends events to the publisher task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AmqpSink {
    tx: mpsc::Sender<ShardEvent>,
    stats: Arc<AmqpSinkStats>,
    connection: watch::Receiver<Option<Arc<Connection>>>,
}

impl AmqpSink {
    /// Starts the publisher task. It ends once every clone of the sink is
    /// dropped and everything taken was confirmed.
    pub fn start(resolver: dnscache::Resolver, cfg: AmqpSinkConfig) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
        let stats = Arc::new(AmqpSinkStats::default());
        let (connection_tx, connection) = watch::channel(None);
        let task = Publisher::new(resolver, cfg, rx, stats.clone(), connection_tx);
        (
            Self {
                tx,
                stats,
                connection,
            },
            tokio::spawn(task.run()),
        )
    }

    /// The publisher's connection while it is up (`None` while it
    /// reconnects): what else the process needs from the broker opens a
    /// channel on it, so a broker outage sees one client's reconnects
    /// (one backoff), not one per purpose.
    pub fn connection(&self) -> watch::Receiver<Option<Arc<Connection>>> {
        self.connection.clone()
    }

    /// The counters.
    pub fn stats(&self) -> &AmqpSinkStats {
        &self.stats
    }

    /// The counters, shared (the status page reads them as they change).
    pub(crate) fn shared_stats(&self) -> Arc<AmqpSinkStats> {
        self.stats.clone()
    }

    /// Events waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

impl EventSink for AmqpSink {
    async fn send(&self, event: ShardEvent) -> Result<(), SinkClosed> {
        self.tx
            .send(event)
            .await
            .map_err(|_| SinkClosed("the AMQP publisher task ended".into()))
    }

    fn try_send(&self, event: ShardEvent) -> TrySend {
        match self.tx.try_send(event) {
            Ok(()) => TrySend::Taken,
            Err(mpsc::error::TrySendError::Full(event)) => TrySend::Wait(event),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                TrySend::Closed(SinkClosed("the AMQP publisher task ended".into()))
            }
        }
    }
}

#[cfg(test)]
#[path = "amqp_sink_tests.rs"]
mod tests;
