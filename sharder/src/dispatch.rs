//! What a shard does with a dispatch (op 0), on its own task.
//!
//! # Algorithm
//! 1. Track the highest `s` received (the heartbeat's `d`).
//! 2. READY starts a new session: a new epoch (`max(previous + 1, unix
//!    ms)`), the READY guild set, a fresh confirmed-seq tracker, the
//!    resume URL (or the gateway URL when READY has no usable one), and an
//!    immediate save. RESUMED marks the connection active again.
//! 3. GUILD_CREATE is classified (initial / available / joined /
//!    unavailable) and GUILD_DELETE recorded, from the same guild tracker,
//!    in gateway order.
//! 4. The event goes to the sink with its provenance and `d` as a zero-copy
//!    slice of the payload. While the sink applies backpressure the
//!    heartbeat keeps running (without the zombie check: ACKs are not read
//!    meanwhile) and shutdown is still honoured; the event's `seq` stays
//!    outstanding until the sink confirms it.

use crate::connect::Connector;
use crate::connection::{Heartbeat, Ws, close};
use crate::session::{Session, next_epoch};
use crate::session_store::SessionStore;
use crate::shard::{Outcome, Shard, ShardState};
use crate::sink::{ConfirmedSeq, EventHeader, EventSink, ShardEvent, TrySend};
use bytes::Bytes;
use gateway_protocol::EventName;
use gateway_protocol::RESUMABLE_CLOSE;
use gateway_protocol::SendLimiter;
use gateway_protocol::{Frame, parse_snowflake};
use serde::Deserialize;

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

impl<K: EventSink, S: SessionStore, C: Connector> Shard<K, S, C> {
    pub(crate) async fn on_dispatch(
        &mut self,
        ws: &mut Ws<C>,
        hb: &mut Heartbeat,
        limiter: &SendLimiter,
        frame: &Frame<'_>,
        payload: &Bytes,
    ) -> Result<(), Outcome> {
        let seq = frame.s.unwrap_or_default();
        let event = frame.event();
        self.last_seq = Some(self.last_seq.map_or(seq, |s| s.max(seq)));
        match event {
            "READY" => self.on_ready(frame).await?,
            "RESUMED" => {
                tracing::info!(shard_id = self.config.shard_id, "resumed");
                metrics::counter!("sharder_resumes_total", "result" => "resumed").increment(1);
                self.reached_active = true;
                self.resume_via_gateway = false;
                self.backoff.reset();
                self.set_state(ShardState::Active);
            }
            _ => {}
        }
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
        let Some(session) = &self.session else {
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
        self.deliver(ws, hb, limiter, ev).await
    }

    async fn on_ready(&mut self, frame: &Frame<'_>) -> Result<(), Outcome> {
        let id = self.config.shard_id;
        let ready: Ready = frame
            .data()
            .map_err(|e| Outcome::Identify(format!("unreadable READY: {e}")))?;
        if ready.session_id.trim().is_empty() {
            return Err(Outcome::Identify("READY without a session id".into()));
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
        self.session = Some(session);
        self.reached_active = true;
        self.resume_via_gateway = false;
        self.backoff.reset();
        self.set_state(ShardState::Active);
        metrics::counter!("sharder_sessions_started_total").increment(1);
        self.persist(true).await;
        Ok(())
    }

    /// Hands `ev` to the sink, heartbeating while the sink applies
    /// backpressure.
    async fn deliver(
        &mut self,
        ws: &mut Ws<C>,
        hb: &mut Heartbeat,
        limiter: &SendLimiter,
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
                    self.burst_read_at = std::time::SystemTime::now();
                    return r.map_err(|e| Outcome::SinkClosed(e.to_string()));
                }
                () = tokio::time::sleep_until(hb.next) => {
                    // ACKs cannot be read while the sink holds the shard:
                    // keep beating, but judge the connection only once
                    // reading resumes (else backpressure looks like a zombie).
                    hb.next = tokio::time::Instant::now() + hb.interval;
                    self.send_heartbeat(ws, hb, limiter).await?;
                    hb.acked = true;
                }
                _ = self.shutdown.changed() => {
                    close::<C>(ws, RESUMABLE_CLOSE, "shutting down").await;
                    return Err(Outcome::Shutdown);
                }
            }
        }
    }
}
