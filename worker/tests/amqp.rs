//! The consumer against the real RabbitMQ: valid messages are applied and
//! acked, poison is dead-lettered with a reason and acked, and the queue
//! keeps flowing past it.
#![allow(clippy::unwrap_used)]

use envelope::topology::{REASON_HEADER, partition, routing_key};
use envelope::{BatchEncoder, Event, GuildCreateKind};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use worker::{AmqpTopology, MemoryStore, Store, StoreError, Worker, consume_partition};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const G: u64 = 81384788765712384;

fn batch(events: &[(u64, &str, Option<GuildCreateKind>, String)]) -> Vec<u8> {
    let mut enc = BatchEncoder::new(0, 4).unwrap();
    for (seq, t, marker, d) in events {
        enc.push(&Event {
            epoch: 1,
            seq: *seq,
            received_at: 0,
            t,
            guild_id: Some(G),
            guild_create: *marker,
            d: d.as_bytes(),
        })
        .unwrap();
    }
    enc.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_and_the_queue_keeps_flowing() {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let base = testkit::services::unique_name("amqp");
    let topo = AmqpTopology::named(&base, 2);
    topo.declare(&ch).await.unwrap();

    let create = json!({"id": G.to_string(), "name": "g", "owner_id": "1", "member_count": 1,
        "channels": [], "roles": [], "members": []})
    .to_string();
    let chan = |name: &str| {
        json!({"id": "5", "type": 0, "name": name, "guild_id": G.to_string()}).to_string()
    };
    let good = batch(&[
        (1, "GUILD_CREATE", Some(GuildCreateKind::Joined), create),
        (2, "CHANNEL_UPDATE", None, chan("a")),
    ]);
    let mixed = batch(&[
        (3, "GUILD_MEMBER_ADD", None, "{broken".into()),
        (4, "CHANNEL_UPDATE", None, chan("b")),
    ]);
    let messages: Vec<Vec<u8>> = vec![
        good.clone(),
        b"{\"op\":0}".to_vec(),
        Vec::new(),
        mixed,
        good, // a redelivery: applied again as a no-op, announced once
        // A sentinel: once its event is seen, every message before it has
        // been processed and acked (one partition is processed in order).
        batch(&[(9, "MESSAGE_CREATE", None, "{}".into())]),
    ];
    let key = routing_key(partition(0, 2), "BATCH");
    for m in &messages {
        ch.basic_publish(
            topo.exchange.as_str().into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            m,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }

    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let worker = Arc::new(Worker::new(MemoryStore::new()).on_any(move |e| {
        s.lock().unwrap().push(e.name().to_owned());
        let _ = tx.send(());
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer_ch = conn.create_channel().await.unwrap();
    let task = tokio::spawn(consume_partition(
        worker.clone(),
        consumer_ch,
        topo.clone(),
        0,
        4,
        async move {
            let _ = stopped.await;
        },
    ));

    // Wait for the dead letters (a condition with a deadline, no sleeps as
    // synchronisation: basic_get polls the broker).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut dead = Vec::new();
    while dead.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "dead letters so far: {}",
            dead.len()
        );
        match ch
            .basic_get(
                topo.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            Some(m) => dead.push(m),
            // Polling interval of basic_get, not a synchronisation sleep.
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            let h = m.delivery.properties.headers().clone().unwrap();
            match h.inner().get(REASON_HEADER) {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                other => panic!("no reason header: {other:?}"),
            }
        })
        .collect();
    assert!(reasons[0].contains("magic"), "{reasons:?}");
    assert!(reasons[1].contains("empty"), "{reasons:?}");
    assert!(reasons[2].contains("GUILD_MEMBER_ADD"), "{reasons:?}");
    assert!(dead[1].delivery.data.is_empty());

    // Every message gets acked, the sentinel last.
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.dead_lettered, 3);
    assert_eq!(stats.acked, 6);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GUILD_JOINED",
            "CHANNEL_UPDATE",
            "CHANNEL_UPDATE",
            "MESSAGE_CREATE"
        ]
    );
    let view = worker.store().guild_now(G).unwrap();
    assert_eq!(view.channels[&5].value.name.as_deref(), Some("b"));

    topo.delete(&ch).await.unwrap();
}

/// The real in-memory store whose first `fail` applies fail, as a Redis
/// outage would.
struct Flaky {
    inner: MemoryStore,
    fail: AtomicUsize,
}

impl Store for Flaky {
    async fn apply(&self, m: worker::Mutation) -> Result<bool, StoreError> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unsupported("injected outage"));
        }
        self.inner.apply(m).await
    }
    async fn first_delivery(
        &self,
        s: envelope::ShardRef,
        v: envelope::Version,
    ) -> Result<bool, StoreError> {
        self.inner.first_delivery(s, v).await
    }
    async fn admit(&self, shard: envelope::ShardRef, guild: u64) -> Result<(), worker::StoreError> {
        self.inner.admit(shard, guild).await
    }
    async fn guild(&self, g: u64) -> Result<Option<worker::GuildView>, StoreError> {
        self.inner.guild(g).await
    }
    async fn user(&self, u: u64) -> Result<Option<worker::User>, StoreError> {
        self.inner.user(u).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_is_retried_in_place_not_dead_lettered() {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let base = testkit::unique_name("retry");
    let topo = AmqpTopology::named(&base, 1);
    topo.declare(&ch).await.unwrap();
    let d = json!({"id": "5", "type": 0, "name": "x", "guild_id": G.to_string()}).to_string();
    let msg = batch(&[(1, "CHANNEL_UPDATE", None, d)]);
    ch.basic_publish(
        topo.exchange.as_str().into(),
        routing_key(0, "CHANNEL_UPDATE").as_str().into(),
        BasicPublishOptions::default(),
        &msg,
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let store = Flaky {
        inner: MemoryStore::new(),
        fail: AtomicUsize::new(3),
    };
    let worker = Arc::new(Worker::new(store).on_any(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send(());
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consume_partition(
        worker.clone(),
        conn.create_channel().await.unwrap(),
        topo.clone(),
        0,
        1,
        async move {
            let _ = stopped.await;
        },
    ));
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("never applied")
        .unwrap();
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.store_retries, 3);
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let dead = ch
        .basic_get(
            topo.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap();
    assert!(dead.is_none());
    topo.delete(&ch).await.unwrap();
}
