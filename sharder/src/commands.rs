//! Gateway commands from the relays (op 3, 4, 8), sent on this process's
//! shards.
//!
//! # Algorithm
//! 1. [`run`] keeps one exclusive, auto-deleted queue of this process bound
//!    to the commands exchange for every command (`#`), so every sharder
//!    process sees every command; messages expire there after
//!    [`envelope::command::COMMAND_TTL`] and the queue holds at most
//!    [`QUEUE_LIMIT`] (the oldest dropped first). Consumed without acks:
//!    a command is best effort, as on Discord, where a command on a
//!    connection that dies is lost. After a broker outage it reconnects
//!    with a capped backoff.
//! 2. [`route`] sends op 4 and op 8 to the serving shard that owns the
//!    guild (`(guild_id >> 22) % total`) if this process runs it, else
//!    ignores it (another process does). op 3 goes to every shard, and
//!    becomes the [`Presence`] of the IDENTIFYs that follow, unless a newer
//!    one (by the bot's `issued_at_ms`) was applied already: last writer
//!    wins, whatever order two relays' commands reach two processes in.
//! 3. Each shard holds at most [`crate::shard::COMMAND_BACKLOG`] commands
//!    and sends them only while active, through its connection's send
//!    limiter (never above Discord's 120 per 60 s, heartbeats keep their
//!    share); one that waited past `COMMAND_TTL` is dropped. A command
//!    that finds the backlog full is dropped and counted.

use crate::AdminState;
use envelope::Command;
use envelope::command::{COMMAND_TTL, PRESENCE_UPDATE};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{ConnectionProperties, ExchangeKind};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Commands a process's queue holds at most (the oldest go first).
pub const QUEUE_LIMIT: i64 = 10_000;

/// The newest presence a bot set (op 3), sent in every IDENTIFY after it.
#[derive(Debug, Clone, Default)]
pub struct Presence(Arc<Mutex<Option<(u64, String)>>>);

impl Presence {
    /// Takes `d` as the presence if it is not older than the current one.
    pub fn offer(&self, issued_at_ms: u64, d: &str) -> bool {
        let mut p = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if p.as_ref().is_some_and(|(at, _)| *at > issued_at_ms) {
            return false;
        }
        *p = Some((issued_at_ms, d.to_owned()));
        true
    }

    /// The presence `d` to IDENTIFY with.
    pub fn current(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, d)| d.clone())
    }
}

/// Where a command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Handed to this many shards.
    Sent(usize),
    /// No shard of this process owns the guild.
    NotOurs,
    /// An older presence than the one applied.
    Stale,
    /// The owning shard's backlog was full.
    Dropped,
}

impl Routed {
    fn label(self) -> &'static str {
        match self {
            Self::Sent(_) => "sent",
            Self::NotOurs => "not_ours",
            Self::Stale => "stale",
            Self::Dropped => "dropped",
        }
    }
}

/// Hands one command to the shards of `admin` that must send it.
pub fn route(admin: &AdminState, presence: &Presence, c: &Command) -> Routed {
    let shards = admin.serving_shards();
    if c.op == PRESENCE_UPDATE {
        if !presence.offer(c.issued_at_ms, &c.d) {
            return Routed::Stale;
        }
        let payload = c.payload();
        let sent = shards
            .iter()
            .filter(|(_, h)| h.send_command(payload.clone()))
            .count();
        return Routed::Sent(sent);
    }
    let Some((_, h)) = shards
        .iter()
        .find(|(id, h)| c.shard(h.total()) == Some(*id))
    else {
        return Routed::NotOurs;
    };
    if h.send_command(c.payload()) {
        Routed::Sent(1)
    } else {
        Routed::Dropped
    }
}

/// Consumes the commands exchange until `stop`.
pub async fn run(
    resolver: dnscache::Resolver,
    amqp_url: config::Secret,
    exchange: String,
    admin: AdminState,
    presence: Presence,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match consume(&resolver, &amqp_url, &exchange, &admin, &presence, &stop).await {
            Ok(()) => return,
            Err(e) => {
                metrics::counter!("sharder_command_feed_reconnects_total").increment(1);
                tracing::warn!(error = %e, ?delay, "the commands feed lost the broker; reconnecting (bots' op 3/4/8 wait meanwhile)");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn consume(
    resolver: &dnscache::Resolver,
    amqp_url: &config::Secret,
    exchange: &str,
    admin: &AdminState,
    presence: &Presence,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let conn = resolver
        .amqp_connect(amqp_url.expose(), ConnectionProperties::default())
        .await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    let mut args = FieldTable::default();
    let ttl = i64::try_from(COMMAND_TTL.as_millis()).unwrap_or(i64::MAX);
    args.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(ttl),
    );
    args.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongLongInt(QUEUE_LIMIT),
    );
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString(LongString::from("drop-head")),
    );
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    ch.queue_bind(
        q.name().as_str().into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            q.name().as_str().into(),
            "sharder-commands".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tracing::info!(%exchange, queue = %q.name(), "consuming the relays' gateway commands");
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            d = consumer.next() => d,
        };
        let Some(delivery) = delivery else {
            return Err(lapin::Error::from(std::io::Error::other(
                "the commands consumer ended",
            )));
        };
        let delivery = delivery?;
        match Command::decode(&delivery.data) {
            Ok(c) => {
                let routed = route(admin, presence, &c);
                metrics::counter!("sharder_commands_total", "op" => c.op.to_string(), "result" => routed.label())
                    .increment(1);
                if routed == Routed::Dropped {
                    tracing::warn!(
                        op = c.op,
                        guild_id = c.guild_id,
                        "a shard's command backlog is full; dropped a bot's command"
                    );
                }
            }
            Err(e) => {
                metrics::counter!("sharder_commands_total", "op" => "invalid", "result" => "skipped")
                    .increment(1);
                tracing::warn!(error = %e, "skipping a message on the commands exchange");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_presence_wins_whatever_order_it_arrives_in() {
        let p = Presence::default();
        assert_eq!(p.current(), None);
        assert!(p.offer(20, r#"{"status":"idle"}"#));
        assert!(
            !p.offer(10, r#"{"status":"dnd"}"#),
            "older than the one applied"
        );
        assert_eq!(p.current().as_deref(), Some(r#"{"status":"idle"}"#));
        assert!(
            p.offer(20, r#"{"status":"online"}"#),
            "a tie: the later one"
        );
        assert!(p.offer(30, r#"{"status":"dnd"}"#));
        assert_eq!(p.current().as_deref(), Some(r#"{"status":"dnd"}"#));
    }
}
