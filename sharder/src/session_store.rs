//! Where sessions live between processes: files by default.
//!
//! Peers save sessions only on SIGINT, and Kubernetes stops pods with
//! SIGTERM; a session saved only at shutdown is also lost on a crash. So
//! stores are written whenever the session changes in a way worth keeping,
//! which makes two properties essential: a write is atomic (a crash mid-write
//! leaves the previous session, never half a file) and one shard's write
//! never waits for, or risks, another shard's.
//!
//! A live reshard runs two generations at once: shard 3 of 64 and shard 3
//! of 128 are two sessions, both alive until the old generation retires. So
//! a session is stored per generation ([`SessionKey::Generation`]: the
//! shard total and the shard id), and a retired generation's sessions are
//! removed together ([`SessionStore::retire_generation`]).
//!
//! # Algorithm
//! [`FileSessionStore`] keeps one file per shard and generation,
//! `total-<total>/shard-<id>.json`, under its directory. One file per shard
//! (rather than one for all) means 36 shards save concurrently without a
//! lock or a rewrite of everyone's state, and a corrupt file costs one
//! shard an identify, not the whole pod; one directory per generation makes
//! retiring it one `remove_dir_all`. A save writes a temporary file in the
//! same directory, `fsync`s it, renames it over the old one (atomic on
//! POSIX) and `fsync`s the directory so the rename itself survives a power
//! loss (and the parent, when the generation's directory is new). Blocking
//! file I/O runs on tokio's blocking pool.
//!
//! [`load_session`] is the one place stored bytes become a [`Session`]: every
//! store's bytes get the same checks ([`Session::decode`]), and a rejection
//! is logged with its reason and treated as "no session". Builds before
//! per-generation keys stored a shard's session under its id alone
//! ([`SessionKey::Legacy`]); so an upgrade does not cold-boot a running bot,
//! when the generation's key is absent [`load_session`] reads the legacy
//! one, accepts it only when its payload's total is the owner's (the same
//! decode), writes it under the generation's key and deletes the legacy
//! key. Every save goes to the generation's key.

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

/// Where one shard's session is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKey {
    /// Shard `shard_id` of the generation of `total_shards` shards: where
    /// every session is saved.
    Generation { total_shards: u32, shard_id: u32 },
    /// Where builds before per-generation keys saved shard `shard_id`'s
    /// session, whatever its total. Only read (and then migrated) by
    /// [`load_session`].
    Legacy { shard_id: u32 },
}

impl SessionKey {
    /// Shard `shard_id` of the generation of `total_shards` shards.
    pub fn shard(total_shards: u32, shard_id: u32) -> Self {
        Self::Generation {
            total_shards,
            shard_id,
        }
    }

    /// Where `session` is saved.
    pub fn of(session: &Session) -> Self {
        Self::shard(session.total_shards, session.shard_id)
    }

    /// The shard's id.
    pub fn shard_id(self) -> u32 {
        match self {
            Self::Generation { shard_id, .. } | Self::Legacy { shard_id } => shard_id,
        }
    }
}

/// Raw session bytes by [`SessionKey`]. Implementations only move bytes;
/// the checks live in [`load_session`].
pub trait SessionStore: Send + Sync + 'static {
    /// The bytes stored under `key`, if any.
    fn load(
        &self,
        key: SessionKey,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Replaces the bytes stored under `key`, atomically.
    fn save(
        &self,
        key: SessionKey,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets the session under `key`.
    fn remove(&self, key: SessionKey) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets every session of the generation of `total_shards` shards
    /// (its shards have stopped: a reshard retired it), and no other;
    /// answers how many there were. Legacy keys are left alone.
    fn retire_generation(
        &self,
        total_shards: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// The bytes of the generation record (which shard total runs, and a
    /// live reshard in progress: [`crate::GenerationRecord`]), if any. The
    /// default keeps none.
    fn load_generation(&self) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send {
        async { Ok(None) }
    }
    /// Replaces the generation record, atomically. The default keeps none.
    fn save_generation(
        &self,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = bytes;
        async { Ok(()) }
    }
}

/// Loads and checks `shard_id`'s session of `owner`'s generation (falling
/// back to its legacy key, module docs). Every problem is logged and means
/// "no session": the shard identifies instead.
pub async fn load_session<S: SessionStore>(
    store: &S,
    owner: &SessionOwner,
    shard_id: u32,
) -> Option<Session> {
    let key = SessionKey::shard(owner.total_shards, shard_id);
    match store.load(key).await {
        Ok(Some(bytes)) => checked(&bytes, owner, key),
        Ok(None) => load_legacy(store, owner, shard_id).await,
        Err(e) => {
            load_failed(key, &e);
            None
        }
    }
}

/// The session under `shard_id`'s legacy key, moved to its generation's
/// key when it is `owner`'s.
async fn load_legacy<S: SessionStore>(
    store: &S,
    owner: &SessionOwner,
    shard_id: u32,
) -> Option<Session> {
    let legacy = SessionKey::Legacy { shard_id };
    let bytes = match store.load(legacy).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(e) => {
            load_failed(legacy, &e);
            return None;
        }
    };
    let session = checked(&bytes, owner, legacy)?;
    let key = SessionKey::of(&session);
    let total_shards = session.total_shards;
    match store.save(key, bytes).await {
        Ok(()) => {
            if let Err(e) = store.remove(legacy).await {
                tracing::warn!(shard_id, error = %e, "cannot delete the migrated legacy session");
            }
            tracing::info!(
                shard_id,
                total_shards,
                "moved the stored session from its legacy key to its generation's"
            );
            metrics::counter!("sharder_session_migrated_total").increment(1);
        }
        Err(e) => {
            // Resuming needs no migration: the shard's next save writes the
            // generation's key anyway.
            tracing::warn!(shard_id, total_shards, error = %e, "cannot move the legacy session");
        }
    }
    Some(session)
}

/// `bytes` decoded for `key`'s shard, or `None` with the reason logged.
fn checked(bytes: &[u8], owner: &SessionOwner, key: SessionKey) -> Option<Session> {
    match Session::decode(bytes, owner, key.shard_id()) {
        Ok(s) => Some(s),
        Err(reason) => {
            tracing::warn!(?key, %reason, "ignoring the stored session; identifying");
            metrics::counter!("sharder_session_rejected_total").increment(1);
            None
        }
    }
}

fn load_failed(key: SessionKey, e: &StoreError) {
    tracing::error!(?key, error = %e, "cannot read the stored session; identifying");
    metrics::counter!("sharder_session_load_errors_total").increment(1);
}

/// Saves `session` under its generation's key, logging a failure (the next
/// change saves again).
pub async fn save_session<S: SessionStore>(store: &S, session: &Session) -> bool {
    match store.save(SessionKey::of(session), session.encode()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(
                shard_id = session.shard_id,
                total_shards = session.total_shards,
                error = %e,
                "cannot save the session"
            );
            metrics::counter!("sharder_session_save_errors_total").increment(1);
            false
        }
    }
}

/// Sessions as one file per shard and generation under a directory.
#[derive(Debug, Clone)]
pub struct FileSessionStore {
    dir: PathBuf,
}

impl FileSessionStore {
    /// A store in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The generation record's file.
    pub fn generation_path(&self) -> PathBuf {
        self.dir.join("generation.json")
    }

    /// The directory of the generation of `total_shards` shards.
    pub fn generation_dir(&self, total_shards: u32) -> PathBuf {
        self.dir.join(format!("total-{total_shards}"))
    }

    /// The file of `key`.
    pub fn path(&self, key: SessionKey) -> PathBuf {
        match key {
            SessionKey::Generation {
                total_shards,
                shard_id,
            } => self
                .generation_dir(total_shards)
                .join(format!("shard-{shard_id}.json")),
            SessionKey::Legacy { shard_id } => self.dir.join(format!("shard-{shard_id}.json")),
        }
    }
}

/// `shard-<digits>.json`: a session file (not a temporary one).
fn is_session_file(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix("shard-"))
        .and_then(|n| n.strip_suffix(".json"))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `fsync`s a directory, so the entries just created, renamed or removed
/// in it survive a power loss.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("shard");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(dir)
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
    async fn load(&self, key: SessionKey) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key);
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

    async fn save(&self, key: SessionKey, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path(key);
        blocking(move || write_atomically(&path, &bytes)).await
    }

    async fn remove(&self, key: SessionKey) -> Result<(), StoreError> {
        let path = self.path(key);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        })
        .await
    }

    async fn load_generation(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.generation_path();
        blocking(move || match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
            Ok(bytes) => Ok(Some(bytes)),
        })
        .await
    }

    async fn save_generation(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = self.generation_path();
        blocking(move || write_atomically(&path, &bytes)).await
    }

    async fn retire_generation(&self, total_shards: u32) -> Result<u64, StoreError> {
        let (root, dir) = (self.dir.clone(), self.generation_dir(total_shards));
        blocking(move || {
            let sessions = match std::fs::read_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io_err(&dir)(e)),
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    .filter(|e| is_session_file(&e.file_name()))
                    .count(),
            };
            // Also takes temporary files a crash left behind.
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err(&dir)(e));
                }
                _ => {}
            }
            sync_dir(&root)?;
            Ok(u64::try_from(sessions).unwrap_or(u64::MAX))
        })
        .await
    }
}

#[cfg(test)]
#[path = "session_store_tests.rs"]
pub(crate) mod tests;
