//! RabbitMQ as a scenario sees it: each run's own topology, a tap on the
//! exchange, queue depths, and raw publishes for corrupt messages.
//!
//! The tap is an exclusive, auto-deleted queue bound to the run's topic
//! exchange with `#`: it receives a copy of every message the sharder got
//! confirmed, while the worker consumes the partition queues as usual. So
//! "nothing lost" and "the shed events stopped within a second" are
//! counted on what really reached the broker, from the envelope's
//! provenance (`shard_id`, `epoch`, `seq`, `received_at`).

use crate::{AMQP_URL, Result};
use envelope::topology::AmqpTopology;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::{Arc, Mutex};

/// One event copied off the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapEvent {
    pub shard_id: u32,
    pub epoch: u64,
    pub seq: u64,
    pub t: String,
    /// When the sharder received the frame (unix ms).
    pub received_at: u64,
    /// The envelope's guild id.
    pub guild_id: Option<u64>,
    /// The raw `d`, for post-mortems.
    pub d: String,
}

/// A connection to the test broker with one channel.
pub struct Broker {
    pub conn: Connection,
    pub ch: Channel,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to 127.0.0.1:5672.
    pub async fn connect() -> Result<Self> {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        Ok(Self { conn, ch })
    }

    /// Declares `topo` (what the sharder and worker declare too).
    pub async fn declare(&self, topo: &AmqpTopology) -> Result<()> {
        topo.declare(&self.ch).await?;
        Ok(())
    }

    /// Deletes `topo`, messages included (best effort on a fresh channel:
    /// a failed step of a scenario may have closed the main one).
    pub async fn delete(&self, topo: &AmqpTopology) {
        if let Ok(ch) = self.conn.create_channel().await {
            let _ = topo.delete(&ch).await;
        }
    }

    /// Messages ready in each partition queue (not yet delivered).
    pub async fn backlog(&self, topo: &AmqpTopology) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for p in 0..topo.partitions {
            out.push(self.queue_count(&topo.queue(p)).await?);
        }
        Ok(out)
    }

    /// Messages ready in `queue` (passive declare).
    pub async fn queue_count(&self, queue: &str) -> Result<u32> {
        let ch = self.conn.create_channel().await?;
        let q = envelope::topology::inspect_queue(&ch, queue).await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(q.message_count())
    }

    /// Publishes raw bytes to `exchange` with `routing_key`, confirmed.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) -> Result<()> {
        let ch = self.conn.create_channel().await?;
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(())
    }

    /// Starts copying every message of `topo`'s exchange.
    pub async fn tap(&self, topo: &AmqpTopology) -> Result<Tap> {
        let (ch, mut consumer) = self.copy_of(&topo.exchange, "scenario-tap").await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let undecodable = Arc::new(Mutex::new(0u64));
        let (e, u) = (events.clone(), undecodable.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(m)) = consumer.next().await {
                match envelope::decode(&m.data) {
                    Ok(batch) => {
                        let mut out = e.lock().unwrap_or_else(|p| p.into_inner());
                        for ev in batch.events {
                            out.push(TapEvent {
                                shard_id: batch.shard_id,
                                epoch: ev.epoch,
                                seq: ev.seq,
                                t: ev.t.to_owned(),
                                received_at: ev.received_at,
                                guild_id: ev.guild_id,
                                d: String::from_utf8_lossy(ev.d).into_owned(),
                            });
                        }
                    }
                    Err(_) => *u.lock().unwrap_or_else(|p| p.into_inner()) += 1,
                }
            }
        });
        Ok(Tap {
            _ch: ch,
            events,
            undecodable,
            task,
        })
    }

    /// Starts copying every clean event the workers publish to `topo`'s
    /// output exchange (`<base>.events`), deduplicated by `message_id`
    /// (publication is at-least-once).
    pub async fn clean_tap(&self, topo: &AmqpTopology) -> Result<CleanTap> {
        let (ch, mut consumer) = self
            .copy_of(&topo.output_exchange, "scenario-clean-tap")
            .await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let e = events.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(m)) = consumer.next().await {
                let id = m
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                if !seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
                    continue;
                }
                let guild_id = m
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-bulwark-guild-id"))
                    .and_then(|v| match v {
                        lapin::types::AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).parse().ok()
                        }
                        _ => None,
                    });
                e.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(CleanEvent {
                        name: m.routing_key.as_str().to_owned(),
                        guild_id,
                        body: m.data,
                    });
            }
        });
        Ok(CleanTap {
            _ch: ch,
            events,
            task,
        })
    }

    /// An exclusive, auto-deleted queue bound to the topic exchange
    /// `exchange` with `#`, and its consumer (no acks): a copy of every
    /// message published there.
    async fn copy_of(&self, exchange: &str, tag: &str) -> Result<(Channel, lapin::Consumer)> {
        let ch = self.conn.create_channel().await?;
        let q = envelope::topology::private_queue(&ch, exchange, FieldTable::default()).await?;
        let consumer = ch
            .basic_consume(
                q.name().as_str().into(),
                tag.into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((ch, consumer))
    }

    /// Deletes an exchange (best effort).
    pub async fn delete_exchange(&self, name: &str) {
        let _ = self
            .ch
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// A running copy of the exchange's messages.
pub struct Tap {
    _ch: Channel,
    events: Arc<Mutex<Vec<TapEvent>>>,
    undecodable: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("events", &self.len()).finish()
    }
}

impl Tap {
    /// Every event copied so far, in arrival order.
    pub fn events(&self) -> Vec<TapEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Events copied so far.
    pub fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True before the first event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages that were not envelopes.
    pub fn undecodable(&self) -> u64 {
        *self.undecodable.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One clean event off the output exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanEvent {
    /// The clean name (the routing key): `GUILD_AVAILABLE`, `MESSAGE_CREATE`...
    pub name: String,
    pub guild_id: Option<u64>,
    pub body: Vec<u8>,
}

/// A running copy of the clean stream, one event per `message_id`.
pub struct CleanTap {
    _ch: Channel,
    events: Arc<Mutex<Vec<CleanEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for CleanTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CleanTap")
            .field("events", &self.events().len())
            .finish()
    }
}

impl CleanTap {
    /// Every clean event so far, in arrival order.
    pub fn events(&self) -> Vec<CleanEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Clean events named `name` so far.
    pub fn count(&self, name: &str) -> usize {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.name == name)
            .count()
    }
}

impl Drop for CleanTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
