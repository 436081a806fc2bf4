//! Two shard totals publishing at once (a live reshard), on both stores.
//!
//! During a reshard from 2 to 4 shards, shard 1 of 2 and shard 1 of 4 are
//! two live sessions. What the cache keeps per shard (the READY whose guild
//! list implies removals, the delivery window) is kept per shard *of its
//! total* ([`envelope::ShardRef`]): keyed by the id alone, the new
//! generation's READY would remove the guilds the old generation's shard
//! still serves, and two sessions' equal versions would drop each other's
//! events as duplicates.
//!
//! And the clean stream of a whole reshard window: every event once,
//! whichever generation's copy comes first; no announcement for the new
//! generation's loads; the reshard itself announced once.
#![allow(clippy::unwrap_used)]

use envelope::{BatchEncoder, Event, GuildCreateKind, ReshardMarker, ReshardPhase};
use serde_json::json;
use std::sync::{Arc, Mutex};
use worker::{CleanKind, MemoryStore, RedisStore, Store, Worker};

/// Shard 1 of 2 holds A and B; of 4 shards, A is on shard 1 and B on 3.
const A: u64 = 1 << 22;
const B: u64 = 3 << 22;
const OLD: u32 = 2;
const NEW: u32 = 4;

type Seen = Arc<Mutex<Vec<(String, u64)>>>;

fn worker<S: Store>(store: S) -> (Worker<S>, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let w = Worker::new(store).on_any(move |e| {
        // READY is per session, not per guild: both generations' pass.
        if e.kind == CleanKind::Dispatch && e.t == "READY" {
            return;
        }
        s.lock()
            .unwrap()
            .push((e.name().to_owned(), e.guild_id.unwrap_or_default()));
    });
    (w, seen)
}

struct Ev {
    shard: u32,
    total: u32,
    epoch: u64,
    seq: u64,
    t: &'static str,
    guild_id: Option<u64>,
    marker: Option<GuildCreateKind>,
    d: String,
}

fn ready(total: u32, epoch: u64, guilds: &[u64]) -> Ev {
    let stubs: Vec<_> = guilds
        .iter()
        .map(|g| json!({"id": g.to_string(), "unavailable": true}))
        .collect();
    Ev {
        shard: 1,
        total,
        epoch,
        seq: 1,
        t: "READY",
        guild_id: None,
        marker: None,
        d: json!({"guilds": stubs, "user": {"id": "5", "username": "bot", "bot": true}})
            .to_string(),
    }
}

fn create(total: u32, epoch: u64, seq: u64, guild: u64) -> Ev {
    Ev {
        shard: 1,
        total,
        epoch,
        seq,
        t: "GUILD_CREATE",
        guild_id: Some(guild),
        marker: Some(GuildCreateKind::Initial),
        d: json!({"id": guild.to_string(), "name": "g", "owner_id": "1", "member_count": 0,
                  "channels": [], "roles": [], "members": [], "emojis": []})
        .to_string(),
    }
}

fn message(total: u32, epoch: u64, seq: u64, guild: u64) -> Ev {
    Ev {
        shard: 1,
        total,
        epoch,
        seq,
        t: "MESSAGE_CREATE",
        guild_id: Some(guild),
        marker: None,
        d: json!({"id": (900 + seq).to_string(), "guild_id": guild.to_string(),
                  "channel_id": "2", "content": "hi",
                  "author": {"id": "9", "username": "u"}})
        .to_string(),
    }
}

/// Feeds each event as its own envelope from its shard of its total.
async fn feed<S: Store>(w: &Worker<S>, events: &[&Ev]) {
    for e in events {
        let mut enc = BatchEncoder::new(e.shard, e.total).unwrap();
        enc.push(&Event {
            epoch: e.epoch,
            seq: e.seq,
            received_at: 1_000 + e.seq,
            t: e.t,
            guild_id: e.guild_id,
            guild_create: e.marker,
            d: e.d.as_bytes(),
        })
        .unwrap();
        let r = w
            .process_delivery(&enc.finish(), false, &mut |_| {})
            .await
            .unwrap();
        assert!(r.invalid.is_empty(), "{:?}", r.invalid);
    }
}

/// The new generation's READY of shard 1 lists only A: B, which shard 1
/// of the old generation still serves, stays cached, and the old
/// generation's events for B keep applying.
async fn new_ready_keeps_the_old_generations_guilds<S: Store>(store: S) {
    let (w, _) = worker(store);
    feed(
        &w,
        &[
            &ready(OLD, 100, &[A, B]),
            &create(OLD, 100, 2, A),
            &create(OLD, 100, 3, B),
            &ready(NEW, 200, &[A]),
            &create(NEW, 200, 2, A),
        ],
    )
    .await;
    let b = w.store().guild(B).await.unwrap();
    assert!(
        b.is_some_and(|g| g.core.is_some()),
        "shard 1 of 4's READY removed guild B, which shard 1 of 2 serves"
    );
    assert!(w.store().guild(A).await.unwrap().is_some());
}

/// The same version from shard 1 of 2 and from shard 1 of 4 are two
/// sessions' events, not a redelivery: both pass the delivery check.
async fn equal_versions_of_two_generations_are_not_duplicates<S: Store>(store: S) {
    let (w, seen) = worker(store);
    feed(&w, &[&message(OLD, 300, 7, A), &message(NEW, 300, 7, B)]).await;
    let got = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        got,
        [
            ("MESSAGE_CREATE".to_owned(), A),
            ("MESSAGE_CREATE".to_owned(), B)
        ]
    );
    // A real redelivery of either is still a duplicate.
    feed(&w, &[&message(NEW, 300, 7, B)]).await;
    assert!(seen.lock().unwrap().is_empty());
}

fn on(shard: u32, e: Ev) -> Ev {
    Ev { shard, ..e }
}

fn joined(total: u32, epoch: u64, seq: u64, guild: u64) -> Ev {
    Ev {
        marker: Some(GuildCreateKind::Joined),
        ..create(total, epoch, seq, guild)
    }
}

fn channel(total: u32, epoch: u64, seq: u64, guild: u64, name: &str) -> Ev {
    Ev {
        shard: 1,
        total,
        epoch,
        seq,
        t: "CHANNEL_UPDATE",
        guild_id: Some(guild),
        marker: None,
        d: json!({"id": "77", "type": 0, "name": name, "guild_id": guild.to_string()}).to_string(),
    }
}

async fn mark<S: Store>(w: &Worker<S>, phase: ReshardPhase, at_ms: u64) {
    let m = ReshardMarker {
        id: 500,
        phase,
        from: OLD,
        to: NEW,
        at_ms,
    };
    let r = w
        .process_delivery(&m.encode().unwrap(), false, &mut |_| {})
        .await
        .unwrap();
    assert!(r.invalid.is_empty(), "{:?}", r.invalid);
}

/// A whole reshard window on one partition, from 2 to 4 shards: the
/// clean stream has every event once, in whichever generation's copy came
/// first, no GUILD_AVAILABLE for the new generation's loads, one join for
/// a guild joined during the overlap, and the reshard announced once.
async fn one_clean_stream_through_a_reshard<S: Store>(store: S) {
    const J: u64 = 5 << 22; // shard 1 of 2 and shard 1 of 4
    let (w, seen) = worker(store);
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    let names = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
        list.iter().map(|(n, g)| ((*n).to_owned(), *g)).collect()
    };
    // The old generation serves A and B.
    feed(
        &w,
        &[
            &ready(OLD, 100, &[A, B]),
            &create(OLD, 100, 2, A),
            &create(OLD, 100, 3, B),
            &message(OLD, 100, 4, A),
        ],
    )
    .await;
    assert_eq!(
        take(),
        names(&[
            ("GUILD_AVAILABLE", A),
            ("GUILD_AVAILABLE", B),
            ("MESSAGE_CREATE", A)
        ])
    );
    // Started, on this partition and (a copy) on another: announced once.
    mark(&w, ReshardPhase::Started, 1_000).await;
    mark(&w, ReshardPhase::Started, 1_000).await;
    assert_eq!(take(), names(&[("RESHARD_STARTED", 0)]));
    // An old-only event, then the new generation's READYs and loads. The
    // old generation still serves A between the new READY and the new
    // GUILD_CREATE: the read API keeps it available.
    feed(
        &w,
        &[&channel(OLD, 100, 5, A, "before"), &ready(NEW, 200, &[A])],
    )
    .await;
    let a = w.store().guild(A).await.unwrap().unwrap();
    assert!(
        a.available,
        "the new READY made A unavailable mid hand-over"
    );
    feed(
        &w,
        &[
            &create(NEW, 200, 2, A),
            &on(3, ready(NEW, 201, &[B])),
            &on(3, create(NEW, 201, 2, B)),
        ],
    )
    .await;
    assert_eq!(take(), names(&[("CHANNEL_UPDATE", A)]));
    // Both generations now see every event; either copy may come first.
    feed(
        &w,
        &[
            &channel(NEW, 200, 3, A, "after"),
            &channel(OLD, 100, 6, A, "after"),
            &message(OLD, 100, 7, A),
            &message(NEW, 200, 7, A),
            &joined(OLD, 100, 8, J),
            &joined(NEW, 200, 8, J),
        ],
    )
    .await;
    assert_eq!(
        take(),
        names(&[
            ("CHANNEL_UPDATE", A),
            ("MESSAGE_CREATE", A),
            ("GUILD_JOINED", J)
        ])
    );
    // An old-generation event the new snapshot already holds, arriving
    // late: stale for the cache, but its only copy, so emitted.
    feed(&w, &[&message(OLD, 100, 3, B)]).await;
    assert_eq!(take(), names(&[("MESSAGE_CREATE", B)]));
    // A redelivered twin stays dropped.
    feed(&w, &[&message(NEW, 200, 7, A)]).await;
    assert!(take().is_empty());
    mark(&w, ReshardPhase::Completed, 2_000).await;
    feed(&w, &[&message(NEW, 200, 9, A)]).await;
    assert_eq!(
        take(),
        names(&[("RESHARD_COMPLETED", 0), ("MESSAGE_CREATE", A)])
    );
    for g in [A, B, J] {
        let v = w.store().guild(g).await.unwrap().unwrap();
        assert!(v.core.is_some() && v.available, "guild {g}: {v:?}");
    }
    let a = w.store().guild(A).await.unwrap().unwrap();
    assert_eq!(a.channels[&77].value.name.as_deref(), Some("after"));
}

fn outage(total: u32, epoch: u64, seq: u64, guild: u64) -> Ev {
    Ev {
        shard: 1,
        total,
        epoch,
        seq,
        t: "GUILD_DELETE",
        guild_id: Some(guild),
        marker: None,
        d: json!({"id": guild.to_string(), "unavailable": true}).to_string(),
    }
}

/// A guild outage during the overlap, the old generation's copy first:
/// its write loses to the new generation's newer snapshot, and the new
/// copy pairs with it, yet the bot hears of the outage once (and not
/// again on a redelivery).
async fn an_outage_in_the_overlap_is_announced_once<S: Store>(store: S) {
    let (w, seen) = worker(store);
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    feed(&w, &[&ready(OLD, 100, &[A]), &create(OLD, 100, 2, A)]).await;
    mark(&w, ReshardPhase::Started, 1_000).await;
    feed(&w, &[&ready(NEW, 200, &[A]), &create(NEW, 200, 2, A)]).await;
    take();
    feed(&w, &[&outage(OLD, 100, 3, A), &outage(NEW, 200, 3, A)]).await;
    assert_eq!(take(), vec![("GUILD_UNAVAILABLE".to_owned(), A)]);
    feed(&w, &[&outage(OLD, 100, 3, A)]).await;
    assert!(take().is_empty(), "a redelivery announced it again");
    let a = w.store().guild(A).await.unwrap().unwrap();
    assert!(!a.available);
}

#[tokio::test]
async fn memory_an_outage_in_the_overlap_is_announced_once() {
    an_outage_in_the_overlap_is_announced_once(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_an_outage_in_the_overlap_is_announced_once() {
    an_outage_in_the_overlap_is_announced_once(redis().await).await;
}

#[tokio::test]
async fn memory_one_clean_stream_through_a_reshard() {
    one_clean_stream_through_a_reshard(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_one_clean_stream_through_a_reshard() {
    let r = redis().await;
    one_clean_stream_through_a_reshard(r.clone()).await;
    r.purge().await.unwrap();
}

async fn redis() -> RedisStore {
    let prefix = testkit::unique_name("generations");
    RedisStore::connect("redis://127.0.0.1:6379/", &prefix)
        .await
        .unwrap()
}

#[tokio::test]
async fn memory_new_ready_keeps_the_old_generations_guilds() {
    new_ready_keeps_the_old_generations_guilds(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_new_ready_keeps_the_old_generations_guilds() {
    let r = redis().await;
    new_ready_keeps_the_old_generations_guilds(r.clone()).await;
    r.purge().await.unwrap();
}

#[tokio::test]
async fn memory_equal_versions_of_two_generations_are_not_duplicates() {
    equal_versions_of_two_generations_are_not_duplicates(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_equal_versions_of_two_generations_are_not_duplicates() {
    let r = redis().await;
    equal_versions_of_two_generations_are_not_duplicates(r.clone()).await;
    r.purge().await.unwrap();
}
