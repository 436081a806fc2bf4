//! RabbitMQ unreachable for 30 s while the shards receive events, then
//! back: nothing is lost (the simulator's ledger against what reached the
//! queues), nothing crashes, the sink's memory stays within its bound, and
//! the sink retries the broker no faster than its backoff allows.
//!
//! The broker sits behind a TCP proxy that the test cuts: every open
//! connection is dropped and new ones are closed at once, as a broker
//! whose pod was deleted looks from a client. 30 s is the figure;
//! it is a real outage, so this test takes about 40 s of wall time.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TempDir, consume, delete, http, run_config, unique, until};
use discord_sim::{EventKind, EventMix, SimConfig, Simulator};
use sharder::{AmqpTopology, RunOptions, SinkChoice};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::reconnect_budget::max_attempts;
use testkit::services::{AMQP_ADDR, amqp_url_via};
use testkit::{CutProxy, ledger};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const OUTAGE: Duration = Duration::from_secs(30);
const SINK_BUFFER: u64 = 256;
const CONFIRM_WINDOW: u64 = 16;
const BATCH: u64 = 64;
/// The sink's reconnect backoff (`AmqpSinkConfig::from_config`).
const RECONNECT_BASE: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(15);

/// `sharder_sink_buffered_events + sharder_sink_unconfirmed_events`.
fn held(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("sharder_sink_buffered_events ")
                || l.starts_with("sharder_sink_unconfirmed_events ")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_broker_outage_under_load_loses_nothing() {
    const SHARDS: u32 = 4;
    let sim = Simulator::start(SimConfig {
        shards: SHARDS,
        guilds: 16,
        identify_window: Duration::from_millis(100),
        event_rate: 800.0,
        event_mix: EventMix::only(&[(EventKind::MessageCreate, 3), (EventKind::TypingStart, 1)]),
        // Longer than the outage, so the blocked shards can resume.
        session_expiry: Duration::from_secs(120),
        replay_buffer: 100_000,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let proxy = CutProxy::start(AMQP_ADDR).await.unwrap();
    let dir = TempDir::new("outage30").unwrap();
    let base = unique("outage30");
    let topo = AmqpTopology::named(&base, 2);
    let (_conn, mut queue) = consume(&topo).await;
    let mut cfg = run_config(
        &sim,
        &dir,
        &format!(
            "identify_window = \"110ms\"\namqp_topology_base = \"{base}\"\n\
             sink_buffer = {SINK_BUFFER}\nconfirm_window = {CONFIRM_WINDOW}\n\
             batch_max_events = {BATCH}\n[amqp]\npartitions = 2\n"
        ),
    );
    cfg.amqp.url = config::Secret::new(amqp_url_via(proxy.addr()));
    let stop = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let run = tokio::spawn(sharder::run_with(
        cfg,
        stop.clone(),
        RunOptions {
            sink: SinkChoice::Amqp,
            on_listening: Some(tx),
        },
    ));
    let addr: SocketAddr = timeout(WAIT, rx).await.unwrap().unwrap();
    let ledger_len = || ledger::len(&sim.ledger());
    until("events flowing", WAIT, async || ledger_len() > 400).await;

    // The outage. Sample the sink's held events while it lasts.
    proxy.cut();
    let cut_at = Instant::now();
    let before = ledger_len();
    let mut peak = 0;
    while cut_at.elapsed() < OUTAGE {
        let (status, body) = http(addr, "GET", "/metrics", None, "").await;
        assert_eq!(status, 200, "the sharder answers during the outage");
        peak = peak.max(held(&body));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = ledger_len() - before;
    assert!(!run.is_finished(), "the sharder must ride out the outage");
    let attempts = proxy.refused();
    let budget = max_attempts(OUTAGE, RECONNECT_BASE, RECONNECT_MAX) as u64;
    proxy.restore();

    // Back: more events flow, then the stream stops and everything the
    // simulator ever sent must be in the queues.
    let mark = ledger_len();
    until("events after the outage", WAIT, async || {
        ledger_len() > mark + 400
    })
    .await;
    sim.set_event_rate(0.0).unwrap();
    let expected = ledger::sent(&sim.ledger());
    let delivery = ledger::await_delivery(&expected, WAIT, async || {
        let g = queue.recv().await.unwrap();
        Some((g.shard_id, g.seq))
    })
    .await;
    let lost = delivery.lost(&expected).count();
    assert!(
        !delivery.timed_out && lost == 0,
        "lost {lost} of {} events, e.g. {:?}",
        expected.len(),
        delivery.lost(&expected).take(5).collect::<Vec<_>>()
    );
    let bound = SINK_BUFFER + (CONFIRM_WINDOW + 1) * BATCH;
    assert!(peak <= bound, "held {peak} events, bound {bound}");
    assert!(
        peak >= SINK_BUFFER,
        "the buffer never filled (peak {peak}): backpressure was not exercised"
    );
    assert!(
        (1..=budget).contains(&attempts),
        "{attempts} reconnect attempts in {OUTAGE:?}; backoff allows {budget}"
    );
    let counters = sim.counters();
    assert_eq!(counters.identifies, u64::from(SHARDS), "no session lost");
    println!(
        "30 s outage: {during} events generated during it, {} in all, 0 lost; \
         peak held {peak} (bound {bound}); {attempts} reconnect attempts (budget {budget}); \
         {} resumes, {} replayed",
        expected.len(),
        counters.resumes,
        counters.replayed_events
    );

    stop.cancel();
    let report = timeout(WAIT, run).await.unwrap().unwrap().unwrap();
    assert!(report.drained);
    delete(&topo).await;
    sim.shutdown().await;
}

#[test]
fn the_attempt_budget_follows_the_backoff() {
    // Shortest delays 0.1, 0.2, 0.4, 0.8, 1.6 s: attempts at 0 (if the sink
    // retries at once), 0.1, 0.3, 0.7 and 1.5 s fit in 3 s; the next comes
    // no sooner than 3.1 s. The cap halves to 7.5 s: ten fit in 30 s.
    let b = |s| max_attempts(Duration::from_secs_f64(s), RECONNECT_BASE, RECONNECT_MAX);
    assert_eq!(b(3.0), 5);
    assert_eq!(b(3.2), 6);
    assert_eq!(b(30.0), 10);
}
