//! The clean stream into the hub: one exclusive queue per relay process,
//! bound to the workers' output exchange for every event.
//!
//! The queue lives as long as the connection; after a broker outage the
//! relay declares a new one and goes on (what was published meanwhile
//! did not reach this relay: its sessions miss it, counted in
//! `relay_feed_reconnects_total`). Messages are acked once offered to the
//! sessions, which hold them in memory for RESUME, in groups of up to
//! [`ACK_EVERY`] (one `multiple` ack), the rest after [`ACK_LINGER`].

use crate::Ctx;
use crate::incoming::Incoming;
use futures_util::StreamExt;
use lapin::ConnectionProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Messages unacked at once.
const PREFETCH: u16 = 512;
/// Deliveries acked together.
const ACK_EVERY: u32 = 64;
/// How long the last deliveries of a burst wait for their ack.
const ACK_LINGER: Duration = Duration::from_millis(20);

/// Consumes until `stop`, reconnecting with a capped delay.
pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        match consume(&ctx, &stop).await {
            Ok(()) => return,
            Err(e) => {
                ctx.feed_up
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("relay_feed_reconnects_total").increment(1);
                tracing::warn!(error = %e, ?delay, "relay feed lost the broker; reconnecting");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn consume(ctx: &Ctx, stop: &CancellationToken) -> Result<(), lapin::Error> {
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
                () = stop.cancelled() => return Ok(()),
                d = consumer.next() => d,
                () = tokio::time::sleep(ACK_LINGER) => {
                    ack_up_to(&ch, &mut unacked, &mut since_ack).await?;
                    continue;
                }
            }
        } else {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                d = consumer.next() => d,
            }
        };
        let Some(delivery) = delivery else {
            return Err(lapin::Error::from(std::io::Error::other(
                "the consumer ended",
            )));
        };
        let delivery = delivery?;
        let props = &delivery.properties;
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
        unacked = Some(delivery.delivery_tag);
        since_ack += 1;
        if since_ack >= ACK_EVERY {
            ack_up_to(&ch, &mut unacked, &mut since_ack).await?;
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
