//! The in-memory store: the default, for a worker that owns its partitions.
//!
//! Layout: one map of guild slots; each slot holds typed maps of compact
//! entities (`u64` key, 16-byte version, the value or a tombstone stamped
//! with its receive time) plus the guild's floors and member-count state. A
//! tombstone reuses the value's space, so deletes cost no extra memory.
//! Rules: see [`crate::Mutation`].

use crate::delivery::Deliveries;
use crate::model::{
    Channel, Emoji, Entity, GuildCore, GuildView, KINDS, Kind, Member, Presence, Role, User,
    Versioned, VoiceState,
};
use crate::mutation::{Mutation, Snapshot};
use crate::snowflake::IdMap;
use crate::store::{DELIVERY_WINDOW, MAX_COUNT_DELTAS, Step, Store, StoreError};
use crate::users::Users;
use envelope::Version;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

mod stats;
pub use stats::CacheStats;

/// A live value or a tombstone (receive time of the delete, unix ms).
#[derive(Debug, Clone)]
enum Entry<T> {
    Live(T),
    Dead(u64),
}

#[derive(Debug, Clone)]
struct Slot<T> {
    version: Version,
    entry: Entry<T>,
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
struct GuildSlot {
    /// The shard whose events admitted the guild (see [`Store::admit`]).
    shard: Option<u32>,
    /// Version of the last applied snapshot or removal.
    floor: Version,
    /// Per-kind floors (index: [`Kind::index`]).
    floors: [Version; KINDS],
    core: Option<Slot<GuildCore>>,
    available: (Version, bool),
    count_base: i64,
    count_mark: Version,
    deltas: BTreeMap<Version, i8>,
    channels: IdMap<Slot<Channel>>,
    roles: IdMap<Slot<Role>>,
    members: IdMap<Slot<Member>>,
    emojis: IdMap<Slot<Emoji>>,
    presences: IdMap<Slot<Presence>>,
    voice: IdMap<Slot<VoiceState>>,
}

impl GuildSlot {
    fn put(&mut self, id: u64, version: Version, entity: Entity) -> bool {
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

    fn delete(&mut self, kind: Kind, id: u64, version: Version, at_ms: u64) -> bool {
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
    fn raise(&mut self, kind: Kind, version: Version) -> bool {
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

    fn set_count(&mut self, version: Version, count: i64) {
        if version > self.count_mark {
            self.count_mark = version;
            self.count_base = count;
            self.deltas.retain(|v, _| *v > version);
        }
    }

    /// Folds the older half of the member-count deltas into the base and
    /// moves the mark past them, bounding memory during a long session.
    fn fold_deltas(&mut self) {
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
    fn remove(&mut self, version: Version, at_ms: u64) -> bool {
        let applied = version > self.floor;
        if applied {
            self.floor = version;
        }
        for kind in Kind::ALL {
            self.raise(kind, version);
        }
        self.set_count(version, 0);
        self.set_core(version, Entry::Dead(at_ms));
        applied
    }

    fn set_core(&mut self, version: Version, entry: Entry<GuildCore>) -> bool {
        match &self.core {
            Some(s) if s.version >= version => false,
            _ => {
                self.core = Some(Slot { version, entry });
                true
            }
        }
    }

    fn snapshot(&mut self, s: Snapshot) -> bool {
        let v = s.version;
        let applied = v > self.floor;
        if applied {
            self.floor = v;
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

    fn view(&self) -> Option<GuildView> {
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

    fn collect(&mut self, cutoff_ms: u64) -> usize {
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

/// The latest READY of a shard: its version and the guilds it listed.
#[derive(Debug)]
struct ReadyRecord {
    version: Version,
    at_ms: u64,
    listed: IdMap<()>,
}

#[derive(Debug)]
struct State {
    guilds: IdMap<GuildSlot>,
    ready: HashMap<u32, ReadyRecord>,
    users: Users,
    deliveries: Deliveries,
}

impl State {
    /// READY of `shard` at `version`: the listed guilds are unavailable
    /// until their GUILD_CREATE; every other guild of the shard the cache
    /// holds was left while the worker was not looking, and is removed as of
    /// `version`. Only the newest READY of a shard is kept.
    fn ready(&mut self, shard: u32, version: Version, at_ms: u64, guilds: Vec<u64>) -> bool {
        if self.ready.get(&shard).is_some_and(|r| r.version >= version) {
            return false;
        }
        let listed: IdMap<()> = guilds.iter().map(|&g| (g, ())).collect();
        for &g in &guilds {
            let slot = self.guilds.entry(g).or_default();
            slot.shard = Some(shard);
            if version > slot.available.0 {
                slot.available = (version, false);
            }
        }
        for (id, slot) in self.guilds.iter_mut() {
            if slot.shard == Some(shard) && !listed.contains_key(id) {
                slot.remove(version, at_ms);
            }
        }
        self.ready.insert(
            shard,
            ReadyRecord {
                version,
                at_ms,
                listed,
            },
        );
        true
    }

    /// Applies one mutation; see [`Store::apply`].
    fn apply(&mut self, mutation: Mutation) -> bool {
        match mutation {
            Mutation::Snapshot(s) => self.guilds.entry(s.guild_id).or_default().snapshot(*s),
            Mutation::List {
                guild_id,
                version,
                kind,
                items,
            } => {
                let g = self.guilds.entry(guild_id).or_default();
                if version < g.floors[kind.index()] {
                    return false;
                }
                let mut changed = g.raise(kind, version);
                for (id, entity) in items {
                    if entity.kind() == kind {
                        changed |= g.put(id, version, entity);
                    }
                }
                changed
            }
            Mutation::Remove {
                guild_id,
                version,
                at_ms,
            } => self
                .guilds
                .entry(guild_id)
                .or_default()
                .remove(version, at_ms),
            Mutation::Ready {
                shard_id,
                version,
                at_ms,
                guilds,
            } => self.ready(shard_id, version, at_ms, guilds),
            Mutation::Availability {
                guild_id,
                version,
                available,
            } => {
                let g = self.guilds.entry(guild_id).or_default();
                if version > g.available.0 {
                    g.available = (version, available);
                    true
                } else {
                    false
                }
            }
            Mutation::Core {
                guild_id,
                version,
                core,
            } => self
                .guilds
                .entry(guild_id)
                .or_default()
                .set_core(version, Entry::Live(core)),
            Mutation::Put {
                guild_id,
                version,
                id,
                entity,
            } => self
                .guilds
                .entry(guild_id)
                .or_default()
                .put(id, version, entity),
            Mutation::Delete {
                guild_id,
                version,
                kind,
                id,
                at_ms,
            } => self
                .guilds
                .entry(guild_id)
                .or_default()
                .delete(kind, id, version, at_ms),
            Mutation::MemberDelta {
                guild_id,
                version,
                delta,
            } => {
                let g = self.guilds.entry(guild_id).or_default();
                let fresh = version > g.count_mark && g.deltas.insert(version, delta).is_none();
                if g.deltas.len() > MAX_COUNT_DELTAS {
                    g.fold_deltas();
                }
                fresh
            }
            Mutation::User { id, version, user } => self.users.put(id, version, user),
        }
    }

    /// First sight of `guild` from `shard`: if that shard's READY did not
    /// list it, the guild was not the bot's as of that READY, so the removal
    /// READY implies is applied before any write (older writes then lose,
    /// newer ones, e.g. a later join, win). Order-independent with
    /// [`State::ready`].
    fn admit(&mut self, shard: u32, guild: u64) {
        let slot = self.guilds.entry(guild).or_default();
        if slot.shard.is_some() {
            return;
        }
        slot.shard = Some(shard);
        if let Some(r) = self.ready.get(&shard)
            && !r.listed.contains_key(&guild)
        {
            slot.remove(r.version, r.at_ms);
        }
    }
}

/// The in-process versioned cache.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                guilds: IdMap::default(),
                ready: HashMap::new(),
                users: Users::default(),
                deliveries: Deliveries::new(DELIVERY_WINDOW),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave a half-applied mutation behind
        // (each is applied under one lock), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a mutation synchronously; see [`Store::apply`].
    pub fn apply_now(&self, mutation: Mutation) -> bool {
        self.lock().apply(mutation)
    }

    /// Runs a batch of steps under one lock; see [`Store::run`].
    pub fn run_now(&self, steps: Vec<Step>) -> Vec<bool> {
        let mut st = self.lock();
        steps
            .into_iter()
            .map(|step| match step {
                Step::Admit { shard_id, guild_id } => {
                    st.admit(shard_id, guild_id);
                    true
                }
                Step::Apply(m) => st.apply(m),
                Step::FirstDelivery { shard_id, version } => st.deliveries.first(shard_id, version),
            })
            .collect()
    }

    /// Number of cached users.
    pub fn user_count(&self) -> usize {
        self.lock().users.len()
    }

    /// Drops tombstones deleted before `cutoff_ms` (unix ms). Returns how
    /// many. A redelivery older than that horizon could then resurrect an
    /// entity, so the horizon must exceed the longest redelivery delay.
    pub fn collect_tombstones(&self, cutoff_ms: u64) -> usize {
        let mut st = self.lock();
        st.guilds.values_mut().map(|g| g.collect(cutoff_ms)).sum()
    }

    /// Number of guilds with a live core (known and not removed).
    pub fn guild_count(&self) -> usize {
        self.lock()
            .guilds
            .values()
            .filter(|g| {
                matches!(
                    g.core,
                    Some(Slot {
                        entry: Entry::Live(_),
                        ..
                    })
                )
            })
            .count()
    }

    /// Ids of every guild slot, for dumps and tests.
    pub fn guild_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock().guilds.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The guild's canonical view, synchronously.
    pub fn guild_now(&self, guild_id: u64) -> Option<GuildView> {
        self.lock().guilds.get(&guild_id).and_then(GuildSlot::view)
    }
}

impl Store for MemoryStore {
    async fn apply(&self, mutation: Mutation) -> Result<bool, StoreError> {
        Ok(self.apply_now(mutation))
    }

    async fn run(&self, steps: Vec<Step>) -> Result<Vec<bool>, StoreError> {
        Ok(self.run_now(steps))
    }

    async fn first_delivery(&self, shard_id: u32, version: Version) -> Result<bool, StoreError> {
        Ok(self.lock().deliveries.first(shard_id, version))
    }

    async fn admit(&self, shard_id: u32, guild_id: u64) -> Result<(), StoreError> {
        self.lock().admit(shard_id, guild_id);
        Ok(())
    }

    async fn guild(&self, guild_id: u64) -> Result<Option<GuildView>, StoreError> {
        Ok(self.guild_now(guild_id))
    }

    async fn user(&self, user_id: u64) -> Result<Option<User>, StoreError> {
        Ok(self.lock().users.get(user_id).cloned())
    }

    async fn member(
        &self,
        guild_id: u64,
        user_id: u64,
    ) -> Result<Option<Versioned<Member>>, StoreError> {
        let st = self.lock();
        let Some(g) = st.guilds.get(&guild_id) else {
            return Ok(None);
        };
        if !matches!(
            &g.core,
            Some(Slot {
                entry: Entry::Live(_),
                ..
            })
        ) {
            return Ok(None);
        }
        Ok(g.members.get(&user_id).and_then(|s| match &s.entry {
            Entry::Live(m) => Some(Versioned {
                version: s.version,
                value: m.clone(),
            }),
            Entry::Dead(_) => None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Channel;

    fn put(seq: u64, name: &str) -> Mutation {
        Mutation::Put {
            guild_id: 1,
            version: Version::new(1, seq),
            id: 7,
            entity: Entity::Channel(Channel {
                kind: 0,
                name: Some(name.into()),
                position: 0,
                parent_id: None,
            }),
        }
    }

    #[test]
    fn tombstones_block_old_writes_until_collected() {
        let s = MemoryStore::new();
        assert!(s.apply_now(put(2, "a")));
        assert!(s.apply_now(Mutation::Delete {
            guild_id: 1,
            version: Version::new(1, 3),
            kind: Kind::Channel,
            id: 7,
            at_ms: 100,
        }));
        assert!(!s.apply_now(put(1, "older")));
        assert_eq!(s.collect_tombstones(100), 0);
        assert!(!s.apply_now(put(2, "dup")));
        assert_eq!(s.collect_tombstones(101), 1);
        // Past the horizon a very late write is accepted again: the horizon
        // must exceed the longest redelivery delay.
        assert!(s.apply_now(put(1, "late")));
        assert_eq!(s.guild_now(1).map(|g| g.channels.len()), Some(1));
    }
}
