//! `--relay`: the relay on the demo's cache and clean stream, and a bot
//! connected through it with a real client library.
//!
//! The worker's clean events go to the output exchange (`<base>.events`)
//! as the worker binary publishes them (with publisher confirms); the
//! relay ([`relay::run_with`]) reads that stream and the Redis cache; once
//! every shard is READY a twilight-gateway shard `[0, 1]` connects to it
//! as a bot would (all guilds in one client shard). At the end what it
//! received is judged against the simulator: its guilds (GUILD_CREATE in,
//! GUILD_DELETE out) equal the truth's, it got one READY, and every guild
//! event the world made after its snapshot arrived once and in order.

use crate::error::DemoError;
use discord_sim::SimHandle;
use lapin::options::ConfirmSelectOptions;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::output::Outgoing;

/// Clean events published per confirmed batch.
const BATCH: usize = 256;

/// One dispatch the client received: `(t, d)`.
type Dispatch = (String, Value);

/// What the relay's client received, judged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayFigures {
    /// The client's snapshot arrived complete (READY and its guilds).
    pub loaded: bool,
    /// READYs the client got (1 expected).
    pub readies: usize,
    /// Guilds the client holds at the end, and the truth's count.
    pub guilds: (usize, usize),
    /// Guild events the world made after its snapshot, and how many of
    /// them arrived once and in order (per guild, by name and order: the
    /// rest were lost, repeated or out of order).
    pub events: usize,
    pub received: usize,
}

impl RelayFigures {
    /// Nothing lost, nothing extra, the right guilds.
    pub fn ok(&self) -> bool {
        self.loaded
            && self.readies == 1
            && self.guilds.0 == self.guilds.1
            && self.received == self.events
    }
}

/// The worker's clean events into the output exchange: a handler for
/// [`worker::Worker::on_any`] and the task that publishes what it hands
/// over. With `owns_exchange` (no RabbitMQ queue, whose topology holds
/// it), the task deletes the exchange when stopped.
pub fn output(
    amqp_url: String,
    exchange: String,
    owns_exchange: bool,
    stop: CancellationToken,
) -> (
    impl Fn(&worker::CleanEvent<'_>) + Send + Sync + 'static,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let task = tokio::spawn(async move {
        if let Err(e) = publish(&amqp_url, &exchange, owns_exchange, rx, stop).await {
            tracing::error!(error = %e, "the demo's output publisher stopped; the relay misses events");
        }
    });
    let handler = move |e: &worker::CleanEvent<'_>| {
        let _ = tx.send(Outgoing::from_clean(e));
    };
    (handler, task)
}

async fn publish(
    amqp_url: &str,
    exchange: &str,
    owns_exchange: bool,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) -> Result<(), DemoError> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .map_err(DemoError::amqp("connecting the output publisher"))?;
    let ch = conn
        .create_channel()
        .await
        .map_err(DemoError::amqp("opening a channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(DemoError::amqp("enabling publisher confirms"))?;
    envelope::topology::declare_topic(&ch, exchange)
        .await
        .map_err(DemoError::amqp("declaring the output exchange"))?;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            e = rx.recv() => e,
            () = stop.cancelled() => None,
        };
        let Some(first) = first else {
            // The run's names go with it (with a RabbitMQ queue, its
            // topology deletes the exchange).
            if owns_exchange {
                let _ = ch
                    .exchange_delete(
                        exchange.into(),
                        lapin::options::ExchangeDeleteOptions::default(),
                    )
                    .await;
            }
            let _ = conn.close(200, "demo done".into()).await;
            return Ok(());
        };
        batch.push(first);
        while batch.len() < BATCH
            && let Ok(e) = rx.try_recv()
        {
            batch.push(e);
        }
        worker::output::publish_confirmed(&ch, exchange, std::mem::take(&mut batch))
            .await
            .map_err(|e| DemoError::Io(std::io::Error::other(e.to_string())))?;
    }
}

/// The relay and its client.
pub struct RelayRun {
    stop: CancellationToken,
    relay: JoinHandle<Result<(), relay::RelayError>>,
    addr: SocketAddr,
    token: String,
    intents: u64,
    client: Mutex<Option<JoinHandle<()>>>,
    received: Arc<Mutex<Vec<Dispatch>>>,
    /// The newest world event when the client's snapshot was complete.
    mark: Mutex<Option<u64>>,
    /// When the client connected.
    connected_at: Mutex<Option<std::time::Instant>>,
}

impl RelayRun {
    /// Starts the relay on the demo's Redis cache (`base` prefix) and
    /// output exchange.
    pub async fn start(
        sim: &SimHandle,
        amqp_url: &str,
        redis_url: &str,
        base: &str,
        intents: u64,
    ) -> Result<Self, DemoError> {
        let token = sim.config().token.clone();
        let cfg = config::Config::from_toml_str(
            &format!(
                "[discord]\nintents = {intents}\n[redis]\nkey_prefix = \"{base}\"\n\
                 [relay]\nlisten = \"127.0.0.1:0\"\nshards = 1\namqp_topology_base = \"{base}\"\n"
            ),
            "bulwark-demo --relay",
            vec![
                ("BULWARK_DISCORD__TOKEN".into(), token.clone()),
                ("BULWARK_AMQP__URL".into(), amqp_url.into()),
                ("BULWARK_REDIS__URL".into(), redis_url.into()),
            ],
        )?;
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let relay = tokio::spawn(relay::run_with(cfg, stop.clone(), Some(tx)));
        let addr = rx
            .await
            .map_err(|_| DemoError::Timeout("the relay never listened".into()))?;
        Ok(Self {
            stop,
            relay,
            addr,
            token,
            intents,
            client: Mutex::new(None),
            received: Arc::default(),
            mark: Mutex::new(None),
            connected_at: Mutex::new(None),
        })
    }

    /// The relay's gateway URL.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Connects the twilight client (once).
    pub fn connect(&self) {
        let mut client = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if client.is_some() {
            return;
        }
        use futures_util::StreamExt;
        use twilight_gateway::{ConfigBuilder, Intents, Message, Shard, ShardId};
        let config = ConfigBuilder::new(
            self.token.clone(),
            Intents::from_bits_truncate(self.intents),
        )
        .proxy_url(self.url())
        .build();
        let mut shard = Shard::with_config(ShardId::ONE, config);
        *self
            .connected_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now());
        let received = self.received.clone();
        *client = Some(tokio::spawn(async move {
            while let Some(msg) = shard.next().await {
                let Ok(Message::Text(text)) = msg else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if v["op"] == 0
                    && let Some(t) = v["t"].as_str()
                {
                    received
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((t.to_owned(), v["d"].clone()));
                }
            }
        }));
    }

    /// Once the client holds READY and a GUILD_CREATE for every guild
    /// READY listed (its snapshot), remembers the newest world event: the
    /// snapshot was read from the cache before that event existed, so it
    /// and every later one must arrive live. Returns how long the snapshot
    /// took, once, when it completes.
    pub fn mark_when_loaded(&self, sim: &SimHandle) -> Option<std::time::Duration> {
        let mut mark = self.mark.lock().unwrap_or_else(PoisonError::into_inner);
        let connected_at = *self
            .connected_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if mark.is_some() || !self.snapshot_complete() {
            return None;
        }
        *mark = Some(newest_event(sim));
        connected_at.map(|at| at.elapsed())
    }

    /// The client's snapshot completed (see [`RelayRun::mark_when_loaded`]).
    pub fn marked(&self) -> bool {
        self.mark
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// READY arrived, and a GUILD_CREATE for each guild it listed.
    fn snapshot_complete(&self) -> bool {
        let got = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((_, ready)) = got.iter().find(|(t, _)| t == "READY") else {
            return false;
        };
        let created: BTreeSet<u64> = got
            .iter()
            .filter(|(t, _)| t == "GUILD_CREATE")
            .filter_map(|(_, d)| snowflake(&d["id"]))
            .collect();
        ready["guilds"].as_array().is_some_and(|listed| {
            listed
                .iter()
                .filter_map(|g| snowflake(&g["id"]))
                .all(|g| created.contains(&g))
        })
    }

    /// The guilds the client holds now.
    fn guilds(&self) -> BTreeSet<u64> {
        let got = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        let mut guilds = BTreeSet::new();
        for (t, d) in got.iter() {
            match t.as_str() {
                "GUILD_CREATE" => {
                    guilds.extend(snowflake(&d["id"]));
                }
                "GUILD_DELETE" if d["unavailable"] != true => {
                    if let Some(g) = snowflake(&d["id"]) {
                        guilds.remove(&g);
                    }
                }
                _ => {}
            }
        }
        guilds
    }

    /// What the client received, judged.
    pub fn figures(&self, sim: &SimHandle) -> RelayFigures {
        let mark = *self.mark.lock().unwrap_or_else(PoisonError::into_inner);
        let want = mark.map(|m| expected(sim, m)).unwrap_or_default();
        let got = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        let readies = got.iter().filter(|(t, _)| t == "READY").count();
        let mut per_guild: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (t, d) in got.iter() {
            let g = match t.as_str() {
                "GUILD_CREATE" | "GUILD_DELETE" | "GUILD_UPDATE" => snowflake(&d["id"]),
                _ => snowflake(&d["guild_id"]),
            };
            if let Some(g) = g {
                per_guild.entry(g).or_default().push(t.clone());
            }
        }
        drop(got);
        let mut f = RelayFigures {
            loaded: mark.is_some(),
            readies,
            guilds: (self.guilds().len(), sim.truth().guilds.len()),
            ..RelayFigures::default()
        };
        for (g, names) in &want {
            f.events += names.len();
            let got = per_guild.get(g).map_or(&[][..], Vec::as_slice);
            // The world's events after the mark end the guild's list, in
            // order; what comes before them is the snapshot and the events
            // it already covered.
            f.received += suffix_match(got, names);
        }
        f
    }

    /// The client loaded, and every world event after it arrived.
    pub fn caught_up(&self, sim: &SimHandle) -> bool {
        let f = self.figures(sim);
        f.loaded && f.received == f.events
    }

    /// Stops the client and the relay.
    pub async fn stop(self) {
        if let Some(c) = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            c.abort();
        }
        self.stop.cancel();
        if let Ok(Err(e)) = self.relay.await {
            tracing::warn!(error = %e, "the relay ended with an error");
        }
    }
}

/// How many of `want` end `got`, in order (the longest suffix of `want`
/// that `got` ends with, as a run).
fn suffix_match(got: &[String], want: &[String]) -> usize {
    (0..=want.len().min(got.len()))
        .rev()
        .find(|&n| {
            got[got.len() - n..]
                .iter()
                .zip(&want[want.len() - n..])
                .all(|(a, b)| a == b)
        })
        .unwrap_or(0)
}

fn snowflake(v: &Value) -> Option<u64> {
    v.as_str()?.parse().ok()
}

fn newest_event(sim: &SimHandle) -> u64 {
    sim.ledger()
        .logical_events()
        .keys()
        .max()
        .copied()
        .unwrap_or(0)
}

/// The world's guild events after `mark`, per guild, in order.
fn expected(sim: &SimHandle, mark: u64) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (id, e) in sim.ledger().logical_events() {
        if id > mark
            && let Some(g) = e.guild_id
        {
            out.entry(g).or_default().push(e.event);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guilds_events_must_end_its_list_in_order() {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let want = v(&["A", "B", "C"]);
        assert_eq!(suffix_match(&v(&["X", "A", "B", "C"]), &want), 3);
        assert_eq!(suffix_match(&v(&["A", "C"]), &want), 1, "B lost");
        assert_eq!(suffix_match(&v(&["A", "C", "B"]), &want), 0, "out of order");
        assert_eq!(
            suffix_match(&v(&["A", "B", "C", "C"]), &want),
            1,
            "twice: only a run of 1 ends it"
        );
        assert_eq!(suffix_match(&[], &want), 0);
        assert_eq!(suffix_match(&v(&["A"]), &[]), 0);
    }
}
