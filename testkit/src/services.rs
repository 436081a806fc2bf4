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

/// A name no other run uses: `bulwark-test.<what>.<pid>.<nanos>`.
pub fn unique_name(what: &str) -> String {
    unique_name_in("bulwark-test", what)
}

/// [`unique_name`] in another family: `<family>.<what>.<pid>.<nanos>`
/// (the scenario suite's names start `bulwark-scn`).
pub fn unique_name_in(family: &str, what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{family}.{what}.{}.{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_and_say_what_they_are() {
        let (a, b) = (unique_name("q"), unique_name("q"));
        assert!(a.starts_with("bulwark-test.q."), "{a}");
        assert_ne!(a, b);
        assert!(unique_name_in("bulwark-scn", "x").starts_with("bulwark-scn.x."));
        assert_eq!(AMQP_ADDR.to_string(), "127.0.0.1:5672");
        assert_eq!(amqp_url_via(AMQP_ADDR), AMQP_URL);
        assert_eq!(REDIS_ADDR.to_string(), "127.0.0.1:6379");
    }
}
