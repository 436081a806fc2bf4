//! Sessions in Redis, for pods without a persistent volume.
//!
//! In Kubernetes a sharder pod may come back on another node; a Redis store
//! lets the new pod resume where the old one stopped.
//!
//! # Algorithm
//! One string key per shard, `{prefix}:session:{shard_id}`, replaced with a
//! single `SET ... PX ttl` (atomic in Redis, so a reader never sees half a
//! session). The TTL (default one day) only collects sessions of shards no
//! longer run: Discord invalidates a session within minutes anyway, and the
//! running shard rewrites its key on every save. The checks on the bytes are
//! the same as for files ([`crate::load_session`]).

use crate::session_store::{SessionStore, StoreError};
use std::time::Duration;

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

    /// The key of `shard_id`.
    pub fn key(&self, shard_id: u32) -> String {
        format!("{}:session:{shard_id}", self.prefix)
    }
}

impl SessionStore for RedisSessionStore {
    async fn load(&self, shard_id: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.key(shard_id))
            .query_async(&mut conn)
            .await?)
    }

    async fn save(&self, shard_id: u32, bytes: Vec<u8>) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let px = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        redis::cmd("SET")
            .arg(self.key(shard_id))
            .arg(bytes)
            .arg("PX")
            .arg(px)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn remove(&self, shard_id: u32) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(shard_id))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Session, SessionOwner};
    use crate::session_store::{load_session, save_session};
    use config::Secret;

    async fn store(name: &str) -> RedisSessionStore {
        let conn = dnscache::RedisConnection::with_client(
            redis::Client::open("redis://127.0.0.1:6379/").unwrap(),
            redis::AsyncConnectionConfig::new(),
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("bulwark-test:{name}:{}:{nanos}", std::process::id());
        RedisSessionStore::new(conn, prefix, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn round_trip_and_corrupt_values() {
        let store = store("sessions").await;
        let owner = SessionOwner::new(&Secret::new("tok"), 4);
        assert_eq!(load_session(&store, &owner, 0).await, None);
        let mut s = Session::new(&owner, 0, "sid".into(), "wss://r.example".into(), 11);
        s.seq = 5;
        s.guilds.unavailable = vec![77];
        assert!(save_session(&store, &s).await);
        assert_eq!(load_session(&store, &owner, 0).await, Some(s.clone()));
        assert_eq!(
            load_session(&store, &SessionOwner::new(&Secret::new("tok"), 8), 0).await,
            None,
            "another shard count"
        );

        let mut conn = store.conn.clone();
        for bad in [&b""[..], b"{\"format\":1,", b"\xff\xfe", b"42"] {
            redis::cmd("SET")
                .arg(store.key(0))
                .arg(bad)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
            assert_eq!(load_session(&store, &owner, 0).await, None, "{bad:?}");
        }
        // A wrong Redis type is a store error, still no session.
        redis::cmd("DEL")
            .arg(store.key(0))
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        redis::cmd("LPUSH")
            .arg(store.key(0))
            .arg("x")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        assert!(store.load(0).await.is_err());
        assert_eq!(load_session(&store, &owner, 0).await, None);
        store.remove(0).await.unwrap();
        let ttl: i64 = {
            save_session(&store, &s).await;
            redis::cmd("PTTL")
                .arg(store.key(0))
                .query_async(&mut conn)
                .await
                .unwrap()
        };
        assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
        store.remove(0).await.unwrap();
    }
}
