//! Two shard totals publishing at once (a live reshard), on both stores.
//!
//! During a reshard from 2 to 4 shards, shard 1 of 2 and shard 1 of 4 are
//! two live sessions. What the cache keeps per shard (the READY whose guild
//! list implies removals, the delivery window) is kept per shard *of its
//! total* ([`envelope::ShardRef`]): keyed by the id alone, the new
//! generation's READY would remove the guilds the old generation's shard
//! still serves, and two sessions' equal versions would drop each other's
//! events as duplicates.
#![allow(clippy::unwrap_used)]

use envelope::{BatchEncoder, Event, GuildCreateKind};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use worker::{MemoryStore, RedisStore, Store, Worker};

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
        s.lock()
            .unwrap()
            .push((e.name().to_owned(), e.guild_id.unwrap_or_default()));
    });
    (w, seen)
}

struct Ev {
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

/// Feeds each event as its own envelope from shard 1 of its total.
async fn feed<S: Store>(w: &Worker<S>, events: &[&Ev]) {
    for e in events {
        let mut enc = BatchEncoder::new(1, e.total).unwrap();
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

async fn redis() -> RedisStore {
    static N: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!(
        "bulwark-test:generations:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
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
