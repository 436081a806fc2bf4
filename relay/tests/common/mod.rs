//! The pipeline the relay's client tests run against, each part a library
//! in this process and RabbitMQ and Redis real: simulator -> sharder ->
//! RabbitMQ -> worker (Redis store) -> relay; and the checks of what a
//! client shard received against the simulator's truth and ledger.
#![allow(clippy::unwrap_used, dead_code)]

pub mod twilight_client;

use discord_sim::{SimConfig, SimHandle, Simulator};
use serde_json::Value;
use sharder::{RunOptions, SinkChoice};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::sim_sharder::{CACHE_INTENTS, SharderShape};
use testkit::{CutProxy, TempDir, unique_name};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 2;
/// What the real shards and the test clients identify with.
pub const INTENTS: u64 = CACHE_INTENTS;

/// One dispatch a client received: `(t, s, d)`.
pub type Dispatch = (String, u64, Value);

fn common_toml(base: &str) -> String {
    format!(
        "[redis]\nurl = \"redis://127.0.0.1:6379/\"\nkey_prefix = \"{base}\"\n\
         [amqp]\npartitions = {PARTITIONS}\n"
    )
}

/// A sharder (`sharder::run_with` in this process).
pub struct Sharder {
    intents: u64,
    stop: CancellationToken,
    run: JoinHandle<Result<sharder::RunReport, sharder::RunError>>,
}

impl Sharder {
    pub fn start(sim: &SimHandle, dir: &TempDir, base: &str, intents: u64) -> Self {
        let extra = format!(
            "identify_window = \"150ms\"\namqp_topology_base = \"{base}\"\n{}",
            common_toml(base)
        );
        let shape = SharderShape {
            intents,
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
        Self { intents, stop, run }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let report = tokio::time::timeout(WAIT, self.run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(report.drained, "the sharder drained its sink");
    }
}

/// The whole pipeline, the cache warm.
pub struct Pipeline {
    pub sim: SimHandle,
    pub base: String,
    pub dir: TempDir,
    pub sharder: Option<Sharder>,
    /// Where clients connect: the relay, or the front before it.
    pub relay_addr: SocketAddr,
    /// A Service's stand-in before the relay ([`Pipeline::start_fronted`]).
    front: Option<CutProxy>,
    relay_cfg: config::Config,
    shutdown: CancellationToken,
    worker_stop: CancellationToken,
    worker_cfg: config::Config,
    worker: JoinHandle<Result<worker::RunReport, worker::RunError>>,
    relay: JoinHandle<Result<(), relay::RelayError>>,
}

impl Pipeline {
    /// Starts a simulator of `shards` real shards and `guilds` guilds and
    /// everything behind it; returns once the cache holds every guild.
    pub async fn start(name: &str, shards: u32, guilds: u32) -> Self {
        Self::start_with(name, shards, guilds, INTENTS).await
    }

    /// [`Pipeline::start`] with the bot's (real shards' and relay's)
    /// `intents`.
    pub async fn start_with(name: &str, shards: u32, guilds: u32, intents: u64) -> Self {
        Self::launch(name, shards, guilds, intents, false).await
    }

    /// [`Pipeline::start`] with the relay behind a front (a Service's
    /// stand-in) that clients dial and that READY names as the resume
    /// URL, so [`Pipeline::replace_relay`] can roll the relay over.
    pub async fn start_fronted(name: &str, shards: u32, guilds: u32) -> Self {
        Self::launch(name, shards, guilds, INTENTS, true).await
    }

    async fn launch(name: &str, shards: u32, guilds: u32, intents: u64, fronted: bool) -> Self {
        // `BULWARK_TEST_LOG=info,lapin=warn` shows the pipeline's logs.
        static LOG: std::sync::Once = std::sync::Once::new();
        if let Ok(filter) = std::env::var("BULWARK_TEST_LOG") {
            LOG.call_once(|| {
                bulwark_process::init_logging(&filter, bulwark_process::LogTo::Stderr);
            });
        }
        let sim = Simulator::start(SimConfig {
            shards,
            guilds,
            identify_window: Duration::from_millis(100),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let base = unique_name(name);
        let dir = TempDir::new(name).unwrap();
        let shutdown = CancellationToken::new();
        let env = || vec![("BULWARK_DISCORD__TOKEN".into(), sim.config().token.clone())];
        let sharder = Sharder::start(&sim, &dir, &base, intents);
        let worker_cfg = config::Config::from_toml_str(
            &format!(
                "[worker]\nstore = \"redis\"\nhttp_listen = \"127.0.0.1:0\"\n\
                 amqp_topology_base = \"{base}\"\nready_backlog = 10\n{}",
                common_toml(&base)
            ),
            "test",
            env(),
        )
        .unwrap();
        let worker_stop = CancellationToken::new();
        let worker = tokio::spawn(worker::run(worker_cfg.clone(), worker_stop.clone()));
        // Where nothing listens until the relay is up.
        let front = if fronted {
            Some(
                CutProxy::start(SocketAddr::from(([127, 0, 0, 1], 9)))
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let public_url = front
            .as_ref()
            .map(|f| format!("public_url = \"ws://{}\"\n", f.addr()))
            .unwrap_or_default();
        let relay_cfg = config::Config::from_toml_str(
            &format!(
                "[discord]\nintents = {intents}\n\
                 [relay]\nlisten = \"127.0.0.1:0\"\nshards = 3\nheartbeat_interval = \"5s\"\n\
                 {public_url}amqp_topology_base = \"{base}\"\n{}",
                common_toml(&base)
            ),
            "test",
            env(),
        )
        .unwrap();
        let (relay, mut relay_addr) = start_relay(&relay_cfg, &shutdown).await;
        if let Some(f) = &front {
            f.retarget(relay_addr);
            relay_addr = f.addr();
        }
        let store = worker::RedisStore::connect("redis://127.0.0.1:6379/", &base)
            .await
            .unwrap();
        let want = sim.truth().guilds.len();
        let deadline = Instant::now() + WAIT;
        while store.guild_ids().await.unwrap().len() < want {
            assert!(
                Instant::now() < deadline,
                "the cache never held every guild"
            );
            // Polling the shared store's contents, not a synchronisation sleep.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            sim,
            base,
            dir,
            sharder: Some(sharder),
            relay_addr,
            front,
            relay_cfg,
            shutdown,
            worker_stop,
            worker_cfg,
            worker,
            relay,
        }
    }

    /// Stops the sharder and starts another on its sessions (every shard
    /// resumes); returns once both shards are connected again.
    pub async fn restart_sharder(&mut self) {
        let intents = self.sharder.as_ref().map_or(INTENTS, |s| s.intents);
        if let Some(s) = self.sharder.take() {
            s.stop().await;
        }
        self.sharder = Some(Sharder::start(&self.sim, &self.dir, &self.base, intents));
        let shards: Vec<u32> = (0..self.sim.config().shards).collect();
        let deadline = Instant::now() + WAIT;
        while self.sim.connected_sessions(&shards) < shards.len() {
            assert!(Instant::now() < deadline, "the sharder never reconnected");
            // Polling the simulator's session table, not a synchronisation sleep.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the worker (it drains) and starts another on the same
    /// partitions and store.
    pub async fn restart_worker(&mut self) {
        self.worker_stop.cancel();
        let old = std::mem::replace(&mut self.worker, tokio::spawn(std::future::pending()));
        tokio::time::timeout(WAIT, old)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        self.worker.abort();
        self.worker_stop = CancellationToken::new();
        self.worker = tokio::spawn(worker::run(
            self.worker_cfg.clone(),
            self.worker_stop.clone(),
        ));
    }

    /// A rolling update of the relay: starts another, waits until it is
    /// ready, sends new connections to it, then stops the first (which
    /// hands its sessions over and closes its bots' connections).
    pub async fn replace_relay(&mut self) {
        let next = self.spare_relay().await;
        self.switch_to(next).await;
    }

    /// Another relay on the same configuration, ready, taking no
    /// connection yet.
    pub async fn spare_relay(&self) -> Relay {
        let shutdown = CancellationToken::new();
        let (task, addr) = start_relay(&self.relay_cfg, &shutdown).await;
        let deadline = Instant::now() + WAIT;
        while testkit::http(addr, "GET", "/readyz", None, "").await.0 != 200 {
            assert!(Instant::now() < deadline, "the new relay never got ready");
            // Polling its readiness probe, as Kubernetes does.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Relay {
            addr,
            shutdown,
            task,
        }
    }

    /// Sends new connections to `next` and stops the current relay, whose
    /// bots then RESUME on `next`.
    pub async fn switch_to(&mut self, next: Relay) {
        let front = self.front.as_ref().expect("a fronted pipeline");
        front.retarget(next.addr);
        let old = std::mem::replace(&mut self.relay, next.task);
        std::mem::replace(&mut self.shutdown, next.shutdown).cancel();
        tokio::time::timeout(WAIT, old)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// Stops the relay (it hands its sessions over) with no other running.
    pub async fn stop_relay(&mut self) {
        self.shutdown.cancel();
        let old = std::mem::replace(&mut self.relay, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(WAIT, old)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// Starts a relay after [`Pipeline::stop_relay`], behind the front.
    pub async fn start_relay_again(&mut self) {
        let front = self.front.as_ref().expect("a fronted pipeline");
        self.shutdown = CancellationToken::new();
        let (relay, addr) = start_relay(&self.relay_cfg, &self.shutdown).await;
        front.retarget(addr);
        self.relay = relay;
    }

    /// The id of the newest world event so far.
    pub fn mark(&self) -> u64 {
        self.sim
            .ledger()
            .logical_events()
            .keys()
            .max()
            .copied()
            .unwrap_or(0)
    }

    /// The guilds of client shard `[id, count]`.
    pub fn guilds_of(&self, id: u32, count: u32) -> BTreeSet<u64> {
        self.sim
            .truth()
            .guilds
            .keys()
            .copied()
            .filter(|g| (g >> 22) % u64::from(count) == u64::from(id))
            .collect()
    }

    /// The world events after `mark` of the guilds of `[id, count]`, per
    /// guild, in order.
    pub fn expected(&self, id: u32, count: u32, mark: u64) -> BTreeMap<u64, Vec<String>> {
        let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (eid, e) in self.sim.ledger().logical_events() {
            if eid <= mark {
                continue;
            }
            if let Some(g) = e.guild_id
                && (g >> 22) % u64::from(count) == u64::from(id)
            {
                out.entry(g).or_default().push(e.event);
            }
        }
        out
    }

    /// Checks a snapshot: READY for `[id, count]`, then one GUILD_CREATE per
    /// guild of the split, each equal to the truth; `s` from 1, gapless.
    pub fn check_snapshot(&self, id: u32, count: u32, got: &[Dispatch]) {
        let truth = self.sim.truth();
        assert_eq!(got[0].0, "READY");
        assert_eq!(got[0].2["shard"], serde_json::json!([id, count]));
        let creates: BTreeSet<u64> = got[1..]
            .iter()
            .map(|(t, _, d)| {
                assert_eq!(t, "GUILD_CREATE");
                gid(d)
            })
            .collect();
        assert_eq!(
            creates,
            self.guilds_of(id, count),
            "client shard {id}: its guilds"
        );
        for (_, _, d) in &got[1..] {
            let t = &truth.guilds[&gid(d)];
            assert_eq!(d["name"], t.guild["name"]);
            assert_eq!(d["owner_id"], t.guild["owner_id"]);
            assert_eq!(d["member_count"].as_u64(), Some(t.member_count));
            let ids = |key: &str| -> BTreeSet<u64> {
                d[key].as_array().unwrap().iter().map(gid).collect()
            };
            assert_eq!(ids("channels"), t.channels.keys().copied().collect());
            assert_eq!(ids("roles"), t.roles.keys().copied().collect());
        }
        let seqs: Vec<u64> = got.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.worker_stop.cancel();
        if let Some(s) = self.sharder.take() {
            s.stop().await;
        }
        tokio::time::timeout(WAIT, self.worker)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        tokio::time::timeout(WAIT, self.relay)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        self.sim.shutdown().await;
    }
}

/// A relay of the pipeline that is not the current one yet.
pub struct Relay {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), relay::RelayError>>,
}

/// Starts a relay on `cfg` until `shutdown`; returns once it listens.
async fn start_relay(
    cfg: &config::Config,
    shutdown: &CancellationToken,
) -> (JoinHandle<Result<(), relay::RelayError>>, SocketAddr) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let relay = tokio::spawn(relay::run_with(cfg.clone(), shutdown.clone(), Some(tx)));
    let addr = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    (relay, addr)
}

pub fn gid(d: &Value) -> u64 {
    d["id"].as_str().unwrap().parse().unwrap()
}

/// What a client received per guild, in order (event names).
pub fn per_guild(got: &[Dispatch]) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (t, _, d) in got {
        let g = match t.as_str() {
            "GUILD_CREATE" | "GUILD_DELETE" | "GUILD_UPDATE" => Some(gid(d)),
            _ => d["guild_id"].as_str().and_then(|g| g.parse().ok()),
        };
        if let Some(g) = g {
            out.entry(g).or_default().push(t.clone());
        }
    }
    out
}

pub fn total(m: &BTreeMap<u64, Vec<String>>) -> usize {
    m.values().map(Vec::len).sum()
}

/// Checks what arrived after `start` against `want`: every event once, in
/// the guild's order; and `s` gapless over everything received.
pub fn check_events(got: &[Dispatch], start: usize, want: &BTreeMap<u64, Vec<String>>, what: &str) {
    assert!(
        total(want) > 10,
        "{what}: too few events to check: {want:?}"
    );
    assert_eq!(&per_guild(&got[start..]), want, "{what}");
    let seqs: Vec<u64> = got.iter().map(|(_, s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: s has gaps: {seqs:?}"
    );
}
