//! Which process runs which shards, checked before anything connects.
//!
//! Two processes identifying on the same rate-limit key
//! (`shard_id % max_concurrency`) within one window get op 9 and retry; in a
//! loop that burns the session start budget. Processes can only avoid that
//! by sharing the key's window through Redis, or by never sharing a key. A
//! shard run by two processes is worse: two sessions, every event twice. So
//! the layout is validated as a whole, at start-up, by a pure function.
//!
//! # Algorithm
//! [`plan_shards`] computes every process's shard set from the layout (all
//! processes use the same configuration, so each can check the whole
//! cluster, not just itself), then [`check_assignment`]:
//! - every shard id is below `total_shards`, and every shard is run by
//!   exactly one process (no overlap, no gap);
//! - without a shared lock, no rate-limit key appears in two processes.
//!
//! Layouts: `contiguous` splits `0..total` into `process_count` even ranges
//! (needs Redis once there are two processes, since every range of 16 or
//! more shards touches every key); `buckets` gives process `k` the keys
//! `b` with `b % process_count == k` and all their shards (e.g. 288 shards,
//! max_concurrency 16, 8 pods: 2 keys and 36 shards each, no Redis needed);
//! `ranges` takes explicit `[start, end)` ranges, one per process.

use std::collections::BTreeMap;
use std::ops::Range;

/// How shards are split between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardAssignment {
    /// Even contiguous ranges.
    Contiguous,
    /// Whole rate-limit keys per process.
    Buckets,
    /// One explicit range per process.
    Ranges(Vec<Range<u32>>),
}

/// The cluster-wide facts a plan needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    pub total_shards: u32,
    pub max_concurrency: u16,
    pub process_count: u32,
    pub assignment: ShardAssignment,
    /// True when the processes share identify windows through Redis.
    pub shared_lock: bool,
}

impl ClusterLayout {
    /// The layout `[sharder]` describes, for `max_concurrency` keys;
    /// `shared_lock` when `[redis]` is configured for the identify lock.
    pub fn from_config(c: &config::SharderConfig, max_concurrency: u16, shared_lock: bool) -> Self {
        let assignment = match c.assignment {
            config::ShardAssignmentKind::Contiguous => ShardAssignment::Contiguous,
            config::ShardAssignmentKind::Buckets => ShardAssignment::Buckets,
            config::ShardAssignmentKind::Ranges => {
                ShardAssignment::Ranges(c.shard_ranges.iter().map(|&[a, b]| a..b).collect())
            }
        };
        Self {
            total_shards: c.total_shards,
            max_concurrency,
            process_count: c.process_count,
            assignment,
            shared_lock,
        }
    }
}

/// A layout that would break the gateway's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "shard {shard} is assigned to processes {first} and {second}; each shard must run once"
    )]
    Overlap {
        shard: u32,
        first: usize,
        second: usize,
    },
    #[error("shard {shard} of {total} is assigned to no process")]
    Gap { shard: u32, total: u32 },
    #[error(
        "identify key {bucket} (shard_id % {max_concurrency}) is used by processes {first} and \
         {second} without a shared lock, so they could identify in one window; use \
         assignment = \"buckets\" or configure [redis] for the identify lock"
    )]
    SharedBucket {
        bucket: u32,
        max_concurrency: u16,
        first: usize,
        second: usize,
    },
}

/// The shards of every process, in process order.
pub fn plan_cluster(layout: &ClusterLayout) -> Result<Vec<Vec<u32>>, PlanError> {
    let ClusterLayout {
        total_shards: total,
        max_concurrency,
        process_count: count,
        ..
    } = *layout;
    if total == 0 || count == 0 || max_concurrency == 0 {
        return Err(PlanError::Invalid(format!(
            "total_shards ({total}), process_count ({count}) and max_concurrency \
             ({max_concurrency}) must all be at least 1"
        )));
    }
    let mc = u32::from(max_concurrency);
    let sets: Vec<Vec<u32>> = match &layout.assignment {
        ShardAssignment::Contiguous => {
            if count > total {
                return Err(PlanError::Invalid(format!(
                    "{count} processes for {total} shards would leave processes idle"
                )));
            }
            let bound = |k: u32| u32::try_from(u64::from(k) * u64::from(total) / u64::from(count));
            (0..count)
                .map(|k| match (bound(k), bound(k + 1)) {
                    (Ok(a), Ok(b)) => Ok((a..b).collect()),
                    _ => Err(PlanError::Invalid("shard count overflow".into())),
                })
                .collect::<Result<_, _>>()?
        }
        ShardAssignment::Buckets => {
            if count > mc.min(total) {
                return Err(PlanError::Invalid(format!(
                    "assignment = \"buckets\" needs at most min(max_concurrency {mc}, \
                     total_shards {total}) processes, not {count}"
                )));
            }
            (0..count)
                .map(|k| (0..total).filter(|s| (s % mc) % count == k).collect())
                .collect()
        }
        ShardAssignment::Ranges(ranges) => {
            if ranges.len() != usize::try_from(count).unwrap_or(usize::MAX) {
                return Err(PlanError::Invalid(format!(
                    "{} shard ranges given for {count} processes; give one per process",
                    ranges.len()
                )));
            }
            for r in ranges {
                if r.start >= r.end || r.end > total {
                    return Err(PlanError::Invalid(format!(
                        "shard range [{}, {}) is empty or beyond total_shards {total}",
                        r.start, r.end
                    )));
                }
            }
            ranges.iter().map(|r| r.clone().collect()).collect()
        }
    };
    check_assignment(&sets, total, max_concurrency, layout.shared_lock)?;
    Ok(sets)
}

/// The shards process `index` runs, after checking the whole layout.
pub fn plan_shards(layout: &ClusterLayout, index: u32) -> Result<Vec<u32>, PlanError> {
    let mut sets = plan_cluster(layout)?;
    let i = usize::try_from(index).unwrap_or(usize::MAX);
    if i >= sets.len() {
        return Err(PlanError::Invalid(format!(
            "process index {index} is not below process_count {}",
            layout.process_count
        )));
    }
    Ok(sets.swap_remove(i))
}

/// Checks a cluster's shard sets (one per process) against the rules above.
pub fn check_assignment(
    sets: &[Vec<u32>],
    total: u32,
    max_concurrency: u16,
    shared_lock: bool,
) -> Result<(), PlanError> {
    let mc = u32::from(max_concurrency.max(1));
    let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
    let mut bucket_owner: BTreeMap<u32, usize> = BTreeMap::new();
    for (process, set) in sets.iter().enumerate() {
        for &shard in set {
            if shard >= total {
                return Err(PlanError::Invalid(format!(
                    "shard {shard} is not below total_shards {total}"
                )));
            }
            if let Some(&first) = owner.get(&shard)
                && first != process
            {
                return Err(PlanError::Overlap {
                    shard,
                    first,
                    second: process,
                });
            }
            owner.insert(shard, process);
            let bucket = shard % mc;
            match bucket_owner.get(&bucket) {
                Some(&first) if first != process && !shared_lock => {
                    return Err(PlanError::SharedBucket {
                        bucket,
                        max_concurrency,
                        first,
                        second: process,
                    });
                }
                Some(_) => {}
                None => {
                    bucket_owner.insert(bucket, process);
                }
            }
        }
    }
    if let Some(shard) = (0..total).find(|s| !owner.contains_key(s)) {
        return Err(PlanError::Gap { shard, total });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn layout(total: u32, mc: u16, count: u32, a: ShardAssignment, shared: bool) -> ClusterLayout {
        ClusterLayout {
            total_shards: total,
            max_concurrency: mc,
            process_count: count,
            assignment: a,
            shared_lock: shared,
        }
    }

    #[test]
    fn buckets_split_288_shards_into_8_pods_of_36() {
        let l = layout(288, 16, 8, ShardAssignment::Buckets, false);
        let sets = plan_cluster(&l).unwrap();
        assert!(sets.iter().all(|s| s.len() == 36));
        let pod3 = plan_shards(&l, 3).unwrap();
        assert!(pod3.iter().all(|s| [3, 11].contains(&(s % 16))), "{pod3:?}");
        assert!(plan_shards(&l, 8).is_err());
    }

    #[test]
    fn contiguous_needs_a_lock_with_several_processes() {
        let e = plan_cluster(&layout(64, 16, 2, ShardAssignment::Contiguous, false)).unwrap_err();
        assert!(
            matches!(e, PlanError::SharedBucket { bucket: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("[redis]"));
        let sets = plan_cluster(&layout(64, 16, 2, ShardAssignment::Contiguous, true)).unwrap();
        assert_eq!(sets[1], (32..64).collect::<Vec<_>>());
        // One process owns every key: nothing to share.
        assert_eq!(
            plan_shards(&layout(10, 16, 1, ShardAssignment::Contiguous, false), 0).unwrap(),
            (0..10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn explicit_ranges_are_checked() {
        let r = |v: &[(u32, u32)]| ShardAssignment::Ranges(v.iter().map(|&(a, b)| a..b).collect());
        // Ranges with disjoint keys need no lock.
        assert!(plan_cluster(&layout(4, 4, 2, r(&[(0, 2), (2, 4)]), false)).is_ok());
        let overlap = plan_cluster(&layout(8, 4, 2, r(&[(0, 5), (4, 8)]), true)).unwrap_err();
        assert_eq!(
            overlap,
            PlanError::Overlap {
                shard: 4,
                first: 0,
                second: 1
            }
        );
        let gap = plan_cluster(&layout(8, 4, 2, r(&[(0, 3), (4, 8)]), true)).unwrap_err();
        assert_eq!(gap, PlanError::Gap { shard: 3, total: 8 });
        let misaligned = plan_cluster(&layout(8, 4, 2, r(&[(0, 4), (4, 8)]), false)).unwrap_err();
        assert!(matches!(misaligned, PlanError::SharedBucket { .. }));
        for bad in [r(&[(0, 8)]), r(&[(0, 9), (4, 8)]), r(&[(3, 3), (0, 8)])] {
            assert!(
                plan_cluster(&layout(8, 4, 2, bad.clone(), true)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn layout_from_config_is_checked() {
        let cfg = config::Config::from_toml_str(
            "[sharder]\ntotal_shards = 288\nprocess_count = 8\nprocess_index = 2\n\
             assignment = \"buckets\"\n",
            "t",
            Vec::new(),
        )
        .unwrap();
        let l = ClusterLayout::from_config(&cfg.sharder, 16, false);
        let mine = plan_shards(&l, cfg.sharder.process_index).unwrap();
        assert_eq!(mine.len(), 36);
        assert!(mine.iter().all(|s| [2, 10].contains(&(s % 16))));
        let cfg = config::Config::from_toml_str(
            "[sharder]\ntotal_shards = 64\nprocess_count = 2\n",
            "t",
            Vec::new(),
        )
        .unwrap();
        let e = plan_shards(&ClusterLayout::from_config(&cfg.sharder, 16, false), 0);
        assert!(matches!(e, Err(PlanError::SharedBucket { .. })), "{e:?}");
        assert!(plan_shards(&ClusterLayout::from_config(&cfg.sharder, 16, true), 0).is_ok());
    }

    #[test]
    fn degenerate_layouts_are_errors() {
        assert!(plan_cluster(&layout(0, 16, 1, ShardAssignment::Contiguous, false)).is_err());
        assert!(plan_cluster(&layout(16, 0, 1, ShardAssignment::Contiguous, false)).is_err());
        assert!(plan_cluster(&layout(16, 16, 0, ShardAssignment::Contiguous, false)).is_err());
        assert!(plan_cluster(&layout(4, 16, 5, ShardAssignment::Contiguous, true)).is_err());
        assert!(plan_cluster(&layout(64, 16, 17, ShardAssignment::Buckets, false)).is_err());
        assert!(check_assignment(&[vec![0, 9]], 9, 1, false).is_err());
    }
}
