//! The gateway simulator as a separate process (`discord-sim`).
//!
//! Its CPU is never charged to the process being measured. The binary must
//! be built first (`cargo build --release -p discord-sim`); it is looked up
//! in `$DISCORD_SIM_BIN`, else next to the bench's target directory
//! (`target/release/discord-sim`).

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The simulator's knobs the benches turn (the rest are Discord's values).
#[derive(Debug, Clone)]
pub struct SimArgs {
    pub shards: u32,
    pub guilds: u32,
    /// Offered dispatch rate across all shards (events/s).
    pub event_rate: f64,
    pub max_concurrency: u32,
    pub identify_window_ms: u64,
    pub replay_buffer: usize,
    pub seed: u64,
}

impl Default for SimArgs {
    fn default() -> Self {
        Self {
            shards: 16,
            guilds: 64,
            event_rate: 0.0,
            max_concurrency: 16,
            identify_window_ms: 20,
            replay_buffer: 10_000,
            seed: 7,
        }
    }
}

/// A running `discord-sim`; killed when dropped.
pub struct SimProcess {
    child: Child,
    pub gateway: String,
    pub http: String,
    pub token: String,
}

/// Where the simulator binary is.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("DISCORD_SIM_BIN") {
        return Ok(PathBuf::from(p));
    }
    // target/release/deps/<bench>-<hash> → target/release/discord-sim
    let exe = std::env::current_exe().context("current_exe")?;
    let release = exe
        .parent()
        .and_then(|d| d.parent())
        .context("bench executable has no target directory")?;
    let bin = release.join("discord-sim");
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release -p discord-sim` first (same \
             CARGO_TARGET_DIR), or set DISCORD_SIM_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

impl SimProcess {
    /// Starts the simulator on a free loopback port and waits until it
    /// listens.
    pub fn start(a: &SimArgs) -> anyhow::Result<Self> {
        // Discord accepts IDENTIFY tokens with the `Bot ` prefix, and
        // twilight-gateway always sends one; the simulator compares tokens
        // verbatim, so the token itself starts with `Bot ` (our sharder
        // sends it unchanged, twilight adds no second prefix).
        let token = format!("Bot bench-token-{}", std::process::id());
        let mut child = Command::new(binary()?)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--shards", &a.shards.to_string()])
            .args(["--guilds", &a.guilds.to_string()])
            .args(["--event-rate", &a.event_rate.to_string()])
            .args(["--max-concurrency", &a.max_concurrency.to_string()])
            .args(["--identify-window-ms", &a.identify_window_ms.to_string()])
            .args(["--replay-buffer", &a.replay_buffer.to_string()])
            .args(["--session-start-total", "1000000"])
            .args(["--seed", &a.seed.to_string()])
            .env("DISCORD_SIM_TOKEN", &token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting discord-sim")?;
        let stdout = child.stdout.take().context("sim stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("discord-sim listening:") => break l,
                Some(Ok(l)) => eprintln!("[sim] {l}"),
                _ => {
                    let status = child.wait().ok();
                    bail!("discord-sim exited ({status:?}) before listening");
                }
            }
        };
        // Keep draining its stdout so its log never blocks it.
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                eprintln!("[sim] {l}");
            }
        });
        let word_after = |w: &str| {
            let mut it = first.split_whitespace();
            it.find(|x| *x == w);
            it.next().map(str::to_owned)
        };
        let gateway = word_after("gateway").context("no gateway URL")?;
        let http = word_after("http").context("no http URL")?;
        Ok(Self {
            child,
            gateway,
            http,
            token,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /sim/counters`.
    pub fn counters(&self) -> anyhow::Result<serde_json::Value> {
        let addr = self
            .http
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let mut s = TcpStream::connect(&addr).with_context(|| format!("connecting {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET /sim/counters HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .context("no HTTP body")?;
        serde_json::from_str(body).with_context(|| format!("counters body {body:?}"))
    }

    /// One counter of [`Self::counters`].
    pub fn counter(&self, name: &str) -> anyhow::Result<u64> {
        self.counters()?
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("no counter {name}"))
    }

    /// Flags that tell a child where the simulator is.
    pub fn child_flags(&self) -> Vec<(&'static str, String)> {
        vec![
            ("gateway", self.gateway.clone()),
            ("http", self.http.clone()),
            ("token", self.token.clone()),
        ]
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
