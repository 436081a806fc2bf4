#![allow(clippy::unwrap_used)]
use super::*;

fn shard(id: u32, total: u32, state: &str, process: &str, since: u64) -> ShardReport {
    ShardReport {
        id,
        total,
        state: state.into(),
        process: process.into(),
        bucket: u16::try_from(id % 16).unwrap(),
        guilds: 2,
        rtt_ms: Some(1.5),
        events_per_sec: 1.0,
        state_since_ms: since,
        queued_since_ms: None,
        last_identify_ms: None,
        last_resume_ms: None,
        last_close: None,
    }
}

fn report(name: &str, at_ms: u64, total: u32, shards: Vec<ShardReport>) -> ProcessReport {
    ProcessReport {
        name: name.into(),
        host: String::new(),
        at_ms,
        total,
        phase: None,
        events_per_sec: shards.iter().map(|s| s.events_per_sec).sum(),
        shards,
        sink: SinkReport::default(),
        dns: DnsReport::default(),
        identify_throttle_ms: 0,
        budget: None,
        reshard: None,
    }
}

#[test]
fn merges_processes_and_shows_missing_shards_as_unreported() {
    let a = report(
        "sharder-0",
        1_000,
        8,
        (0..4)
            .map(|i| shard(i, 8, "active", "sharder-0", 0))
            .collect(),
    );
    let b = report(
        "sharder-1",
        1_100,
        8,
        vec![
            shard(4, 8, "active", "sharder-1", 0),
            shard(5, 8, "resuming", "sharder-1", 900),
        ],
    );
    let v = view(vec![a, b], "sharder-0", 1_200, 1_000, Scope::Cluster, None);
    assert_eq!(v.total, 8);
    assert_eq!(v.shards.len(), 6);
    assert_eq!(v.summary.shards, 8);
    assert_eq!(v.summary.active, 5);
    assert_eq!(v.summary.by_state["active"], 5);
    assert_eq!(v.summary.by_state["resuming"], 1);
    assert_eq!(v.summary.by_state["unreported"], 2, "shards 6 and 7");
    assert_eq!(v.shards[5].process, "sharder-1");
    let ages: Vec<u64> = v.processes.iter().map(|p| p.age_ms).collect();
    assert_eq!(ages, [200, 100], "ordered by name, not by report age");
}

#[test]
fn processes_keep_a_steady_numeric_order() {
    let names = ["sharder-10", "sharder-2", "sharder-0", "sharder-1"];
    let reports = names
        .iter()
        .enumerate()
        .map(|(i, n)| report(n, 1_000 + i as u64, 4, Vec::new()))
        .collect();
    let v = view(reports, "sharder-0", 2_000, 1_000, Scope::Cluster, None);
    let order: Vec<&str> = v.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(order, ["sharder-0", "sharder-1", "sharder-2", "sharder-10"]);
}

#[test]
fn the_newest_report_of_a_shard_wins() {
    // A restarted pod's old report has not expired yet.
    let old = report(
        "sharder-shards-0-2",
        1_000,
        2,
        vec![shard(0, 2, "stopped", "old", 0)],
    );
    let new = report("sharder-0", 2_000, 2, vec![shard(0, 2, "active", "new", 0)]);
    let v = view(
        vec![old, new],
        "sharder-0",
        2_000,
        1_000,
        Scope::Cluster,
        None,
    );
    assert_eq!(v.shards.len(), 1);
    assert_eq!(v.shards[0].state, "active");
    assert_eq!(v.shards[0].process, "new");
}

#[test]
fn shards_of_another_total_are_not_in_the_grid() {
    // Mid-reshard the new generation's shards are not the bot's yet.
    let r = report(
        "sharder-0",
        1_000,
        2,
        vec![shard(0, 2, "active", "p", 0), shard(3, 4, "active", "p", 0)],
    );
    let v = view(vec![r], "sharder-0", 1_000, 1_000, Scope::Process, None);
    assert_eq!(v.total, 2);
    assert_eq!(v.shards.len(), 1);
    assert_eq!(v.summary.by_state["unreported"], 1);
}

#[test]
fn the_identify_queue_is_longest_wait_first() {
    let r = report(
        "sharder-0",
        10_000,
        4,
        vec![
            shard(0, 4, "waiting_for_identify", "p", 9_000),
            // Identifying since 9,900, in the queue since 8,000.
            ShardReport {
                queued_since_ms: Some(8_000),
                ..shard(1, 4, "identifying", "p", 9_900)
            },
            shard(2, 4, "waiting_for_identify", "p", 5_000),
            shard(3, 4, "active", "p", 0),
        ],
    );
    let v = view(vec![r], "sharder-0", 10_000, 1_000, Scope::Process, None);
    let queue: Vec<(u32, u64)> = v
        .identify_queue
        .iter()
        .map(|q| (q.shard, q.waiting_ms))
        .collect();
    assert_eq!(queue, [(2, 5_000), (1, 2_000), (0, 1_000)]);
    assert_eq!(v.identify_queue[0].bucket, 2);
}

#[test]
fn the_serving_process_s_total_is_the_grid_s_size() {
    // A process still starting knows no total yet; the others do.
    let starting = ProcessReport {
        phase: Some("GET /gateway/bot".into()),
        ..report("sharder-1", 2_000, 0, Vec::new())
    };
    let running = report("sharder-0", 1_000, 16, vec![shard(0, 16, "active", "p", 0)]);
    let v = view(
        vec![starting, running],
        "sharder-1",
        2_000,
        1_000,
        Scope::Cluster,
        None,
    );
    assert_eq!(v.total, 16);
    assert_eq!(v.summary.by_state["unreported"], 15);
    assert_eq!(v.processes[1].name, "sharder-1");
    assert_eq!(v.processes[1].phase.as_deref(), Some("GET /gateway/bot"));
}

#[test]
fn a_report_survives_its_trip_through_redis_as_json() {
    let mut r = report("sharder-0", 1, 1, vec![shard(0, 1, "active", "p", 0)]);
    r.shards[0].last_close = Some(LastClose {
        code: Some(4000),
        reason: "closed with 4000 unknown error".into(),
        at_ms: 5,
    });
    r.budget = Some(BudgetReport {
        total: 1000,
        remaining: 999,
        reset_in_ms: 1,
        shared: true,
        max_concurrency: 16,
    });
    let back: ProcessReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}
