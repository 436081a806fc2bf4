//! One measurement in a fresh child process of the bench binary.
//!
//! The parent runs `<this exe> --child <role> <flags>`; the child prints
//! exactly one line `RESULT <json>` on stdout and exits 0. Anything else it
//! prints goes to the parent's stderr. A child that has not answered within
//! its deadline is killed (by its own pid) and the run fails.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The flag that selects the child role.
pub const CHILD: &str = "child";

/// Prints the child's result line.
pub fn emit(result: &serde_json::Value) {
    println!("RESULT {result}");
}

/// A running child measurement.
pub struct ChildRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    role: String,
}

impl ChildRun {
    /// Starts `role` with `flags` (`--name value` pairs).
    pub fn spawn(role: &str, flags: &[(&str, String)]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("current_exe")?;
        let mut cmd = Command::new(exe);
        cmd.arg(format!("--{CHILD}")).arg(role);
        for (k, v) in flags {
            cmd.arg(format!("--{k}")).arg(v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning child {role}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            role: role.to_owned(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` to the child's standard input (see [`stdin_lines`]).
    pub fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("child stdin")?;
        writeln!(stdin, "{line}").context("writing to the child")?;
        stdin.flush().context("writing to the child")
    }

    /// Waits for a line starting with `prefix` (other lines are echoed to
    /// stderr); returns the rest of the line.
    pub fn wait_line(&mut self, prefix: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return Ok(rest.trim().to_owned()),
                    None => eprintln!("[{}] {line}", self.role),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.kill();
                    bail!("child {} gave no {prefix:?} within {within:?}", self.role);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "child {} exited ({status:?}) before printing {prefix:?}",
                        self.role
                    );
                }
            }
        }
    }

    /// Waits for the result line and the child's clean exit.
    pub fn result(mut self, within: Duration) -> anyhow::Result<serde_json::Value> {
        let line = self.wait_line("RESULT ", within)?;
        let status = self.child.wait().context("waiting for child")?;
        if !status.success() {
            bail!("child {} exited with {status}", self.role);
        }
        serde_json::from_str(&line).with_context(|| format!("child result {line:?}"))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The lines the parent [`ChildRun::tell`]s this child, read on a thread
/// of their own; the channel closes when the parent closes the pipe.
pub fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A number from a child's result.
pub fn num(v: &serde_json::Value, key: &str) -> anyhow::Result<f64> {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("result has no number {key:?}: {v}"))
}
