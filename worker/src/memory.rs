//! The in-memory store: the default, for a worker that owns its partitions.
//!
//! Layout: one map of guild slots; each slot holds typed maps of compact
//! entities (`u64` key, 16-byte version, the value or a tombstone stamped
//! with its receive time) plus the guild's floors and member-count state. A
//! tombstone reuses the value's space, so deletes cost no extra memory.
//! Rules: see [`crate::Mutation`].

use crate::delivery::Deliveries;
use crate::model::{GuildView, Member, User, Versioned};
use crate::mutation::Mutation;
use crate::reshard::Pairs;
use crate::snowflake::IdMap;
use crate::store::{DELIVERY_WINDOW, MAX_COUNT_DELTAS, Step, Store, StoreError};
use crate::users::Users;
use envelope::{ReshardMarker, ShardRef, Version};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

mod guild;
mod stats;
use guild::{Entry, GuildSlot, Slot};
pub use stats::CacheStats;

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
    ready: HashMap<ShardRef, ReadyRecord>,
    users: Users,
    /// The bot's own user ids (from READY): never collected.
    bots: IdMap<()>,
    deliveries: Deliveries,
    /// The newest reshard marker and the copies it pairs.
    reshard: Option<ReshardMarker>,
    pairs: Pairs,
}

impl State {
    /// READY of `shard` at `version`: the listed guilds are unavailable
    /// until their GUILD_CREATE; every other guild of the shard the cache
    /// holds was left while the worker was not looking, and is removed as of
    /// `version`. Only the newest READY of a shard is kept.
    fn ready(
        &mut self,
        shard: ShardRef,
        version: Version,
        at_ms: u64,
        guilds: Vec<u64>,
        handover: bool,
    ) -> bool {
        let previous = self.ready.get(&shard);
        if previous.is_some_and(|r| r.version >= version) {
            return false;
        }
        let listed: IdMap<()> = guilds.iter().map(|&g| (g, ())).collect();
        for &g in &guilds {
            let unlisted_before = previous.is_some_and(|r| !r.listed.contains_key(&g));
            let slot = self.guilds.entry(g).or_default();
            slot.shard = Some(shard);
            slot.listed(version, unlisted_before, !handover);
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
                shard,
                version,
                at_ms,
                guilds,
                bot_id,
                handover,
            } => {
                if let Some(id) = bot_id {
                    self.bots.insert(id, ());
                }
                self.ready(shard, version, at_ms, guilds, handover)
            }
            Mutation::Availability {
                guild_id,
                version,
                available,
            } => {
                let g = self.guilds.entry(guild_id).or_default();
                if version > g.available.0 {
                    g.available = (version, available);
                    g.remember(version);
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

    /// Keeps `marker` as the window when newer; `true` when it was.
    fn mark(&mut self, marker: ReshardMarker) -> bool {
        let key = |m: &ReshardMarker| (m.id, m.phase);
        if self
            .reshard
            .as_ref()
            .is_some_and(|r| key(r) >= key(&marker))
        {
            return false;
        }
        self.reshard = Some(marker);
        true
    }

    /// First sight of `guild` from `shard`: if that shard's READY did not
    /// list it, the guild was not the bot's as of that READY, so the removal
    /// READY implies is applied before any write (older writes then lose,
    /// newer ones, e.g. a later join, win). Order-independent with
    /// [`State::ready`].
    fn admit(&mut self, shard: ShardRef, guild: u64) {
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
                bots: IdMap::default(),
                deliveries: Deliveries::new(DELIVERY_WINDOW),
                reshard: None,
                pairs: Pairs::default(),
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
                Step::Admit { shard, guild_id } => {
                    st.admit(shard, guild_id);
                    true
                }
                Step::Apply(m) => st.apply(m),
                Step::FirstDelivery { shard, version } => st.deliveries.first(shard, version),
                Step::Announced { guild_id, version } => st
                    .guilds
                    .get(&guild_id)
                    .is_some_and(|g| g.announced(version)),
                Step::GapJoin { guild_id, version } => st
                    .guilds
                    .get(&guild_id)
                    .is_some_and(|g| g.is_gap_join(version)),
                Step::Marker(m) => st.mark(m),
                Step::Pair {
                    guild_id,
                    total,
                    fingerprint,
                    at_ms,
                } => st.pairs.pair(guild_id, total, fingerprint, at_ms),
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

    /// Drops the users no cached member refers to (and that are not the
    /// bot), unless written at or after `cutoff_ms` (unix ms, their
    /// `received_at`). Returns how many. The cutoff protects a user written
    /// just before its member (GUILD_CREATE writes users first); like the
    /// tombstone horizon, it must exceed the longest redelivery delay, or a
    /// very late write could bring back an unreferenced user.
    pub fn collect_users(&self, cutoff_ms: u64) -> usize {
        let mut st = self.lock();
        let State {
            guilds,
            users,
            bots,
            ..
        } = &mut *st;
        let mut referenced: IdMap<()> = IdMap::default();
        for g in guilds.values() {
            referenced.extend(g.live_member_ids().map(|id| (id, ())));
        }
        users.retain(|id, v| {
            referenced.contains_key(&id) || bots.contains_key(&id) || v.received_at >= cutoff_ms
        })
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

    async fn first_delivery(&self, shard: ShardRef, version: Version) -> Result<bool, StoreError> {
        Ok(self.lock().deliveries.first(shard, version))
    }

    async fn admit(&self, shard: ShardRef, guild_id: u64) -> Result<(), StoreError> {
        self.lock().admit(shard, guild_id);
        Ok(())
    }

    async fn guild(&self, guild_id: u64) -> Result<Option<GuildView>, StoreError> {
        Ok(self.guild_now(guild_id))
    }

    async fn collect_users(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        Ok(MemoryStore::collect_users(self, cutoff_ms))
    }

    async fn announced(&self, guild_id: u64, version: Version) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .guilds
            .get(&guild_id)
            .is_some_and(|g| g.announced(version)))
    }

    async fn gap_join(&self, guild_id: u64, version: Version) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .guilds
            .get(&guild_id)
            .is_some_and(|g| g.is_gap_join(version)))
    }

    async fn reshard_mark(&self, marker: ReshardMarker) -> Result<bool, StoreError> {
        Ok(self.lock().mark(marker))
    }

    async fn reshard_window(&self) -> Result<Option<ReshardMarker>, StoreError> {
        Ok(self.lock().reshard)
    }

    async fn pair(
        &self,
        guild_id: u64,
        total: u32,
        fingerprint: u64,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.lock().pairs.pair(guild_id, total, fingerprint, at_ms))
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
    use crate::model::{Channel, Entity, Kind};

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
