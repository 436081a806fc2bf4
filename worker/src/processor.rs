//! From envelope to clean events: parse, apply to the store, classify,
//! deduplicate, call the handlers.
//!
//! # Algorithm
//!
//! For each message:
//! 1. decode the events one at a time and parse each one's `d` into
//!    mutations right after decoding it, while its bytes are in cache (an
//!    invalid payload is reported, the other events of the message still
//!    apply; an undecodable message has no effect at all), and lay out
//!    the store steps of all events in gateway order: per event, `admit`,
//!    its writes, then (for non-lifecycle events) `first_delivery`;
//! 2. run the steps as one batch (one Redis round trip): every write is
//!    applied, even on a redelivery (writes are idempotent, so a lost first
//!    attempt must not lose state);
//! 3. per event, emit or drop. A guild lifecycle event (join, available, unavailable,
//!    removed) is emitted only if its guild-level write, applied last, was
//!    the newest for the guild: that write happens once per version, so a
//!    redelivered or late `joined` GUILD_CREATE never announces twice, and a
//!    store failure before it is retried rather than lost. Any other event
//!    is emitted if it is not stale (at least one write applied, or it
//!    writes nothing, or it answers a command: a member chunk) and its
//!    delivery is the first
//!    (`first_delivery(shard, version)`, recorded after the writes).
//!
//! Handlers are called at most once: a crash after the writes and before a
//! handler returns loses that announcement rather than repeating it. The
//! output sink is at least once for lifecycle events: the store remembers
//! the last few lifecycle writes it applied as a guild's newest, and a
//! message the broker redelivers (the worker may have died before its output
//! was confirmed) hands such an event to the sink again, with the same
//! version, hence the same output `message_id` for consumers to deduplicate.
//!
//! Joins come from the sharder's `joined` marker, never from "the cache
//! did not know this guild", so a cold restart with an empty cache cannot
//! announce joins for the guilds the bot was already in. One exception the
//! marker cannot see: a session that ended (heartbeat timeout, invalid
//! session) and was replaced by a new IDENTIFY loses the events between the
//! last one read and the new READY, and a guild joined in that gap is
//! listed by the new READY, so the sharder marks its GUILD_CREATE
//! `initial`. The store infers such a join from the shard's previous READY
//! ([`Store::gap_join`](crate::Store::gap_join)), and it is announced like
//! a marked one.

use crate::gateway::{self, CacheOptions, Class, Parsed, PayloadError};
use crate::reshard::{self, WindowCache};
use crate::store::{Step, Store, StoreError};
use envelope::{DecodeError, Event, ReshardMarker, ReshardPhase, ShardRef, Version};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

/// What a clean event tells the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanKind {
    /// The bot was added to a guild: exactly once per real join.
    GuildJoined,
    /// A guild's data arrived: after READY (`initial`) or after an outage.
    GuildAvailable { initial: bool },
    /// A guild went into an outage.
    GuildUnavailable,
    /// The bot was removed from a guild (or it was deleted).
    GuildRemoved,
    /// Any other gateway event, deduplicated, stale versions dropped.
    Dispatch,
    /// A live reshard started, completed or was aborted: once per phase
    /// (every partition carries the marker). `d` is the marker's JSON
    /// (`from`, `to` totals).
    Reshard { phase: ReshardPhase },
}

/// A deduplicated event for bot logic. Borrows from the message.
#[derive(Debug, Clone, Copy)]
pub struct CleanEvent<'a> {
    pub kind: CleanKind,
    pub shard_id: u32,
    pub version: Version,
    pub received_at: u64,
    pub guild_id: Option<u64>,
    /// The gateway event name (`GUILD_CREATE` for a join).
    pub t: &'a str,
    /// The raw gateway payload.
    pub d: &'a [u8],
}

impl CleanEvent<'_> {
    /// `GUILD_JOINED`, `GUILD_AVAILABLE`, `GUILD_UNAVAILABLE`,
    /// `GUILD_REMOVED`, or the gateway name for any other event.
    pub fn name(&self) -> &str {
        match self.kind {
            CleanKind::GuildJoined => "GUILD_JOINED",
            CleanKind::GuildAvailable { .. } => "GUILD_AVAILABLE",
            CleanKind::GuildUnavailable => "GUILD_UNAVAILABLE",
            CleanKind::GuildRemoved => "GUILD_REMOVED",
            CleanKind::Dispatch => self.t,
            CleanKind::Reshard { phase } => phase.event_name(),
        }
    }
}

/// A message the worker cannot process at all.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Poison: dead-letter it.
    #[error("undecodable envelope: {0}")]
    Decode(#[from] DecodeError),
    /// The store failed: retry later (requeue), the message is fine.
    #[error("store failed: {0}")]
    Store(#[from] StoreError),
}

/// Outcome of one message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Clean events handed to the handlers.
    pub emitted: usize,
    /// Duplicates and stale events dropped.
    pub dropped: usize,
    /// Lifecycle events of a redelivered message handed to the sink again
    /// (not to the handlers): see [`Worker::process_delivery`].
    pub republished: usize,
    /// Events whose payload was invalid, with the reason (skipped).
    pub invalid: Vec<(Version, String)>,
    /// Second copies of an event that both shard totals of a live reshard
    /// delivered (dropped; see [`crate::reshard`]).
    pub twins: usize,
    /// GUILD_CREATEs of the new shard total loading a guild the old total
    /// serves (applied, not announced).
    pub handovers: usize,
}

/// What one event will do: its class and where its step results are.
struct Plan {
    class: Option<Class>,
    guild_id: Option<u64>,
    /// Indexes of its writes in the batch's results.
    writes: std::ops::Range<usize>,
    /// Index of its first-delivery check, for [`Class::Other`].
    delivery: Option<usize>,
    /// Index of its [`Step::Announced`] check (redelivered lifecycle events).
    announced: Option<usize>,
    /// Index of its [`Step::GapJoin`] check (GUILD_CREATE not marked joined).
    gap_join: Option<usize>,
    /// Index of its [`Step::Pair`] check (a guild event in a reshard window).
    pair: Option<usize>,
    /// A GUILD_CREATE of the new total handing a guild over in a reshard.
    handover: bool,
    /// A reshard marker and the index of its [`Step::Marker`] result.
    marker: Option<(ReshardPhase, usize)>,
    /// An answer to a command (GUILD_MEMBERS_CHUNK): emitted on its first
    /// delivery even when the cache already held every member it lists,
    /// because a bot is waiting for it (through a relay).
    reply: bool,
}

/// A message's events with their plans, and the store steps of all.
struct Planned<'a> {
    steps: Vec<Step>,
    plans: Vec<(Event<'a>, Option<Plan>)>,
    /// The broker redelivered the message (counted apart when dropped).
    redelivered: bool,
}

type Handler = Arc<dyn Fn(&CleanEvent<'_>) + Send + Sync>;

/// The embeddable worker: a store plus the bot's handlers.
///
/// ```
/// # #![allow(clippy::unwrap_used)]
/// use worker::{MemoryStore, Worker};
/// let joins = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
/// let j = joins.clone();
/// let worker = Worker::new(MemoryStore::new())
///     .on("GUILD_JOINED", move |ev| {
///         j.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         println!("joined {:?}", ev.guild_id);
///     });
/// # let _ = worker;
/// ```
pub struct Worker<S> {
    store: Arc<S>,
    by_name: HashMap<String, Vec<Handler>>,
    any: Vec<Handler>,
    options: CacheOptions,
    /// The reshard window as this worker last saw it.
    window: std::sync::Mutex<WindowCache>,
}

impl<S: Store> Worker<S> {
    /// A worker over `store` with no handlers.
    pub fn new(store: S) -> Self {
        Self::with_shared_store(Arc::new(store))
    }

    /// A worker over a store shared with other components (e.g. a read API).
    pub fn with_shared_store(store: Arc<S>) -> Self {
        Self {
            store,
            by_name: HashMap::new(),
            any: Vec::new(),
            options: CacheOptions::default(),
            window: std::sync::Mutex::default(),
        }
    }

    /// Which optional collections (presences, voice states) to cache.
    pub fn with_options(mut self, options: CacheOptions) -> Self {
        self.options = options;
        self
    }

    /// Calls `handler` for every clean event named `name` (see
    /// [`CleanEvent::name`]).
    pub fn on(
        mut self,
        name: &str,
        handler: impl Fn(&CleanEvent<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.by_name
            .entry(name.to_owned())
            .or_default()
            .push(Arc::new(handler));
        self
    }

    /// Calls `handler` for every clean event.
    pub fn on_any(mut self, handler: impl Fn(&CleanEvent<'_>) + Send + Sync + 'static) -> Self {
        self.any.push(Arc::new(handler));
        self
    }

    /// The cache.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Decodes and processes one queue message.
    pub async fn process_message(&self, bytes: &[u8]) -> Result<Report, ProcessError> {
        self.process_message_with(bytes, &mut |_| {}).await
    }

    /// [`Worker::process_message`], also handing every clean event to
    /// `sink` after the handlers (the consumer publishes them to the output
    /// exchange this way). The store steps of every event of the message
    /// run as one batch ([`Store::run`]: one round trip on Redis).
    pub async fn process_message_with(
        &self,
        bytes: &[u8],
        sink: &mut (dyn FnMut(&CleanEvent<'_>) + Send),
    ) -> Result<Report, ProcessError> {
        self.process_delivery(bytes, false, sink).await
    }

    /// [`Worker::process_message_with`] for a queue delivery. When the
    /// broker `redelivered` it, the worker may have crashed after applying
    /// it and before its output was confirmed: a lifecycle event whose
    /// write the store remembers as once applied as the newest
    /// ([`Step::Announced`]) is handed to `sink` again (same version, so
    /// the same output `message_id`), but not to the handlers, which stay
    /// at most once.
    pub async fn process_delivery(
        &self,
        bytes: &[u8],
        redelivered: bool,
        sink: &mut (dyn FnMut(&CleanEvent<'_>) + Send),
    ) -> Result<Report, ProcessError> {
        let started = std::time::Instant::now();
        let decoder = envelope::Decoder::new(bytes)?;
        let shard = decoder.shard();
        let mut report = Report::default();
        // The header's count, bounded by what the bytes can hold (an event
        // takes at least 31 bytes), so a lying header cannot size it.
        let expected = decoder.event_count().min(bytes.len() / 31);
        let window = self.window().await?;
        let planned = self.plan_all(shard, decoder, expected, redelivered, window, &mut report)?;
        self.run_and_emit(shard, planned, &mut report, sink).await?;
        metrics::histogram!("worker_apply_seconds").record(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Processes one event of `shard`, adding its outcome to `report`.
    pub async fn process_event(
        &self,
        shard: ShardRef,
        event: &Event<'_>,
        report: &mut Report,
    ) -> Result<(), StoreError> {
        self.process_event_with(shard, event, report, &mut |_| {})
            .await
    }

    /// [`Worker::process_event`], handing a clean event to `sink` too.
    pub async fn process_event_with(
        &self,
        shard: ShardRef,
        event: &Event<'_>,
        report: &mut Report,
        sink: &mut (dyn FnMut(&CleanEvent<'_>) + Send),
    ) -> Result<(), StoreError> {
        let one = std::iter::once(Ok::<_, Infallible>(*event));
        let window = self.window().await?;
        let Ok(planned) = self.plan_all(shard, one, 1, false, window, report);
        self.run_and_emit(shard, planned, report, sink).await
    }

    /// Events of one shard (about `expected` of them), in order, as they
    /// are decoded: parses each while its bytes are fresh in cache, and
    /// lays out the store steps of all. Nothing is written before the last
    /// event is decoded: a message that fails to decode (`E`) has no
    /// effect, not even on the metrics.
    fn plan_all<'a, E>(
        &self,
        shard: ShardRef,
        events: impl Iterator<Item = Result<Event<'a>, E>>,
        expected: usize,
        replay: bool,
        mut window: Option<ReshardMarker>,
        report: &mut Report,
    ) -> Result<Planned<'a>, E> {
        // Admit, up to three writes and a delivery check: one allocation.
        let mut steps = Vec::with_capacity(expected * 5);
        let mut plans = Vec::with_capacity(expected);
        let invalid_before = report.invalid.len();
        // One mutation vector for the message's events.
        let mut parsed = Parsed::default();
        for event in events {
            let event = event?;
            let plan = match ReshardMarker::of(&event) {
                Some(marker) => self.plan_marker(&event, marker, &mut window, report, &mut steps),
                None => self.plan(
                    shard,
                    &event,
                    replay,
                    window.as_ref(),
                    report,
                    &mut steps,
                    &mut parsed,
                ),
            };
            plans.push((event, plan));
        }
        let invalid = report.invalid.len() - invalid_before;
        if invalid > 0 {
            metrics::counter!("worker_events_invalid_total").increment(invalid as u64);
        }
        Ok(Planned {
            steps,
            plans,
            redelivered: replay,
        })
    }

    /// Runs the planned steps as one batch, then classifies and emits each
    /// event.
    async fn run_and_emit(
        &self,
        shard: ShardRef,
        planned: Planned<'_>,
        report: &mut Report,
        sink: &mut (dyn FnMut(&CleanEvent<'_>) + Send),
    ) -> Result<(), StoreError> {
        let Planned {
            steps,
            plans,
            redelivered,
        } = planned;
        let results = if steps.is_empty() {
            Vec::new()
        } else {
            self.store.run(steps).await?
        };
        let dropped_before = report.dropped;
        // How old each event is once it is applied: the cache's lag behind
        // the gateway, sharder and broker included. One registry lookup per
        // message, one sample per event.
        let age = metrics::histogram!("worker_event_age_seconds");
        let now_ms = envelope::unix_now_ms();
        for (event, plan) in &plans {
            age.record(now_ms.saturating_sub(event.received_at) as f64 / 1000.0);
            if let Some(plan) = plan {
                self.emit(shard, event, plan, &results, report, sink);
            }
        }
        let dropped = report.dropped - dropped_before;
        if dropped > 0 {
            // `delivery="first"`: the broker had not delivered the message
            // before, so only a repeat from the sharder (a resume replaying
            // what was not yet confirmed) or two consumers applying one
            // partition out of order explain a drop.
            let delivery = if redelivered { "redelivered" } else { "first" };
            metrics::counter!("worker_events_dropped_total", "delivery" => delivery)
                .increment(dropped as u64);
        }
        Ok(())
    }

    /// Parses `event` (into `parsed`, whose vector is reused) and appends
    /// its store steps; `None` when its payload is invalid (reported,
    /// skipped).
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        shard: ShardRef,
        event: &Event<'_>,
        replay: bool,
        window: Option<&ReshardMarker>,
        report: &mut Report,
        steps: &mut Vec<Step>,
        parsed: &mut Parsed,
    ) -> Option<Plan> {
        if let Err(PayloadError { event: t, source }) =
            gateway::parse_into(shard, event, &self.options, parsed)
        {
            report
                .invalid
                .push((event.version(), format!("invalid {t} payload: {source}")));
            return None;
        }
        let at_ms = event.received_at;
        if reshard::handover(window, shard.total, at_ms) {
            for m in &mut parsed.mutations {
                if let crate::Mutation::Ready { handover, .. } = m {
                    *handover = true;
                }
            }
        }
        let tracked = !parsed.mutations.is_empty();
        if let Some(guild_id) = parsed.guild_id.filter(|_| tracked) {
            steps.push(Step::Admit { shard, guild_id });
        }
        let first = steps.len();
        steps.extend(parsed.mutations.drain(..).map(Step::Apply));
        let writes = first..steps.len();
        // Recorded even when the event turns out stale: a stale event stays
        // stale (versions only grow), so its redelivery is dropped either way.
        // Lifecycle events are announced by their newest write, except in a
        // reshard window, where the copy that pairs first announces (see
        // `emit`): there a redelivery must be told from it too.
        let in_pairing = parsed.guild_id.is_some() && reshard::pairing(window, at_ms);
        let delivery = (parsed.class == Some(Class::Other)
            || (parsed.class.is_some() && in_pairing))
            .then(|| {
                steps.push(Step::FirstDelivery {
                    shard,
                    version: event.version(),
                });
                steps.len() - 1
            });
        let lifecycle = !matches!(parsed.class, Some(Class::Other) | None);
        let announced = parsed
            .guild_id
            .filter(|_| replay && lifecycle)
            .map(|guild_id| {
                steps.push(Step::Announced {
                    guild_id,
                    version: event.version(),
                });
                steps.len() - 1
            });
        // A GUILD_CREATE the sharder did not mark joined may still be a
        // join made during a session gap (see `Store::gap_join`).
        let gap_join = parsed
            .guild_id
            .filter(|_| matches!(parsed.class, Some(Class::Available { .. })))
            .map(|guild_id| {
                steps.push(Step::GapJoin {
                    guild_id,
                    version: event.version(),
                });
                steps.len() - 1
            });
        // In a reshard window: the new total's READY-time loads hand
        // guilds over; every other guild event is paired with its copy
        // from the other total.
        let handover = matches!(parsed.class, Some(Class::Available { initial: true }))
            && reshard::handover(window, shard.total, at_ms);
        let pair = parsed
            .guild_id
            .filter(|_| !handover && reshard::pairing(window, at_ms))
            .map(|guild_id| {
                steps.push(Step::Pair {
                    guild_id,
                    total: shard.total,
                    fingerprint: reshard::fingerprint(event.t, event.d),
                    at_ms,
                });
                steps.len() - 1
            });
        Some(Plan {
            class: parsed.class,
            guild_id: parsed.guild_id,
            writes,
            delivery,
            announced,
            gap_join,
            pair,
            handover,
            marker: None,
            reply: event.t == "GUILD_MEMBERS_CHUNK",
        })
    }

    /// A reshard marker: kept by the store (announced once), and the
    /// window for this worker's next events.
    fn plan_marker(
        &self,
        event: &Event<'_>,
        marker: Result<ReshardMarker, envelope::MarkerError>,
        window: &mut Option<ReshardMarker>,
        report: &mut Report,
        steps: &mut Vec<Step>,
    ) -> Option<Plan> {
        let m = match marker {
            Ok(m) => m,
            Err(e) => {
                report.invalid.push((event.version(), e.to_string()));
                return None;
            }
        };
        let mut cache = self.window.lock().unwrap_or_else(|e| e.into_inner());
        cache.update(Some(m), std::time::Instant::now());
        *window = cache.current(std::time::Instant::now()).flatten();
        drop(cache);
        tracing::info!(
            reshard = m.id,
            phase = m.phase.event_name(),
            from = m.from,
            to = m.to,
            "reshard marker"
        );
        steps.push(Step::Marker(m));
        Some(Plan {
            class: None,
            guild_id: None,
            writes: 0..0,
            delivery: None,
            announced: None,
            gap_join: None,
            pair: None,
            handover: false,
            marker: Some((m.phase, steps.len() - 1)),
            reply: false,
        })
    }

    /// The reshard window: this worker's view, re-read from the store
    /// when older than [`reshard::REFRESH`] (a partition taken over
    /// mid-reshard learns it there).
    async fn window(&self) -> Result<Option<ReshardMarker>, StoreError> {
        let now = std::time::Instant::now();
        let cached = self
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .current(now);
        if let Some(w) = cached {
            return Ok(w);
        }
        let stored = self.store.reshard_window().await?;
        let mut cache = self.window.lock().unwrap_or_else(|e| e.into_inner());
        cache.update(stored, now);
        Ok(cache.current(now).flatten())
    }

    /// Classifies a planned event from its step results and emits it (or
    /// counts it dropped).
    fn emit(
        &self,
        shard: ShardRef,
        event: &Event<'_>,
        plan: &Plan,
        results: &[bool],
        report: &mut Report,
        sink: &mut (dyn FnMut(&CleanEvent<'_>) + Send),
    ) {
        let at = |i: Option<usize>| i.and_then(|i| results.get(i).copied()).unwrap_or(false);
        if let Some((phase, i)) = plan.marker {
            // Every partition carries the marker: announced by the first.
            if at(Some(i)) {
                self.deliver(
                    CleanEvent {
                        kind: CleanKind::Reshard { phase },
                        shard_id: shard.id,
                        version: event.version(),
                        received_at: event.received_at,
                        guild_id: None,
                        t: event.t,
                        d: event.d,
                    },
                    report,
                    sink,
                );
            }
            return;
        }
        let writes = results.get(plan.writes.clone()).unwrap_or_default();
        let tracked = !writes.is_empty();
        let any = writes.iter().any(|&w| w);
        let last = writes.last().copied().unwrap_or(false);
        let first = at(plan.delivery);
        // In a reshard window an old-total event the new total's snapshot
        // already includes is stale, yet it is the only copy: emitted.
        let in_window = plan.pair.is_some();
        // Not newest now, but applied as the newest by an earlier attempt
        // whose output may be lost: published again, handlers not called.
        let replayed = !last && at(plan.announced);
        // In the window the copy that pairs first announces a guild's
        // lifecycle event even when its write lost to the other total's
        // newer epochs (the old total's GUILD_DELETE behind the new
        // total's snapshot): the other copy, whose write may apply, pairs
        // with it and is never announced, so this copy is the only one
        // that can be.
        let pair_first = in_window && at(plan.pair) && first;
        let lifecycle = last || replayed || pair_first;
        let class = match plan.class {
            Some(Class::Available { .. }) if at(plan.gap_join) => Some(Class::Joined),
            c => c,
        };
        let kind = match class {
            Some(Class::Joined) if lifecycle => Some(CleanKind::GuildJoined),
            Some(Class::Available { initial }) if lifecycle => {
                Some(CleanKind::GuildAvailable { initial })
            }
            Some(Class::Unavailable) if lifecycle => Some(CleanKind::GuildUnavailable),
            Some(Class::Removed) if lifecycle => Some(CleanKind::GuildRemoved),
            Some(Class::Other) if (!tracked || any || in_window || plan.reply) && first => {
                Some(CleanKind::Dispatch)
            }
            _ => None,
        };
        if any {
            metrics::counter!("worker_events_applied_total").increment(1);
        }
        if plan.handover {
            report.handovers += 1;
            metrics::counter!("worker_reshard_handovers_total").increment(1);
            return;
        }
        if in_window && !at(plan.pair) {
            // The other total's copy was (or will be: it pairs with this
            // one) the one emitted.
            report.twins += 1;
            metrics::counter!("worker_reshard_twins_dropped_total").increment(1);
            return;
        }
        let Some(kind) = kind else {
            report.dropped += 1;
            // Stale (every write older than the cache) or a duplicate
            // delivery of the same version: counted per message by
            // `run_and_emit`.
            return;
        };
        let clean = CleanEvent {
            kind,
            shard_id: shard.id,
            version: event.version(),
            received_at: event.received_at,
            guild_id: plan.guild_id,
            t: event.t,
            d: event.d,
        };
        if replayed {
            report.republished += 1;
            metrics::counter!("worker_events_republished_total").increment(1);
            sink(&clean);
            return;
        }
        self.deliver(clean, report, sink);
    }

    /// Hands a clean event to the handlers and the sink.
    fn deliver(
        &self,
        clean: CleanEvent<'_>,
        report: &mut Report,
        sink: &mut (dyn FnMut(&CleanEvent<'_>) + Send),
    ) {
        let kind = clean.kind;
        report.emitted += 1;
        metrics::counter!("worker_events_emitted_total").increment(1);
        if kind == CleanKind::GuildJoined {
            metrics::counter!("worker_joins_emitted_total").increment(1);
        }
        if let Some(hs) = self.by_name.get(clean.name()) {
            for h in hs {
                h(&clean);
            }
        }
        for h in &self.any {
            h(&clean);
        }
        sink(&clean);
    }
}
