//! The output exchange: clean events published for bot processes, so bot
//! logic runs in its own deployment instead of inside the worker.
//!
//! # Contract
//!
//! Every clean event ([`CleanEvent`]) goes to the topic exchange
//! `envelope::topology::OUTPUT_EXCHANGE` with the clean name as routing key
//! (`GUILD_JOINED`, `GUILD_AVAILABLE`, `MESSAGE_CREATE`, ...) and the raw
//! gateway payload `d` as body. Each message carries:
//!
//! * `message_id` = `"<shard>:<epoch>:<seq>"`: one gateway event yields at
//!   most one clean event, so this id is stable across redeliveries and
//!   replicas; consumers deduplicate on it;
//! * headers `x-bulwark-shard`, `x-bulwark-epoch`, `x-bulwark-seq`,
//!   `x-bulwark-guild-id` (when the event has one), `x-bulwark-event` (the
//!   gateway name), and `x-bulwark-initial` on `GUILD_AVAILABLE`.
//!
//! # Delivery: at-least-once with a dedup id
//!
//! The consumer publishes a message's clean events with publisher confirms
//! and acks the input message only after the store writes are applied and
//! every output publish is confirmed. The store announces a lifecycle event
//! only on its first (newest) write, so a redelivery after a failed publish
//! would not announce it again; to keep it, the events of a message are
//! held in [`Unconfirmed`] until confirmed, keyed by the message's first
//! event, and a redelivery of that message publishes them again (same
//! `message_id`). That covers broker failures while the worker lives. A
//! worker crash between the store write and the confirm still loses that
//! announcement (Redis store; the in-memory store loses its cache then
//! anyway and re-learns it from the new sessions).

use crate::processor::{CleanEvent, CleanKind};
use crate::queued::Queued;
use envelope::Version;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Header names of the output messages.
pub const SHARD_HEADER: &str = "x-bulwark-shard";
pub const EPOCH_HEADER: &str = "x-bulwark-epoch";
pub const SEQ_HEADER: &str = "x-bulwark-seq";
pub const GUILD_HEADER: &str = "x-bulwark-guild-id";
pub const EVENT_HEADER: &str = "x-bulwark-event";
pub const INITIAL_HEADER: &str = "x-bulwark-initial";

/// An owned clean event, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub routing_key: String,
    pub message_id: String,
    pub shard_id: u32,
    pub version: Version,
    pub guild_id: Option<u64>,
    pub event: String,
    pub initial: Option<bool>,
    pub body: Vec<u8>,
}

impl Outgoing {
    /// Copies what the output message needs out of a borrowed clean event.
    pub fn from_clean(ev: &CleanEvent<'_>) -> Self {
        Self {
            routing_key: ev.name().to_owned(),
            message_id: message_id(ev.shard_id, ev.version),
            shard_id: ev.shard_id,
            version: ev.version,
            guild_id: ev.guild_id,
            event: ev.t.to_owned(),
            initial: match ev.kind {
                CleanKind::GuildAvailable { initial } => Some(initial),
                _ => None,
            },
            body: ev.d.to_vec(),
        }
    }

    fn properties(&self) -> BasicProperties {
        let mut h = FieldTable::default();
        let s = |v: String| AMQPValue::LongString(LongString::from(v));
        h.insert(SHARD_HEADER.into(), AMQPValue::LongUInt(self.shard_id));
        h.insert(EPOCH_HEADER.into(), s(self.version.epoch.to_string()));
        h.insert(SEQ_HEADER.into(), s(self.version.seq.to_string()));
        // Snowflakes exceed i64-safe JSON numbers in some clients: strings.
        if let Some(g) = self.guild_id {
            h.insert(GUILD_HEADER.into(), s(g.to_string()));
        }
        h.insert(EVENT_HEADER.into(), s(self.event.clone()));
        if let Some(i) = self.initial {
            h.insert(INITIAL_HEADER.into(), AMQPValue::Boolean(i));
        }
        BasicProperties::default()
            .with_message_id(ShortString::from(self.message_id.as_str()))
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(h)
    }
}

/// The stable id of the clean event of `(shard, version)`.
pub fn message_id(shard_id: u32, version: Version) -> String {
    format!("{shard_id}:{}:{}", version.epoch, version.seq)
}

/// Why publishing failed: the input message must not be acked.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused (nack) output message {0}")]
    Nacked(String),
}

/// Publishes `events` to `exchange` on `ch` (publisher confirms must be
/// enabled on it) and waits until the broker confirmed every one.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    events: impl Into<Arc<[Outgoing]>>,
) -> Result<usize, PublishError> {
    publish(ch, exchange, events.into()).await
}

/// Publishes `events` without waiting: their frames are queued with lapin
/// now, in order (see `queued.rs`), and the returned [`Confirms`]
/// resolves once the broker confirmed every one. The events are shared,
/// not copied, with the [`Unconfirmed`] record that keeps them for a
/// redelivery.
pub fn publish(ch: &Channel, exchange: &str, events: Arc<[Outgoing]>) -> Confirms {
    let exchange = ShortString::from(exchange);
    let mut sends = Vec::with_capacity(events.len());
    for i in 0..events.len() {
        let ch = ch.clone();
        let exchange = exchange.clone();
        let events = events.clone();
        let sent = Queued::new(async move {
            let ev = &events[i];
            let key = ShortString::from(ev.routing_key.as_str());
            let props = ev.properties();
            ch.basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                &ev.body,
                props,
            )
            .await
        });
        sends.push(sent);
    }
    Confirms(Box::pin(async move {
        let n = sends.len();
        let mut confirms = Vec::with_capacity(n);
        for sent in sends {
            confirms.push(sent.await?);
        }
        for (c, ev) in confirms.into_iter().zip(events.iter()) {
            if c.await?.is_nack() {
                return Err(PublishError::Nacked(ev.message_id.clone()));
            }
        }
        metrics::counter!("worker_events_published_total").increment(n as u64);
        Ok(n)
    }))
}

/// The broker's answers to one message's output publishes: resolves to the
/// number of messages confirmed, or the first error or nack.
pub struct Confirms(Pin<Box<dyn Future<Output = Result<usize, PublishError>> + Send>>);

impl Future for Confirms {
    type Output = Result<usize, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// An input message, as [`Unconfirmed`] knows it: its shard and its first
/// event's version.
pub type MessageKey = (u32, Version);

/// Clean events published but not yet confirmed, by input message. Shared
/// by every session of a process.
#[derive(Debug, Default)]
pub struct Unconfirmed {
    by_message: Mutex<HashMap<MessageKey, Arc<[Outgoing]>>>,
}

/// Messages whose output is kept for a redelivery; beyond it the oldest
/// entries are not kept (logged), so a broker outage cannot grow memory
/// without bound.
const MAX_UNCONFIRMED: usize = 65_536;

impl Unconfirmed {
    /// Records `fresh` for `key` and returns everything to publish for it:
    /// what an earlier, unconfirmed attempt produced plus `fresh`, without
    /// repeating an id. The record and the publish share one copy.
    pub fn merge(&self, key: MessageKey, fresh: Vec<Outgoing>) -> Arc<[Outgoing]> {
        let mut map = self.by_message.lock().unwrap_or_else(|e| e.into_inner());
        let held = map.remove(&key);
        // An id is (shard, version): one gateway event yields at most one
        // clean event. Checked by set, not by scan: a message holds up to
        // `envelope::MAX_BATCH_EVENTS` events.
        let mut all: Vec<Outgoing> =
            Vec::with_capacity(fresh.len() + held.as_ref().map_or(0, |h| h.len()));
        let mut seen = HashSet::with_capacity(all.capacity());
        for ev in held.iter().flat_map(|h| h.iter().cloned()).chain(fresh) {
            if seen.insert((ev.shard_id, ev.version)) {
                all.push(ev);
            }
        }
        let all: Arc<[Outgoing]> = all.into();
        if !all.is_empty() {
            if map.len() >= MAX_UNCONFIRMED {
                tracing::warn!(
                    held = map.len(),
                    "too many unconfirmed output messages held; a redelivery of this one will not re-publish"
                );
            } else {
                map.insert(key, all.clone());
            }
        }
        all
    }

    /// The output of `key` was confirmed.
    pub fn confirmed(&self, key: MessageKey) {
        self.by_message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Number of messages held.
    pub fn len(&self) -> usize {
        self.by_message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(seq: u64) -> Outgoing {
        Outgoing {
            routing_key: "GUILD_JOINED".into(),
            message_id: message_id(3, Version::new(7, seq)),
            shard_id: 3,
            version: Version::new(7, seq),
            guild_id: Some(1),
            event: "GUILD_CREATE".into(),
            initial: None,
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(message_id(3, Version::new(7, 9)), "3:7:9");
        assert_ne!(
            message_id(3, Version::new(7, 9)),
            message_id(3, Version::new(79, 0))
        );
    }

    #[test]
    fn a_redelivery_republishes_what_was_not_confirmed() {
        let u = Unconfirmed::default();
        let key = (3, Version::new(7, 1));
        assert_eq!(u.merge(key, vec![out(1), out(2)]).len(), 2);
        // Redelivered: the store dedups the join, so nothing fresh; the held
        // events come back, a repeated one is not doubled.
        let again = u.merge(key, vec![out(2)]);
        assert_eq!(*again, [out(1), out(2)]);
        u.confirmed(key);
        assert!(u.is_empty());
        assert!(u.merge(key, Vec::new()).is_empty());
        assert!(u.is_empty());
    }

    #[test]
    fn a_merge_keeps_order_drops_repeated_ids_and_shares_one_copy() {
        let u = Unconfirmed::default();
        let key = (3, Version::new(7, 1));
        let first = u.merge(key, vec![out(1), out(2), out(1), out(3)]);
        assert_eq!(*first, [out(1), out(2), out(3)]);
        // The record holds the very events handed to the publish.
        assert_eq!(Arc::strong_count(&first), 2);
        drop(first);
        let again = u.merge(key, vec![out(4), out(2)]);
        assert_eq!(*again, [out(1), out(2), out(3), out(4)]);
        assert_eq!(u.len(), 1);
    }
}
