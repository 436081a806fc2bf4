//! Placeholder until the demo lands.
#![forbid(unsafe_code)]

fn main() {}
