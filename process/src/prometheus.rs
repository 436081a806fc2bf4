//! The process's Prometheus recorder, installed once.
//!
//! `metrics` has one global recorder per process. A binary installs it at
//! start-up; but the libraries also run side by side in one process (the
//! relay's tests run the sharder, the worker and the relay together), where
//! only the first install can win. So the first caller builds and installs
//! it, every later caller gets the same handle, and when something else
//! already installed a recorder the caller gets `None` (its `/metrics` is
//! off) instead of an error.
//!
//! # Upkeep
//! The exporter keeps every histogram sample in a buffer until something
//! drains it: a scrape (`render`) or an upkeep. A process nobody scrapes
//! (no Prometheus in the cluster yet, a scrape config that misses the
//! port) would grow by one sample per recorded value, for ever: a worker
//! at 4k messages/s records ~4k `worker_apply_seconds` samples and, per
//! event, `worker_event_age_seconds` samples each second. So the install
//! also starts one thread that drains them every [`UPKEEP_EVERY`]; it
//! lives as long as the process, as the recorder does.

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How often histogram samples are folded into their buckets when nobody
/// scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The handle of the process's recorder, installing it with `build` when
/// none is installed yet; `None` when another recorder holds the slot.
pub fn prometheus(
    build: impl FnOnce() -> Result<PrometheusBuilder, BuildError>,
) -> Result<Option<PrometheusHandle>, BuildError> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut handle = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = &*handle {
        return Ok(Some(h.clone()));
    }
    let recorder = build()?.build_recorder();
    let h = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "another metrics recorder is installed in this process; /metrics is off");
        return Ok(None);
    }
    let upkeep = h.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        })
    {
        // Scrapes still drain the samples; only an unscraped process grows.
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; histograms are drained only by scrapes");
    }
    *handle = Some(h.clone());
    Ok(Some(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The install starts the upkeep thread once, and every later caller
    /// gets the same recorder.
    #[test]
    fn install_starts_one_upkeep_thread() {
        let first = prometheus(|| Ok(PrometheusBuilder::new()))
            .expect("builds")
            .expect("no other recorder in this test binary");
        metrics::counter!("bulwark_process_test_total").increment(3);
        let again = prometheus(|| panic!("built twice"))
            .expect("builds")
            .expect("installed");
        assert!(again.render().contains("bulwark_process_test_total 3"));
        assert!(first.render().contains("bulwark_process_test_total 3"));
        let upkeep_threads = || {
            std::fs::read_dir("/proc/self/task")
                .expect("procfs")
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "metrics-upkeep")
                })
                .count()
        };
        // A new thread names itself once it runs, after `spawn` returned:
        // wait for the name (a readiness condition with a deadline).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while upkeep_threads() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(upkeep_threads(), 1);
    }
}
