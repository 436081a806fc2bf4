//! The AMQP sink's publisher task: the one owner of the broker connection
//! behind [`crate::AmqpSink`], which hands it events through a bounded
//! channel.
//!
//! # Algorithm
//! 1. Connect through `dnscache` (`Resolver::amqp_connect`), open a channel
//!    in confirm mode, declare the shared topology ([`AmqpTopology`]).
//! 2. Gather events from the channel into a round, group them by shard in
//!    gateway order and frame each group with `envelope::BatchEncoder` (one
//!    message per shard of a shard total per round, split at
//!    `batch_max_events` and the envelope's size limits). A round is framed
//!    as soon as fewer than [`ROUNDS_IN_FLIGHT`] rounds await their
//!    confirms: on an idle pipe an event goes out at once, and under load
//!    everything that arrives during a confirm goes out together (group
//!    commit). The broker's cost is
//!    mostly per message, so this is what keeps it ahead of the gateway: in
//!    `benches/amqp_e2e.rs` messages grew from ~21 events to ~200 and the
//!    confirmed rate from 108k to 170k events/s. A round also goes out when
//!    it holds `sink_buffer` events. A message of one event is routed
//!    `"<p>.<EVENT>"`, a batch `"<p>.BATCH"`. An event the envelope refuses
//!    (a GUILD_CREATE without a usable guild id has no marker, a bad name, a
//!    payload over 16 MiB) is logged, counted and confirmed at once, so the
//!    shard's seq moves past it instead of stalling.
//!
//!    At ordinary rates that is not enough: confirms come back within a
//!    millisecond or two, so a round held only what one or two gateway
//!    frames brought, and at 12.8k events/s over 16 shards messages
//!    carried 3.3 events, and every message and every wake-up was paid
//!    for on both sides (issue #23). So a due round may linger: until it
//!    is `publish_linger` old (from its first event), the task sleeps
//!    instead of waking for each event, and then takes everything the
//!    channel holds at once. It does not linger once a full message's
//!    worth of events waits, nor at shutdown. The linger is the most latency it
//!    adds; confirms are still awaited as they come. It is off by default:
//!    alone, at 1k-50k events/s, it cut messages by a quarter to a third
//!    but not the sharder's own CPU per event, which was a wake-up per
//!    gateway frame; `sharder.wake_coalesce` (on by default, see
//!    `bulwark_process::runtime_builder`) is what cut that, and gathers
//!    several frames per round by itself (BENCHMARKS.md, issue #23).
//! 3. Publish persistently (delivery mode 2) with up to `confirm_window`
//!    messages awaiting their confirms (pipelined). Confirms are awaited in
//!    publish order; an ack confirms every event of the message to its shard
//!    ([`crate::Ack::confirm`]); a nack puts the message back in front.
//! 4. A broker error or a confirm that does not come within
//!    `confirm_timeout`: every unconfirmed message goes back in front, in
//!    order, and the task reconnects after a capped exponential backoff with
//!    jitter. Nothing is confirmed that the broker did not confirm, so
//!    nothing is lost; republished messages may be duplicates, which the
//!    worker's versioned cache ignores.
//!
//! While disconnected the task does not read the channel, so memory stays
//! bounded by the channel's `sink_buffer` events, one round (at most
//! `sink_buffer` more) and `confirm_window` unconfirmed messages of at most
//! `batch_max_events` each. When every [`crate::AmqpSink`] clone is
//! dropped, the task publishes what is left, waits for its confirms and
//! ends: that is the drain at shutdown.

use crate::amqp_sink::{AmqpSinkConfig, AmqpSinkStats};
use crate::backoff::Backoff;
use crate::sink::{Ack, ShardEvent};
use envelope::BatchEncoder;
use envelope::topology::AmqpTopology;
use envelope::topology::BATCH_EVENT_NAME;
use gateway_protocol::EventName;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Rounds that may await their confirms while the next one gathers events.
/// Two keep the broker busy (one being confirmed, one queued behind it);
/// every event that arrives meanwhile waits for the next round, so under
/// load a message carries everything a shard sent during a confirm.
pub(crate) const ROUNDS_IN_FLIGHT: u64 = 2;

/// Full messages' worth of events, buffered or unconfirmed, from which the
/// sink counts as under load and turns `sharder.wake_coalesce` off.
const BACKLOG_MESSAGES: usize = 4;

/// One message and the events it confirms.
struct Outgoing {
    routing_key: String,
    message_id: String,
    body: Vec<u8>,
    acks: Vec<Ack>,
    /// When the current publish went out (publish-to-confirm latency).
    published_at: Option<tokio::time::Instant>,
    /// The round it was framed in.
    round: u64,
}

/// Why a connection's session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker did not confirm in confirm mode")]
    NotConfirmed,
}

pub(crate) struct Publisher {
    /// The connection while up, for [`crate::AmqpSink::connection`].
    connection: watch::Sender<Option<Arc<Connection>>>,
    resolver: dnscache::Resolver,
    cfg: AmqpSinkConfig,
    rx: mpsc::Receiver<ShardEvent>,
    /// Events taken from the channel, not yet framed: the next round.
    staged: Vec<ShardEvent>,
    /// Number of the next round framed.
    next_round: u64,
    /// When the first event of the staged round arrived.
    round_opened: Option<tokio::time::Instant>,
    /// Framed messages not yet published (or to publish again), in order.
    unsent: VecDeque<Outgoing>,
    /// Every sender is gone.
    closed: bool,
    backoff: Backoff,
    stats: Arc<AmqpSinkStats>,
    /// Set while the sink holds a backlog (`sharder.wake_coalesce` off).
    backlog: bulwark_process::Backlog,
}

impl Publisher {
    pub(crate) fn new(
        resolver: dnscache::Resolver,
        cfg: AmqpSinkConfig,
        rx: mpsc::Receiver<ShardEvent>,
        stats: Arc<AmqpSinkStats>,
        connection: watch::Sender<Option<Arc<Connection>>>,
    ) -> Self {
        Self {
            connection,
            backoff: Backoff::new(cfg.reconnect_base, cfg.reconnect_max),
            resolver,
            cfg,
            rx,
            staged: Vec::new(),
            next_round: 0,
            round_opened: None,
            unsent: VecDeque::new(),
            closed: false,
            stats,
            backlog: bulwark_process::Backlog::default(),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            if self.done() {
                return;
            }
            let connected = self.connect().await;
            let result = match connected {
                Ok((conn, ch)) => {
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                    metrics::gauge!("sharder_amqp_connected").set(1.0);
                    self.stats.connected.store(true, Ordering::Relaxed);
                    let conn = Arc::new(conn);
                    self.connection.send_replace(Some(conn.clone()));
                    let r = self.session(&ch).await;
                    self.connection.send_replace(None);
                    self.stats.connected.store(false, Ordering::Relaxed);
                    if r.is_ok() {
                        // Drained: everything is confirmed. A close the
                        // broker does not answer must not hold the
                        // shutdown.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            conn.close(200, "OK".into()),
                        )
                        .await;
                        return;
                    }
                    r
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                metrics::counter!("sharder_amqp_reconnects_total").increment(1);
                metrics::gauge!("sharder_amqp_connected").set(0.0);
                let delay = self.backoff.next_delay();
                tracing::warn!(error = %e, ?delay, unconfirmed = self.unsent.len(), "AMQP publisher disconnected; retrying");
                // Keep the depth gauges live while away: an outage is when
                // operators watch them.
                let retry_at = tokio::time::Instant::now() + delay;
                loop {
                    self.note_away();
                    let now = tokio::time::Instant::now();
                    if now >= retry_at {
                        break;
                    }
                    tokio::time::sleep((retry_at - now).min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    fn done(&self) -> bool {
        self.closed && self.staged.is_empty() && self.unsent.is_empty()
    }

    async fn connect(&self) -> Result<(Connection, Channel), SessionError> {
        let conn = self
            .resolver
            .amqp_connect(self.cfg.url.expose(), ConnectionProperties::default())
            .await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        self.cfg.topology.declare(&ch).await?;
        Ok((conn, ch))
    }

    /// Publishes until the input is closed and drained (Ok) or the
    /// connection fails (Err, with every unconfirmed message back in front
    /// of `unsent`, in publish order).
    async fn session(&mut self, ch: &Channel) -> Result<(), SessionError> {
        let mut inflight: VecDeque<(Outgoing, PublisherConfirm)> = VecDeque::new();
        let r = self.pump(ch, &mut inflight).await;
        if r.is_err() {
            while let Some((o, _)) = inflight.pop_back() {
                self.stats.republished.fetch_add(1, Ordering::Relaxed);
                self.unsent.push_front(o);
            }
        }
        r
    }

    async fn pump(
        &mut self,
        ch: &Channel,
        inflight: &mut VecDeque<(Outgoing, PublisherConfirm)>,
    ) -> Result<(), SessionError> {
        let window = self.cfg.confirm_window.max(1);
        let round_cap = self.round_cap();
        loop {
            if self.staged.is_empty() {
                self.round_opened = None;
            } else if self.round_opened.is_none() {
                self.round_opened = Some(tokio::time::Instant::now());
            }
            let due = self.unsent.is_empty() && self.round_due(inflight);
            let linger = due.then(|| self.lingering()).flatten();
            if due && linger.is_none() {
                self.take_ready(round_cap);
                self.frame();
            }
            while inflight.len() < window {
                let Some(o) = self.unsent.pop_front() else {
                    break;
                };
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/x-bulwark-envelope".into())
                    .with_message_id(ShortString::from(o.message_id.as_str()));
                let published = ch
                    .basic_publish(
                        self.cfg.topology.exchange.as_str().into(),
                        o.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &o.body,
                        props,
                    )
                    .await;
                match published {
                    Ok(confirm) => {
                        let mut o = o;
                        o.published_at = Some(tokio::time::Instant::now());
                        self.stats.published.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("sharder_amqp_messages_published_total").increment(1);
                        inflight.push_back((o, confirm));
                    }
                    Err(e) => {
                        self.unsent.push_front(o);
                        return Err(e.into());
                    }
                }
            }
            self.note_held(inflight);
            if inflight.is_empty() && self.unsent.is_empty() && self.staged.is_empty() {
                if self.closed {
                    return Ok(());
                }
                // Idle: the next event starts a round at once.
                if self.rx.recv_many(&mut self.staged, round_cap).await == 0 {
                    self.closed = true;
                }
                continue;
            }
            let room = round_cap.saturating_sub(self.staged.len());
            // While a round lingers, events wait in the channel: the task
            // does not wake for each of them, only at the deadline or for
            // a confirm, and then takes them all at once.
            let can_take = self.unsent.is_empty() && room > 0 && !self.closed && linger.is_none();
            let Some((_, front)) = inflight.front_mut() else {
                if let Some(until) = linger {
                    tokio::time::sleep_until(until).await;
                }
                continue;
            };
            let timeout = self.cfg.confirm_timeout;
            let step = tokio::select! {
                r = tokio::time::timeout(timeout, front) => Some(r),
                n = self.rx.recv_many(&mut self.staged, room), if can_take => {
                    if n == 0 {
                        self.closed = true;
                    }
                    None
                }
                () = tokio::time::sleep_until(linger.unwrap_or_else(tokio::time::Instant::now)),
                    if linger.is_some() => None,
            };
            let Some(r) = step else {
                continue;
            };
            // A failure leaves the front in flight: `session` puts it back
            // with every message published after it, in publish order, so
            // a shard's messages are published again in gateway order.
            let confirmation = match r {
                Ok(Ok(Confirmation::NotRequested)) => return Err(SessionError::NotConfirmed),
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(SessionError::ConfirmTimeout(timeout)),
            };
            let Some((o, _)) = inflight.pop_front() else {
                continue;
            };
            if confirmation.is_nack() {
                tracing::warn!(message_id = %o.message_id, "broker nacked a message; publishing it again");
                metrics::counter!("sharder_amqp_nacks_total").increment(1);
                self.stats.republished.fetch_add(1, Ordering::Relaxed);
                self.unsent.push_front(o);
                continue;
            }
            self.backoff.reset();
            if let Some(at) = o.published_at {
                metrics::histogram!("sharder_publish_latency_seconds")
                    .record(at.elapsed().as_secs_f64());
            }
            let n = o.acks.len() as u64;
            for ack in o.acks {
                ack.confirm();
            }
            self.stats.confirmed_events.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("sharder_events_confirmed_total").increment(n);
        }
    }

    /// Most events in one round: the channel's size, so that a full
    /// channel fits one round.
    fn round_cap(&self) -> usize {
        self.cfg.buffer.max(self.cfg.batch_max_events).max(1)
    }

    /// Whether to frame the staged events now: the pipe has room (fewer
    /// than [`ROUNDS_IN_FLIGHT`] rounds await confirms), the round is full,
    /// or the input has ended and what is left must go out.
    fn round_due(&self, inflight: &VecDeque<(Outgoing, PublisherConfirm)>) -> bool {
        if self.staged.is_empty() {
            return false;
        }
        let rounds = match (inflight.front(), inflight.back()) {
            (Some((first, _)), Some((last, _))) => last.round.saturating_sub(first.round) + 1,
            _ => 0,
        };
        rounds < ROUNDS_IN_FLIGHT || self.closed || self.staged.len() >= self.round_cap()
    }

    /// Until when the due round may stay open for more events: while it is
    /// younger than `linger`, the input goes on, and fewer events wait than
    /// one full message (`batch_max_events`) or half a round. A busy pipe
    /// fills its rounds without waiting (group commit), and there a linger
    /// only added latency (measured at 150k events/s).
    fn lingering(&self) -> Option<tokio::time::Instant> {
        let until = self.round_opened? + self.cfg.linger;
        let waiting = self.staged.len() + self.rx.len();
        let enough = self.cfg.batch_max_events.min(self.round_cap() / 2);
        (!self.closed && waiting < enough && tokio::time::Instant::now() < until).then_some(until)
    }

    /// Adds every event already waiting to `staged`, up to `cap` in all.
    fn take_ready(&mut self, cap: usize) {
        while self.staged.len() < cap {
            match self.rx.try_recv() {
                Ok(ev) => self.staged.push(ev),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
    }

    /// Frames the staged events into messages, one per shard (split at the
    /// envelope's limits), in gateway order within each shard.
    fn frame(&mut self) {
        let round = self.next_round;
        self.next_round += 1;
        // By shard *of its total*: during a live reshard shard 3 of 64 and
        // shard 3 of 128 both publish, and a message's header names one.
        let mut by_shard: BTreeMap<(u32, u32), Vec<ShardEvent>> = BTreeMap::new();
        for ev in self.staged.drain(..) {
            by_shard
                .entry((ev.num_shards, ev.shard_id))
                .or_default()
                .push(ev);
        }
        for events in by_shard.into_values() {
            // Encoded sizes, summed from the front: a new message's buffer
            // is sized once for the events it can take, not grown by
            // doubling (which copies everything framed so far each time).
            let ends: Vec<usize> = std::iter::once(0)
                .chain(events.iter().scan(0, |sum, ev| {
                    *sum += BatchEncoder::event_len(&ev.envelope());
                    Some(*sum)
                }))
                .collect();
            let per_message = self.cfg.batch_max_events;
            let mut batch: Option<Batch> = None;
            for (i, mut ev) in events.into_iter().enumerate() {
                let env = ev.envelope();
                if let Some(b) = batch.as_mut() {
                    if b.acks.len() < per_message && b.enc.push(&env).is_ok() {
                        b.last_event = ev.event.clone();
                        b.acks.push(ev.take_ack());
                        continue;
                    }
                    if let Some(done) = batch.take() {
                        self.unsent
                            .push_back(done.finish(&self.cfg.topology, round));
                    }
                }
                let pushed = BatchEncoder::new(ev.shard_id, ev.num_shards).and_then(|mut enc| {
                    let end = ends
                        .get(i + per_message)
                        .or(ends.last())
                        .copied()
                        .unwrap_or(0);
                    enc.reserve(end.saturating_sub(ends.get(i).copied().unwrap_or(0)));
                    enc.push(&env)?;
                    Ok(enc)
                });
                match pushed {
                    Ok(enc) => {
                        batch = Some(Batch {
                            enc,
                            shard_id: ev.shard_id,
                            first: (ev.epoch, ev.seq),
                            last_event: ev.event.clone(),
                            acks: vec![ev.take_ack()],
                        });
                    }
                    Err(e) => {
                        tracing::warn!(
                            shard_id = ev.shard_id,
                            seq = ev.seq,
                            event = %ev.event.chars().take(64).collect::<String>(),
                            error = %e,
                            "event the envelope cannot carry; skipped"
                        );
                        metrics::counter!("sharder_events_invalid_total").increment(1);
                        self.stats.invalid_events.fetch_add(1, Ordering::Relaxed);
                        ev.take_ack().confirm();
                    }
                }
            }
            if let Some(done) = batch {
                self.unsent
                    .push_back(done.finish(&self.cfg.topology, round));
            }
        }
    }

    /// The depth gauges while disconnected: nothing is in flight.
    fn note_away(&mut self) {
        let held = self.unsent.iter().map(|o| o.acks.len()).sum::<usize>() + self.staged.len();
        self.note_depth(held);
    }

    fn note_held(&mut self, inflight: &VecDeque<(Outgoing, PublisherConfirm)>) {
        let held: usize = inflight.iter().map(|(o, _)| o.acks.len()).sum::<usize>()
            + self.unsent.iter().map(|o| o.acks.len()).sum::<usize>()
            + self.staged.len();
        self.stats
            .max_held_events
            .fetch_max(held as u64, Ordering::Relaxed);
        self.note_depth(held);
    }

    /// `held` unconfirmed events and the channel's depth, to `/metrics` and
    /// the status page.
    fn note_depth(&mut self, held: usize) {
        let buffered = self.rx.len();
        self.stats.held_events.store(held as u64, Ordering::Relaxed);
        self.stats
            .buffered_events
            .store(buffered as u64, Ordering::Relaxed);
        metrics::gauge!("sharder_sink_unconfirmed_events").set(held as f64);
        metrics::gauge!("sharder_sink_buffered_events").set(buffered as f64);
        // Under load the runtime must not wait before reading confirms.
        self.backlog
            .set(held + buffered >= BACKLOG_MESSAGES * self.cfg.batch_max_events);
    }
}

/// A message being framed.
struct Batch {
    enc: BatchEncoder,
    shard_id: u32,
    first: (u64, u64),
    last_event: EventName,
    acks: Vec<Ack>,
}

impl Batch {
    fn finish(self, topology: &AmqpTopology, round: u64) -> Outgoing {
        let name = if self.acks.len() == 1 {
            self.last_event.as_str()
        } else {
            BATCH_EVENT_NAME
        };
        Outgoing {
            routing_key: topology.routing_key(self.shard_id, name),
            message_id: format!("{}:{}:{}", self.shard_id, self.first.0, self.first.1),
            body: self.enc.finish(),
            acks: self.acks,
            published_at: None,
            round,
        }
    }
}
