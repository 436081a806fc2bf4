//! One websocket to the gateway: the socket, inflate, heartbeats and the
//! send budget. It knows bytes, frames' transport and heartbeats; what a
//! frame *means* for the session is `live_session.rs`'s business.
//!
//! # Algorithm
//! 1. [`Connection::handshake`] waits for HELLO (bounded by
//!    `hello_timeout`); its interval schedules the first heartbeat at
//!    `interval * jitter` (jitter uniform in [0, 1)), then one per
//!    interval, and sizes the [`SendLimiter`].
//! 2. Each websocket message is read into a payload
//!    ([`Connection::read`]): a binary message goes through the
//!    [`Decompressor`] (which may need several messages for one payload), a
//!    text message is the payload itself, anything else is skipped. The
//!    caller reads the payload into a [`crate::Frame`].
//! 3. How the connection itself can end is an [`Ended`]: closed by the
//!    server (with or without a code), a zombie (no heartbeat ACK), dropped
//!    (the socket ended, failed, or a send failed) or corrupt (the
//!    compressed stream broke). What each means for the session (resume,
//!    identify, stop) is decided in `live_session.rs`.
//! 4. Heartbeat timer ([`Connection::heartbeat`]): if no ACK arrived since
//!    the previous heartbeat, the connection is a zombie: close with 4000
//!    (keeps the session) and end. The caller first reads the messages
//!    already readable, since after a stall the ACK can be among them.
//!    A heartbeat request (op 1) from the server is answered at once
//!    ([`Connection::answer_heartbeat`]). While the sink holds the shard,
//!    [`Connection::beat_while_held`] keeps beating without judging.
//! 5. Every send goes through the connection's [`SendLimiter`], built from
//!    HELLO's interval, which keeps a heartbeat share the commands cannot
//!    spend.
//! 6. A frame that cannot be decompressed closes with 4000 (`corrupt`):
//!    Discord replays from the confirmed seq on the resume that follows.

use crate::connect::Connector;
use crate::shard_config::ShardConfig;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway_protocol::Decompressor;
use gateway_protocol::RESUMABLE_CLOSE;
use gateway_protocol::{Frame, op};
use gateway_protocol::{SendKind, SendLimiter};
use rand::Rng;
use serde::Deserialize;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

pub(crate) type Ws<C> = WebSocketStream<<C as Connector>::Stream>;

/// What the websocket gave: a message, an error, or its end (`None`).
pub(crate) type Incoming = Option<Result<Message, tungstenite::Error>>;

#[derive(Deserialize)]
struct Hello {
    heartbeat_interval: u64,
}

/// Longest heartbeat interval accepted from HELLO.
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(600);

/// How a connection ended, as the connection sees it.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The server sent a close frame with this code and reason.
    Closed { code: u16, reason: String },
    /// The server sent a close frame without a code.
    ClosedWithoutCode,
    /// No heartbeat ACK since the previous heartbeat; closed with 4000.
    Zombie,
    /// The socket ended or failed, or a send failed.
    Dropped(String),
    /// The payload could not be read (decompressed, or parsed by the
    /// caller); closed with 4000.
    Corrupt(String),
}

/// One gateway websocket after HELLO.
pub(crate) struct Connection<C: Connector> {
    ws: Ws<C>,
    inflater: Decompressor,
    limiter: SendLimiter,
    shard_id: u32,
    /// Heartbeat interval from HELLO.
    interval: Duration,
    /// When the next heartbeat is due.
    next_beat: Instant,
    /// An ACK arrived since the last heartbeat.
    acked: bool,
    /// When the heartbeat awaiting its ACK was sent (latency metric).
    sent_at: Option<Instant>,
}

impl<C: Connector> Connection<C> {
    /// Waits for HELLO on `ws` and schedules the heartbeats. On failure the
    /// socket is closed with 4000 and the reason returned.
    pub(crate) async fn handshake(
        mut ws: Ws<C>,
        mut inflater: Decompressor,
        config: &ShardConfig,
    ) -> Result<Self, String> {
        let hello = tokio::time::timeout(
            config.hello_timeout,
            read_hello::<C>(&mut ws, &mut inflater),
        )
        .await;
        let interval = match hello {
            Ok(Ok(i)) => i,
            Ok(Err(reason)) => {
                close::<C>(&mut ws, RESUMABLE_CLOSE, "no hello").await;
                return Err(reason);
            }
            Err(_) => {
                close::<C>(&mut ws, RESUMABLE_CLOSE, "no hello").await;
                return Err("no HELLO within the timeout".into());
            }
        };
        let limiter = SendLimiter::new(config.send_limit, config.send_window, interval);
        let jitter: f64 = rand::rng().random_range(0.0..1.0);
        Ok(Self {
            ws,
            inflater,
            limiter,
            shard_id: config.shard_id,
            interval,
            next_beat: Instant::now() + interval.mul_f64(jitter),
            acked: true,
            sent_at: None,
        })
    }

    /// When the heartbeat timer fires next.
    pub(crate) fn next_beat(&self) -> Instant {
        self.next_beat
    }

    /// The last heartbeat has not been ACKed yet.
    pub(crate) fn awaiting_ack(&self) -> bool {
        !self.acked
    }

    /// The next websocket message (cancel safe: nothing is read until it
    /// completes).
    pub(crate) async fn next_message(&mut self) -> Incoming {
        self.ws.next().await
    }

    /// The next websocket message if one is readable without waiting.
    pub(crate) async fn ready_message(&mut self) -> Option<Incoming> {
        let ws = &mut self.ws;
        let next = std::future::poll_fn(|cx| Poll::Ready(ws.poll_next_unpin(cx))).await;
        match next {
            Poll::Ready(msg) => Some(msg),
            Poll::Pending => None,
        }
    }

    /// One websocket message as a complete, inflated payload (`None` while
    /// the decompressor waits for more, or for a message that carries no
    /// payload), or how it ended the connection.
    pub(crate) async fn read(&mut self, msg: Incoming) -> Result<Option<Bytes>, Ended> {
        match msg {
            None => Err(Ended::Dropped(
                "connection ended without a close frame".into(),
            )),
            Some(Err(e)) => Err(Ended::Dropped(format!("websocket error: {e}"))),
            Some(Ok(Message::Close(frame))) => Err(closed(frame)),
            Some(Ok(Message::Binary(b))) => match self.inflater.push(&b) {
                Ok(p) => Ok(p),
                Err(e) => Err(self.corrupt(e.to_string()).await),
            },
            Some(Ok(Message::Text(t))) => Ok(Some(Bytes::from(t))),
            Some(Ok(_)) => Ok(None),
        }
    }

    /// A payload that cannot be trusted: close with 4000 so the resume that
    /// follows replays from the confirmed seq.
    pub(crate) async fn corrupt(&mut self, reason: String) -> Ended {
        tracing::error!(shard_id = self.shard_id, %reason, "bad gateway frame; reconnecting to resume");
        metrics::counter!("sharder_bad_frames_total").increment(1);
        self.close(RESUMABLE_CLOSE, "bad frame").await;
        Ended::Corrupt(reason)
    }

    /// The heartbeat timer fired: a zombie without an ACK since the last
    /// heartbeat (closed with 4000), else the next heartbeat (`d` =
    /// `last_seq`).
    pub(crate) async fn heartbeat(&mut self, last_seq: Option<u64>) -> Result<(), Ended> {
        if !self.acked {
            tracing::warn!(
                shard_id = self.shard_id,
                "no heartbeat ACK: zombie connection"
            );
            metrics::counter!("sharder_zombies_total").increment(1);
            self.close(RESUMABLE_CLOSE, "zombie").await;
            return Err(Ended::Zombie);
        }
        self.next_beat = Instant::now() + self.interval;
        self.answer_heartbeat(last_seq).await
    }

    /// Sends a heartbeat now (also the answer to the server's op 1).
    pub(crate) async fn answer_heartbeat(&mut self, last_seq: Option<u64>) -> Result<(), Ended> {
        let beat = serde_json::json!({ "op": op::HEARTBEAT, "d": last_seq });
        self.send(SendKind::Heartbeat, beat.to_string()).await?;
        self.acked = false;
        self.sent_at = Some(Instant::now());
        Ok(())
    }

    /// The heartbeat timer fired while the sink holds the shard.
    pub(crate) async fn beat_while_held(&mut self, last_seq: Option<u64>) -> Result<(), Ended> {
        // ACKs cannot be read while the sink holds the shard: keep beating,
        // but judge the connection only once reading resumes (else
        // backpressure looks like a zombie).
        self.next_beat = Instant::now() + self.interval;
        self.answer_heartbeat(last_seq).await?;
        self.acked = true;
        Ok(())
    }

    /// A heartbeat ACK (op 11) arrived: the heartbeat's round trip, when
    /// one was awaited.
    pub(crate) fn on_ack(&mut self) -> Option<std::time::Duration> {
        self.acked = true;
        let rtt = self.sent_at.take()?.elapsed();
        metrics::histogram!("sharder_heartbeat_latency_seconds").record(rtt.as_secs_f64());
        Some(rtt)
    }

    /// Sends a gateway command (IDENTIFY, RESUME) within the send budget.
    pub(crate) async fn send_command(&mut self, text: String) -> Result<(), Ended> {
        self.send(SendKind::Command, text).await
    }

    /// Sends a bot's command (op 3, 4, 8) if the send budget allows it
    /// now; else `Ok(Some(wait))` and nothing is sent, so the connection
    /// is never blocked reading by a command waiting for budget.
    pub(crate) async fn try_send_command(&mut self, text: &str) -> Result<Option<Duration>, Ended> {
        if let Err(wait) = self.limiter.try_acquire(SendKind::Command) {
            return Ok(Some(wait));
        }
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| Ended::Dropped(format!("cannot send: {e}")))?;
        Ok(None)
    }

    async fn send(&mut self, kind: SendKind, text: String) -> Result<(), Ended> {
        self.limiter.acquire(kind).await;
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| Ended::Dropped(format!("cannot send: {e}")))
    }

    /// Sends a close frame (errors only logged: the connection ends anyway).
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        close::<C>(&mut self.ws, code, reason).await;
    }
}

async fn close<C: Connector>(ws: &mut Ws<C>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    if let Err(e) = ws.close(Some(frame)).await {
        tracing::debug!(error = %e, "close frame not sent");
    }
}

fn closed(frame: Option<CloseFrame>) -> Ended {
    let Some(frame) = frame else {
        return Ended::ClosedWithoutCode;
    };
    let code = u16::from(frame.code);
    metrics::counter!("sharder_close_codes_total", "code" => code.to_string()).increment(1);
    Ended::Closed {
        code,
        reason: frame.reason.to_string(),
    }
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
