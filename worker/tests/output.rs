//! The output exchange against the real RabbitMQ: clean events reach a
//! bound queue exactly once with their dedup id and headers, a lazy-load
//! GUILD_CREATE is not a join, a duplicate adds nothing, an announcement
//! whose publish failed is published again when the input is redelivered,
//! and a burst goes out in order with its inputs acked in batches.
#![allow(clippy::unwrap_used)]

use envelope::topology::routing_key;
use envelope::{BatchEncoder, Event, GuildCreateKind};
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use worker::output::{GUILD_HEADER, INITIAL_HEADER, SHARD_HEADER, Unconfirmed};
use worker::{AmqpTopology, ConsumeError, MemoryStore, Store, Worker, consume_partition_with};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const G1: u64 = 81384788765712384;
const G2: u64 = 81384788765712385;

fn create(g: u64) -> String {
    json!({"id": g.to_string(), "name": "g", "owner_id": "1", "member_count": 1,
        "channels": [], "roles": [], "members": []})
    .to_string()
}

fn one(seq: u64, t: &str, g: u64, marker: Option<GuildCreateKind>, d: &str) -> Vec<u8> {
    let mut enc = BatchEncoder::new(0, 4).unwrap();
    enc.push(&Event {
        epoch: 1,
        seq,
        received_at: 0,
        t,
        guild_id: Some(g),
        guild_create: marker,
        d: d.as_bytes(),
    })
    .unwrap();
    enc.finish()
}

fn unique(tag: &str) -> String {
    testkit::services::unique_name(tag)
}

/// Declares the topology and a queue bound to every output event.
async fn setup(ch: &Channel, topo: &AmqpTopology) -> String {
    topo.declare(ch).await.unwrap();
    let out = format!("{}.bot", topo.queue_base);
    ch.queue_declare(
        out.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        out.as_str().into(),
        topo.output_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    out
}

async fn cleanup(ch: &Channel, topo: &AmqpTopology, out: &str) {
    ch.queue_delete(out.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    topo.delete(ch).await.unwrap();
}

async fn publish(ch: &Channel, topo: &AmqpTopology, msg: &[u8]) {
    ch.basic_publish(
        topo.exchange.as_str().into(),
        routing_key(0, "BATCH").as_str().into(),
        BasicPublishOptions::default(),
        msg,
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Output messages until one routed `last` arrives (deadline 20 s).
async fn drain_until(ch: &Channel, queue: &str, last: &str) -> Vec<BasicGetMessage> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "only {} output messages",
            got.len()
        );
        match ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => {
                let done = m.delivery.routing_key.as_str() == last;
                got.push(m);
                if done {
                    return got;
                }
            }
            // Polling interval of basic_get, not a synchronisation sleep.
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn header(m: &BasicGetMessage, name: &str) -> Option<AMQPValue> {
    m.delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_events_are_published_once_with_a_dedup_id() {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topo = AmqpTopology::named(&unique("out"), 1);
    let out = setup(&ch, &topo).await;

    let join = one(
        1,
        "GUILD_CREATE",
        G1,
        Some(GuildCreateKind::Joined),
        &create(G1),
    );
    publish(&ch, &topo, &join).await;
    let initial = create(G2);
    publish(
        &ch,
        &topo,
        &one(
            2,
            "GUILD_CREATE",
            G2,
            Some(GuildCreateKind::Initial),
            &initial,
        ),
    )
    .await;
    publish(&ch, &topo, &join).await; // the same event delivered again
    publish(&ch, &topo, &one(3, "MESSAGE_CREATE", G1, None, "{}")).await;

    let worker = Arc::new(Worker::new(MemoryStore::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consume_partition_with(
        worker,
        conn.create_channel().await.unwrap(),
        topo.clone(),
        0,
        8,
        Some(Arc::new(Unconfirmed::default())),
        async move {
            let _ = stopped.await;
        },
    ));
    let got = drain_until(&ch, &out, "MESSAGE_CREATE").await;
    let keys: Vec<&str> = got
        .iter()
        .map(|m| m.delivery.routing_key.as_str())
        .collect();
    assert_eq!(keys, ["GUILD_JOINED", "GUILD_AVAILABLE", "MESSAGE_CREATE"]);
    let ids: Vec<String> = got
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .clone()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["0:1:1", "0:1:2", "0:1:3"]);
    assert_eq!(
        header(&got[0], GUILD_HEADER),
        Some(AMQPValue::LongString(G1.to_string().as_str().into()))
    );
    assert_eq!(header(&got[0], SHARD_HEADER), Some(AMQPValue::LongUInt(0)));
    assert_eq!(header(&got[0], INITIAL_HEADER), None);
    assert_eq!(
        header(&got[1], INITIAL_HEADER),
        Some(AMQPValue::Boolean(true))
    );
    assert_eq!(got[1].delivery.data, initial.as_bytes());

    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    // Every input was acked after its output was confirmed, so nothing
    // more can still arrive: the duplicate join published nothing.
    assert_eq!((stats.acked, stats.published), (4, 3));
    let extra = ch
        .basic_get(out.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(
        extra.is_none(),
        "{:?}",
        extra.map(|m| m.delivery.routing_key)
    );
    cleanup(&ch, &topo, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_goes_out_in_order_and_its_inputs_are_acked_in_batches() {
    const N: u64 = 1_000;
    const PREFETCH: u16 = 64;
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topo = AmqpTopology::named(&unique("out-burst"), 1);
    let out = setup(&ch, &topo).await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut confirms = Vec::new();
    for seq in 1..=N {
        let m = one(seq, "MESSAGE_CREATE", G1, None, "{}");
        confirms.push(
            ch.basic_publish(
                topo.exchange.as_str().into(),
                routing_key(0, "BATCH").as_str().into(),
                BasicPublishOptions::default(),
                &m,
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consume_partition_with(
        Arc::new(Worker::new(MemoryStore::new())),
        conn.create_channel().await.unwrap(),
        topo.clone(),
        0,
        PREFETCH,
        Some(Arc::new(Unconfirmed::default())),
        async move {
            let _ = stopped.await;
        },
    ));
    // Every output, in gateway order: the publishes of many inputs are
    // queued without waiting for each other.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ids = Vec::new();
    while ids.len() < N as usize {
        assert!(Instant::now() < deadline, "only {} outputs", ids.len());
        match ch
            .basic_get(out.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => ids.push(
                m.delivery
                    .properties
                    .message_id()
                    .clone()
                    .unwrap()
                    .to_string(),
            ),
            // Polling interval of basic_get, not a synchronisation sleep.
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let want: Vec<String> = (1..=N).map(|seq| format!("0:1:{seq}")).collect();
    assert_eq!(ids, want);

    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.acked, stats.published), (N, N));
    // A frame acks at most half the prefetch window, and inputs that were
    // waiting together share one.
    assert!(
        stats.ack_frames >= N / u64::from(PREFETCH / 2) && stats.ack_frames < N,
        "{} ack frames for {N} inputs",
        stats.ack_frames
    );
    // The consumer's channel is closed, so anything it did not ack would
    // be back in the queue.
    let q = envelope::topology::inspect_queue(&ch, &topo.queue(0))
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0, "inputs left unacked");
    cleanup(&ch, &topo, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_is_not_acked_and_the_redelivery_publishes_it() {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topo = AmqpTopology::named(&unique("out-retry"), 1);
    let out = setup(&ch, &topo).await;
    publish(
        &ch,
        &topo,
        &one(
            1,
            "GUILD_CREATE",
            G1,
            Some(GuildCreateKind::Joined),
            &create(G1),
        ),
    )
    .await;

    let joins = Arc::new(AtomicUsize::new(0));
    let j = joins.clone();
    let worker = Arc::new(
        Worker::new(MemoryStore::new()).on("GUILD_JOINED", move |_| {
            j.fetch_add(1, Ordering::SeqCst);
        }),
    );
    let unconfirmed = Arc::new(Unconfirmed::default());
    // First consumer: its output exchange does not exist, so the broker
    // closes the channel on the publish; the input must stay unacked.
    let mut broken = topo.clone();
    broken.output_exchange = format!("{}.missing", topo.queue_base);
    let first = tokio::time::timeout(
        Duration::from_secs(20),
        consume_partition_with(
            worker.clone(),
            conn.create_channel().await.unwrap(),
            broken,
            0,
            1,
            Some(unconfirmed.clone()),
            std::future::pending(),
        ),
    )
    .await
    .expect("the consumer did not stop on the failed publish");
    assert!(matches!(first, Err(ConsumeError::Publish(_))), "{first:?}");
    assert_eq!(joins.load(Ordering::SeqCst), 1);
    assert_eq!(unconfirmed.len(), 1);

    // Second consumer, same process: the broker redelivers the message, the
    // store sees nothing new, and the held announcement is published.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consume_partition_with(
        worker.clone(),
        conn.create_channel().await.unwrap(),
        topo.clone(),
        0,
        1,
        Some(unconfirmed.clone()),
        async move {
            let _ = stopped.await;
        },
    ));
    let got = drain_until(&ch, &out, "GUILD_JOINED").await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0]
            .delivery
            .properties
            .message_id()
            .clone()
            .unwrap()
            .as_str(),
        "0:1:1"
    );
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.acked, stats.published), (1, 1));
    assert!(unconfirmed.is_empty());
    // In-process handlers stay at most once.
    assert_eq!(joins.load(Ordering::SeqCst), 1);
    cleanup(&ch, &topo, &out).await;
}

/// A worker killed mid-flight (after the store write, before its output was
/// published) must not lose the GUILD_JOINED: the broker redelivers the
/// input and the next process, with nothing held in memory, re-derives the
/// announcement from what the Redis store remembers, under the same
/// `message_id`. A sharder duplicate of the same event (not a redelivery)
/// still announces nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_output_confirm_does_not_lose_the_join() {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topo = AmqpTopology::named(&unique("out-crash"), 1);
    let out = setup(&ch, &topo).await;
    let join = one(
        1,
        "GUILD_CREATE",
        G1,
        Some(GuildCreateKind::Joined),
        &create(G1),
    );
    publish(&ch, &topo, &join).await;
    let store = worker::RedisStore::connect("redis://127.0.0.1:6379/", &unique("crash"))
        .await
        .unwrap();

    // First process: dies inside the GUILD_JOINED handler, which runs after
    // the store write and before the output publish.
    let doomed = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let w1 =
        Arc::new(Worker::new(store.clone()).on("GUILD_JOINED", |_| panic!("killed mid-flight")));
    let first = tokio::spawn(consume_partition_with(
        w1,
        doomed.create_channel().await.unwrap(),
        topo.clone(),
        0,
        4,
        Some(Arc::new(Unconfirmed::default())),
        std::future::pending(),
    ));
    let died = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("the first worker never processed the join");
    assert!(died.unwrap_err().is_panic());
    // Its connection goes with the process; the broker requeues the input.
    doomed.close(0, "killed".into()).await.unwrap();
    assert!(store.guild(G1).await.unwrap().is_some(), "store written");

    // Second process: fresh memory, same store.
    let joins = Arc::new(AtomicUsize::new(0));
    let j = joins.clone();
    let w2 = Arc::new(Worker::new(store.clone()).on("GUILD_JOINED", move |_| {
        j.fetch_add(1, Ordering::SeqCst);
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consume_partition_with(
        w2,
        conn.create_channel().await.unwrap(),
        topo.clone(),
        0,
        4,
        Some(Arc::new(Unconfirmed::default())),
        async move {
            let _ = stopped.await;
        },
    ));
    let got = drain_until(&ch, &out, "GUILD_JOINED").await;
    assert_eq!(got.len(), 1);
    let id = |m: &BasicGetMessage| {
        m.delivery
            .properties
            .message_id()
            .clone()
            .map(|s| s.to_string())
    };
    assert_eq!(id(&got[0]).as_deref(), Some("0:1:1"));
    // Handlers stay at most once: the dead process had its call.
    assert_eq!(joins.load(Ordering::SeqCst), 0);

    // The sharder republishing the same join (not a broker redelivery)
    // announces nothing; a later event shows the queue moved past it.
    publish(&ch, &topo, &join).await;
    let msg = json!({"id": "5", "channel_id": "6", "guild_id": G1.to_string(), "content": "hi"})
        .to_string();
    publish(&ch, &topo, &one(2, "MESSAGE_CREATE", G1, None, &msg)).await;
    let got = drain_until(&ch, &out, "MESSAGE_CREATE").await;
    let keys: Vec<&str> = got
        .iter()
        .map(|m| m.delivery.routing_key.as_str())
        .collect();
    assert_eq!(keys, ["MESSAGE_CREATE"]);
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.acked, 3);
    assert_eq!(joins.load(Ordering::SeqCst), 0);
    store.purge().await.unwrap();
    cleanup(&ch, &topo, &out).await;
}
