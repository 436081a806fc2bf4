//! Child processes that never outlive their scenario.
//!
//! Every process a scenario starts is held by a [`ChildGuard`], which kills
//! it (`SIGKILL`) and reaps it on drop, whether the scenario passed, failed
//! or panicked. Its output goes to a log file, so a failed scenario can show
//! the tail without anything asserting on log text.

use crate::{Result, ScenarioError};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running child process, killed on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| ScenarioError::io(format!("opening {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| ScenarioError::io("duplicating the log file", e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| ScenarioError::io(format!("starting {name}"), e))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Wraps an already spawned child.
    pub fn adopt(name: &str, child: Child, log: &Path) -> Self {
        Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// The process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Resident memory in KiB from `/proc/<pid>/status` (None once gone).
    pub fn rss_kib(&self) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU time (user + system) in clock ticks from `/proc/<pid>/stat`
    /// (None once gone); ticks are 1/100 s on Linux (`getconf CLK_TCK`).
    pub fn cpu_ticks(&self) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The command name (field 2) may hold spaces: fields after its ')'.
        let rest = text.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// Sends `SIGTERM` (the Kubernetes stop signal) through `kill(1)`.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().to_string();
        let out = Command::new("kill")
            .args(["-TERM", &pid])
            .output()
            .map_err(|e| ScenarioError::io("running kill -TERM", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ScenarioError::Setup(format!(
                "kill -TERM {pid} ({}) failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Waits up to `within` for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.exited() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(ScenarioError::Timeout {
                    what: format!("{} to exit", self.name),
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `SIGKILL` now and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
