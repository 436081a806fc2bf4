//! Command-line flags of a bench binary: `--name value` pairs and bare
//! switches. `cargo bench` adds `--bench`, which is ignored.

use anyhow::{Context, bail};
use std::collections::HashMap;
use std::str::FromStr;

/// Parsed flags.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Flags {
    /// Flags of this process.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses `--name value` pairs; `--name` followed by another flag (or
    /// nothing) is a switch.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut out = Self::default();
        let mut it = args.into_iter().peekable();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}; flags are --name value");
            };
            if name == "bench" {
                continue;
            }
            match it.peek() {
                Some(v) if !v.starts_with("--") => {
                    let v = it.next().unwrap_or_default();
                    out.values.insert(name.to_owned(), v);
                }
                _ => out.switches.push(name.to_owned()),
            }
        }
        Ok(out)
    }

    /// The value of `--name`, or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| anyhow::anyhow!("--{name} {v:?}: {e}")),
        }
    }

    /// The value of a required `--name`.
    pub fn require(&self, name: &str) -> anyhow::Result<String> {
        self.values
            .get(name)
            .cloned()
            .with_context(|| format!("--{name} is required"))
    }

    /// A comma-separated list, or `default`.
    pub fn list<T>(&self, name: &str, default: &[T]) -> anyhow::Result<Vec<T>>
    where
        T: FromStr + Clone,
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--{name} {s:?}: {e}"))
                })
                .collect(),
        }
    }

    /// Whether the bare switch `--name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name) || self.values.contains_key(name)
    }
}
