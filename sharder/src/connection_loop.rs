//! One connection of a shard, from HELLO to its end: the `select!` that
//! joins the [`Connection`], the [`crate::live_session::LiveSession`], the
//! identify permit, the persist timer and shutdown.
//!
//! # Algorithm
//! 1. Wait for HELLO ([`Connection::handshake`]).
//! 2. With a session, send RESUME (`LiveSession::resume_command`). Without,
//!    queue in the identify scheduler while heartbeating, and send IDENTIFY
//!    when granted. The permit is taken after HELLO, not before connecting,
//!    so a slow connection cannot squeeze two identifies of one key into one
//!    window.
//! 3. Then one `select!` loop, each arm a single reason to wake up: shutdown,
//!    the heartbeat timer, the identify permit, the persist timer, the
//!    next websocket message, and a bot's command from a relay (taken only
//!    while active and once the previous one has left; one the send budget
//!    does not allow yet is held and retried when it does, so the loop
//!    never stops reading for it). A message wake-up also handles the messages
//!    already buffered behind it, up to a burst of 64. Sink confirmations
//!    are drained after every burst and before every save, never waited on
//!    (see `LiveSession::drain_confirms`).
//! 4. Heartbeat timer: if no ACK arrived since the previous heartbeat, the
//!    messages already readable are handled first (after a stall the ACK
//!    can be among them, ready together with the timer); if still no ACK,
//!    the connection is a zombie ([`Connection::heartbeat`]).
//! 5. Each message: the connection reads it into a payload, the payload is
//!    read into a [`Frame`], and the live session says what it means
//!    (`LiveSession::on_frame`); the shard saves on READY and goes active on
//!    READY or RESUMED; the dispatch then goes to the sink
//!    (`LiveSession::forward`). A payload that is not a frame goes to
//!    `LiveSession::unreadable`.

use crate::connect::Connector;
use crate::connection::{Connection, Incoming, Ws};
use crate::identify::IdentifyPermit;
use crate::live_session::Step;
use crate::outcome::Outcome;
use crate::session_store::SessionStore;
use crate::shard::{Shard, ShardState};
use crate::sink::EventSink;
use gateway_protocol::Decompressor;
use gateway_protocol::Frame;
use gateway_protocol::RESUMABLE_CLOSE;
use std::future::Future;
use std::pin::Pin;
use tokio::time::Instant;

/// How long a retired shard's connection is read after its close, for
/// what Discord sent before it saw the close.
const RETIRE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Messages handled per wake-up of the connection loop, at most, before
/// the heartbeat timer, the persist timer and shutdown are looked at again.
/// At 300k events per CPU-second a burst is about 0.2 ms.
const BURST: usize = 64;

/// Messages already readable that a heartbeat without its ACK reads before
/// calling the connection a zombie: after a stall the ACK waits behind
/// whatever arrived with it. Bounded, so a flood cannot hold the judgement
/// off for ever.
const ZOMBIE_LOOKAHEAD: usize = 16 * BURST;

impl<K: EventSink, S: SessionStore, C: Connector> Shard<K, S, C> {
    /// Runs one connection to its end.
    pub(crate) async fn run_connection(&mut self, ws: Ws<C>) -> Outcome {
        let id = self.config.shard_id;
        let inflater = match Decompressor::new(self.config.compression, self.config.max_payload) {
            Ok(d) => d,
            Err(e) => return Outcome::Resume(e.to_string().into()),
        };
        self.set_state(ShardState::WaitingForHello);
        let mut conn = match Connection::<C>::handshake(ws, inflater, &self.config).await {
            Ok(c) => c,
            Err(reason) => return Outcome::Resume(reason.into()),
        };
        type PermitFuture = Pin<Box<dyn Future<Output = IdentifyPermit> + Send>>;
        let mut identify: Option<PermitFuture> = None;
        if let Some((seq, resume)) = self.live.resume_command() {
            self.set_state(ShardState::Resuming);
            tracing::info!(shard_id = id, seq, "sending RESUME");
            if let Err(e) = conn.send_command(resume).await {
                return e.into();
            }
        } else {
            self.set_state(ShardState::WaitingForIdentify);
            let scheduler = self.scheduler.clone();
            identify = Some(Box::pin(async move { scheduler.acquire(id).await }));
        }
        let mut persist = tokio::time::interval_at(
            Instant::now() + self.config.persist_interval,
            self.config.persist_interval,
        );
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the connection, moved when the next heartbeat
        // moves: a new `sleep_until` per loop turn would register and
        // cancel a timer entry for every message.
        let beat = tokio::time::sleep_until(conn.next_beat());
        tokio::pin!(beat);
        // A bot's command waiting for the send budget, and when to retry.
        let mut held: Option<(Instant, String)> = None;
        let retry = tokio::time::sleep_until(Instant::now());
        tokio::pin!(retry);
        let mut commands_open = true;
        loop {
            if beat.deadline() != conn.next_beat() {
                beat.as_mut().reset(conn.next_beat());
            }
            tokio::select! {
                _ = self.shutdown.changed() => {
                    if self.retire.load(std::sync::atomic::Ordering::Relaxed) {
                        conn.close(1000, "retired by a live reshard").await;
                        self.drain_retired(&mut conn).await;
                    } else {
                        conn.close(RESUMABLE_CLOSE, "shutting down").await;
                    }
                    return Outcome::Shutdown;
                }
                () = &mut beat => {
                    // After a stall (a starved core, a paused process) the
                    // timer and an ACK already in the socket are ready
                    // together, and `select!` picks either: what is already
                    // read is handled before the connection is judged.
                    if conn.awaiting_ack() {
                        self.live.burst_began();
                        if let Err(o) = self.read_ready(&mut conn, ZOMBIE_LOOKAHEAD).await {
                            return o;
                        }
                    }
                    if let Err(e) = conn.heartbeat(self.live.last_seq()).await {
                        return e.into();
                    }
                }
                permit = async {
                    match identify.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if identify.is_some() => {
                    identify = None;
                    if let Err(o) = self.identify(&mut conn, permit).await {
                        return o;
                    }
                }
                cmd = self.commands.recv(), if commands_open && held.is_none() && self.is_active() => {
                    let Some(cmd) = cmd else {
                        commands_open = false;
                        continue;
                    };
                    if let Err(o) = self.send_bot_command(&mut conn, cmd, &mut held, retry.as_mut()).await {
                        return o;
                    }
                }
                () = &mut retry, if held.is_some() => {
                    if let Some(cmd) = held.take()
                        && let Err(o) = self.send_bot_command(&mut conn, cmd, &mut held, retry.as_mut()).await
                    {
                        return o;
                    }
                }
                _ = persist.tick() => {
                    self.live.drain_confirms();
                    self.persist(false).await;
                }
                msg = conn.next_message() => {
                    self.live.burst_began();
                    if let Err(o) = self.on_message(&mut conn, msg).await {
                        return o;
                    }
                    // Messages already read from the socket are handled
                    // without a `select!` turn each (which re-arms every
                    // other arm), up to a burst; then the timers and
                    // shutdown get their look.
                    if let Err(o) = self.read_ready(&mut conn, BURST - 1).await {
                        return o;
                    }
                }
            }
        }
    }

    /// After the close of a retired shard: what Discord wrote before it
    /// read the close is still forwarded, up to its closing frame (within
    /// [`RETIRE_DRAIN`]). Those are copies of events the new total also
    /// got, and the workers pair copies by content: a copy dropped here
    /// could leave its twin paired with an older event of identical
    /// payload (two TYPING_STARTs of one user in one second), and that
    /// event would be lost from the clean stream.
    async fn drain_retired(&mut self, conn: &mut Connection<C>) {
        let drained = tokio::time::timeout(RETIRE_DRAIN, async {
            loop {
                let msg = conn.next_message().await;
                if self.on_message(conn, msg).await.is_err() {
                    return;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                shard_id = self.config.shard_id,
                "a retired connection did not close within {RETIRE_DRAIN:?}; dropping it"
            );
        }
        self.live.flush_counters();
        self.live.drain_confirms();
    }

    /// Handles up to `max` messages that are ready without waiting (a
    /// heartbeat ACK among them ends the look-ahead before a judgement),
    /// then flushes the burst's counters and drains confirmations.
    async fn read_ready(&mut self, conn: &mut Connection<C>, max: usize) -> Result<(), Outcome> {
        let judging = conn.awaiting_ack();
        for _ in 0..max {
            let Some(msg) = conn.ready_message().await else {
                break;
            };
            self.on_message(conn, msg).await?;
            if judging && !conn.awaiting_ack() {
                break;
            }
        }
        self.live.flush_counters();
        self.live.drain_confirms();
        self.publish_loading();
        Ok(())
    }

    /// One websocket message: a (complete, inflated) payload is read as a
    /// frame and handed to the live session; a close or a broken socket
    /// ends the connection.
    async fn on_message(&mut self, conn: &mut Connection<C>, msg: Incoming) -> Result<(), Outcome> {
        let Some(payload) = conn.read(msg).await? else {
            return Ok(());
        };
        let frame = match Frame::parse(&payload) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .live
                    .unreadable(conn, payload.len(), e.to_string())
                    .await;
            }
        };
        match self.live.on_frame(conn, &frame).await? {
            Step::Handled => return Ok(()),
            Step::Ready => {
                self.scheduler.identify_succeeded().await;
                self.became_active();
                self.persist(true).await;
            }
            Step::Resumed => self.became_active(),
            Step::Dispatch => {}
        }
        self.live
            .forward(conn, &mut self.shutdown, &frame, &payload)
            .await
    }

    /// Sends a bot's command if the budget allows it now; else holds it in
    /// `held` until `retry` fires. One older than the commands' TTL is
    /// dropped instead.
    async fn send_bot_command(
        &mut self,
        conn: &mut Connection<C>,
        cmd: (Instant, String),
        held: &mut Option<(Instant, String)>,
        retry: Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), Outcome> {
        if cmd.0.elapsed() > envelope::command::COMMAND_TTL {
            metrics::counter!("sharder_commands_sent_total", "result" => "expired").increment(1);
            return Ok(());
        }
        match conn.try_send_command(&cmd.1).await? {
            None => {
                metrics::counter!("sharder_commands_sent_total", "result" => "sent").increment(1);
            }
            Some(wait) => {
                *held = Some(cmd);
                retry.reset(Instant::now() + wait);
            }
        }
        Ok(())
    }

    async fn identify(
        &mut self,
        conn: &mut Connection<C>,
        permit: IdentifyPermit,
    ) -> Result<(), Outcome> {
        let identify = self.live.identify_command();
        tracing::info!(
            shard_id = self.config.shard_id,
            bucket = permit.bucket,
            "sending IDENTIFY"
        );
        self.set_state(ShardState::Identifying);
        let sent = conn.send_command(identify).await;
        self.scheduler.identify_sent(permit);
        // The key's next shard may connect now, a window ahead of its turn.
        self.connect_slot = None;
        sent.map_err(Outcome::from)
    }
}
