//! A live reshard end to end: the real sharder library (one process), the
//! gateway simulator serving both shard totals at once, the real RabbitMQ,
//! and one worker consuming every partition. 4 shards grow to 8 through
//! `POST /admin/reshard` while traffic flows. Against the simulator's
//! ledger and truth:
//!
//! * every logical guild event the simulator sent reached the clean stream
//!   exactly once (counted per guild and clean name; a MESSAGE_CREATE's
//!   payload once), although both generations received the overlap's;
//! * no GUILD_AVAILABLE beyond the boot's, no join but the real ones;
//! * the reshard announced once per phase; the cache equals the truth;
//! * 4 + 8 identifies, and every event had a live session (no guild dark).
//!
//! Then the restarts: after the reshard the sharder comes back at 8 shards
//! and resumes them (no identify); stopped mid-reshard it rolls back at its
//! next start (`RESHARD_ABORTED`, the 4 old shards identify afresh, and the
//! cache is the truth again).
#![allow(clippy::unwrap_used)]

mod common;

use discord_sim::{SimConfig, SimHandle, Simulator};
use sharder::{AmqpTopology, RunOptions, SinkChoice};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::services::AMQP_URL as AMQP;
use testkit::sim_sharder::{CACHE_INTENTS, SharderShape};
use testkit::{TempDir, http, unique_name};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use worker::{CleanKind, MemoryStore, Worker};

const FROM: u32 = 4;
const TO: u32 = 8;
const PARTITIONS: u32 = 4;
const GUILDS: u32 = 200;
const WAIT: Duration = Duration::from_secs(90);

/// Every clean event: (guild, clean name, payload).
type Seen = Arc<Mutex<Vec<(u64, String, Vec<u8>)>>>;

async fn start_sim(identify_window: Duration, max_concurrency: u32) -> SimHandle {
    Simulator::start(SimConfig {
        shards: FROM,
        guilds: GUILDS,
        channels_per_guild: 2,
        roles_per_guild: 1,
        members_per_guild: 2,
        identify_window,
        max_concurrency,
        event_rate: 0.0,
        outage_events: u64::MAX / 4,
        event_mix: "GUILD_MEMBER_ADD=6,GUILD_MEMBER_UPDATE=5,GUILD_MEMBER_REMOVE=5,\
                    CHANNEL_CREATE=3,CHANNEL_UPDATE=4,CHANNEL_DELETE=3,GUILD_ROLE_UPDATE=3,\
                    GUILD_UPDATE=2,MESSAGE_CREATE=8,GUILD_JOIN=1"
            .parse()
            .unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// The name the clean stream gives a simulator event.
fn clean_name(event: &str) -> &str {
    match event {
        "GUILD_CREATE" => "GUILD_JOINED",
        "GUILD_DELETE" => "GUILD_REMOVED",
        other => other,
    }
}

/// RabbitMQ, one worker over every partition recording the clean stream,
/// and a session directory, around one simulator.
struct Pipeline {
    sim: SimHandle,
    base: String,
    topo: AmqpTopology,
    _conn: lapin::Connection,
    admin_ch: lapin::Channel,
    worker: Arc<Worker<MemoryStore>>,
    seen: Seen,
    stop_consumers: CancellationToken,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    dir: TempDir,
}

/// A sharder (`sharder::run_with` in this process) and its HTTP address.
struct Sharder {
    stop: CancellationToken,
    run: tokio::task::JoinHandle<Result<sharder::RunReport, sharder::RunError>>,
    addr: SocketAddr,
}

impl Sharder {
    async fn stop(self) {
        self.stop.cancel();
        let report = tokio::time::timeout(WAIT, self.run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(report.drained);
    }
}

impl Pipeline {
    async fn start(sim: SimHandle) -> Self {
        let base = unique_name("reshard");
        let topo = AmqpTopology::named(&base, PARTITIONS);
        let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let admin_ch = conn.create_channel().await.unwrap();
        topo.declare(&admin_ch).await.unwrap();
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let worker = Arc::new(Worker::new(MemoryStore::new()).on_any(move |ev| {
            let name = match ev.kind {
                CleanKind::Dispatch if ev.t == "READY" || ev.t == "RESUMED" => return,
                _ => ev.name().to_owned(),
            };
            s.lock()
                .unwrap()
                .push((ev.guild_id.unwrap_or_default(), name, ev.d.to_vec()));
        }));
        let stop_consumers = CancellationToken::new();
        let consumers = common::consume_every_partition(
            &worker,
            &conn,
            &topo,
            PARTITIONS,
            None,
            &stop_consumers,
        )
        .await;
        Self {
            sim,
            base,
            topo,
            _conn: conn,
            admin_ch,
            worker,
            seen,
            stop_consumers,
            consumers,
            dir: TempDir::new("reshard-sessions").unwrap(),
        }
    }

    /// A sharder configured with 4 shards (a record of a live reshard
    /// overrides that).
    async fn sharder(&self) -> Sharder {
        self.sharder_process(None).await
    }

    /// Process `index` of two, with sessions and the reshard's state in
    /// Redis (under this pipeline's unique prefix), or the only process,
    /// with sessions in files.
    async fn sharder_process(&self, index: Option<u32>) -> Sharder {
        self.sharder_of(index.map(|i| (i, 2))).await
    }

    /// Process `index` of `count` (sessions and reshard state in Redis),
    /// or the only process.
    async fn sharder_of(&self, process: Option<(u32, u32)>) -> Sharder {
        let cluster = match process {
            Some((i, count)) => format!(
                "process_count = {count}\nprocess_index = {i}\nsession_store = \"redis\"\n\
                 [redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n",
                testkit::services::REDIS_URL,
                self.base
            ),
            None => String::new(),
        };
        let extra = format!(
            "identify_window = \"{}ms\"\namqp_topology_base = \"{}\"\n{cluster}\
             [amqp]\npartitions = {PARTITIONS}\n",
            self.sim.config().identify_window.as_millis() + 10,
            self.base
        );
        let shape = SharderShape {
            intents: CACHE_INTENTS,
            shutdown_grace: "10s",
            extra: &extra,
        };
        let cfg = testkit::sim_sharder::sharder_config(&self.sim, self.dir.path(), shape).unwrap();
        let stop = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let run = tokio::spawn(sharder::run_with(
            cfg,
            stop.clone(),
            RunOptions {
                sink: SinkChoice::Amqp,
                on_listening: Some(tx),
            },
        ));
        let addr = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
        Sharder { stop, run, addr }
    }

    async fn converge(&self, what: &str) {
        common::converge(&self.sim, &**self.worker.store(), what, WAIT).await;
    }

    fn count(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n, _)| n == name)
            .count()
    }

    /// Every logical guild event of the ledger once in the clean stream
    /// (per guild and clean name), no MESSAGE_CREATE payload twice, and no
    /// guild without a live session. Returns (events, seen by both).
    async fn assert_each_event_once(&self) -> (usize, usize) {
        let ledger = self.sim.ledger();
        let logical = ledger.logical_events();
        let mut want: BTreeMap<(u64, String), usize> = BTreeMap::new();
        for ev in logical.values() {
            let Some(g) = ev.guild_id else { continue };
            assert!(
                !ev.deliveries.is_empty(),
                "{} of guild {g} reached no session: the guild was dark",
                ev.event
            );
            *want
                .entry((g, clean_name(&ev.event).to_owned()))
                .or_default() += 1;
        }
        let expected: usize = want.values().sum();
        let both = logical
            .values()
            .filter(|e| e.deliveries_to(FROM) > 0 && e.deliveries_to(TO) > 0)
            .count();
        // The worker may still be emitting the last events: wait for the
        // count (a readiness condition with a deadline).
        let started = tokio::time::Instant::now();
        let got = loop {
            let mut got: BTreeMap<(u64, String), usize> = BTreeMap::new();
            for (g, name, _) in self.seen.lock().unwrap().iter() {
                if !name.starts_with("RESHARD_") && name != "GUILD_AVAILABLE" {
                    *got.entry((*g, name.clone())).or_default() += 1;
                }
            }
            if got.values().sum::<usize>() >= expected || started.elapsed() > WAIT {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let diffs: Vec<_> = want
            .keys()
            .chain(got.keys())
            .filter(|k| want.get(*k) != got.get(*k))
            .map(|k| format!("{k:?}: sent {:?}, emitted {:?}", want.get(k), got.get(k)))
            .collect();
        assert!(
            diffs.is_empty(),
            "clean stream != ledger ({} differences): {:?}",
            diffs.len(),
            &diffs[..diffs.len().min(10)]
        );
        let seen = self.seen.lock().unwrap();
        let messages: Vec<&Vec<u8>> = seen
            .iter()
            .filter(|(_, n, _)| n == "MESSAGE_CREATE")
            .map(|(_, _, d)| d)
            .collect();
        let unique: std::collections::BTreeSet<_> = messages.iter().collect();
        assert_eq!(unique.len(), messages.len(), "a message emitted twice");
        (expected, both)
    }

    /// Once the reshard to `TO` is done: traffic off, only the new total
    /// attached, the cache the truth, every event once, no guild announced
    /// again, and the reshard announced started and completed once.
    /// Returns (events, seen by both).
    async fn assert_completed_once(&self) -> (usize, usize) {
        self.sim.set_event_rate(0.0).unwrap();
        assert_serving(&self.sim, TO, FROM, "only the new total serves").await;
        self.converge("after the reshard").await;
        let counts = self.assert_each_event_once().await;
        assert_eq!(
            self.count("GUILD_AVAILABLE"),
            GUILDS as usize,
            "only the boot's loads are announced"
        );
        assert_eq!(self.count("RESHARD_STARTED"), 1);
        assert_eq!(self.count("RESHARD_COMPLETED"), 1);
        assert_eq!(self.count("RESHARD_ABORTED"), 0);
        counts
    }

    async fn shutdown(self) {
        self.stop_consumers.cancel();
        for c in self.consumers {
            tokio::time::timeout(WAIT, c).await.unwrap().unwrap();
        }
        self.topo.delete(&self.admin_ch).await.unwrap();
        self.sim.shutdown().await;
    }
}

/// Polls the admin endpoint until the running total is `total` with no
/// reshard in progress (a readiness signal with a deadline).
async fn wait_total(addr: SocketAddr, total: u32) -> serde_json::Value {
    let started = tokio::time::Instant::now();
    loop {
        let (status, body) = http(addr, "GET", "/admin/reshard", None, "").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["total"] == total && v["reshard"].is_null() {
            return v;
        }
        assert!(started.elapsed() < WAIT, "never at {total} shards: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `/readyz` until every shard of the sharder is READY/RESUMED.
async fn wait_ready(addr: SocketAddr) {
    let started = tokio::time::Instant::now();
    while http(addr, "GET", "/readyz", None, "").await.0 != 200 {
        assert!(started.elapsed() < WAIT, "the sharder never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every shard of `serving` and none of `retired` has a
/// connection attached in the simulator (a closing shard's socket is
/// released a moment after the sharder saw it stop), then asserts it.
/// Attached, not resumable: a retired shard that was between connections
/// when retired has no socket to close with 1000, and its session is left
/// to expire as Discord expires it.
async fn assert_serving(sim: &SimHandle, serving: u32, retired: u32, what: &str) {
    let attached = || {
        (
            sim.connected_sessions_of(serving, &[]),
            sim.connected_sessions_of(retired, &[]),
        )
    };
    let want = (serving as usize, 0);
    let started = tokio::time::Instant::now();
    while attached() != want && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(attached(), want, "{what}: (serving, retired) attached");
}

async fn request_reshard(addr: SocketAddr) {
    let body = format!(r#"{{"total": {TO}}}"#);
    let (status, body) = http(addr, "POST", "/admin/reshard", None, &body).await;
    assert_eq!(status, 202, "{body}");
}

/// Waits until the simulator has a session of the new total attached.
async fn wait_first_new_shard(sim: &SimHandle) {
    let all: Vec<u32> = (0..TO).collect();
    let started = tokio::time::Instant::now();
    while sim.connected_sessions_of(TO, &all) == 0 {
        assert!(started.elapsed() < WAIT, "no new shard ever connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_to_eight_shards_live_one_clean_stream_then_a_restart_resumes_eight() {
    let p = Pipeline::start(start_sim(Duration::from_millis(200), 4).await).await;
    let sharder = p.sharder().await;
    p.converge("cold boot").await;

    // Traffic on; reshard to 8 while it flows.
    p.sim.set_event_rate(400.0).unwrap();
    request_reshard(sharder.addr).await;
    // A second request while one runs is refused as a conflict.
    let (status, _) = http(
        sharder.addr,
        "POST",
        "/admin/reshard",
        None,
        r#"{"total": 16}"#,
    )
    .await;
    assert_eq!(status, 409);
    let done = wait_total(sharder.addr, TO).await;
    let (events, both) = p.assert_completed_once().await;
    assert_eq!(p.sim.counters().identifies, u64::from(FROM + TO));
    println!(
        "live reshard {FROM} -> {TO}: {events} logical guild events, {both} seen by both \
         generations, each emitted once; {done}"
    );

    // A restart comes back at 8 shards (the configuration still says 4)
    // and resumes them.
    sharder.stop().await;
    p.sim.emit(200);
    let sharder = p.sharder().await;
    wait_ready(sharder.addr).await;
    wait_total(sharder.addr, TO).await;
    p.converge("after the restart").await;
    let c = p.sim.counters();
    assert_eq!(
        c.identifies,
        u64::from(FROM + TO),
        "resumed, no identify: {c:?}"
    );
    assert_serving(&p.sim, TO, FROM, "the restart resumed the new total").await;
    p.assert_each_event_once().await;
    sharder.stop().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharder_stopped_mid_reshard_rolls_back_at_its_next_start() {
    // One identify per 300 ms window: the 8 new shards take 2.4 s.
    let p = Pipeline::start(start_sim(Duration::from_millis(300), 1).await).await;
    let sharder = p.sharder().await;
    p.converge("cold boot").await;
    p.sim.set_event_rate(300.0).unwrap();
    request_reshard(sharder.addr).await;
    // Stopped once the first new shard is connected, before the hand-over.
    wait_first_new_shard(&p.sim).await;
    sharder.stop().await;
    let joined_before = p.count("GUILD_JOINED");
    let spent = p.sim.counters().identifies;
    assert!(
        spent < u64::from(FROM + TO),
        "stopped before every new shard identified"
    );

    let sharder = p.sharder().await;
    wait_ready(sharder.addr).await;
    wait_total(sharder.addr, FROM).await;
    p.sim.set_event_rate(0.0).unwrap();
    p.converge("after the rollback").await;
    assert_serving(&p.sim, FROM, TO, "the new total's sessions ended").await;
    assert_eq!(
        p.sim.counters().identifies,
        spent + u64::from(FROM),
        "the old total identified afresh (a resumed session's older epochs would lose to \
         the aborted total's writes)"
    );
    // Not asserted here: every event once. The old total's sessions are
    // not resumed (see above), so what Discord sent them while the
    // sharder was down is not replayed; the cache is whole again by the
    // fresh snapshots. An open item of the live-reshard issue.
    // The boot's loads, then each guild the bot is in now announced once
    // by the fresh sessions: loaded (listed in their READY) or, if it
    // joined after that, joined. The cache can equal the truth before the
    // last reloads are emitted (it already held those guilds): wait for
    // the count, with a deadline, then compare.
    let want = GUILDS as usize + p.sim.truth().guilds.len();
    let announced = || p.count("GUILD_AVAILABLE") + p.count("GUILD_JOINED") - joined_before;
    let started = tokio::time::Instant::now();
    while announced() < want && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        announced(),
        want,
        "each guild announced once per session of the old total"
    );
    assert_eq!(p.count("RESHARD_STARTED"), 1);
    assert_eq!(p.count("RESHARD_ABORTED"), 1);
    assert_eq!(p.count("RESHARD_COMPLETED"), 0);
    sharder.stop().await;
    p.shutdown().await;
}

/// Two sharder processes (StatefulSet pods 0 and 1), sessions and the
/// reshard's state in Redis. Process 0 is asked; process 1 joins with its
/// half of the new total. Process 1 is killed (its task dropped: no close,
/// no session save) once the first new shard is up, and started again:
/// it resumes its half of both totals and the reshard carries on to the
/// hand-over. Against the ledger: every event once, the reshard announced
/// once, no guild re-announced, the cache the truth, and only the new
/// total serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_reshard_live_and_one_killed_midway_carries_on() {
    let p = Pipeline::start(start_sim(Duration::from_millis(300), 1).await).await;
    let zero = p.sharder_process(Some(0)).await;
    let one = p.sharder_process(Some(1)).await;
    p.converge("cold boot").await;
    p.sim.set_event_rate(300.0).unwrap();
    request_reshard(zero.addr).await;
    // The cluster runs one reshard: process 1 refuses another.
    let started = tokio::time::Instant::now();
    loop {
        let (status, body) =
            http(one.addr, "POST", "/admin/reshard", None, r#"{"total": 16}"#).await;
        if status == 409 {
            break;
        }
        // 202 cannot be: the claim is taken before process 0 answers.
        assert_ne!(status, 202, "{body}");
        assert!(
            started.elapsed() < WAIT,
            "process 1 never saw the reshard: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_first_new_shard(&p.sim).await;
    one.run.abort();
    let _ = one.run.await;
    // At most two of the 8 new shards identified yet (one per 300 ms):
    // process 1 had not loaded its half, so the hand-over waits for it.
    let (_, body) = http(zero.addr, "GET", "/admin/reshard", None, "").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["total"], FROM, "{v}");
    assert_eq!(v["reshard"]["to"], TO, "still in the reshard: {v}");
    // A pod of a StatefulSet scaled meanwhile would lay both totals out
    // anew: it refuses to start, naming the count to scale back to.
    let scaled = p.sharder_of(Some((1, 3))).await;
    match tokio::time::timeout(WAIT, scaled.run)
        .await
        .unwrap()
        .unwrap()
    {
        Err(sharder::RunError::Config(why)) => assert!(why.contains("back to 2 replicas"), "{why}"),
        other => panic!("a pod of 3 started in a reshard of 2: {other:?}"),
    }
    let one = p.sharder_process(Some(1)).await;

    wait_total(zero.addr, TO).await;
    wait_total(one.addr, TO).await;
    let (events, both) = p.assert_completed_once().await;
    println!(
        "two processes, {FROM} -> {TO} with process 1 killed midway: {events} logical guild \
         events, {both} seen by both generations, each emitted once; identifies {}",
        p.sim.counters().identifies
    );
    zero.stop().await;
    one.stop().await;
    p.shutdown().await;
}
