//! Event logs for the worker's tests: realistic ones from the simulator's
//! deterministic world (with the sharder's GUILD_CREATE markers applied the
//! way the sharder applies them), and the ground truth as a `GuildView`.
#![allow(dead_code, clippy::unwrap_used)]

use discord_sim::{EventMix, SimHandle, World, WorldConfig};
use envelope::{Event, GuildCreateKind};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use testkit::owned_event::OwnedEvent;
use worker::{GuildView, MemoryStore, Report, Store, Worker};

/// An owned envelope event with its shard; reads as the event (`e.t`,
/// `e.d`, `e.event()`).
#[derive(Debug, Clone)]
pub struct Logged {
    pub shard: u32,
    pub owned: OwnedEvent<String>,
}

/// The shard total of every test log: tests here run one generation, so
/// any total above their shard ids names it.
pub const TOTAL: u32 = 1024;

impl Logged {
    /// The event's shard of [`TOTAL`].
    pub fn shard_ref(&self) -> envelope::ShardRef {
        envelope::ShardRef::new(self.shard, TOTAL)
    }
}

impl std::ops::Deref for Logged {
    type Target = OwnedEvent<String>;

    fn deref(&self) -> &Self::Target {
        &self.owned
    }
}

/// A simulated session log and the world's truth at its end.
pub struct SimLog {
    pub events: Vec<Logged>,
    pub world: World,
    /// Number of real joins the log shows: marked `joined`, or lost in the
    /// session gap and listed by the new READY.
    pub joins: usize,
    /// Of those, joins lost in the gap.
    pub gap_joins: usize,
    /// Removals (GUILD_DELETE) lost in the session gap.
    pub lost_removals: usize,
}

/// Mix of cache-relevant events, with joins, outages and removals.
fn mix() -> EventMix {
    "MESSAGE_CREATE=4,TYPING_START=1,PRESENCE_UPDATE=4,GUILD_MEMBER_ADD=6,GUILD_MEMBER_UPDATE=5,\
     GUILD_MEMBER_REMOVE=5,CHANNEL_CREATE=3,CHANNEL_UPDATE=4,CHANNEL_DELETE=3,\
     GUILD_ROLE_CREATE=2,GUILD_ROLE_UPDATE=3,GUILD_ROLE_DELETE=2,GUILD_UPDATE=2,\
     GUILD_JOIN=1,GUILD_OUTAGE=1,GUILD_REMOVE=1"
        .parse()
        .unwrap()
}

/// READY and its lazy-load GUILD_CREATEs for every guild, then `n`
/// dispatches. Each shard runs one session (`epoch = 1000 + shard`). With
/// `gap`, the last quarter of the non-lifecycle events are lost (as in a
/// session that died before the worker got them), and every shard starts a
/// fresh session (`epoch + 1`, seq from 1): READY, GUILD_CREATEs, then `n/4`
/// more dispatches.
pub fn sim_log(seed: u64, shards: u32, guilds: u32, n: usize) -> SimLog {
    sim_log_with(seed, shards, guilds, n, false)
}

/// [`sim_log`] with an optional session gap.
pub fn sim_log_with(seed: u64, shards: u32, guilds: u32, n: usize, gap: bool) -> SimLog {
    let cfg = WorldConfig {
        shards,
        guilds,
        channels_per_guild: 4,
        roles_per_guild: 3,
        members_per_guild: 5,
        mix: mix(),
        outage_events: 25,
    };
    let mut world = World::new(seed, cfg).unwrap();
    let mut seqs = vec![0u64; shards as usize];
    let mut clock = 1_700_000_000_000u64;
    let mut events: Vec<Logged> = Vec::new();
    let mut epochs: Vec<u64> = (0..shards).map(|s| 1000 + u64::from(s)).collect();
    let mut push = |events: &mut Vec<Logged>,
                    seqs: &mut Vec<u64>,
                    epochs: &[u64],
                    shard: u32,
                    t: &str,
                    guild_id: Option<u64>,
                    marker,
                    d: &str| {
        let seq = &mut seqs[shard as usize];
        *seq += 1;
        clock += 3;
        events.push(Logged {
            shard,
            owned: OwnedEvent {
                epoch: epochs[shard as usize],
                seq: *seq,
                received_at: clock,
                t: t.to_owned(),
                guild_id,
                marker,
                d: d.to_owned(),
            },
        });
    };
    // The sharder's view: READY sets, and guilds in an outage.
    let mut ready: BTreeSet<u64> = BTreeSet::new();
    let mut out: BTreeSet<u64> = BTreeSet::new();
    let mut joins_seen = 0;
    let mut lost_removals = 0;
    // Guilds whose join was lost in the gap (announced from the new READY).
    let mut lost_joins: BTreeSet<u64> = BTreeSet::new();
    let rounds: &[(bool, usize)] = if gap {
        &[(false, n), (true, n / 4)]
    } else {
        &[(false, n)]
    };
    for &(fresh, n) in rounds {
        if fresh {
            // Lose the tail of the old sessions, guild joins and removals
            // included: READY reconciliation must catch up.
            let lost = events.split_off(events.len() * 3 / 4);
            lost_removals += lost
                .iter()
                .filter(|e| e.t == "GUILD_DELETE" && !e.d.contains("\"unavailable\":true"))
                .count();
            lost_joins.extend(
                lost.iter()
                    .filter(|e| e.marker == Some(GuildCreateKind::Joined))
                    .filter_map(|e| e.guild_id),
            );
            for s in 0..shards as usize {
                epochs[s] += 1;
                seqs[s] = 0;
            }
        }
        ready.clear();
        out.clear();
        for shard in 0..shards {
            let listed = world.shard_guilds(shard);
            let stubs: Vec<Value> = listed
                .iter()
                .map(|(g, _)| json!({"id": g.to_string(), "unavailable": true}))
                .collect();
            let d = json!({"v": 10, "session_id": "s", "guilds": stubs, "shard": [shard, shards]});
            push(
                &mut events,
                &mut seqs,
                &epochs,
                shard,
                "READY",
                None,
                None,
                &d.to_string(),
            );
            for (gid, available) in listed {
                ready.insert(gid);
                if !available {
                    out.insert(gid);
                }
                if let Some(d) = world.guild_create(gid) {
                    let m = Some(GuildCreateKind::Initial);
                    push(
                        &mut events,
                        &mut seqs,
                        &epochs,
                        shard,
                        "GUILD_CREATE",
                        Some(gid),
                        m,
                        &d,
                    );
                }
            }
        }
        for _ in 0..n {
            step(
                &mut world,
                &mut events,
                &mut seqs,
                &epochs,
                &mut ready,
                &mut out,
                &mut joins_seen,
                &mut push,
            );
        }
    }
    // A join whose GUILD_CREATE was lost in the gap is still a join: the
    // new READY lists the guild, and its first GUILD_CREATE after the gap
    // (the only ones left: the lost one was its first) announces it. A
    // guild joined and removed within the gap is seen by nobody.
    let gap_joins = lost_joins
        .iter()
        .filter(|g| {
            events
                .iter()
                .any(|e| e.t == "GUILD_CREATE" && e.guild_id == Some(**g))
        })
        .count();
    let joins = events
        .iter()
        .filter(|e| e.marker == Some(GuildCreateKind::Joined))
        .count()
        + gap_joins;
    let _ = joins_seen;
    SimLog {
        events,
        world,
        joins,
        gap_joins,
        lost_removals,
    }
}

#[allow(clippy::too_many_arguments)]
fn step(
    world: &mut World,
    events: &mut Vec<Logged>,
    seqs: &mut Vec<u64>,
    epochs: &[u64],
    ready: &mut BTreeSet<u64>,
    out: &mut BTreeSet<u64>,
    joins: &mut usize,
    push: &mut impl FnMut(
        &mut Vec<Logged>,
        &mut Vec<u64>,
        &[u64],
        u32,
        &str,
        Option<u64>,
        Option<GuildCreateKind>,
        &str,
    ),
) {
    {
        let dsp = world.next_dispatch();
        let marker = if dsp.event == "GUILD_CREATE" {
            let gid = dsp.guild_id.unwrap();
            Some(if out.remove(&gid) {
                GuildCreateKind::Available
            } else {
                *joins += 1;
                ready.insert(gid);
                GuildCreateKind::Joined
            })
        } else {
            None
        };
        if dsp.event == "GUILD_DELETE" {
            let v: Value = serde_json::from_str(&dsp.payload).unwrap();
            if v["unavailable"] == json!(true) {
                out.insert(dsp.guild_id.unwrap());
            }
        }
        push(
            events,
            seqs,
            epochs,
            dsp.shard,
            dsp.event,
            dsp.guild_id,
            marker,
            &dsp.payload,
        );
    }
}

/// Every guild id and user id a log mentions.
pub fn ids(events: &[Logged]) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut guilds = BTreeSet::new();
    let mut users = BTreeSet::new();
    for e in events {
        if let Some(g) = e.guild_id {
            guilds.insert(g);
        }
        let v: Value = serde_json::from_str(&e.d).unwrap_or(Value::Null);
        collect_users(&v, &mut users);
    }
    (guilds, users)
}

fn collect_users(v: &Value, out: &mut BTreeSet<u64>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(u)) = m.get("user")
                && let Some(id) = u.get("id").and_then(Value::as_str)
            {
                out.insert(id.parse().unwrap());
            }
            m.values().for_each(|x| collect_users(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_users(x, out)),
        _ => {}
    }
}

/// Processes `events` in order through `worker`.
pub async fn run<S: Store>(worker: &Worker<S>, events: &[Logged]) -> Report {
    let mut report = Report::default();
    for e in events {
        worker
            .process_event(e.shard_ref(), &e.event(), &mut report)
            .await
            .unwrap();
    }
    report
}

/// The cache's state: every guild's view and every user.
pub async fn state<S: Store>(
    store: &S,
    guilds: &BTreeSet<u64>,
    users: &BTreeSet<u64>,
) -> (
    BTreeMap<u64, Option<GuildView>>,
    BTreeMap<u64, Option<worker::User>>,
) {
    let mut g = BTreeMap::new();
    for &id in guilds {
        g.insert(id, store.guild(id).await.unwrap());
    }
    let mut u = BTreeMap::new();
    for &id in users {
        u.insert(id, store.user(id).await.unwrap());
    }
    (g, u)
}

/// A view with versions erased, to compare with the simulator's truth.
pub fn unversioned(v: &GuildView) -> Value {
    json!({
        "core": v.core.as_ref().map(|c| format!("{:?}", c.value)),
        "available": v.available,
        "member_count": v.member_count,
        "channels": v.channels.iter().map(|(k, c)| (k.to_string(), format!("{:?}", c.value))).collect::<BTreeMap<_, _>>(),
        "roles": v.roles.iter().map(|(k, c)| (k.to_string(), format!("{:?}", c.value))).collect::<BTreeMap<_, _>>(),
        "members": v.members.iter().map(|(k, c)| (k.to_string(), format!("{:?}", c.value))).collect::<BTreeMap<_, _>>(),
    })
}

/// The world's truth for every guild it holds, rendered through the
/// worker's own GUILD_CREATE parser (so both sides use one model).
pub fn truth_views(world: &World) -> BTreeMap<u64, Value> {
    truth_views_of(world.truth())
}

/// [`truth_views`] of a simulator's truth.
pub fn truth_views_of(truth: discord_sim::Truth) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    for (gid, t) in truth.guilds {
        let mut g = t.guild.clone();
        g["id"] = json!(gid.to_string());
        g["member_count"] = json!(t.member_count);
        g["channels"] = json!(t.channels.values().collect::<Vec<_>>());
        g["roles"] = json!(t.roles.values().collect::<Vec<_>>());
        g["members"] = json!(t.members.values().collect::<Vec<_>>());
        let d = g.to_string();
        let ev = Event {
            epoch: 1,
            seq: 1,
            received_at: 0,
            t: "GUILD_CREATE",
            guild_id: Some(gid),
            guild_create: Some(GuildCreateKind::Initial),
            d: d.as_bytes(),
        };
        let store = MemoryStore::new();
        for m in worker::parse(
            envelope::ShardRef::new(t.shard, TOTAL),
            &ev,
            &worker::CacheOptions::default(),
        )
        .unwrap()
        .mutations
        {
            store.apply_now(m);
        }
        let mut view = store.guild_now(gid).unwrap();
        view.available = !t.unavailable;
        out.insert(gid, unversioned(&view));
    }
    out
}

/// Waits (at most `within`) until the worker's cache equals the
/// simulator's truth (which no longer changes: the simulator only emits
/// on request).
pub async fn converge<S: Store>(sim: &SimHandle, store: &S, what: &str, within: Duration) {
    let truth = truth_views_of(sim.truth());
    let known = known_guilds(sim);
    let started = tokio::time::Instant::now();
    loop {
        let Some(last) = diff(store, &truth, &known).await else {
            return;
        };
        assert!(
            started.elapsed() < within,
            "{what}: the cache never matched the truth: {last}"
        );
        // Polling interval of the comparison, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every guild the simulator ever dispatched about.
pub fn known_guilds(sim: &SimHandle) -> BTreeSet<u64> {
    sim.ledger()
        .shards
        .values()
        .flatten()
        .filter_map(|e| e.guild_id)
        .collect()
}

/// The first difference between the cache and the truth, if any: every
/// guild of the truth cached exactly, every other known guild absent.
async fn diff<S: Store>(
    store: &S,
    truth: &BTreeMap<u64, Value>,
    known: &BTreeSet<u64>,
) -> Option<String> {
    for gid in known.iter().filter(|g| !truth.contains_key(g)) {
        let got = store.guild(*gid).await.unwrap();
        if got.as_ref().is_some_and(|g| g.core.is_some()) {
            return Some(format!("guild {gid} was removed but is cached"));
        }
    }
    for (i, (gid, want)) in truth.iter().enumerate() {
        // The memory store's futures are ready at once: without a yield,
        // comparing 64,000 guilds holds a runtime thread for seconds (in a
        // debug build), starving the simulator's and the sharder's tasks.
        if i % 256 == 0 {
            tokio::task::yield_now().await;
        }
        let got = store.guild(*gid).await.unwrap();
        let got = got.as_ref().map(unversioned);
        if got.as_ref() != Some(want) {
            return Some(format!("guild {gid}: cached {got:?}, truth {want}"));
        }
    }
    None
}

/// One consumer task per partition of `topo` (prefetch 64), each on its own
/// channel of `conn`, applying with `worker` until `stop` is cancelled; a
/// consumer error fails the test when its task is joined.
pub async fn consume_every_partition<S: Store + 'static>(
    worker: &std::sync::Arc<Worker<S>>,
    conn: &lapin::Connection,
    topo: &worker::AmqpTopology,
    partitions: u32,
    output: Option<std::sync::Arc<worker::output::Unconfirmed>>,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for p in 0..partitions {
        let (w, ch, topo, stop, out) = (
            worker.clone(),
            conn.create_channel().await.unwrap(),
            topo.clone(),
            stop.clone(),
            output.clone(),
        );
        tasks.push(tokio::spawn(async move {
            worker::consume_partition_with(w, ch, topo, p, 64, out, stop.cancelled_owned())
                .await
                .unwrap();
        }));
    }
    tasks
}
