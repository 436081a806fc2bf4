//! One gateway shard: a task that keeps a session alive and forwards events.
//!
//! A shard is three layers, each in its own file, calling only downwards:
//! - [`Shard`] (here): the per-shard task. It loops over connections,
//!   publishes its [`ShardState`], saves and deletes the session record,
//!   and waits out the backoff between connections.
//! - [`LiveSession`] (`live_session.rs`): what each frame means: HELLO's
//!   follow-up (resume or identify), READY / RESUMED, op 7 / op 9 / close
//!   codes, guild tracking, the seq and the confirmed seq, and `deliver`
//!   to the sink. Every way a connection ends becomes an [`Outcome`] there.
//! - [`crate::connection::Connection`]: the socket, inflate, heartbeats
//!   (zombie detection, op 1) and the send limiter; it yields payloads and
//!   how it ended, nothing about the session.
//!
//! `connection_loop.rs` is the `select!` of one connection that joins them.
//!
//! # Algorithm
//! [`Shard::run`] loops over connections:
//! 1. Load the stored session ([`crate::load_session`]); with one, the next
//!    connection resumes, else it identifies.
//! 2. Connect: a resume goes to the session's `resume_gateway_url`; after a
//!    resume attempt there failed (no connection, or no RESUMED), the next
//!    attempt resumes through the configured gateway URL instead. An
//!    identify always goes to the gateway URL, and first waits for a
//!    connect slot of its identify key (`connect_gate.rs`), so a cold boot
//!    connects each batch a window ahead instead of every shard at once.
//! 3. Run the connection (see `connection_loop.rs`) until it ends with an
//!    outcome: resume (op 7, op 9 `true`, a resumable close code, a dropped
//!    or zombied connection, a corrupt frame), identify (op 9 `false`, 4007,
//!    4009: the stored session is deleted), fatal (4004, 4010-4014: the
//!    shard stops with the reason; 4004 is flagged so the process stops
//!    every shard), or shutdown.
//! 4. Before a resume, the guild tracker is rolled back to the confirmed
//!    state, because Discord replays from the confirmed `seq`
//!    ([`LiveSession::rewind`]).
//! 5. Wait a capped exponential backoff with jitter ([`Backoff`]) (after
//!    op 9 `d:false`, at least the random 1-5 s Discord asks for), then
//!    reconnect. The backoff starts from its first step again only when the
//!    connection that just ended had proven healthy: READY or RESUMED
//!    and then `reconnect_healthy_after` (60 s) without its end. A
//!    handshake alone proves nothing: a gateway that breaks every session
//!    right after READY or RESUMED, or answers every IDENTIFY with op 9,
//!    meets delays doubling to `reconnect_max` instead of a reconnect loop
//!    (or an identify every 5 s draining the session start budget).
//!    Every dial of the process also passes one [`crate::ConnectRate`]
//!    (`connect_rate.rs`), so all shards failing at once stay a bounded
//!    rate at Discord.
//!
//! The state is published on a `watch` channel ([`ShardHandle::state`]) for
//! readiness checks and tests; shutdown closes with a resumable code and
//! saves the session, so a rolling restart resumes.

use crate::backoff::Backoff;
use crate::connect::{Connector, gateway_url};
use crate::connect_gate::ConnectSlot;
use crate::identify::IdentifyScheduler;
use crate::live_session::LiveSession;
use crate::outcome::Outcome;
use crate::session_store::{SessionKey, SessionStore, load_session, save_session};
use crate::shard_config::ShardConfig;
use crate::shard_vitals::ShardVitals;
use crate::sink::EventSink;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, watch};

/// Gateway commands from relays a shard holds while it cannot send them
/// (reconnecting, or its send budget spent); more are dropped.
pub const COMMAND_BACKLOG: usize = 64;

/// Where a shard is in its life. Published through [`ShardHandle::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    /// Between connections (backoff).
    Disconnected,
    /// Opening the websocket.
    Connecting,
    /// Connected, waiting for HELLO.
    WaitingForHello,
    /// Heartbeating, queued in the identify scheduler.
    WaitingForIdentify,
    /// IDENTIFY sent, waiting for READY.
    Identifying,
    /// RESUME sent, waiting for RESUMED.
    Resuming,
    /// READY or RESUMED received: events flow.
    Active,
    /// The shard has ended.
    Stopped(ShardExit),
}

impl ShardState {
    /// Every value of the `state` label of `sharder_shard_state`.
    pub const METRIC_LABELS: [&'static str; 8] = [
        "disconnected",
        "connecting",
        "waiting_for_hello",
        "waiting_for_identify",
        "identifying",
        "resuming",
        "active",
        "stopped",
    ];

    /// This state's `state` label on `sharder_shard_state` (1 for the
    /// current state of a shard, 0 for the others).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Connecting => "connecting",
            Self::WaitingForHello => "waiting_for_hello",
            Self::WaitingForIdentify => "waiting_for_identify",
            Self::Identifying => "identifying",
            Self::Resuming => "resuming",
            Self::Active => "active",
            Self::Stopped(_) => "stopped",
        }
    }
}

/// Why a shard stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardExit {
    /// Asked to stop; the session was saved for a resume.
    Shutdown,
    /// Discord refused the shard for good (close code and reason).
    Fatal {
        code: u16,
        reason: &'static str,
        /// 4004: the token is bad, so every shard will fail: stop the process.
        authentication_failed: bool,
    },
    /// The event sink closed.
    SinkClosed,
}

/// Sets `sharder_shard_state` of shard `id` of `total`: 1 for `current`,
/// 0 for the other states (all 0 for `None`: a retired shard).
fn state_series(id: u32, total: u32, current: Option<&'static str>) {
    let (shard, total) = (id.to_string(), total.to_string());
    for name in ShardState::METRIC_LABELS {
        metrics::gauge!(
            "sharder_shard_state",
            "total" => total.clone(),
            "shard" => shard.clone(),
            "state" => name
        )
        .set(f64::from(u8::from(current == Some(name))));
    }
}

/// Controls a running shard.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    state: watch::Receiver<ShardState>,
    /// Guilds the session's READY listed that have no GUILD_CREATE yet
    /// (`None` before the first session).
    loading: watch::Receiver<Option<usize>>,
    shutdown: Arc<watch::Sender<bool>>,
    /// Set before `shutdown` when the shard's generation is retired.
    retire: Arc<AtomicBool>,
    /// `(shard_id, total_shards)`, for its metric series.
    ids: (u32, u32),
    /// Gateway commands to send (`crate::commands`), with when they came.
    commands: mpsc::Sender<(tokio::time::Instant, String)>,
    /// What the status page shows besides the state.
    vitals: Arc<ShardVitals>,
}

impl ShardHandle {
    /// The current state.
    pub fn state(&self) -> ShardState {
        self.state.borrow().clone()
    }

    /// Waits until the state satisfies `f`, returning it (or the last state
    /// if the shard task is gone).
    pub async fn wait_for(&self, mut f: impl FnMut(&ShardState) -> bool) -> ShardState {
        let mut rx = self.state.clone();
        let found = rx.wait_for(|s| f(s)).await.map(|s| s.clone());
        found.unwrap_or_else(|_| rx.borrow().clone())
    }

    /// Guilds the current session has still to load (`None` before the
    /// first session).
    pub fn guilds_loading(&self) -> Option<usize> {
        *self.loading.borrow()
    }

    /// Waits until the shard is active and has received the GUILD_CREATE of
    /// every guild its READY listed (what a live reshard waits for before a
    /// new shard takes its guilds over); `false` if the shard stopped.
    pub async fn wait_loaded(&self) -> bool {
        let mut state = self.state.clone();
        let mut loading = self.loading.clone();
        loop {
            let s = state.borrow_and_update().clone();
            if matches!(s, ShardState::Stopped(_)) {
                return false;
            }
            if s == ShardState::Active && *loading.borrow_and_update() == Some(0) {
                return true;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return false },
                changed = loading.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Asks the shard to end its session for good (close 1000: Discord
    /// stops buffering for it) and stop: a live reshard retired its
    /// generation, whose sessions are then deleted.
    pub fn retire(&self) {
        self.retire.store(true, Ordering::Relaxed);
        if matches!(self.state(), ShardState::Stopped(_)) {
            // Stopped before (a 4011, say): no state change will clear it.
            state_series(self.ids.0, self.ids.1, None);
        }
        self.shutdown();
    }

    /// The shard's total (its generation).
    pub fn total(&self) -> u32 {
        self.ids.1
    }

    /// The shard's figures for the status page.
    pub fn vitals(&self) -> &ShardVitals {
        &self.vitals
    }

    /// Queues a gateway command (`{"op":…,"d":…}`) for the shard to send
    /// while active; false when its backlog is full (dropped).
    pub fn send_command(&self, payload: String) -> bool {
        self.commands
            .try_send((tokio::time::Instant::now(), payload))
            .is_ok()
    }

    /// Asks the shard to close resumably, save its session and stop.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// One shard's task state. Build with [`Shard::new`], then `run`.
pub struct Shard<K: EventSink, S: SessionStore, C: Connector> {
    pub(crate) config: ShardConfig,
    pub(crate) scheduler: IdentifyScheduler,
    store: Arc<S>,
    connector: Arc<C>,
    state: watch::Sender<ShardState>,
    loading: watch::Sender<Option<usize>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// See [`ShardHandle::retire`].
    pub(crate) retire: Arc<AtomicBool>,
    /// The session as it runs: frames, guilds, seqs, the sink.
    pub(crate) live: LiveSession<K>,
    backoff: Backoff,
    /// The last resume through `resume_gateway_url` failed.
    resume_via_gateway: bool,
    /// The session changed since it was last saved.
    dirty: bool,
    /// When the current connection reached READY or RESUMED.
    active_since: Option<tokio::time::Instant>,
    /// Held from before connecting until the IDENTIFY has left.
    pub(crate) connect_slot: Option<ConnectSlot>,
    /// Gateway commands from relays, sent while active.
    pub(crate) commands: mpsc::Receiver<(tokio::time::Instant, String)>,
}

impl<K: EventSink, S: SessionStore, C: Connector> Shard<K, S, C> {
    /// A shard and its handle.
    pub fn new(
        config: ShardConfig,
        scheduler: IdentifyScheduler,
        store: Arc<S>,
        sink: Arc<K>,
        connector: Arc<C>,
    ) -> (Self, ShardHandle) {
        let (state, state_rx) = watch::channel(ShardState::Disconnected);
        let (loading, loading_rx) = watch::channel(None);
        let retire = Arc::new(AtomicBool::new(false));
        let ids = (config.shard_id, config.total_shards);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (commands_tx, commands) = mpsc::channel(COMMAND_BACKLOG);
        let backoff = Backoff::new(config.reconnect_base, config.reconnect_max);
        let vitals = Arc::new(ShardVitals::new());
        let live = LiveSession::new(config.clone(), sink, vitals.clone());
        let shard = Self {
            config,
            scheduler,
            store,
            connector,
            state,
            loading,
            shutdown,
            retire: retire.clone(),
            live,
            backoff,
            resume_via_gateway: false,
            dirty: false,
            active_since: None,
            connect_slot: None,
            commands,
        };
        let handle = ShardHandle {
            state: state_rx,
            loading: loading_rx,
            retire,
            shutdown: Arc::new(shutdown_tx),
            ids,
            commands: commands_tx,
            vitals,
        };
        (shard, handle)
    }

    pub(crate) fn set_state(&self, state: ShardState) {
        tracing::debug!(shard_id = self.config.shard_id, ?state, "shard state");
        // Labelled with the total: during a live reshard shard 3 of 4 and
        // shard 3 of 8 both run, and the old one stopping must not read as
        // the new one stopped. A retired shard's series all go to 0 (it is
        // no longer a shard of the bot, stopped or otherwise).
        let retired =
            matches!(state, ShardState::Stopped(_)) && self.retire.load(Ordering::Relaxed);
        let current = (!retired).then(|| state.metric_label());
        state_series(self.config.shard_id, self.config.total_shards, current);
        let vitals = self.live.vitals();
        match state {
            ShardState::Identifying => vitals.identify_sent(),
            ShardState::Resuming => vitals.resume_sent(),
            _ => {}
        }
        if *self.state.borrow() != state {
            vitals.state_changed(matches!(
                state,
                ShardState::WaitingForIdentify | ShardState::Identifying
            ));
        }
        self.state.send_replace(state);
    }

    /// READY or RESUMED, and the connection still up.
    pub(crate) fn is_active(&self) -> bool {
        *self.state.borrow() == ShardState::Active
    }

    /// Publishes how many guilds the session has still to load, when it
    /// changed (once per burst of messages).
    pub(crate) fn publish_loading(&self) {
        let now = Some(self.live.pending_guilds());
        self.live.vitals().set_guilds(self.live.guild_count());
        self.loading.send_if_modified(|v| {
            let changed = *v != now;
            *v = now;
            changed
        });
    }

    /// READY or RESUMED: events flow. The backoff is not reset here: only
    /// a connection that then stays up proves the gateway healthy
    /// ([`Shard::proved_healthy`]).
    pub(crate) fn became_active(&mut self) {
        self.active_since = Some(tokio::time::Instant::now());
        self.resume_via_gateway = false;
        self.set_state(ShardState::Active);
    }

    /// The connection that just ended stayed READY/RESUMED for
    /// `reconnect_healthy_after`.
    fn proved_healthy(&self) -> bool {
        self.active_since
            .is_some_and(|at| at.elapsed() >= self.config.reconnect_healthy_after)
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs the shard until shutdown, a fatal close or the sink closing.
    pub async fn run(mut self) -> ShardExit {
        let id = self.config.shard_id;
        if let Some(s) = load_session(self.store.as_ref(), self.live.owner(), id).await {
            tracing::info!(
                shard_id = id,
                seq = s.seq,
                epoch = s.epoch,
                "resuming the stored session"
            );
            self.live.restore(s);
        }
        loop {
            if self.shutting_down() {
                return self.finish(ShardExit::Shutdown).await;
            }
            let resuming = self.live.record().is_some();
            let via_resume_url = resuming && !self.resume_via_gateway;
            let base = match self.live.record() {
                Some(s) if via_resume_url => s.resume_gateway_url.clone(),
                _ => self.config.gateway_url.clone(),
            };
            let url = gateway_url(&base, self.config.compression);
            if !resuming {
                // Queue for the identify key before connecting, so a cold
                // boot opens connections a window ahead, not all at once.
                self.set_state(ShardState::WaitingForIdentify);
                let slot = tokio::select! {
                    s = self.scheduler.connect_slot(id) => s,
                    _ = self.shutdown.changed() => return self.finish(ShardExit::Shutdown).await,
                };
                self.connect_slot = Some(slot);
            }
            self.set_state(ShardState::Connecting);
            let connect = self.connector.connect(&url, self.config.max_payload);
            let connected = tokio::select! {
                r = connect => r,
                _ = self.shutdown.changed() => return self.finish(ShardExit::Shutdown).await,
            };
            self.active_since = None;
            let outcome = match connected {
                Ok(ws) => {
                    metrics::counter!("sharder_connections_total").increment(1);
                    self.run_connection(ws).await
                }
                Err(e) => Outcome::Resume(e.to_string().into()),
            };
            self.live.flush_counters();
            self.connect_slot = None;
            let reached_active = self.active_since.is_some();
            // IDENTIFY sent, no READY: op 9 or a close; the breaker counts it.
            if *self.state.borrow() == ShardState::Identifying
                && matches!(outcome, Outcome::Resume(_) | Outcome::Identify { .. })
            {
                self.scheduler.identify_failed(id).await;
            }
            if resuming
                && !reached_active
                && matches!(outcome, Outcome::Resume(_) | Outcome::Identify { .. })
            {
                metrics::counter!("sharder_resumes_total", "result" => "failed").increment(1);
            }
            if let Some((code, reason)) = outcome.close() {
                self.live.vitals().closed(code, reason);
            }
            let mut wait = None;
            match outcome {
                Outcome::Resume(reason) => {
                    tracing::info!(shard_id = id, %reason, "reconnecting to resume");
                    if resuming && via_resume_url && !reached_active {
                        self.resume_via_gateway = true;
                    }
                    self.live.rewind();
                }
                Outcome::Identify { reason, wait: w } => {
                    tracing::warn!(shard_id = id, %reason, "session ended; identifying afresh");
                    self.drop_session().await;
                    wait = w;
                }
                Outcome::Fatal { code, reason } => {
                    tracing::error!(
                        shard_id = id,
                        code,
                        reason,
                        "shard stopped by a fatal close code"
                    );
                    metrics::counter!("sharder_fatal_closes_total").increment(1);
                    let exit = ShardExit::Fatal {
                        code,
                        reason,
                        authentication_failed: gateway_protocol::is_authentication_failure(code),
                    };
                    self.set_state(ShardState::Stopped(exit.clone()));
                    return exit;
                }
                Outcome::Shutdown => return self.finish(ShardExit::Shutdown).await,
                Outcome::SinkClosed(reason) => {
                    tracing::error!(shard_id = id, %reason, "event sink closed; stopping the shard");
                    return self.finish(ShardExit::SinkClosed).await;
                }
            }
            metrics::counter!("sharder_reconnects_total").increment(1);
            self.set_state(ShardState::Disconnected);
            if self.proved_healthy() {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay().max(wait.unwrap_or_default());
            metrics::histogram!("sharder_reconnect_delay_seconds").record(delay.as_secs_f64());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    async fn finish(&mut self, exit: ShardExit) -> ShardExit {
        if exit == ShardExit::Shutdown {
            self.live.await_confirms().await;
        }
        self.persist(true).await;
        self.set_state(ShardState::Stopped(exit.clone()));
        exit
    }

    async fn drop_session(&mut self) {
        if let Some(s) = self.live.end()
            && let Err(e) = self.store.remove(SessionKey::of(&s)).await
        {
            tracing::warn!(shard_id = s.shard_id, error = %e, "cannot delete the ended session");
        }
        self.resume_via_gateway = false;
        self.dirty = false;
    }

    /// Saves the session with the confirmed `seq` and guild states, when it
    /// changed (or always, with `force`).
    pub(crate) async fn persist(&mut self, force: bool) {
        let Some((session, changed)) = self.live.sync_record() else {
            return;
        };
        self.dirty |= changed;
        if (self.dirty || force) && save_session(self.store.as_ref(), session).await {
            self.dirty = false;
        }
    }
}
