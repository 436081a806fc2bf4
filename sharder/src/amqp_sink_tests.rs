//! The AMQP sink against the real RabbitMQ (127.0.0.1:5672), each test on
//! its own exchange and queues, deleted at the end. Outages go through a
//! TCP proxy the test cuts and restores.

use super::*;
use crate::amqp_publisher::ROUNDS_IN_FLIGHT;
use crate::guilds::GuildCreateKind;
use crate::sink::{Confirmation, EventHeader};
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use testkit::services::{AMQP_ADDR, AMQP_URL, amqp_url_via};
use testkit::{CutProxy, unique_name as unique};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(20);

fn config(url: &str, base: &str) -> AmqpSinkConfig {
    AmqpSinkConfig {
        url: Secret::new(url),
        topology: AmqpTopology::named(base, 4),
        buffer: 64,
        confirm_window: 8,
        batch_max_events: 16,
        reconnect_base: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        confirm_timeout: Duration::from_secs(5),
        linger: Duration::ZERO,
    }
}

fn resolver() -> dnscache::Resolver {
    dnscache::Resolver::new(&config::DnsConfig::default()).unwrap()
}

fn event(
    shard_id: u32,
    seq: u64,
    t: &str,
    guild_create: Option<GuildCreateKind>,
    ack: &mpsc::UnboundedSender<Confirmation>,
) -> ShardEvent {
    let header = EventHeader {
        shard_id,
        num_shards: 8,
        epoch: 3,
        seq,
        guild_id: Some(u64::from(shard_id) << 22 | seq),
        guild_create,
    };
    let d = format!(r#"{{"n":{seq}}}"#);
    ShardEvent::new(header, t.into(), Bytes::from(d), ack.clone())
}

/// Reads every queue of `topo` empty; returns `(shard, seq, routing key)`.
async fn drain(topo: &AmqpTopology) -> Vec<(u32, u64, String)> {
    let conn = resolver()
        .amqp_connect(AMQP_URL, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    for p in 0..topo.partitions {
        let q = topo.queue(p);
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let n = ch
            .queue_declare(q.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count();
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                // One tag per queue: lapin cancels a dropped consumer in the
                // background, so reusing a tag on this channel races it.
                format!("drain-{p}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for _ in 0..n {
            let m = timeout(WAIT, consumer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let key = m.routing_key.as_str().to_owned();
            assert_eq!(m.properties.delivery_mode(), &Some(2));
            let batch = envelope::decode(&m.data).unwrap();
            assert_eq!(envelope::topology::partition(batch.shard_id, 4), p);
            assert_eq!(batch.num_shards, 8);
            if batch.events.len() == 1 {
                assert_eq!(key, format!("{p}.{}", batch.events[0].t));
            } else {
                assert_eq!(key, format!("{p}.BATCH"));
            }
            let mut prev = 0;
            for e in &batch.events {
                assert!(e.seq > prev, "gateway order inside a batch");
                prev = e.seq;
                assert_eq!(e.epoch, 3);
                assert_eq!(e.guild_id, Some(u64::from(batch.shard_id) << 22 | e.seq));
                assert_eq!(e.d, format!(r#"{{"n":{}}}"#, e.seq).as_bytes());
                got.push((batch.shard_id, e.seq, e.t.to_owned()));
            }
        }
    }
    topo.delete(&ch).await.unwrap();
    got
}

async fn confirmations(
    rx: &mut mpsc::UnboundedReceiver<Confirmation>,
    n: usize,
) -> BTreeSet<(u64, u64)> {
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        let c = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        seen.insert((c.epoch, c.seq));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_with_its_envelope_and_is_confirmed() {
    let base = unique("sink");
    let cfg = config(AMQP_URL, &base);
    let topo = cfg.topology.clone();
    let (sink, task) = AmqpSink::start(resolver(), cfg);
    let mut sent = BTreeSet::new();
    let mut rxs = Vec::new();
    for shard in 0..3u32 {
        let (tx, rx) = mpsc::unbounded_channel();
        rxs.push(rx);
        for seq in 1..=100u64 {
            let t = if seq % 10 == 0 {
                "TYPING_START"
            } else {
                "MESSAGE_CREATE"
            };
            sink.send(event(shard, seq, t, None, &tx)).await.unwrap();
            sent.insert((shard, seq, t.to_owned()));
        }
        // A GUILD_CREATE without a marker cannot travel: skipped, confirmed.
        sink.send(event(shard, 101, "GUILD_CREATE", None, &tx))
            .await
            .unwrap();
        sink.send(event(
            shard,
            102,
            "GUILD_CREATE",
            Some(GuildCreateKind::Joined),
            &tx,
        ))
        .await
        .unwrap();
        sent.insert((shard, 102, "GUILD_CREATE".to_owned()));
    }
    for rx in &mut rxs {
        let seen = confirmations(rx, 102).await;
        assert_eq!(seen, (1..=102).map(|s| (3, s)).collect());
    }
    assert_eq!(sink.stats().invalid_events.load(Ordering::Relaxed), 3);
    drop(sink);
    timeout(WAIT, task).await.unwrap().unwrap();
    let got: BTreeSet<_> = drain(&topo).await.into_iter().collect();
    assert_eq!(got, sent, "every valid event once or more, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_the_buffer_stays_bounded() {
    let proxy = CutProxy::start(AMQP_ADDR).await.unwrap();
    let base = unique("outage");
    let cfg = config(&amqp_url_via(proxy.addr()), &base);
    let topo = cfg.topology.clone();
    let bound = (cfg.buffer + (cfg.confirm_window + 1) * cfg.batch_max_events) as u64;
    let (sink, task) = AmqpSink::start(resolver(), cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for seq in 1..=40 {
        sink.send(event(1, seq, "MESSAGE_CREATE", None, &tx))
            .await
            .unwrap();
    }
    confirmations(&mut rx, 40).await;

    proxy.cut();
    let producer = {
        let sink = sink.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for seq in 41..=600 {
                let shard = 1 + 4 * (seq as u32 % 2);
                sink.send(event(shard, seq, "MESSAGE_CREATE", None, &tx))
                    .await
                    .unwrap();
            }
        })
    };
    // The buffer fills and `send` waits: the producer cannot finish.
    let deadline = Instant::now() + WAIT;
    while sink.buffered() < 64 {
        assert!(Instant::now() < deadline, "buffer never filled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !producer.is_finished(),
        "send must wait while the broker is away"
    );
    // Nothing published during the outage is confirmed.
    let early = timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(early.is_err(), "confirmed without the broker: {early:?}");

    proxy.restore();
    timeout(WAIT, producer).await.unwrap().unwrap();
    confirmations(&mut rx, 560).await;
    let held = sink.stats().max_held_events.load(Ordering::Relaxed);
    assert!(held <= bound, "held {held} events, bound {bound}");
    assert!(sink.stats().connections.load(Ordering::Relaxed) >= 2);
    drop(sink);
    timeout(WAIT, task).await.unwrap().unwrap();
    let got: BTreeSet<u64> = drain(&topo).await.into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(got, (1..=600).collect::<BTreeSet<_>>(), "nothing lost");
}

/// A confirm that never comes fails the session at the oldest message in
/// flight; it and the ones published after it go out again in their
/// order, so a shard's republished events reach the queue in gateway
/// order. The broker's answers are held back at a proxy (the publishes
/// reach it), so each message is in the queue twice: first as published,
/// then as published again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_unconfirmed_at_a_failure_go_out_again_in_order() {
    let proxy = CutProxy::start(AMQP_ADDR).await.unwrap();
    let base = unique("republish-order");
    let cfg = AmqpSinkConfig {
        confirm_timeout: Duration::from_millis(500),
        ..config(&amqp_url_via(proxy.addr()), &base)
    };
    let topo = cfg.topology.clone();
    let (sink, task) = AmqpSink::start(resolver(), cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    sink.send(event(1, 1, "MESSAGE_CREATE", None, &tx))
        .await
        .unwrap();
    confirmations(&mut rx, 1).await;

    proxy.hold();
    // One message per event, each published before the next is sent: two
    // rounds in flight, then a third that waits for them.
    for seq in 2..=4 {
        sink.send(event(1, seq, "MESSAGE_CREATE", None, &tx))
            .await
            .unwrap();
        let want = seq.min(1 + ROUNDS_IN_FLIGHT);
        let deadline = Instant::now() + WAIT;
        while sink.stats().published.load(Ordering::Relaxed) < want {
            assert!(Instant::now() < deadline, "event {seq} was not published");
            tokio::task::yield_now().await;
        }
    }
    // The confirm timeout: everything unconfirmed is put back.
    let deadline = Instant::now() + WAIT;
    while sink.stats().republished.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the confirm never timed out");
        // Polling interval of the counter, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.release();
    confirmations(&mut rx, 3).await;
    drop(sink);
    timeout(WAIT, task).await.unwrap().unwrap();

    let seqs: Vec<u64> = drain(&topo).await.into_iter().map(|(_, s, _)| s).collect();
    // As first published (1, 2, 3), then everything unconfirmed again, in
    // order (2, 3, 4). Before, the oldest went behind the others: 3, 2, 4.
    assert_eq!(seqs, [1, 2, 3, 2, 3, 4]);
}

/// While [`ROUNDS_IN_FLIGHT`] rounds await their confirms, events that
/// arrive one at a time wait and go out together, a message per shard,
/// instead of a message each. The broker's confirms are held back at a
/// proxy so that the pipe stays busy for exactly as long as the test needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pipe_gathers_events_into_one_message_per_shard() {
    const TRICKLED: u64 = 300;
    let proxy = CutProxy::start(AMQP_ADDR).await.unwrap();
    let base = unique("gather");
    let mut cfg = config(&amqp_url_via(proxy.addr()), &base);
    cfg.buffer = 1024;
    cfg.confirm_window = 256;
    cfg.batch_max_events = 256;
    let topo = cfg.topology.clone();
    let (sink, task) = AmqpSink::start(resolver(), cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Connected, with an idle pipe: a lone event goes out at once.
    sink.send(event(1, 1, "MESSAGE_CREATE", None, &tx))
        .await
        .unwrap();
    confirmations(&mut rx, 1).await;
    assert_eq!(sink.stats().published.load(Ordering::Relaxed), 1);

    proxy.hold();
    for seq in 2..2 + TRICKLED {
        sink.send(event(
            1 + 4 * (seq as u32 % 2),
            seq,
            "MESSAGE_CREATE",
            None,
            &tx,
        ))
        .await
        .unwrap();
        // One at a time: the next event only once the publisher took this
        // one. Each of the first events must open a round of its own, so
        // the next waits until that round went out: taken from the channel
        // is not yet framed, and a round framed late would hold two events
        // of two shards, two messages.
        let opens_a_round = seq - 1 <= ROUNDS_IN_FLIGHT;
        let deadline = Instant::now() + WAIT;
        while if opens_a_round {
            sink.stats().published.load(Ordering::Relaxed) < seq
        } else {
            sink.buffered() > 0
        } {
            assert!(
                Instant::now() < deadline,
                "the publisher stopped taking events (event {seq})"
            );
            tokio::task::yield_now().await;
        }
    }
    // The first two trickled events each opened a round; the rest wait.
    assert_eq!(
        sink.stats().published.load(Ordering::Relaxed),
        1 + ROUNDS_IN_FLIGHT,
        "events published one by one while the pipe was busy"
    );

    proxy.release();
    let seen = confirmations(&mut rx, TRICKLED as usize).await;
    assert_eq!(seen, (2..2 + TRICKLED).map(|s| (3, s)).collect());
    // The rest: one message per shard (two shards, 149 events each).
    assert_eq!(
        sink.stats().published.load(Ordering::Relaxed),
        1 + ROUNDS_IN_FLIGHT + 2
    );
    drop(sink);
    timeout(WAIT, task).await.unwrap().unwrap();
    let got: BTreeSet<u64> = drain(&topo).await.into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(
        got,
        (1..2 + TRICKLED).collect::<BTreeSet<_>>(),
        "nothing lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_round_carries_a_trickle_in_one_message_per_shard() {
    const LINGER: Duration = Duration::from_millis(300);
    let base = unique("linger");
    let mut cfg = config(AMQP_URL, &base);
    cfg.linger = LINGER;
    cfg.batch_max_events = 64;
    let topo = cfg.topology.clone();
    let (sink, task) = AmqpSink::start(resolver(), cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // A lone event waits the linger out, then goes alone.
    let sent = Instant::now();
    sink.send(event(1, 1, "MESSAGE_CREATE", None, &tx))
        .await
        .unwrap();
    confirmations(&mut rx, 1).await;
    assert!(
        sent.elapsed() >= LINGER,
        "went out after {:?}",
        sent.elapsed()
    );
    assert_eq!(sink.stats().published.load(Ordering::Relaxed), 1);
    // Twenty events of two shards in a row: without the linger the first
    // would go out alone at once; with it, one message per shard.
    let sent = Instant::now();
    for seq in 2..=21u64 {
        let shard = 1 + 4 * (seq as u32 % 2);
        sink.send(event(shard, seq, "MESSAGE_CREATE", None, &tx))
            .await
            .unwrap();
    }
    let seen = confirmations(&mut rx, 20).await;
    assert_eq!(seen, (2..=21).map(|s| (3, s)).collect());
    assert!(sent.elapsed() >= LINGER);
    assert_eq!(sink.stats().published.load(Ordering::Relaxed), 1 + 2);
    // Shutdown during a linger: the round goes out and is confirmed.
    sink.send(event(1, 22, "MESSAGE_CREATE", None, &tx))
        .await
        .unwrap();
    drop(sink);
    timeout(WAIT, task).await.unwrap().unwrap();
    confirmations(&mut rx, 1).await;
    let got: BTreeSet<u64> = drain(&topo).await.into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(got, (1..=22).collect::<BTreeSet<_>>(), "nothing lost");
}

/// Throughput into RabbitMQ with confirms (run by hand:
/// `cargo test -p sharder --lib throughput -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn throughput_with_confirms() {
    const EVENTS: u64 = 100_000;
    let base = unique("throughput");
    let mut cfg = config(AMQP_URL, &base);
    cfg.buffer = 8192;
    cfg.confirm_window = 256;
    cfg.batch_max_events = 256;
    let topo = cfg.topology.clone();
    let (sink, task) = AmqpSink::start(resolver(), cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let producer = {
        let sink = sink.clone();
        tokio::spawn(async move {
            for seq in 1..=EVENTS {
                let shard = (seq % 8) as u32;
                sink.send(event(shard, seq, "MESSAGE_CREATE", None, &tx))
                    .await
                    .unwrap();
            }
        })
    };
    let mut n = 0;
    while n < EVENTS {
        timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        n += 1;
    }
    let elapsed = started.elapsed();
    producer.await.unwrap();
    println!(
        "{EVENTS} events confirmed in {elapsed:?}: {:.0} events/s, {} messages",
        EVENTS as f64 / elapsed.as_secs_f64(),
        sink.stats().published.load(Ordering::Relaxed)
    );
    drop(sink);
    timeout(WAIT, task).await.unwrap().unwrap();
    drain(&topo).await;
}
