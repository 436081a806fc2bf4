//! Shared helpers of the end-to-end tests: a reader of the partition
//! queues, and the test kit's HTTP client, temporary directories and
//! unique names.

#![allow(clippy::unwrap_used, dead_code)]

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use sharder::AmqpTopology;
use std::time::Duration;
use tokio::sync::mpsc;

pub use testkit::TempDir;
// Not every test binary calls the admin endpoints.
pub use testkit::services::AMQP_URL as AMQP;
use testkit::sim_sharder::{MESSAGE_INTENTS, SharderShape, sharder_config};
#[allow(unused_imports)]
pub use testkit::{http, http_with};
// Not every test binary names a resource.
#[allow(unused_imports)]
pub use testkit::unique_name as unique;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One event read from a partition queue.
#[derive(Debug, Clone)]
pub struct Got {
    pub shard_id: u32,
    pub epoch: u64,
    pub seq: u64,
    pub t: String,
    pub received_at: u64,
}

/// Consumes every partition queue of `topo` (declaring it first), sending
/// each decoded event on the returned channel. Keep the connection alive.
pub async fn consume(topo: &AmqpTopology) -> (lapin::Connection, mpsc::UnboundedReceiver<Got>) {
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    topo.declare(&ch).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    for p in 0..topo.partitions {
        let mut consumer = ch
            .basic_consume(
                topo.queue(p).as_str().into(),
                format!("e2e-{p}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = consumer.next().await {
                let batch = envelope::decode(&m.data).unwrap();
                for e in batch.events {
                    let _ = tx.send(Got {
                        shard_id: batch.shard_id,
                        epoch: e.epoch,
                        seq: e.seq,
                        t: e.t.to_owned(),
                        received_at: e.received_at,
                    });
                }
            }
        });
    }
    (conn, rx)
}

/// Deletes the queues and exchanges of `topo`.
pub async fn delete(topo: &AmqpTopology) {
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // Best effort: a test that failed half-way may have declared less.
    let _ = topo.delete(&ch).await;
}

/// Polls `f` every 10 ms until it is true, failing after `within`.
pub async fn until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut f: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A sharder configuration for `sim`: every shard in this process, HTTP on
/// a free loopback port, sessions in `dir`, plus `extra` `[sharder]` keys.
pub fn run_config(sim: &discord_sim::SimHandle, dir: &TempDir, extra: &str) -> config::Config {
    let shape = SharderShape {
        intents: MESSAGE_INTENTS,
        shutdown_grace: "5s",
        extra,
    };
    sharder_config(sim, dir.path(), shape).unwrap()
}

/// An identify scheduler with a plentiful budget at `max_concurrency` 1,
/// one identify per `window`, no Redis lock.
pub fn scheduler(window: Duration) -> sharder::IdentifyScheduler {
    sharder::IdentifyScheduler::new(
        sharder::SessionStartLimit {
            total: 1000,
            remaining: 1000,
            reset_after: Duration::from_secs(3600),
            max_concurrency: 1,
        },
        sharder::IdentifySettings {
            window,
            reserve: 0,
            min_interval: Duration::ZERO,
        },
        None,
    )
}
