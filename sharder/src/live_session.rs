//! The live gateway session of one shard: what each frame means.
//!
//! [`Session`] is the persisted record of a session; [`LiveSession`] is the
//! session as it runs, on the shard's own task: READY and GUILD_CREATE are
//! handled in gateway order, so READY can never wipe state a later event
//! created (a peer's bug). It never touches the socket except through a
//! [`Connection`], and it decides every way a connection ends
//! ([`Outcome`]): this file is where to look for "what happens on op N".
//!
//! # Algorithm
//! 1. Resume or identify: with a session record (stored, or from READY),
//!    the next connection sends RESUME with `seq` = the confirmed seq, so
//!    anything the sink has not confirmed is replayed
//!    ([`LiveSession::resume_command`]); without one, it identifies.
//! 2. A frame ([`LiveSession::on_frame`]): op 0 goes on to step 3; op 1 is
//!    answered with a heartbeat at once; op 11 ACKs the heartbeat; op 7
//!    closes with 4000 and resumes; op 9 closes with 4000 and resumes when
//!    `d` is `true` and there is a session, else identifies after the random
//!    1-5 s Discord asks for (`invalid_session_delay`).
//! 3. A dispatch raises the highest `s` received (the heartbeat's `d`).
//!    READY starts a new session: a new epoch (`max(previous + 1, unix
//!    ms)`), the READY guild set, a fresh confirmed-seq tracker, the resume
//!    URL (or the gateway URL when READY has no usable one); the shard then
//!    saves it at once. RESUMED marks the connection active again.
//! 4. [`LiveSession::forward`]: GUILD_CREATE is classified (initial /
//!    available / joined / unavailable) and GUILD_DELETE recorded, from the
//!    same [`GuildTracker`], in gateway order; the event goes to the sink
//!    with its provenance and `d` as a zero-copy slice of the payload.
//! 5. [`LiveSession::deliver`] is the boundary to the sink. While the sink
//!    applies backpressure the heartbeat keeps running (without the zombie
//!    check: ACKs are not read meanwhile) and shutdown is still honoured;
//!    the event's `seq` stays outstanding until the sink confirms it.
//! 6. The confirmed seq: sink confirmations are drained after every burst,
//!    before every save and before a resume, never waited on; before a
//!    resume the guild tracker is rolled back to the confirmed state,
//!    because Discord replays from the confirmed `seq` (`confirmed.rs`).
//! 7. How a connection ended becomes an [`Outcome`] (`outcome.rs`). A
//!    payload that inflated but is unreadable closes with 4000 and resumes;
//!    unreadable again at the same point after that resume, it is Discord's
//!    own bytes, which would come back on every resume: it is skipped and
//!    counted instead ([`LiveSession::unreadable`]), never a reconnect loop.

mod confirmed;

use crate::connect::Connector;
use crate::connection::Connection;
use crate::event_counters::EventCounters;
use crate::guilds::GuildTracker;
use crate::outcome::Outcome;
use crate::session::{Session, SessionOwner, next_epoch};
use crate::shard_config::ShardConfig;
use crate::shard_vitals::ShardVitals;
use crate::sink::{Confirmation, ConfirmedSeq, EventHeader, EventSink, ShardEvent, TrySend};
use bytes::Bytes;
use gateway_protocol::EventName;
use gateway_protocol::RESUMABLE_CLOSE;
use gateway_protocol::{Frame, op, parse_snowflake};
use rand::Rng;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// What a frame asks of the shard besides what [`LiveSession`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing: the frame is handled.
    Handled,
    /// READY: a new session is active; save it, then forward the event.
    Ready,
    /// RESUMED: the session is active again; forward the event.
    Resumed,
    /// Any other dispatch: forward it.
    Dispatch,
}

#[derive(Deserialize)]
struct Ready {
    session_id: String,
    #[serde(default)]
    resume_gateway_url: Option<String>,
    #[serde(default)]
    guilds: Vec<ReadyGuild>,
    #[serde(default)]
    user: Option<ReadyUser>,
}

#[derive(Deserialize)]
struct ReadyGuild {
    id: String,
}

#[derive(Deserialize)]
struct ReadyUser {
    id: String,
}

/// One shard's session as it runs. See the module docs.
pub(crate) struct LiveSession<K: EventSink> {
    config: ShardConfig,
    owner: SessionOwner,
    sink: Arc<K>,
    /// The session to resume (`None`: identify).
    record: Option<Session>,
    guilds: GuildTracker,
    seqs: ConfirmedSeq,
    /// Highest `s` received on the current connection (heartbeat `d`).
    last_seq: Option<u64>,
    last_epoch: Option<u64>,
    confirm_tx: mpsc::UnboundedSender<Confirmation>,
    confirm_rx: mpsc::UnboundedReceiver<Confirmation>,
    counters: EventCounters,
    /// What the status page shows of the shard.
    vitals: Arc<ShardVitals>,
    /// When the current burst of messages was read (events' `received_at`).
    burst_read_at: SystemTime,
    /// Where the last unreadable payload came: the session's epoch and the
    /// highest `s` received before it (see [`LiveSession::unreadable`]).
    unreadable_at: Option<(Option<u64>, Option<u64>)>,
}

impl<K: EventSink> LiveSession<K> {
    /// Guilds the session's READY listed that have not loaded yet.
    pub(crate) fn pending_guilds(&self) -> usize {
        self.guilds.pending()
    }

    /// The shard's status-page figures.
    pub(crate) fn vitals(&self) -> &Arc<ShardVitals> {
        &self.vitals
    }

    /// Guilds the session knows.
    pub(crate) fn guild_count(&self) -> usize {
        self.guilds.len()
    }

    /// No session yet: the first connection identifies.
    pub(crate) fn new(config: ShardConfig, sink: Arc<K>, vitals: Arc<ShardVitals>) -> Self {
        let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
        let owner = SessionOwner::new(&config.token, config.total_shards);
        Self {
            config,
            owner,
            sink,
            record: None,
            guilds: GuildTracker::default(),
            seqs: ConfirmedSeq::default(),
            last_seq: None,
            last_epoch: None,
            confirm_tx,
            confirm_rx,
            counters: EventCounters::new(vitals.clone()),
            vitals,
            burst_read_at: SystemTime::UNIX_EPOCH,
            unreadable_at: None,
        }
    }

    /// Whose sessions this shard may resume.
    pub(crate) fn owner(&self) -> &SessionOwner {
        &self.owner
    }

    /// The session the next connection resumes, if any.
    pub(crate) fn record(&self) -> Option<&Session> {
        self.record.as_ref()
    }

    /// Highest `s` received (the heartbeat's `d`).
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The RESUME command (and its `seq`) when there is a session to
    /// resume; `None` means identify.
    pub(crate) fn resume_command(&self) -> Option<(u64, String)> {
        let session = self.record.as_ref()?;
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
        Some((seq, resume.to_string()))
    }

    /// The IDENTIFY command.
    pub(crate) fn identify_command(&self) -> String {
        let c = &self.config;
        let mut identify = serde_json::json!({
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
        if let Some(p) = c.presence.current()
            && let Ok(p) = serde_json::from_str::<serde_json::Value>(&p)
        {
            identify["d"]["presence"] = p;
        }
        identify.to_string()
    }

    /// A burst of messages is being read now.
    pub(crate) fn burst_began(&mut self) {
        self.burst_read_at = SystemTime::now();
    }

    /// Publishes the burst's per-event counters.
    pub(crate) fn flush_counters(&mut self) {
        self.counters.flush();
    }

    /// Handles a frame read in place; see the module docs for each op.
    pub(crate) async fn on_frame<C: Connector>(
        &mut self,
        conn: &mut Connection<C>,
        frame: &Frame<'_>,
    ) -> Result<Step, Outcome> {
        match frame.op {
            op::DISPATCH => self.receive(frame),
            op::HEARTBEAT => {
                conn.answer_heartbeat(self.last_seq).await?;
                Ok(Step::Handled)
            }
            op::HEARTBEAT_ACK => {
                if let Some(rtt) = conn.on_ack() {
                    self.vitals.heartbeat_acked(rtt);
                }
                Ok(Step::Handled)
            }
            op::RECONNECT => {
                conn.close(RESUMABLE_CLOSE, "reconnect requested").await;
                Err(Outcome::Resume("op 7 reconnect".into()))
            }
            op::INVALID_SESSION => {
                let resumable = frame.data::<bool>().unwrap_or(false);
                metrics::counter!(
                    "sharder_invalid_sessions_total",
                    "resumable" => if resumable { "true" } else { "false" }
                )
                .increment(1);
                conn.close(RESUMABLE_CLOSE, "invalid session").await;
                if resumable && self.record.is_some() {
                    Err(Outcome::Resume("op 9 (resumable)".into()))
                } else {
                    // Discord: wait a random 1-5 s before identifying again.
                    let (lo, hi) = self.config.invalid_session_delay;
                    let ms = rand::rng()
                        .random_range(lo.as_millis()..=hi.as_millis().max(lo.as_millis()));
                    Err(Outcome::Identify {
                        reason: "op 9 (not resumable)".into(),
                        wait: Some(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))),
                    })
                }
            }
            op::HELLO => Ok(Step::Handled),
            other => {
                tracing::debug!(
                    shard_id = self.config.shard_id,
                    op = other,
                    "ignoring opcode"
                );
                Ok(Step::Handled)
            }
        }
    }

    /// A dispatch's effect on the session (step 3).
    fn receive(&mut self, frame: &Frame<'_>) -> Result<Step, Outcome> {
        let seq = frame.s.unwrap_or_default();
        self.last_seq = Some(self.last_seq.map_or(seq, |s| s.max(seq)));
        match frame.event() {
            "READY" => {
                self.on_ready(frame)?;
                Ok(Step::Ready)
            }
            "RESUMED" => {
                tracing::info!(shard_id = self.config.shard_id, "resumed");
                metrics::counter!("sharder_resumes_total", "result" => "resumed").increment(1);
                Ok(Step::Resumed)
            }
            _ => Ok(Step::Dispatch),
        }
    }

    fn on_ready(&mut self, frame: &Frame<'_>) -> Result<(), Outcome> {
        let id = self.config.shard_id;
        let ready: Ready = frame
            .data()
            .map_err(|e| Outcome::identify(format!("unreadable READY: {e}")))?;
        if ready.session_id.trim().is_empty() {
            return Err(Outcome::identify("READY without a session id"));
        }
        let resume_url = match ready.resume_gateway_url {
            Some(u) if u.starts_with("ws://") || u.starts_with("wss://") => u,
            other => {
                tracing::warn!(shard_id = id, url = ?other, "READY has no usable resume_gateway_url; resuming through the gateway URL");
                self.config.gateway_url.clone()
            }
        };
        let epoch = next_epoch(self.last_epoch);
        self.last_epoch = Some(epoch);
        let mut session = Session::new(&self.owner, id, ready.session_id, resume_url, epoch);
        session.bot_user_id = ready.user.and_then(|u| parse_snowflake(&u.id));
        let guilds: Vec<u64> = ready
            .guilds
            .iter()
            .filter_map(|g| parse_snowflake(&g.id))
            .collect();
        tracing::info!(
            shard_id = id,
            epoch,
            guilds = guilds.len(),
            "READY: new session"
        );
        self.guilds.ready(guilds);
        self.seqs = ConfirmedSeq::new(epoch, 0);
        self.record = Some(session);
        metrics::counter!("sharder_sessions_started_total").increment(1);
        Ok(())
    }

    /// Classifies guild events and hands the dispatch to the sink (step 4).
    pub(crate) async fn forward<C: Connector>(
        &mut self,
        conn: &mut Connection<C>,
        shutdown: &mut watch::Receiver<bool>,
        frame: &Frame<'_>,
        payload: &Bytes,
    ) -> Result<(), Outcome> {
        let seq = frame.s.unwrap_or_default();
        let event = frame.event();
        let keys = frame.dispatch_keys().unwrap_or_else(|e| {
            tracing::warn!(shard_id = self.config.shard_id, seq, error = %e, "event without a usable guild id");
            metrics::counter!("sharder_bad_event_data_total").increment(1);
            Default::default()
        });
        let unavailable = keys.unavailable == Some(true);
        let guild_create = match (event, keys.guild_id) {
            ("GUILD_CREATE", Some(g)) => Some(self.guilds.guild_create(seq, g, unavailable)),
            ("GUILD_DELETE", Some(g)) => {
                self.guilds.guild_delete(seq, g, unavailable);
                None
            }
            _ => None,
        };
        let Some(session) = &self.record else {
            tracing::warn!(
                shard_id = self.config.shard_id,
                event,
                "dispatch before READY; dropped"
            );
            return Ok(());
        };
        let data = frame
            .d_range(payload)
            .map_or_else(Bytes::new, |r| payload.slice(r));
        let header = EventHeader {
            shard_id: self.config.shard_id,
            num_shards: self.config.total_shards,
            epoch: session.epoch,
            seq,
            guild_id: keys.guild_id,
            guild_create,
        };
        self.seqs.forwarded(seq);
        let name = EventName::new(event);
        self.counters.count(&name);
        let ev = ShardEvent::received(
            header,
            name,
            data,
            self.confirm_tx.clone(),
            self.burst_read_at,
        );
        self.deliver(conn, shutdown, ev).await
    }

    /// Hands `ev` to the sink, heartbeating while the sink applies
    /// backpressure.
    async fn deliver<C: Connector>(
        &mut self,
        conn: &mut Connection<C>,
        shutdown: &mut watch::Receiver<bool>,
        ev: ShardEvent,
    ) -> Result<(), Outcome> {
        // A sink with room takes the event at once: no future, no clone of
        // the shared sink handle, and no heartbeat timer or shutdown watch
        // to arm (arming them per event was a timer-wheel registration and
        // a waiter-list insert each).
        let ev = match self.sink.try_send(ev) {
            TrySend::Taken => return Ok(()),
            TrySend::Closed(e) => return Err(Outcome::SinkClosed(e.to_string())),
            TrySend::Wait(ev) => ev,
        };
        let sink = self.sink.clone();
        let send = sink.send(ev);
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => {
                    // The burst goes on after the wait: its next events are
                    // read now, not when the burst began.
                    self.burst_read_at = SystemTime::now();
                    return r.map_err(|e| Outcome::SinkClosed(e.to_string()));
                }
                () = tokio::time::sleep_until(conn.next_beat()) => {
                    conn.beat_while_held(self.last_seq).await?;
                }
                _ = shutdown.changed() => {
                    conn.close(RESUMABLE_CLOSE, "shutting down").await;
                    return Err(Outcome::Shutdown);
                }
            }
        }
    }

    /// A payload that inflated but cannot be read as a gateway frame. The
    /// first one at a point closes with 4000 and resumes, in case it was
    /// damaged on the way: Discord replays from the confirmed seq. One at
    /// the same point again (same session, same highest `s` before it) is
    /// the gateway's own bytes, which every resume would replay: it is
    /// skipped, logged and counted, and the connection goes on, so the
    /// events behind it still flow.
    pub(crate) async fn unreadable<C: Connector>(
        &mut self,
        conn: &mut Connection<C>,
        bytes: usize,
        reason: String,
    ) -> Result<(), Outcome> {
        let at = (self.record.as_ref().map(|s| s.epoch), self.last_seq);
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
        Err(conn.corrupt(reason).await.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChannelSink;

    #[test]
    fn identify_carries_the_presence_a_bot_set_last() {
        let config = ShardConfig::new(2, 4, config::Secret::new("t.o.k"), "ws://g".into());
        let presence = config.presence.clone();
        let (sink, _rx) = ChannelSink::new(4, true);
        let live = LiveSession::new(config, Arc::new(sink), Arc::new(ShardVitals::new()));
        let identify: serde_json::Value = serde_json::from_str(&live.identify_command()).unwrap();
        assert_eq!(identify["d"]["shard"], serde_json::json!([2, 4]));
        assert!(identify["d"].get("presence").is_none(), "none set yet");
        presence.offer(
            5,
            r#"{"since":null,"activities":[],"status":"idle","afk":false}"#,
        );
        let identify: serde_json::Value = serde_json::from_str(&live.identify_command()).unwrap();
        assert_eq!(identify["d"]["presence"]["status"], "idle");
    }
}
