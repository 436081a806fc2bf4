//! Simple delta events per second on one core, in memory, beside
//! twilight-cache-inmemory 0.18 fed the same events in the same run.
//!
//! "Simple deltas" are the bulk of a warm bot's traffic: GUILD_MEMBER_UPDATE,
//! GUILD_ROLE_UPDATE, CHANNEL_UPDATE and MESSAGE_CREATE (the last one writes
//! nothing but is still versioned and deduplicated), produced by
//! `discord_sim::World` over a cache warmed with every guild's GUILD_CREATE
//! (untimed). Rows:
//!
//! * `envelope xN`: the sharder's envelopes of N events each through
//!   `Worker::process_message` (decode, parse, admit, versioned apply,
//!   delivery dedup, classification, handler dispatch);
//! * `event`: pre-decoded events through `Worker::process_event` (the same
//!   minus envelope decoding);
//! * `apply`: pre-parsed mutations through `MemoryStore::apply_now` (the
//!   versioned write alone);
//! * twilight `deserialize+update`: each `d` deserialised into its
//!   `DispatchEvent` and given to `InMemoryCache::update`; `update`: the
//!   same events pre-deserialised.
//!
//! Each row runs `RUNS` times, fresh caches each time; min / median / max
//! events per CPU-second of the measuring thread are printed (from
//! `/proc/thread-self/schedstat`, in ns, so neighbours' load on a shared
//! machine does not count), and the ratios of the medians.
//!
//! Run: `cargo bench -p worker --bench delta`. Arguments that are not
//! flags filter the rows by substring (`-- envelope` runs the envelope rows
//! only, e.g. under `perf record`).
#![allow(clippy::unwrap_used)]

use discord_sim::{World, WorldConfig};
use envelope::{BatchEncoder, Event, GuildCreateKind};
use serde::de::DeserializeSeed;
use twilight_cache_inmemory::{DefaultInMemoryCache, ResourceType};
use twilight_model::gateway::event::{DispatchEventWithTypeDeserializer, Event as TEvent};
use twilight_model::gateway::payload::incoming::GuildCreate;
use twilight_model::guild::Guild;
use worker::{CacheOptions, MemoryStore, Report, Worker};

const RUNS: usize = 5;
const EVENTS: usize = 400_000;
const SHARDS: u32 = 4;

struct Owned {
    shard: u32,
    seq: u64,
    t: &'static str,
    guild_id: Option<u64>,
    d: String,
}

impl Owned {
    fn event(&self) -> Event<'_> {
        Event {
            epoch: 1,
            seq: self.seq,
            received_at: 1_700_000_000_000 + self.seq,
            t: self.t,
            guild_id: self.guild_id,
            guild_create: None,
            d: self.d.as_bytes(),
        }
    }
}

struct Log {
    creates: Vec<(u32, u64, u64, String)>,
    deltas: Vec<Owned>,
}

fn log() -> Log {
    let cfg = WorldConfig {
        shards: SHARDS,
        guilds: 1_000,
        channels_per_guild: 10,
        roles_per_guild: 5,
        members_per_guild: 20,
        mix: "GUILD_MEMBER_UPDATE=1,GUILD_ROLE_UPDATE=1,CHANNEL_UPDATE=1,MESSAGE_CREATE=1"
            .parse()
            .unwrap(),
        outage_events: 1_000_000,
    };
    let mut world = World::new(42, cfg).unwrap();
    let mut seqs = [0u64; SHARDS as usize];
    let mut creates = Vec::new();
    for gid in world.guild_ids() {
        let s = world.shard_of(gid);
        seqs[s as usize] += 1;
        creates.push((
            s,
            seqs[s as usize],
            gid,
            world.guild_create(gid).unwrap().to_string(),
        ));
    }
    let deltas = (0..EVENTS)
        .map(|_| {
            let d = world.next_dispatch();
            seqs[d.shard as usize] += 1;
            Owned {
                shard: d.shard,
                seq: seqs[d.shard as usize],
                t: d.event,
                guild_id: d.guild_id,
                d: d.payload.to_string(),
            }
        })
        .collect();
    Log { creates, deltas }
}

/// A memory store holding every guild of the log.
fn warm(log: &Log) -> MemoryStore {
    let store = MemoryStore::new();
    for (shard, seq, gid, d) in &log.creates {
        let ev = Event {
            epoch: 1,
            seq: *seq,
            received_at: 1_700_000_000_000,
            t: "GUILD_CREATE",
            guild_id: Some(*gid),
            guild_create: Some(GuildCreateKind::Initial),
            d: d.as_bytes(),
        };
        for m in worker::parse(
            envelope::ShardRef::new(*shard, SHARDS),
            &ev,
            &CacheOptions::default(),
        )
        .unwrap()
        .mutations
        {
            store.apply_now(m);
        }
    }
    store
}

fn twilight_warm(log: &Log) -> DefaultInMemoryCache {
    let cache = DefaultInMemoryCache::builder()
        .resource_types(
            ResourceType::GUILD
                | ResourceType::CHANNEL
                | ResourceType::ROLE
                | ResourceType::MEMBER
                | ResourceType::USER
                | ResourceType::EMOJI,
        )
        .build();
    for (_, _, _, d) in &log.creates {
        let guild: Guild = serde_json::from_str(d).unwrap();
        cache.update(&GuildCreate::Available(guild));
    }
    cache
}

fn twilight_event(o: &Owned) -> TEvent {
    let mut de = serde_json::Deserializer::from_str(&o.d);
    TEvent::from(
        DispatchEventWithTypeDeserializer::new(o.t)
            .deserialize(&mut de)
            .unwrap(),
    )
}

/// Envelopes of `per` events each, per shard in order.
fn envelopes(log: &Log, per: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut open: Vec<Option<(BatchEncoder, usize)>> = (0..SHARDS).map(|_| None).collect();
    for o in &log.deltas {
        let slot = &mut open[o.shard as usize];
        let (enc, n) = slot.get_or_insert_with(|| (BatchEncoder::new(o.shard, SHARDS).unwrap(), 0));
        enc.push(&o.event()).unwrap();
        *n += 1;
        if *n == per
            && let Some((enc, _)) = slot.take()
        {
            out.push(enc.finish());
        }
    }
    out.extend(open.into_iter().flatten().map(|(e, _)| e.finish()));
    out
}

/// CPU time of the calling thread, in seconds.
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let ns: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    ns as f64 / 1e9
}

/// A stopwatch of the calling thread's CPU time.
struct Instant(f64);
impl Instant {
    fn now() -> Self {
        Self(cpu())
    }
    fn elapsed(&self) -> Elapsed {
        Elapsed(cpu() - self.0)
    }
}
struct Elapsed(f64);
impl Elapsed {
    fn as_secs_f64(&self) -> f64 {
        self.0
    }
}

/// Whether the row `label` was asked for: every row when no filter was
/// given, else those containing one of the non-flag arguments.
fn wanted(label: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| label.contains(f.as_str()))
}

/// Runs `f` (which returns its timed CPU seconds) `RUNS` times; events/s
/// (min, median, max). A row not [`wanted`] is skipped (`NaN`).
fn measure(label: &str, mut f: impl FnMut() -> f64) -> f64 {
    if !wanted(label) {
        return f64::NAN;
    }
    let mut rates: Vec<f64> = (0..RUNS).map(|_| EVENTS as f64 / f()).collect();
    rates.sort_by(f64::total_cmp);
    let med = rates[RUNS / 2];
    println!(
        "{label:<40} min {:>10.0}  median {:>10.0}  max {:>10.0} events/CPU-s",
        rates[0],
        med,
        rates[RUNS - 1]
    );
    med
}

fn main() {
    let log = log();
    let counts = log.deltas.iter().fold(
        std::collections::BTreeMap::<&str, usize>::new(),
        |mut m, o| {
            *m.entry(o.t).or_default() += 1;
            m
        },
    );
    println!(
        "{} simple deltas over {} guilds: {counts:?}",
        EVENTS,
        log.creates.len()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut medians = Vec::new();
    for per in [1usize, 16, 100] {
        let msgs = envelopes(&log, per);
        medians.push(measure(&format!("ours: envelope x{per}"), || {
            let w = Worker::new(warm(&log));
            let t = Instant::now();
            rt.block_on(async {
                for m in &msgs {
                    let r = w.process_message(m).await.unwrap();
                    assert!(r.invalid.is_empty());
                }
            });
            t.elapsed().as_secs_f64()
        }));
    }
    let ours_event = measure("ours: event (parse+apply+dedup)", || {
        let w = Worker::new(warm(&log));
        let mut report = Report::default();
        let t = Instant::now();
        rt.block_on(async {
            for o in &log.deltas {
                w.process_event(
                    envelope::ShardRef::new(o.shard, SHARDS),
                    &o.event(),
                    &mut report,
                )
                .await
                .unwrap();
            }
        });
        let s = t.elapsed().as_secs_f64();
        assert_eq!(report.emitted + report.dropped, EVENTS);
        s
    });
    let ours_apply = measure("ours: apply (versioned write only)", || {
        let store = warm(&log);
        let muts: Vec<_> = log
            .deltas
            .iter()
            .flat_map(|o| {
                worker::parse(
                    envelope::ShardRef::new(o.shard, SHARDS),
                    &o.event(),
                    &CacheOptions::default(),
                )
                .unwrap()
                .mutations
            })
            .collect();
        let t = Instant::now();
        for m in muts {
            std::hint::black_box(store.apply_now(m));
        }
        t.elapsed().as_secs_f64()
    });
    let tw_full = measure("twilight: deserialize+update", || {
        let cache = twilight_warm(&log);
        let t = Instant::now();
        for o in &log.deltas {
            cache.update(&twilight_event(o));
        }
        t.elapsed().as_secs_f64()
    });
    let tw_update = measure("twilight: update only", || {
        let cache = twilight_warm(&log);
        let events: Vec<TEvent> = log.deltas.iter().map(twilight_event).collect();
        let t = Instant::now();
        for e in &events {
            cache.update(e);
        }
        t.elapsed().as_secs_f64()
    });
    println!(
        "ratios (medians): ours event / twilight deserialize+update = {:.2}; \
         ours envelope x100 / twilight deserialize+update = {:.2}; \
         ours apply / twilight update = {:.2}",
        ours_event / tw_full,
        medians[2] / tw_full,
        ours_apply / tw_update
    );
}
