//! One gateway connection of a shard, from HELLO to its end.
//!
//! # Algorithm
//! 1. Wait for HELLO (bounded by `hello_timeout`); its interval schedules
//!    the first heartbeat at `interval * jitter` (jitter uniform in [0, 1)),
//!    then one per interval.
//! 2. With a session, send RESUME (`seq` = the confirmed seq, so anything
//!    the sink has not confirmed is replayed). Without, queue in the identify
//!    scheduler while heartbeating, and send IDENTIFY when granted. The
//!    permit is taken after HELLO, not before connecting, so a slow
//!    connection cannot squeeze two identifies of one key into one window.
//! 3. Then one `select!` loop, each arm a single reason to wake up: shutdown,
//!    the heartbeat timer, the identify permit, the persist timer, and the
//!    next websocket message. A message wake-up also handles the messages
//!    already buffered behind it, up to a burst of 64. Sink confirmations
//!    are drained after every burst and before every save, never waited on
//!    (see `Shard::drain_confirms`).
//! 4. Heartbeat timer: if no ACK arrived since the previous heartbeat, the
//!    messages already readable are handled first (after a stall the ACK
//!    can be among them, ready together with the timer); if still no ACK,
//!    the connection is a zombie: close with 4000 (keeps the session) and
//!    resume.
//!    A heartbeat request (op 1) from the server is answered at once.
//! 5. Every send goes through the connection's [`SendLimiter`], built from
//!    HELLO's interval, which keeps a heartbeat share the commands cannot
//!    spend.
//! 6. Dispatches are handled on this task (see `dispatch.rs`).
//! 7. Any frame error (corrupt compression, invalid JSON) closes with 4000
//!    and resumes: Discord replays from the confirmed seq. A payload that
//!    is unreadable again at the same point after that resume is Discord's
//!    own bytes, which would come back on every resume: it is skipped and
//!    counted instead (`Shard::unreadable`), never a reconnect loop.

use crate::connect::Connector;
use crate::identify::IdentifyPermit;
use crate::session_store::SessionStore;
use crate::shard::{Outcome, Shard, ShardState};
use crate::sink::EventSink;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway_protocol::Decompressor;
use gateway_protocol::{CloseAction, RESUMABLE_CLOSE, close_action};
use gateway_protocol::{Frame, op};
use gateway_protocol::{SendKind, SendLimiter};
use rand::Rng;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub(crate) type Ws<C> = WebSocketStream<<C as Connector>::Stream>;

/// Heartbeat bookkeeping of one connection.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    pub(crate) interval: Duration,
    pub(crate) next: Instant,
    pub(crate) acked: bool,
    pub(crate) sent_at: Option<Instant>,
}

#[derive(Deserialize)]
struct Hello {
    heartbeat_interval: u64,
}

/// Messages handled per wake-up of the connection loop, at most, before
/// the heartbeat timer, the persist timer and shutdown are looked at again.
/// At 300k events per CPU-second a burst is about 0.2 ms.
const BURST: usize = 64;

/// Messages already readable that a heartbeat without its ACK reads before
/// calling the connection a zombie: after a stall the ACK waits behind
/// whatever arrived with it. Bounded, so a flood cannot hold the judgement
/// off for ever.
const ZOMBIE_LOOKAHEAD: usize = 16 * BURST;

/// Longest heartbeat interval accepted from HELLO.
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(600);

pub(crate) async fn close<C: Connector>(ws: &mut Ws<C>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    if let Err(e) = ws.close(Some(frame)).await {
        tracing::debug!(error = %e, "close frame not sent");
    }
}

impl<K: EventSink, S: SessionStore, C: Connector> Shard<K, S, C> {
    /// Runs one connection to its end.
    pub(crate) async fn run_connection(&mut self, mut ws: Ws<C>) -> Outcome {
        let id = self.config.shard_id;
        let mut inflater = match Decompressor::new(self.config.compression, self.config.max_payload)
        {
            Ok(d) => d,
            Err(e) => return Outcome::Resume(e.to_string()),
        };
        self.set_state(ShardState::WaitingForHello);
        let hello = tokio::time::timeout(
            self.config.hello_timeout,
            read_hello::<C>(&mut ws, &mut inflater),
        )
        .await;
        let interval = match hello {
            Ok(Ok(i)) => i,
            Ok(Err(reason)) => {
                close::<C>(&mut ws, RESUMABLE_CLOSE, "no hello").await;
                return Outcome::Resume(reason);
            }
            Err(_) => {
                close::<C>(&mut ws, RESUMABLE_CLOSE, "no hello").await;
                return Outcome::Resume("no HELLO within the timeout".into());
            }
        };
        let limiter = SendLimiter::new(self.config.send_limit, self.config.send_window, interval);
        let jitter: f64 = rand::rng().random_range(0.0..1.0);
        let mut hb = Heartbeat {
            interval,
            next: Instant::now() + interval.mul_f64(jitter),
            acked: true,
            sent_at: None,
        };
        type PermitFuture = Pin<Box<dyn Future<Output = IdentifyPermit> + Send>>;
        let mut identify: Option<PermitFuture> = None;
        if let Some(session) = &self.session {
            let seq = if self.seqs.epoch() == session.epoch {
                self.seqs.confirmed()
            } else {
                session.seq
            };
            let resume = serde_json::json!({
                "op": op::RESUME,
                "d": {
                    "token": self.config.token.expose(),
                    "session_id": session.session_id,
                    "seq": seq,
                }
            });
            self.set_state(ShardState::Resuming);
            tracing::info!(shard_id = id, seq, "sending RESUME");
            if let Err(o) =
                send::<C>(&mut ws, &limiter, SendKind::Command, resume.to_string()).await
            {
                return o;
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
        // One timer for the connection, moved when `hb.next` moves: a new
        // `sleep_until` per loop turn would register and cancel a timer
        // entry for every message.
        let beat = tokio::time::sleep_until(hb.next);
        tokio::pin!(beat);
        loop {
            if beat.deadline() != hb.next {
                beat.as_mut().reset(hb.next);
            }
            tokio::select! {
                _ = self.shutdown.changed() => {
                    close::<C>(&mut ws, RESUMABLE_CLOSE, "shutting down").await;
                    return Outcome::Shutdown;
                }
                () = &mut beat => {
                    // After a stall (a starved core, a paused process) the
                    // timer and an ACK already in the socket are ready
                    // together, and `select!` picks either: what is already
                    // read is handled before the connection is judged.
                    if !hb.acked {
                        self.burst_read_at = std::time::SystemTime::now();
                        if let Err(o) = self.read_ready(&mut ws, &mut hb, &limiter, &mut inflater, ZOMBIE_LOOKAHEAD).await {
                            return o;
                        }
                    }
                    if let Err(o) = self.heartbeat(&mut ws, &mut hb, &limiter).await {
                        return o;
                    }
                }
                permit = async {
                    match identify.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if identify.is_some() => {
                    identify = None;
                    if let Err(o) = self.identify(&mut ws, &limiter, permit).await {
                        return o;
                    }
                }
                _ = persist.tick() => {
                    self.drain_confirms();
                    self.persist(false).await;
                }
                msg = ws.next() => {
                    self.burst_read_at = std::time::SystemTime::now();
                    if let Err(o) = self.on_message(&mut ws, &mut hb, &limiter, &mut inflater, msg).await {
                        return o;
                    }
                    // Messages already read from the socket are handled
                    // without a `select!` turn each (which re-arms every
                    // other arm), up to a burst; then the timers and
                    // shutdown get their look.
                    if let Err(o) = self.read_ready(&mut ws, &mut hb, &limiter, &mut inflater, BURST - 1).await {
                        return o;
                    }
                }
            }
        }
    }

    /// Handles up to `max` messages that are ready without waiting (a
    /// heartbeat ACK among them ends the look-ahead before a judgement),
    /// then flushes the burst's counters and drains confirmations.
    async fn read_ready(
        &mut self,
        ws: &mut Ws<C>,
        hb: &mut Heartbeat,
        limiter: &SendLimiter,
        inflater: &mut Decompressor,
        max: usize,
    ) -> Result<(), Outcome> {
        let judging = !hb.acked;
        for _ in 0..max {
            let next = std::future::poll_fn(|cx| Poll::Ready(ws.poll_next_unpin(cx))).await;
            let Poll::Ready(msg) = next else { break };
            self.on_message(ws, hb, limiter, inflater, msg).await?;
            if judging && hb.acked {
                break;
            }
        }
        self.counters.flush();
        self.drain_confirms();
        Ok(())
    }

    /// One websocket message: a close ends the connection, a (complete,
    /// inflated) payload goes to `on_payload`, anything else is skipped.
    async fn on_message(
        &mut self,
        ws: &mut Ws<C>,
        hb: &mut Heartbeat,
        limiter: &SendLimiter,
        inflater: &mut Decompressor,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), Outcome> {
        let payload = match msg {
            None => {
                return Err(Outcome::Resume(
                    "connection ended without a close frame".into(),
                ));
            }
            Some(Err(e)) => return Err(Outcome::Resume(format!("websocket error: {e}"))),
            Some(Ok(Message::Close(frame))) => return Err(self.on_close(frame)),
            Some(Ok(Message::Binary(b))) => match inflater.push(&b) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.corrupt(ws, e.to_string()).await),
            },
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(_)) => return Ok(()),
        };
        self.on_payload(ws, hb, limiter, payload).await
    }

    async fn corrupt(&mut self, ws: &mut Ws<C>, reason: String) -> Outcome {
        tracing::error!(shard_id = self.config.shard_id, %reason, "bad gateway frame; reconnecting to resume");
        metrics::counter!("sharder_bad_frames_total").increment(1);
        close::<C>(ws, RESUMABLE_CLOSE, "bad frame").await;
        Outcome::Resume(reason)
    }

    /// A payload that inflated but cannot be read as a gateway frame. The
    /// first one at a point closes with 4000 and resumes, in case it was
    /// damaged on the way: Discord replays from the confirmed seq. One at
    /// the same point again (same session, same highest `s` before it) is
    /// the gateway's own bytes, which every resume would replay: it is
    /// skipped, logged and counted, and the connection goes on, so the
    /// events behind it still flow.
    async fn unreadable(
        &mut self,
        ws: &mut Ws<C>,
        bytes: usize,
        reason: String,
    ) -> Result<(), Outcome> {
        let at = (self.session.as_ref().map(|s| s.epoch), self.last_seq);
        if self.unreadable_at == Some(at) {
            tracing::error!(
                shard_id = self.config.shard_id,
                after_seq = ?self.last_seq,
                bytes,
                %reason,
                "the same gateway frame is unreadable again after a resume; skipped it, \
                 since resuming would replay it again (the event is lost; \
                 sharder_frames_skipped_total counts these)"
            );
            metrics::counter!("sharder_frames_skipped_total").increment(1);
            return Ok(());
        }
        self.unreadable_at = Some(at);
        Err(self.corrupt(ws, reason).await)
    }

    fn on_close(&self, frame: Option<CloseFrame>) -> Outcome {
        let Some(frame) = frame else {
            return Outcome::Resume("closed without a code".into());
        };
        let code = u16::from(frame.code);
        metrics::counter!("sharder_close_codes_total", "code" => code.to_string()).increment(1);
        match close_action(code) {
            CloseAction::Resume => Outcome::Resume(format!("closed with {code} {}", frame.reason)),
            CloseAction::Identify => {
                Outcome::Identify(format!("closed with {code} {}", frame.reason))
            }
            CloseAction::Fatal(reason) => Outcome::Fatal { code, reason },
        }
    }

    pub(crate) async fn heartbeat(
        &mut self,
        ws: &mut Ws<C>,
        hb: &mut Heartbeat,
        limiter: &SendLimiter,
    ) -> Result<(), Outcome> {
        if !hb.acked {
            tracing::warn!(
                shard_id = self.config.shard_id,
                "no heartbeat ACK: zombie connection"
            );
            metrics::counter!("sharder_zombies_total").increment(1);
            close::<C>(ws, RESUMABLE_CLOSE, "zombie").await;
            return Err(Outcome::Resume(
                "zombie connection (no heartbeat ACK)".into(),
            ));
        }
        hb.next = Instant::now() + hb.interval;
        self.send_heartbeat(ws, hb, limiter).await
    }

    pub(crate) async fn send_heartbeat(
        &self,
        ws: &mut Ws<C>,
        hb: &mut Heartbeat,
        limiter: &SendLimiter,
    ) -> Result<(), Outcome> {
        let beat = serde_json::json!({ "op": op::HEARTBEAT, "d": self.last_seq });
        send::<C>(ws, limiter, SendKind::Heartbeat, beat.to_string()).await?;
        hb.acked = false;
        hb.sent_at = Some(Instant::now());
        Ok(())
    }

    async fn identify(
        &mut self,
        ws: &mut Ws<C>,
        limiter: &SendLimiter,
        permit: IdentifyPermit,
    ) -> Result<(), Outcome> {
        let c = &self.config;
        let identify = serde_json::json!({
            "op": op::IDENTIFY,
            "d": {
                "token": c.token.expose(),
                "properties": {
                    "os": std::env::consts::OS,
                    "browser": "bulwark",
                    "device": "bulwark",
                },
                "intents": c.intents,
                "shard": [c.shard_id, c.total_shards],
                "large_threshold": c.large_threshold,
            }
        });
        tracing::info!(
            shard_id = c.shard_id,
            bucket = permit.bucket,
            "sending IDENTIFY"
        );
        self.set_state(ShardState::Identifying);
        let sent = send::<C>(ws, limiter, SendKind::Command, identify.to_string()).await;
        self.scheduler.identify_sent(permit);
        // The key's next shard may connect now, a window ahead of its turn.
        self.connect_slot = None;
        sent
    }

    async fn on_payload(
        &mut self,
        ws: &mut Ws<C>,
        hb: &mut Heartbeat,
        limiter: &SendLimiter,
        payload: Bytes,
    ) -> Result<(), Outcome> {
        let frame = match Frame::parse(&payload) {
            Ok(f) => f,
            Err(e) => return self.unreadable(ws, payload.len(), e.to_string()).await,
        };
        match frame.op {
            op::DISPATCH => self.on_dispatch(ws, hb, limiter, &frame, &payload).await,
            op::HEARTBEAT => self.send_heartbeat(ws, hb, limiter).await,
            op::HEARTBEAT_ACK => {
                hb.acked = true;
                if let Some(at) = hb.sent_at.take() {
                    metrics::histogram!("sharder_heartbeat_latency_seconds")
                        .record(at.elapsed().as_secs_f64());
                }
                Ok(())
            }
            op::RECONNECT => {
                close::<C>(ws, RESUMABLE_CLOSE, "reconnect requested").await;
                Err(Outcome::Resume("op 7 reconnect".into()))
            }
            op::INVALID_SESSION => {
                let resumable = frame.data::<bool>().unwrap_or(false);
                metrics::counter!(
                    "sharder_invalid_sessions_total",
                    "resumable" => if resumable { "true" } else { "false" }
                )
                .increment(1);
                close::<C>(ws, RESUMABLE_CLOSE, "invalid session").await;
                if resumable && self.session.is_some() {
                    Err(Outcome::Resume("op 9 (resumable)".into()))
                } else {
                    // Discord: wait a random 1-5 s before identifying again.
                    let (lo, hi) = self.config.invalid_session_delay;
                    let ms = rand::rng()
                        .random_range(lo.as_millis()..=hi.as_millis().max(lo.as_millis()));
                    self.extra_delay =
                        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)));
                    Err(Outcome::Identify("op 9 (not resumable)".into()))
                }
            }
            op::HELLO => Ok(()),
            other => {
                tracing::debug!(
                    shard_id = self.config.shard_id,
                    op = other,
                    "ignoring opcode"
                );
                Ok(())
            }
        }
    }
}

async fn send<C: Connector>(
    ws: &mut Ws<C>,
    limiter: &SendLimiter,
    kind: SendKind,
    text: String,
) -> Result<(), Outcome> {
    limiter.acquire(kind).await;
    ws.send(Message::text(text))
        .await
        .map_err(|e| Outcome::Resume(format!("cannot send: {e}")))
}

async fn read_hello<C: Connector>(
    ws: &mut Ws<C>,
    inflater: &mut Decompressor,
) -> Result<Duration, String> {
    loop {
        let payload = match ws.next().await {
            None => return Err("connection ended before HELLO".into()),
            Some(Err(e)) => return Err(format!("websocket error before HELLO: {e}")),
            Some(Ok(Message::Close(f))) => {
                return Err(format!("closed before HELLO: {f:?}"));
            }
            Some(Ok(Message::Binary(b))) => match inflater.push(&b) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => return Err(e.to_string()),
            },
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(_)) => continue,
        };
        let frame = Frame::parse(&payload).map_err(|e| e.to_string())?;
        if frame.op != op::HELLO {
            return Err(format!("expected HELLO, got op {}", frame.op));
        }
        let hello: Hello = frame.data().map_err(|e| e.to_string())?;
        let interval = Duration::from_millis(hello.heartbeat_interval);
        if interval.is_zero() || interval > MAX_HEARTBEAT_INTERVAL {
            return Err(format!(
                "HELLO heartbeat_interval {} ms is out of bounds",
                hello.heartbeat_interval
            ));
        }
        return Ok(interval);
    }
}
