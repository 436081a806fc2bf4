//! The `discord-sim` executable as a scenario's Discord.
//!
//! Started on a free loopback port (`--listen 127.0.0.1:0`); the URLs are
//! read from its `discord-sim listening: ...` line. Ground truth, the
//! dispatch ledger and the counters come from its HTTP control API
//! (`GET /sim/truth|ledger|counters`), faults go through
//! `POST /sim/faults/...`, the same API any client in any language uses.

use crate::child::ChildGuard;
use crate::http;
use crate::{Result, ScenarioError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Token every scenario's bot uses with the simulator.
pub const TOKEN: &str = "scenario-sim-token";

/// The simulator's command-line settings (Discord's values unless set).
#[derive(Debug, Clone)]
pub struct SimArgs {
    pub shards: u32,
    pub guilds: u32,
    pub members_per_guild: u32,
    /// `NAME=WEIGHT,...`; `None` keeps the simulator's realistic mix.
    pub event_mix: Option<String>,
    pub event_rate: f64,
    pub max_concurrency: u32,
    pub identify_window_ms: u64,
    pub heartbeat_ms: u64,
    pub session_expiry_ms: u64,
    /// `session_start_limit.total`: the identifies the bot may spend
    /// (Discord's default, 1,000, unless a scenario needs more).
    pub session_start_total: u32,
    pub seed: u64,
    /// Guilds a shard may own before Discord closes it with 4011.
    pub guild_cap: Option<u32>,
}

impl Default for SimArgs {
    fn default() -> Self {
        Self {
            shards: 1,
            guilds: 10,
            members_per_guild: 10,
            event_mix: None,
            event_rate: 0.0,
            max_concurrency: 16,
            identify_window_ms: 100,
            heartbeat_ms: 41_250,
            session_expiry_ms: 180_000,
            session_start_total: 1000,
            seed: 7,
            guild_cap: None,
        }
    }
}

/// A mix without joins, removals or outages: the membership of the bot
/// never changes, so every GUILD_CREATE is a load, never a join.
pub const STEADY_MIX: &str = "MESSAGE_CREATE=20,TYPING_START=5,GUILD_MEMBER_ADD=3,\
     GUILD_MEMBER_UPDATE=3,GUILD_MEMBER_REMOVE=2,CHANNEL_CREATE=1,CHANNEL_UPDATE=2,\
     CHANNEL_DELETE=1,GUILD_ROLE_CREATE=1,GUILD_ROLE_UPDATE=2,GUILD_ROLE_DELETE=1,GUILD_UPDATE=1";

/// The simulator's counters (`GET /sim/counters`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Counters {
    pub identifies: u64,
    pub identify_violations: u64,
    pub budget_exhausted: u64,
    pub resumes: u64,
    pub failed_resumes: u64,
    pub replayed_events: u64,
    pub rate_limit_closes: u64,
    pub heartbeat_timeouts: u64,
    pub expired_sessions: u64,
    pub protocol_errors: u64,
    pub events_generated: u64,
    pub events_dispatched: u64,
}

/// One dispatch of the ledger.
#[derive(Debug, Clone, Deserialize)]
pub struct LedgerEntry {
    pub session_id: String,
    pub seq: u64,
    pub event: String,
    /// The guild, as a decimal string.
    #[serde(default)]
    pub guild_id: Option<String>,
    /// The shard total of the session.
    #[serde(default)]
    pub shard_total: u32,
    /// The world event this is a delivery of (`None` for what only this
    /// session was sent: READY, its snapshots, RESUMED...).
    #[serde(default)]
    pub event_id: Option<u64>,
}

/// `GET /sim/ledger`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Ledger {
    pub shards: BTreeMap<u32, Vec<LedgerEntry>>,
}

impl Ledger {
    /// Dispatches in the ledger.
    pub fn len(&self) -> usize {
        self.shards.values().map(Vec::len).sum()
    }

    /// True when nothing was dispatched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A running simulator process.
#[derive(Debug)]
pub struct SimProcess {
    pub child: ChildGuard,
    pub addr: SocketAddr,
    pub args: SimArgs,
}

impl SimProcess {
    /// Starts the simulator and waits for its listening line.
    pub fn start(bin: &Path, args: SimArgs, log: &Path) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--token", TOKEN])
            .arg(format!("--shards={}", args.shards))
            .arg(format!("--guilds={}", args.guilds))
            .arg(format!("--members-per-guild={}", args.members_per_guild))
            .arg(format!("--event-rate={}", args.event_rate))
            .arg(format!("--max-concurrency={}", args.max_concurrency))
            .arg(format!("--identify-window-ms={}", args.identify_window_ms))
            .arg(format!("--heartbeat-ms={}", args.heartbeat_ms))
            .arg(format!("--session-expiry-ms={}", args.session_expiry_ms))
            .arg(format!(
                "--session-start-total={}",
                args.session_start_total
            ))
            .arg(format!("--seed={}", args.seed))
            .env("RUST_LOG", crate::child_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(mix) = &args.event_mix {
            cmd.arg(format!("--event-mix={mix}"));
        }
        if let Some(cap) = args.guild_cap {
            cmd.arg(format!("--guild-cap={cap}"));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| ScenarioError::io(format!("starting {}", bin.display()), e))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let guard = ChildGuard::adopt("discord-sim", child, log);
        let (tx, rx) = std::sync::mpsc::channel();
        // Both pipes are drained into the log for the process's whole life,
        // so a chatty simulator never blocks on a full pipe.
        for (pipe, tx) in [
            (
                stdout.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                Some(tx),
            ),
            (
                stderr.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                None,
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| ScenarioError::io("opening the simulator log", e))?;
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(std::io::Result::ok) {
                    if let Some(tx) = &tx
                        && line.starts_with("discord-sim listening")
                    {
                        let _ = tx.send(line.clone());
                    }
                    let _ = writeln!(file, "{line}");
                }
            });
        }
        let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            ScenarioError::Setup(format!(
                "discord-sim printed no listening line: {}",
                guard.log_tail(20)
            ))
        })?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| ScenarioError::Setup(format!("no address in {line:?}")))?;
        Ok(Self {
            child: guard,
            addr,
            args,
        })
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn gateway_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/api/v10`.
    pub fn api_base(&self) -> String {
        format!("http://{}/api/v10", self.addr)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let a = http::get(self.addr, path)
            .await
            .map_err(|e| ScenarioError::Setup(e.to_string()))?;
        if a.status != 200 {
            return Err(ScenarioError::Setup(format!(
                "GET {path}: {} {}",
                a.status, a.body
            )));
        }
        serde_json::from_str(&a.body)
            .map_err(|e| ScenarioError::Setup(format!("GET {path}: bad JSON: {e}")))
    }

    /// The counters now.
    pub async fn counters(&self) -> Result<Counters> {
        self.get_json("/sim/counters").await
    }

    /// The dispatch ledger now.
    pub async fn ledger(&self) -> Result<Ledger> {
        self.get_json("/sim/ledger").await
    }

    /// The ground truth now, as JSON (`{"guilds": {...}}`).
    pub async fn truth(&self) -> Result<serde_json::Value> {
        self.get_json("/sim/truth").await
    }

    /// `POST /sim/<route>` with `body`; returns `affected`.
    pub async fn control(&self, route: &str, body: &str) -> Result<u64> {
        let path = format!("/sim/{route}");
        let a = http::post(self.addr, &path, body)
            .await
            .map_err(|e| ScenarioError::Setup(e.to_string()))?;
        if a.status != 200 {
            return Err(ScenarioError::Setup(format!(
                "POST {path}: {} {}",
                a.status, a.body
            )));
        }
        let v: serde_json::Value = serde_json::from_str(&a.body)
            .map_err(|e| ScenarioError::Setup(format!("POST {path}: {e}")))?;
        Ok(v.get("affected")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0))
    }

    /// Changes the dispatch rate.
    pub async fn set_event_rate(&self, per_sec: f64) -> Result<()> {
        self.control("event-rate", &format!("{{\"events_per_sec\": {per_sec}}}"))
            .await
            .map(drop)
    }

    /// Connections attached now, per shard total (`GET /sim/attached`).
    pub async fn attached_by_total(&self) -> Result<BTreeMap<u32, u64>> {
        let v: serde_json::Value = self.get_json("/sim/attached").await?;
        Ok(v["attached"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, n)| Some((k.parse().ok()?, n.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Shards with a connection attached now (from the truth of sessions:
    /// a `heartbeat-request` reaches exactly the attached connections, and
    /// answering it is harmless).
    pub async fn attached(&self) -> Result<u64> {
        self.control("faults/heartbeat-request", "{}").await
    }
}
