//! A real dnsmasq on a loopback port for the integration tests: started with
//! a local zone and short TTLs, probed until it answers, its query log
//! counted, killed on drop.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A free UDP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    // The TCP side must be free too; dnsmasq listens on both.
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return free_port();
    }
    port
}

pub struct Dnsmasq {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    probes: AtomicU32,
}

impl Dnsmasq {
    /// Starts dnsmasq on `port` serving `records` (name, ip) with TTL `ttl`
    /// seconds, authoritative (NXDOMAIN) for `*.test`. Returns once it
    /// answers a probe query.
    pub fn start(port: u16, records: &[(&str, &str)], ttl: u32) -> Self {
        Self::start_zones(port, records, ttl, &[])
    }

    /// As [`Dnsmasq::start`], also authoritative (NXDOMAIN for names it has
    /// no record of) for each of `zones`, e.g. `cluster.local` as CoreDNS is.
    pub fn start_zones(port: u16, records: &[(&str, &str)], ttl: u32, zones: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "dnscache-dnsmasq-{}-{port}-{}.log",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-dhcp-interface=",
            "--pid-file=",
            "--user=root",
            "--local=/test/",
            "--host-record=probe.test,127.0.0.99",
            &format!("--local-ttl={ttl}"),
            "--neg-ttl=1",
            "--log-queries",
            &format!("--log-facility={}", log.display()),
        ]);
        for (name, ip) in records {
            cmd.arg(format!("--host-record={name},{ip}"));
        }
        for zone in zones {
            cmd.arg(format!("--local=/{zone}/"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dnsmasq (install dnsmasq-base)");
        let d = Self {
            child: Some(child),
            port,
            log,
            probes: AtomicU32::new(0),
        };
        d.sync();
        d
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Sends a unique probe query and waits until dnsmasq answered it and
    /// logged it: every query it received before is then in the log.
    pub fn sync(&self) {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let name = format!("sync{n}.probe.test");
        let deadline = Instant::now() + Duration::from_secs(10);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let query = build_query(0x4242, &name);
        let mut buf = [0u8; 512];
        'answered: loop {
            assert!(
                Instant::now() < deadline,
                "dnsmasq on {} never answered",
                self.port
            );
            let _ = sock.send_to(&query, self.addr());
            while let Ok((len, _)) = sock.recv_from(&mut buf) {
                if len >= 2 && buf[0] == 0x42 && buf[1] == 0x42 {
                    break 'answered;
                }
            }
        }
        loop {
            assert!(Instant::now() < deadline, "dnsmasq never logged {name}");
            if self.log_text().contains(&name) {
                return;
            }
            std::thread::yield_now();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Queries of `qtype` (e.g. "A", "AAAA") for exactly `name` received so far.
    pub fn count(&self, qtype: &str, name: &str) -> usize {
        self.sync();
        let needle = format!("query[{qtype}] {name} from");
        self.log_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Distinct names queried, probes excluded.
    pub fn names(&self) -> Vec<String> {
        self.sync();
        let mut names: Vec<String> = self
            .log_text()
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find("query[")?..];
                let name = rest.split_whitespace().nth(1)?;
                (!name.ends_with("probe.test")).then(|| name.to_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Kills dnsmasq and waits until it has exited (port released).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A minimal DNS query (RD set, one question, type A, class IN).
pub fn build_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

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
