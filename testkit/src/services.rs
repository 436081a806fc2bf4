//! The services of the test environment and the names that keep each
//! test's share of them apart.
//!
//! Tests and benches use one RabbitMQ (127.0.0.1:5672, guest/guest) and
//! one Redis (127.0.0.1:6379), started by `.ci/services` (which README's test
//! command, `.ci/test`, runs first) or by hand. They run in parallel against them, so every exchange, queue,
//! Redis key prefix and temporary directory a test makes carries a name no
//! other run uses ([`unique_name`]), and the test removes it afterwards.

use std::net::SocketAddr;

/// RabbitMQ of the test environment.
pub const AMQP_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(LOOPBACK), 5672);
/// RabbitMQ URL with the test broker's default credentials.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Redis of the test environment.
pub const REDIS_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(LOOPBACK), 6379);
/// Redis URL of the test environment.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

/// The AMQP URL of the test broker reached through `addr` (a
/// [`crate::CutProxy`] in front of it).
pub fn amqp_url_via(addr: SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// A name no other run or test uses:
/// `bulwark-test.<what>.<pid>.<nanos>.<seq>`.
pub fn unique_name(what: &str) -> String {
    unique_name_in("bulwark-test", what)
}

/// [`unique_name`] in another family: `<family>.<what>.<pid>.<nanos>.<seq>`
/// (the scenario suite's names start `bulwark-scn`).
///
/// The pid and the clock tell runs apart; the sequence number tells apart
/// the tests of one binary, which run in parallel threads and can read the
/// same nanosecond. Without it two tests once shared a dnsmasq directory,
/// and the first to finish deleted the other's query log.
pub fn unique_name_in(family: &str, what: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{family}.{what}.{}.{nanos}.{seq}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_and_say_what_they_are() {
        let (a, b) = (unique_name("q"), unique_name("q"));
        assert!(a.starts_with("bulwark-test.q."), "{a}");
        assert_ne!(a, b);
        // Threads that start together still get distinct names.
        let names: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| unique_name("q"))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut distinct = names.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert!(unique_name_in("bulwark-scn", "x").starts_with("bulwark-scn.x."));
        assert_eq!(AMQP_ADDR.to_string(), "127.0.0.1:5672");
        assert_eq!(amqp_url_via(AMQP_ADDR), AMQP_URL);
        assert_eq!(REDIS_ADDR.to_string(), "127.0.0.1:6379");
    }
}
