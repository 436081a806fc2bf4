//! `worker::run` against the real RabbitMQ: once its token is cancelled it
//! returns promptly with a drained report, and its consumer has cancelled
//! its subscription (so the single-active-consumer role moves at once).
#![allow(clippy::unwrap_used)]

use lapin::{Channel, Connection, ConnectionProperties};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Consumers of `queue`, or None while it does not exist (a passive
/// declare of a missing queue closes the channel, so a fresh one each time).
async fn consumers(conn: &Connection, queue: &str) -> Option<u32> {
    let ch: Channel = conn.create_channel().await.unwrap();
    let q = envelope::topology::inspect_queue(&ch, queue).await.ok()?;
    let _ = ch.close(200, "done".into()).await;
    Some(q.consumer_count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_cancels_its_subscription_and_returns_drained() {
    let base = testkit::unique_name("run");
    let topo = worker::AmqpTopology::named(&base, 1);
    let cfg = config::Config::from_toml_str(
        &format!(
            "[amqp]\nurl = \"{AMQP}\"\npartitions = 1\n\
             [worker]\namqp_topology_base = \"{base}\"\nhttp_listen = \"127.0.0.1:0\"\n"
        ),
        "test",
        Vec::new(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker::run(cfg, shutdown.clone()));

    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let queue = topo.queue(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumers(&conn, &queue).await != Some(1) {
        if run.is_finished() {
            panic!("run ended before consuming: {:?}", run.await);
        }
        assert!(
            Instant::now() < deadline,
            "no consumer on {queue} within 30 s"
        );
        // Polling interval of the broker query, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let cancelled = Instant::now();
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run did not return within 5 s of the cancellation")
        .unwrap()
        .unwrap();
    let took = cancelled.elapsed();
    assert!(report.drained, "{report:?}");
    assert_eq!(report.partitions, vec![0]);
    assert_eq!(
        consumers(&conn, &queue).await,
        Some(0),
        "the subscription outlived the run"
    );
    println!("worker::run returned {took:?} after the cancellation");

    let ch = conn.create_channel().await.unwrap();
    topo.delete(&ch).await.unwrap();
}
