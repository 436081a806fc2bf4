//! One guild's slot in the in-memory store: typed maps of versioned
//! entities, the collection floors and the member-count state.
//!
//! # Algorithm
//!
//! Every entity is a last-writer-wins register (`Slot`: version plus a live
//! value or a tombstone stamped with its receive time; a tombstone reuses
//! the value's space). Raising a collection's floor drops what lies below
//! it; the member count is the last snapshot's count plus one delta per
//! newer membership event, keyed by version. Rules: [`crate::Mutation`].

use crate::model::{
    Channel, Emoji, Entity, GuildCore, GuildView, KINDS, Kind, Member, Presence, Role, Versioned,
    VoiceState,
};
use crate::mutation::Snapshot;
use crate::snowflake::IdMap;
use envelope::Version;
use std::collections::BTreeMap;

/// Lifecycle versions remembered per guild: a guild changes state a few
/// times a day at most, and a redelivery comes within the consumer's
/// prefetch window.
pub(super) const LIFECYCLE_KEPT: usize = 4;

/// A live value or a tombstone (receive time of the delete, unix ms).
#[derive(Debug, Clone)]
pub(super) enum Entry<T> {
    Live(T),
    Dead(u64),
}

#[derive(Debug, Clone)]
pub(super) struct Slot<T> {
    pub(super) version: Version,
    pub(super) entry: Entry<T>,
}

/// LWW write into one typed map; `floor` is the collection's floor.
fn put<T>(
    map: &mut IdMap<Slot<T>>,
    floor: Version,
    id: u64,
    version: Version,
    entry: Entry<T>,
) -> bool {
    if version < floor {
        return false;
    }
    match map.get_mut(&id) {
        Some(slot) if slot.version >= version => false,
        Some(slot) => {
            *slot = Slot { version, entry };
            true
        }
        None => {
            map.insert(id, Slot { version, entry });
            true
        }
    }
}

fn live<T: Clone>(map: &IdMap<Slot<T>>) -> BTreeMap<u64, Versioned<T>> {
    map.iter()
        .filter_map(|(&id, s)| match &s.entry {
            Entry::Live(v) => Some((
                id,
                Versioned {
                    version: s.version,
                    value: v.clone(),
                },
            )),
            Entry::Dead(_) => None,
        })
        .collect()
}

#[derive(Debug, Default)]
pub(super) struct GuildSlot {
    /// The shard whose events admitted the guild (see [`Store::admit`]).
    pub(super) shard: Option<envelope::ShardRef>,
    /// Version of the last applied snapshot or removal.
    pub(super) floor: Version,
    /// Per-kind floors (index: [`Kind::index`]).
    pub(super) floors: [Version; KINDS],
    pub(super) core: Option<Slot<GuildCore>>,
    pub(super) available: (Version, bool),
    /// The last guild-level lifecycle writes applied as the newest (see
    /// [`GuildSlot::announced`]), most recent first.
    pub(super) lifecycle: [Version; LIFECYCLE_KEPT],
    /// A READY that listed the guild while the cache held it as not the
    /// bot's (see [`crate::Store::gap_join`]); the next snapshot is a join.
    pub(super) gap_mark: Version,
    /// The snapshot that consumed `gap_mark`: the gap join's version.
    pub(super) gap_join: Version,
    pub(super) count_base: i64,
    pub(super) count_mark: Version,
    pub(super) deltas: BTreeMap<Version, i8>,
    pub(super) channels: IdMap<Slot<Channel>>,
    pub(super) roles: IdMap<Slot<Role>>,
    pub(super) members: IdMap<Slot<Member>>,
    pub(super) emojis: IdMap<Slot<Emoji>>,
    pub(super) presences: IdMap<Slot<Presence>>,
    pub(super) voice: IdMap<Slot<VoiceState>>,
}

impl GuildSlot {
    pub(super) fn put(&mut self, id: u64, version: Version, entity: Entity) -> bool {
        let f = self.floors[entity.kind().index()];
        match entity {
            Entity::Channel(v) => put(&mut self.channels, f, id, version, Entry::Live(v)),
            Entity::Role(v) => put(&mut self.roles, f, id, version, Entry::Live(v)),
            Entity::Member(v) => put(&mut self.members, f, id, version, Entry::Live(v)),
            Entity::Emoji(v) => put(&mut self.emojis, f, id, version, Entry::Live(v)),
            Entity::Presence(v) => put(&mut self.presences, f, id, version, Entry::Live(v)),
            Entity::Voice(v) => put(&mut self.voice, f, id, version, Entry::Live(v)),
        }
    }

    pub(super) fn delete(&mut self, kind: Kind, id: u64, version: Version, at_ms: u64) -> bool {
        let f = self.floors[kind.index()];
        match kind {
            Kind::Channel => put(&mut self.channels, f, id, version, Entry::Dead(at_ms)),
            Kind::Role => put(&mut self.roles, f, id, version, Entry::Dead(at_ms)),
            Kind::Member => put(&mut self.members, f, id, version, Entry::Dead(at_ms)),
            Kind::Emoji => put(&mut self.emojis, f, id, version, Entry::Dead(at_ms)),
            Kind::Presence => put(&mut self.presences, f, id, version, Entry::Dead(at_ms)),
            Kind::Voice => put(&mut self.voice, f, id, version, Entry::Dead(at_ms)),
        }
    }

    /// Raises `kind`'s floor to `version` (if higher), dropping every entity
    /// stored below it. Returns whether the floor moved.
    pub(super) fn raise(&mut self, kind: Kind, version: Version) -> bool {
        let f = &mut self.floors[kind.index()];
        if version <= *f {
            return false;
        }
        *f = version;
        match kind {
            Kind::Channel => self.channels.retain(|_, s| s.version >= version),
            Kind::Role => self.roles.retain(|_, s| s.version >= version),
            Kind::Member => self.members.retain(|_, s| s.version >= version),
            Kind::Emoji => self.emojis.retain(|_, s| s.version >= version),
            Kind::Presence => self.presences.retain(|_, s| s.version >= version),
            Kind::Voice => self.voice.retain(|_, s| s.version >= version),
        }
        true
    }

    pub(super) fn set_count(&mut self, version: Version, count: i64) {
        if version > self.count_mark {
            self.count_mark = version;
            self.count_base = count;
            self.deltas.retain(|v, _| *v > version);
        }
    }

    /// Folds the older half of the member-count deltas into the base and
    /// moves the mark past them, bounding memory during a long session.
    pub(super) fn fold_deltas(&mut self) {
        let Some(&pivot) = self.deltas.keys().nth(self.deltas.len() / 2) else {
            return;
        };
        let keep = self.deltas.split_off(&pivot);
        let folded = std::mem::replace(&mut self.deltas, keep);
        if let Some((&last, _)) = folded.last_key_value() {
            self.count_mark = last;
        }
        self.count_base += folded.values().map(|&d| i64::from(d)).sum::<i64>();
    }

    /// The bot left the guild as of `version`: everything older goes.
    pub(super) fn remove(&mut self, version: Version, at_ms: u64) -> bool {
        let applied = version > self.floor;
        if applied {
            self.floor = version;
            self.remember(version);
        }
        for kind in Kind::ALL {
            self.raise(kind, version);
        }
        self.set_count(version, 0);
        self.set_core(version, Entry::Dead(at_ms));
        applied
    }

    pub(super) fn set_core(&mut self, version: Version, entry: Entry<GuildCore>) -> bool {
        match &self.core {
            Some(s) if s.version >= version => false,
            _ => {
                self.core = Some(Slot { version, entry });
                true
            }
        }
    }

    pub(super) fn snapshot(&mut self, s: Snapshot) -> bool {
        let v = s.version;
        let applied = v > self.floor;
        if applied {
            // Not after a snapshot that showed the guild live: under
            // reordering that one may already have announced the join.
            let live = matches!(
                self.core,
                Some(Slot {
                    entry: Entry::Live(_),
                    ..
                })
            );
            if !live && self.gap_mark > self.floor && v > self.gap_mark {
                self.gap_join = v;
            }
            self.floor = v;
            self.remember(v);
        }
        for kind in Kind::ALL {
            if s.complete[kind.index()] {
                self.raise(kind, v);
            }
        }
        self.set_core(v, Entry::Live(s.core));
        if v > self.available.0 {
            self.available = (v, true);
        }
        if let Some(n) = s.member_count {
            self.set_count(v, i64::try_from(n).unwrap_or(i64::MAX));
        }
        for (id, entity) in s.entities {
            self.put(id, v, entity);
        }
        applied
    }

    /// Records that the lifecycle write `v` was applied as the newest.
    pub(super) fn remember(&mut self, v: Version) {
        self.lifecycle.rotate_right(1);
        self.lifecycle[0] = v;
    }

    /// Whether the lifecycle write `v` (snapshot, removal, availability)
    /// was once applied as the guild's newest, i.e. was announced, among
    /// the last [`LIFECYCLE_KEPT`]: a redelivery after a crash re-derives
    /// its announcement from this.
    pub(super) fn announced(&self, v: Version) -> bool {
        v != Version::ZERO && self.lifecycle.contains(&v)
    }

    /// READY at `version` lists the guild. If the cache holds it as not
    /// the bot's (removed before `version`, or never seen and not listed by
    /// the shard's previous READY, when there was one), the bot joined it
    /// during a session gap: marked for [`GuildSlot::snapshot`]. The guild
    /// is unavailable until its GUILD_CREATE unless `mark_unavailable` is
    /// false (a reshard's hand-over: the old total still serves it).
    pub(super) fn listed(
        &mut self,
        version: Version,
        unlisted_before: bool,
        mark_unavailable: bool,
    ) {
        let gone = match &self.core {
            Some(Slot {
                version: at,
                entry: Entry::Dead(_),
            }) => *at < version,
            Some(Slot {
                entry: Entry::Live(_),
                ..
            }) => false,
            None => unlisted_before,
        };
        if gone && version > self.gap_mark {
            self.gap_mark = version;
        }
        if mark_unavailable && version > self.available.0 {
            self.available = (version, false);
        }
    }

    /// Whether the snapshot at `v` was a session-gap join
    /// ([`crate::Store::gap_join`]).
    pub(super) fn is_gap_join(&self, v: Version) -> bool {
        v != Version::ZERO && self.gap_join == v
    }

    /// Ids of the members with a live entry.
    pub(super) fn live_member_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.members
            .iter()
            .filter(|(_, s)| matches!(s.entry, Entry::Live(_)))
            .map(|(&id, _)| id)
    }

    pub(super) fn view(&self) -> Option<GuildView> {
        let core = match &self.core {
            Some(Slot {
                entry: Entry::Dead(_),
                ..
            }) => return None,
            Some(Slot {
                version,
                entry: Entry::Live(c),
            }) => Some(Versioned {
                version: *version,
                value: c.clone(),
            }),
            None => None,
        };
        Some(GuildView {
            core,
            available: self.available.1,
            member_count: self.count_base
                + self.deltas.values().map(|&d| i64::from(d)).sum::<i64>(),
            channels: live(&self.channels),
            roles: live(&self.roles),
            members: live(&self.members),
            emojis: live(&self.emojis),
            presences: live(&self.presences),
            voice_states: live(&self.voice),
        })
    }

    pub(super) fn collect(&mut self, cutoff_ms: u64) -> usize {
        fn keep<T>(cutoff_ms: u64) -> impl Fn(&u64, &mut Slot<T>) -> bool {
            move |_, s| !matches!(s.entry, Entry::Dead(at) if at < cutoff_ms)
        }
        let size = |g: &Self| {
            g.channels.len()
                + g.roles.len()
                + g.members.len()
                + g.emojis.len()
                + g.presences.len()
                + g.voice.len()
        };
        let before = size(self);
        self.channels.retain(keep(cutoff_ms));
        self.roles.retain(keep(cutoff_ms));
        self.members.retain(keep(cutoff_ms));
        self.emojis.retain(keep(cutoff_ms));
        self.presences.retain(keep(cutoff_ms));
        self.voice.retain(keep(cutoff_ms));
        before - size(self)
    }
}
