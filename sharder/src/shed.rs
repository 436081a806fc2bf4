//! Load shedding: event types dropped at the sharder, changeable at runtime.
//!
//! During an incident (a PRESENCE_UPDATE flood, a slow broker) the cheapest
//! event is the one never published. [`ShedSink`] wraps the real sink and
//! drops every event whose name is in the [`ShedList`], confirming it at
//! once, so the shard's confirmed seq moves past it like a published event
//! (nothing downstream needs it, and a resume must not replay it).
//!
//! The lifecycle events the worker's cache depends on (READY, RESUMED,
//! GUILD_CREATE, GUILD_DELETE) are refused: dropping them would corrupt the
//! cache, not relieve it.

use crate::sink::{EventSink, ShardEvent, SinkClosed, TrySend};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Events that can never be shed.
pub const NEVER_SHED: &[&str] = &["READY", "RESUMED", "GUILD_CREATE", "GUILD_DELETE"];

/// Why a shed list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShedError {
    #[error("`{0}` is not an event name (1-64 of A-Z, 0-9, _)")]
    BadName(String),
    #[error("{0} keeps the cache consistent and cannot be shed")]
    Protected(String),
}

/// The set of event names dropped, shared by every shard and the admin API.
#[derive(Debug, Clone, Default)]
pub struct ShedList(Arc<Names>);

/// The set, and whether it has anything in it: every event of every shard
/// asks, and the list is almost always empty, so that answer is one relaxed
/// load instead of a read lock whose counter the shards' threads would
/// bounce between their caches.
#[derive(Debug, Default)]
struct Names {
    any: AtomicBool,
    set: RwLock<BTreeSet<String>>,
}

impl ShedList {
    /// A list holding `names` (checked like [`ShedList::set`]).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> Result<Self, ShedError> {
        let list = Self::default();
        list.set(names)?;
        Ok(list)
    }

    /// Replaces the whole set; on error nothing changes.
    pub fn set<I: IntoIterator<Item = S>, S: AsRef<str>>(&self, names: I) -> Result<(), ShedError> {
        let mut next = BTreeSet::new();
        for n in names {
            let n = n.as_ref();
            let valid = !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(ShedError::BadName(n.chars().take(64).collect()));
            }
            if NEVER_SHED.contains(&n) {
                return Err(ShedError::Protected(n.to_owned()));
            }
            next.insert(n.to_owned());
        }
        let mut set = self.0.set.write().unwrap_or_else(|e| e.into_inner());
        self.0.any.store(!next.is_empty(), Ordering::Relaxed);
        *set = next;
        Ok(())
    }

    /// The names shed now.
    pub fn get(&self) -> Vec<String> {
        let set = self.0.set.read().unwrap_or_else(|e| e.into_inner());
        set.iter().cloned().collect()
    }

    /// True when `event` is dropped.
    pub fn contains(&self, event: &str) -> bool {
        if !self.0.any.load(Ordering::Relaxed) {
            return false;
        }
        let set = self.0.set.read().unwrap_or_else(|e| e.into_inner());
        set.contains(event)
    }
}

/// A sink that drops (and confirms) shed events and passes the rest on.
#[derive(Debug)]
pub struct ShedSink<K> {
    inner: K,
    list: ShedList,
}

impl<K: EventSink> ShedSink<K> {
    pub fn new(inner: K, list: ShedList) -> Self {
        Self { inner, list }
    }

    /// Drops `event` (confirmed, so its shard moves on) when its name is
    /// shed; true if it was.
    fn shed(&self, event: &mut ShardEvent) -> bool {
        if !self.list.contains(&event.event) {
            return false;
        }
        metrics::counter!("sharder_events_shed_total").increment(1);
        event.take_ack().confirm();
        true
    }
}

impl<K: EventSink> EventSink for ShedSink<K> {
    async fn send(&self, mut event: ShardEvent) -> Result<(), SinkClosed> {
        if self.shed(&mut event) {
            return Ok(());
        }
        self.inner.send(event).await
    }

    fn try_send(&self, mut event: ShardEvent) -> TrySend {
        if self.shed(&mut event) {
            return TrySend::Taken;
        }
        self.inner.try_send(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{ChannelSink, EventHeader};
    use bytes::Bytes;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn shed_events_are_confirmed_and_not_forwarded() {
        let list = ShedList::new(["TYPING_START"]).unwrap();
        assert_eq!(
            list.set(["READY"]),
            Err(ShedError::Protected("READY".into()))
        );
        assert!(matches!(list.set(["typing"]), Err(ShedError::BadName(_))));
        assert_eq!(list.get(), ["TYPING_START"], "refused sets change nothing");
        let (inner, mut rx) = ChannelSink::new(8, false);
        let sink = ShedSink::new(inner, list.clone());
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let ev = |seq, t: &str| {
            let h = EventHeader {
                shard_id: 0,
                num_shards: 1,
                epoch: 1,
                seq,
                guild_id: None,
                guild_create: None,
            };
            ShardEvent::new(h, t.into(), Bytes::new(), ack_tx.clone())
        };
        sink.send(ev(1, "TYPING_START")).await.unwrap();
        assert_eq!(ack_rx.recv().await.unwrap().seq, 1, "confirmed at once");
        sink.send(ev(2, "MESSAGE_CREATE")).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().seq, 2);
        assert!(rx.try_recv().is_err(), "the shed event was not forwarded");
        list.set(Vec::<String>::new()).unwrap();
        sink.send(ev(3, "TYPING_START")).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().seq, 3, "unshed at runtime");
        assert!(ack_rx.try_recv().is_err());
    }
}
