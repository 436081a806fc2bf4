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
//!    connection that dies is lost. It opens its channel on the event
//!    sink's connection ([`crate::AmqpSink::connection`]) and never dials
//!    the broker itself: in an outage the broker sees one client's
//!    capped reconnects, and the commands resume with the sink.
//! 2. [`route`] sends op 4 and op 8 to the serving shard that owns the
//!    guild (`(guild_id >> 22) % total`) if this process runs it, else
//!    ignores it (another process does). op 3 goes to every shard, and
//!    becomes the [`Presence`] of the IDENTIFYs that follow, unless a newer
//!    one (by the bot's `issued_at_ms`) was applied already: last writer
//!    wins, whatever order two relays' commands reach two processes in.
//!    With Redis the presence is also kept there ([`PresenceRecord`],
//!    compare-and-set on `issued_at_ms`), so a process that starts later,
//!    or a shard that must IDENTIFY again after a restart, keeps the bot's
//!    status instead of none.
//! 3. Each shard holds at most [`crate::shard::COMMAND_BACKLOG`] commands
//!    and sends them only while active, through its connection's send
//!    limiter (never above Discord's 120 per 60 s, heartbeats keep their
//!    share); one that waited past `COMMAND_TTL` is dropped. A command
//!    that finds the backlog full is dropped and counted.

use crate::AdminState;
use envelope::Command;
use envelope::command::{COMMAND_TTL, PRESENCE_UPDATE};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::BasicConsumeOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
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

/// The bot's newest presence in Redis (`<prefix>:presence`, value
/// `<issued_at_ms>:<d>`), shared by every sharder process.
#[derive(Clone)]
pub struct PresenceRecord {
    conn: dnscache::RedisConnection,
    key: String,
}

/// Writes `ARGV[1]:ARGV[2]` unless the stored presence is newer.
const SAVE_PRESENCE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local at = tonumber(string.match(cur, '^(%d+):'))
  if at and at > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
return 1
";

impl PresenceRecord {
    pub fn new(conn: dnscache::RedisConnection, prefix: &str) -> Self {
        Self {
            conn,
            key: format!("{prefix}:presence"),
        }
    }

    /// Stores `d` unless a newer presence is stored.
    pub async fn save(&self, issued_at_ms: u64, d: &str) -> redis::RedisResult<()> {
        let _: i64 = redis::cmd("EVAL")
            .arg(SAVE_PRESENCE)
            .arg(1)
            .arg(&self.key)
            .arg(issued_at_ms)
            .arg(d)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The stored presence, into `presence` (a malformed record is
    /// ignored, with a warning).
    pub async fn restore(&self, presence: &Presence) -> redis::RedisResult<()> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut self.conn.clone())
            .await?;
        let Some(raw) = raw else { return Ok(()) };
        let parsed = raw
            .split_once(':')
            .and_then(|(at, d)| Some((at.parse::<u64>().ok()?, d)))
            .filter(|(_, d)| {
                serde_json::from_str::<serde_json::Value>(d).is_ok_and(|v| v.is_object())
            });
        match parsed {
            Some((at, d)) => {
                presence.offer(at, d);
                tracing::info!(issued_at_ms = at, "restored the bot's presence from Redis");
            }
            None => tracing::warn!(key = %self.key, "ignoring a malformed stored presence"),
        }
        Ok(())
    }
}

/// Where a command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Handed to the owning shard (op 3: to every shard whose backlog had
    /// room).
    Sent,
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
            Self::Sent => "sent",
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
        for (_, h) in &shards {
            h.send_command(payload.clone());
        }
        return Routed::Sent;
    }
    let Some((_, h)) = shards
        .iter()
        .find(|(id, h)| c.shard(h.total()) == Some(*id))
    else {
        return Routed::NotOurs;
    };
    if h.send_command(c.payload()) {
        Routed::Sent
    } else {
        Routed::Dropped
    }
}

/// Consumes the commands exchange on the sink's `connection` until `stop`.
pub async fn run(
    mut connection: watch::Receiver<Option<Arc<Connection>>>,
    exchange: String,
    admin: AdminState,
    presence: (Presence, Option<PresenceRecord>),
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        // The sink's connection, once it is up.
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            c = connection.wait_for(Option::is_some) => match c {
                Ok(c) => c.clone(),
                Err(_) => return,
            },
        };
        let Some(conn) = conn else { continue };
        match consume(&conn, &exchange, &admin, &presence, &stop).await {
            Ok(()) => return,
            Err(e) => {
                metrics::counter!("sharder_command_feed_restarts_total").increment(1);
                tracing::warn!(error = %e, ?delay, "the commands feed stopped; it resumes on the sink's connection (bots' op 3/4/8 are lost meanwhile)");
            }
        }
        // Whatever ended it (the connection, or only the channel), wait a
        // little before the next channel; a new connection of the sink
        // wakes it at once.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
            _ = connection.changed() => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn consume(
    conn: &Connection,
    exchange: &str,
    admin: &AdminState,
    (presence, record): &(Presence, Option<PresenceRecord>),
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
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
    let q = envelope::topology::private_queue(&ch, exchange, args).await?;
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
            () = stop.cancelled() => {
                // Closing the channel ends the subscription too. Dropped
                // instead, the consumer and the channel would each send
                // their own cancel and close from lapin's background, and
                // the loser of that race, on a channel already closing, is
                // taken for a connection error: this is the sink's
                // connection, which may still be draining.
                let closed = ch.close(200, "sharder stopping".into()).await;
                drop(consumer);
                return closed;
            }
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
                if c.op == PRESENCE_UPDATE
                    && routed != Routed::Stale
                    && let Some(r) = record
                    && let Err(e) = r.save(c.issued_at_ms, &c.d).await
                {
                    tracing::warn!(error = %e, "cannot keep the bot's presence in Redis; a restart starts without it");
                }
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

    #[tokio::test]
    async fn the_stored_presence_is_the_newest_and_a_new_process_starts_with_it() {
        let conn = dnscache::RedisConnection::with_client(
            redis::Client::open("redis://127.0.0.1:6379/").unwrap(),
            redis::AsyncConnectionConfig::new(),
        );
        conn.ready().await.unwrap();
        let prefix = testkit::unique_name("presence");
        let record = PresenceRecord::new(conn.clone(), &prefix);
        let fresh = Presence::default();
        record.restore(&fresh).await.unwrap();
        assert_eq!(fresh.current(), None, "nothing stored yet");
        record.save(20, r#"{"status":"idle"}"#).await.unwrap();
        record.save(10, r#"{"status":"dnd"}"#).await.unwrap();
        let restarted = Presence::default();
        record.restore(&restarted).await.unwrap();
        assert_eq!(restarted.current().as_deref(), Some(r#"{"status":"idle"}"#));
        let _: () = redis::cmd("SET")
            .arg(&record.key)
            .arg("garbage")
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        let after_garbage = Presence::default();
        record.restore(&after_garbage).await.unwrap();
        assert_eq!(
            after_garbage.current(),
            None,
            "a malformed record is ignored"
        );
        let _: () = redis::cmd("DEL")
            .arg(&record.key)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
    }
}
