//! The upstreams of the integration tests: a real dnsmasq on a loopback
//! port (the test kit's: a local zone, short TTLs, its query log counted,
//! killed on drop), a dead upstream that only counts, and resolver
//! settings with test-sized windows.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use testkit::Dnsmasq;
pub use testkit::dnsmasq::free_port;

/// Counts UDP datagrams arriving on a port and never answers: a dead
/// upstream that still shows how often it is asked.
pub struct BlackHole {
    pub count: std::sync::Arc<AtomicU32>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    pub fn bind(port: u16) -> Self {
        let sock = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let count = std::sync::Arc::new(AtomicU32::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            count,
            stop,
            thread: Some(thread),
        }
    }

    pub fn packets(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resolver settings pointing at `upstream`, with test-sized windows.
pub fn config(upstream: SocketAddr) -> config::DnsConfig {
    config::DnsConfig {
        upstreams: vec![upstream],
        min_ttl: Duration::from_secs(1),
        negative_ttl: Duration::from_secs(1),
        query_timeout: Duration::from_millis(500),
        stale_answer_timeout: Duration::from_millis(200),
        retry_interval: Duration::from_millis(500),
        ..config::DnsConfig::default()
    }
}
