//! Which replica should consume which partition: a pure function of the
//! partition list and the live member set, so every replica that sees the
//! same members computes the same answer without talking to the others.
//!
//! # Algorithm
//! Members are sorted by id; the partition at index `i` of the partition
//! list goes to member `i mod R`. Every partition has exactly one owner and
//! no member owns more than `ceil(P / R)` (nor fewer than `floor(P / R)`).
//! The cost of that perfect balance is churn: a member joining or leaving
//! moves up to most partitions, not just `1 / R` of them. A hand-over takes
//! a second or two and the worker's cache state lives in the shared store,
//! so balance matters more here than minimal movement.
//!
//! A replica that does not (yet) see itself among the members owns
//! nothing: it takes partitions only after its own heartbeat is visible to
//! the others, so it never takes what they still think is theirs by
//! design (the leases of [`crate::lease`] enforce it either way).

use std::collections::BTreeSet;

/// The partitions of `partitions` that member `me` owns when `members` are
/// alive (`members` in any order, duplicates ignored).
pub(crate) fn assign(partitions: &[u32], members: &[String], me: &str) -> BTreeSet<u32> {
    let sorted: BTreeSet<&str> = members.iter().map(String::as_str).collect();
    let Some(mine) = sorted.iter().position(|m| *m == me) else {
        return BTreeSet::new();
    };
    let r = sorted.len();
    partitions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % r == mine)
        .map(|(_, &p)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        // Out of order on purpose: the assignment sorts.
        (0..n).rev().map(|i| format!("worker-{i:02}")).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_none_holds_more_than_its_share() {
        for p in 0..40u32 {
            let partitions: Vec<u32> = (0..p).collect();
            for r in 1..12usize {
                let live = members(r);
                let mut owners = vec![0u32; p as usize];
                for m in &live {
                    let mine = assign(&partitions, &live, m);
                    let share = (p as usize).div_ceil(r);
                    assert!(mine.len() <= share, "P={p} R={r}: {m} holds {mine:?}");
                    assert!(mine.len() >= p as usize / r, "P={p} R={r}: {m} {mine:?}");
                    for q in mine {
                        owners[q as usize] += 1;
                    }
                }
                assert!(owners.iter().all(|&n| n == 1), "P={p} R={r}: {owners:?}");
            }
        }
    }

    #[test]
    fn every_replica_computes_the_same_answer_from_the_same_members() {
        let partitions: Vec<u32> = (0..16).collect();
        let a = members(4);
        let mut b = a.clone();
        b.reverse();
        b.push(a[0].clone());
        for m in &a {
            assert_eq!(assign(&partitions, &a, m), assign(&partitions, &b, m));
        }
    }

    #[test]
    fn a_replica_not_among_the_members_owns_nothing() {
        let partitions: Vec<u32> = (0..16).collect();
        assert!(assign(&partitions, &members(3), "stranger").is_empty());
        assert!(assign(&partitions, &[], "worker-00").is_empty());
    }

    #[test]
    fn a_sparse_partition_list_is_spread_by_position() {
        let partitions = [3, 7, 9, 12];
        let live = members(2);
        assert_eq!(
            assign(&partitions, &live, "worker-00"),
            BTreeSet::from([3, 9])
        );
        assert_eq!(
            assign(&partitions, &live, "worker-01"),
            BTreeSet::from([7, 12])
        );
    }
}
