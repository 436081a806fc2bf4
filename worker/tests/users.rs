//! Users no member refers to are collected, in both stores; the bot's own
//! user (from READY) and recently written users are kept.
#![allow(clippy::unwrap_used)]

use envelope::{Event, GuildCreateKind};
use serde_json::json;
use worker::{MemoryStore, RedisStore, Report, Store, Worker};

const BOT: u64 = 900;
/// received_at of every event; the sweeps' cutoffs are relative to it.
const AT: u64 = 1_700_000_000_000;

struct Ev {
    seq: u64,
    t: &'static str,
    marker: Option<GuildCreateKind>,
    d: String,
}

fn member(uid: u64) -> serde_json::Value {
    json!({"user": {"id": uid.to_string(), "username": format!("u{uid}")}, "roles": []})
}

fn guild_create(seq: u64, gid: u64, users: &[u64]) -> Ev {
    let members: Vec<_> = users.iter().map(|&u| member(u)).collect();
    Ev {
        seq,
        t: "GUILD_CREATE",
        marker: Some(GuildCreateKind::Initial),
        d: json!({"id": gid.to_string(), "name": "g", "owner_id": "1",
                  "member_count": members.len(), "members": members,
                  "channels": [], "roles": [], "emojis": []})
        .to_string(),
    }
}

/// READY (bot user 900, not a member of any guild), guild 10 with users
/// 1, 2, 3, guild 20 with users 3, 4; then 2 and 3 leave guild 10 and 4
/// leaves guild 20 (a member of no guild then: user 2 and 4).
fn log() -> Vec<Ev> {
    vec![
        Ev {
            seq: 1,
            t: "READY",
            marker: None,
            d: json!({"user": {"id": BOT.to_string(), "username": "bot", "bot": true},
                      "guilds": [{"id": "10"}, {"id": "20"}]})
            .to_string(),
        },
        guild_create(2, 10, &[1, 2, 3]),
        guild_create(3, 20, &[3, 4]),
        Ev {
            seq: 4,
            t: "GUILD_MEMBER_REMOVE",
            marker: None,
            d: json!({"guild_id": "10", "user": {"id": "2", "username": "u2"}}).to_string(),
        },
        Ev {
            seq: 5,
            t: "GUILD_MEMBER_REMOVE",
            marker: None,
            d: json!({"guild_id": "10", "user": {"id": "3", "username": "u3"}}).to_string(),
        },
        Ev {
            seq: 6,
            t: "GUILD_MEMBER_REMOVE",
            marker: None,
            d: json!({"guild_id": "20", "user": {"id": "4", "username": "u4"}}).to_string(),
        },
    ]
}

async fn check<S: Store>(worker: &Worker<S>) {
    let mut report = Report::default();
    for e in log() {
        let ev = Event {
            epoch: 1,
            seq: e.seq,
            received_at: AT + e.seq,
            t: e.t,
            guild_id: None,
            guild_create: e.marker,
            d: e.d.as_bytes(),
        };
        worker
            .process_event(envelope::ShardRef::new(0, 1), &ev, &mut report)
            .await
            .unwrap();
    }
    assert!(report.invalid.is_empty(), "{:?}", report.invalid);
    let store = worker.store();
    let present = async |id| store.user(id).await.unwrap().is_some();
    for id in [1, 2, 3, 4, BOT] {
        assert!(present(id).await, "user {id} cached before the sweep");
    }
    // A cutoff before the writes keeps every user: a just-written user may
    // not have its member yet.
    assert_eq!(store.collect_users(AT).await.unwrap(), 0);
    // Past the horizon, the users of no member (2 and 4) go; 3 is still a
    // member of guild 20, the bot is kept though it is no member.
    assert_eq!(store.collect_users(AT + 1_000).await.unwrap(), 2);
    for (id, kept) in [(1, true), (2, false), (3, true), (4, false), (BOT, true)] {
        assert_eq!(present(id).await, kept, "user {id}");
    }
    assert_eq!(store.collect_users(AT + 1_000).await.unwrap(), 0);
}

#[tokio::test]
async fn memory_store_collects_unreferenced_users() {
    let w = Worker::new(MemoryStore::new());
    check(&w).await;
    assert_eq!(w.store().user_count(), 3);
}

#[tokio::test]
async fn redis_store_collects_unreferenced_users() {
    let prefix = format!(
        "bulwark-test-users-{}-{}",
        std::process::id(),
        rand_suffix()
    );
    let store = RedisStore::connect("redis://127.0.0.1:6379/", &prefix)
        .await
        .unwrap();
    let purge = store.clone();
    let w = Worker::new(store);
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), check(&w)).await;
    purge.purge().await.unwrap();
    r.unwrap();
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos().into())
        .unwrap_or(0)
}
