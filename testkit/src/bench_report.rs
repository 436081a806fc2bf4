//! What every bench prints and writes: min/median/max of repeated runs, a
//! Markdown table for BENCHMARKS.md, the machine and date of a figure, and
//! CSV files for `bench/plot.py`.
//!
//! CSV files follow the convention `bench/plot.py` reads (bench/README.md):
//! leading `# key: value` comment lines (`title`, `x`, `y`, `machine`,
//! `date`, `command`), then a header row; the `x` column is the horizontal
//! axis and each `y` column (comma-separated names) becomes a plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// min/median/max of one quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    /// Finite `values`' min, max and median (the mean of the middle two
    /// for an even count); `None` when there is none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let v = sorted_finite(values);
        let n = v.len();
        if n == 0 {
            return None;
        }
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

    /// [`Stats::of`] with the middle run as the median (the upper of the
    /// middle two for an even count): always a measured value, as the
    /// simulator's, the worker's and the DNS cache's benches print it.
    pub fn middle_of(values: &[f64]) -> Option<Self> {
        let v = sorted_finite(values);
        Some(Self {
            min: *v.first()?,
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        })
    }
}

fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
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

/// A list of points as a `--points` argument: `250,500,1000`.
pub fn points_arg<T: ToString>(points: &[T]) -> String {
    points
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The workspace's `bench/data` directory.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/data")
}

/// Writes a CSV of numbers with the plot header convention into
/// [`data_dir`]; returns its path.
pub fn write_csv(
    file: &str,
    meta: &[(&str, String)],
    header: &[&str],
    rows: &[Vec<f64>],
) -> std::io::Result<PathBuf> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|x| format!("{x}")).collect())
        .collect();
    write_csv_cells(file, meta, header, &cells)
}

/// [`write_csv`] with the cells already formatted (for a text column such
/// as a `series`).
pub fn write_csv_cells(
    file: &str,
    meta: &[(&str, String)],
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<PathBuf> {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).map_err(|e| context(e, "creating", &dir))?;
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
    std::fs::write(&path, out).map_err(|e| context(e, "writing", &path))?;
    Ok(path)
}

fn context(e: std::io::Error, doing: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// Today's UTC date, `YYYY-MM-DD` (civil-from-days, H. Hinnant), for CSV
/// headers.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(secs / 86_400)
}

fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// CPU count, model and load average, for a report's header.
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

/// The `q` quantile of cumulative bucket counts, linear inside the bucket
/// it falls in (as Prometheus' `histogram_quantile`); NaN when empty.
pub fn bucket_quantile(cumulative: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = cumulative.last() else {
        return f64::NAN;
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, n) in cumulative {
        if n >= rank {
            // The `+Inf` bucket (or `f64::MAX` standing for it).
            if le.is_infinite() || le == f64::MAX {
                return lower;
            }
            let inside = n - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return lower + (le - lower) * frac;
        }
        (lower, below) = (le, n);
    }
    lower
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        let s = Stats::of(&[4.0, 1.0, f64::NAN, 2.0, 3.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
        let m = Stats::middle_of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((m.min, m.median, m.max), (1.0, 3.0, 4.0));
        assert!(Stats::of(&[]).is_none() && Stats::middle_of(&[f64::NAN]).is_none());
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(-1_000.0), "-1,000");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(0.5), "0.500");
        assert_eq!(points_arg(&[250u32, 500]), "250,500");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }

    #[test]
    fn the_table_renders_every_quantity() {
        let mut t = Table::default();
        t.add("rate", "events/s", 10.0);
        t.add("rate", "events/s", 30.0);
        assert_eq!(t.stats("rate").map(|s| s.median), Some(20.0));
        assert!(
            t.render()
                .contains("| rate | events/s | 2 | 10.0 | 20.0 | 30.0 |")
        );
    }

    #[test]
    fn bucket_quantiles_interpolate_inside_a_bucket() {
        let c = [
            (0.001, 50.0),
            (0.002, 90.0),
            (0.005, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((bucket_quantile(&c, 0.5) - 0.001).abs() < 1e-12);
        assert!((bucket_quantile(&c, 0.7) - 0.0015).abs() < 1e-12);
        assert!((bucket_quantile(&c, 0.99) - 0.0047).abs() < 1e-9);
        // Past the last finite bound: that bound.
        assert_eq!(
            bucket_quantile(&[(0.001, 1.0), (f64::INFINITY, 4.0)], 0.9),
            0.001
        );
        assert!(bucket_quantile(&[], 0.5).is_nan());
    }
}
