//! Throughput and memory of the in-memory cache.
//!
//! * events/s on one core: realistic simulator traffic (default mix, and a
//!   cache-heavy mix), each event framed in its own envelope, through
//!   `Worker::process_message` (decode, parse, dedup, apply, classify) on a
//!   current-thread runtime;
//! * bytes per cached member (with its user) and per guild: resident memory
//!   growth while loading synthetic GUILD_CREATE snapshots, read from
//!   /proc/self/statm (so allocator overhead is included).
//!
//! Run: `cargo bench -p worker --bench cache`.
#![allow(clippy::unwrap_used)]

use discord_sim::{EventMix, World, WorldConfig};
use envelope::{BatchEncoder, Event, GuildCreateKind};
use serde_json::json;
use std::time::Instant;
use worker::{MemoryStore, Worker};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// READY's GUILD_CREATEs then `n` dispatches, each in its own message.
fn messages(mix: EventMix, guilds: u32, n: usize) -> Vec<Vec<u8>> {
    let cfg = WorldConfig {
        shards: 4,
        guilds,
        channels_per_guild: 20,
        roles_per_guild: 10,
        members_per_guild: 100,
        mix,
        outage_events: 2_000,
    };
    let mut world = World::new(42, cfg).unwrap();
    let mut seqs = [0u64; 4];
    let mut out = Vec::with_capacity(n + guilds as usize);
    let mut frame = |shard: u32, t: &str, gid: Option<u64>, marker, d: &str| {
        seqs[shard as usize] += 1;
        let mut enc = BatchEncoder::new(shard, 4).unwrap();
        enc.push(&Event {
            epoch: 1,
            seq: seqs[shard as usize],
            received_at: 1_700_000_000_000 + out.len() as u64,
            t,
            guild_id: gid,
            guild_create: marker,
            d: d.as_bytes(),
        })
        .unwrap();
        out.push(enc.finish());
    };
    for gid in world.guild_ids() {
        let shard = world.shard_of(gid);
        let d = world.guild_create(gid).unwrap();
        frame(
            shard,
            "GUILD_CREATE",
            Some(gid),
            Some(GuildCreateKind::Initial),
            &d,
        );
    }
    for _ in 0..n {
        let d = world.next_dispatch();
        let marker = (d.event == "GUILD_CREATE").then_some(GuildCreateKind::Available);
        frame(d.shard, d.event, d.guild_id, marker, &d.payload);
    }
    out
}

fn throughput(label: &str, msgs: &[Vec<u8>]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let worker = Worker::new(MemoryStore::new());
        let t = Instant::now();
        rt.block_on(async {
            for m in msgs {
                worker.process_message(m).await.unwrap();
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    let bytes: usize = msgs.iter().map(Vec::len).sum();
    println!(
        "{label}: {} events in {:.3} s (best of 3) = {:.0} events/s on one core, {:.1} MB/s of envelopes",
        msgs.len(),
        best,
        msgs.len() as f64 / best,
        bytes as f64 / best / 1e6
    );
}

fn guild_create(gid: u64, members: u64, channels: u64, roles: u64) -> String {
    let members: Vec<_> = (0..members)
        .map(|i| {
            let uid = (gid << 20) + i;
            json!({"user": {"id": uid.to_string(), "username": format!("user_{i}"),
                            "global_name": format!("User {i}"), "avatar": null},
                   "nick": null, "roles": [((gid << 8) + 1).to_string()], "joined_at": "2020-01-01T00:00:00Z"})
        })
        .collect();
    let channels: Vec<_> = (0..channels)
        .map(|i| {
            json!({"id": ((gid << 10) + 512 + i).to_string(), "type": 0,
                        "name": format!("channel-{i}"), "position": i, "parent_id": null})
        })
        .collect();
    let roles: Vec<_> = (0..roles)
        .map(|i| {
            json!({"id": ((gid << 8) + i).to_string(), "name": format!("role {i}"),
                        "permissions": "2248473465835073", "position": i, "color": 0})
        })
        .collect();
    json!({"id": gid.to_string(), "name": "guild", "owner_id": "1", "member_count": members.len(),
           "channels": channels, "roles": roles, "members": members, "emojis": []})
    .to_string()
}

/// Resident bytes per unit after loading `guilds` snapshots.
fn memory(label: &str, guilds: u64, members: u64, channels: u64, roles: u64, per: u64) {
    let store = MemoryStore::new();
    let before = rss_bytes();
    for g in 1..=guilds {
        let gid = g << 22;
        let d = guild_create(gid, members, channels, roles);
        let ev = Event {
            epoch: 1,
            seq: g,
            received_at: 0,
            t: "GUILD_CREATE",
            guild_id: Some(gid),
            guild_create: Some(GuildCreateKind::Initial),
            d: d.as_bytes(),
        };
        for m in worker::parse(
            envelope::ShardRef::new(0, 1),
            &ev,
            &worker::CacheOptions::default(),
        )
        .unwrap()
        .mutations
        {
            store.apply_now(m);
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(store.guild_count() as u64, guilds);
    println!(
        "{label}: {:.1} MB resident for {} units = {:.0} bytes each",
        grown as f64 / 1e6,
        per,
        grown as f64 / per as f64
    );
}

fn main() {
    // Each memory figure is measured in a fresh process, so pages freed by
    // an earlier phase cannot hide growth.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--members") {
        memory(
            "members (with their users, 1 role each)",
            200,
            5_000,
            0,
            2,
            200 * 5_000,
        );
        return;
    }
    if args.iter().any(|a| a == "--guilds") {
        memory(
            "guilds (20 channels, 10 roles, no members)",
            20_000,
            0,
            20,
            10,
            20_000,
        );
        return;
    }
    let realistic = messages(EventMix::default(), 400, 300_000);
    throughput(
        "default mix (messages, typing, presences + cache events)",
        &realistic,
    );
    let heavy: EventMix = "GUILD_MEMBER_ADD=6,GUILD_MEMBER_UPDATE=6,GUILD_MEMBER_REMOVE=5,\
        CHANNEL_UPDATE=4,GUILD_ROLE_UPDATE=3,GUILD_UPDATE=1,MESSAGE_CREATE=2"
        .parse()
        .unwrap();
    let heavy = messages(heavy, 400, 200_000);
    throughput("cache-heavy mix (members, channels, roles)", &heavy);
    let exe = std::env::current_exe().unwrap();
    for flag in ["--members", "--guilds"] {
        let out = std::process::Command::new(&exe).arg(flag).output().unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
