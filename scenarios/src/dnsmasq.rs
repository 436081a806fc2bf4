//! A private dnsmasq on a loopback port: the "cluster DNS" of a scenario.
//!
//! It serves a hosts file (`--addn-hosts`) with a short TTL, is
//! authoritative for `*.test` (so nothing leaks to a real resolver), and
//! logs every query to a file. Upstream queries are counted from that log:
//! the number the DNS storm incident is about is what the resolver
//! actually received. [`Dnsmasq::stop`] and [`Dnsmasq::restart`] replay
//! the DNS outage and the restart, on the same port.

use crate::child::ChildGuard;
use crate::{Result, ScenarioError};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where Debian's dnsmasq-base installs the daemon.
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A free UDP (and TCP) port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| ScenarioError::io("binding", e))?;
        let port = s
            .local_addr()
            .map_err(|e| ScenarioError::io("local addr", e))?
            .port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(ScenarioError::Setup(
        "no free loopback port for dnsmasq".into(),
    ))
}

/// A running (or stopped) dnsmasq.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Option<ChildGuard>,
    pub port: u16,
    ttl: u32,
    hosts: PathBuf,
    pub query_log: PathBuf,
    process_log: PathBuf,
    probes: u32,
}

impl Dnsmasq {
    /// Starts dnsmasq on a free port serving `records` `(name, ip)` with
    /// TTL `ttl` seconds; files go in `dir`. Returns once it answers.
    pub fn start(dir: &Path, records: &[(&str, &str)], ttl: u32) -> Result<Self> {
        let hosts = dir.join("dns-hosts");
        let text: String = records
            .iter()
            .map(|(name, ip)| format!("{ip} {name}\n"))
            .chain(std::iter::once("127.0.0.99 probe.test\n".to_owned()))
            .collect();
        std::fs::write(&hosts, text).map_err(|e| ScenarioError::io("writing the hosts file", e))?;
        let mut d = Self {
            child: None,
            port: free_port()?,
            ttl,
            hosts,
            query_log: dir.join("dns-queries.log"),
            process_log: dir.join("dnsmasq.out"),
            probes: 0,
        };
        d.launch()?;
        Ok(d)
    }

    fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            &format!("--port={}", self.port),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            &format!("--addn-hosts={}", self.hosts.display()),
            "--no-dhcp-interface=",
            "--pid-file=",
            "--user=root",
            "--local=/test/",
            &format!("--local-ttl={}", self.ttl),
            "--neg-ttl=1",
            "--log-queries",
            &format!("--log-facility={}", self.query_log.display()),
        ]);
        let child = ChildGuard::spawn("dnsmasq", cmd, &self.process_log)
            .map_err(|e| ScenarioError::Setup(format!("{e} (install dnsmasq-base: {DNSMASQ})")))?;
        self.child = Some(child);
        self.sync()
    }

    /// The address to configure as `dns.upstreams`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The outage: kills dnsmasq (the port then answers nothing).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// The restart: starts again on the same port with the same records.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    /// Sends a unique probe and waits until it is answered and logged, so
    /// every query received before is in the log.
    pub fn sync(&mut self) -> Result<()> {
        self.probes += 1;
        let name = format!("sync{}.probe.test", self.probes);
        let deadline = Instant::now() + Duration::from_secs(10);
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| ScenarioError::io("probe", e))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| ScenarioError::io("probe", e))?;
        let query = build_query(0x4242, &name);
        let mut buf = [0u8; 512];
        'answered: loop {
            if Instant::now() >= deadline {
                return Err(ScenarioError::Setup(format!(
                    "dnsmasq on {} never answered: {}",
                    self.port,
                    std::fs::read_to_string(&self.process_log).unwrap_or_default()
                )));
            }
            let _ = sock.send_to(&query, self.addr());
            while let Ok((len, _)) = sock.recv_from(&mut buf) {
                if len >= 2 && buf[0] == 0x42 && buf[1] == 0x42 {
                    break 'answered;
                }
            }
        }
        while !self.log_text().contains(&name) {
            if Instant::now() >= deadline {
                return Err(ScenarioError::Setup(format!("dnsmasq never logged {name}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.query_log).unwrap_or_default()
    }

    /// Queries of `qtype` (`A`, `AAAA`) for exactly `name` so far (across
    /// restarts: the log is appended to). Syncs first when running.
    pub fn count(&mut self, qtype: &str, name: &str) -> Result<usize> {
        if self.child.is_some() {
            self.sync()?;
        }
        let needle = format!("query[{qtype}] {name} from");
        Ok(self
            .log_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .count())
    }
}

/// A minimal DNS query (RD set, one question, type A, class IN).
pub fn build_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let len = u8::try_from(label.len().min(63)).unwrap_or(63);
        q.push(len);
        q.extend_from_slice(&label.as_bytes()[..usize::from(len)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
