//! One websocket connection: HELLO, heartbeats, commands, and the pump that
//! writes the attached session's dispatches.
//!
//! The connection enforces the per-connection rules (send limit, heartbeat
//! timeout, payload validity, identify/resume order) and turns every
//! violation into the close code Discord uses. Session rules (identify
//! concurrency, budget, resume) live in [`super::sessions`].
//!
//! # Algorithm
//! One task per connection waits on four things: a client message, a wake-up
//! from the session (new frames), a control order (fault injection), and the
//! heartbeat deadline (1.5 heartbeat intervals after the last heartbeat, or
//! after HELLO). On wake-up it pulls frames after the last seq it wrote, in
//! batches, compresses and frames them into one output buffer, and writes
//! that buffer with one call. Those frames bypass tungstenite's writer, so
//! its buffer is flushed first: bytes never interleave mid-frame.

use super::Shared;
use super::handshake::Refusal;
use super::limits::SendLimiter;
use super::protocol::{self, CloseReason, Command, close};
use super::replay::Pulled;
use super::sessions::{Control, Link, Malformed, Pull};
use super::transport::Transport;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Frames written per lock of the core.
const PULL_BATCH: usize = 256;

/// How the connection ended, for the session.
enum End {
    /// Session stays resumable.
    Resumable,
    /// Session ends (close 1000/1001, 4009).
    Final,
    /// The session is no longer this connection's: the core resumed it
    /// elsewhere or ended it, and sent the close to use with it.
    Detached,
}

struct Conn<S> {
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    transport: Transport,
    id: u64,
    notify: Arc<Notify>,
    ctl_tx: mpsc::UnboundedSender<Control>,
    session: Option<Arc<str>>,
    /// Last seq written to the client.
    sent: u64,
    zombie: bool,
    limiter: SendLimiter,
    text: String,
    batch: Pulled,
    /// Compression output of one payload, reused.
    scratch: Vec<u8>,
    /// Framed dispatches of one batch, written at once, reused.
    out: Vec<u8>,
    /// Payload compression (IDENTIFY `compress: true`).
    payload_zlib: Option<Box<flate2::Compress>>,
}

/// Serves one upgraded connection until it ends.
pub(crate) async fn serve<S>(ws: WebSocketStream<S>, shared: Arc<Shared>, transport: Transport)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
    let cfg = &shared.cfg;
    let mut conn = Conn {
        ws,
        transport,
        id: shared.next_conn_id(),
        notify: Arc::new(Notify::new()),
        ctl_tx,
        session: None,
        sent: 0,
        zombie: false,
        limiter: SendLimiter::new(cfg.send_limit, cfg.send_window),
        text: String::new(),
        batch: Pulled::default(),
        scratch: Vec::new(),
        out: Vec::new(),
        payload_zlib: None,
        shared: shared.clone(),
    };
    let mut end = conn.run(&mut ctl_rx).await;
    if matches!(end, End::Detached) {
        // The core detached the session and queued the close under the same
        // lock, so it is already here even if a pull noticed first.
        while let Ok(ctl) = ctl_rx.try_recv() {
            if let Control::Close(code, reason) = ctl {
                end = conn.close(code, &reason).await;
                break;
            }
        }
    }
    conn.release(&end);
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn run(&mut self, ctl_rx: &mut mpsc::UnboundedReceiver<Control>) -> End {
        let interval = self.shared.cfg.heartbeat_interval;
        let grace = interval + interval / 2;
        let hello = protocol::hello(interval.as_millis() as u64);
        if self.write(&hello).await.is_err() {
            return End::Resumable;
        }
        let mut shutdown = self.shared.shutdown.subscribe();
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            let attached = self.session.is_some();
            let notify = self.notify.clone();
            tokio::select! {
                _ = super::stopped(&mut shutdown) => {
                    return self.close(close::UNKNOWN_ERROR, "simulator shutting down").await;
                }
                _ = &mut deadline => {
                    tracing::info!(conn = self.id, "no heartbeat within {grace:?}: closing 4009");
                    self.shared.core().counters.heartbeat_timeouts += 1;
                    return self.close(close::SESSION_TIMED_OUT, "session timed out").await;
                }
                Some(ctl) = ctl_rx.recv() => {
                    if let Some(end) = self.on_control(ctl).await {
                        return end;
                    }
                }
                _ = notify.notified(), if attached => {
                    if let Err(end) = self.pump().await {
                        return end;
                    }
                }
                msg = self.ws.next() => {
                    let bytes = match msg {
                        Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                        Some(Ok(Message::Binary(b))) => b.to_vec(),
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code));
                            tracing::debug!(conn = self.id, ?code, "client closed");
                            return match code {
                                Some(1000 | 1001) => End::Final,
                                _ => End::Resumable,
                            };
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            tracing::info!(conn = self.id, error = %e, "connection error");
                            let reason = format!("unreadable frame: {e}");
                            return self.close(close::DECODE_ERROR, &reason).await;
                        }
                        None => return End::Resumable,
                    };
                    match self.on_payload(&bytes).await {
                        Ok(true) => deadline.as_mut().reset(Instant::now() + grace),
                        Ok(false) => {}
                        Err(end) => return end,
                    }
                }
            }
        }
    }

    /// Handles one client payload; `Ok(true)` when it was a heartbeat.
    async fn on_payload(&mut self, bytes: &[u8]) -> Result<bool, End> {
        // Discord times a command when it arrives, not when it is handled:
        // an IDENTIFY that waited here for the core lock (a generator
        // chunk, a busy neighbour connection) must not look closer to the
        // next one than the client sent them.
        let received = std::time::Instant::now();
        if !self.limiter.admit(received) {
            tracing::warn!(conn = self.id, "send limit exceeded: closing 4008");
            self.shared.core().counters.rate_limit_closes += 1;
            return Err(self.close(close::RATE_LIMITED, "rate limited").await);
        }
        let cmd = match protocol::parse(bytes) {
            Ok(c) => c,
            Err(reason) => return Err(self.protocol_error(reason).await),
        };
        match cmd {
            Command::Heartbeat => {
                self.shared.core().counters.heartbeats += 1;
                if !self.zombie {
                    self.write(protocol::HEARTBEAT_ACK).await?;
                }
                return Ok(true);
            }
            Command::Identify(id) => {
                if self.session.is_some() {
                    let r = CloseReason::new(close::ALREADY_AUTHENTICATED, "already authenticated");
                    return Err(self.protocol_error(r).await);
                }
                let link = self.link();
                let resume_url = self.shared.resume_url();
                let res = self.shared.core_urgent().identify(
                    &id,
                    link,
                    &resume_url,
                    &self.shared.cfg,
                    received,
                );
                match res {
                    Ok(sid) => {
                        tracing::debug!(conn = self.id, session = %sid, "identified");
                        if id.compress == Some(true) && matches!(self.transport, Transport::Plain) {
                            self.payload_zlib =
                                Some(Box::new(super::transport::payload_compressor()));
                        }
                        self.session = Some(sid);
                        self.sent = 0;
                        self.pump().await?;
                        self.break_if_hostile().await?;
                    }
                    Err(refusal) => self.refuse(refusal).await?,
                }
            }
            Command::Resume(r) => {
                if self.session.is_some() {
                    let r = CloseReason::new(close::ALREADY_AUTHENTICATED, "already authenticated");
                    return Err(self.protocol_error(r).await);
                }
                let link = self.link();
                let res = self.shared.core_urgent().resume(
                    &r,
                    link,
                    &self.shared.cfg,
                    std::time::Instant::now(),
                );
                match res {
                    Ok((sid, after)) => {
                        tracing::debug!(conn = self.id, session = %sid, after, "resumed");
                        let hold = self.shared.core().take_slow_resume(&sid);
                        if let Some(hold) = hold {
                            tracing::info!(conn = self.id, session = %sid, ?hold, "holding RESUMED");
                            tokio::time::sleep(hold).await;
                        }
                        self.session = Some(sid);
                        self.sent = after;
                        self.pump().await?;
                        self.break_if_hostile().await?;
                    }
                    Err(refusal) => self.refuse(refusal).await?,
                }
            }
            Command::RequestMembers(req) => {
                let Some(sid) = self.session.clone() else {
                    let r = CloseReason::new(close::NOT_AUTHENTICATED, "op 8 before identify");
                    return Err(self.protocol_error(r).await);
                };
                let res = self.shared.core().request_members(
                    &sid,
                    &req,
                    &self.shared.cfg,
                    std::time::Instant::now(),
                );
                if let Err(reason) = res {
                    return Err(self.protocol_error(reason).await);
                }
            }
            Command::VoiceState(req) => {
                let Some(sid) = self.session.clone() else {
                    let r = CloseReason::new(close::NOT_AUTHENTICATED, "op 4 before identify");
                    return Err(self.protocol_error(r).await);
                };
                let res = self.shared.core().voice_state(&sid, &req, &self.shared.cfg);
                if let Err(reason) = res {
                    return Err(self.protocol_error(reason).await);
                }
            }
            Command::Presence => {
                if self.session.is_none() {
                    let r = CloseReason::new(close::NOT_AUTHENTICATED, "op 3 before identify");
                    return Err(self.protocol_error(r).await);
                }
                self.shared.core().presence_update();
            }
            Command::Other(op) => {
                if self.session.is_none() {
                    let r = CloseReason::new(
                        close::NOT_AUTHENTICATED,
                        format!("op {op} before identify"),
                    );
                    return Err(self.protocol_error(r).await);
                }
            }
        }
        Ok(false)
    }

    /// Closes with 4000 (resumable) right after READY or RESUMED went out,
    /// while [`super::hostility::Hostility::break_after_handshake`] is set.
    async fn break_if_hostile(&mut self) -> Result<(), End> {
        {
            let mut core = self.shared.core();
            if !core.hostility.break_after_handshake {
                return Ok(());
            }
            core.counters.hostile_breaks += 1;
        }
        Err(self
            .close(
                close::UNKNOWN_ERROR,
                "hostile gateway: broken after the handshake",
            )
            .await)
    }

    fn link(&self) -> Link {
        Link {
            conn_id: self.id,
            notify: self.notify.clone(),
            ctl: self.ctl_tx.clone(),
        }
    }

    async fn refuse(&mut self, refusal: Refusal) -> Result<(), End> {
        match refusal {
            Refusal::InvalidSession => self.write(protocol::invalid_session(false)).await,
            Refusal::Close(reason) => {
                tracing::info!(conn = self.id, code = reason.code, reason = %reason.reason, "refused");
                Err(self.close(reason.code, &reason.reason).await)
            }
        }
    }

    async fn protocol_error(&mut self, reason: CloseReason) -> End {
        tracing::info!(conn = self.id, code = reason.code, reason = %reason.reason, "bad payload");
        self.shared.core().counters.protocol_errors += 1;
        self.close(reason.code, &reason.reason).await
    }

    async fn on_control(&mut self, ctl: Control) -> Option<End> {
        let res = match ctl {
            Control::Reconnect => self.write(protocol::RECONNECT).await,
            Control::RequestHeartbeat => self.write(protocol::HEARTBEAT_REQUEST).await,
            Control::InvalidSession(resumable) => {
                self.write(protocol::invalid_session(resumable)).await
            }
            Control::Zombie => {
                self.zombie = true;
                Ok(())
            }
            Control::Drop => {
                tracing::info!(conn = self.id, "dropping connection without a close frame");
                return Some(End::Resumable);
            }
            Control::Close(code, reason) => return Some(self.close(code, &reason).await),
            Control::Malformed(kind) => {
                let msg = match kind {
                    Malformed::InvalidJson => self.transport.encode(r#"{"op":0,"s":"#),
                    Malformed::Truncated => self.transport.encode_truncated(protocol::RECONNECT),
                    Malformed::UnknownOp => self
                        .transport
                        .encode(r#"{"op":42,"d":null,"s":null,"t":null}"#),
                    // Buffered as a dispatch by the core, never sent here.
                    Malformed::InvalidData => return None,
                };
                match msg {
                    Ok(m) => self.ws.send(m).await.map_err(|_| End::Resumable),
                    Err(_) => Err(End::Resumable),
                }
            }
        };
        res.err()
    }

    /// Writes every frame of the session after `sent`.
    async fn pump(&mut self) -> Result<(), End> {
        let Some(sid) = self.session.clone() else {
            return Ok(());
        };
        loop {
            self.batch.clear();
            let status = self.shared.core().pull(
                &sid,
                self.id,
                self.sent,
                PULL_BATCH,
                self.shared.cfg.replay_buffer,
                &mut self.batch,
            );
            match status {
                Pull::Ok => {}
                Pull::Detached => return Err(End::Detached),
                Pull::Behind => {
                    tracing::warn!(conn = self.id, "client fell behind the replay buffer");
                    return Err(self.close(close::UNKNOWN_ERROR, "client too slow").await);
                }
            }
            if self.batch.is_empty() {
                return Ok(());
            }
            let n = self.batch.len();
            self.ws.flush().await.map_err(|_| End::Resumable)?;
            self.out.clear();
            for (seq, event, d) in self.batch.iter() {
                self.transport
                    .frame_dispatch_into(
                        seq,
                        event,
                        d,
                        self.payload_zlib.as_deref_mut(),
                        &mut self.text,
                        &mut self.scratch,
                        &mut self.out,
                    )
                    .map_err(|e| {
                        tracing::error!(conn = self.id, error = %e, "compression failed");
                        End::Resumable
                    })?;
            }
            let io = self.ws.get_mut();
            io.write_all(&self.out).await.map_err(|_| End::Resumable)?;
            io.flush().await.map_err(|_| End::Resumable)?;
            if let Some(last) = self.batch.last_seq() {
                self.sent = last;
            }
            if n < PULL_BATCH {
                return Ok(());
            }
        }
    }

    async fn write(&mut self, text: &str) -> Result<(), End> {
        let msg = self.transport.encode(text).map_err(|_| End::Resumable)?;
        self.ws.send(msg).await.map_err(|_| End::Resumable)
    }

    /// Releases the session (ending it for 4009), then sends a close frame
    /// and gives the client a moment to read it. The session is released
    /// first so a client that reconnects at once finds it in its final state.
    async fn close(&mut self, code: u16, reason: &str) -> End {
        let end = if code == close::SESSION_TIMED_OUT {
            End::Final
        } else {
            End::Resumable
        };
        self.release(&end);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.chars().take(120).collect::<String>().into(),
        };
        if self.ws.close(Some(frame)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while let Some(Ok(_)) = self.ws.next().await {}
            })
            .await;
        }
        end
    }

    /// Detaches from the session (ending it when `end` is final).
    fn release(&mut self, end: &End) {
        if let Some(sid) = self.session.take() {
            let final_end = matches!(end, End::Final);
            self.shared
                .core()
                .detach(&sid, self.id, final_end, std::time::Instant::now());
        }
    }
}
