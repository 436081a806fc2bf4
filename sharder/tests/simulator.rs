//! The shard state machine against the gateway simulator, over plain ws://
//! through the dnscache websocket connector. Windows are scaled down (100 ms
//! identify window, 300 ms heartbeat); every wait is on an event or a state
//! change, bounded by a generous timeout so a bug fails instead of hanging.

#![allow(clippy::unwrap_used)]

use config::Secret;
use discord_sim::{Malformed, SimConfig, SimHandle, Simulator};
use sharder::{
    ChannelSink, Compression, FileSessionStore, GuildCreateKind, IdentifyScheduler,
    IdentifySettings, ResolverConnector, Session, SessionOwner, SessionStartLimit, Shard,
    ShardConfig, ShardEvent, ShardExit, ShardHandle, ShardState, load_session, save_session,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use testkit::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const IDENTIFY_WINDOW: Duration = Duration::from_millis(100);
/// The 120-per-60 s send limit scaled like the 300 ms heartbeat.
const SEND_WINDOW: Duration = Duration::from_secs(6);

type Running = (
    ShardHandle,
    JoinHandle<ShardExit>,
    mpsc::Receiver<ShardEvent>,
);

struct Rig {
    sim: SimHandle,
    _dir: TempDir,
    store: Arc<FileSessionStore>,
    scheduler: IdentifyScheduler,
    connector: Arc<ResolverConnector>,
}

impl Rig {
    async fn new(name: &str, shards: u32) -> Self {
        Self::with_concurrency(name, shards, 1).await
    }

    async fn with_concurrency(name: &str, shards: u32, max_concurrency: u16) -> Self {
        let sim = Simulator::start(SimConfig {
            shards,
            guilds: 12,
            identify_window: IDENTIFY_WINDOW,
            heartbeat_interval: Duration::from_millis(300),
            send_window: SEND_WINDOW,
            max_concurrency: u32::from(max_concurrency),
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let dir = TempDir::new(&format!("sharder-it-{name}")).unwrap();
        let store = Arc::new(FileSessionStore::new(dir.path()));
        let scheduler = IdentifyScheduler::new(
            SessionStartLimit {
                total: 1000,
                remaining: 1000,
                reset_after: Duration::from_secs(3600),
                max_concurrency,
            },
            IdentifySettings {
                // A margin over the simulator's window, as against Discord.
                window: IDENTIFY_WINDOW + Duration::from_millis(20),
                reserve: 0,
                min_interval: Duration::ZERO,
            },
            None,
        );
        let resolver = dnscache::Resolver::new(&config::DnsConfig::default()).unwrap();
        Self {
            sim,
            _dir: dir,
            store,
            scheduler,
            connector: Arc::new(ResolverConnector::new(resolver)),
        }
    }

    fn config(&self, shard_id: u32, token: &str) -> ShardConfig {
        let total = self.sim.config().shards;
        let mut c = ShardConfig::new(shard_id, total, Secret::new(token), self.sim.gateway_url());
        c.compression = Compression::ZlibStream;
        // Every intent, so every emitted dispatch reaches the shard.
        c.intents = discord_sim::VALID_INTENTS;
        c.reconnect_base = Duration::from_millis(20);
        c.reconnect_max = Duration::from_millis(200);
        c.hello_timeout = Duration::from_secs(2);
        c.persist_interval = Duration::from_millis(50);
        c.send_window = SEND_WINDOW;
        c.invalid_session_delay = (Duration::from_millis(150), Duration::from_millis(200));
        c
    }

    fn spawn(&self, config: ShardConfig) -> Running {
        self.spawn_with(config, true)
    }

    fn spawn_with(&self, config: ShardConfig, auto_confirm: bool) -> Running {
        self.spawn_sized(config, auto_confirm, 1024)
    }

    fn spawn_sized(&self, config: ShardConfig, auto_confirm: bool, capacity: usize) -> Running {
        let (sink, rx) = ChannelSink::new(capacity, auto_confirm);
        let (shard, handle) = Shard::new(
            config,
            self.scheduler.clone(),
            self.store.clone(),
            Arc::new(sink),
            self.connector.clone(),
        );
        (handle, tokio::spawn(shard.run()), rx)
    }

    fn guilds_of(&self, shard: u32) -> BTreeSet<u64> {
        self.sim
            .truth()
            .guilds
            .iter()
            .filter(|(_, g)| g.shard == shard)
            .map(|(&id, _)| id)
            .collect()
    }
}

async fn next(rx: &mut mpsc::Receiver<ShardEvent>) -> ShardEvent {
    timeout(WAIT, rx.recv())
        .await
        .expect("no event in time")
        .expect("sink closed")
}

/// Receives until an event named `name`, returning it and what came before.
/// Fails after [`WAIT`] in total, whatever else arrives meanwhile.
async fn until(rx: &mut mpsc::Receiver<ShardEvent>, name: &str) -> (ShardEvent, Vec<ShardEvent>) {
    let mut before = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("sink closed while waiting for {name}"),
            Err(_) => panic!(
                "no {name} in time; got {:?}",
                before
                    .iter()
                    .map(|e: &ShardEvent| e.event.as_str())
                    .collect::<Vec<_>>()
            ),
        };
        if ev.event == name {
            return (ev, before);
        }
        before.push(ev);
    }
}

/// READY, then one GUILD_CREATE per READY guild, all `initial`.
async fn ready_and_initial_load(
    rx: &mut mpsc::Receiver<ShardEvent>,
    guilds: &BTreeSet<u64>,
) -> ShardEvent {
    let (ready, before) = until(rx, "READY").await;
    assert!(
        before.is_empty(),
        "{:?}",
        before.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    let mut created = BTreeSet::new();
    while created.len() < guilds.len() {
        let ev = next(rx).await;
        if ev.event == "GUILD_CREATE" {
            assert_eq!(
                ev.guild_create,
                Some(GuildCreateKind::Initial),
                "{:?}",
                ev.guild_id
            );
            assert_eq!(ev.epoch, ready.epoch);
            created.insert(ev.guild_id.unwrap());
        }
    }
    assert_eq!(&created, guilds);
    ready
}

async fn wait_state(h: &ShardHandle, want: ShardState) {
    let w = want.clone();
    timeout(WAIT, h.wait_for(move |s| *s == w))
        .await
        .unwrap_or_else(|_| panic!("never reached {want:?}, at {:?}", h.state()));
}

#[tokio::test]
async fn identify_ready_guild_creates_and_outage() {
    let rig = Rig::new("ready", 2).await;
    let (h0, _t0, mut rx0) = rig.spawn(rig.config(0, "sim-token"));
    let (h1, _t1, mut rx1) = rig.spawn(rig.config(1, "sim-token"));
    let ready = ready_and_initial_load(&mut rx0, &rig.guilds_of(0)).await;
    ready_and_initial_load(&mut rx1, &rig.guilds_of(1)).await;
    assert_eq!((ready.seq, ready.shard_id, ready.num_shards), (1, 0, 2));
    let d: serde_json::Value = serde_json::from_slice(&ready.data).unwrap();
    assert!(d["session_id"].is_string(), "READY data is the raw d: {d}");
    wait_state(&h0, ShardState::Active).await;
    wait_state(&h1, ShardState::Active).await;

    let c = rig.sim.counters();
    assert_eq!(c.identifies, 2);
    assert_eq!(
        c.identify_violations, 0,
        "scheduler kept the simulator's window"
    );

    // Outage and return: `available`, never `joined`.
    let g = *rig.guilds_of(0).first().unwrap();
    assert!(rig.sim.outage(g));
    let (del, _) = until(&mut rx0, "GUILD_DELETE").await;
    assert_eq!(del.guild_id, Some(g));
    assert!(rig.sim.restore(g));
    let (back, _) = until(&mut rx0, "GUILD_CREATE").await;
    assert_eq!(
        (back.guild_id, back.guild_create),
        (Some(g), Some(GuildCreateKind::Available))
    );

    // The session was persisted with the simulator's resume URL.
    let owner = SessionOwner::new(&Secret::new("sim-token"), 2);
    let stored = load_session(rig.store.as_ref(), &owner, 0).await.unwrap();
    assert_eq!(stored.resume_gateway_url, rig.sim.resume_url());
    assert_eq!(stored.epoch, ready.epoch);
}

#[tokio::test]
async fn zombie_then_resume_on_the_resume_url() {
    let rig = Rig::new("zombie", 1).await;
    let (h, _t, mut rx) = rig.spawn(rig.config(0, "sim-token"));
    let ready = ready_and_initial_load(&mut rx, &rig.guilds_of(0)).await;
    assert_eq!(rig.sim.zombie(&[0]), 1);
    let (resumed, _) = until(&mut rx, "RESUMED").await;
    assert_eq!(resumed.epoch, ready.epoch, "same session");
    wait_state(&h, ShardState::Active).await;
    let c = rig.sim.counters();
    assert_eq!((c.identifies, c.resumes), (1, 1));
    assert_eq!(
        c.connections.get("/resume"),
        Some(&1),
        "{:?}",
        c.connections
    );

    // Events keep flowing in the same epoch after the resume.
    rig.sim.emit(5);
    let ev = next(&mut rx).await;
    assert_eq!(ev.epoch, ready.epoch);
    assert!(ev.seq > ready.seq);
}

#[tokio::test]
async fn invalid_session_false_identifies_again_through_the_scheduler() {
    let rig = Rig::new("op9", 1).await;
    let (_h, _t, mut rx) = rig.spawn(rig.config(0, "sim-token"));
    let guilds = rig.guilds_of(0);
    let first = ready_and_initial_load(&mut rx, &guilds).await;
    let at = tokio::time::Instant::now();
    assert_eq!(rig.sim.invalid_session(&[0], false), 1);
    let second = ready_and_initial_load(&mut rx, &guilds).await;
    assert!(
        at.elapsed() >= Duration::from_millis(150),
        "waited before identifying"
    );
    assert!(
        second.epoch > first.epoch,
        "a fresh session bumps the epoch"
    );
    assert_eq!(second.seq, 1);
    let c = rig.sim.counters();
    assert_eq!((c.identifies, c.identify_violations), (2, 0));
}

#[tokio::test]
async fn resumable_invalid_session_and_corrupt_frames_resume() {
    let rig = Rig::new("resumable", 1).await;
    let (_h, _t, mut rx) = rig.spawn(rig.config(0, "sim-token"));
    let ready = ready_and_initial_load(&mut rx, &rig.guilds_of(0)).await;
    assert_eq!(rig.sim.invalid_session(&[0], true), 1);
    until(&mut rx, "RESUMED").await;
    for kind in [Malformed::InvalidJson, Malformed::Truncated] {
        assert_eq!(rig.sim.malformed(&[0], kind), 1);
        let (r, _) = until(&mut rx, "RESUMED").await;
        assert_eq!(r.epoch, ready.epoch);
    }
    // An unknown opcode is ignored, not a reconnect.
    assert_eq!(rig.sim.malformed(&[0], Malformed::UnknownOp), 1);
    assert_eq!(rig.sim.request_heartbeat(&[0]), 1);
    rig.sim.emit(3);
    let ev = next(&mut rx).await;
    assert_ne!(ev.event, "RESUMED");
    let c = rig.sim.counters();
    assert_eq!((c.identifies, c.resumes), (1, 3), "{c:?}");
    assert_eq!(
        c.protocol_errors + c.heartbeat_timeouts + c.rate_limit_closes,
        0,
        "{c:?}"
    );
}

/// Discord replays a dispatch on resume with the same bytes: one it sent
/// unreadable comes back on every resume. The shard resumes once (it could
/// have been damaged on the way), then skips it and goes on, instead of
/// resuming forever with every event behind it stuck.
#[tokio::test]
async fn an_unreadable_dispatch_replayed_on_resume_is_skipped_not_looped() {
    let rig = Rig::new("unreadable", 1).await;
    let (_h, _t, mut rx) = rig.spawn(rig.config(0, "sim-token"));
    let ready = ready_and_initial_load(&mut rx, &rig.guilds_of(0)).await;
    rig.sim.emit(2);
    let last_good = next(&mut rx).await.seq.max(next(&mut rx).await.seq);
    assert_eq!(rig.sim.malformed(&[0], Malformed::InvalidData), 1);
    let bad = last_good + 1;
    rig.sim.emit(3);
    // The replay brings it back before the three behind it, then RESUMED.
    let (mut behind, mut resumed) = (BTreeSet::new(), Vec::new());
    while behind.len() < 3 || resumed.is_empty() {
        let ev = next(&mut rx).await;
        assert_ne!(ev.seq, bad, "the unreadable dispatch was forwarded");
        if ev.event == "RESUMED" {
            resumed.push(ev.epoch);
        } else if ev.seq > bad {
            behind.insert(ev.seq);
        }
    }
    assert_eq!(resumed, [ready.epoch], "one resume, of the same session");
    assert_eq!(behind, (bad + 1..=bad + 3).collect::<BTreeSet<_>>());
    // Nothing is replayed again: the next event is a new one.
    rig.sim.emit(1);
    let ev = next(&mut rx).await;
    assert!(ev.event != "RESUMED" && ev.seq > bad + 4, "{ev:?}");
    let c = rig.sim.counters();
    assert_eq!((c.identifies, c.resumes), (1, 1), "{c:?}");
    let ledger = rig.sim.ledger();
    let sent: Vec<_> = ledger.shards[&0].iter().filter(|r| r.seq == bad).collect();
    assert_eq!(sent.len(), 1, "the simulator buffered it as seq {bad}");
}

#[tokio::test]
async fn authentication_failure_is_fatal() {
    let rig = Rig::new("4004", 1).await;
    let (h, task, _rx) = rig.spawn(rig.config(0, "not-the-token"));
    let exit = timeout(WAIT, task).await.unwrap().unwrap();
    match exit {
        ShardExit::Fatal {
            code,
            authentication_failed,
            ..
        } => assert_eq!((code, authentication_failed), (4004, true)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        h.state(),
        ShardState::Stopped(ShardExit::Fatal { code: 4004, .. })
    ));
    assert_eq!(rig.sim.counters().identifies, 0);
}

#[tokio::test]
async fn restart_resumes_the_saved_session_without_identifying() {
    let rig = Rig::new("restart", 1).await;
    let guilds = rig.guilds_of(0);
    let (h, task, mut rx) = rig.spawn(rig.config(0, "sim-token"));
    let ready = ready_and_initial_load(&mut rx, &guilds).await;
    rig.sim.emit(4);
    let last = next(&mut rx).await;
    h.shutdown();
    assert_eq!(
        timeout(WAIT, task).await.unwrap().unwrap(),
        ShardExit::Shutdown
    );
    drop(rx);
    let owner = SessionOwner::new(&Secret::new("sim-token"), 1);
    let saved = load_session(rig.store.as_ref(), &owner, 0).await.unwrap();
    assert!(saved.seq >= last.seq, "auto-confirmed events are saved");
    assert_eq!(saved.guilds.available.len(), guilds.len());

    let (h2, _t2, mut rx2) = rig.spawn(rig.config(0, "sim-token"));
    let (resumed, replayed) = until(&mut rx2, "RESUMED").await;
    assert_eq!(resumed.epoch, ready.epoch);
    // Only what came after the saved seq is replayed, and none of it is a
    // join: the guild states came back with the session.
    assert!(replayed.iter().all(|e| e.seq > saved.seq), "{saved:?}");
    assert!(
        replayed
            .iter()
            .all(|e| e.guild_create != Some(GuildCreateKind::Joined))
    );
    wait_state(&h2, ShardState::Active).await;
    let c = rig.sim.counters();
    assert_eq!((c.identifies, c.resumes), (1, 1), "{c:?}");
}

#[tokio::test]
async fn dead_resume_url_falls_back_to_the_gateway_url() {
    let rig = Rig::new("fallback", 1).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let owner = SessionOwner::new(&Secret::new("sim-token"), 1);
    let stale = Session::new(
        &owner,
        0,
        "unknown-session".into(),
        format!("ws://127.0.0.1:{dead}"),
        5,
    );
    assert!(save_session(rig.store.as_ref(), &stale).await);
    let (_h, _t, mut rx) = rig.spawn(rig.config(0, "sim-token"));
    // Dead resume URL -> RESUME through the gateway URL -> op 9 (unknown
    // session) -> IDENTIFY -> READY with a newer epoch.
    let ready = ready_and_initial_load(&mut rx, &rig.guilds_of(0)).await;
    assert!(ready.epoch > 5);
    let c = rig.sim.counters();
    assert_eq!((c.failed_resumes, c.identifies), (1, 1), "{c:?}");
    assert_eq!(c.connections.get("/resume"), None);
    assert_eq!(c.connections.get("/"), Some(&2), "{:?}", c.connections);
}

#[tokio::test]
async fn unconfirmed_events_are_replayed_after_a_restart() {
    let rig = Rig::new("unconfirmed", 1).await;
    let guilds = rig.guilds_of(0);
    let mut config = rig.config(0, "sim-token");
    config.shutdown_drain = Duration::from_millis(100);
    let (h, task, mut rx) = rig.spawn_with(config, false);
    // Confirm READY and the initial load, as a broker would.
    let (ready, _) = until(&mut rx, "READY").await;
    ready.ack().confirm();
    let mut confirmed = ready.seq;
    for _ in 0..guilds.len() {
        let ev = next(&mut rx).await;
        assert_eq!(ev.guild_create, Some(GuildCreateKind::Initial));
        confirmed = confirmed.max(ev.seq);
        ev.ack().confirm();
    }
    // Three more events reach the sink but are never confirmed.
    rig.sim.emit(3);
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(next(&mut rx).await.seq);
    }
    h.shutdown();
    assert_eq!(
        timeout(WAIT, task).await.unwrap().unwrap(),
        ShardExit::Shutdown
    );
    let owner = SessionOwner::new(&Secret::new("sim-token"), 1);
    let saved = load_session(rig.store.as_ref(), &owner, 0).await.unwrap();
    assert_eq!(
        saved.seq, confirmed,
        "the saved seq never passes an unconfirmed event"
    );

    let (_h2, _t2, mut rx2) = rig.spawn(rig.config(0, "sim-token"));
    let (_, replayed) = until(&mut rx2, "RESUMED").await;
    let replayed: Vec<u64> = replayed.iter().map(|e| e.seq).collect();
    assert_eq!(
        replayed, pending,
        "exactly the unconfirmed events come again"
    );
}

#[tokio::test]
async fn shutdown_waits_for_the_sink_to_confirm_before_saving() {
    let rig = Rig::new("drain", 1).await;
    let (h, task, mut rx) = rig.spawn_with(rig.config(0, "sim-token"), false);
    let (ready, _) = until(&mut rx, "READY").await;
    let mut held = vec![ready];
    rig.sim.emit(3);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = 0;
    // Hold every event (initial load and the three emitted) unconfirmed.
    while held.len() < 4 + rig.guilds_of(0).len() {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap();
        last = last.max(ev.seq);
        held.push(ev);
    }
    h.shutdown();
    // The connection is closed: nothing new comes, the shard is draining.
    while rig.sim.connected_sessions(&[0]) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!task.is_finished(), "the shard waits for its confirmations");
    for ev in held {
        ev.ack().confirm();
    }
    assert_eq!(
        timeout(WAIT, task).await.unwrap().unwrap(),
        ShardExit::Shutdown
    );
    let owner = SessionOwner::new(&Secret::new("sim-token"), 1);
    let saved = load_session(rig.store.as_ref(), &owner, 0).await.unwrap();
    assert_eq!(
        saved.seq, last,
        "events confirmed during the drain are saved"
    );
}

#[tokio::test]
async fn heartbeats_keep_a_quiet_session_alive() {
    let rig = Rig::new("quiet", 1).await;
    let (h, _t, mut rx) = rig.spawn(rig.config(0, "sim-token"));
    ready_and_initial_load(&mut rx, &rig.guilds_of(0)).await;
    // An observation window of about seven heartbeat intervals (not a
    // synchronisation: nothing is expected to happen in it), with two
    // server heartbeat requests inside.
    assert_eq!(rig.sim.request_heartbeat(&[0]), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.sim.request_heartbeat(&[0]), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = rig.sim.counters();
    assert!(c.heartbeats >= 7, "{c:?}");
    assert_eq!(
        c.heartbeat_timeouts + c.rate_limit_closes + c.protocol_errors,
        0,
        "{c:?}"
    );
    assert_eq!((c.identifies, c.resumes), (1, 0), "{c:?}");
    assert_eq!(h.state(), ShardState::Active);
    assert!(rx.try_recv().is_err(), "no reconnect, no new session");
}

#[tokio::test]
async fn eight_shards_at_concurrency_four_identify_in_two_batches_without_violations() {
    let rig = Rig::with_concurrency("batches", 8, 4).await;
    let start = tokio::time::Instant::now();
    let mut running = Vec::new();
    for id in 0..8 {
        running.push(rig.spawn(rig.config(id, "sim-token")));
    }
    let mut ready_at = Vec::new();
    for (id, (_h, _t, rx)) in running.iter_mut().enumerate() {
        let ready = ready_and_initial_load(rx, &rig.guilds_of(id as u32)).await;
        assert_eq!(ready.shard_id, id as u32);
        ready_at.push(start.elapsed());
    }
    let c = rig.sim.counters();
    assert_eq!((c.identifies, c.identify_violations), (8, 0), "{c:?}");
    // Two keys' worth of shards per key: the second batch waits a window.
    let last = ready_at.iter().max().unwrap();
    assert!(*last >= IDENTIFY_WINDOW, "{ready_at:?}");
}

#[tokio::test]
async fn restart_resumes_from_the_redis_session_store() {
    let rig = Rig::new("redis-store", 1).await;
    let conn = dnscache::RedisConnection::with_client(
        redis::Client::open("redis://127.0.0.1:6379/").unwrap(),
        redis::AsyncConnectionConfig::new(),
    );
    let store = Arc::new(sharder::RedisSessionStore::new(
        conn,
        testkit::unique_name("shard-redis"),
        Duration::from_secs(60),
    ));
    let run = |store: Arc<sharder::RedisSessionStore>| {
        let (sink, rx) = ChannelSink::new(1024, true);
        let (shard, handle) = Shard::new(
            rig.config(0, "sim-token"),
            rig.scheduler.clone(),
            store,
            Arc::new(sink),
            rig.connector.clone(),
        );
        (handle, tokio::spawn(shard.run()), rx)
    };
    let (h, task, mut rx) = run(store.clone());
    let ready = ready_and_initial_load(&mut rx, &rig.guilds_of(0)).await;
    h.shutdown();
    assert_eq!(
        timeout(WAIT, task).await.unwrap().unwrap(),
        ShardExit::Shutdown
    );
    let (_h2, _t2, mut rx2) = run(store.clone());
    let (resumed, replayed) = until(&mut rx2, "RESUMED").await;
    assert_eq!(resumed.epoch, ready.epoch);
    assert!(
        replayed
            .iter()
            .all(|e| e.guild_create != Some(GuildCreateKind::Joined))
    );
    let c = rig.sim.counters();
    assert_eq!((c.identifies, c.resumes), (1, 1), "{c:?}");
    use sharder::{SessionKey, SessionStore};
    store.remove(SessionKey::shard(1, 0)).await.unwrap();
}

#[tokio::test]
async fn a_sink_holding_the_shard_is_not_mistaken_for_a_zombie() {
    let rig = Rig::new("backpressure", 1).await;
    let guilds = rig.guilds_of(0);
    let (h, _t, mut rx) = rig.spawn_sized(rig.config(0, "sim-token"), true, 2);
    let ready = ready_and_initial_load(&mut rx, &guilds).await;
    // Stop reading: the shard blocks in the sink for about five heartbeat
    // intervals (an observation window, not a synchronisation).
    rig.sim.emit(20);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut seqs = Vec::new();
    while seqs.len() < 20 {
        let ev = next(&mut rx).await;
        assert_eq!(ev.epoch, ready.epoch);
        seqs.push(ev.seq);
    }
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + 20).collect::<Vec<_>>(),
        "in order, no gap"
    );
    let c = rig.sim.counters();
    assert_eq!(
        (c.identifies, c.resumes, c.heartbeat_timeouts),
        (1, 0, 0),
        "{c:?}"
    );
    assert_eq!(h.state(), ShardState::Active);
}

#[tokio::test]
async fn gateway_bot_reports_url_shards_and_the_budget() {
    let rig = Rig::with_concurrency("gwbot", 4, 2).await;
    let resolver = dnscache::Resolver::new(&config::DnsConfig::default()).unwrap();
    let api = format!("{}/api/v10", rig.sim.http_url());
    let token = Secret::new("sim-token");
    let g = sharder::fetch_gateway_bot(&resolver, &api, &token, WAIT)
        .await
        .unwrap();
    assert_eq!(
        (g.url.as_str(), g.shards),
        (rig.sim.gateway_url().as_str(), 4)
    );
    let before = g.session_start_limit;
    assert_eq!(before.max_concurrency, 2);
    let (_h, _t, mut rx) = rig.spawn(rig.config(0, "sim-token"));
    until(&mut rx, "READY").await;
    let after = sharder::fetch_gateway_bot(&resolver, &api, &token, WAIT)
        .await
        .unwrap()
        .session_start_limit;
    assert_eq!(after.remaining, before.remaining - 1, "one identify spent");

    let e = sharder::fetch_gateway_bot(&resolver, &api, &Secret::new("wrong-token"), WAIT)
        .await
        .unwrap_err();
    assert!(e.is_fatal(), "{e}");
    assert!(!format!("{e} {e:?}").contains("wrong-token"));
}
