//! One gateway shard: a task that keeps a session alive and forwards events.
//!
//! Each shard runs on its own task and owns everything about its session:
//! READY and GUILD_CREATE are handled on the same task, in gateway order,
//! so READY can never wipe state a later event created (a peer's bug).
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
//! 3. Run the connection (see `connection.rs`) until it ends with an
//!    outcome: resume (op 7, op 9 `true`, a resumable close code, a dropped
//!    or zombied connection, a corrupt frame), identify (op 9 `false`, 4007,
//!    4009: the stored session is deleted), fatal (4004, 4010-4014: the
//!    shard stops with the reason; 4004 is flagged so the process stops
//!    every shard), or shutdown.
//! 4. Before a resume, the guild tracker is rolled back to the confirmed
//!    state, because Discord replays from the confirmed `seq`.
//! 5. Wait a capped exponential backoff with jitter ([`crate::Backoff`]),
//!    reset by every READY or RESUMED (after op 9 `d:false`, at least the
//!    random 1-5 s Discord asks for), then reconnect.
//!
//! The state is published on a `watch` channel ([`ShardHandle::state`]) for
//! readiness checks and tests; shutdown closes with a resumable code and
//! saves the session, so a rolling restart resumes.

use crate::backoff::Backoff;
use crate::connect::{Connector, gateway_url};
use crate::connect_gate::ConnectSlot;
use crate::event_counters::EventCounters;
use crate::guilds::GuildTracker;
use crate::identify::IdentifyScheduler;
use crate::session::{Session, SessionOwner};
use crate::session_store::{SessionStore, load_session, save_session};
use crate::sink::{Confirmation, ConfirmedSeq, EventSink};
use config::Secret;
use gateway_protocol::{Compression, DEFAULT_MAX_PAYLOAD};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Everything one shard needs to know.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub shard_id: u32,
    pub total_shards: u32,
    pub token: Secret,
    pub intents: u64,
    pub large_threshold: u8,
    /// Base gateway URL (`wss://gateway.discord.gg`), without query.
    pub gateway_url: String,
    pub compression: Compression,
    /// Bound on one decompressed payload.
    pub max_payload: usize,
    /// First reconnect delay (doubles up to `reconnect_max`).
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// How long to wait for HELLO after connecting.
    pub hello_timeout: Duration,
    /// How often the confirmed `seq` is saved while it moves.
    pub persist_interval: Duration,
    /// Gateway commands allowed per `send_window` (Discord: 120 per 60 s;
    /// scaled down only for simulators).
    pub send_limit: u32,
    pub send_window: Duration,
    /// Random wait before identifying after op 9 `d:false`, as Discord
    /// asks (1 to 5 s).
    pub invalid_session_delay: (Duration, Duration),
    /// At shutdown, how long to wait for the sink to confirm what it holds
    /// before saving the session (what stays unconfirmed is replayed).
    pub shutdown_drain: Duration,
}

impl ShardConfig {
    /// Defaults for shard `shard_id` of `total_shards`.
    pub fn new(shard_id: u32, total_shards: u32, token: Secret, gateway_url: String) -> Self {
        Self {
            shard_id,
            total_shards,
            token,
            intents: 0b10_0000_1111,
            large_threshold: 50,
            gateway_url,
            compression: Compression::ZstdStream,
            max_payload: DEFAULT_MAX_PAYLOAD,
            reconnect_base: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(20),
            persist_interval: Duration::from_secs(2),
            send_limit: gateway_protocol::GATEWAY_SEND_LIMIT,
            send_window: gateway_protocol::GATEWAY_SEND_WINDOW,
            invalid_session_delay: (Duration::from_secs(1), Duration::from_secs(5)),
            shutdown_drain: Duration::from_secs(5),
        }
    }
}

impl ShardConfig {
    /// The settings of shard `shard_id` from the process configuration.
    /// `gateway_url` is `[sharder].gateway_url` or the URL from
    /// `GET /gateway/bot`.
    pub fn from_config(cfg: &config::Config, shard_id: u32, gateway_url: String) -> Self {
        let s = &cfg.sharder;
        let mut c = Self::new(
            shard_id,
            s.total_shards,
            cfg.discord.token.clone(),
            gateway_url,
        );
        c.intents = cfg.discord.intents;
        c.large_threshold = cfg.discord.large_threshold;
        c.compression = s.compression.into();
        c.max_payload = usize::try_from(s.max_payload_bytes).unwrap_or(usize::MAX);
        c.reconnect_base = s.reconnect_base;
        c.reconnect_max = s.reconnect_max;
        c.hello_timeout = s.hello_timeout;
        c.persist_interval = s.persist_interval;
        c.shutdown_drain = s.shutdown_grace / 2;
        c
    }
}

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

/// Controls a running shard.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    state: watch::Receiver<ShardState>,
    shutdown: Arc<watch::Sender<bool>>,
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

    /// Asks the shard to close resumably, save its session and stop.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// What ended one connection.
#[derive(Debug)]
pub(crate) enum Outcome {
    Resume(String),
    Identify(String),
    Fatal { code: u16, reason: &'static str },
    Shutdown,
    SinkClosed(String),
}

/// One shard's task state. Build with [`Shard::new`], then `run`.
pub struct Shard<K: EventSink, S: SessionStore, C: Connector> {
    pub(crate) config: ShardConfig,
    pub(crate) owner: SessionOwner,
    pub(crate) scheduler: IdentifyScheduler,
    pub(crate) store: Arc<S>,
    pub(crate) sink: Arc<K>,
    pub(crate) connector: Arc<C>,
    pub(crate) state: watch::Sender<ShardState>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) session: Option<Session>,
    pub(crate) guilds: GuildTracker,
    pub(crate) seqs: ConfirmedSeq,
    /// Highest `s` received on the current connection (heartbeat `d`).
    pub(crate) last_seq: Option<u64>,
    pub(crate) last_epoch: Option<u64>,
    pub(crate) confirm_tx: mpsc::UnboundedSender<Confirmation>,
    pub(crate) confirm_rx: mpsc::UnboundedReceiver<Confirmation>,
    pub(crate) backoff: Backoff,
    /// The last resume through `resume_gateway_url` failed.
    pub(crate) resume_via_gateway: bool,
    /// The session changed since it was last saved.
    pub(crate) dirty: bool,
    /// The current connection reached READY or RESUMED.
    pub(crate) reached_active: bool,
    /// A wait the protocol asks for before the next connection (op 9).
    pub(crate) extra_delay: Option<Duration>,
    /// Held from before connecting until the IDENTIFY has left.
    pub(crate) connect_slot: Option<ConnectSlot>,
    pub(crate) counters: EventCounters,
    /// When the current burst of messages was read (events' `received_at`).
    pub(crate) burst_read_at: std::time::SystemTime,
    /// Where the last unreadable payload came: the session's epoch and the
    /// highest `s` received before it (see `Shard::unreadable`).
    pub(crate) unreadable_at: Option<(Option<u64>, Option<u64>)>,
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
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
        let owner = SessionOwner::new(&config.token, config.total_shards);
        let backoff = Backoff::new(config.reconnect_base, config.reconnect_max);
        let shard = Self {
            config,
            owner,
            scheduler,
            store,
            sink,
            connector,
            state,
            shutdown,
            session: None,
            guilds: GuildTracker::default(),
            seqs: ConfirmedSeq::default(),
            last_seq: None,
            last_epoch: None,
            confirm_tx,
            confirm_rx,
            backoff,
            resume_via_gateway: false,
            dirty: false,
            reached_active: false,
            extra_delay: None,
            connect_slot: None,
            counters: EventCounters::new(),
            burst_read_at: std::time::SystemTime::UNIX_EPOCH,
            unreadable_at: None,
        };
        let handle = ShardHandle {
            state: state_rx,
            shutdown: Arc::new(shutdown_tx),
        };
        (shard, handle)
    }

    pub(crate) fn set_state(&self, state: ShardState) {
        tracing::debug!(shard_id = self.config.shard_id, ?state, "shard state");
        let shard = self.config.shard_id.to_string();
        let current = state.metric_label();
        for name in ShardState::METRIC_LABELS {
            metrics::gauge!("sharder_shard_state", "shard" => shard.clone(), "state" => name)
                .set(f64::from(u8::from(name == current)));
        }
        self.state.send_replace(state);
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs the shard until shutdown, a fatal close or the sink closing.
    pub async fn run(mut self) -> ShardExit {
        let id = self.config.shard_id;
        if let Some(s) = load_session(self.store.as_ref(), &self.owner, id).await {
            tracing::info!(
                shard_id = id,
                seq = s.seq,
                epoch = s.epoch,
                "resuming the stored session"
            );
            self.last_epoch = Some(s.epoch);
            self.guilds = GuildTracker::from_snapshot(&s.guilds);
            self.seqs = ConfirmedSeq::new(s.epoch, s.seq);
            self.last_seq = Some(s.seq);
            self.session = Some(s);
        }
        loop {
            if self.shutting_down() {
                return self.finish(ShardExit::Shutdown).await;
            }
            let resuming = self.session.is_some();
            let via_resume_url = resuming && !self.resume_via_gateway;
            let base = match &self.session {
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
            self.reached_active = false;
            let outcome = match connected {
                Ok(ws) => {
                    metrics::counter!("sharder_connections_total").increment(1);
                    self.run_connection(ws).await
                }
                Err(e) => Outcome::Resume(e.to_string()),
            };
            self.counters.flush();
            self.connect_slot = None;
            if resuming
                && !self.reached_active
                && matches!(outcome, Outcome::Resume(_) | Outcome::Identify(_))
            {
                metrics::counter!("sharder_resumes_total", "result" => "failed").increment(1);
            }
            match outcome {
                Outcome::Resume(reason) => {
                    tracing::info!(shard_id = id, %reason, "reconnecting to resume");
                    if resuming && via_resume_url && !self.reached_active {
                        self.resume_via_gateway = true;
                    }
                    // What the sink confirmed since the last message counts:
                    // the resume then replays only what is really missing.
                    // Draining before the rollback keeps the guild states
                    // and the resume seq at the same point.
                    self.drain_confirms();
                    self.guilds.rollback();
                    if self.session.is_some() {
                        self.last_seq = Some(self.seqs.confirmed());
                    }
                }
                Outcome::Identify(reason) => {
                    tracing::warn!(shard_id = id, %reason, "session ended; identifying afresh");
                    self.drop_session().await;
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
            let delay = self
                .backoff
                .next_delay()
                .max(self.extra_delay.take().unwrap_or_default());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    async fn finish(&mut self, exit: ShardExit) -> ShardExit {
        if exit == ShardExit::Shutdown {
            self.await_confirms().await;
        }
        self.persist(true).await;
        self.set_state(ShardState::Stopped(exit.clone()));
        exit
    }

    /// The connection is closed (nothing new arrives): waits, up to
    /// `shutdown_drain`, for the sink to confirm what it holds, so the saved
    /// seq covers it and a resume does not replay it.
    async fn await_confirms(&mut self) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_drain;
        while self.seqs.outstanding() > 0 {
            match tokio::time::timeout_at(deadline, self.confirm_rx.recv()).await {
                Ok(Some(c)) => self.on_confirm(c),
                _ => break,
            }
        }
        if self.seqs.outstanding() > 0 {
            tracing::warn!(
                shard_id = self.config.shard_id,
                unconfirmed = self.seqs.outstanding(),
                "sink did not confirm everything before shutdown; the rest replays on resume"
            );
        }
    }

    async fn drop_session(&mut self) {
        if let Some(s) = self.session.take() {
            self.last_epoch = Some(s.epoch);
            if let Err(e) = self.store.remove(s.shard_id).await {
                tracing::warn!(shard_id = s.shard_id, error = %e, "cannot delete the ended session");
            }
        }
        self.guilds = GuildTracker::default();
        self.last_seq = None;
        self.resume_via_gateway = false;
        self.dirty = false;
    }

    /// Saves the session with the confirmed `seq` and guild states, when it
    /// changed (or always, with `force`).
    pub(crate) async fn persist(&mut self, force: bool) {
        let confirmed = self.seqs.confirmed();
        let guilds = self.guilds.snapshot();
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if session.epoch == self.seqs.epoch() && session.seq != confirmed {
            session.seq = confirmed;
            self.dirty = true;
        }
        if session.guilds != guilds {
            session.guilds = guilds;
            self.dirty = true;
        }
        if (self.dirty || force) && save_session(self.store.as_ref(), session).await {
            self.dirty = false;
        }
    }

    /// Applies a sink confirmation.
    pub(crate) fn on_confirm(&mut self, c: Confirmation) {
        if self.seqs.confirm(c) {
            self.guilds.confirm(self.seqs.confirmed());
        }
    }

    /// Applies every confirmation queued so far, moving the guild tracker
    /// once.
    ///
    /// The connection loop calls this after each message, before each save
    /// and before a resume, instead of waiting on the channel: a
    /// confirmation only matters when the seq is saved or a resume starts,
    /// and a `select!` arm on it made the shard wake itself for every event
    /// (the in-process sink confirms on the shard's own task) and run one
    /// loop turn per confirmation.
    pub(crate) fn drain_confirms(&mut self) {
        let mut moved = false;
        while let Ok(c) = self.confirm_rx.try_recv() {
            moved |= self.seqs.confirm(c);
        }
        if moved {
            self.guilds.confirm(self.seqs.confirmed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_every_setting_and_keeps_the_token_secret() {
        let cfg = config::Config::from_toml_str(
            "[discord]\nintents = 3\nlarge_threshold = 250\n\
             [sharder]\ntotal_shards = 4\ncompression = \"zlib-stream\"\n\
             max_payload_bytes = 8192\nreconnect_base = \"1s\"\nreconnect_max = \"9s\"\n",
            "t",
            vec![("BULWARK_DISCORD__TOKEN".into(), "tok.en.secret".into())],
        )
        .unwrap();
        let c = ShardConfig::from_config(&cfg, 3, "wss://g".into());
        assert_eq!((c.shard_id, c.total_shards, c.intents), (3, 4, 3));
        assert_eq!(c.large_threshold, 250);
        assert_eq!(c.compression, Compression::ZlibStream);
        assert_eq!(c.max_payload, 8192);
        assert_eq!(
            (c.reconnect_base, c.reconnect_max),
            (Duration::from_secs(1), Duration::from_secs(9))
        );
        assert_eq!(c.token.expose(), "tok.en.secret");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
