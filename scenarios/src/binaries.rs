//! Finding the built `sharder`, `worker`, `relay` and `discord-sim` executables.
//!
//! The scenarios run the real binaries, never an in-process copy: a crash
//! loop, an exit code or a signal handler only exists in a process. They
//! are looked up, in order, in `BULWARK_BIN_DIR`, next to the current
//! executable (the runner lives in `target/<profile>/`, test binaries in
//! `target/<profile>/deps/`), then in `$CARGO_TARGET_DIR/debug` and
//! `target/debug` of the workspace.

use crate::{Result, ScenarioError};
use std::path::{Path, PathBuf};

/// The directories searched, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("BULWARK_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            dirs.push(up.to_path_buf());
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t).join("debug"));
    }
    dirs.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug"),
    );
    dirs
}

/// The path of executable `name`, or an error that says how to build it.
pub fn locate(name: &str) -> Result<PathBuf> {
    let dirs = search_dirs();
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(ScenarioError::MissingBinary {
        name: name.to_owned(),
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The executables a scenario needs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub sharder: PathBuf,
    pub worker: PathBuf,
    pub relay: PathBuf,
    pub sim: PathBuf,
}

impl Binaries {
    /// Locates all four, failing on the first missing one.
    pub fn locate() -> Result<Self> {
        Ok(Self {
            sharder: locate("sharder")?,
            worker: locate("worker")?,
            relay: locate("relay")?,
            sim: locate("discord-sim")?,
        })
    }
}
