//! Every refusal of [`plan_reshard`], and the plans it makes.

use super::*;
use std::collections::BTreeSet;

fn layout(total: u32, mc: u16, processes: u32, a: ShardAssignment, lock: bool) -> ClusterLayout {
    ClusterLayout {
        total_shards: total,
        max_concurrency: mc,
        process_count: processes,
        assignment: a,
        shared_lock: lock,
    }
}

fn context(current: ClusterLayout) -> ReshardContext {
    ReshardContext {
        current,
        partitions: 16,
        session_starts_remaining: 1000,
        budget_reset_in: Duration::from_secs(3600),
        identify_reserve: 10,
        identify_window: Some(Duration::from_millis(5050)),
    }
}

fn to(total: u32) -> ReshardRequest {
    ReshardRequest {
        to_total: total,
        force_shrink: false,
    }
}

fn refusal(request: ReshardRequest, context: &ReshardContext) -> (ReshardRefused, String) {
    let e = plan_reshard(&request, context).unwrap_err();
    let text = e.to_string();
    (e, text)
}

fn keys(shards: &[u32], mc: u32) -> BTreeSet<u32> {
    shards.iter().map(|s| s % mc).collect()
}

#[test]
fn sixty_four_to_128_shards_over_two_processes() {
    let ctx = context(layout(64, 16, 2, ShardAssignment::Buckets, false));
    let plan = plan_reshard(&to(128), &ctx).unwrap();
    assert_eq!((plan.from_total, plan.to_total), (64, 128));
    assert_eq!(plan.identifies, 128);
    assert_eq!(plan.buckets, 16);
    assert_eq!(plan.identify_windows, 8, "128 shards over 16 keys");
    assert_eq!(plan.identify_window, Duration::from_millis(5050));
    assert_eq!(plan.cold_boot_floor, Duration::from_millis(8 * 5050));
    assert_eq!(plan.session_starts_after, 1000 - 128);

    assert_eq!(plan.shards_per_process.len(), 2);
    let mut all = BTreeSet::new();
    for (k, shards) in plan.shards_per_process.iter().enumerate() {
        assert_eq!(shards.len(), 64);
        assert!(
            shards.iter().all(|s| (s % 16) % 2 == k as u32),
            "{shards:?}"
        );
        all.extend(shards.iter().copied());
    }
    assert_eq!(all, (0..128).collect(), "every new shard once");
    // Each identify key stays with the process that has it now, so the two
    // generations never contend for a key across processes.
    let old = plan_cluster(&ctx.current).unwrap();
    for (k, new) in plan.shards_per_process.iter().enumerate() {
        assert_eq!(keys(&old[k], 16), keys(new, 16), "process {k}");
    }

    let discord = ReshardContext {
        identify_window: None,
        ..ctx
    };
    let plan = plan_reshard(&to(128), &discord).unwrap();
    assert_eq!(
        plan.cold_boot_floor,
        Duration::from_secs(40),
        "8 windows of 5 s"
    );
}

#[test]
fn contiguous_with_a_shared_lock_splits_the_new_total_evenly() {
    let ctx = context(layout(64, 16, 2, ShardAssignment::Contiguous, true));
    let plan = plan_reshard(&to(128), &ctx).unwrap();
    assert_eq!(
        plan.shards_per_process,
        vec![(0..64).collect::<Vec<_>>(), (64..128).collect()]
    );
}

#[test]
fn max_concurrency_one_takes_any_total_one_window_per_shard() {
    let mut ctx = context(layout(5, 1, 1, ShardAssignment::Contiguous, false));
    ctx.partitions = 1;
    let plan = plan_reshard(&to(7), &ctx).unwrap();
    assert_eq!((plan.buckets, plan.identify_windows), (1, 7));
    assert_eq!(plan.cold_boot_floor, Duration::from_millis(7 * 5050));
}

#[test]
fn the_running_total_is_refused() {
    let ctx = context(layout(64, 16, 1, ShardAssignment::Contiguous, false));
    let (e, text) = refusal(to(64), &ctx);
    assert_eq!(e, ReshardRefused::Unchanged { total: 64 });
    assert!(text.contains("already runs 64"), "{text}");
}

#[test]
fn totals_outside_the_configuration_bound_are_refused() {
    let ctx = context(layout(64, 16, 1, ShardAssignment::Contiguous, false));
    let above = MAX_TOTAL_SHARDS + 16;
    let (e, text) = refusal(to(above), &ctx);
    assert_eq!(e, ReshardRefused::OutOfRange { requested: above });
    assert!(text.contains("1..=100000"), "{text}");
    let zero = ReshardRequest {
        to_total: 0,
        force_shrink: true,
    };
    assert_eq!(
        refusal(zero, &ctx).0,
        ReshardRefused::OutOfRange { requested: 0 }
    );
}

#[test]
fn shrinking_needs_force_shrink() {
    let ctx = context(layout(128, 16, 2, ShardAssignment::Buckets, false));
    let (e, text) = refusal(to(64), &ctx);
    assert_eq!(
        e,
        ReshardRefused::Shrink {
            current: 128,
            requested: 64
        }
    );
    assert!(
        text.contains("force_shrink") && text.contains("4011"),
        "{text}"
    );
    let forced = ReshardRequest {
        to_total: 64,
        force_shrink: true,
    };
    let plan = plan_reshard(&forced, &ctx).unwrap();
    assert_eq!((plan.to_total, plan.identifies), (64, 64));
}

#[test]
fn a_total_off_the_max_concurrency_multiple_is_refused() {
    let ctx = context(layout(64, 16, 1, ShardAssignment::Contiguous, false));
    let (e, text) = refusal(to(100), &ctx);
    assert_eq!(
        e,
        ReshardRefused::NotMultipleOfConcurrency {
            current: 64,
            requested: 100,
            max_concurrency: 16
        }
    );
    assert!(text.contains("ask for 96 or 112"), "{text}");
    // 64 is the running total: only the multiple above is suggested.
    assert!(refusal(to(70), &ctx).1.contains("ask for 80"));
    let shrink = ReshardRequest {
        to_total: 40,
        force_shrink: true,
    };
    assert!(refusal(shrink, &ctx).1.contains("ask for 32 or 48"));
}

#[test]
fn partitions_must_divide_the_requested_total() {
    let ctx = context(layout(64, 8, 1, ShardAssignment::Contiguous, false));
    let (e, text) = refusal(to(136), &ctx);
    assert_eq!(
        e,
        ReshardRefused::PartitionsSplitGuilds {
            partitions: 16,
            current: 64,
            requested: 136,
            max_concurrency: 8
        }
    );
    for part in [
        "136 shards is not divisible by amqp.partitions 16 (the running 64 is)",
        "shard_id % 16",
        "same partition queue",
        "a multiple of 16",
        "such as 144",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    // The suggestion is a multiple of both partitions and max_concurrency.
    let mut ctx = context(layout(96, 32, 1, ShardAssignment::Contiguous, false));
    ctx.partitions = 48;
    let text = refusal(to(160), &ctx).1;
    assert!(
        text.contains("a multiple of 96") && text.contains("such as 192"),
        "{text}"
    );
}

#[test]
fn partitions_must_divide_the_running_total_too() {
    let mut ctx = context(layout(48, 16, 1, ShardAssignment::Contiguous, false));
    ctx.partitions = 32;
    let text = refusal(to(128), &ctx).1;
    assert!(
        text.contains("the running 48 shards are not divisible by amqp.partitions 32:"),
        "{text}"
    );
    assert!(text.contains("change amqp.partitions"), "{text}");
    let text = refusal(to(144), &ctx).1;
    assert!(text.contains("(nor 144)"), "{text}");
}

#[test]
fn explicit_ranges_are_refused() {
    let ranges = ShardAssignment::Ranges(vec![0..32, 32..64]);
    let ctx = context(layout(64, 16, 2, ranges, true));
    let (e, text) = refusal(to(128), &ctx);
    assert_eq!(e, ReshardRefused::ExplicitRanges { current: 64 });
    assert!(text.contains("\"buckets\" or \"contiguous\""), "{text}");
}

#[test]
fn a_new_generation_layout_that_cannot_run_is_refused() {
    // 48 processes run 64 shards; 32 shards would leave 16 of them idle.
    let ctx = context(layout(64, 16, 48, ShardAssignment::Contiguous, true));
    let shrink = ReshardRequest {
        to_total: 32,
        force_shrink: true,
    };
    let (e, text) = refusal(shrink, &ctx);
    assert!(
        matches!(e, ReshardRefused::Layout(PlanError::Invalid(_))),
        "{e:?}"
    );
    assert!(text.contains("48 processes for 32 shards"), "{text}");
}

#[test]
fn the_budget_must_keep_identify_reserve() {
    let mut ctx = context(layout(64, 16, 2, ShardAssignment::Buckets, false));
    ctx.session_starts_remaining = 128 + 10;
    let plan = plan_reshard(&to(128), &ctx).unwrap();
    assert_eq!(plan.session_starts_after, 10, "exactly the reserve left");
    ctx.session_starts_remaining = 128 + 9;
    let (e, text) = refusal(to(128), &ctx);
    assert_eq!(
        e,
        ReshardRefused::Budget {
            needed: 128,
            remaining: 137,
            reserve: 10,
            reset_in: Duration::from_secs(3600)
        }
    );
    for part in [
        "128 identifies",
        "137 session starts",
        "identify_reserve",
        "3600s",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    // No overflow at the extremes.
    ctx.identify_reserve = u32::MAX;
    ctx.session_starts_remaining = u32::MAX;
    assert!(matches!(
        refusal(to(128), &ctx).0,
        ReshardRefused::Budget { .. }
    ));
}

#[test]
fn the_context_comes_from_the_configuration() {
    let cfg = config::Config::from_toml_str(
        "[sharder]\ntotal_shards = 64\nprocess_count = 2\nassignment = \"buckets\"\n\
         identify_reserve = 20\nidentify_window = \"6s\"\n[amqp]\npartitions = 8\n",
        "t",
        Vec::new(),
    )
    .unwrap();
    let ctx = ReshardContext::from_config(&cfg, 16, 500, Duration::from_secs(60));
    assert_eq!(ctx.current.total_shards, 64);
    assert_eq!(ctx.current.assignment, ShardAssignment::Buckets);
    assert!(!ctx.current.shared_lock, "no [redis]");
    assert_eq!((ctx.partitions, ctx.identify_reserve), (8, 20));
    let plan = plan_reshard(&to(128), &ctx).unwrap();
    assert_eq!(plan.cold_boot_floor, Duration::from_secs(48));
    assert_eq!(plan.session_starts_after, 372);
}
