//! One bot connection, the gateway protocol from Discord's side.
//!
//! HELLO first; then IDENTIFY (a new session, its snapshot from the cache)
//! or RESUME (an existing session, the dispatches after the client's `seq`,
//! then RESUMED), within `relay.identify_timeout`. Heartbeats are answered
//! with ACKs, and a client that stops heartbeating for 1.5 intervals is
//! closed with 4000 (resumable), as Discord closes a zombie. Commands count
//! against Discord's limit of 120 per 60 s per connection (4008 above it).
//! An IDENTIFY above the relay's own limits (one per bucket per window, a
//! daily budget: [`crate::identify_limit`]) gets op 9 and may be sent
//! again on the same connection. Refusals use Discord's close codes: 4004 for a token that is not the
//! bot's, 4010 for a bad shard, 4013 for unknown intent bits, 4014 for
//! intents the relay's bot does not receive, 4005 for a second IDENTIFY,
//! 4003 for a command before it, 4002 for a payload that is not JSON.
//! op 3, 4 and 8 are checked as Discord checks them, then forwarded to the
//! real shards ([`crate::commands`]); op 8 is answered from the cache
//! instead when the cache holds the whole answer.

use crate::Ctx;
use crate::compression::Compression;
use crate::session::{ClientShard, Session};
use futures_util::{SinkExt, StreamExt};
use gateway_protocol::close;
use gateway_protocol::intents::{PRIVILEGED_INTENTS, VALID_INTENTS};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Discord's command limit per connection.
const SEND_LIMIT: usize = 120;
const SEND_WINDOW: Duration = Duration::from_secs(60);

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// Longest a bot's command may wait for the broker (then it is dropped,
/// as Discord drops a command on a dying connection).
const PUBLISH_WITHIN: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Payload<'a> {
    op: u8,
    #[serde(borrow, default)]
    d: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct Identify {
    token: String,
    #[serde(default)]
    intents: u64,
    #[serde(default)]
    shard: Option<[u32; 2]>,
    /// Members above which a guild's GUILD_CREATE lists only the online
    /// ones (Discord: 50..=250, default 50).
    #[serde(default)]
    large_threshold: Option<u64>,
    /// The presence to start with (what most libraries set their status
    /// with): applied to the real shards like op 3.
    #[serde(default)]
    presence: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Resume {
    token: String,
    session_id: String,
    seq: u64,
}

/// Why the connection ends.
struct Close(u16, String);

impl From<crate::commands::Refused> for Close {
    fn from(r: crate::commands::Refused) -> Self {
        Self(r.0, r.1)
    }
}

impl Close {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self(code, reason.into())
    }
}

struct Conn<S> {
    ws: WebSocketStream<S>,
    compression: Compression,
    ctx: Arc<Ctx>,
    id: u64,
    session: Option<Arc<Session>>,
    sent: u64,
    commands: VecDeque<Instant>,
}

/// Serves one upgraded connection until it ends.
pub async fn serve<S>(ws: WebSocketStream<S>, ctx: Arc<Ctx>, compression: Compression)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut c = Conn {
        ws,
        compression,
        ctx,
        id: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
        session: None,
        sent: 0,
        commands: VecDeque::new(),
    };
    metrics::gauge!("relay_connections").increment(1.0);
    let end = c.run().await;
    metrics::gauge!("relay_connections").decrement(1.0);
    if let Some(s) = &c.session {
        s.detach(c.id, Instant::now());
    }
    if let Err(Close(code, reason)) = end {
        tracing::debug!(code, %reason, "closing a bot connection");
        metrics::counter!("relay_closes_total", "code" => code.to_string()).increment(1);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = c.ws.close(Some(frame)).await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, text: &str) -> Result<(), Close> {
        let msg = self
            .compression
            .encode(text)
            .map_err(|e| Close::new(close::UNKNOWN_ERROR, format!("compression: {e}")))?;
        self.ws
            .send(msg)
            .await
            .map_err(|e| Close::new(close::UNKNOWN_ERROR, e.to_string()))
    }

    /// `Ok` when the client went away by itself.
    async fn run(&mut self) -> Result<(), Close> {
        let interval = self.ctx.cfg.heartbeat_interval;
        let hello = format!(
            "{{\"op\":10,\"d\":{{\"heartbeat_interval\":{}}}}}",
            interval.as_millis()
        );
        self.send(&hello).await?;
        let zombie_after = interval + interval / 2;
        let mut heartbeat_due = Instant::now() + zombie_after;
        let identify_due = Instant::now() + self.ctx.cfg.identify_timeout;
        loop {
            let session = self.session.clone();
            let woken = async {
                match &session {
                    Some(s) => s.notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = self.ws.next() => match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(Message::Text(t))) => {
                        if self.command(t.as_bytes(), &mut heartbeat_due, zombie_after).await? {
                            self.flush().await?;
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        if self.command(&b, &mut heartbeat_due, zombie_after).await? {
                            self.flush().await?;
                        }
                    }
                    Some(Ok(_)) => {}
                },
                () = woken => self.flush().await?,
                () = self.ctx.stop.cancelled() => {
                    return Err(Close::new(close::UNKNOWN_ERROR, "the relay is restarting; resume"));
                }
                () = sleep_until(heartbeat_due) => {
                    return Err(Close::new(close::UNKNOWN_ERROR, "no heartbeat"));
                }
                () = sleep_until(identify_due), if self.session.is_none() => {
                    return Err(Close::new(close::SESSION_TIMED_OUT, "no IDENTIFY or RESUME in time"));
                }
            }
        }
    }

    /// Sends what the session wrote since the last send.
    async fn flush(&mut self) -> Result<(), Close> {
        let Some(s) = self.session.clone() else {
            return Ok(());
        };
        if !s.is_attached(self.id) {
            // The wake-up may have been meant for the connection that took
            // the session over: pass it on.
            s.notify.notify_one();
            return Err(Close::new(
                close::UNKNOWN_ERROR,
                "the session was resumed elsewhere",
            ));
        }
        let pending = s
            .after(self.sent)
            .map_err(|_| Close::new(close::UNKNOWN_ERROR, "fell behind the session buffer"))?;
        // Queued, then written in one flush: one write for a burst, not
        // one per dispatch.
        let n = pending.len();
        for (seq, text) in pending {
            let msg = self
                .compression
                .encode(&text)
                .map_err(|e| Close::new(close::UNKNOWN_ERROR, format!("compression: {e}")))?;
            self.ws
                .feed(msg)
                .await
                .map_err(|e| Close::new(close::UNKNOWN_ERROR, e.to_string()))?;
            self.sent = seq;
        }
        if n > 0 {
            self.ws
                .flush()
                .await
                .map_err(|e| Close::new(close::UNKNOWN_ERROR, e.to_string()))?;
            s.sent(self.sent);
            metrics::counter!("relay_dispatches_sent_total").increment(n as u64);
        }
        Ok(())
    }

    /// Handles one command; true when the session has something to send.
    async fn command(
        &mut self,
        raw: &[u8],
        heartbeat_due: &mut Instant,
        zombie_after: Duration,
    ) -> Result<bool, Close> {
        let now = Instant::now();
        while self
            .commands
            .front()
            .is_some_and(|t| now.duration_since(*t) >= SEND_WINDOW)
        {
            self.commands.pop_front();
        }
        self.commands.push_back(now);
        if self.commands.len() > SEND_LIMIT {
            return Err(Close::new(
                close::RATE_LIMITED,
                "more than 120 commands in 60 s",
            ));
        }
        let p: Payload<'_> = serde_json::from_slice(raw)
            .map_err(|e| Close::new(close::DECODE_ERROR, format!("not a gateway payload: {e}")))?;
        let d = p.d.map_or("null", |d| d.get());
        match p.op {
            1 => {
                *heartbeat_due = Instant::now() + zombie_after;
                if let (Some(s), Ok(seq)) = (&self.session, serde_json::from_str::<u64>(d)) {
                    s.acked(seq);
                }
                self.send("{\"op\":11}").await?;
                Ok(false)
            }
            2 => {
                if self.session.is_some() {
                    return Err(Close::new(
                        close::ALREADY_AUTHENTICATED,
                        "already identified",
                    ));
                }
                let id: Identify = serde_json::from_str(d)
                    .map_err(|e| Close::new(close::DECODE_ERROR, format!("IDENTIFY: {e}")))?;
                let started = self.identify(id).await?;
                *heartbeat_due = Instant::now() + zombie_after;
                Ok(started)
            }
            6 => {
                if self.session.is_some() {
                    return Err(Close::new(
                        close::ALREADY_AUTHENTICATED,
                        "already identified",
                    ));
                }
                let r: Resume = serde_json::from_str(d)
                    .map_err(|e| Close::new(close::DECODE_ERROR, format!("RESUME: {e}")))?;
                self.resume(r).await?;
                *heartbeat_due = Instant::now() + zombie_after;
                Ok(true)
            }
            8 => {
                let Some(s) = self.session.clone() else {
                    return Err(Close::new(close::NOT_AUTHENTICATED, "op 8 before IDENTIFY"));
                };
                let r = crate::commands::member_request(d, s.intents).map_err(Close::from)?;
                self.request_members(&s, r).await?;
                Ok(true)
            }
            3 | 4 => {
                let Some(s) = self.session.clone() else {
                    return Err(Close::new(
                        close::NOT_AUTHENTICATED,
                        "command before IDENTIFY",
                    ));
                };
                let guild = if p.op == 4 {
                    let guild = crate::commands::voice_state(d).map_err(Close::from)?;
                    if !s.shard.owns(Some(guild)) {
                        // Not a guild of this client shard: Discord's
                        // real shard would not know it either.
                        metrics::counter!("relay_commands_total", "op" => "4", "result" => "not_this_shard")
                            .increment(1);
                        return Ok(false);
                    }
                    Some(guild)
                } else {
                    crate::commands::presence(d).map_err(Close::from)?;
                    None
                };
                self.forward(crate::commands::command(p.op, guild, d.to_owned()))
                    .await;
                Ok(false)
            }
            op => Err(Close::new(
                close::UNKNOWN_OPCODE,
                format!("unknown opcode {op}"),
            )),
        }
    }

    fn check_token(&self, token: &str) -> Result<(), Close> {
        let token = token.strip_prefix("Bot ").unwrap_or(token);
        if self.ctx.token.matches(token) {
            Ok(())
        } else {
            Err(Close::new(
                close::AUTHENTICATION_FAILED,
                "authentication failed",
            ))
        }
    }

    /// True when a session started; false when the limits refused it (op 9
    /// sent, the connection stays for another IDENTIFY).
    async fn identify(&mut self, id: Identify) -> Result<bool, Close> {
        self.check_token(&id.token)?;
        let presence = match &id.presence {
            Some(p) if !p.is_null() => {
                let d = p.to_string();
                crate::commands::presence(&d).map_err(Close::from)?;
                Some(d)
            }
            _ => None,
        };
        let [shard_id, count] = id.shard.unwrap_or([0, 1]);
        if count == 0 || shard_id >= count || count > config::MAX_TOTAL_SHARDS {
            return Err(Close::new(
                close::INVALID_SHARD,
                format!("invalid shard [{shard_id}, {count}]"),
            ));
        }
        let large_threshold = id.large_threshold.unwrap_or(50);
        if !(50..=250).contains(&large_threshold) {
            return Err(Close::new(
                close::DECODE_ERROR,
                format!("large_threshold {large_threshold} is outside 50..=250"),
            ));
        }
        if id.intents & !VALID_INTENTS != 0 {
            return Err(Close::new(close::INVALID_INTENTS, "invalid intents"));
        }
        let missing = id.intents & PRIVILEGED_INTENTS & !self.ctx.intents;
        if missing != 0 {
            return Err(Close::new(
                close::DISALLOWED_INTENTS,
                format!("intents {missing:#x} are not the relay's bot's (discord.intents)"),
            ));
        }
        if let Err(why) = self.ctx.identify_limit.admit(shard_id, Instant::now()) {
            let why = match why {
                crate::identify_limit::Refused::Bucket => "bucket",
                crate::identify_limit::Refused::Budget => "budget",
            };
            metrics::counter!("relay_identifies_refused_total", "reason" => why).increment(1);
            tracing::debug!(
                conn = self.id,
                shard = shard_id,
                count,
                why,
                "IDENTIFY over the relay's limits: op 9"
            );
            self.send("{\"op\":9,\"d\":false}").await?;
            return Ok(false);
        }
        let shard = ClientShard {
            id: shard_id,
            count,
        };
        let session_id: Arc<str> = crate::new_session_id().into();
        let s = Arc::new(Session::loading(
            session_id.clone(),
            shard,
            id.intents,
            self.ctx.cfg.session_buffer,
            self.id,
        ));
        self.ctx.hub.insert(s.clone());
        self.session = Some(s.clone());
        let started = Instant::now();
        let snapshot = crate::snapshot::load(
            &self.ctx.store,
            shard,
            id.intents,
            large_threshold,
            &session_id,
            &self.ctx.resume_url,
        )
        .await
        .map_err(|e| {
            self.ctx.hub.remove(&session_id);
            tracing::warn!(error = %e, "loading a session's snapshot failed");
            Close::new(close::UNKNOWN_ERROR, "the cache is unavailable; reconnect")
        })?;
        let guilds = snapshot.guilds.len();
        if !s.finish_loading(&snapshot.ready, snapshot.guilds, &snapshot.floors) {
            self.ctx.hub.remove(&session_id);
            return Err(Close::new(
                close::UNKNOWN_ERROR,
                "too many events while loading; reconnect",
            ));
        }
        metrics::counter!("relay_identifies_total").increment(1);
        metrics::histogram!("relay_snapshot_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(conn = self.id, shard = shard_id, count, guilds, session = %session_id, "bot session started");
        if let Some(d) = presence {
            self.forward(crate::commands::command(
                envelope::command::PRESENCE_UPDATE,
                None,
                d,
            ))
            .await;
        }
        Ok(true)
    }

    async fn resume(&mut self, r: Resume) -> Result<(), Close> {
        self.check_token(&r.token)?;
        let held = match self.ctx.hub.get(&r.session_id) {
            Some(s) => Some(s),
            // A session a stopping relay handed over (a rolling update);
            // ours are 32 hex digits, so nothing longer is looked up.
            None if r.session_id.len() > 64 => None,
            None => match crate::handover::take(&self.ctx, &r.session_id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(conn = self.id, error = %e, "taking over a handed-over session failed: op 9");
                    None
                }
            },
        };
        let Some(s) = held else {
            tracing::debug!(conn = self.id, session = %r.session_id, "RESUME of an unknown session: op 9");
            metrics::counter!("relay_resumes_total", "result" => "invalid").increment(1);
            self.send("{\"op\":9,\"d\":false}").await?;
            return Err(Close::new(close::UNKNOWN_ERROR, "unknown session"));
        };
        if s.is_loading() || s.after(r.seq).is_err() {
            tracing::debug!(conn = self.id, session = %r.session_id, seq = r.seq, session_seq = s.last_seq(), loading = s.is_loading(), "RESUME from a seq the session cannot replay: op 9");
            metrics::counter!("relay_resumes_total", "result" => "invalid").increment(1);
            self.send("{\"op\":9,\"d\":false}").await?;
            return Err(Close::new(
                close::UNKNOWN_ERROR,
                "the session cannot resume from that seq",
            ));
        }
        s.attach(self.id);
        s.acked(r.seq);
        self.sent = r.seq;
        self.session = Some(s.clone());
        self.flush().await?;
        s.push("RESUMED", "{}");
        metrics::counter!("relay_resumes_total", "result" => "resumed").increment(1);
        tracing::info!(conn = self.id, session = %s.id, shard = s.shard.id, count = s.shard.count, seq = r.seq, "bot session resumed");
        Ok(())
    }

    /// Publishes a bot's command for the real shards (best effort, as
    /// on Discord: a failure is logged and counted, the bot not closed).
    async fn forward(&mut self, c: envelope::Command) {
        let op = c.op.to_string();
        // Bounded: the bot's heartbeats wait while this connection publishes.
        let sent = tokio::time::timeout(PUBLISH_WITHIN, self.ctx.commands.publish(&c))
            .await
            .unwrap_or_else(|_| {
                Err(lapin::Error::from(std::io::Error::other(format!(
                    "the broker did not take it within {PUBLISH_WITHIN:?}"
                ))))
            });
        match sent {
            Ok(()) => {
                metrics::counter!("relay_commands_total", "op" => op, "result" => "forwarded")
                    .increment(1);
            }
            Err(e) => {
                metrics::counter!("relay_commands_total", "op" => op, "result" => "unpublished")
                    .increment(1);
                tracing::warn!(error = %e, op = c.op, "cannot forward a bot's command to the sharders (check the broker)");
            }
        }
    }

    /// op 8: answered from the cache when it holds the whole answer, else
    /// forwarded to the real shard with a nonce of the relay's, whose
    /// chunks come back to this session alone ([`crate::replies`]).
    async fn request_members(
        &mut self,
        s: &Arc<Session>,
        r: crate::commands::MemberRequest,
    ) -> Result<(), Close> {
        if !s.shard.owns(Some(r.guild_id)) {
            return Ok(());
        }
        match crate::snapshot::member_chunks(&self.ctx.store, &r).await {
            Ok(Some(chunks)) => {
                metrics::counter!("relay_commands_total", "op" => "8", "result" => "from_cache")
                    .increment(1);
                for chunk in &chunks {
                    s.push("GUILD_MEMBERS_CHUNK", chunk);
                }
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the cache cannot answer op 8; asking the real shard");
            }
        }
        let Some(nonce) =
            self.ctx
                .hub
                .replies
                .register(s.id.clone(), r.nonce.clone(), Instant::now())
        else {
            metrics::counter!("relay_commands_total", "op" => "8", "result" => "too_many_pending")
                .increment(1);
            tracing::warn!("too many member requests await answers; dropped one");
            return Ok(());
        };
        let c = crate::commands::command(8, Some(r.guild_id), r.forwarded(&nonce));
        self.forward(c).await;
        Ok(())
    }
}
