//! Store-level cases: a store failure in the middle of a join, the
//! optional collections (voice states, presences), and the member lookup.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The real in-memory store with one injected failure: the `fail_at`-th
/// apply returns an error (as a Redis timeout would), once.
struct FailOnce {
    inner: MemoryStore,
    calls: AtomicUsize,
    fail_at: usize,
}

impl Store for FailOnce {
    async fn apply(&self, m: worker::Mutation) -> Result<bool, worker::StoreError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(worker::StoreError::Unsupported("injected failure"));
        }
        self.inner.apply(m).await
    }
    async fn first_delivery(
        &self,
        shard: envelope::ShardRef,
        v: envelope::Version,
    ) -> Result<bool, worker::StoreError> {
        self.inner.first_delivery(shard, v).await
    }
    async fn admit(&self, shard: envelope::ShardRef, guild: u64) -> Result<(), worker::StoreError> {
        self.inner.admit(shard, guild).await
    }
    async fn guild(&self, g: u64) -> Result<Option<worker::GuildView>, worker::StoreError> {
        self.inner.guild(g).await
    }
    async fn user(&self, u: u64) -> Result<Option<worker::User>, worker::StoreError> {
        self.inner.user(u).await
    }
}

#[tokio::test]
async fn a_store_failure_mid_join_is_retried_and_announced_once() {
    let members = json!([
        {"user": {"id": U.to_string(), "username": "a"}, "roles": []},
        {"user": {"id": (U + 1).to_string(), "username": "b"}, "roles": []},
    ]);
    let d = json!({"id": G.to_string(), "name": "g", "owner_id": "1", "member_count": 2,
                   "channels": [], "roles": [], "members": members})
    .to_string();
    // Mutations: user, user, snapshot. Fail on each in turn.
    for fail_at in 1..=3 {
        let store = FailOnce {
            inner: MemoryStore::new(),
            calls: AtomicUsize::new(0),
            fail_at,
        };
        let (w, seen) = worker(store);
        let event = Event {
            epoch: 1,
            seq: 1,
            received_at: 0,
            t: "GUILD_CREATE",
            guild_id: Some(G),
            guild_create: Some(GuildCreateKind::Joined),
            d: d.as_bytes(),
        };
        let mut report = Report::default();
        assert!(
            w.process_event(envelope::ShardRef::new(0, 1), &event, &mut report)
                .await
                .is_err()
        );
        // The consumer retries the message; then redeliveries follow.
        for _ in 0..3 {
            w.process_event(envelope::ShardRef::new(0, 1), &event, &mut report)
                .await
                .unwrap();
        }
        assert_eq!(take(&seen), ["GUILD_JOINED"], "failure at apply {fail_at}");
        let v = w.store().guild(G).await.unwrap().unwrap();
        assert_eq!((v.members.len(), v.member_count), (2, 2));
    }
}

async fn voice_and_presence_follow_the_rules<S: Store>(store: S) {
    let (w, _) = worker(store);
    let w = w.with_options(worker::CacheOptions {
        presences: true,
        voice_states: true,
    });
    let voice = |seq, channel: Option<u64>| {
        ev(
            seq,
            "VOICE_STATE_UPDATE",
            json!({"guild_id": G.to_string(), "user_id": U.to_string(),
                   "channel_id": channel.map(|c| c.to_string()), "self_mute": true}),
        )
    };
    let presence = |seq, status: &str| {
        ev(
            seq,
            "PRESENCE_UPDATE",
            json!({"guild_id": G.to_string(), "user": {"id": U.to_string()}, "status": status}),
        )
    };
    feed(&w, &[&voice(3, Some(C)), &presence(4, "idle")]).await;
    let v = w.store().guild(G).await.unwrap().unwrap();
    assert_eq!(v.voice_states[&U].value.channel_id, C);
    assert_eq!(v.voice_states[&U].value.flags, 1);
    assert_eq!(v.presences[&U].value.status, worker::Status::Idle);
    // Leaving voice and going offline delete; older events cannot undo it.
    feed(
        &w,
        &[
            &voice(6, None),
            &presence(7, "offline"),
            &voice(5, Some(C)),
            &presence(5, "dnd"),
        ],
    )
    .await;
    let v = w.store().guild(G).await.unwrap().unwrap();
    assert!(v.voice_states.is_empty() && v.presences.is_empty(), "{v:?}");
    // A GUILD_CREATE lists voice states completely.
    let mut create = create(9, GuildCreateKind::Available, &[], 1);
    let mut d: serde_json::Value = serde_json::from_str(&create.d).unwrap();
    d["voice_states"] =
        json!([{"user_id": (U + 1).to_string(), "channel_id": C.to_string(), "deaf": true}]);
    create.d = d.to_string();
    feed(&w, &[&create]).await;
    let v = w.store().guild(G).await.unwrap().unwrap();
    assert_eq!(v.voice_states.keys().copied().collect::<Vec<_>>(), [U + 1]);
    assert_eq!(v.voice_states[&(U + 1)].value.flags, 8);
    // Bad status: an invalid payload, not a panic.
    let report = feed(&w, &[&presence(10, "sleepy")]).await;
    assert_eq!(report.invalid.len(), 1);
}

#[tokio::test]
async fn memory_voice_and_presence_follow_the_rules() {
    voice_and_presence_follow_the_rules(MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_voice_and_presence_follow_the_rules() {
    let s = redis().await;
    voice_and_presence_follow_the_rules(s.clone()).await;
    s.purge().await.unwrap();
}

#[tokio::test]
async fn presences_are_not_cached_unless_enabled() {
    let (w, seen) = worker(MemoryStore::new());
    let p = ev(
        3,
        "PRESENCE_UPDATE",
        json!({"guild_id": G.to_string(), "user": {"id": U.to_string()}, "status": "online"}),
    );
    feed(&w, &[&p, &p]).await;
    assert_eq!(w.store().guild(G).await.unwrap(), None);
    // Still forwarded, once.
    assert_eq!(take(&seen), ["PRESENCE_UPDATE"]);
}

/// The store's default `member` (read through the guild view) and the
/// in-memory store's direct lookup agree: live member, unknown member,
/// unknown guild, removed guild.
#[tokio::test]
async fn member_lookup_agrees_with_the_guild_view() {
    struct ViewOnly(MemoryStore);
    impl Store for ViewOnly {
        async fn apply(&self, m: worker::Mutation) -> Result<bool, worker::StoreError> {
            self.0.apply(m).await
        }
        async fn first_delivery(
            &self,
            s: envelope::ShardRef,
            v: envelope::Version,
        ) -> Result<bool, worker::StoreError> {
            self.0.first_delivery(s, v).await
        }
        async fn admit(&self, s: envelope::ShardRef, g: u64) -> Result<(), worker::StoreError> {
            self.0.admit(s, g).await
        }
        async fn guild(&self, g: u64) -> Result<Option<worker::GuildView>, worker::StoreError> {
            self.0.guild(g).await
        }
        async fn user(&self, u: u64) -> Result<Option<worker::User>, worker::StoreError> {
            self.0.user(u).await
        }
    }
    let direct = Worker::new(MemoryStore::new());
    let view = Worker::new(ViewOnly(MemoryStore::new()));
    let join = create(1, GuildCreateKind::Joined, &[], 1);
    let add = member(2, "GUILD_MEMBER_ADD", U);
    let probes = [(G, U), (G, U + 1), (G + 1, U)];
    let mut seen = Vec::new();
    for step in [
        vec![&join, &add],
        vec![&ev(3, "GUILD_DELETE", json!({"id": G.to_string()}))],
    ] {
        feed(&direct, &step).await;
        feed(&view, &step).await;
        for (g, u) in probes {
            let a = direct.store().member(g, u).await.unwrap();
            let b = view.store().member(g, u).await.unwrap();
            assert_eq!(a, b, "guild {g} user {u}");
            seen.push(a.is_some());
        }
    }
    assert_eq!(seen, [true, false, false, false, false, false]);
}
