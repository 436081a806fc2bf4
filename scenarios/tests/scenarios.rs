//! Every incident scenario at its fast size, one test each so a failure is
//! named. The scenarios run the built `sharder`, `worker`, `relay` and
//! `discord-sim` (`cargo test --workspace` builds them first; with
//! `-p bulwark-scenarios` alone, run
//! `cargo build -p sharder -p worker -p relay -p discord-sim --bins`
//! before) against RabbitMQ, Redis and dnsmasq on 127.0.0.1.
//!
//! They run one at a time (a process-wide lock): each one measures timing
//! against the protocol's limits, which two scenarios sharing two cores
//! would distort.

use bulwark_scenarios::{Size, run_blocking};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenario(name: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let report = run_blocking(name, Size::Fast);
    for (k, v) in &report.figures {
        println!("{name}: {k}: {v}");
    }
    assert!(
        report.passed,
        "scenario {name} failed:\n{}",
        report.failures().join("\n")
    );
}

#[test]
fn dns_storm() {
    scenario("dns-storm");
}

#[test]
fn dns_outage() {
    scenario("dns-outage");
}

#[test]
fn rolling_restart() {
    scenario("rolling-restart");
}

#[test]
fn cold_boot() {
    scenario("cold-boot");
}

#[test]
fn corrupt_data() {
    scenario("corrupt-data");
}

#[test]
fn broker_outage() {
    scenario("broker-outage");
}

#[test]
fn runtime_controls() {
    scenario("runtime-controls");
}

#[test]
fn rollout_safety() {
    scenario("rollout-safety");
}

#[test]
fn reshard_live() {
    scenario("reshard-live");
}

#[test]
fn reshard_4011() {
    scenario("reshard-4011");
}

#[test]
fn reshard_kill() {
    scenario("reshard-kill");
}

#[test]
fn list_names_every_scenario_once() {
    let names: Vec<&str> = bulwark_scenarios::SCENARIOS
        .iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names.len(), 14);
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 14, "{names:?}");
}

#[test]
fn worker_scale_out() {
    scenario("worker-scale-out");
}

#[test]
fn relay_clients() {
    scenario("relay-clients");
}

#[test]
fn status_page() {
    scenario("status-page");
}
