//! The process's Prometheus recorder, installed once.
//!
//! `metrics` has one global recorder per process. A binary installs it at
//! start-up; but the libraries also run side by side in one process (the
//! relay's tests run the sharder, the worker and the relay together), where
//! only the first install can win. So the first caller builds and installs
//! it, every later caller gets the same handle, and when something else
//! already installed a recorder the caller gets `None` (its `/metrics` is
//! off) instead of an error.

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use std::sync::{Mutex, PoisonError};

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
    *handle = Some(h.clone());
    Ok(Some(h))
}
