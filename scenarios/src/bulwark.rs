//! The `sharder` and `worker` executables as a scenario runs them: a TOML
//! file written per process (as the ConfigMap would be), the token from
//! the environment (as the Secret would be), a free loopback HTTP port,
//! and helpers for the probes, `/metrics` and the admin API.

use crate::child::ChildGuard;
use crate::http;
use crate::prometheus;
use crate::sim::{SimProcess, TOKEN};
use crate::{Result, ScenarioError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Intents of every scenario bot: GUILDS, GUILD_MEMBERS (so the cache can
/// equal the simulator's truth), GUILD_MESSAGES, GUILD_MESSAGE_TYPING.
pub const INTENTS: u64 = 1 | (1 << 1) | (1 << 9) | (1 << 11);

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ScenarioError::io("binding a free port", e))?;
    l.local_addr()
        .map_err(|e| ScenarioError::io("reading a free port", e))
}

/// A TOML configuration built key by key.
#[derive(Debug, Clone, Default)]
pub struct TomlConfig {
    sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl TomlConfig {
    /// Sets `section.key` to the TOML value `raw` (`42`, `true`, `"s"`).
    pub fn set(&mut self, section: &str, key: &str, raw: impl Into<String>) -> &mut Self {
        self.sections
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), raw.into());
        self
    }

    /// Sets `section.key` to the string `value`.
    pub fn set_str(&mut self, section: &str, key: &str, value: &str) -> &mut Self {
        let quoted = serde_json::to_string(value).unwrap_or_default();
        self.set(section, key, quoted)
    }

    /// Removes `section.key`.
    pub fn unset(&mut self, section: &str, key: &str) -> &mut Self {
        if let Some(s) = self.sections.get_mut(section) {
            s.remove(key);
        }
        self
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}

/// The configuration of a sharder running every shard of `sim`, publishing
/// to the topology `base` with `partitions`, HTTP on `http`, sessions in
/// `session_dir`; the identify window is the simulator's plus `margin_ms`
/// (a margin over Discord's window, as one keeps in production).
pub fn sharder_config(
    sim: &SimProcess,
    base: &str,
    partitions: u32,
    http: SocketAddr,
    session_dir: &Path,
    margin_ms: u64,
) -> TomlConfig {
    let mut c = TomlConfig::default();
    c.set_str("discord", "api_base", &sim.api_base())
        .set("discord", "intents", INTENTS.to_string())
        .set("sharder", "total_shards", sim.args.shards.to_string())
        .set_str("sharder", "gateway_url", &sim.gateway_url())
        .set_str("sharder", "http_listen", &http.to_string())
        .set_str("sharder", "session_dir", &session_dir.display().to_string())
        .set_str(
            "sharder",
            "identify_window",
            &format!("{}ms", sim.args.identify_window_ms + margin_ms),
        )
        .set(
            "sharder",
            "max_concurrency",
            sim.args.max_concurrency.to_string(),
        )
        .set_str("sharder", "persist_interval", "100ms")
        .set_str("sharder", "shutdown_grace", "5s")
        .set_str("sharder", "reconnect_base", "100ms")
        .set_str("sharder", "reconnect_max", "2s")
        .set_str("sharder", "compression", "zlib-stream")
        .set_str("sharder", "amqp_topology_base", base)
        .set_str("amqp", "url", crate::AMQP_URL)
        .set("amqp", "partitions", partitions.to_string());
    c
}

/// The configuration of a worker consuming topology `base`.
pub fn worker_config(base: &str, partitions: u32, http: SocketAddr) -> TomlConfig {
    let mut c = TomlConfig::default();
    c.set_str("amqp", "url", crate::AMQP_URL)
        .set("amqp", "partitions", partitions.to_string())
        .set_str("worker", "amqp_topology_base", base)
        .set_str("worker", "http_listen", &http.to_string())
        .set("worker", "ready_backlog", "100")
        .set("worker", "publish_events", "true");
    c
}

/// A running `sharder` or `worker`.
#[derive(Debug)]
pub struct Process {
    pub child: ChildGuard,
    /// Its HTTP listener (`/metrics`, probes, admin).
    pub http: SocketAddr,
    pub config_path: PathBuf,
}

impl Process {
    /// Writes `cfg` to `<dir>/<name>.toml` and starts `bin --config` it
    /// with `args`, the simulator's token in the environment and logs in
    /// `<dir>/<name>.log`.
    pub fn start(
        bin: &Path,
        name: &str,
        dir: &Path,
        cfg: &TomlConfig,
        http: SocketAddr,
        args: &[String],
    ) -> Result<Self> {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, cfg.render())
            .map_err(|e| ScenarioError::io("writing a config file", e))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config_path)
            .args(args)
            .env_remove("POD_NAME")
            .env_remove("BULWARK_CONFIG")
            .env("BULWARK_DISCORD__TOKEN", TOKEN)
            .env("RUST_LOG", crate::child_log_filter());
        // Overrides from the caller's environment would change the run, and
        // the runner's own `BULWARK_BIN_DIR` is not a config key: the
        // binaries refuse it (exit 78), as they refuse any unknown one.
        for (k, _) in std::env::vars() {
            if k.starts_with("BULWARK_") && k != "BULWARK_DISCORD__TOKEN" {
                cmd.env_remove(k);
            }
        }
        // The worker refuses an unknown BULWARK_ variable; the token is
        // only for the sharder.
        if bin.file_name().is_some_and(|n| n == "worker") {
            cmd.env_remove("BULWARK_DISCORD__TOKEN");
        }
        let child = ChildGuard::spawn(name, cmd, &dir.join(format!("{name}.log")))?;
        Ok(Self {
            child,
            http,
            config_path,
        })
    }

    /// `GET /metrics` text (empty when the process does not answer).
    pub async fn metrics(&self) -> String {
        match http::get(self.http, "/metrics").await {
            Ok(a) if a.status == 200 => a.body,
            _ => String::new(),
        }
    }

    /// The counter `name` (summed over labels matching `labels`).
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        prometheus::count(&self.metrics().await, name, labels)
    }

    /// The status of `GET /readyz` (None while nothing answers).
    pub async fn readyz(&self) -> Option<u16> {
        http::status(self.http, "/readyz").await
    }

    /// Waits for `/readyz` 200, failing early (with the log tail) if the
    /// process exits.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.readyz().await == Some(200) {
                return Ok(());
            }
            if let Some(status) = self.child.exited() {
                return Err(ScenarioError::Setup(format!(
                    "{} exited ({status}) before ready: {}",
                    self.child.name(),
                    self.child.log_tail(15)
                )));
            }
            if std::time::Instant::now() >= deadline {
                return Err(ScenarioError::Timeout {
                    what: format!(
                        "{} /readyz 200; log: {}",
                        self.child.name(),
                        self.child.log_tail(10)
                    ),
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST path` with `json` on the admin API; returns the status.
    pub async fn admin(&self, path: &str, json: &str) -> Result<u16> {
        http::post(self.http, path, json)
            .await
            .map(|a| a.status)
            .map_err(|e| ScenarioError::Setup(e.to_string()))
    }
}
