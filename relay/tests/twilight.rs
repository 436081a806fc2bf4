//! A real client library nobody here wrote, twilight-gateway, connects two
//! shards through the relay to the whole pipeline: simulator -> sharder ->
//! RabbitMQ -> worker (Redis store) -> relay, each a library in this
//! process, RabbitMQ and Redis real. Against the simulator's truth and
//! ledger:
//!
//! 1. each client shard gets READY and one GUILD_CREATE per guild of its
//!    own split (`(guild_id >> 22) % 2`), equal to the truth (name, owner,
//!    channels, roles, member count);
//! 2. every world event of those guilds afterwards arrives exactly once,
//!    in the guild's order, with gapless `s`;
//! 3. a client that drops its connection RESUMEs and misses nothing (no
//!    second READY);
//! 4. a sharder restart is invisible: no READY, no GUILD_CREATE again,
//!    and the events after it arrive.
#![allow(clippy::unwrap_used)]

use discord_sim::{SimConfig, SimHandle, Simulator};
use futures_util::StreamExt;
use serde_json::Value;
use sharder::{RunOptions, SinkChoice};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::sim_sharder::{CACHE_INTENTS, SharderShape};
use testkit::{TempDir, unique_name};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Message, Shard, ShardId};

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 2;

fn env(sim: &SimHandle) -> Vec<(String, String)> {
    vec![("BULWARK_DISCORD__TOKEN".into(), sim.config().token.clone())]
}

fn common_toml(base: &str) -> String {
    format!(
        "[redis]\nurl = \"redis://127.0.0.1:6379/\"\nkey_prefix = \"{base}\"\n\
         [amqp]\npartitions = {PARTITIONS}\n"
    )
}

struct Sharder {
    stop: CancellationToken,
    run: JoinHandle<Result<sharder::RunReport, sharder::RunError>>,
}

impl Sharder {
    fn start(sim: &SimHandle, dir: &TempDir, base: &str) -> Self {
        let extra = format!(
            "identify_window = \"150ms\"\namqp_topology_base = \"{base}\"\n{}",
            common_toml(base)
        );
        let shape = SharderShape {
            intents: CACHE_INTENTS,
            shutdown_grace: "10s",
            extra: &extra,
        };
        let cfg = testkit::sim_sharder::sharder_config(sim, dir.path(), shape).unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(sharder::run_with(
            cfg,
            stop.clone(),
            RunOptions {
                sink: SinkChoice::Amqp,
                on_listening: None,
            },
        ));
        Self { stop, run }
    }

    async fn stop(self) {
        self.stop.cancel();
        let report = tokio::time::timeout(WAIT, self.run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(report.drained, "the sharder drained its sink");
    }
}

/// What one client shard received: `(t, s, d)` in arrival order.
type Received = Vec<(String, u64, Value)>;

/// A client shard: its dispatches, its resume trigger, its task, and what
/// it received so far.
type Client = (
    mpsc::UnboundedReceiver<(String, u64, Value)>,
    mpsc::UnboundedSender<()>,
    JoinHandle<()>,
    Received,
);

/// Waits until every client received the world events after `mark` of its
/// guilds, then checks them: once each, in the guild's order, `s` gapless.
async fn run_phase(sim: &SimHandle, clients: &mut [Client], mark: u64, what: &str) {
    for (id, (rx, _, _, got)) in clients.iter_mut().enumerate() {
        let id = u32::try_from(id).unwrap();
        let want = expected(sim, id, mark);
        assert!(
            total(&want) > 10,
            "{what}: too few events to check: {want:?}"
        );
        let start = got.len();
        until(rx, got, what, |g| {
            total(&received_per_guild(&g[start..])) >= total(&want)
        })
        .await;
        let got_now = received_per_guild(&got[start..]);
        assert_eq!(got_now, want, "{what}: client shard {id}");
        let seqs: Vec<u64> = got.iter().map(|(_, s, _)| *s).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{what}: s has gaps: {seqs:?}"
        );
    }
}

/// Drives a twilight shard, forwarding each dispatch; `resume` makes it
/// close its connection with a RESUME frame (twilight then reconnects and
/// resumes by itself).
fn client(id: u32, token: &str, relay: SocketAddr) -> Client {
    let config = ConfigBuilder::new(token.to_owned(), Intents::from_bits_truncate(CACHE_INTENTS))
        .proxy_url(format!("ws://{relay}"))
        .build();
    let mut shard = Shard::with_config(ShardId::new(id, 2), config);
    let (tx, rx) = mpsc::unbounded_channel();
    let (resume_tx, mut resume_rx) = mpsc::unbounded_channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = resume_rx.recv() => shard.close(CloseFrame::RESUME),
                msg = shard.next() => match msg {
                    None => return,
                    Some(Ok(Message::Text(text))) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        if v["op"] == 0 {
                            let t = v["t"].as_str().unwrap().to_owned();
                            let s = v["s"].as_u64().unwrap();
                            if tx.send((t, s, v["d"].clone())).is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) => {}
                    Some(Err(e)) => tracing_error(&e),
                },
            }
        }
    });
    (rx, resume_tx, task, Received::new())
}

fn tracing_error(e: &dyn std::error::Error) {
    eprintln!("twilight: {e}");
}

fn gid(d: &Value) -> u64 {
    d["id"].as_str().unwrap().parse().unwrap()
}

fn guild_of(d: &Value) -> Option<u64> {
    d["guild_id"].as_str().and_then(|g| g.parse().ok())
}

/// Receives until `done(received)` holds, within [`WAIT`].
async fn until(
    rx: &mut mpsc::UnboundedReceiver<(String, u64, Value)>,
    got: &mut Received,
    what: &str,
    done: impl Fn(&Received) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => panic!("{what}: the client stopped"),
            Err(_) => panic!("{what}: timed out; got {} dispatches", got.len()),
        }
    }
}

/// The world events after `after` (event id) of the guilds client shard
/// `id` of 2 owns, per guild, in order.
fn expected(sim: &SimHandle, id: u32, after: u64) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (eid, e) in sim.ledger().logical_events() {
        if eid <= after {
            continue;
        }
        if let Some(g) = e.guild_id
            && (g >> 22) % 2 == u64::from(id)
        {
            out.entry(g).or_default().push(e.event);
        }
    }
    out
}

fn received_per_guild(got: &[(String, u64, Value)]) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (t, _, d) in got {
        let g = match t.as_str() {
            "GUILD_CREATE" | "GUILD_DELETE" | "GUILD_UPDATE" => Some(gid(d)),
            _ => guild_of(d),
        };
        if let Some(g) = g {
            out.entry(g).or_default().push(t.clone());
        }
    }
    out
}

fn last_event_id(sim: &SimHandle) -> u64 {
    sim.ledger()
        .logical_events()
        .keys()
        .max()
        .copied()
        .unwrap_or(0)
}

fn total(m: &BTreeMap<u64, Vec<String>>) -> usize {
    m.values().map(Vec::len).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_shards_get_the_truth_every_event_once_and_survive_restarts() {
    let sim = Simulator::start(SimConfig {
        shards: 2,
        guilds: 12,
        identify_window: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let base = unique_name("relay-twilight");
    let dir = TempDir::new("relay-twilight").unwrap();
    let shutdown = CancellationToken::new();

    let sharder = Sharder::start(&sim, &dir, &base);
    let worker_cfg = config::Config::from_toml_str(
        &format!(
            "[worker]\nstore = \"redis\"\nhttp_listen = \"127.0.0.1:0\"\n\
             amqp_topology_base = \"{base}\"\nready_backlog = 10\n{}",
            common_toml(&base)
        ),
        "test",
        env(&sim),
    )
    .unwrap();
    let worker = tokio::spawn(worker::run(worker_cfg, shutdown.clone()));
    let relay_cfg = config::Config::from_toml_str(
        &format!(
            "[discord]\nintents = {CACHE_INTENTS}\n\
             [relay]\nlisten = \"127.0.0.1:0\"\nshards = 2\nheartbeat_interval = \"5s\"\n\
             amqp_topology_base = \"{base}\"\n{}",
            common_toml(&base)
        ),
        "test",
        env(&sim),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let relay = tokio::spawn(relay::run_with(relay_cfg, shutdown.clone(), Some(tx)));
    let relay_addr = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();

    // The cache holds every guild before the bots connect.
    let store = worker::RedisStore::connect("redis://127.0.0.1:6379/", &base)
        .await
        .unwrap();
    let truth = sim.truth();
    let deadline = Instant::now() + WAIT;
    while store.guild_ids().await.unwrap().len() < truth.guilds.len() {
        assert!(
            Instant::now() < deadline,
            "the cache never held every guild"
        );
        // Polling the shared store's contents, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. READY and the truth, per client shard.
    let token = sim.config().token.clone();
    let mut clients: Vec<Client> = Vec::new();
    for id in 0..2u32 {
        let (mut rx, resume, task, mut got) = client(id, &token, relay_addr);
        let mine: BTreeSet<u64> = truth
            .guilds
            .keys()
            .copied()
            .filter(|g| (g >> 22) % 2 == u64::from(id))
            .collect();
        let n = mine.len();
        until(&mut rx, &mut got, "snapshot", |g| g.len() > n).await;
        assert_eq!(got[0].0, "READY");
        assert_eq!(got[0].2["shard"], serde_json::json!([id, 2]));
        let creates: BTreeSet<u64> = got[1..]
            .iter()
            .map(|(t, _, d)| {
                assert_eq!(t, "GUILD_CREATE");
                gid(d)
            })
            .collect();
        assert_eq!(creates, mine, "client shard {id}: its guilds");
        for (_, _, d) in &got[1..] {
            let t = &truth.guilds[&gid(d)];
            assert_eq!(d["name"], t.guild["name"]);
            assert_eq!(d["owner_id"], t.guild["owner_id"]);
            assert_eq!(d["member_count"].as_u64(), Some(t.member_count));
            let channels: BTreeSet<u64> =
                d["channels"].as_array().unwrap().iter().map(gid).collect();
            assert_eq!(channels, t.channels.keys().copied().collect(), "channels");
            let roles: BTreeSet<u64> = d["roles"].as_array().unwrap().iter().map(gid).collect();
            assert_eq!(roles, t.roles.keys().copied().collect(), "roles");
        }
        let seqs: Vec<u64> = got.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        clients.push((rx, resume, task, got));
    }

    // 2. Every world event after the snapshot, once, in order per guild.
    let mark = last_event_id(&sim);
    sim.emit(300);
    run_phase(&sim, &mut clients, mark, "live events").await;

    // 3. A client drops its connection and resumes: nothing missed, no
    //    second READY.
    let mark = last_event_id(&sim);
    clients[0].1.send(()).unwrap();
    sim.emit(200);
    run_phase(&sim, &mut clients, mark, "after a client resume").await;
    let count = |got: &Received, name: &str| got.iter().filter(|(t, _, _)| t == name).count();
    for (i, (_, _, _, got)) in clients.iter().enumerate() {
        assert_eq!(count(got, "READY"), 1);
        assert_eq!(count(got, "RESUMED"), usize::from(i == 0), "client {i}");
    }

    // 4. The sharder restarts (every shard resumes): invisible.
    let before: Vec<usize> = clients.iter().map(|c| c.3.len()).collect();
    let resumes_before = sim.counters().resumes;
    sharder.stop().await;
    let sharder = Sharder::start(&sim, &dir, &base);
    let deadline = Instant::now() + WAIT;
    while sim.connected_sessions(&[0, 1]) < 2 {
        assert!(Instant::now() < deadline, "the sharder never reconnected");
        // Polling the simulator's session table, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mark = last_event_id(&sim);
    sim.emit(200);
    run_phase(&sim, &mut clients, mark, "after a sharder restart").await;
    let c = sim.counters();
    assert!(
        c.resumes >= resumes_before + 2,
        "both real shards resumed: {c:?}"
    );
    assert_eq!(c.identifies, 2, "no real shard identified again");
    for (i, (_, _, _, got)) in clients.iter().enumerate() {
        let again = got[before[i]..]
            .iter()
            .filter(|(t, _, _)| t == "READY")
            .count();
        assert_eq!(again, 0, "client {i} got READY again");
    }

    shutdown.cancel();
    sharder.stop().await;
    tokio::time::timeout(WAIT, worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, relay)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for (_, _, task, _) in clients {
        task.abort();
    }
    sim.shutdown().await;
}
