//! Memory of our in-memory store beside twilight-cache-inmemory 0.18, fed
//! the same GUILD_CREATE payloads from the simulator in the same run.
//!
//! Method: a counting global allocator (`stats_alloc`; the attribute needs
//! no unsafe code in this crate) gives the live heap bytes (allocated minus
//! freed; it counts a reallocation's growth or shrink in those) before and
//! after feeding a cache. Each
//! payload is generated, parsed and dropped inside the window, so only what
//! the cache keeps remains. Requested bytes, not malloc's per-block
//! overhead (that is in `cache.rs`'s resident-set figures).
//!
//! twilight caches the same resources as ours: guilds, channels, roles,
//! members, users, emojis (no presences, voice states or messages).
//!
//! Run: `cargo bench -p worker --bench compare`.
//!
//! Curve: `cargo bench -p worker --bench compare -- --curve` loads 250 to
//! 4,000 guilds (100 members, 20 channels, 10 roles each) into both caches
//! and writes `bench/data/worker_cache_bytes.csv` (one row per guild count
//! and cache, in the `bench/plot.py` convention of bench/README.md);
//! `--points 250,500` picks other guild counts.
#![allow(clippy::unwrap_used)]

use discord_sim::{EventMix, World, WorldConfig};
use envelope::{Event, GuildCreateKind};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;
use std::path::PathBuf;
use testkit::bench_report::{machine, points_arg, today, write_csv_cells};
use twilight_cache_inmemory::{DefaultInMemoryCache, ResourceType};
use twilight_model::gateway::payload::incoming::GuildCreate;
use twilight_model::guild::Guild;
use worker::{CacheOptions, MemoryStore};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn live() -> i64 {
    let s = GLOBAL.stats();
    // stats_alloc already folds reallocations into these two.
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn world(guilds: u32, members: u32) -> World {
    let cfg = WorldConfig {
        shards: 4,
        guilds,
        channels_per_guild: 20,
        roles_per_guild: 10,
        members_per_guild: members,
        mix: EventMix::default(),
        outage_events: 1_000_000,
    };
    World::new(7, cfg).unwrap()
}

/// Live bytes kept by our store after every guild's GUILD_CREATE.
fn ours(w: &World) -> (i64, usize) {
    let before = live();
    let store = MemoryStore::new();
    for (i, gid) in w.guild_ids().into_iter().enumerate() {
        let d = w.guild_create(gid).unwrap();
        let ev = Event {
            epoch: 1,
            seq: i as u64 + 1,
            received_at: 0,
            t: "GUILD_CREATE",
            guild_id: Some(gid),
            guild_create: Some(GuildCreateKind::Initial),
            d: d.as_bytes(),
        };
        for m in worker::parse(envelope::ShardRef::new(0, 1), &ev, &CacheOptions::default())
            .unwrap()
            .mutations
        {
            store.apply_now(m);
        }
    }
    let bytes = live() - before;
    let stats = store.stats();
    println!(
        "  ours: counted {bytes} B, worker_cache_bytes_estimate {} B ({:.2}x)",
        stats.bytes_estimate,
        stats.bytes_estimate as f64 / bytes as f64
    );
    let n = stats.members as usize;
    drop(store);
    (bytes, n)
}

/// Live bytes kept by twilight's cache after the same GUILD_CREATEs.
fn twilight(w: &World) -> (i64, usize) {
    let before = live();
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
    for gid in w.guild_ids() {
        let d = w.guild_create(gid).unwrap();
        let guild: Guild = serde_json::from_str(&d).unwrap();
        cache.update(&GuildCreate::Available(guild));
    }
    let bytes = live() - before;
    let n = cache.stats().members();
    drop(cache);
    (bytes, n)
}

/// Live bytes left behind by generating the payloads alone: must be about
/// zero, or the method would charge the simulator to the caches.
fn baseline(w: &World) -> i64 {
    let before = live();
    for gid in w.guild_ids() {
        let d = w.guild_create(gid).unwrap();
        std::hint::black_box(&d);
    }
    live() - before
}

fn row(label: &str, units: usize, ours: i64, theirs: i64) {
    println!(
        "{label}: ours {:.0} B, twilight {:.0} B per unit over {units} units, ratio {:.2}",
        ours as f64 / units as f64,
        theirs as f64 / units as f64,
        ours as f64 / theirs as f64
    );
}

/// Members per guild in the curve (the throughput bench's world shape).
const CURVE_MEMBERS: u32 = 100;
const MIB: f64 = 1024.0 * 1024.0;

/// Guild counts after `--points a,b,c`, else the default curve.
fn points(args: &[String]) -> Vec<u32> {
    args.iter()
        .position(|a| a == "--points")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
        .filter(|v: &Vec<u32>| !v.is_empty())
        .unwrap_or_else(|| vec![250, 500, 1_000, 2_000, 4_000])
}

/// Guilds against live cache bytes, ours beside twilight's, as a CSV.
fn curve(points: &[u32]) -> std::io::Result<PathBuf> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    println!("| guilds | members | ours MiB | twilight MiB | ratio |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for &guilds in points {
        let w = world(guilds, CURVE_MEMBERS);
        let (o, n) = ours(&w);
        let (t, tn) = twilight(&w);
        assert_eq!(n, tn, "both caches must hold the same members");
        let (om, tm) = (o as f64 / MIB, t as f64 / MIB);
        println!(
            "| {guilds} | {n} | {om:.1} | {tm:.1} | {:.2} |",
            o as f64 / t as f64
        );
        for (peer, bytes) in [("ours", o), ("twilight", t)] {
            rows.push(vec![
                guilds.to_string(),
                peer.to_owned(),
                format!("{:.3}", bytes as f64 / MIB),
                format!("{:.3}", bytes as f64 / 1024.0 / f64::from(guilds)),
            ]);
        }
    }
    let meta = [
        (
            "title",
            format!(
                "worker: live heap bytes after GUILD_CREATE ({CURVE_MEMBERS} members, \
                 20 channels, 10 roles per guild)"
            ),
        ),
        ("x", "guilds".into()),
        ("y", "cache_mib,per_guild_kib".into()),
        ("series", "peer".into()),
        ("machine", machine()),
        ("date", today()),
        (
            "command",
            format!(
                "cargo bench -p worker --bench compare -- --curve --points {}",
                points_arg(points)
            ),
        ),
        (
            "peer",
            "ours = worker::MemoryStore; twilight = twilight-cache-inmemory 0.18".into(),
        ),
    ];
    write_csv_cells(
        "worker_cache_bytes.csv",
        &meta,
        &["guilds", "peer", "cache_mib", "per_guild_kib"],
        &rows,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--curve") {
        let path = curve(&points(&args)).unwrap();
        println!("wrote {}", path.display());
        return;
    }
    // Per member: few large guilds (the guild part is under 1 % of it).
    let w = world(50, 4_000);
    let base = baseline(&w);
    assert!(base.abs() < 1 << 20, "payload generation retains {base} B");
    let (o, n) = ours(&w);
    let (t, tn) = twilight(&w);
    assert_eq!(n, tn, "both caches must hold the same members");
    row("members (with users, guild share included)", n, o, t);
    // Per guild: many guilds of 20 channels, 10 roles and one member.
    let guilds = 4_000;
    let w = world(guilds, 1);
    let (o, _) = ours(&w);
    let (t, _) = twilight(&w);
    row(
        "guilds (20 channels, 10 roles, 1 member)",
        guilds as usize,
        o,
        t,
    );
}
