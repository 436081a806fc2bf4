//! The cache rules and join classification, case by case, on both stores.
#![allow(clippy::unwrap_used)]

#[path = "rules/store_cases.rs"]
mod store_cases;

use envelope::{BatchEncoder, Event, GuildCreateKind};
use serde_json::json;
use std::sync::{Arc, Mutex};
use worker::{MemoryStore, ProcessError, RedisStore, Report, Store, Worker};

const G: u64 = 81384788765712384;
const C: u64 = 81384788765712385;
const U: u64 = 80351110224678912;

struct Ev {
    seq: u64,
    t: &'static str,
    marker: Option<GuildCreateKind>,
    d: String,
}

fn ev(seq: u64, t: &'static str, d: serde_json::Value) -> Ev {
    Ev {
        seq,
        t,
        marker: None,
        d: d.to_string(),
    }
}

fn create(seq: u64, kind: GuildCreateKind, channels: &[(u64, &str)], member_count: u64) -> Ev {
    let channels: Vec<_> = channels
        .iter()
        .map(|(id, name)| json!({"id": id.to_string(), "type": 0, "name": name, "guild_id": G.to_string()}))
        .collect();
    Ev {
        seq,
        t: "GUILD_CREATE",
        marker: Some(kind),
        d: json!({"id": G.to_string(), "name": "g", "owner_id": "1", "member_count": member_count,
                  "channels": channels, "roles": [], "members": [], "emojis": []})
        .to_string(),
    }
}

fn channel_update(seq: u64, name: &str) -> Ev {
    ev(
        seq,
        "CHANNEL_UPDATE",
        json!({"id": C.to_string(), "type": 0, "name": name, "guild_id": G.to_string()}),
    )
}

fn member(seq: u64, t: &'static str, user: u64) -> Ev {
    ev(
        seq,
        t,
        json!({"guild_id": G.to_string(), "roles": [], "user": {"id": user.to_string(), "username": "u"}}),
    )
}

type Seen = Arc<Mutex<Vec<String>>>;

fn worker<S: Store>(store: S) -> (Worker<S>, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let w = Worker::new(store).on_any(move |e| {
        let name = match e.kind {
            worker::CleanKind::GuildAvailable { initial: true } => {
                "GUILD_AVAILABLE(initial)".into()
            }
            _ => e.name().to_owned(),
        };
        s.lock().unwrap().push(name)
    });
    (w, seen)
}

async fn feed<S: Store>(w: &Worker<S>, events: &[&Ev]) -> Report {
    let mut report = Report::default();
    for e in events {
        let event = Event {
            epoch: 7,
            seq: e.seq,
            received_at: 1_000 + e.seq,
            t: e.t,
            guild_id: Some(G),
            guild_create: e.marker,
            d: e.d.as_bytes(),
        };
        w.process_event(envelope::ShardRef::new(0, 1), &event, &mut report)
            .await
            .unwrap();
    }
    report
}

fn take(seen: &Seen) -> Vec<String> {
    std::mem::take(&mut *seen.lock().unwrap())
}

async fn redis() -> RedisStore {
    let prefix = testkit::unique_name("rules");
    RedisStore::connect("redis://127.0.0.1:6379/", &prefix)
        .await
        .unwrap()
}

async fn join_is_announced_once<S: Store>(store: S) {
    let (w, seen) = worker(store);
    let join = create(5, GuildCreateKind::Joined, &[(C, "a")], 3);
    feed(&w, &[&join]).await;
    assert_eq!(take(&seen), ["GUILD_JOINED"]);
    // Redelivery, and redelivery after newer events: silent.
    feed(&w, &[&join, &channel_update(6, "b"), &join]).await;
    assert_eq!(take(&seen), ["CHANNEL_UPDATE"]);
    // Outage and recovery: not a join.
    let outage = ev(
        8,
        "GUILD_DELETE",
        json!({"id": G.to_string(), "unavailable": true}),
    );
    feed(&w, &[&outage]).await;
    assert!(!w.store().guild(G).await.unwrap().unwrap().available);
    feed(
        &w,
        &[&create(9, GuildCreateKind::Available, &[(C, "b")], 3)],
    )
    .await;
    assert_eq!(take(&seen), ["GUILD_UNAVAILABLE", "GUILD_AVAILABLE"]);
    assert!(w.store().guild(G).await.unwrap().unwrap().available);
    // Removal; then the old join redelivered: still gone, no announcement.
    feed(
        &w,
        &[&ev(10, "GUILD_DELETE", json!({"id": G.to_string()})), &join],
    )
    .await;
    assert_eq!(take(&seen), ["GUILD_REMOVED"]);
    assert_eq!(w.store().guild(G).await.unwrap(), None);
}

async fn cold_restart_never_joins<S: Store>(store: S) {
    // An empty cache and a fresh session: READY's guilds are `initial`.
    let (w, seen) = worker(store);
    feed(&w, &[&create(2, GuildCreateKind::Initial, &[(C, "a")], 3)]).await;
    assert_eq!(take(&seen), ["GUILD_AVAILABLE(initial)"]);
}

async fn snapshot_keeps_newer_and_drops_older<S: Store>(store: S) {
    let (w, seen) = worker(store);
    let other = C + 1;
    // A newer update arrives before a late snapshot; an older channel that
    // the snapshot does not list was deleted in between.
    feed(&w, &[&channel_update(9, "new")]).await;
    feed(
        &w,
        &[&ev(
            3,
            "CHANNEL_CREATE",
            json!({"id": other.to_string(), "type": 0, "guild_id": G.to_string()}),
        )],
    )
    .await;
    feed(
        &w,
        &[&create(5, GuildCreateKind::Initial, &[(C, "old")], 1)],
    )
    .await;
    let v = w.store().guild(G).await.unwrap().unwrap();
    assert_eq!(v.channels[&C].value.name.as_deref(), Some("new"));
    assert_eq!(v.channels[&C].version.seq, 9);
    assert!(!v.channels.contains_key(&other));
    // An older write cannot resurrect it, nor roll the newer one back.
    feed(
        &w,
        &[
            &ev(
                4,
                "CHANNEL_UPDATE",
                json!({"id": other.to_string(), "type": 0, "guild_id": G.to_string()}),
            ),
            &channel_update(8, "older"),
        ],
    )
    .await;
    let v2 = w.store().guild(G).await.unwrap().unwrap();
    assert_eq!(v, v2);
    // Stale events are not forwarded either.
    assert_eq!(
        take(&seen),
        [
            "CHANNEL_UPDATE",
            "CHANNEL_CREATE",
            "GUILD_AVAILABLE(initial)"
        ]
    );
    // A delete leaves a tombstone that beats older writes.
    feed(
        &w,
        &[
            &ev(
                12,
                "CHANNEL_DELETE",
                json!({"id": C.to_string(), "type": 0, "guild_id": G.to_string()}),
            ),
            &channel_update(11, "late"),
        ],
    )
    .await;
    assert!(
        w.store()
            .guild(G)
            .await
            .unwrap()
            .unwrap()
            .channels
            .is_empty()
    );
}

/// Every order of: snapshot (count 10 at seq 5), an add older than it, an
/// add and a remove newer than it, and a duplicate of the newer add.
async fn member_count_every_order<S: Store, F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let events = [
        create(5, GuildCreateKind::Initial, &[], 10),
        member(3, "GUILD_MEMBER_ADD", U),
        member(7, "GUILD_MEMBER_ADD", U + 1),
        member(7, "GUILD_MEMBER_ADD", U + 1),
        ev(
            8,
            "GUILD_MEMBER_REMOVE",
            json!({"guild_id": G.to_string(), "user": {"id": (U + 2).to_string()}}),
        ),
    ];
    let orders = permutations(events.len());
    assert_eq!(orders.len(), 120);
    for o in orders {
        let (w, _) = worker(make().await);
        let refs: Vec<&Ev> = o.iter().map(|&i| &events[i]).collect();
        feed(&w, &refs).await;
        let v = w.store().guild(G).await.unwrap().unwrap();
        assert_eq!(v.member_count, 10, "order {o:?}");
        assert!(v.members.contains_key(&(U + 1)), "order {o:?}");
    }
}

/// Every permutation of `0..n`, in lexicographic order.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    let mut a: Vec<usize> = (0..n).collect();
    let mut out = Vec::new();
    loop {
        out.push(a.clone());
        let Some(i) = (0..n.saturating_sub(1)).rev().find(|&i| a[i] < a[i + 1]) else {
            return out;
        };
        let j = (i + 1..n).rev().find(|&j| a[j] > a[i]).unwrap();
        a.swap(i, j);
        a[i + 1..].reverse();
    }
}

async fn bad_input_is_reported_not_fatal<S: Store>(store: S) {
    let (w, seen) = worker(store);
    let big = "x".repeat(1 << 20);
    let bad = [
        Ev {
            seq: 1,
            t: "GUILD_MEMBER_ADD",
            marker: None,
            d: "{not json".into(),
        },
        Ev {
            seq: 2,
            t: "GUILD_MEMBER_ADD",
            marker: None,
            d: String::new(),
        },
        ev(
            3,
            "GUILD_MEMBER_ADD",
            json!({"guild_id": G.to_string(), "roles": 5, "user": {"id": "1", "username": "u"}}),
        ),
        ev(
            4,
            "CHANNEL_UPDATE",
            json!({"id": "nope", "type": 0, "guild_id": G.to_string()}),
        ),
        Ev {
            seq: 5,
            t: "GUILD_CREATE",
            marker: Some(GuildCreateKind::Joined),
            d: big,
        },
        ev(
            6,
            "GUILD_ROLE_UPDATE",
            json!({"guild_id": G.to_string(), "role": {"id": "2", "name": "r", "permissions": 8}}),
        ),
        Ev {
            seq: 8,
            t: "GUILD_CREATE",
            marker: Some(GuildCreateKind::Joined),
            d: json!({"id": G.to_string(), "channels": []}).to_string(),
        },
    ];
    let ok = channel_update(9, "fine");
    let mut refs: Vec<&Ev> = bad.iter().collect();
    refs.push(&ok);
    let report = feed(&w, &refs).await;
    assert_eq!(report.invalid.len(), 6, "{:?}", report.invalid);
    assert!(
        report.invalid[5].1.contains("owner_id"),
        "{:?}",
        report.invalid
    );
    assert!(report.invalid[0].1.contains("GUILD_MEMBER_ADD"));
    // Numbers are accepted where Discord sends strings (role permissions).
    assert_eq!(take(&seen), ["GUILD_ROLE_UPDATE", "CHANNEL_UPDATE"]);
}

#[tokio::test]
async fn memory_join_is_announced_once() {
    join_is_announced_once(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_join_is_announced_once() {
    let s = redis().await;
    join_is_announced_once(s.clone()).await;
    s.purge().await.unwrap();
}

#[tokio::test]
async fn memory_cold_restart_never_joins() {
    cold_restart_never_joins(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_cold_restart_never_joins() {
    let s = redis().await;
    cold_restart_never_joins(s.clone()).await;
    s.purge().await.unwrap();
}

#[tokio::test]
async fn memory_snapshot_keeps_newer_and_drops_older() {
    snapshot_keeps_newer_and_drops_older(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_snapshot_keeps_newer_and_drops_older() {
    let s = redis().await;
    snapshot_keeps_newer_and_drops_older(s.clone()).await;
    s.purge().await.unwrap();
}

#[tokio::test]
async fn memory_member_count_is_exact_in_every_order() {
    member_count_every_order(|| async { MemoryStore::new() }).await;
}

#[tokio::test]
async fn redis_member_count_is_exact_in_every_order() {
    let stores = Arc::new(Mutex::new(Vec::new()));
    let st = stores.clone();
    member_count_every_order(move || {
        let st = st.clone();
        async move {
            let s = redis().await;
            st.lock().unwrap().push(s.clone());
            s
        }
    })
    .await;
    let all: Vec<RedisStore> = std::mem::take(&mut *stores.lock().unwrap());
    for s in all {
        s.purge().await.unwrap();
    }
}

#[tokio::test]
async fn memory_bad_input_is_reported_not_fatal() {
    bad_input_is_reported_not_fatal(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_bad_input_is_reported_not_fatal() {
    let s = redis().await;
    bad_input_is_reported_not_fatal(s.clone()).await;
    s.purge().await.unwrap();
}

#[tokio::test]
async fn undecodable_messages_are_decode_errors() {
    let (w, seen) = worker(MemoryStore::new());
    for bytes in [&b""[..], b"{\"op\":0}", b"BW\x01\x00"] {
        assert!(matches!(
            w.process_message(bytes).await,
            Err(ProcessError::Decode(_))
        ));
    }
    // A whole batch: each event processed in order.
    let mut enc = BatchEncoder::new(0, 1).unwrap();
    let a = channel_update(1, "a");
    let b = channel_update(2, "b");
    for e in [&a, &b, &a] {
        enc.push(&Event {
            epoch: 1,
            seq: e.seq,
            received_at: 0,
            t: e.t,
            guild_id: Some(G),
            guild_create: None,
            d: e.d.as_bytes(),
        })
        .unwrap();
    }
    let bytes = enc.finish();
    // Events are parsed as they are decoded, but a message that turns out
    // undecodable after valid events (truncated, or with trailing bytes)
    // writes and emits nothing.
    let mut trailing = bytes.clone();
    trailing.push(0);
    for bad in [&bytes[..bytes.len() - 1], &trailing[..]] {
        assert!(matches!(
            w.process_message(bad).await,
            Err(ProcessError::Decode(_))
        ));
        assert!(take(&seen).is_empty());
        assert_eq!(w.store().guild(G).await.unwrap(), None);
    }
    let report = w.process_message(&bytes).await.unwrap();
    assert_eq!((report.emitted, report.dropped), (2, 1));
    assert_eq!(take(&seen).len(), 2);
    let v = w.store().guild(G).await.unwrap().unwrap();
    assert_eq!(v.channels[&C].value.name.as_deref(), Some("b"));
}

/// Two replicas race on one register through separate connections: the
/// highest version wins, whatever the interleaving (the check-and-write is
/// one Lua script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_racing_keep_the_highest_version() {
    let a = redis().await;
    let prefix_store = a.clone();
    let mut tasks = Vec::new();
    for replica in 0..2u64 {
        let s = a.clone();
        tasks.push(tokio::spawn(async move {
            let (w, _) = worker(s);
            // Replica 0 sends even seqs descending, replica 1 odd ascending.
            let seqs: Vec<u64> = if replica == 0 {
                (1..=100).rev().filter(|s| s % 2 == 0).collect()
            } else {
                (1..=100).filter(|s| s % 2 == 1).collect()
            };
            for seq in seqs {
                feed(&w, &[&channel_update(seq, &format!("v{seq}"))]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = prefix_store.guild(G).await.unwrap().unwrap();
    assert_eq!(v.channels[&C].version.seq, 100);
    assert_eq!(v.channels[&C].value.name.as_deref(), Some("v100"));
    prefix_store.purge().await.unwrap();
}

/// A long session: more joins than the delta map keeps. The count stays
/// exact in order and under redelivery of recent events, and both stores
/// fold the same way.
async fn member_count_folds<S: Store>(store: S) -> worker::GuildView {
    let (w, _) = worker(store);
    let n = worker::MAX_COUNT_DELTAS as u64 + 900;
    feed(&w, &[&create(1, GuildCreateKind::Initial, &[], 2)]).await;
    let adds: Vec<Ev> = (0..n)
        .map(|i| member(2 + i, "GUILD_MEMBER_ADD", U + i))
        .collect();
    let refs: Vec<&Ev> = adds.iter().collect();
    feed(&w, &refs).await;
    feed(&w, &refs[refs.len() - 50..]).await;
    let v = w.store().guild(G).await.unwrap().unwrap();
    assert_eq!(v.member_count, 2 + n as i64);
    v
}

#[tokio::test]
async fn member_count_folding_is_exact_and_equal_on_both_stores() {
    let mem = member_count_folds(MemoryStore::new()).await;
    let r = redis().await;
    let red = member_count_folds(r.clone()).await;
    r.purge().await.unwrap();
    assert_eq!(mem, red);
}

/// A GUILD_MEMBERS_CHUNK answers a bot's op 8 (through a relay): it is
/// passed on even when every member it lists is already cached at a newer
/// version, but only on its first delivery.
async fn member_chunks_are_answers_not_stale_writes<S: Store>(store: S) {
    let (w, seen) = worker(store);
    feed(&w, &[&create(5, GuildCreateKind::Joined, &[(C, "a")], 3)]).await;
    feed(&w, &[&member(9, "GUILD_MEMBER_UPDATE", U)]).await;
    assert_eq!(take(&seen), ["GUILD_JOINED", "GUILD_MEMBER_UPDATE"]);
    let chunk = ev(
        7,
        "GUILD_MEMBERS_CHUNK",
        json!({"guild_id": G.to_string(), "chunk_index": 0, "chunk_count": 1, "nonce": "n",
               "members": [{"roles": [], "user": {"id": U.to_string(), "username": "old"}}]}),
    );
    let report = feed(&w, &[&chunk]).await;
    assert_eq!(take(&seen), ["GUILD_MEMBERS_CHUNK"], "{report:?}");
    let view = w.store().guild(G).await.unwrap().unwrap();
    assert_eq!(view.members[&U].version.seq, 9, "the newer member stays");
    feed(&w, &[&chunk]).await;
    assert!(
        take(&seen).is_empty(),
        "a redelivery is not passed on again"
    );
}

#[tokio::test]
async fn memory_member_chunks_are_answers_not_stale_writes() {
    member_chunks_are_answers_not_stale_writes(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_member_chunks_are_answers_not_stale_writes() {
    member_chunks_are_answers_not_stale_writes(redis().await).await;
}
