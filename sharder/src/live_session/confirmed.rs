//! The confirmed seq of a [`LiveSession`] and the record the shard saves.
//!
//! Discord replays from the `seq` a resume names, and the sink confirms
//! events out of order and later than they are forwarded. So the record
//! only ever carries what the sink confirmed contiguously ([`ConfirmedSeq`])
//! with the guild states as of that seq ([`GuildTracker`]'s `confirmed`
//! map): after a restart or a resume, every replayed event is classified
//! exactly as the first time.
//!
//! # Algorithm
//! - Confirmations arrive on a channel; they are drained (never waited on)
//!   after each burst, before each save and before a resume
//!   ([`LiveSession::drain_confirms`]); only at shutdown, with the
//!   connection closed, are they awaited, for at most `shutdown_drain`.
//! - Before a resume the guild tracker rolls back to the confirmed state
//!   and the heartbeat's seq to the confirmed seq ([`LiveSession::rewind`]).
//! - The record to save is brought up to the confirmed seq and guilds
//!   ([`LiveSession::sync_record`]); a session that ended is handed back
//!   for deletion ([`LiveSession::end`]).

use super::LiveSession;
use crate::guilds::GuildTracker;
use crate::session::Session;
use crate::sink::{ConfirmedSeq, EventSink};

impl<K: EventSink> LiveSession<K> {
    /// Continues a stored session: the next connection resumes it.
    pub(crate) fn restore(&mut self, s: Session) {
        self.last_epoch = Some(s.epoch);
        self.guilds = GuildTracker::from_snapshot(&s.guilds);
        self.seqs = ConfirmedSeq::new(s.epoch, s.seq);
        self.last_seq = Some(s.seq);
        self.record = Some(s);
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

    /// The connection is closed (nothing new arrives): waits, up to
    /// `shutdown_drain`, for the sink to confirm what it holds, so the saved
    /// seq covers it and a resume does not replay it.
    pub(crate) async fn await_confirms(&mut self) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_drain;
        while self.seqs.outstanding() > 0 {
            match tokio::time::timeout_at(deadline, self.confirm_rx.recv()).await {
                Ok(Some(c)) => {
                    if self.seqs.confirm(c) {
                        self.guilds.confirm(self.seqs.confirmed());
                    }
                }
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

    /// Before a resume: Discord replays from the confirmed `seq`, so the
    /// guild states and the highest `s` go back to that point.
    pub(crate) fn rewind(&mut self) {
        // What the sink confirmed since the last message counts: the resume
        // then replays only what is really missing. Draining before the
        // rollback keeps the guild states and the resume seq at the same
        // point.
        self.drain_confirms();
        self.guilds.rollback();
        if self.record.is_some() {
            self.last_seq = Some(self.seqs.confirmed());
        }
    }

    /// The session is over (the next connection identifies): returns its
    /// record, for the shard to delete.
    pub(crate) fn end(&mut self) -> Option<Session> {
        let record = self.record.take();
        if let Some(s) = &record {
            self.last_epoch = Some(s.epoch);
        }
        self.guilds = GuildTracker::default();
        self.last_seq = None;
        record
    }

    /// Brings the record up to the confirmed `seq` and guild states: the
    /// record to save and whether it changed, or `None` without a session.
    pub(crate) fn sync_record(&mut self) -> Option<(&Session, bool)> {
        let confirmed = self.seqs.confirmed();
        let guilds = self.guilds.snapshot();
        let session = self.record.as_mut()?;
        let mut changed = false;
        if session.epoch == self.seqs.epoch() && session.seq != confirmed {
            session.seq = confirmed;
            changed = true;
        }
        if session.guilds != guilds {
            session.guilds = guilds;
            changed = true;
        }
        Some((session, changed))
    }
}
