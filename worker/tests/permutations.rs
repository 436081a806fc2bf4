//! The cache's central property: any permutation of an event log, with any
//! duplicates, leaves exactly the state of applying the log once in order,
//! and that state equals the simulator's ground truth. Also: a join is
//! announced at most once, and exactly once per real join when delivered in
//! order, whatever the redeliveries.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Logged, ids, run, sim_log_with, state, truth_views, unversioned};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use worker::{CacheOptions, MemoryStore, RedisStore, Store, Worker};

/// The log permuted by `keys` (one sort key per delivery), with the events
/// at `dups` delivered twice.
fn shuffled(log: &[Logged], keys: &[u64], dups: &[prop::sample::Index]) -> Vec<Logged> {
    let mut deliveries: Vec<Logged> = log.to_vec();
    for d in dups {
        deliveries.push(log[d.index(log.len())].clone());
    }
    let mut keyed: Vec<(u64, usize, Logged)> = deliveries
        .into_iter()
        .enumerate()
        .map(|(i, e)| (keys[i % keys.len()], i, e))
        .collect();
    keyed.sort_by_key(|(k, i, _)| (*k, *i));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

fn joins_counter<S: Store>(store: S) -> (Worker<S>, Arc<Mutex<BTreeMap<u64, usize>>>) {
    let joins = Arc::new(Mutex::new(BTreeMap::new()));
    let j = joins.clone();
    let w = Worker::new(store)
        .with_options(CacheOptions {
            presences: true,
            voice_states: true,
        })
        .on("GUILD_JOINED", move |ev| {
            *j.lock().unwrap().entry(ev.guild_id.unwrap()).or_insert(0) += 1;
        });
    (w, joins)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn in_order_log_equals_ground_truth_and_joins_exactly_once() {
    let rt = runtime();
    let mut lost_removals = 0;
    let mut gap_joins = 0;
    let mut presences = 0;
    for seed in 0..6 {
        // Odd seeds lose events in a session gap and recover by snapshots.
        let log = sim_log_with(seed, 2, 4, 400, seed % 2 == 1);
        lost_removals += log.lost_removals;
        gap_joins += log.gap_joins;
        let (w, joins) = joins_counter(MemoryStore::new());
        // Every event delivered twice in a row: a redelivery each time.
        let doubled: Vec<Logged> = log
            .events
            .iter()
            .flat_map(|e| [e.clone(), e.clone()])
            .collect();
        let report = rt.block_on(run(&w, &doubled));
        assert!(report.invalid.is_empty(), "{:?}", report.invalid);
        assert!(report.dropped >= log.events.len());
        let truth = truth_views(&log.world);
        assert!(!truth.is_empty());
        let (guilds, _) = ids(&log.events);
        for gid in guilds {
            let view = w.store().guild_now(gid);
            presences += view.as_ref().map_or(0, |v| v.presences.len());
            let got = view.map(|v| unversioned(&v));
            assert_eq!(got, truth.get(&gid).cloned(), "seed {seed} guild {gid}");
        }
        let joins = joins.lock().unwrap();
        assert_eq!(joins.values().sum::<usize>(), log.joins, "seed {seed}");
        assert!(joins.values().all(|&n| n == 1));
    }
    // The gaps did lose removals, which READY reconciliation repaired, and
    // joins, which the next READY revealed.
    assert!(lost_removals > 0);
    assert!(gap_joins > 0);
    assert!(presences > 0, "the logs exercise the presence cache");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_permutation_with_duplicates_equals_in_order_memory(
        seed in 0u64..1_000,
        keys in proptest::collection::vec(any::<u64>(), 64..512),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..80),
    ) {
        let rt = runtime();
        let log = sim_log_with(seed, 2, 3, 200, seed % 2 == 1);
        let (guilds, users) = ids(&log.events);
        let (once, _) = joins_counter(MemoryStore::new());
        rt.block_on(run(&once, &log.events));
        let want = rt.block_on(state(once.store().as_ref(), &guilds, &users));

        let (perm, joins) = joins_counter(MemoryStore::new());
        let report = rt.block_on(run(&perm, &shuffled(&log.events, &keys, &dups)));
        let got = rt.block_on(state(perm.store().as_ref(), &guilds, &users));
        prop_assert_eq!(&got, &want);
        // No join is announced twice, nor for a guild that was not joined.
        prop_assert!(joins.lock().unwrap().values().all(|&n| n == 1));
        prop_assert!(joins.lock().unwrap().len() <= log.joins);
        prop_assert!(report.dropped >= dups.len());
    }
}

fn redis_prefix(tag: &str) -> String {
    testkit::unique_name(tag)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn any_permutation_with_duplicates_equals_in_order_redis(
        seed in 0u64..1_000,
        keys in proptest::collection::vec(any::<u64>(), 64..512),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let rt = runtime();
        let log = sim_log_with(seed, 2, 3, 120, seed % 2 == 1);
        let (guilds, users) = ids(&log.events);
        let (once, _) = joins_counter(MemoryStore::new());
        rt.block_on(run(&once, &log.events));
        let want = rt.block_on(state(once.store().as_ref(), &guilds, &users));

        let store = rt
            .block_on(RedisStore::connect("redis://127.0.0.1:6379/", &redis_prefix("perm")))
            .unwrap();
        let (perm, joins) = joins_counter(store.clone());
        rt.block_on(run(&perm, &shuffled(&log.events, &keys, &dups)));
        let got = rt.block_on(state(&store, &guilds, &users));
        rt.block_on(store.purge()).unwrap();
        // Redis and memory agree, versions included.
        prop_assert_eq!(&got, &want);
        prop_assert!(joins.lock().unwrap().values().all(|&n| n == 1));
    }
}
