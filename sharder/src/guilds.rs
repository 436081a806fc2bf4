//! Telling a guild join from a guild that loads or comes back.
//!
//! After READY, Discord sends one GUILD_CREATE per guild READY listed; it
//! also sends GUILD_CREATE when a guild returns from an outage, and when the
//! bot joins a guild. Only the last is a join; peers that call every unknown
//! GUILD_CREATE a join send "thanks for adding me" to thousands of servers
//! after a cold restart. READY and GUILD_CREATE are classified here, on the
//! shard's own task, in gateway order.
//!
//! # Algorithm
//! Every known guild has a state: `Pending` (listed in READY, not created
//! yet), `Available`, or `Unavailable` (GUILD_DELETE with `unavailable:true`).
//! GUILD_CREATE of a `Pending` guild is [`GuildCreateKind::Initial`], of an
//! `Unavailable` one [`GuildCreateKind::Available`], of an unknown one
//! [`GuildCreateKind::Joined`]; a GUILD_CREATE still marked unavailable
//! carries no data and is never a join: it records the outage and is
//! [`GuildCreateKind::Available`]. The kind is the envelope's own type, so
//! what the tracker decides is what travels to the worker. GUILD_DELETE without `unavailable` forgets the guild,
//! so a later re-add is a join again.
//!
//! The persisted session must match the persisted `seq`: after a restart,
//! Discord replays every event after that seq, and each must be classified
//! exactly as the first time. So the tracker keeps two maps: `live` (after
//! every received event) and `confirmed` (after every event the sink has
//! confirmed), plus the journal of changes between them, applied to
//! `confirmed` as confirmations arrive. Only `confirmed` is saved.

pub use envelope::GuildCreateKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuildState {
    Pending,
    Available,
    Unavailable,
}

/// The guild sets as persisted with a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuildSnapshot {
    /// Listed in READY, no GUILD_CREATE yet.
    pub pending: Vec<u64>,
    /// Created and available.
    pub available: Vec<u64>,
    /// In an outage.
    pub unavailable: Vec<u64>,
}

/// The guild states of one shard's session.
#[derive(Debug, Clone, Default)]
pub struct GuildTracker {
    live: BTreeMap<u64, GuildState>,
    confirmed: BTreeMap<u64, GuildState>,
    journal: VecDeque<(u64, u64, Option<GuildState>)>,
    /// Live guilds still `Pending` (listed by READY, no GUILD_CREATE yet).
    pending: usize,
}

fn count_pending(map: &BTreeMap<u64, GuildState>) -> usize {
    map.values().filter(|s| **s == GuildState::Pending).count()
}

fn apply(map: &mut BTreeMap<u64, GuildState>, guild: u64, state: Option<GuildState>) {
    match state {
        Some(s) => {
            map.insert(guild, s);
        }
        None => {
            map.remove(&guild);
        }
    }
}

impl GuildTracker {
    /// Restores a persisted snapshot (both maps equal: it was confirmed).
    pub fn from_snapshot(s: &GuildSnapshot) -> Self {
        let mut map = BTreeMap::new();
        for (ids, state) in [
            (&s.pending, GuildState::Pending),
            (&s.available, GuildState::Available),
            (&s.unavailable, GuildState::Unavailable),
        ] {
            for &id in ids {
                map.insert(id, state);
            }
        }
        Self {
            pending: count_pending(&map),
            live: map.clone(),
            confirmed: map,
            journal: VecDeque::new(),
        }
    }

    /// The confirmed state, for persisting.
    pub fn snapshot(&self) -> GuildSnapshot {
        let mut s = GuildSnapshot::default();
        for (&id, state) in &self.confirmed {
            match state {
                GuildState::Pending => s.pending.push(id),
                GuildState::Available => s.available.push(id),
                GuildState::Unavailable => s.unavailable.push(id),
            }
        }
        s
    }

    fn change(&mut self, seq: u64, guild: u64, state: Option<GuildState>) {
        let before = self.live.get(&guild).copied();
        if before == state {
            return;
        }
        let pending = Some(GuildState::Pending);
        if before == pending {
            self.pending -= 1;
        } else if state == pending {
            self.pending += 1;
        }
        apply(&mut self.live, guild, state);
        self.journal.push_back((seq, guild, state));
    }

    /// READY at `seq`: a new session, every listed guild pending. Replaces
    /// everything (the new session starts at READY; nothing before it will
    /// be replayed).
    pub fn ready(&mut self, guilds: impl IntoIterator<Item = u64>) {
        self.live = guilds
            .into_iter()
            .map(|g| (g, GuildState::Pending))
            .collect();
        self.pending = self.live.len();
        self.confirmed = self.live.clone();
        self.journal.clear();
    }

    /// Classifies a GUILD_CREATE at `seq` and records its effect (one still
    /// marked unavailable is `Available`: not a join, no data yet).
    pub fn guild_create(&mut self, seq: u64, guild: u64, unavailable: bool) -> GuildCreateKind {
        let before = self.live.get(&guild).copied();
        if unavailable {
            if before != Some(GuildState::Pending) {
                self.change(seq, guild, Some(GuildState::Unavailable));
            }
            return GuildCreateKind::Available;
        }
        self.change(seq, guild, Some(GuildState::Available));
        match before {
            Some(GuildState::Pending) => GuildCreateKind::Initial,
            Some(GuildState::Unavailable | GuildState::Available) => GuildCreateKind::Available,
            None => GuildCreateKind::Joined,
        }
    }

    /// Records a GUILD_DELETE at `seq`: an outage, or the bot leaving.
    pub fn guild_delete(&mut self, seq: u64, guild: u64, unavailable: bool) {
        let state = unavailable.then_some(GuildState::Unavailable);
        self.change(seq, guild, state);
    }

    /// The sink confirmed every event up to `seq`.
    pub fn confirm(&mut self, seq: u64) {
        while let Some(&(s, guild, state)) = self.journal.front() {
            if s > seq {
                break;
            }
            apply(&mut self.confirmed, guild, state);
            self.journal.pop_front();
        }
    }

    /// Forgets every unconfirmed change: a resume replays those events
    /// from the confirmed `seq`, and they must be classified again from the
    /// state they first saw.
    pub fn rollback(&mut self) {
        self.live = self.confirmed.clone();
        self.pending = count_pending(&self.live);
        self.journal.clear();
    }

    /// Guilds READY listed that have not had their GUILD_CREATE yet: 0
    /// once the session has loaded every guild (a reshard hands a shard's
    /// guilds over only then).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Number of known guilds (live).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no guild is known.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GuildCreateKind::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy)]
    enum Ev {
        Create { guild: u64, unavailable: bool },
        Delete { guild: u64, unavailable: bool },
    }

    fn apply_ev(t: &mut GuildTracker, seq: u64, ev: Ev) -> Option<GuildCreateKind> {
        match ev {
            Ev::Create { guild, unavailable } => Some(t.guild_create(seq, guild, unavailable)),
            Ev::Delete { guild, unavailable } => {
                t.guild_delete(seq, guild, unavailable);
                None
            }
        }
    }

    fn ev() -> impl Strategy<Value = Ev> {
        (0u64..8, any::<bool>(), any::<bool>()).prop_map(|(guild, create, unavailable)| {
            if create {
                Ev::Create { guild, unavailable }
            } else {
                Ev::Delete { guild, unavailable }
            }
        })
    }

    proptest! {
        /// Whatever the events and wherever the sink's confirmations stop,
        /// a restart from the saved snapshot (or a resume after rollback)
        /// classifies the replayed events exactly as the first time.
        #[test]
        fn replays_classify_as_the_first_time(
            ready in proptest::collection::btree_set(0u64..8, 0..6),
            events in proptest::collection::vec(ev(), 0..40),
            confirmed_frac in 0.0f64..=1.0,
        ) {
            let mut t = GuildTracker::default();
            t.ready(ready.iter().copied());
            let first: Vec<_> = events
                .iter()
                .enumerate()
                .map(|(i, &e)| apply_ev(&mut t, i as u64 + 2, e))
                .collect();
            let upto = (events.len() as f64 * confirmed_frac) as usize;
            t.confirm(upto as u64 + 1);
            let mut restarted = GuildTracker::from_snapshot(&t.snapshot());
            let mut resumed = t.clone();
            resumed.rollback();
            for (i, &e) in events.iter().enumerate().skip(upto) {
                let seq = i as u64 + 2;
                prop_assert_eq!(apply_ev(&mut restarted, seq, e), first[i]);
                prop_assert_eq!(apply_ev(&mut resumed, seq, e), first[i]);
            }
            prop_assert_eq!(restarted.live.clone(), t.live.clone());
            // The running count of pending guilds agrees with the map.
            for tracker in [&t, &restarted, &resumed] {
                prop_assert_eq!(tracker.pending(), count_pending(&tracker.live));
            }
        }
    }

    #[test]
    fn initial_available_joined() {
        let mut t = GuildTracker::default();
        t.ready([1, 2, 3]);
        assert_eq!(t.guild_create(2, 1, false), Initial);
        assert_eq!(
            t.guild_create(3, 2, true),
            Available,
            "unavailable: no data, not a join"
        );
        assert_eq!(t.guild_create(4, 2, false), Initial, "still READY's");
        assert_eq!(t.guild_create(5, 9, false), Joined);
        t.guild_delete(6, 1, true);
        assert_eq!(t.guild_create(7, 1, false), Available);
        t.guild_delete(8, 9, false);
        assert_eq!(
            t.guild_create(9, 9, false),
            Joined,
            "re-added after removal"
        );
        assert_eq!(t.guild_create(10, 3, false), Initial);
        assert_eq!(
            t.guild_create(11, 42, true),
            Available,
            "an unknown guild still unavailable is not a join"
        );
        assert_eq!(
            t.guild_create(12, 42, false),
            Available,
            "its outage was recorded"
        );
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn snapshot_is_the_confirmed_state_and_replays_classify_alike() {
        let mut t = GuildTracker::default();
        t.ready([1, 2]);
        assert_eq!(t.guild_create(2, 1, false), Initial);
        assert_eq!(t.guild_create(3, 7, false), Joined);
        assert_eq!(t.guild_create(4, 2, false), Initial);
        t.confirm(2);
        let snap = t.snapshot();
        assert_eq!(snap.pending, vec![2]);
        assert_eq!(snap.available, vec![1]);
        // A restart from the snapshot replays seq 3 and 4 the same way.
        let mut r = GuildTracker::from_snapshot(&snap);
        assert_eq!(r.guild_create(3, 7, false), Joined);
        assert_eq!(r.guild_create(4, 2, false), Initial);
        // A resume in the same process replays seq 3 and 4 alike too.
        let mut same = t.clone();
        same.rollback();
        assert_eq!(same.guild_create(3, 7, false), Joined);
        assert_eq!(same.guild_create(4, 2, false), Initial);
        t.confirm(4);
        assert_eq!(t.snapshot().available, vec![1, 2, 7]);
        assert!(t.snapshot().pending.is_empty());
    }
}
