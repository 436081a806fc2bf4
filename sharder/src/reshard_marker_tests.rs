//! Reshard markers and two shard totals through the real AMQP sink
//! (RabbitMQ on 127.0.0.1:5672), each test on its own exchange and queues.

use super::*;
use crate::amqp_sink::{AmqpSink, AmqpSinkConfig};
use config::Secret;
use envelope::ReshardPhase;
use envelope::topology::AmqpTopology;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use testkit::services::{AMQP_ADDR, AMQP_URL, amqp_url_via};
use testkit::{CutProxy, unique_name};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);
const PARTITIONS: u32 = 4;

fn config(url: &str, base: &str) -> AmqpSinkConfig {
    AmqpSinkConfig {
        url: Secret::new(url),
        topology: AmqpTopology::named(base, PARTITIONS),
        buffer: 256,
        confirm_window: 8,
        batch_max_events: 64,
        reconnect_base: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        confirm_timeout: Duration::from_secs(5),
        linger: Duration::ZERO,
    }
}

fn resolver() -> dnscache::Resolver {
    dnscache::Resolver::new(&config::DnsConfig::default()).unwrap()
}

/// A MESSAGE_CREATE of shard `shard` of `total` whose `d` names both.
fn event(
    shard: u32,
    total: u32,
    seq: u64,
    ack: &mpsc::UnboundedSender<Confirmation>,
) -> ShardEvent {
    let header = EventHeader {
        shard_id: shard,
        num_shards: total,
        epoch: u64::from(total),
        seq,
        guild_id: Some(u64::from(shard) << 22),
        guild_create: None,
    };
    let d = format!(r#"{{"shard":{shard},"total":{total},"seq":{seq}}}"#);
    ShardEvent::new(header, "MESSAGE_CREATE".into(), Bytes::from(d), ack.clone())
}

/// Every message of every partition queue, in queue order, as
/// `(partition, header shard, header total, events as (t, d))`; deletes
/// the topology.
async fn drain(topo: &AmqpTopology) -> Vec<(u32, u32, u32, Vec<(String, String)>)> {
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
            let batch = envelope::decode(&m.data).unwrap();
            let events = batch
                .events
                .iter()
                .map(|e| (e.t.to_owned(), String::from_utf8_lossy(e.d).into_owned()))
                .collect();
            got.push((p, batch.shard_id, batch.num_shards, events));
        }
    }
    topo.delete(&ch).await.unwrap();
    got
}

async fn confirmed(rx: &mut mpsc::UnboundedReceiver<Confirmation>, n: usize) {
    for _ in 0..n {
        timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    }
}

/// Shard 1 of 8 and shard 1 of 16 publish at once during a reshard. Staged
/// in one round (the broker is cut while they are sent), each event must
/// still travel under its own total's header: the worker keys READYs and
/// delivery windows by shard *and* total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_totals_of_one_shard_id_are_framed_apart() {
    let proxy = CutProxy::start(AMQP_ADDR).await.unwrap();
    let base = unique_name("two-totals");
    let cfg = config(&amqp_url_via(proxy.addr()), &base);
    let topo = cfg.topology.clone();
    let (sink, task) = AmqpSink::start(resolver(), cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    proxy.cut();
    for seq in 1..=40u64 {
        let total = if seq % 2 == 0 { 8 } else { 16 };
        sink.send(event(1, total, seq, &tx)).await.unwrap();
    }
    proxy.restore();
    confirmed(&mut rx, 40).await;
    drop(sink);
    timeout(WAIT, task).await.unwrap().unwrap();
    let mut seen = 0;
    for (p, shard, total, events) in drain(&topo).await {
        assert_eq!((p, shard), (1, 1));
        for (_, d) in events {
            assert!(
                d.contains(&format!(r#""total":{total},"#)),
                "an event of another total under the header of shard 1 of {total}: {d}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 40, "every event arrives ({seen})");
}

/// `Completed` is published after the old total's events were confirmed:
/// in every partition it is the last message, and it reads back as the
/// marker that was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_reaches_every_partition_behind_the_confirmed_events() {
    let base = unique_name("marker");
    let cfg = config(AMQP_URL, &base);
    let topo = cfg.topology.clone();
    let (sink, task) = AmqpSink::start(resolver(), cfg);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for shard in 0..8 {
        for seq in 1..=5 {
            sink.send(event(shard, 8, seq, &tx)).await.unwrap();
        }
    }
    confirmed(&mut rx, 40).await;
    let marker = ReshardMarker {
        id: 1_700_000_000_000,
        phase: ReshardPhase::Completed,
        from: 8,
        to: 16,
        at_ms: 1_700_000_060_000,
    };
    publish_marker(&sink, marker, PARTITIONS, WAIT)
        .await
        .unwrap();
    drop(sink);
    timeout(WAIT, task).await.unwrap().unwrap();
    let got = drain(&topo).await;
    for p in 0..PARTITIONS {
        let last = got.iter().rfind(|m| m.0 == p).unwrap();
        assert_eq!((last.1, last.2), (p, 16), "marker header: shard p of 16");
        let (t, d) = last.3.last().unwrap();
        assert_eq!(t, MARKER_EVENT);
        let back: ReshardMarker = serde_json::from_str(d).unwrap();
        assert_eq!(back, marker);
        let events = got
            .iter()
            .filter(|m| m.0 == p)
            .map(|m| m.3.len())
            .sum::<usize>();
        assert_eq!(
            events,
            2 * 5 + 1,
            "two shards of 8 per partition, then the marker"
        );
    }
}

/// A marker the layout cannot route is refused before anything is sent.
#[tokio::test]
async fn a_marker_for_more_partitions_than_shards_is_refused() {
    let (sink, _rx) = crate::sink::ChannelSink::new(4, true);
    let marker = ReshardMarker {
        id: 1,
        phase: ReshardPhase::Started,
        from: 2,
        to: 4,
        at_ms: 0,
    };
    let err = publish_marker(&sink, marker, 8, WAIT).await.unwrap_err();
    assert!(matches!(err, MarkerPublishError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("must divide"));
}
