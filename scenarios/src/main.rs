//! Placeholder until the scenario runner lands.
#![forbid(unsafe_code)]

fn main() {}
