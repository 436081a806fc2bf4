//! The RabbitMQ side: declaring the shared topology and consuming one
//! partition queue into a [`Worker`].
//!
//! # Algorithm
//!
//! One task per partition (single active consumer on a quorum queue, so a
//! shard's events arrive in gateway order), with `prefetch` messages in
//! flight from the broker, processed in order, acked after the store has
//! applied them (at-least-once; the versioned store turns redeliveries into
//! no-ops).
//!
//! Acks go out in batches: one `basic.ack` with `multiple` covers every
//! input finished so far, sent when nothing else is ready (nothing
//! delivered, no confirm due) or once half the prefetch window waits for
//! one, so the broker keeps delivering. An input whose ack was not sent
//! when the channel breaks is redelivered, which the store ignores. Before
//! issue #23 each input cost an ack and each clean event a publish, each
//! awaited through a round trip to lapin's I/O thread; now the frames are
//! queued without waiting ([`crate::queued`]) and one I/O wake-up writes
//! them all.
//!
//! * Poison (an undecodable envelope, or events with invalid payloads):
//!   republished to the dead-letter exchange with a reason header, counted,
//!   logged at most once per second with the number suppressed, then acked,
//!   so one bad message never blocks its queue. If that publish fails the
//!   message is rejected without requeue, and the queue's own
//!   `x-dead-letter-exchange` still moves it aside.
//! * Store failure (Redis down): the message is fine, so it is retried in
//!   place with capped exponential backoff and jitter; the partition waits
//!   (backpressure through prefetch) instead of dropping or spinning.
//! * Output (when enabled): the message's clean events are published to
//!   the output exchange with publisher confirms before the input is acked,
//!   so output is at-least-once with a stable `message_id` (see
//!   [`crate::output`]). The confirms are pipelined: the next message is
//!   processed while earlier ones wait for theirs (at most `prefetch`
//!   waiting, in delivery order), and an input counts as finished when its
//!   own confirms and those of every earlier input have arrived. A failed
//!   publish ends the consumer without acking; the session reconnects and
//!   the broker redelivers.

use crate::output::{
    Confirms, MessageKey, Outgoing, PublishError, Unconfirmed, publish, publish_confirmed,
};
use crate::processor::{ProcessError, Worker};
use crate::queued::Queued;
use crate::store::Store;
use envelope::topology;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use rand::Rng;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shared topology, the sharder's too (one type, one name):
/// [`AmqpTopology::default`] is production, [`AmqpTopology::named`] isolates
/// tests.
pub use envelope::topology::AmqpTopology;

/// Why a consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the consumer's channel is down (the broker connection broke)")]
    ChannelLost,
    #[error("publishing clean events: {0}")]
    Publish(#[from] PublishError),
}

/// Counts of one consumer's run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConsumeStats {
    pub acked: u64,
    /// `basic.ack` frames that carried `acked` (one may ack many inputs).
    pub ack_frames: u64,
    /// Clean events published to the output exchange (and confirmed).
    pub published: u64,
    pub dead_lettered: u64,
    pub store_retries: u64,
}

/// Logs at most once per interval, counting what it suppressed.
struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since last time)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Capped exponential backoff with full jitter.
fn backoff(attempt: u32) -> Duration {
    let cap_ms: u64 = 10_000;
    let base = 50u64.saturating_mul(1 << attempt.min(10)).min(cap_ms);
    Duration::from_millis(rand::rng().random_range(base / 2..=base))
}

/// Consumes partition `partition` of `topo` on `ch` into `worker` until
/// `shutdown` resolves or the channel closes. Publishes nothing.
///
/// `ch` must be this consumer's alone: its acks use `multiple`, which
/// covers every unacked delivery of the channel.
pub async fn consume_partition<S: Store>(
    worker: Arc<Worker<S>>,
    ch: Channel,
    topo: AmqpTopology,
    partition: u32,
    prefetch: u16,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeStats, ConsumeError> {
    consume_partition_with(worker, ch, topo, partition, prefetch, None, shutdown).await
}

/// [`consume_partition`], publishing the clean events to
/// `topo.output_exchange` when `output` is given (the process-wide record
/// of unconfirmed output, shared by reconnecting sessions).
pub async fn consume_partition_with<S: Store>(
    worker: Arc<Worker<S>>,
    ch: Channel,
    topo: AmqpTopology,
    partition: u32,
    prefetch: u16,
    output: Option<Arc<Unconfirmed>>,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeStats, ConsumeError> {
    ch.basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = topo.queue(partition);
    let tag = format!("worker-{}-{partition}", std::process::id());
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut stats = ConsumeStats::default();
    let mut poison_log = LogLimiter::new(Duration::from_secs(1));
    let mut store_log = LogLimiter::new(Duration::from_secs(1));
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let window = usize::from(prefetch.max(1));
    let mut acks = AckBatch::new(window);
    // Set from a delivery until nothing is ready: meanwhile the runtime's
    // idle threads do not wait before they park (`worker.wake_coalesce`),
    // so store round trips in the middle of a busy partition are not
    // delayed.
    let mut backlog = bulwark_process::Backlog::default();
    tokio::pin!(shutdown);
    // After an abrupt connection loss, lapin may leave the consumer stream
    // and pending publisher confirms unresolved (seen in `dns-outage`: a
    // worker cut from the broker applied nothing for the rest of the run).
    // The channel's status is the ground truth, checked a few times a
    // second.
    let mut liveness = tokio::time::interval(CHANNEL_CHECK);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Biased: the acks and the end of the backlog wait until nothing
        // else is ready.
        let next = tokio::select! {
            biased;
            _ = &mut shutdown => Next::Stop,
            _ = liveness.tick() => {
                if ch.status().connected() {
                    continue;
                }
                return Err(lost(waiting.front_mut()).await);
            }
            r = async {
                match waiting.front_mut() {
                    Some(w) => w.settled().await,
                    None => std::future::pending().await,
                }
            }, if !waiting.is_empty() => Next::Confirmed(r),
            d = consumer.next(), if waiting.len() < window => Next::Delivery(d),
            () = std::future::ready(()), if acks.pending() || backlog.is_set() => Next::Idle,
        };
        let delivery = match next {
            Next::Stop | Next::Delivery(None) => break,
            Next::Delivery(Some(d)) => d?,
            Next::Confirmed(r) => {
                if let Some(w) = waiting.pop_front() {
                    finish(w, r, &output, &mut acks, &mut stats)?;
                    acks.send_if_full(&ch, &mut stats)?;
                }
                continue;
            }
            Next::Idle => {
                acks.send(&ch, &mut stats)?;
                backlog.set(false);
                continue;
            }
        };
        backlog.set(true);
        let mut attempt = 0u32;
        // Kept across store retries: an event announced by a failed
        // attempt is not announced again by the next one.
        let mut fresh: Vec<Outgoing> = Vec::new();
        let publishing = output.is_some();
        let reason = loop {
            let mut sink = |ev: &crate::processor::CleanEvent<'_>| {
                if publishing {
                    fresh.push(Outgoing::from_clean(ev));
                }
            };
            match worker
                .process_delivery(&delivery.data, delivery.redelivered, &mut sink)
                .await
            {
                Ok(report) if report.invalid.is_empty() => break None,
                Ok(report) => {
                    let list: Vec<String> = report
                        .invalid
                        .iter()
                        .map(|(v, why)| format!("event {v}: {why}"))
                        .collect();
                    break Some(list.join("; "));
                }
                Err(ProcessError::Decode(e)) => break Some(e.to_string()),
                Err(ProcessError::Store(e)) => {
                    stats.store_retries += 1;
                    metrics::counter!("worker_store_retries_total").increment(1);
                    if let Some(n) = store_log.allow() {
                        tracing::warn!(partition, error = %e, suppressed = n, "store failed; retrying");
                    }
                    // What is finished is acked before the wait, however
                    // long the store stays down.
                    acks.send(&ch, &mut stats)?;
                    tokio::select! {
                        _ = &mut shutdown => {
                            // This message stays unacked: redelivered.
                            drop(delivery);
                            hand_over(&ch, waiting, &output, acks, &mut stats).await?;
                            drop(consumer);
                            return Ok(stats);
                        }
                        _ = tokio::time::sleep(backoff(attempt)) => {}
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        if let Some(unconfirmed) = &output
            && (!fresh.is_empty() || delivery.redelivered)
            && let Some(key) = output_key(&delivery.data)
        {
            let all = unconfirmed.merge(key, fresh);
            if !all.is_empty() && reason.is_none() {
                // Acked when the confirms arrive, while the next messages
                // are processed.
                waiting.push_back(Waiting {
                    output: Some((publish(&ch, &topo.output_exchange, all), key)),
                    delivery,
                });
                continue;
            }
            if !all.is_empty() {
                stats.published += publish_confirmed(&ch, &topo.output_exchange, all).await? as u64;
            }
            unconfirmed.confirmed(key);
        }
        if let Some(reason) = reason {
            stats.dead_lettered += 1;
            metrics::counter!("worker_poison_messages_total").increment(1);
            if let Some(n) = poison_log.allow() {
                tracing::warn!(partition, %reason, suppressed = n, "dead-lettering poison message");
            }
            if dead_letter(&ch, &topo, &delivery, &reason).await.is_err() {
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                continue;
            }
            // Acked on its own: earlier inputs may still wait for their
            // confirms, and a batch would ack them too.
            delivery.ack(BasicAckOptions::default()).await?;
            stats.acked += 1;
            continue;
        }
        // Finished in delivery order, after every earlier input.
        waiting.push_back(Waiting {
            output: None,
            delivery,
        });
    }
    hand_over(&ch, waiting, &output, acks, &mut stats).await?;
    // Dropped once the channel is closed: dropping a consumer cancels it,
    // which must not happen first (see `hand_over`).
    drop(consumer);
    Ok(stats)
}

/// Stops consuming: acks the inputs whose output the broker confirms, then
/// closes the channel, which returns the unprocessed prefetch to the
/// queue's head.
///
/// Never a `basic.cancel` first: on a quorum queue with a single active
/// consumer, a cancel makes the next consumer active at once while this
/// one's unacked messages are returned only when its channel is gone, so
/// the next owner would get later messages before them (found by the
/// relay's twilight test under load: a shard's batch applied after its
/// successor). A channel that goes down returns its messages and activates
/// the next consumer in one step.
async fn hand_over(
    ch: &Channel,
    mut waiting: VecDeque<Waiting>,
    output: &Option<Arc<Unconfirmed>>,
    mut acks: AckBatch,
    stats: &mut ConsumeStats,
) -> Result<(), ConsumeError> {
    while let Some(mut w) = waiting.pop_front() {
        // A channel that is down has returned every unacked message to
        // the queue; confirms of its publishes never come, and their
        // outputs stay in `Unconfirmed` to go out again on redelivery.
        let r = tokio::select! {
            r = w.settled() => r,
            () = channel_down(ch) => return Err(lost(Some(&mut w)).await),
        };
        finish(w, r, output, &mut acks, stats)?;
    }
    // Queued before the close, so written before it.
    acks.send(ch, stats)?;
    if !ch.status().connected() {
        return Err(ConsumeError::ChannelLost);
    }
    ch.close(200, "partition handed over".into()).await?;
    Ok(())
}

/// How often a consumer checks that its channel is still up.
const CHANNEL_CHECK: Duration = Duration::from_millis(250);

/// Resolves once `ch` is no longer connected.
async fn channel_down(ch: &Channel) {
    while ch.status().connected() {
        tokio::time::sleep(CHANNEL_CHECK).await;
    }
}

/// Why a channel went down, `oldest` the oldest publish awaiting its
/// confirms: a broker that closed the channel over a publish it refused
/// (the output exchange is gone) fails that publish's confirm, which says
/// why, and the status check may see the closed channel first. After an
/// abrupt loss nothing may settle, so it is not waited for long.
async fn lost(oldest: Option<&mut Waiting>) -> ConsumeError {
    if let Some(w) = oldest
        && let Ok(Err(e)) = tokio::time::timeout(CHANNEL_CHECK, w.settled()).await
    {
        return ConsumeError::Publish(e);
    }
    ConsumeError::ChannelLost
}

/// The key of a message's output in [`Unconfirmed`]: its shard and first
/// event's version, read without decoding the rest again (the processor
/// has checked the whole message already).
fn output_key(data: &[u8]) -> Option<MessageKey> {
    let mut events = envelope::Decoder::new(data).ok()?;
    let shard_id = events.shard_id();
    let first = events.next()?.ok()?;
    Some((shard_id, first.version()))
}

/// An input message applied to the store, in delivery order, whose output
/// (if any) awaits its confirms.
struct Waiting {
    /// Its output's confirms and key in [`Unconfirmed`], when it published
    /// some.
    output: Option<(Confirms, MessageKey)>,
    delivery: Delivery,
}

impl Waiting {
    /// Resolves once its output is confirmed (at once without output).
    async fn settled(&mut self) -> Result<usize, PublishError> {
        match &mut self.output {
            Some((c, _)) => c.await,
            None => Ok(0),
        }
    }
}

/// Finished inputs whose ack is not sent yet: one `basic.ack` with
/// `multiple` covers them all, since every earlier delivery is finished
/// (acked, rejected, or in this batch).
struct AckBatch {
    /// The newest finished delivery tag.
    through: Option<u64>,
    count: u64,
    /// Sent once this many wait, so the broker's prefetch window never
    /// closes on inputs that are done.
    full: u64,
}

impl AckBatch {
    fn new(window: usize) -> Self {
        Self {
            through: None,
            count: 0,
            full: (window as u64 / 2).max(1),
        }
    }

    fn add(&mut self, tag: u64) {
        self.through = Some(tag);
        self.count += 1;
    }

    fn pending(&self) -> bool {
        self.through.is_some()
    }

    fn send_if_full(&mut self, ch: &Channel, stats: &mut ConsumeStats) -> Result<(), ConsumeError> {
        if self.count >= self.full {
            self.send(ch, stats)?;
        }
        Ok(())
    }

    /// Queues the ack without waiting for it to be written: a failure to
    /// write it breaks the channel, which the consumer's checks see, and
    /// the broker then redelivers what it did not get an ack for.
    fn send(&mut self, ch: &Channel, stats: &mut ConsumeStats) -> Result<(), ConsumeError> {
        let Some(tag) = self.through.take() else {
            return Ok(());
        };
        let n = std::mem::take(&mut self.count);
        if let Queued::Done(Some(Err(e))) =
            Queued::new(ch.basic_ack(tag, BasicAckOptions { multiple: true }))
        {
            return Err(e.into());
        }
        stats.acked += n;
        stats.ack_frames += 1;
        Ok(())
    }
}

/// What the consume loop does next. Lives one iteration on the stack;
/// boxing the delivery would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Next {
    Stop,
    Delivery(Option<Result<Delivery, lapin::Error>>),
    Confirmed(Result<usize, PublishError>),
    /// Nothing else is ready: time to send the acks.
    Idle,
}

/// Finishes an input whose output the broker confirmed: its ack joins the
/// batch (or fails with the publish error, leaving it unacked for
/// redelivery).
fn finish(
    w: Waiting,
    confirmed: Result<usize, PublishError>,
    output: &Option<Arc<Unconfirmed>>,
    acks: &mut AckBatch,
    stats: &mut ConsumeStats,
) -> Result<(), ConsumeError> {
    stats.published += confirmed? as u64;
    if let (Some(u), Some((_, key))) = (output, &w.output) {
        u.confirmed(*key);
    }
    acks.add(w.delivery.delivery_tag);
    Ok(())
}

async fn dead_letter(
    ch: &Channel,
    topo: &AmqpTopology,
    delivery: &lapin::message::Delivery,
    reason: &str,
) -> Result<(), lapin::Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    // A reason can quote a whole payload; keep the header small.
    let reason: String = reason.chars().take(1024).collect();
    headers.insert(
        topology::REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason.as_str())),
    );
    headers.insert(
        "x-bulwark-routing-key".into(),
        AMQPValue::LongString(LongString::from(delivery.routing_key.as_str())),
    );
    let props = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    ch.basic_publish(
        topo.dead_letter_exchange.as_str().into(),
        delivery.routing_key.clone(),
        BasicPublishOptions::default(),
        &delivery.data,
        props,
    )
    .await?
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_secs(10), "{attempt}: {d:?}");
            assert!(d >= Duration::from_millis(25));
        }
    }

    #[test]
    fn limiter_counts_what_it_suppresses() {
        let mut l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        l.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(l.allow(), Some(2));
    }
}
