//! min/median/max of repeated runs, the printed table, and CSV output.
//!
//! CSV files follow the convention `bench/plot.py` reads (bench/README.md):
//! leading `# key: value` comment lines (`title`, `x`, `y`, `machine`,
//! `date`, `command`), then a header row; the `x` column is the horizontal
//! axis and each `y` column (comma-separated names) becomes a plot.

use anyhow::Context;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// min/median/max of one quantity.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    /// `None` when `values` is empty.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

/// A table of named quantities, each measured once per run.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<(String, String, Vec<f64>)>,
}

impl Table {
    /// Records one run's value of `name` (in `unit`).
    pub fn add(&mut self, name: &str, unit: &str, value: f64) {
        match self.rows.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, _, v)) => v.push(value),
            None => self
                .rows
                .push((name.to_owned(), unit.to_owned(), vec![value])),
        }
    }

    /// The stats of `name`.
    pub fn stats(&self, name: &str) -> Option<Stats> {
        self.rows
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, _, v)| Stats::of(v))
    }

    /// Markdown, ready for BENCHMARKS.md.
    pub fn render(&self) -> String {
        let mut out = String::from("| quantity | unit | runs | min | median | max |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for (name, unit, v) in &self.rows {
            if let Some(s) = Stats::of(v) {
                let _ = writeln!(
                    out,
                    "| {name} | {unit} | {} | {} | {} | {} |",
                    v.len(),
                    fmt_num(s.min),
                    fmt_num(s.median),
                    fmt_num(s.max)
                );
            }
        }
        out
    }
}

/// Thousands separators for large numbers, 3 significant decimals for small.
pub fn fmt_num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        let n = x.round() as i64;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// The workspace's `bench/data` directory.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/data")
}

/// Writes a CSV of numbers with the plot header convention.
pub fn write_csv(
    file: &str,
    meta: &[(&str, String)],
    header: &[&str],
    rows: &[Vec<f64>],
) -> anyhow::Result<PathBuf> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|x| format!("{x}")).collect())
        .collect();
    write_csv_cells(file, meta, header, &cells)
}

/// Writes a CSV with the plot header convention, cells already formatted
/// (for a text column such as a `series`).
pub fn write_csv_cells(
    file: &str,
    meta: &[(&str, String)],
    header: &[&str],
    rows: &[Vec<String>],
) -> anyhow::Result<PathBuf> {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(file);
    let mut out = String::new();
    for (k, v) in meta {
        let _ = writeln!(out, "# {k}: {v}");
    }
    out.push_str(&header.join(","));
    out.push('\n');
    for r in rows {
        out.push_str(&r.join(","));
        out.push('\n');
    }
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Today's UTC date (`date -u +%F`), for CSV headers.
pub fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `nproc`, the CPU model and the date, for the report header.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpus} CPUs, {model}, load average {load}")
}
