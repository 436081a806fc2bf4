//! Sizes of the in-memory cache, for `/v1/stats` and the cache gauges.
//!
//! Counts are entries held, tombstones included (they occupy the same
//! slot). Bytes are an estimate from the layouts (slot size plus key and
//! control byte per hash-table entry, the user table's records and index,
//! member role slices), not an allocator measurement: cheap enough to
//! compute on every scrape. Against the counting allocator
//! (`benches/compare.rs`) it is within about 15 % of the real heap bytes;
//! the tables' fill varies with where they are in their doubling cycle.

use super::{MemoryStore, Slot};
use crate::model::VoiceState;
use crate::model::{Channel, Emoji, GuildCore, Member, Presence, Role, User, UserVersion};
use std::mem::size_of;

/// Entry counts and an estimate of the bytes they occupy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub guilds: u64,
    pub channels: u64,
    pub roles: u64,
    pub members: u64,
    pub emojis: u64,
    pub presences: u64,
    pub voice_states: u64,
    pub users: u64,
    pub bytes_estimate: u64,
}

/// Bytes of one hash-table entry holding `V` under a u64 key. Tables
/// double when 7/8 full, so their load runs from 7/16 to 7/8; 5/8 is the
/// typical middle (calibrated against the counting allocator in
/// `benches/compare.rs`).
fn entry<V>() -> u64 {
    ((size_of::<V>() + 8 + 1) * 8 / 5) as u64
}

impl MemoryStore {
    /// Entry counts and estimated bytes, under the lock (one pass over the
    /// guilds, not over their members).
    pub fn stats(&self) -> CacheStats {
        let st = self.lock();
        let mut s = CacheStats {
            guilds: st.guilds.len() as u64,
            users: st.users.len() as u64,
            ..CacheStats::default()
        };
        let mut bytes = s.guilds * (entry::<super::GuildSlot>() + size_of::<GuildCore>() as u64);
        for g in st.guilds.values() {
            let n = |len: usize| len as u64;
            s.channels += n(g.channels.len());
            s.roles += n(g.roles.len());
            s.members += n(g.members.len());
            s.emojis += n(g.emojis.len());
            s.presences += n(g.presences.len());
            s.voice_states += n(g.voice.len());
            bytes += n(g.channels.len()) * entry::<Slot<Channel>>()
                + n(g.roles.len()) * entry::<Slot<Role>>()
                + n(g.members.len()) * (entry::<Slot<Member>>() + 16)
                + n(g.emojis.len()) * entry::<Slot<Emoji>>()
                + n(g.presences.len()) * entry::<Slot<Presence>>()
                + n(g.voice.len()) * entry::<Slot<VoiceState>>();
        }
        // The user vector doubles too: ~3/4 full on average.
        bytes += s.users * (size_of::<(UserVersion, User)>() as u64 * 4 / 3 + entry::<u32>());
        s.bytes_estimate = bytes;
        s
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Entity, Member};
    use crate::{MemoryStore, Mutation};
    use envelope::Version;

    #[test]
    fn counts_follow_writes() {
        let s = MemoryStore::new();
        assert_eq!(s.stats().members, 0);
        for id in 1..=3 {
            s.apply_now(Mutation::Put {
                guild_id: 9,
                version: Version::new(1, id),
                id,
                entity: Entity::Member(Member {
                    nick: None,
                    roles: Box::new([]),
                }),
            });
        }
        let st = s.stats();
        assert_eq!((st.guilds, st.members, st.channels), (1, 3, 0));
        assert!(st.bytes_estimate > 3 * 32, "{st:?}");
    }
}
