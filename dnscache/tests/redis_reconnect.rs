//! `RedisConnection` against the real Redis behind a cuttable proxy: it
//! survives an outage (a plain multiplexed connection does not), redials at
//! a bounded rate while Redis is away, and resolves through the cache.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Dnsmasq, config, free_port};
use dnscache::{RedisConnection, Resolver};
use std::time::Duration;
use testkit::CutProxy;
use testkit::services::REDIS_ADDR;
use tokio::time::Instant;

async fn ping(conn: &mut RedisConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_an_outage_and_redials_at_a_bounded_rate() {
    let dns = Dnsmasq::start(free_port().unwrap(), &[("redis.test", "127.0.0.1")], 2).unwrap();
    let resolver = Resolver::new(&config(dns.addr())).unwrap();
    let proxy = CutProxy::start(REDIS_ADDR).await.unwrap();
    let url = format!("redis://redis.test:{}/", proxy.port());
    let mut conn = RedisConnection::connect(&resolver, &url).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    assert_eq!(conn.dials().await, 1);
    assert!(
        dns.count("A", "redis.test").unwrap() >= 1,
        "dialled through the cache"
    );

    // Redis goes away: commands fail (fast), and for one second of
    // commands every 10 ms the proxy sees only a few dials.
    proxy.cut();
    let cut = Instant::now();
    let mut failed = 0;
    while cut.elapsed() < Duration::from_secs(1) {
        if ping(&mut conn).await.is_err() {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed > 10, "commands must fail while Redis is away");
    let dials = proxy.refused();
    // Shortest redial delays 100, 200, 400 ms: at most 4 dials fit in 1 s
    // (plus the one the first failure makes at once).
    assert!((1..=5).contains(&dials), "{dials} dials in 1 s");

    // Back: the same connection value works again, with one new dial.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ping(&mut conn).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(conn.dials().await, 2);
    // A clone shares the connection: no further dial.
    let mut clone = conn.clone();
    assert_eq!(ping(&mut clone).await.unwrap(), "PONG");
    assert_eq!(conn.dials().await, 2);
}
