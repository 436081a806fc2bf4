//! A directory of its own for one test (configurations, session files,
//! process logs), removed when the test ends, pass or fail.

use crate::services::unique_name;
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a directory named after `what` (see [`unique_name`]).
    pub fn new(what: &str) -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(unique_name(what));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
