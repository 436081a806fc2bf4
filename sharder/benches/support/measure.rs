//! CPU seconds and resident memory of a process, from `/proc`.
//!
//! CPU time is `utime + stime` of `/proc/<pid>/stat` (every thread, dead
//! ones included) in clock ticks of 10 ms (`getconf CLK_TCK` is 100 on
//! Linux); measurement windows are seconds long, so the tick is well under
//! 1 % of a reading. RSS is `VmRSS` of `/proc/<pid>/status`.

use anyhow::{Context, bail};

/// Linux's `USER_HZ`.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// User plus system CPU seconds of `pid` (this process when `None`).
pub fn cpu_seconds(pid: Option<u32>) -> anyhow::Result<f64> {
    let path = proc_path(pid, "stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces; fields after it are
    // plain numbers. After ')' come field 3 (state) onwards, so utime (14)
    // and stime (15) are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("{path}: too few fields");
    }
    let utime: f64 = fields[11].parse().context("utime")?;
    let stime: f64 = fields[12].parse().context("stime")?;
    Ok((utime + stime) / CLOCK_TICKS_PER_SEC)
}

/// Resident set size of `pid` (this process when `None`), in bytes.
pub fn rss_bytes(pid: Option<u32>) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:").map(|k| k * 1024)
}

/// Peak resident set size, in bytes.
pub fn peak_rss_bytes(pid: Option<u32>) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:").map(|k| k * 1024)
}

fn status_kib(pid: Option<u32>, key: &str) -> anyhow::Result<u64> {
    let path = proc_path(pid, "status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{path}: no {key}"))?;
    line.trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: {line:?}"))
}

/// A point in time of this process: wall clock and CPU seconds.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: std::time::Instant,
    pub cpu: f64,
}

impl Sample {
    pub fn now() -> anyhow::Result<Self> {
        Ok(Self {
            at: std::time::Instant::now(),
            cpu: cpu_seconds(None)?,
        })
    }

    /// (wall seconds, CPU seconds) since `earlier`.
    pub fn since(&self, earlier: &Self) -> (f64, f64) {
        (
            self.at.duration_since(earlier.at).as_secs_f64(),
            self.cpu - earlier.cpu,
        )
    }
}
