//! A real dnsmasq on a loopback port: the "cluster DNS" of the resolver
//! tests and the incident scenarios.
//!
//! It serves the given `(name, ip)` records with a short TTL, is
//! authoritative for `*.test` (nothing leaks to a real resolver), and logs
//! every query to a file, so a test counts what the upstream really
//! received ([`Dnsmasq::count`]). [`Dnsmasq::stop`] and
//! [`Dnsmasq::restart`] replay a DNS outage and the restart on the same
//! port.
//!
//! A missing dnsmasq is an error that names the package and the command
//! that installs it ([`DnsmasqError::Missing`]); a test never skips
//! silently for lack of it.
//!
//! # Algorithm
//! Readiness and log completeness are one probe: a query for a fresh
//! `sync<n>.probe.test` is sent until answered, then the query log is read
//! until it holds that name. dnsmasq logs queries in the order received, so
//! every query before the probe is then in the log.

use crate::temp_dir::TempDir;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `dnsmasq-base` installs the daemon.
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// How long dnsmasq may take to answer its first probe.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Why dnsmasq could not serve a test.
#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    #[error(
        "dnsmasq is not installed ({DNSMASQ} is missing): install it with \
         `apt-get install dnsmasq-base`, or run the tests with `.ci/test` \
         (README's test command), which installs it"
    )]
    Missing,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free loopback port for dnsmasq")]
    NoFreePort,
    #[error("dnsmasq on port {port} never answered; its output: {output}")]
    NoAnswer { port: u16, output: String },
    #[error("dnsmasq never logged the probe {0}")]
    NotLogged(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DnsmasqError {
    let what = what.into();
    move |source| DnsmasqError::Io { what, source }
}

/// A free UDP (and TCP) port on 127.0.0.1: dnsmasq listens on both.
pub fn free_port() -> Result<u16, DnsmasqError> {
    for _ in 0..50 {
        let s = UdpSocket::bind("127.0.0.1:0").map_err(io("binding a UDP port"))?;
        let port = s
            .local_addr()
            .map_err(io("reading a local address"))?
            .port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(DnsmasqError::NoFreePort)
}

/// A running (or stopped) dnsmasq; killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Option<Child>,
    port: u16,
    ttl: u32,
    records: Vec<(String, String)>,
    /// Zones it is authoritative for besides `test` (NXDOMAIN for names
    /// it has no record of), e.g. `cluster.local` as CoreDNS is.
    zones: Vec<String>,
    query_log: PathBuf,
    process_log: PathBuf,
    probes: AtomicU32,
    /// The directory of the logs when it is dnsmasq's own.
    _own_dir: Option<TempDir>,
}

impl Dnsmasq {
    /// Starts dnsmasq on `port` serving `records` `(name, ip)` with TTL
    /// `ttl` seconds, its logs in a directory removed on drop. Returns
    /// once it answers.
    pub fn start(port: u16, records: &[(&str, &str)], ttl: u32) -> Result<Self, DnsmasqError> {
        Self::start_zones(port, records, ttl, &[])
    }

    /// As [`Dnsmasq::start`], also authoritative for each of `zones`.
    pub fn start_zones(
        port: u16,
        records: &[(&str, &str)],
        ttl: u32,
        zones: &[&str],
    ) -> Result<Self, DnsmasqError> {
        let dir = TempDir::new("dnsmasq").map_err(io("creating dnsmasq's directory"))?;
        let mut d = Self::new(dir.path(), port, records, ttl);
        d.zones = zones.iter().map(|z| (*z).to_owned()).collect();
        d._own_dir = Some(dir);
        d.launch()?;
        Ok(d)
    }

    /// [`Dnsmasq::start`] with the logs (`dns-queries.log`, `dnsmasq.out`)
    /// in `dir`, which outlives it.
    pub fn start_in(
        dir: &Path,
        port: u16,
        records: &[(&str, &str)],
        ttl: u32,
    ) -> Result<Self, DnsmasqError> {
        let mut d = Self::new(dir, port, records, ttl);
        d.launch()?;
        Ok(d)
    }

    fn new(dir: &Path, port: u16, records: &[(&str, &str)], ttl: u32) -> Self {
        Self {
            child: None,
            port,
            ttl,
            records: records
                .iter()
                .map(|(n, ip)| ((*n).to_owned(), (*ip).to_owned()))
                .collect(),
            zones: Vec::new(),
            query_log: dir.join("dns-queries.log"),
            process_log: dir.join("dnsmasq.out"),
            probes: AtomicU32::new(0),
            _own_dir: None,
        }
    }

    fn launch(&mut self) -> Result<(), DnsmasqError> {
        if !Path::new(DNSMASQ).exists() {
            return Err(DnsmasqError::Missing);
        }
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            &format!("--port={}", self.port),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-dhcp-interface=",
            "--pid-file=",
            "--user=root",
            "--local=/test/",
            "--host-record=probe.test,127.0.0.99",
            &format!("--local-ttl={}", self.ttl),
            "--neg-ttl=1",
            "--log-queries",
            &format!("--log-facility={}", self.query_log.display()),
        ]);
        for (name, ip) in &self.records {
            cmd.arg(format!("--host-record={name},{ip}"));
        }
        for zone in &self.zones {
            cmd.arg(format!("--local=/{zone}/"));
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.process_log)
            .map_err(io(format!("opening {}", self.process_log.display())))?;
        let err = out.try_clone().map_err(io("duplicating dnsmasq's log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => DnsmasqError::Missing,
                _ => DnsmasqError::Io {
                    what: format!("starting {DNSMASQ}"),
                    source: e,
                },
            })?;
        self.child = Some(child);
        self.sync()
    }

    /// The address to configure as the resolver's upstream.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The query log (appended to across restarts).
    pub fn query_log(&self) -> &Path {
        &self.query_log
    }

    /// The outage: kills dnsmasq and waits until it has exited (the port
    /// then answers nothing).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The restart: starts again on the same port with the same records.
    pub fn restart(&mut self) -> Result<(), DnsmasqError> {
        self.stop();
        self.launch()
    }

    /// Sends a unique probe and waits until dnsmasq answered and logged it:
    /// every query it received before is then in the log.
    pub fn sync(&self) -> Result<(), DnsmasqError> {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let name = format!("sync{n}.probe.test");
        let deadline = Instant::now() + READY_WITHIN;
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(io("binding the probe socket"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(io("setting the probe timeout"))?;
        let query = build_query(0x4242, &name);
        let mut buf = [0u8; 512];
        'answered: loop {
            if Instant::now() >= deadline {
                return Err(DnsmasqError::NoAnswer {
                    port: self.port,
                    output: std::fs::read_to_string(&self.process_log).unwrap_or_default(),
                });
            }
            let _ = sock.send_to(&query, self.addr());
            while let Ok((len, from)) = sock.recv_from(&mut buf) {
                if from == self.addr() && len >= 2 && buf[0] == 0x42 && buf[1] == 0x42 {
                    break 'answered;
                }
            }
        }
        while !self.log_text().contains(&name) {
            if Instant::now() >= deadline {
                return Err(DnsmasqError::NotLogged(name));
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// The query log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.query_log).unwrap_or_default()
    }

    /// Queries of `qtype` (`A`, `AAAA`) for exactly `name` received so far
    /// (across restarts). Syncs first while running.
    pub fn count(&self, qtype: &str, name: &str) -> Result<usize, DnsmasqError> {
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

    /// Distinct names queried so far, probes excluded. Syncs first while
    /// running.
    pub fn names(&self) -> Result<Vec<String>, DnsmasqError> {
        if self.child.is_some() {
            self.sync()?;
        }
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
        Ok(names)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal DNS query (RD set, one question, type A, class IN); labels
/// longer than 63 bytes are cut to 63.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_its_labels() {
        let q = build_query(7, "a.bc.");
        assert_eq!(&q[..2], &[0, 7]);
        assert_eq!(&q[12..], &[1, b'a', 2, b'b', b'c', 0, 0, 1, 0, 1]);
    }

    #[test]
    fn the_missing_daemon_says_how_to_install_it() {
        let msg = DnsmasqError::Missing.to_string();
        assert!(msg.contains("apt-get install dnsmasq-base"), "{msg}");
        assert!(msg.contains(".ci/test"), "{msg}");
    }
}
