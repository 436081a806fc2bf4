//! Live progress: progress bars on a terminal, plain lines otherwise.
//!
//! The pipeline hands a [`Snapshot`] to [`Progress::update`] a few times a
//! second and one-off lines (a batch connected, a phase began) to
//! [`Progress::note`]. On a terminal the snapshot drives two indicatif bars
//! (shards READY, and the event flow); when stdout is a file or a pipe
//! (CI logs) it becomes one plain line per second instead, so logs stay
//! readable.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// What the run is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Shards identify in batches.
    Booting,
    /// Every shard is READY; events flow.
    Traffic,
    /// Events stopped; the worker catches up.
    Draining,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Booting => "cold boot",
            Phase::Traffic => "traffic",
            Phase::Draining => "draining",
        }
    }
}

/// Entry counts of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub guilds: u64,
    pub channels: u64,
    pub roles: u64,
    pub members: u64,
    pub users: u64,
}

/// The pipeline at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub elapsed: Duration,
    pub phase: Phase,
    pub shards: u32,
    /// Shards whose READY reached the worker.
    pub ready: u32,
    /// The batch being identified (1-based) and the number of batches.
    pub batch: (u32, u32),
    /// Identifies granted, and their mean wait in the scheduler.
    pub identifies: u64,
    pub identify_wait_mean: Duration,
    pub forwarded: u64,
    pub processed: u64,
    /// Forwarded events per second since the previous snapshot.
    pub events_per_sec: f64,
    /// Entry counts (in-memory cache only).
    pub cache: Option<CacheCounts>,
    /// Guild announcements: available, joined, unavailable, removed.
    pub guild_events: (u64, u64, u64, u64),
}

impl Snapshot {
    fn shards_line(&self) -> String {
        format!(
            "batch {}/{}, {} identifies granted (mean wait {:.1}s)",
            self.batch.0,
            self.batch.1,
            self.identifies,
            self.identify_wait_mean.as_secs_f64()
        )
    }

    fn flow_line(&self) -> String {
        let cache = match self.cache {
            Some(c) => format!(
                "cache {} guilds, {} channels, {} roles, {} members, {} users",
                c.guilds, c.channels, c.roles, c.members, c.users
            ),
            None => "cache in Redis".to_owned(),
        };
        let (available, joined, unavailable, removed) = self.guild_events;
        format!(
            "{}: {} events forwarded ({:.0}/s), {} processed | {cache} | guilds: \
             {available} available, {joined} joined, {unavailable} outages, {removed} removed",
            self.phase.name(),
            self.forwarded,
            self.events_per_sec,
            self.processed,
        )
    }
}

/// Where progress goes.
pub enum Progress {
    /// Two live bars on a terminal.
    Bars {
        multi: MultiProgress,
        shards: ProgressBar,
        flow: ProgressBar,
    },
    /// A plain line per `every` on stdout.
    Lines {
        every: Duration,
        last: Option<Instant>,
    },
    /// Nothing (tests).
    Quiet,
}

impl Progress {
    /// Bars when stdout is a terminal, plain lines otherwise.
    pub fn auto(shards: u32) -> Self {
        if std::io::stdout().is_terminal() {
            Self::bars(shards)
        } else {
            Self::Lines {
                every: Duration::from_secs(1),
                last: None,
            }
        }
    }

    fn bars(shards: u32) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:32}] {pos}/{len} shards READY, {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = multi.add(ProgressBar::new(u64::from(shards)).with_style(style));
        let flow_style = ProgressStyle::with_template("  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let flow = multi.add(ProgressBar::new_spinner().with_style(flow_style));
        bar.enable_steady_tick(Duration::from_millis(120));
        Self::Bars {
            multi,
            shards: bar,
            flow,
        }
    }

    /// Shows `s`.
    pub fn update(&mut self, s: &Snapshot) {
        match self {
            Self::Bars { shards, flow, .. } => {
                shards.set_position(u64::from(s.ready));
                shards.set_message(s.shards_line());
                flow.set_message(s.flow_line());
            }
            Self::Lines { every, last } => {
                if last.is_some_and(|t| t.elapsed() < *every) {
                    return;
                }
                *last = Some(Instant::now());
                println!(
                    "[{:6.1}s] {}/{} shards READY, {} | {}",
                    s.elapsed.as_secs_f64(),
                    s.ready,
                    s.shards,
                    s.shards_line(),
                    s.flow_line()
                );
            }
            Self::Quiet => {}
        }
    }

    /// Prints a one-off line above the bars (or as a plain line).
    pub fn note(&mut self, line: &str) {
        match self {
            Self::Bars { multi, .. } => {
                if multi.println(line).is_err() {
                    println!("{line}");
                }
            }
            Self::Lines { .. } => {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
            Self::Quiet => tracing::debug!("{line}"),
        }
    }

    /// Removes the bars before the summary.
    pub fn finish(&mut self) {
        if let Self::Bars { shards, flow, .. } = self {
            shards.finish();
            flow.finish();
        }
    }
}
