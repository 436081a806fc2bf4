//! Where a shard's events go, and how their acceptance comes back.
//!
//! An event is only safe once the next hop has it (RabbitMQ's publisher
//! confirm, or a test's receiver). The persisted session's `seq` must never
//! pass an event that was not accepted, or a restart would resume after it
//! and lose it. So delivery has two halves: [`EventSink::send`] returns when
//! the sink has taken the event (backpressure: the shard stops reading from
//! the gateway while the sink is full), and the sink later calls
//! [`Ack::confirm`] when the event is durable.
//!
//! # Algorithm
//! Each event carries an [`Ack`] for `(epoch, seq)` that sends a confirmation
//! to its shard. The shard's [`ConfirmedSeq`] records every forwarded `seq`
//! as outstanding until confirmed; the confirmed sequence number is
//! everything below the smallest outstanding one (or the highest forwarded
//! when none is), so confirmations may arrive in any order. Confirmations
//! of an older epoch (a previous session) are ignored. Outstanding seqs are
//! kept in a ring in forwarding order (which is ascending: the gateway's
//! order), each with a confirmed mark; confirming the oldest pops every
//! marked one behind it, so the usual in-order case is O(1) per event with
//! no allocation per event.

use bytes::Bytes;
use envelope::GuildCreateKind;
use gateway_protocol::EventName;
use std::collections::VecDeque;
use std::future::Future;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// One dispatch with its provenance.
#[derive(Debug)]
pub struct ShardEvent {
    pub shard_id: u32,
    pub num_shards: u32,
    /// The session's epoch; `(epoch, seq)` is the event's version.
    pub epoch: u64,
    /// The gateway's `s`.
    pub seq: u64,
    /// The gateway's `t`.
    pub event: EventName,
    /// `d.guild_id`, or `d.id` for guild events.
    pub guild_id: Option<u64>,
    /// The classification of a GUILD_CREATE.
    pub guild_create: Option<GuildCreateKind>,
    pub received_at: SystemTime,
    /// The raw bytes of `d`, as received.
    pub data: Bytes,
    ack: Ack,
}

impl ShardEvent {
    /// An event read now.
    #[cfg(test)]
    pub(crate) fn new(
        header: EventHeader,
        event: EventName,
        data: Bytes,
        ack: mpsc::UnboundedSender<Confirmation>,
    ) -> Self {
        Self::received(header, event, data, ack, SystemTime::now())
    }

    /// An event read at `received_at` (a shard reads the clock once per
    /// burst of messages, not once per event).
    pub(crate) fn received(
        header: EventHeader,
        event: EventName,
        data: Bytes,
        ack: mpsc::UnboundedSender<Confirmation>,
        received_at: SystemTime,
    ) -> Self {
        Self {
            shard_id: header.shard_id,
            num_shards: header.num_shards,
            epoch: header.epoch,
            seq: header.seq,
            event,
            guild_id: header.guild_id,
            guild_create: header.guild_create,
            received_at,
            data,
            ack: Ack {
                tx: Some(ack),
                epoch: header.epoch,
                seq: header.seq,
            },
        }
    }

    /// The handle that confirms this event to its shard.
    pub fn ack(&self) -> Ack {
        self.ack.clone()
    }

    /// Moves the confirming handle out; the event's own [`ack`](Self::ack)
    /// then confirms nothing. For a sink that is done with the event's
    /// confirmation: it saves cloning the handle (two atomic increments on
    /// the shard's thread, and two decrements wherever the clone is
    /// dropped) on every event.
    pub fn take_ack(&mut self) -> Ack {
        let spent = Ack {
            tx: None,
            epoch: self.ack.epoch,
            seq: self.ack.seq,
        };
        std::mem::replace(&mut self.ack, spent)
    }

    /// The event in the queue's envelope format (borrowing `t` and `d`).
    pub fn envelope(&self) -> envelope::Event<'_> {
        let received_at = crate::clock::unix_ms(self.received_at);
        envelope::Event {
            epoch: self.epoch,
            seq: self.seq,
            received_at,
            t: &self.event,
            guild_id: self.guild_id,
            guild_create: self.guild_create,
            d: &self.data,
        }
    }
}

/// The fields of a [`ShardEvent`] besides its name and data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventHeader {
    pub shard_id: u32,
    pub num_shards: u32,
    pub epoch: u64,
    pub seq: u64,
    pub guild_id: Option<u64>,
    pub guild_create: Option<GuildCreateKind>,
}

/// A sink's promise that an event is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    pub epoch: u64,
    pub seq: u64,
}

/// Confirms one event to its shard (or nothing, once taken from its
/// event by [`ShardEvent::take_ack`]).
#[derive(Debug, Clone)]
pub struct Ack {
    tx: Option<mpsc::UnboundedSender<Confirmation>>,
    epoch: u64,
    seq: u64,
}

impl Ack {
    /// The event is durable downstream. A shard that has gone away simply
    /// ignores it.
    pub fn confirm(self) {
        if let Some(tx) = self.tx {
            let _ = tx.send(Confirmation {
                epoch: self.epoch,
                seq: self.seq,
            });
        }
    }
}

/// The sink has shut down; the shard stops.
#[derive(Debug, Clone, thiserror::Error)]
#[error("event sink closed: {0}")]
pub struct SinkClosed(pub String);

/// What [`EventSink::try_send`] did with an event.
#[derive(Debug)]
pub enum TrySend {
    /// The sink took it (not necessarily durably).
    Taken,
    /// The sink cannot take it without waiting: here it is back, for
    /// [`EventSink::send`].
    Wait(ShardEvent),
    /// The sink has shut down.
    Closed(SinkClosed),
}

/// The next hop of events.
pub trait EventSink: Send + Sync + 'static {
    /// Returns once the sink has taken `event` (not necessarily durably).
    fn send(&self, event: ShardEvent) -> impl Future<Output = Result<(), SinkClosed>> + Send;

    /// Takes `event` now if that needs no wait. A shard offers every event
    /// here first: a sink with room then costs no future, no clone of the
    /// sink's handle and no timer. The default always defers to `send`.
    fn try_send(&self, event: ShardEvent) -> TrySend {
        TrySend::Wait(event)
    }
}

/// An in-process sink over a bounded channel, for tests and demos. The
/// receiver confirms events (via [`ShardEvent::ack`]) when it has handled
/// them, or the sink confirms on acceptance when built with `auto_confirm`.
#[derive(Debug, Clone)]
pub struct ChannelSink {
    tx: mpsc::Sender<ShardEvent>,
    auto_confirm: bool,
}

impl ChannelSink {
    /// A sink holding at most `capacity` unread events.
    pub fn new(capacity: usize, auto_confirm: bool) -> (Self, mpsc::Receiver<ShardEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx, auto_confirm }, rx)
    }

    /// Hands `event` to the receiver, confirming it when auto-confirming.
    fn accept(&self, permit: mpsc::Permit<'_, ShardEvent>, mut event: ShardEvent) {
        if self.auto_confirm {
            let ack = event.take_ack();
            permit.send(event);
            ack.confirm();
        } else {
            permit.send(event);
        }
    }
}

impl EventSink for ChannelSink {
    fn try_send(&self, event: ShardEvent) -> TrySend {
        match self.tx.try_reserve() {
            Ok(permit) => {
                self.accept(permit, event);
                TrySend::Taken
            }
            Err(mpsc::error::TrySendError::Full(())) => TrySend::Wait(event),
            Err(mpsc::error::TrySendError::Closed(())) => {
                TrySend::Closed(SinkClosed("channel receiver dropped".into()))
            }
        }
    }

    async fn send(&self, event: ShardEvent) -> Result<(), SinkClosed> {
        let permit = self
            .tx
            .reserve()
            .await
            .map_err(|_| SinkClosed("channel receiver dropped".into()))?;
        self.accept(permit, event);
        Ok(())
    }
}

/// The highest sequence number confirmed contiguously, for one session.
#[derive(Debug, Clone, Default)]
pub struct ConfirmedSeq {
    epoch: u64,
    base: u64,
    highest: u64,
    /// Forwarded seqs, ascending, with "confirmed" marks; the front is
    /// never marked.
    ring: VecDeque<(u64, bool)>,
    /// Unmarked entries of `ring`.
    unconfirmed: usize,
}

/// A ring that emptied keeps at most this many slots (an idle shard should
/// not hold its busiest moment's capacity).
const KEPT_SLOTS: usize = 16;

impl ConfirmedSeq {
    /// Starts tracking `epoch`, everything up to `base` already confirmed.
    pub fn new(epoch: u64, base: u64) -> Self {
        Self {
            epoch,
            base,
            highest: base,
            ring: VecDeque::new(),
            unconfirmed: 0,
        }
    }

    /// `seq` was handed to the sink.
    pub fn forwarded(&mut self, seq: u64) {
        if seq <= self.base {
            return;
        }
        self.highest = self.highest.max(seq);
        match self.ring.back() {
            Some(&(last, _)) if last >= seq => {
                // A replay after a resume: the seq may still be in flight
                // from before, and is outstanding again either way.
                match self.ring.binary_search_by_key(&seq, |&(s, _)| s) {
                    Ok(i) => {
                        if let Some(slot) = self.ring.get_mut(i)
                            && slot.1
                        {
                            slot.1 = false;
                            self.unconfirmed += 1;
                        }
                    }
                    Err(i) => {
                        self.ring.insert(i, (seq, false));
                        self.unconfirmed += 1;
                    }
                }
            }
            _ => {
                self.ring.push_back((seq, false));
                self.unconfirmed += 1;
            }
        }
    }

    /// `seq` was handled without the sink (e.g. dropped by load shedding):
    /// nothing downstream needs it.
    #[cfg(test)]
    pub fn skipped(&mut self, seq: u64) {
        self.highest = self.highest.max(seq);
    }

    /// Applies a confirmation; false when it belongs to another session.
    pub fn confirm(&mut self, c: Confirmation) -> bool {
        if c.epoch != self.epoch {
            return false;
        }
        let at = match self.ring.front() {
            Some(&(first, _)) if first == c.seq => Some(0),
            Some(_) => self.ring.binary_search_by_key(&c.seq, |&(s, _)| s).ok(),
            None => None,
        };
        if let Some(slot) = at.and_then(|i| self.ring.get_mut(i))
            && !slot.1
        {
            slot.1 = true;
            self.unconfirmed -= 1;
        }
        while self.ring.front().is_some_and(|&(_, done)| done) {
            self.ring.pop_front();
        }
        if self.ring.is_empty() && self.ring.capacity() > KEPT_SLOTS {
            self.ring = VecDeque::new();
        }
        true
    }

    /// Everything up to this seq is confirmed.
    pub fn confirmed(&self) -> u64 {
        match self.ring.front() {
            Some(&(first, _)) => first.saturating_sub(1).max(self.base),
            None => self.highest,
        }
    }

    /// Events forwarded and not confirmed yet.
    pub fn outstanding(&self) -> usize {
        self.unconfirmed
    }

    /// The epoch tracked.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(epoch: u64, seq: u64) -> Confirmation {
        Confirmation { epoch, seq }
    }

    /// The set-based definition the ring implements.
    #[derive(Default)]
    struct Model {
        base: u64,
        highest: u64,
        outstanding: std::collections::BTreeSet<u64>,
    }

    proptest::proptest! {
        #[test]
        fn the_ring_agrees_with_the_set_definition(
            base in 0u64..5,
            steps in proptest::collection::vec((0u8..4, 0u64..40), 0..200),
        ) {
            let mut ring = ConfirmedSeq::new(1, base);
            let mut model = Model { base, highest: base, ..Model::default() };
            let mut next = base + 1;
            for (kind, n) in steps {
                match kind {
                    // Forward the next seq, in gateway order.
                    0 | 1 => {
                        ring.forwarded(next);
                        model.outstanding.insert(next);
                        model.highest = model.highest.max(next);
                        next += 1;
                    }
                    // A replay of an earlier seq (after a resume).
                    2 => {
                        let seq = n.min(next);
                        ring.forwarded(seq);
                        if seq > model.base {
                            model.outstanding.insert(seq);
                            model.highest = model.highest.max(seq);
                        }
                    }
                    // A confirmation, of any seq, in any order.
                    _ => {
                        ring.confirm(c(1, n));
                        model.outstanding.remove(&n);
                    }
                }
                let expected = match model.outstanding.first() {
                    Some(&f) => f.saturating_sub(1).max(model.base),
                    None => model.highest,
                };
                proptest::prop_assert_eq!(ring.confirmed(), expected);
                proptest::prop_assert_eq!(ring.outstanding(), model.outstanding.len());
            }
        }
    }

    #[test]
    fn confirmed_seq_is_contiguous() {
        let mut t = ConfirmedSeq::new(5, 10);
        assert_eq!(t.confirmed(), 10);
        for s in 11..=15 {
            t.forwarded(s);
        }
        assert_eq!(t.confirmed(), 10);
        t.confirm(c(5, 12));
        t.confirm(c(5, 13));
        assert_eq!(t.confirmed(), 10, "11 still outstanding");
        assert_eq!(t.outstanding(), 3);
        assert!(!t.confirm(c(4, 11)), "old epoch");
        assert_eq!(t.confirmed(), 10);
        t.confirm(c(5, 11));
        assert_eq!(t.confirmed(), 13);
        t.skipped(16);
        t.confirm(c(5, 14));
        t.confirm(c(5, 15));
        assert_eq!(t.confirmed(), 16);
        // Replays at or below the base are not outstanding.
        t.forwarded(3);
        assert_eq!(t.confirmed(), 16);
    }

    #[tokio::test]
    async fn channel_sink_confirms_when_told() {
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let header = EventHeader {
            shard_id: 1,
            num_shards: 2,
            epoch: 9,
            seq: 3,
            guild_id: Some(4),
            guild_create: None,
        };
        let (sink, mut rx) = ChannelSink::new(1, false);
        sink.send(ShardEvent::new(
            header,
            "X".into(),
            Bytes::from_static(b"{}"),
            ack_tx.clone(),
        ))
        .await
        .unwrap();
        let ev = rx.recv().await.unwrap();
        assert_eq!((ev.seq, ev.epoch, &ev.data[..]), (3, 9, &b"{}"[..]));
        assert!(ack_rx.try_recv().is_err());
        ev.ack().confirm();
        assert_eq!(ack_rx.recv().await.unwrap(), c(9, 3));

        // The envelope keeps the provenance and the exact bytes of d.
        let mut joined = header;
        joined.guild_create = Some(GuildCreateKind::Joined);
        let ev = ShardEvent::new(
            joined,
            "GUILD_CREATE".into(),
            Bytes::from_static(br#"{"id":"4"}"#),
            ack_tx.clone(),
        );
        let mut enc = envelope::BatchEncoder::new(ev.shard_id, ev.num_shards).unwrap();
        enc.push(&ev.envelope()).unwrap();
        let bytes = enc.finish();
        let batch = envelope::decode(&bytes).unwrap();
        assert_eq!((batch.shard_id, batch.num_shards), (1, 2));
        let e = batch.events[0];
        assert_eq!(
            (e.epoch, e.seq, e.guild_id, e.t),
            (9, 3, Some(4), "GUILD_CREATE")
        );
        assert_eq!(e.guild_create, Some(envelope::GuildCreateKind::Joined));
        assert_eq!(e.d, br#"{"id":"4"}"#);
        assert!(e.received_at > 1_700_000_000_000);

        let (auto, mut rx2) = ChannelSink::new(1, true);
        auto.send(ShardEvent::new(header, "X".into(), Bytes::new(), ack_tx))
            .await
            .unwrap();
        assert_eq!(ack_rx.recv().await.unwrap(), c(9, 3));
        drop(rx2.recv().await);
        drop(rx2);
        let (ack_tx, _r) = mpsc::unbounded_channel();
        assert!(
            auto.send(ShardEvent::new(header, "X".into(), Bytes::new(), ack_tx))
                .await
                .is_err()
        );
    }
}
