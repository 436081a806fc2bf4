//! What a start finds of the last run's live reshard, before any shard
//! runs: the shard total to run (a completed reshard's, not the configured
//! one), whether to rejoin a reshard the other processes of the cluster
//! are still in, and an unfinished one to complete or roll back.
//!
//! # Algorithm
//! 1. Read the generation record (`generation.rs`) and, with several
//!    processes sharing Redis, the cluster's reshard state
//!    (`reshard_cluster.rs`). A cluster reshard laid out for another
//!    process count is refused: the StatefulSet must be scaled back first.
//! 2. A process restarted in the middle of the cluster's reshard rejoins it
//!    (its old total runs, the reshard carries on) instead of rolling back.
//! 3. Otherwise the record decides the total, and a reshard it left
//!    unfinished is completed (`completed`: the old total's sessions are
//!    retired) or rolled back (both totals' sessions are retired, so the
//!    old total identifies afresh with the newest epochs; only the new
//!    total's when the reshard was claimed and never announced). The
//!    marker that tells the workers how it ended is returned, to be
//!    published before any shard publishes.

use crate::generation;
use crate::reshard_cluster::{ClusterView, ReshardCluster};
use crate::runtime::RunError;
use crate::session_store::SessionStore;
use crate::startup::AnyStore;
use envelope::ReshardMarker;

/// What [`recover`] found.
pub(crate) struct Recovery {
    /// The configured total (0 with `total_shards = "auto"`), as the
    /// generation record keeps it.
    pub(crate) configured: u32,
    /// The cluster's shared reshard state, with several processes.
    pub(crate) cluster: Option<ReshardCluster>,
    /// The cluster's reshard in progress, which this process rejoins.
    pub(crate) rejoin: Option<ClusterView>,
    /// A reshard claimed and never announced: its claimer died while
    /// telling the workers, so only its new total is stale.
    pub(crate) never_announced: Option<u64>,
    /// The totals whose sessions an unfinished reshard left behind (already
    /// retired) and the marker that tells the workers how it ended.
    pub(crate) unfinished: Option<(Vec<u32>, ReshardMarker)>,
}

/// Steps 1 to 3 of the module docs. Sets `cfg.sharder.total_shards` to the
/// total to run.
pub(crate) async fn recover(
    cfg: &mut config::Config,
    store: &AnyStore,
    auto_total: bool,
) -> Result<Recovery, RunError> {
    let configured = if auto_total {
        0
    } else {
        cfg.sharder.total_shards
    };
    let record = generation::load_record(store).await;
    // Several processes share a reshard's state in Redis
    // (`reshard_cluster.rs`); one restarted in the middle of one carries on
    // with the others rather than rolling back.
    let cluster = match store {
        AnyStore::Redis(s)
            if cfg.sharder.process_count > 1 && cfg.sharder.process_shards.is_none() =>
        {
            Some(ReshardCluster::new(
                s.connection().clone(),
                &cfg.redis.key_prefix,
                cfg.sharder.process_index,
                cfg.sharder.process_count,
            ))
        }
        _ => None,
    };
    let view = match &cluster {
        Some(c) => match c.view().await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the cluster's reshard state");
                None
            }
        },
        None => None,
    };
    // Both totals' layouts depend on the process count: a pod of a
    // StatefulSet scaled mid-reshard would run the wrong shards.
    if let (Some(c), Some(v)) = (&cluster, &view)
        && v.running().is_some()
        && v.processes != 0
        && v.processes != c.processes
    {
        return Err(RunError::Config(format!(
            "a live reshard from {} to {} shards laid out for {} sharder processes is in \
             progress, and this one runs with process_count {}: scale the StatefulSet back to \
             {} replicas until it finishes (GET /admin/reshard)",
            v.from, v.to, v.processes, c.processes, v.processes
        )));
    }
    let rejoin = view
        .clone()
        .filter(|v| v.running().is_some() && record.is_some_and(|r| r.configured == configured));
    // Claimed, never announced: its claimer died while telling the
    // workers; no process joined, so only the new total is stale.
    let never_announced = view.as_ref().and_then(|v| {
        let m = record.and_then(|r| r.reshard)?;
        (v.id == Some(m.id) && !v.announced && !v.finished).then_some(m.id)
    });
    let mut resolved = generation::resolve(record, configured, cfg.sharder.total_shards);
    if let Some(v) = &rejoin {
        resolved = generation::Resolved {
            total: v.from,
            unfinished: None,
        };
    }
    if resolved.total != cfg.sharder.total_shards {
        tracing::warn!(
            configured = cfg.sharder.total_shards,
            running = resolved.total,
            "running the shard total of a completed live reshard; set sharder.total_shards to it"
        );
        cfg.sharder.total_shards = resolved.total;
    }
    // The totals whose sessions an unfinished reshard leaves behind, and
    // the marker that tells the workers how it ended.
    //
    // Rolled back, *both* totals' sessions are retired and the old total
    // identifies afresh: the new total wrote the cache with session epochs
    // newer than the old total's, so a resumed old session's writes would
    // lose to them for good (every entity the overlap touched would be
    // stuck). Fresh sessions have the newest epochs and reload every guild
    // by snapshot. That costs one identify per shard, once, after a crash
    // mid-reshard; a resume would be cheaper and wrong.
    let unfinished = resolved.unfinished.map(|mut m| {
        let forward = m.phase == envelope::ReshardPhase::Completed;
        if !forward {
            m.phase = envelope::ReshardPhase::Aborted;
        }
        let stale = if forward {
            vec![m.from]
        } else if never_announced == Some(m.id) {
            vec![m.to]
        } else {
            vec![m.to, m.from]
        };
        (stale, m)
    });
    if let Some((stale, m)) = &unfinished {
        tracing::warn!(
            from = m.from,
            to = m.to,
            outcome = m.phase.event_name(),
            "the last live reshard did not finish: completing what its record says"
        );
        for &total in stale {
            match store.retire_generation(total).await {
                Ok(n) => tracing::info!(total, sessions = n, "sessions retired"),
                Err(e) => tracing::error!(
                    total,
                    error = %e,
                    "cannot retire the unfinished reshard's sessions; they are replaced \
                     at their shard's next identify"
                ),
            }
        }
    }

    Ok(Recovery {
        configured,
        cluster,
        rejoin,
        never_announced,
        unfinished,
    })
}
