//! The clean stream into the hub: one exclusive queue per relay process,
//! bound to the workers' output exchange for every event.
//!
//! The queue lives as long as the connection; after a broker outage the
//! relay declares a new one and goes on (what was published meanwhile
//! did not reach this relay: its sessions miss it, counted in
//! `relay_feed_reconnects_total`). Messages are acked once offered to the
//! sessions, which hold them in memory for RESUME, in groups of up to
//! [`ACK_EVERY`] (one `multiple` ack), the rest after [`ACK_LINGER`].
//!
//! At shutdown the feed cancels its consumer, dispatches what had already
//! reached it, checks whether its queue is empty, and publishes the
//! `RELAY_STOPPED` marker: the relay that takes its sessions over waits
//! for it ([`crate::handover`]). Another relay's marker is noted in the
//! hub, not dispatched.

use crate::Ctx;
use crate::incoming::Incoming;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ConnectionProperties};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Messages unacked at once.
const PREFETCH: u16 = 512;
/// Deliveries acked together.
const ACK_EVERY: u32 = 64;
/// How long the last deliveries of a burst wait for their ack.
const ACK_LINGER: Duration = Duration::from_millis(20);

/// Consumes until `stop`, reconnecting with a capped delay. True when the
/// queue was empty once the consumer stopped (nothing published before the
/// marker was left unread).
pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match consume(&ctx, &stop).await {
            Ok(drained) => return drained,
            Err(e) => {
                ctx.feed_up
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                ctx.hub.feed_lost();
                metrics::counter!("relay_feed_reconnects_total").increment(1);
                tracing::warn!(error = %e, ?delay, "relay feed lost the broker; reconnecting");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn consume(ctx: &Ctx, stop: &CancellationToken) -> Result<bool, lapin::Error> {
    let conn = ctx
        .resolver
        .amqp_connect(ctx.amqp_url.expose(), ConnectionProperties::default())
        .await?;
    let ch = conn.create_channel().await?;
    let q = envelope::topology::private_queue(&ch, &ctx.exchange, FieldTable::default()).await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            q.name().as_str().into(),
            "relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    ctx.hub.feed_started();
    ctx.feed_up
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(exchange = %ctx.exchange, queue = %q.name(), "relay feed consuming");
    // Acks go in groups (`multiple`): every ACK_EVERY deliveries, and
    // whatever is left once the queue pauses.
    let mut unacked: Option<u64> = None;
    let mut since_ack = 0u32;
    loop {
        let delivery = if unacked.is_some() {
            tokio::select! {
                () = stop.cancelled() => break,
                d = consumer.next() => d,
                () = tokio::time::sleep(ACK_LINGER) => {
                    ack_up_to(&ch, &mut unacked, &mut since_ack).await?;
                    continue;
                }
            }
        } else {
            tokio::select! {
                () = stop.cancelled() => break,
                d = consumer.next() => d,
            }
        };
        let Some(delivery) = delivery else {
            return Err(lapin::Error::from(std::io::Error::other(
                "the consumer ended",
            )));
        };
        let delivery = delivery?;
        offer(ctx, &delivery);
        unacked = Some(delivery.delivery_tag);
        since_ack += 1;
        if since_ack >= ACK_EVERY {
            ack_up_to(&ch, &mut unacked, &mut since_ack).await?;
        }
    }
    // Stopping. The queue's backlog first: it is deleted with its consumer.
    let left = envelope::topology::inspect_queue(&ch, q.name().as_str()).await?;
    let drained = left.message_count() == 0;
    // No delivery after the cancel's answer; what had reached the consumer
    // before it is dispatched (nothing needs an ack: the queue is gone).
    ch.basic_cancel("relay".into(), BasicCancelOptions::default())
        .await?;
    while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
        offer(ctx, &delivery);
    }
    drop(consumer);
    let mut headers = FieldTable::default();
    headers.insert(
        crate::handover::MARKER_HEADER.into(),
        AMQPValue::LongString(ctx.pod.as_str().into()),
    );
    ch.basic_publish(
        ctx.exchange.as_str().into(),
        crate::handover::MARKER.into(),
        BasicPublishOptions::default(),
        b"{}",
        BasicProperties::default()
            .with_message_id(format!("relay-stopped:{}", ctx.pod).into())
            .with_headers(headers),
    )
    .await?;
    // Closing flushes the marker: the broker handles a channel's frames in
    // order.
    conn.close(200, "relay stopping".into()).await?;
    tracing::info!(drained, "relay feed stopped; marker published");
    Ok(drained)
}

/// Hands one delivery to the hub.
fn offer(ctx: &Ctx, delivery: &Delivery) {
    let props = &delivery.properties;
    if delivery.routing_key.as_str() == crate::handover::MARKER {
        match props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(crate::handover::MARKER_HEADER))
        {
            Some(AMQPValue::LongString(pod)) => {
                ctx.hub.marker(&String::from_utf8_lossy(pod.as_bytes()));
            }
            _ => tracing::warn!("a relay's stop marker without its pod; ignored"),
        }
        return;
    }
    match Incoming::parse(
        delivery.routing_key.as_str(),
        props.message_id().as_ref().map(|s| s.as_str()),
        props.headers().as_ref(),
        &delivery.data,
    ) {
        Ok(ev) => {
            if ctx.hub.dispatch(ev) {
                metrics::counter!("relay_events_total").increment(1);
            } else {
                metrics::counter!("relay_events_duplicate_total").increment(1);
            }
        }
        Err(e) => {
            metrics::counter!("relay_events_skipped_total").increment(1);
            tracing::warn!(error = %e, key = %delivery.routing_key, "skipping an output message");
        }
    }
}

async fn ack_up_to(
    ch: &lapin::Channel,
    unacked: &mut Option<u64>,
    since_ack: &mut u32,
) -> Result<(), lapin::Error> {
    if let Some(tag) = unacked.take() {
        ch.basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    *since_ack = 0;
    Ok(())
}
