//! The peer the sharder is compared with: twilight-gateway 0.18 shards
//! against the simulator, and (for `amqp_e2e`) a forwarder built on them
//! that publishes into RabbitMQ the way the peers that forward to a broker
//! do (twilight-dispatch and the like): one message per event.
//!
//! # The forwarder
//! Each shard's task reads its shard and, per dispatch:
//! - reads `op`, `s` and `t` with twilight's `GatewayEventDeserializer`;
//! - reads the raw `d` and, from it, `guild_id` (or `id` for the guild
//!   events) with serde_json: twilight has no cheaper reader for them;
//! - tells a join from a guild loading after READY (READY's guild ids), as
//!   the worker needs;
//! - frames the event as an envelope of one event (so the same real worker
//!   consumes both peers' output, and its cost per event is compared too);
//! - publishes it persistently with publisher confirms, up to
//!   [`CONFIRM_WINDOW`] unconfirmed per shard (pipelined, as a forwarder
//!   that keeps up must), confirms taken in order.
//!
//! Nothing is grouped: one `basic_publish` and one confirm per event.

use super::args::Flags;
use super::sharder_run::{self, AMQP_URL, INTENTS};
use anyhow::Context;
use envelope::topology::AmqpTopology;
use envelope::{BatchEncoder, Event, GuildCreateKind};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, ConnectionProperties};
use serde_json::{json, value::RawValue};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use twilight_gateway::{ConfigBuilder, Intents, Message, Shard, ShardId};
use twilight_model::gateway::event::GatewayEventDeserializer;

/// Unconfirmed messages per shard before the shard stops reading.
pub const CONFIRM_WINDOW: usize = 1024;

/// A twilight shard configuration against the simulator at `gateway`,
/// identifying `max_concurrency` shards at a time.
pub fn config(gateway: String, token: String, max_concurrency: u16) -> twilight_gateway::Config {
    let queue = twilight_gateway::queue::InMemoryQueue::new(
        max_concurrency,
        1_000_000,
        Duration::from_secs(86_400),
        1_000_000,
    );
    ConfigBuilder::new(token, Intents::from_bits_truncate(INTENTS))
        .proxy_url(gateway)
        .queue(queue)
        .build()
}

/// The frame as far as a forwarder must read it.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

/// `d`'s routing fields.
#[derive(serde::Deserialize)]
struct Routing {
    #[serde(default)]
    guild_id: Option<twilight_model::id::Id<twilight_model::id::marker::GuildMarker>>,
    #[serde(default)]
    id: Option<twilight_model::id::Id<twilight_model::id::marker::GenericMarker>>,
}

/// READY's guild list.
#[derive(serde::Deserialize)]
struct Ready {
    guilds: Vec<ReadyGuild>,
}

#[derive(serde::Deserialize)]
struct ReadyGuild {
    id: twilight_model::id::Id<twilight_model::id::marker::GuildMarker>,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    published: AtomicU64,
    confirmed: AtomicU64,
    ready: AtomicU64,
}

/// The forwarder child: `--gateway`, `--token`, `--shards`, `--amqp-base`,
/// `--partitions`, `--warmup`, `--seconds`, `--threads`. Reports what the sharder's
/// child reports.
pub fn amqp_child(f: &Flags) -> anyhow::Result<()> {
    let gateway = f.require("gateway")?;
    let token = f.require("token")?;
    let shards: u32 = f.get("shards", 16)?;
    let topology = AmqpTopology::named(&f.require("amqp-base")?, f.get("partitions", 4)?);
    let warmup: f64 = f.get("warmup", 1.0)?;
    let seconds: f64 = f.get("seconds", 5.0)?;
    // A plain runtime, as a peer's, with as many threads as ours.
    let rt = sharder_run::runtime_with(f.get("threads", 0)?, Duration::ZERO)?;
    rt.block_on(async {
        let conn = lapin::Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let config = config(gateway, token, u16::try_from(shards).unwrap_or(u16::MAX));
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let epoch = envelope::unix_now_ms();
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..shards {
            let shard = Shard::with_config(ShardId::new(id, shards), config.clone());
            tasks.spawn(forward(
                shard,
                ch.clone(),
                topology.clone(),
                counters.clone(),
                stop.clone(),
                epoch,
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while counters.ready.load(Ordering::Relaxed) < u64::from(shards) {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "not every twilight shard was READY within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let s0 = super::measure::Sample::now()?;
        let (c0, r0, m0) = (
            read(&counters.confirmed),
            read(&counters.received),
            read(&counters.published),
        );
        let from_ms = envelope::unix_now_ms();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let to_ms = envelope::unix_now_ms();
        let s1 = super::measure::Sample::now()?;
        let (c1, r1, m1) = (
            read(&counters.confirmed),
            read(&counters.received),
            read(&counters.published),
        );
        let (wall, cpu) = s1.since(&s0);
        stop.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(60), async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        let published = read(&counters.published);
        let confirmed = read(&counters.confirmed);
        super::child::emit(&json!({
            "window_from_ms": from_ms,
            "window_to_ms": to_ms,
            "confirmed": c1 - c0,
            "received": r1 - r0,
            "messages": m1 - m0,
            "wall_s": wall,
            "cpu_s": cpu,
            "drained": drained && published == confirmed,
            "confirmed_total": confirmed,
        }));
        let _ = conn.close(0, "bench done".into()).await;
        Ok(())
    })
}

/// One shard's loop: read, frame, publish, take confirms.
async fn forward(
    mut shard: Shard,
    ch: Channel,
    topology: AmqpTopology,
    counters: Arc<Counters>,
    stop: CancellationToken,
    epoch: u64,
) {
    let id = shard.id();
    let (shard_id, total) = (id.number(), id.total());
    let mut loading: HashSet<u64> = HashSet::new();
    let mut confirms = FuturesOrdered::new();
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/x-bulwark-envelope".into());
    loop {
        tokio::select! {
            biased;
            Some(confirm) = confirms.next(), if !confirms.is_empty() => {
                match confirm {
                    Ok(Confirmation::Ack(_)) => {
                        counters.confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                    other => eprintln!("twilight forwarder shard {shard_id}: confirm {other:?}"),
                }
            }
            () = stop.cancelled() => break,
            item = shard.next(), if confirms.len() < CONFIRM_WINDOW => {
                let text = match item {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        eprintln!("twilight shard {shard_id}: close {frame:?}");
                        continue;
                    }
                    Some(Err(e)) => {
                        eprintln!("twilight shard {shard_id}: {e}");
                        continue;
                    }
                    None => break,
                };
                let received_at = envelope::unix_now_ms();
                let Some((body, t)) = frame(&text, shard_id, total, epoch, received_at, &mut loading, &counters) else {
                    continue;
                };
                let routing_key = topology.routing_key(shard_id, &t);
                counters.received.fetch_add(1, Ordering::Relaxed);
                match ch
                    .basic_publish(
                        topology.exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props.clone(),
                    )
                    .await
                {
                    Ok(confirm) => {
                        counters.published.fetch_add(1, Ordering::Relaxed);
                        confirms.push_back(confirm);
                    }
                    Err(e) => eprintln!("twilight forwarder shard {shard_id}: publish {e}"),
                }
            }
        }
    }
    while let Some(confirm) = confirms.next().await {
        if let Ok(Confirmation::Ack(_)) = confirm {
            counters.confirmed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The envelope of one dispatch and its event name, or `None` for anything
/// else (and for a frame it cannot read, logged).
fn frame(
    text: &str,
    shard_id: u32,
    total: u32,
    epoch: u64,
    received_at: u64,
    loading: &mut HashSet<u64>,
    counters: &Counters,
) -> Option<(Vec<u8>, String)> {
    let de = GatewayEventDeserializer::from_json(text)?;
    if de.op() != 0 {
        return None;
    }
    let t = de.event_type()?;
    let seq = de.sequence()?;
    let d = match serde_json::from_str::<Frame<'_>>(text) {
        Ok(Frame { d: Some(d) }) => d,
        Ok(Frame { d: None }) => return None,
        Err(e) => {
            eprintln!("twilight shard {shard_id}: bad frame: {e}");
            return None;
        }
    };
    let routing: Routing = serde_json::from_str(d.get()).ok()?;
    let guild_id = routing.guild_id.map(|g| g.get()).or_else(|| {
        t.starts_with("GUILD_")
            .then_some(routing.id.map(|g| g.get()))
            .flatten()
    });
    let guild_create = match t {
        "READY" => {
            if let Ok(ready) = serde_json::from_str::<Ready>(d.get()) {
                loading.clear();
                loading.extend(ready.guilds.iter().map(|g| g.id.get()));
            }
            counters.ready.fetch_add(1, Ordering::Relaxed);
            None
        }
        "GUILD_CREATE" => Some(match guild_id {
            Some(g) if loading.remove(&g) => GuildCreateKind::Initial,
            _ => GuildCreateKind::Joined,
        }),
        _ => None,
    };
    let mut encoder = BatchEncoder::new(shard_id, total).ok()?;
    let event = Event {
        epoch,
        seq,
        received_at,
        t,
        guild_id,
        guild_create,
        d: d.get().as_bytes(),
    };
    match encoder.push(&event) {
        Ok(()) => Some((encoder.finish(), t.to_owned())),
        Err(e) => {
            eprintln!("twilight shard {shard_id}: {t} not framed: {e}");
            None
        }
    }
}
