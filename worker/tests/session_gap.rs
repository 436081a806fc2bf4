//! Joins made while a shard had no session (a session gap), on both stores.
//!
//! A session that ends without a resume (heartbeat timeout 4009, invalid
//! session, expiry) is replaced by a new IDENTIFY; the events Discord sent
//! the old session after the last one read are lost. A guild joined then is
//! listed by the new READY, so the sharder marks its GUILD_CREATE `initial`
//! (it cannot know better: its guild tracker starts afresh with the new
//! session). This is what the 64 shards x 1,000 guilds end-to-end run hit:
//! 5 shards re-identified after heartbeat timeouts during the burst, and
//! their gap joins were announced as GUILD_AVAILABLE, never as joins.
//!
//! Every case goes through `Worker::process_message` with sharder envelopes.
#![allow(clippy::unwrap_used)]

use envelope::{BatchEncoder, Event, GuildCreateKind};
use serde_json::json;
use std::sync::{Arc, Mutex};
use worker::{CleanKind, MemoryStore, RedisStore, Store, Worker};

const SHARD: u32 = 3;
const SHARDS: u32 = 4;
/// Guilds of shard 3 (of 4): `(id >> 22) % 4 == 3`.
const A: u64 = 3 << 22;
const B: u64 = 7 << 22;
const J: u64 = 11 << 22;

type Seen = Arc<Mutex<Vec<(String, u64)>>>;

fn worker<S: Store>(store: S) -> (Worker<S>, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let w = Worker::new(store).on_any(move |e| {
        if e.kind != CleanKind::Dispatch {
            let name = match e.kind {
                CleanKind::GuildAvailable { initial: true } => "GUILD_AVAILABLE(initial)".into(),
                _ => e.name().to_owned(),
            };
            s.lock()
                .unwrap()
                .push((name, e.guild_id.unwrap_or_default()));
        }
    });
    (w, seen)
}

fn take(seen: &Seen) -> Vec<(String, u64)> {
    std::mem::take(&mut *seen.lock().unwrap())
}

fn named(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(n, g)| ((*n).to_owned(), *g)).collect()
}

/// One event of the test's shard: `(epoch, seq, t, guild, marker, d)`.
struct Ev {
    epoch: u64,
    seq: u64,
    t: &'static str,
    guild_id: Option<u64>,
    marker: Option<GuildCreateKind>,
    d: String,
}

fn ready(epoch: u64, guilds: &[u64]) -> Ev {
    let stubs: Vec<_> = guilds
        .iter()
        .map(|g| json!({"id": g.to_string(), "unavailable": true}))
        .collect();
    Ev {
        epoch,
        seq: 1,
        t: "READY",
        guild_id: None,
        marker: None,
        d: json!({"guilds": stubs, "user": {"id": "5", "username": "bot", "bot": true}})
            .to_string(),
    }
}

fn create(epoch: u64, seq: u64, guild: u64, kind: GuildCreateKind) -> Ev {
    Ev {
        epoch,
        seq,
        t: "GUILD_CREATE",
        guild_id: Some(guild),
        marker: Some(kind),
        d: json!({"id": guild.to_string(), "name": "g", "owner_id": "1", "member_count": 0,
                  "channels": [], "roles": [], "members": [], "emojis": []})
        .to_string(),
    }
}

fn remove(epoch: u64, seq: u64, guild: u64) -> Ev {
    Ev {
        epoch,
        seq,
        t: "GUILD_DELETE",
        guild_id: Some(guild),
        marker: None,
        d: json!({"id": guild.to_string()}).to_string(),
    }
}

/// Feeds each event as its own envelope (`redelivered` as the broker
/// would flag a redelivery).
async fn feed<S: Store>(w: &Worker<S>, events: &[&Ev], redelivered: bool) {
    for e in events {
        let mut enc = BatchEncoder::new(SHARD, SHARDS).unwrap();
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
            .process_delivery(&enc.finish(), redelivered, &mut |_| {})
            .await
            .unwrap();
        assert!(r.invalid.is_empty(), "{:?}", r.invalid);
    }
}

/// Session 1 loads A and B; J is joined while the shard has no session;
/// session 2's READY lists A, B and J, all marked `initial`.
async fn gap_join_is_announced_once<S: Store>(store: S) {
    use GuildCreateKind::Initial;
    let (w, seen) = worker(store);
    feed(
        &w,
        &[
            &ready(1, &[A, B]),
            &create(1, 2, A, Initial),
            &create(1, 3, B, Initial),
        ],
        false,
    )
    .await;
    take(&seen);
    let j2 = create(2, 4, J, Initial);
    feed(
        &w,
        &[
            &ready(2, &[A, B, J]),
            &create(2, 2, A, Initial),
            &create(2, 3, B, Initial),
            &j2,
        ],
        false,
    )
    .await;
    assert_eq!(
        take(&seen),
        named(&[
            ("GUILD_AVAILABLE(initial)", A),
            ("GUILD_AVAILABLE(initial)", B),
            ("GUILD_JOINED", J)
        ])
    );
    assert!(w.store().guild(J).await.unwrap().unwrap().core.is_some());
    // A duplicate and a redelivery of it: silent to the handlers.
    feed(&w, &[&j2], false).await;
    feed(&w, &[&j2], true).await;
    assert_eq!(take(&seen), named(&[]));
    // An outage and its recovery later are not joins.
    let outage = Ev {
        d: json!({"id": J.to_string(), "unavailable": true}).to_string(),
        ..remove(2, 5, J)
    };
    feed(
        &w,
        &[&outage, &create(2, 6, J, GuildCreateKind::Available)],
        false,
    )
    .await;
    assert_eq!(
        take(&seen),
        named(&[("GUILD_UNAVAILABLE", J), ("GUILD_AVAILABLE", J)])
    );
    // A third session listing the same guilds: nothing is a join.
    feed(
        &w,
        &[&ready(3, &[A, B, J]), &create(3, 2, J, Initial)],
        false,
    )
    .await;
    assert_eq!(take(&seen), named(&[("GUILD_AVAILABLE(initial)", J)]));
}

/// The join reached the worker in session 1 (marked `joined`): session
/// 2's `initial` GUILD_CREATE of J is not a second join.
async fn join_seen_before_the_gap_is_not_repeated<S: Store>(store: S) {
    use GuildCreateKind::{Initial, Joined};
    let (w, seen) = worker(store);
    feed(
        &w,
        &[
            &ready(1, &[A]),
            &create(1, 2, A, Initial),
            &create(1, 3, J, Joined),
        ],
        false,
    )
    .await;
    assert_eq!(
        take(&seen),
        named(&[("GUILD_AVAILABLE(initial)", A), ("GUILD_JOINED", J)])
    );
    feed(
        &w,
        &[
            &ready(2, &[A, J]),
            &create(2, 2, A, Initial),
            &create(2, 3, J, Initial),
        ],
        false,
    )
    .await;
    assert_eq!(
        take(&seen),
        named(&[
            ("GUILD_AVAILABLE(initial)", A),
            ("GUILD_AVAILABLE(initial)", J)
        ])
    );
}

/// Removed in session 1, re-added during the gap: a join again. A guild
/// READY 1 listed but that stayed unavailable is not.
async fn removed_then_readded_in_the_gap_is_a_join<S: Store>(store: S) {
    use GuildCreateKind::Initial;
    let (w, seen) = worker(store);
    feed(
        &w,
        &[
            &ready(1, &[A, B, J]),
            &create(1, 2, J, Initial),
            &remove(1, 3, J),
        ],
        false,
    )
    .await;
    assert_eq!(
        take(&seen),
        named(&[("GUILD_AVAILABLE(initial)", J), ("GUILD_REMOVED", J)])
    );
    // B never loaded in session 1 (unavailable all along).
    feed(
        &w,
        &[
            &ready(2, &[A, B, J]),
            &create(2, 2, A, Initial),
            &create(2, 3, B, Initial),
            &create(2, 4, J, Initial),
        ],
        false,
    )
    .await;
    assert_eq!(
        take(&seen),
        named(&[
            ("GUILD_AVAILABLE(initial)", A),
            ("GUILD_AVAILABLE(initial)", B),
            ("GUILD_JOINED", J)
        ])
    );
}

/// A cold start (empty cache, no earlier READY): nothing is a join, even
/// in a later epoch.
async fn cold_start_infers_nothing<S: Store>(store: S) {
    use GuildCreateKind::Initial;
    let (w, seen) = worker(store);
    feed(
        &w,
        &[
            &ready(9, &[A, J]),
            &create(9, 2, A, Initial),
            &create(9, 3, J, Initial),
        ],
        false,
    )
    .await;
    assert_eq!(
        take(&seen),
        named(&[
            ("GUILD_AVAILABLE(initial)", A),
            ("GUILD_AVAILABLE(initial)", J)
        ])
    );
}

async fn redis() -> RedisStore {
    let prefix = testkit::unique_name("gap");
    RedisStore::connect("redis://127.0.0.1:6379/", &prefix)
        .await
        .unwrap()
}

/// Runs `case` on a Redis store and purges its keys afterwards.
async fn on_redis<F, Fut>(case: F)
where
    F: FnOnce(RedisStore) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let store = redis().await;
    let purge = store.clone();
    case(store).await;
    purge.purge().await.unwrap();
}

#[tokio::test]
async fn memory_gap_join_is_announced_once() {
    gap_join_is_announced_once(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_gap_join_is_announced_once() {
    on_redis(gap_join_is_announced_once).await;
}

#[tokio::test]
async fn memory_join_seen_before_the_gap_is_not_repeated() {
    join_seen_before_the_gap_is_not_repeated(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_join_seen_before_the_gap_is_not_repeated() {
    on_redis(join_seen_before_the_gap_is_not_repeated).await;
}

#[tokio::test]
async fn memory_removed_then_readded_in_the_gap_is_a_join() {
    removed_then_readded_in_the_gap_is_a_join(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_removed_then_readded_in_the_gap_is_a_join() {
    on_redis(removed_then_readded_in_the_gap_is_a_join).await;
}

#[tokio::test]
async fn memory_cold_start_infers_nothing() {
    cold_start_infers_nothing(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_cold_start_infers_nothing() {
    on_redis(cold_start_infers_nothing).await;
}
