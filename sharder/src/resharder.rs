//! Live resharding in one process: a new shard total serves before the old
//! one stops, so the bot never goes dark (issue #17).
//!
//! # Algorithm
//! A reshard is a small state machine the runtime's loop drives; each step
//! runs as a task, so shutdown and shard exits are handled meanwhile:
//!
//! 1. **Plan** ([`crate::plan_reshard`]): the new total is validated (a
//!    multiple of `max_concurrency`, `amqp.partitions` divides it, the
//!    session start budget keeps `identify_reserve`) or refused with what
//!    to do.
//! 2. **Announce**: the generation record notes the reshard, then a
//!    `started` marker goes to every partition and the broker confirms it
//!    before any new shard identifies (`reshard_marker.rs`: the workers'
//!    window must open ahead of every twin event).
//! 3. **Load**: the new total's shards start, through the same identify
//!    scheduler (its buckets, its Redis lock and budget), while the old
//!    total keeps serving. The step ends when every new shard is READY and
//!    has received the GUILD_CREATE of every guild it lists
//!    ([`ShardHandle::wait_loaded`]); past `stall_after` the reshard is
//!    reported stalled (log and `sharder_reshard_stalled`) and keeps
//!    waiting. A new shard that stops for good aborts the reshard: the new
//!    total closes, its sessions are retired and `aborted` is published.
//! 4. **Retire**: the old shards close (their events drain into the sink
//!    first), then `completed` goes to every partition (behind every old
//!    event in each queue), the old total's sessions are retired, and the
//!    record names the new total, so a restart resumes it.
//!
//! A process that dies during 2-3 rolls back at its next start
//! ([`crate::generation`]): the old total's sessions were never touched.
//! Old shards are never re-identified during the overlap (a new session's
//! epoch would outrank the new total's versions in the workers' cache).
//!
//! With several processes ([`crate::reshard_cluster`]) the same steps run
//! in each, on its part of both totals, with barriers in Redis: the
//! claimer alone announces; the hand-over is committed once every process
//! has loaded (or aborted once, by the first whose new shard stopped); the
//! end marker goes out once every process has closed its shards, from one
//! elected finisher. A process restarted mid-reshard carries on instead of
//! rolling back, since the others are still in it.

use crate::clock::now_ms;
use crate::connect::Connector;
use crate::generation::{GenerationRecord, save_record};
use crate::identify::IdentifyScheduler;
use crate::reshard_cluster::{ClusterView, Decision, ReshardCluster};
use crate::reshard_marker::publish_marker;
use crate::reshard_plan::ReshardPlan;
use crate::session_store::SessionStore;
use crate::shard::{Shard, ShardExit, ShardHandle, ShardState};
use crate::shard_config::ShardConfig;
use crate::sink::EventSink;
use envelope::{ReshardMarker, ReshardPhase};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What started a reshard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// `POST /admin/reshard`.
    Operator,
    /// `GET /gateway/bot` recommends more shards (`auto_factor`).
    Recommended,
    /// A shard was closed with 4011.
    ShardingRequired,
    /// Another process of the cluster admitted it.
    Cluster,
}

impl Trigger {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Trigger::Operator => "operator",
            Trigger::Recommended => "recommended",
            Trigger::ShardingRequired => "sharding_required",
            Trigger::Cluster => "cluster",
        }
    }
}

/// A request to reshard, answered with the plan or why it was refused.
#[derive(Debug)]
pub(crate) struct ReshardCommand {
    pub request: crate::reshard_plan::ReshardRequest,
    pub trigger: Trigger,
    pub reply: Option<tokio::sync::oneshot::Sender<Result<ReshardPlan, String>>>,
}

/// One shard task's end, with its generation.
#[derive(Debug)]
pub(crate) struct ShardDone {
    pub total: u32,
    pub id: u32,
    pub exit: ShardExit,
}

/// Starts shards of any total with the process's shared parts.
pub(crate) struct Spawner<K, S, C> {
    pub cfg: Arc<config::Config>,
    pub gateway: String,
    pub scheduler: IdentifyScheduler,
    pub store: Arc<S>,
    pub sink: Arc<K>,
    pub connector: Arc<C>,
    /// The bot's newest presence (op 3 through a relay).
    pub presence: crate::Presence,
}

impl<K: EventSink, S: SessionStore, C: Connector> Spawner<K, S, C> {
    /// Starts shards `ids` of `total` into `tasks`.
    pub(crate) fn spawn(
        &self,
        total: u32,
        ids: &[u32],
        tasks: &mut JoinSet<ShardDone>,
    ) -> Vec<(u32, ShardHandle)> {
        ids.iter()
            .map(|&id| {
                let mut config = ShardConfig::from_config(&self.cfg, id, self.gateway.clone());
                config.total_shards = total;
                config.presence = self.presence.clone();
                let (shard, handle) = Shard::new(
                    config,
                    self.scheduler.clone(),
                    self.store.clone(),
                    self.sink.clone(),
                    self.connector.clone(),
                );
                tasks.spawn(async move {
                    ShardDone {
                        total,
                        id,
                        exit: shard.run().await,
                    }
                });
                (id, handle)
            })
            .collect()
    }
}

/// How a step of a reshard ended.
#[derive(Debug)]
pub(crate) enum StepDone {
    /// `started` confirmed on every partition (or not).
    Announced(Result<(), String>),
    /// Every new shard loaded (`true`), or one stopped for good.
    Loaded(bool),
    /// The old total closed, `completed` published, sessions retired.
    Retired(Result<(), String>),
    /// The new total closed after an abort, `aborted` published.
    RolledBack(Result<(), String>),
    /// The hand-over could not be recorded: the old total still serves.
    NotCommitted(String),
}

enum Stage {
    Announcing,
    Loading,
    Retiring,
    RollingBack,
}

impl Stage {
    fn label(&self) -> &'static str {
        match self {
            Stage::Announcing => "announcing",
            Stage::Loading => "loading",
            Stage::Retiring => "handing_over",
            Stage::RollingBack => "rolling_back",
        }
    }
}

/// A reshard in progress.
pub(crate) struct Running {
    pub plan: ReshardPlan,
    pub marker: ReshardMarker,
    pub trigger: Trigger,
    /// The new total's shards of this process, once started.
    pub new: Vec<(u32, ShardHandle)>,
    stage: Stage,
    step: JoinHandle<StepDone>,
    pub since: Instant,
    stalled: bool,
}

impl Running {
    /// A reshard at `stage`, its step running, from now.
    fn new(
        plan: ReshardPlan,
        marker: ReshardMarker,
        trigger: Trigger,
        stage: Stage,
        step: JoinHandle<StepDone>,
    ) -> Self {
        Self {
            plan,
            marker,
            trigger,
            new: Vec::new(),
            stage,
            step,
            since: Instant::now(),
            stalled: false,
        }
    }

    /// The hand-over is committed: the old total is closing.
    pub(crate) fn handing_over(&self) -> bool {
        matches!(self.stage, Stage::Retiring)
    }
}

impl Drop for Running {
    /// A reshard dropped mid-step (the process stops) leaves its record as
    /// the last stage boundary wrote it; the step must not go on behind it.
    fn drop(&mut self) {
        self.step.abort();
    }
}

/// The process's generations: the one serving and a reshard, if any.
pub(crate) struct Resharder<K, S, C> {
    pub spawner: Spawner<K, S, C>,
    pub total: u32,
    pub current: Vec<(u32, ShardHandle)>,
    pub running: Option<Running>,
    pub partitions: u32,
    pub configured: u32,
    pub marker_within: Duration,
    pub stall_after: Duration,
    /// The shared state when several processes run the bot.
    pub cluster: Option<ReshardCluster>,
    /// The last reshard this process ran or joined.
    pub last_id: Option<u64>,
}

impl<K: EventSink, S: SessionStore, C: Connector> Resharder<K, S, C> {
    /// This process's index in the plan's `shards_per_process`.
    fn process(&self) -> usize {
        self.cluster
            .as_ref()
            .map_or(0, |c| usize::try_from(c.process).unwrap_or(usize::MAX))
    }

    /// Starts `plan` (step 2, module docs), once the cluster, if any, is
    /// claimed for it.
    pub(crate) async fn start(
        &mut self,
        plan: ReshardPlan,
        trigger: Trigger,
    ) -> Result<(), String> {
        let at = now_ms();
        let marker = ReshardMarker {
            id: at,
            phase: ReshardPhase::Started,
            from: plan.from_total,
            to: plan.to_total,
            at_ms: at,
        };
        if let Some(c) = &self.cluster {
            c.claim(&marker).await.map_err(|e| e.to_string())?;
        }
        self.begin(plan, trigger, marker);
        Ok(())
    }

    fn begin(&mut self, plan: ReshardPlan, trigger: Trigger, marker: ReshardMarker) {
        self.last_id = Some(marker.id);
        tracing::info!(
            from = plan.from_total,
            to = plan.to_total,
            trigger = trigger.label(),
            identifies = plan.identifies,
            floor_s = plan.cold_boot_floor.as_secs_f64(),
            "live reshard starting"
        );
        metrics::counter!("sharder_reshards_started_total", "trigger" => trigger.label())
            .increment(1);
        metrics::gauge!("sharder_reshard_target_total").set(f64::from(plan.to_total));
        metrics::gauge!("sharder_reshard_in_progress").set(1.0);
        let (sink, store) = (self.spawner.sink.clone(), self.spawner.store.clone());
        let (partitions, within) = (self.partitions, self.marker_within);
        let record = GenerationRecord {
            total: self.total,
            configured: self.configured,
            reshard: Some(marker),
        };
        let cluster = self.cluster.clone();
        let step = tokio::spawn(async move {
            let announced = async {
                save_record(&*store, &record)
                    .await
                    .map_err(|e| format!("cannot record the reshard: {e}"))?;
                publish_marker(&*sink, marker, partitions, within)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(c) = &cluster {
                    c.announce(marker.id).await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            };
            let result = announced.await;
            if let Err(e) = &result {
                // Not started: the record says so again (a restart would
                // otherwise roll back a reshard that never ran), and the
                // cluster may claim the next one. A `started` that did
                // reach some partitions is closed by `aborted` there.
                let mut record = record;
                record.reshard = None;
                let _ = save_record(&*store, &record).await;
                let mut aborted = marker;
                aborted.phase = ReshardPhase::Aborted;
                aborted.at_ms = now_ms();
                let _ = publish_marker(&*sink, aborted, partitions, within).await;
                if let Some(c) = &cluster {
                    let _ = c.give_up(marker.id, e).await;
                }
            }
            StepDone::Announced(result)
        });
        self.running = Some(Running::new(plan, marker, trigger, Stage::Announcing, step));
    }

    /// The running step's end; pending while there is none.
    pub(crate) async fn next_step(&mut self) -> StepDone {
        let Some(r) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let stall_at = r.since + self.stall_after;
        loop {
            let watching = !r.stalled;
            tokio::select! {
                done = &mut r.step => {
                    return done.unwrap_or_else(|e| {
                        let e = format!("reshard step task failed: {e}");
                        match r.stage {
                            Stage::Announcing => StepDone::Announced(Err(e)),
                            Stage::Loading => StepDone::Loaded(false),
                            Stage::Retiring => StepDone::Retired(Err(e)),
                            Stage::RollingBack => StepDone::RolledBack(Err(e)),
                        }
                    });
                }
                () = tokio::time::sleep_until(stall_at), if watching => {
                    r.stalled = true;
                    let loaded = r.new.iter().filter(|(_, h)| h.guilds_loading() == Some(0)).count();
                    tracing::error!(
                        to = r.plan.to_total,
                        stage = r.stage.label(),
                        loaded,
                        shards = r.new.len(),
                        after_s = self.stall_after.as_secs(),
                        "live reshard stalled: check the identify budget, the gateway and, with \
                         several processes, that every sharder pod runs (GET /admin/reshard on each)"
                    );
                    metrics::gauge!("sharder_reshard_stalled").set(1.0);
                }
            }
        }
    }

    /// Moves the reshard on after `done`; new shards go into `tasks`.
    /// Returns `true` when the serving generation changed.
    pub(crate) fn advance(&mut self, done: StepDone, tasks: &mut JoinSet<ShardDone>) -> bool {
        let Some(r) = self.running.as_ref() else {
            return false;
        };
        let (to, marker, since) = (r.plan.to_total, r.marker, r.since);
        let (stage, step) = match done {
            StepDone::Announced(Ok(())) => {
                let (new, step) = self.load(&r.plan, r.marker.id, tasks);
                if let Some(r) = self.running.as_mut() {
                    r.new = new;
                }
                (Stage::Loading, step)
            }
            StepDone::Announced(Err(e)) => {
                tracing::error!(error = %e, "live reshard not started: the workers could not be told");
                self.finish(false);
                return false;
            }
            StepDone::Loaded(true) => {
                tracing::info!(
                    to,
                    took_s = since.elapsed().as_secs_f64(),
                    "every new shard is loaded: handing over, closing the old shards"
                );
                let old = self.current.iter().map(|(_, h)| h.clone()).collect();
                let mut completed = marker;
                completed.phase = ReshardPhase::Completed;
                // Committed before the first old shard closes: a restart
                // from here on rolls forward (`generation.rs`).
                let commit = GenerationRecord {
                    total: to,
                    configured: self.configured,
                    reshard: Some(completed),
                };
                (
                    Stage::Retiring,
                    self.retire(old, completed, self.total, to, Some(commit)),
                )
            }
            StepDone::Loaded(false) | StepDone::NotCommitted(_) => {
                if let StepDone::NotCommitted(e) = &done {
                    tracing::error!(to, error = %e, "aborting the live reshard, the old shards keep serving");
                } else {
                    tracing::error!(
                        to,
                        "a new shard stopped for good: aborting the live reshard, the old shards keep serving"
                    );
                }
                let new = r.new.iter().map(|(_, h)| h.clone()).collect();
                let mut aborted = marker;
                aborted.phase = ReshardPhase::Aborted;
                (
                    Stage::RollingBack,
                    self.retire(new, aborted, to, self.total, None),
                )
            }
            StepDone::Retired(result) => {
                if let Err(e) = &result {
                    tracing::error!(error = %e, "the old shards closed, but finishing the reshard failed");
                }
                tracing::info!(
                    from = self.total,
                    to,
                    took_s = since.elapsed().as_secs_f64(),
                    "live reshard completed"
                );
                if let Some(mut r) = self.running.take() {
                    self.current = std::mem::take(&mut r.new);
                }
                self.total = to;
                metrics::counter!("sharder_reshards_completed_total").increment(1);
                metrics::gauge!("sharder_reshard_total").set(f64::from(self.total));
                self.finish(true);
                return true;
            }
            StepDone::RolledBack(result) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "rolling the reshard back failed part-way");
                }
                self.finish(false);
                return false;
            }
        };
        if let Some(r) = self.running.as_mut() {
            r.stage = stage;
            r.step = step;
        }
        false
    }

    /// Starts this process's part of the new total and the step that
    /// waits until it loaded (step 3). With a cluster, the step reports
    /// it, and ends early when another process aborted the reshard; a new
    /// shard of this process that stops for good aborts it.
    fn load(
        &self,
        plan: &ReshardPlan,
        id: u64,
        tasks: &mut JoinSet<ShardDone>,
    ) -> (Vec<(u32, ShardHandle)>, JoinHandle<StepDone>) {
        let to = plan.to_total;
        let ids = plan
            .shards_per_process
            .get(self.process())
            .cloned()
            .unwrap_or_default();
        let new = self.spawner.spawn(to, &ids, tasks);
        metrics::gauge!("sharder_reshard_new_shards").set(new.len() as f64);
        let handles: Vec<ShardHandle> = new.iter().map(|(_, h)| h.clone()).collect();
        let cluster = self.cluster.clone();
        let step = tokio::spawn(async move {
            let own = async {
                for h in &handles {
                    if !h.wait_loaded().await {
                        return false;
                    }
                }
                true
            };
            let Some(c) = cluster else {
                return StepDone::Loaded(own.await);
            };
            let aborted_elsewhere = c.wait(id, "an abort", |v| v.aborted.is_some());
            tokio::select! {
                loaded = own => {
                    let reported = if loaded {
                        c.report_surely(id, "loaded").await
                    } else {
                        c.decide_surely(id, Decision::Aborted, "a new shard stopped for good").await.map(|_| ())
                    };
                    if let Err(e) = reported {
                        tracing::error!(error = %e, "cannot report this process's new shards to the cluster");
                        return StepDone::Loaded(false);
                    }
                    StepDone::Loaded(loaded)
                }
                _ = aborted_elsewhere => {
                    tracing::warn!(to, "another process aborted the live reshard");
                    StepDone::Loaded(false)
                }
            }
        });
        (new, step)
    }

    /// Joins the reshard another process admitted and announced
    /// (`view`), with `plan` for its layout: step 3 on.
    pub(crate) fn join(
        &mut self,
        view: &ClusterView,
        plan: ReshardPlan,
        tasks: &mut JoinSet<ShardDone>,
    ) {
        let Some(marker) = view.marker() else { return };
        tracing::info!(
            from = marker.from,
            to = marker.to,
            id = marker.id,
            "joining the cluster's live reshard"
        );
        self.last_id = Some(marker.id);
        metrics::gauge!("sharder_reshard_target_total").set(f64::from(marker.to));
        metrics::gauge!("sharder_reshard_in_progress").set(1.0);
        let (new, step) = self.load(&plan, marker.id, tasks);
        let mut running = Running::new(plan, marker, Trigger::Cluster, Stage::Loading, step);
        running.new = new;
        self.running = Some(running);
    }

    /// Carries on with the reshard `view` after this process restarted in
    /// the middle of it (`current` runs the old total, or nothing once the
    /// hand-over was committed): its new shards start again (they resume),
    /// and the step the cluster is at runs.
    pub(crate) fn rejoin(
        &mut self,
        view: &ClusterView,
        plan: ReshardPlan,
        tasks: &mut JoinSet<ShardDone>,
    ) {
        let Some(marker) = view.marker() else { return };
        tracing::warn!(
            from = marker.from,
            to = marker.to,
            committed = view.committed,
            aborted = view.aborted.is_some(),
            "restarted in the middle of the cluster's live reshard: carrying on"
        );
        if view.aborted.is_some() {
            // Its new shards are not started again; the old total serves.
            let mut aborted = marker;
            aborted.phase = ReshardPhase::Aborted;
            let step = self.retire(Vec::new(), aborted, marker.to, marker.from, None);
            self.running = Some(Running::new(
                plan,
                marker,
                Trigger::Cluster,
                Stage::RollingBack,
                step,
            ));
            return;
        }
        self.join(view, plan, tasks);
        if view.committed {
            // The old shards it ran ended with the process (the new
            // generation had every guild loaded by then); the new ones
            // resume, and the hand-over goes on.
            let mut completed = marker;
            completed.phase = ReshardPhase::Completed;
            let commit = GenerationRecord {
                total: marker.to,
                configured: self.configured,
                reshard: Some(completed),
            };
            let step = self.retire(Vec::new(), completed, marker.from, marker.to, Some(commit));
            if let Some(r) = self.running.as_mut() {
                r.step.abort();
                r.stage = Stage::Retiring;
                r.step = step;
            }
        }
    }

    fn finish(&mut self, completed: bool) {
        if !completed {
            metrics::counter!("sharder_reshards_aborted_total").increment(1);
        }
        self.running = None;
        metrics::gauge!("sharder_reshard_in_progress").set(0.0);
        metrics::gauge!("sharder_reshard_stalled").set(0.0);
        metrics::gauge!("sharder_reshard_new_shards").set(0.0);
    }

    /// Records `commit` (if any), closes `closing` (one total) and waits
    /// until they stopped (their events are then in the sink, ahead of the
    /// marker), publishes `marker` (`completed` or `aborted`), retires
    /// `retired_total`'s sessions and records `serving` as the running
    /// total.
    fn retire(
        &self,
        closing: Vec<ShardHandle>,
        marker: ReshardMarker,
        retired_total: u32,
        serving: u32,
        commit: Option<GenerationRecord>,
    ) -> JoinHandle<StepDone> {
        let (sink, store) = (self.spawner.sink.clone(), self.spawner.store.clone());
        let (partitions, within, configured) =
            (self.partitions, self.marker_within, self.configured);
        let cluster = self.cluster.clone();
        let forward = commit.is_some();
        tokio::spawn(async move {
            if forward
                && let Some(c) = &cluster
                && let Err(e) = commit_in_cluster(c, marker.id).await
            {
                return StepDone::NotCommitted(e);
            }
            if let Some(record) = commit
                && let Err(e) = save_record(&*store, &record).await
            {
                if cluster.is_none() {
                    // The old shards stay: nothing is lost, and the
                    // reshard is asked for again by whatever asked for it.
                    return StepDone::NotCommitted(format!("cannot commit the hand-over: {e}"));
                }
                // Committed in Redis already: every process writes this
                // record, and the finisher the final one.
                tracing::error!(error = %e, "cannot record the committed hand-over; carrying on");
            }
            for h in &closing {
                h.retire();
            }
            for h in &closing {
                h.wait_for(|s| matches!(s, ShardState::Stopped(_))).await;
            }
            let finished = async {
                if let Some(c) = &cluster {
                    let what = if forward { "retired" } else { "rolled_back" };
                    c.report_surely(marker.id, what)
                        .await
                        .map_err(|e| e.to_string())?;
                    let n = c.processes;
                    c.wait(marker.id, "every process closing its shards", |v| {
                        if forward {
                            v.retired >= n
                        } else {
                            v.rolled_back >= n
                        }
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    if !c
                        .elect_finisher(marker.id)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        return Ok(());
                    }
                }
                let mut marker = marker;
                marker.at_ms = now_ms();
                publish_marker(&*sink, marker, partitions, within)
                    .await
                    .map_err(|e| e.to_string())?;
                let retired = store
                    .retire_generation(retired_total)
                    .await
                    .map_err(|e| format!("retiring the sessions of {retired_total} shards: {e}"))?;
                tracing::info!(
                    total = retired_total,
                    sessions = retired,
                    "sessions retired"
                );
                let record = GenerationRecord {
                    total: serving,
                    configured,
                    reshard: None,
                };
                save_record(&*store, &record)
                    .await
                    .map_err(|e| format!("recording the running total: {e}"))?;
                if let Some(c) = &cluster {
                    c.finish(marker.id).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            };
            let result = finished.await;
            match marker.phase {
                ReshardPhase::Aborted => StepDone::RolledBack(result),
                _ => StepDone::Retired(result),
            }
        })
    }

    /// Whether the end of a shard of `total` is part of a reshard (a
    /// generation being closed, or a new shard whose failure aborts it)
    /// rather than a failure of the serving generation.
    pub(crate) fn expected_end(&self, total: u32) -> bool {
        total != self.total
            || self
                .running
                .as_ref()
                .is_some_and(|r| matches!(r.stage, Stage::Retiring))
    }

    /// Whether a reshard is in progress.
    pub(crate) fn busy(&self) -> bool {
        self.running.is_some()
    }
}

/// The cluster's barrier before the hand-over: every process loaded, then
/// one decision. Redis errors are retried (a process that gave up here
/// while the others committed would leave guilds dark); an abort, or the
/// reshard replaced, is the error.
async fn commit_in_cluster(c: &ReshardCluster, id: u64) -> Result<(), String> {
    let n = c.processes;
    c.wait(id, "every process loaded", |v| {
        v.loaded >= n || v.committed || v.aborted.is_some()
    })
    .await
    .map_err(|e| e.to_string())?;
    match c.decide_surely(id, Decision::Committed, "").await {
        Ok(Decision::Committed) => Ok(()),
        Ok(Decision::Aborted) => Err("another process aborted the reshard".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}
