//! Where sessions live between processes: files by default.
//!
//! Peers save sessions only on SIGINT, and Kubernetes stops pods with
//! SIGTERM; a session saved only at shutdown is also lost on a crash. So
//! stores are written whenever the session changes in a way worth keeping,
//! which makes two properties essential: a write is atomic (a crash mid-write
//! leaves the previous session, never half a file) and one shard's write
//! never waits for, or risks, another shard's.
//!
//! # Algorithm
//! [`FileSessionStore`] keeps one file per shard, `shard-<id>.json`, in its
//! directory. One file per shard (rather than one for all) means 36 shards
//! save concurrently without a lock or a rewrite of everyone's state, and a
//! corrupt file costs one shard an identify, not the whole pod. A save
//! writes a temporary file in the same directory, `fsync`s it, renames it
//! over the old one (atomic on POSIX) and `fsync`s the directory so the
//! rename itself survives a power loss. Blocking file I/O runs on tokio's
//! blocking pool.
//!
//! [`load_session`] is the one place stored bytes become a [`Session`]: every
//! store's bytes get the same checks ([`Session::decode`]), and a rejection
//! is logged with its reason and treated as "no session".

use crate::session::{Session, SessionOwner};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A store failed (I/O or network). Loading treats it as "no session";
/// saving logs it and retries at the next change.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("session store in Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("session store task failed: {0}")]
    Task(String),
}

/// Raw session bytes by shard id. Implementations only move bytes; the
/// checks live in [`load_session`].
pub trait SessionStore: Send + Sync + 'static {
    /// The stored bytes of `shard_id`, if any.
    fn load(
        &self,
        shard_id: u32,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Replaces the stored bytes of `shard_id`, atomically.
    fn save(
        &self,
        shard_id: u32,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets `shard_id`'s session.
    fn remove(&self, shard_id: u32) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Loads and checks `shard_id`'s session. Every problem is logged and means
/// "no session": the shard identifies instead.
pub async fn load_session<S: SessionStore>(
    store: &S,
    owner: &SessionOwner,
    shard_id: u32,
) -> Option<Session> {
    let bytes = match store.load(shard_id).await {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(shard_id, error = %e, "cannot read the stored session; identifying");
            metrics::counter!("sharder_session_load_errors_total").increment(1);
            return None;
        }
    };
    match Session::decode(&bytes, owner, shard_id) {
        Ok(s) => Some(s),
        Err(reason) => {
            tracing::warn!(shard_id, %reason, "ignoring the stored session; identifying");
            metrics::counter!("sharder_session_rejected_total").increment(1);
            None
        }
    }
}

/// Saves `session`, logging a failure (the next change saves again).
pub async fn save_session<S: SessionStore>(store: &S, session: &Session) -> bool {
    match store.save(session.shard_id, session.encode()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(shard_id = session.shard_id, error = %e, "cannot save the session");
            metrics::counter!("sharder_session_save_errors_total").increment(1);
            false
        }
    }
}

/// Sessions as one file per shard in a directory.
#[derive(Debug, Clone)]
pub struct FileSessionStore {
    dir: PathBuf,
}

impl FileSessionStore {
    /// A store in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file of `shard_id`.
    pub fn path(&self, shard_id: u32) -> PathBuf {
        self.dir.join(format!("shard-{shard_id}.json"))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("shard");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        // Persist the rename itself.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl SessionStore for FileSessionStore {
    async fn load(&self, shard_id: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(shard_id);
        blocking(move || match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
            // A FIFO or device here would block the shard's start forever.
            Ok(m) if !m.is_file() => Err(io_err(&path)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file; remove it",
            ))),
            Ok(_) => {
                // Bounded even if the file grows after the check: one byte
                // over the limit is enough to be rejected as too large.
                use std::io::Read;
                let limit = crate::session::MAX_SESSION_BYTES as u64 + 1;
                let mut bytes = Vec::new();
                std::fs::File::open(&path)
                    .and_then(|f| f.take(limit).read_to_end(&mut bytes))
                    .map_err(io_err(&path))?;
                Ok(Some(bytes))
            }
        })
        .await
    }

    async fn save(&self, shard_id: u32, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (dir, path) = (self.dir.clone(), self.path(shard_id));
        blocking(move || write_atomically(&dir, &path, &bytes)).await
    }

    async fn remove(&self, shard_id: u32) -> Result<(), StoreError> {
        let path = self.path(shard_id);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::Secret;

    pub(crate) struct TempDir(pub PathBuf);
    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = std::env::temp_dir().join(format!(
                "bulwark-sharder-{name}-{}-{nanos}",
                std::process::id()
            ));
            Self(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn session(owner: &SessionOwner, shard: u32) -> Session {
        let mut s = Session::new(owner, shard, "sid".into(), "wss://r.example".into(), 3);
        s.seq = 99;
        s.guilds.available = vec![5, 6];
        s
    }

    #[tokio::test]
    async fn save_load_and_reject_bad_files() {
        let dir = TempDir::new("files");
        let store = FileSessionStore::new(dir.0.join("nested"));
        let owner = SessionOwner::new(&Secret::new("tok"), 8);
        assert_eq!(load_session(&store, &owner, 1).await, None, "nothing yet");

        let s = session(&owner, 1);
        assert!(save_session(&store, &s).await);
        assert_eq!(load_session(&store, &owner, 1).await, Some(s.clone()));
        // Overwrite leaves no temp file behind.
        let mut s2 = s.clone();
        s2.seq = 100;
        assert!(save_session(&store, &s2).await);
        assert_eq!(load_session(&store, &owner, 1).await.unwrap().seq, 100);
        let names: Vec<_> = std::fs::read_dir(dir.0.join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["shard-1.json".to_owned()]);

        // Another bot's token: ignored.
        let foreign = SessionOwner::new(&Secret::new("other"), 8);
        assert_eq!(load_session(&store, &foreign, 1).await, None);
        // Corrupt, truncated, empty files: ignored, no panic.
        let path = store.path(1);
        let good = std::fs::read(&path).unwrap();
        for bad in [
            &good[..good.len() / 2],
            b"".as_slice(),
            b"\0\0\0\0".as_slice(),
            b"{\"format\":1}".as_slice(),
            b"[1,2,3]".as_slice(),
        ] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(load_session(&store, &owner, 1).await, None, "{bad:?}");
        }
        // A file of shard 1 renamed to shard 2 is not shard 2's session.
        std::fs::write(store.path(2), &good).unwrap();
        assert_eq!(load_session(&store, &owner, 2).await, None);

        store.remove(1).await.unwrap();
        store.remove(1).await.unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn unwritable_directory_is_an_error_not_a_panic() {
        let dir = TempDir::new("unwritable");
        std::fs::create_dir_all(&dir.0).unwrap();
        // A file where the directory should be.
        let blocker = dir.0.join("blocker");
        std::fs::write(&blocker, b"x").unwrap();
        let store = FileSessionStore::new(&blocker);
        let owner = SessionOwner::new(&Secret::new("tok"), 8);
        assert!(!save_session(&store, &session(&owner, 0)).await);
        assert!(store.load(0).await.is_err());
        assert_eq!(load_session(&store, &owner, 0).await, None);
    }

    #[tokio::test]
    async fn a_fifo_or_a_huge_file_is_refused_without_blocking() {
        let dir = TempDir::new("fifo");
        let store = FileSessionStore::new(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let owner = SessionOwner::new(&Secret::new("tok"), 8);
        // A FIFO nobody writes to: opening it for reading would block.
        let made = std::process::Command::new("mkfifo")
            .arg(store.path(3))
            .status()
            .unwrap();
        assert!(made.success());
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), store.load(3))
            .await
            .expect("a FIFO must not block the load")
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(load_session(&store, &owner, 3).await, None);
        // A huge file is read only one byte past the bound.
        std::fs::write(
            store.path(4),
            vec![b' '; crate::session::MAX_SESSION_BYTES * 2],
        )
        .unwrap();
        let bytes = store.load(4).await.unwrap().unwrap();
        assert_eq!(bytes.len(), crate::session::MAX_SESSION_BYTES + 1);
        assert_eq!(load_session(&store, &owner, 4).await, None);
    }
}
