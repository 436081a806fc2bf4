//! Sessions in Redis, for pods without a persistent volume.
//!
//! In Kubernetes a sharder pod may come back on another node; a Redis store
//! lets the new pod resume where the old one stopped.
//!
//! # Algorithm
//! One string key per shard and generation,
//! `{prefix}:session:{total_shards}:{shard_id}` (builds before live
//! resharding used `{prefix}:session:{shard_id}`, the legacy key
//! [`crate::load_session`] migrates), replaced with a single
//! `SET ... PX ttl` (atomic in Redis, so a reader never sees half a
//! session). The TTL (default one day) only collects sessions of shards no
//! longer run: Discord invalidates a session within minutes anyway, and the
//! running shard rewrites its key on every save. The checks on the bytes are
//! the same as for files ([`crate::load_session`]).
//!
//! Retiring a generation of `N` shards deletes its keys by name,
//! `{prefix}:session:{N}:0` to `{prefix}:session:{N}:{N-1}`, in `DEL`s of
//! [`RETIRE_BATCH`] keys: the shard ids of a generation are known, so no
//! `SCAN` of the keyspace (and no glob over a prefix that may hold `*`) is
//! needed, and `DEL`'s answer counts exactly the sessions removed.

use crate::session_store::{SessionKey, SessionStore, StoreError};
use std::time::Duration;

/// Keys per `DEL` when a generation retires: one round trip per thousand
/// shards, each command small enough not to stall Redis.
const RETIRE_BATCH: u32 = 1000;

/// Sessions as Redis strings.
#[derive(Clone)]
pub struct RedisSessionStore {
    conn: dnscache::RedisConnection,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl RedisSessionStore {
    /// A store under `prefix` whose keys expire `ttl` after their last save.
    pub fn new(conn: dnscache::RedisConnection, prefix: impl Into<String>, ttl: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            ttl,
        }
    }

    /// The connection, shared with the cluster's reshard state.
    pub(crate) fn connection(&self) -> &dnscache::RedisConnection {
        &self.conn
    }

    /// The key of the generation record ([`crate::GenerationRecord`]).
    pub fn generation_key(&self) -> String {
        format!("{}:generation", self.prefix)
    }

    /// The Redis key of `key`.
    pub fn redis_key(&self, key: SessionKey) -> String {
        match key {
            SessionKey::Generation {
                total_shards,
                shard_id,
            } => format!("{}:session:{total_shards}:{shard_id}", self.prefix),
            SessionKey::Legacy { shard_id } => format!("{}:session:{shard_id}", self.prefix),
        }
    }
}

impl SessionStore for RedisSessionStore {
    async fn load(&self, key: SessionKey) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.redis_key(key))
            .query_async(&mut conn)
            .await?)
    }

    async fn save(&self, key: SessionKey, bytes: Vec<u8>) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let px = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        redis::cmd("SET")
            .arg(self.redis_key(key))
            .arg(bytes)
            .arg("PX")
            .arg(px)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn remove(&self, key: SessionKey) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.redis_key(key))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn load_generation(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.generation_key())
            .query_async(&mut conn)
            .await?)
    }

    /// Kept without expiry: it outlives every session.
    async fn save_generation(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.generation_key())
            .arg(bytes)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn retire_generation(&self, total_shards: u32) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let mut removed = 0u64;
        let mut start = 0u32;
        while start < total_shards {
            let end = start.saturating_add(RETIRE_BATCH).min(total_shards);
            let mut del = redis::cmd("DEL");
            for shard_id in start..end {
                del.arg(self.redis_key(SessionKey::shard(total_shards, shard_id)));
            }
            removed += del.query_async::<u64>(&mut conn).await?;
            start = end;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Session;
    use crate::session_store::tests::{
        generations_coexist_contract, legacy_is_migrated_contract, owner, retire_contract,
    };
    use crate::session_store::{load_session, save_session};

    fn store(name: &str) -> RedisSessionStore {
        let conn = dnscache::RedisConnection::with_client(
            redis::Client::open("redis://127.0.0.1:6379/").unwrap(),
            redis::AsyncConnectionConfig::new(),
        );
        let prefix = testkit::unique_name(&format!("sessions-{name}"));
        RedisSessionStore::new(conn, prefix, Duration::from_secs(60))
    }

    async fn exists(store: &RedisSessionStore, key: SessionKey) -> bool {
        redis::cmd("EXISTS")
            .arg(store.redis_key(key))
            .query_async::<bool>(&mut store.conn.clone())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn round_trip_and_corrupt_values() {
        let store = store("round-trip");
        let owner4 = owner(4);
        let key = SessionKey::shard(4, 0);
        assert_eq!(
            store.redis_key(key),
            format!("{}:session:4:0", store.prefix)
        );
        assert_eq!(load_session(&store, &owner4, 0).await, None);
        let mut s = Session::new(&owner4, 0, "sid".into(), "wss://r.example".into(), 11);
        s.seq = 5;
        s.guilds.unavailable = vec![77];
        assert!(save_session(&store, &s).await);
        assert_eq!(load_session(&store, &owner4, 0).await, Some(s.clone()));
        assert_eq!(
            load_session(&store, &owner(8), 0).await,
            None,
            "another shard count"
        );

        let mut conn = store.conn.clone();
        for bad in [&b""[..], b"{\"format\":1,", b"\xff\xfe", b"42"] {
            redis::cmd("SET")
                .arg(store.redis_key(key))
                .arg(bad)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
            assert_eq!(load_session(&store, &owner4, 0).await, None, "{bad:?}");
        }
        // A wrong Redis type is a store error, still no session.
        store.remove(key).await.unwrap();
        redis::cmd("LPUSH")
            .arg(store.redis_key(key))
            .arg("x")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        assert!(store.load(key).await.is_err());
        assert_eq!(load_session(&store, &owner4, 0).await, None);
        store.remove(key).await.unwrap();
        let ttl: i64 = {
            save_session(&store, &s).await;
            redis::cmd("PTTL")
                .arg(store.redis_key(key))
                .query_async(&mut conn)
                .await
                .unwrap()
        };
        assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
        store.remove(key).await.unwrap();
    }

    #[tokio::test]
    async fn generations_of_one_shard_coexist_in_redis() {
        let store = store("generations");
        generations_coexist_contract(&store).await;
        assert!(
            !exists(&store, SessionKey::shard(128, 3)).await,
            "cleaned up"
        );
    }

    #[tokio::test]
    async fn a_legacy_key_is_read_and_migrated() {
        let store = store("legacy");
        let legacy = SessionKey::Legacy { shard_id: 5 };
        assert_eq!(
            store.redis_key(legacy),
            format!("{}:session:5", store.prefix),
            "where builds before per-generation keys saved"
        );
        legacy_is_migrated_contract(&store).await;
        assert!(!exists(&store, legacy).await);
        assert!(!exists(&store, SessionKey::shard(64, 5)).await);
    }

    #[tokio::test]
    async fn retiring_a_generation_removes_only_its_keys() {
        let store = store("retire");
        retire_contract(&store).await;
        // Several DEL batches: a generation larger than one batch.
        let big = owner(RETIRE_BATCH + 5);
        for shard in [0, RETIRE_BATCH - 1, RETIRE_BATCH, RETIRE_BATCH + 4] {
            let s = crate::session_store::tests::session(&big, shard);
            assert!(save_session(&store, &s).await);
        }
        assert_eq!(store.retire_generation(RETIRE_BATCH + 5).await.unwrap(), 4);
        assert!(
            !exists(
                &store,
                SessionKey::shard(RETIRE_BATCH + 5, RETIRE_BATCH + 4)
            )
            .await
        );
    }
}
