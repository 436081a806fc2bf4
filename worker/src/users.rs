//! The in-memory store's user table: one record per user, shared by every
//! guild the user is in.
//!
//! # Algorithm
//!
//! Records live in a dense vector and a hash map keyed by user id holds
//! only their 4-byte index. A hash table runs between 44 % and 87 % full and
//! every bucket is touched, so keeping the 104-byte records out of it
//! (16-byte buckets instead) roughly halves the table's resident size; the
//! vector's spare capacity is never written, so it costs address space,
//! not memory. Writes are last-writer-wins by [`UserVersion`].

use crate::model::{User, UserVersion};
use crate::snowflake::IdMap;

#[derive(Debug, Default)]
pub(crate) struct Users {
    index: IdMap<u32>,
    records: Vec<(UserVersion, User)>,
}

impl Users {
    /// Stores `user` unless a record at least as new exists; `true` if
    /// written. Refuses (returns `false`) past `u32::MAX` users.
    pub(crate) fn put(&mut self, id: u64, version: UserVersion, user: User) -> bool {
        match self.index.get(&id) {
            Some(&i) => match self.records.get_mut(i as usize) {
                Some(slot) if slot.0 < version => {
                    *slot = (version, user);
                    true
                }
                _ => false,
            },
            None => {
                let Ok(i) = u32::try_from(self.records.len()) else {
                    return false;
                };
                self.records.push((version, user));
                self.index.insert(id, i);
                true
            }
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<&User> {
        let i = *self.index.get(&id)?;
        self.records.get(i as usize).map(|(_, u)| u)
    }

    /// Keeps the users for which `keep(id, version)` holds; returns how
    /// many were dropped. Rebuilds the vector and the index (a sweep, run
    /// rarely), so no hole or tombstone is left behind.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u64, &UserVersion) -> bool) -> usize {
        let before = self.records.len();
        let mut old: Vec<Option<(UserVersion, User)>> = std::mem::take(&mut self.records)
            .into_iter()
            .map(Some)
            .collect();
        let mut index = IdMap::default();
        let mut records = Vec::new();
        for (&id, &i) in &self.index {
            let Some(rec) = old.get_mut(i as usize).and_then(Option::take) else {
                continue;
            };
            if keep(id, &rec.0) {
                // `records` is no longer than the old vector, whose indexes fit.
                index.insert(id, u32::try_from(records.len()).unwrap_or(u32::MAX));
                records.push(rec);
            }
        }
        self.index = index;
        self.records = records;
        before - self.records.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envelope::Version;

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            global_name: None,
            avatar: None,
            bot: false,
        }
    }

    fn at(ms: u64) -> UserVersion {
        UserVersion {
            received_at: ms,
            shard_id: 0,
            version: Version::new(1, ms),
        }
    }

    #[test]
    fn last_writer_wins_per_user() {
        let mut u = Users::default();
        assert!(u.put(1, at(5), user("a")));
        assert!(!u.put(1, at(4), user("older")));
        assert!(!u.put(1, at(5), user("dup")));
        assert!(u.put(2, at(1), user("b")));
        assert!(u.put(1, at(6), user("c")));
        assert_eq!(u.get(1).map(|x| x.name.as_str()), Some("c"));
        assert_eq!(u.get(2).map(|x| x.name.as_str()), Some("b"));
        assert!(u.get(3).is_none());
        assert_eq!(u.len(), 2);
    }

    #[test]
    fn retain_rebuilds_a_dense_table() {
        let mut u = Users::default();
        for id in 1..=5 {
            assert!(u.put(id, at(id), user(&format!("u{id}"))));
        }
        assert_eq!(u.retain(|id, _| id % 2 == 1), 2);
        assert_eq!(u.len(), 3);
        for id in [1, 3, 5] {
            assert_eq!(
                u.get(id).map(|x| x.name.to_string()),
                Some(format!("u{id}"))
            );
        }
        assert!(u.get(2).is_none() && u.get(4).is_none());
        // Still writable, last-writer-wins as before.
        assert!(!u.put(3, at(2), user("older")));
        assert!(u.put(2, at(9), user("back")));
        assert_eq!(u.get(2).map(|x| x.name.as_str()), Some("back"));
    }
}
