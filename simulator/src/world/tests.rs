//! World tests: determinism, routing, and that applying the dispatches to a
//! naive cache reproduces the ground truth exactly.
#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::{Value, json};

/// Keys of a GUILD_CREATE payload that are not guild fields.
const SNAPSHOT_ONLY: &[&str] = &[
    "roles",
    "emojis",
    "joined_at",
    "large",
    "unavailable",
    "member_count",
    "channels",
    "members",
    "threads",
    "presences",
    "voice_states",
    "stage_instances",
    "guild_scheduled_events",
    "soundboard_sounds",
];

fn id(v: &Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

fn without(mut v: Value, keys: &[&str]) -> Value {
    for k in keys {
        v.as_object_mut().unwrap().remove(*k);
    }
    v
}

fn emojis_by_id(p: &Value) -> BTreeMap<u64, Value> {
    p["emojis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (id(&e["id"]), e.clone()))
        .collect()
}

/// A straightforward cache, applying dispatches in order.
fn apply(cache: &mut BTreeMap<u64, GuildTruth>, shards: u32, d: &Dispatch) {
    let p: Value = serde_json::from_str(&d.payload).unwrap();
    let gid = d.guild_id.unwrap();
    assert_eq!(shard_of(gid, shards), d.shard, "{} routed wrong", d.event);
    match d.event {
        "GUILD_CREATE" => {
            let by_id = |k: &str, key: &str| -> BTreeMap<u64, Value> {
                p[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| {
                        let i = if key == "user" {
                            id(&x["user"]["id"])
                        } else {
                            id(&x["id"])
                        };
                        (i, x.clone())
                    })
                    .collect()
            };
            let g = GuildTruth {
                shard: d.shard,
                unavailable: false,
                member_count: p["member_count"].as_u64().unwrap(),
                channels: by_id("channels", "id"),
                roles: by_id("roles", "id"),
                members: by_id("members", "user"),
                emojis: by_id("emojis", "id"),
                guild: without(p.clone(), SNAPSHOT_ONLY),
            };
            cache.insert(gid, g);
        }
        "GUILD_DELETE" => {
            if p.get("unavailable") == Some(&json!(true)) {
                cache.get_mut(&gid).unwrap().unavailable = true;
            } else {
                cache.remove(&gid);
            }
        }
        "GUILD_UPDATE" => {
            let g = cache.get_mut(&gid).unwrap();
            g.emojis = emojis_by_id(&p);
            g.guild = without(p, &["roles", "emojis"]);
        }
        "GUILD_EMOJIS_UPDATE" => cache.get_mut(&gid).unwrap().emojis = emojis_by_id(&p),
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE" => {
            let g = cache.get_mut(&gid).unwrap();
            if d.event == "GUILD_MEMBER_ADD" {
                g.member_count += 1;
            }
            g.members
                .insert(id(&p["user"]["id"]), without(p, &["guild_id"]));
        }
        "GUILD_MEMBER_REMOVE" => {
            let g = cache.get_mut(&gid).unwrap();
            g.member_count -= 1;
            g.members.remove(&id(&p["user"]["id"])).unwrap();
        }
        "CHANNEL_CREATE" | "CHANNEL_UPDATE" => {
            cache
                .get_mut(&gid)
                .unwrap()
                .channels
                .insert(id(&p["id"]), p);
        }
        "CHANNEL_DELETE" => {
            cache
                .get_mut(&gid)
                .unwrap()
                .channels
                .remove(&id(&p["id"]))
                .unwrap();
        }
        "GUILD_ROLE_CREATE" | "GUILD_ROLE_UPDATE" => {
            let role = p["role"].clone();
            cache
                .get_mut(&gid)
                .unwrap()
                .roles
                .insert(id(&role["id"]), role);
        }
        "GUILD_ROLE_DELETE" => {
            cache
                .get_mut(&gid)
                .unwrap()
                .roles
                .remove(&id(&p["role_id"]))
                .unwrap();
        }
        "MESSAGE_CREATE" | "TYPING_START" | "PRESENCE_UPDATE" => {
            assert!(
                !cache[&gid].unavailable,
                "{} for an unavailable guild",
                d.event
            );
        }
        other => panic!("unexpected event {other}"),
    }
}

fn small() -> WorldConfig {
    WorldConfig {
        shards: 4,
        guilds: 12,
        members_per_guild: 6,
        outage_events: 30,
        ..WorldConfig::default()
    }
}

#[test]
fn same_seed_same_world_and_events() {
    let mut a = World::new(7, small()).unwrap();
    let mut b = World::new(7, small()).unwrap();
    assert_eq!(a.truth(), b.truth());
    for _ in 0..500 {
        assert_eq!(a.next_dispatch(), b.next_dispatch());
    }
    assert_eq!(a.truth(), b.truth());
    let c = World::new(8, small()).unwrap();
    assert_ne!(a.truth(), c.truth());
}

#[test]
fn initial_guilds_spread_over_shards_and_route_right() {
    let w = World::new(1, small()).unwrap();
    for shard in 0..4 {
        let gs = w.shard_guilds(shard);
        assert_eq!(gs.len(), 3);
        for (gid, available) in gs {
            assert!(available);
            assert_eq!(shard_of(gid, 4), shard);
            let g = w.guild_truth(gid).unwrap();
            // The configured members plus the bot's own.
            assert_eq!(g.members.len(), 7);
            assert_eq!(g.member_count, 7);
            assert!(g.members.contains_key(&BOT_USER_ID));
            assert_eq!(g.emojis.len(), 3);
            assert_eq!(g.channels.len(), 8);
            assert_eq!(g.roles.len(), 6);
        }
    }
}

#[test]
fn the_shards_of_any_total_own_every_guild_once() {
    let w = World::new(3, small()).unwrap();
    let all = w.guild_ids();
    for total in [1, 3, 4, 7] {
        let mut union = Vec::new();
        for shard in 0..total {
            let gs = w.guilds_of(shard, total);
            assert!(gs.iter().all(|&(g, up)| shard_of(g, total) == shard && up));
            union.extend(gs.into_iter().map(|(g, _)| g));
        }
        union.sort_unstable();
        assert_eq!(union, all, "total {total}");
    }
    assert_eq!(
        w.guilds_of(2, 4),
        w.shard_guilds(2),
        "the world's own total"
    );
}

#[test]
fn joins_and_removals_say_they_change_the_guild_set() {
    let mut w = World::new(5, small()).unwrap();
    let (mut joined, mut left) = (0, 0);
    for _ in 0..3000 {
        let before = w.guild_ids().len();
        let d = w.next_dispatch();
        let after = w.guild_ids().len();
        let want = match after.cmp(&before) {
            std::cmp::Ordering::Greater => Membership::Joined,
            std::cmp::Ordering::Less => Membership::Left,
            std::cmp::Ordering::Equal => Membership::Unchanged,
        };
        assert_eq!(d.membership, want, "{} {}", d.event, d.payload);
        joined += usize::from(want == Membership::Joined);
        left += usize::from(want == Membership::Left);
    }
    assert!(joined > 0 && left > 0, "the mix has joins and removals");
}

#[test]
fn applying_every_dispatch_reproduces_the_truth() {
    let mut w = World::new(42, small()).unwrap();
    let mut cache = BTreeMap::new();
    for gid in w.guild_ids() {
        let d = Dispatch {
            shard: w.shard_of(gid),
            event: "GUILD_CREATE",
            guild_id: Some(gid),
            payload: w.guild_create(gid).unwrap(),
            restricted: None,
            membership: Membership::Unchanged,
        };
        apply(&mut cache, 4, &d);
    }
    assert_eq!(cache, w.truth().guilds);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20_000 {
        let d = w.next_dispatch();
        let outage = d.event == "GUILD_DELETE" && d.payload.contains("unavailable");
        seen.insert(if outage { "OUTAGE" } else { d.event });
        apply(&mut cache, 4, &d);
    }
    assert_eq!(cache, w.truth().guilds);
    for kind in [
        "MESSAGE_CREATE",
        "TYPING_START",
        "PRESENCE_UPDATE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_UPDATE",
        "GUILD_MEMBER_REMOVE",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
        "CHANNEL_DELETE",
        "GUILD_ROLE_CREATE",
        "GUILD_ROLE_UPDATE",
        "GUILD_ROLE_DELETE",
        "GUILD_UPDATE",
        "GUILD_EMOJIS_UPDATE",
        "GUILD_CREATE",
        "GUILD_DELETE",
        "OUTAGE",
    ] {
        assert!(seen.contains(kind), "never generated {kind}");
    }
}

#[test]
fn manual_outage_lasts_until_ended() {
    let mut w = World::new(3, small()).unwrap();
    let gid = w.guild_ids()[0];
    let d = w.start_outage(gid).unwrap();
    assert_eq!(d.event, "GUILD_DELETE");
    assert!(w.start_outage(gid).is_none());
    assert!(w.guild_create(gid).is_none());
    for _ in 0..1000 {
        let d = w.next_dispatch();
        assert_ne!(d.guild_id, Some(gid), "{d:?}");
    }
    assert!(w.guild_truth(gid).unwrap().unavailable);
    let back = w.end_outage(gid).unwrap();
    assert_eq!(back.event, "GUILD_CREATE");
    assert!(!w.guild_truth(gid).unwrap().unavailable);
}

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (
            WorldConfig {
                shards: 0,
                ..small()
            },
            "shards",
        ),
        (
            WorldConfig {
                shards: 1,
                guilds: 2501,
                ..small()
            },
            "guilds",
        ),
        (
            WorldConfig {
                channels_per_guild: 1,
                ..small()
            },
            "channels_per_guild",
        ),
        (
            WorldConfig {
                members_per_guild: 0,
                ..small()
            },
            "members_per_guild",
        ),
    ] {
        let e = World::new(1, cfg).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
}

/// FNV-1a, stable across Rust versions (unlike `DefaultHasher`).
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// Every byte of the stream for a seed, as the world produced it before
/// the payload writers were optimised: optimisations must not change what
/// a seed produces, not even the order of keys. (Changed on purpose once:
/// one TYPING_START per typing indicator, as Discord sends them.)
#[test]
fn the_stream_for_a_seed_is_byte_for_byte_unchanged() {
    let mut w = World::new(
        11,
        WorldConfig {
            shards: 16,
            guilds: 64,
            outage_events: 50,
            ..WorldConfig::default()
        },
    )
    .unwrap();
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for gid in w.guild_ids() {
        fnv(&mut hash, w.guild_create(gid).unwrap().as_bytes());
    }
    for _ in 0..50_000 {
        let d = w.next_dispatch();
        fnv(&mut hash, &d.shard.to_le_bytes());
        fnv(&mut hash, d.event.as_bytes());
        fnv(&mut hash, &d.guild_id.unwrap_or(0).to_le_bytes());
        fnv(&mut hash, d.payload.as_bytes());
        fnv(&mut hash, d.restricted.as_deref().unwrap_or("-").as_bytes());
    }
    fnv(
        &mut hash,
        serde_json::to_string(&w.truth()).unwrap().as_bytes(),
    );
    assert_eq!(hash, 0x2853_1ff6_8d9d_3442, "stream digest {hash:#018x}");
}

/// Discord sends one TYPING_START per typing indicator (10 s): a user never
/// starts typing twice in one channel within it, so no two TYPING_STARTs
/// carry the same payload (the workers pair a live reshard's copies of
/// one event by payload). A small world at a high rate would repeat them.
#[test]
fn one_typing_start_per_user_and_channel_per_indicator() {
    let mut w = World::new(
        5,
        WorldConfig {
            shards: 1,
            guilds: 2,
            members_per_guild: 2,
            ..WorldConfig::default()
        },
    )
    .unwrap();
    let mut last: std::collections::HashMap<(String, String), u64> = Default::default();
    let mut typing = 0;
    for _ in 0..20_000 {
        let d = w.next_dispatch();
        if d.event != "TYPING_START" {
            continue;
        }
        typing += 1;
        let v: serde_json::Value = serde_json::from_str(&d.payload).unwrap();
        let key = (v["user_id"].to_string(), v["channel_id"].to_string());
        let at = v["timestamp"].as_u64().unwrap();
        if let Some(prev) = last.insert(key.clone(), at) {
            assert!(at >= prev + 10, "{key:?} typed at {prev} and again at {at}");
        }
    }
    assert!(typing > 0, "the mix makes TYPING_STARTs");
}
