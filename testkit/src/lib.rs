//! The Bulwark test kit: what the tests and benches of several crates
//! share, written once. Dev-only (`publish = false`): crates take it as a
//! `[dev-dependencies]` entry; the scenario suite (`bulwark-scenarios`),
//! itself test tooling and never shipped, takes it as a normal one.
//!
//! Why it exists: each of these was written again in every crate that
//! needed it (the proxy four times, the mutators three), and the copies
//! drifted (one proxy could hold bytes, another counted attempts per
//! second). One version with parameters serves every test.
//!
//! Without features it depends on no Bulwark crate, so `config`,
//! `envelope` and `dnscache` use it without building the rest; the
//! `simulator` and `envelope` features add what needs those crates (for
//! `envelope`'s own tests a dev-dependency cycle, which cargo allows: they
//! link the one `envelope` library).
//!
//! # What is here
//! - [`cut_proxy`]: [`CutProxy`], a TCP proxy a test cuts, restores and
//!   holds: broker and Redis outages without touching the shared services.
//! - [`reconnect_budget`]: how many reconnect attempts capped exponential
//!   backoff allows in an outage, the bound for what the proxy counted.
//! - [`mutation`]: [`Mutations`], proptest strategies that damage valid
//!   inputs, and [`mutated`]: the hostile-input tests of `config`,
//!   `envelope` and `sharder`.
//! - [`services`]: the RabbitMQ and Redis of the test environment and
//!   [`unique_name`], which keeps each test's exchanges, queues and keys
//!   apart; [`temp_dir`]: [`TempDir`], a directory removed on drop.
//! - [`dnsmasq`]: [`Dnsmasq`], a real DNS server on a loopback port with a
//!   query log, stopped and restarted at will; a missing dnsmasq is an
//!   error naming the package to install.
//! - [`bench_report`]: min/median/max, the Markdown table, machine and
//!   date, and CSV files for `bench/plot.py`.
//! - With the `simulator` feature: `ledger`, the simulator's ledger
//!   against what reached the queues ("nothing lost"), and
//!   `sim_sharder`, a sharder configured against a running simulator.
//! - With the `envelope` feature: `owned_event`, an envelope event that
//!   owns its bytes.
//! - With the `tls` feature: `tls`, a private CA made in the test, a TLS
//!   terminator in front of RabbitMQ and a TLS-only `redis-server`.

pub mod bench_report;
pub mod cut_proxy;
pub mod dnsmasq;
pub mod http_client;
#[cfg(feature = "simulator")]
pub mod ledger;
pub mod mutation;
#[cfg(feature = "envelope")]
pub mod owned_event;
pub mod reconnect_budget;
pub mod services;
#[cfg(feature = "simulator")]
pub mod sim_sharder;
pub mod temp_dir;
#[cfg(feature = "tls")]
pub mod tls;

pub use cut_proxy::CutProxy;
pub use dnsmasq::{Dnsmasq, DnsmasqError};
pub use http_client::{http, http_with};
pub use mutation::{Mutation, Mutations, mutated};
pub use services::unique_name;
pub use temp_dir::TempDir;
