//! The world's guilds in a slab, and the set of available ones events pick
//! from.
//!
//! Every dispatch starts by picking a random available guild. Going
//! straight from the pick to the guild's slot, with no hashing, saves a
//! cache miss per event in a world too large for the cache; the id map is
//! only for the lookups by id (snapshots, outages, member requests).
//!
//! # Algorithm
//! A guild keeps its slot for its whole life; a removed guild's slot goes
//! on a free list and is reused by the next guild. `available` lists the
//! slots of available guilds in the order they became available (the
//! order random picks index into, so it must not depend on anything but
//! the seed); `available_pos` maps a slot to its position there, and a
//! removal moves the last entry into the hole.

use super::guild::GuildState;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Not in `available`.
const NOT_AVAILABLE: usize = usize::MAX;

/// A map keyed by snowflake, with [`IdHasher`].
type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// SplitMix64's finaliser over a `u64` key: snowflakes share their low 22
/// bits, so they need real mixing, but not SipHash's cost. No random state,
/// and nothing iterates the map, so output stays seeded.
#[derive(Debug, Clone, Copy, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The guilds, by slot and by id. See the module documentation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Guilds {
    slots: Vec<Option<GuildState>>,
    free: Vec<usize>,
    by_id: IdMap<usize>,
    available: Vec<usize>,
    /// Position of each slot in `available`, or [`NOT_AVAILABLE`].
    available_pos: Vec<usize>,
}

impl Guilds {
    /// Adds an available guild; returns its slot.
    pub(crate) fn insert(&mut self, g: GuildState) -> usize {
        let id = g.fields.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(g);
                slot
            }
            None => {
                self.slots.push(Some(g));
                self.available_pos.push(NOT_AVAILABLE);
                self.slots.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        self.set_available(slot, true);
        slot
    }

    /// Removes the guild in `slot`.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<GuildState> {
        let g = self.slots.get_mut(slot)?.take()?;
        self.set_available(slot, false);
        self.by_id.remove(&g.fields.id);
        self.free.push(slot);
        Some(g)
    }

    /// The slot of guild `id`.
    pub(crate) fn slot(&self, id: u64) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub(crate) fn at(&self, slot: usize) -> Option<&GuildState> {
        self.slots.get(slot)?.as_ref()
    }

    pub(crate) fn at_mut(&mut self, slot: usize) -> Option<&mut GuildState> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub(crate) fn get(&self, id: u64) -> Option<&GuildState> {
        self.at(self.slot(id)?)
    }

    /// Every guild, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &GuildState)> {
        self.slots.iter().flatten().map(|g| (g.fields.id, g))
    }

    /// Available guilds.
    pub(crate) fn available_len(&self) -> usize {
        self.available.len()
    }

    /// The slot of the `i`th available guild.
    pub(crate) fn available_slot(&self, i: usize) -> Option<usize> {
        self.available.get(i).copied()
    }

    /// Adds `slot` to (or removes it from) the available guilds; a no-op
    /// when it already is (is not) there.
    pub(crate) fn set_available(&mut self, slot: usize, available: bool) {
        let Some(&pos) = self.available_pos.get(slot) else {
            return;
        };
        if available && pos == NOT_AVAILABLE {
            self.available_pos[slot] = self.available.len();
            self.available.push(slot);
        } else if !available && pos != NOT_AVAILABLE {
            self.available.swap_remove(pos);
            self.available_pos[slot] = NOT_AVAILABLE;
            if let Some(&moved) = self.available.get(pos) {
                self.available_pos[moved] = pos;
            }
        }
    }
}
