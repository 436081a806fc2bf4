//! The file store on a temporary directory, and what every store must do
//! with generations (the `*_contract` functions, also run against Redis in
//! `session_redis.rs`).

use super::*;
use config::Secret;
use testkit::TempDir;

pub(crate) fn owner(total_shards: u32) -> SessionOwner {
    SessionOwner::new(&Secret::new("tok"), total_shards)
}

pub(crate) fn session(owner: &SessionOwner, shard: u32) -> Session {
    let mut s = Session::new(owner, shard, "sid".into(), "wss://r.example".into(), 3);
    s.seq = 99;
    s.guilds.available = vec![5, 6];
    s
}

/// Shard 3 of 64 and shard 3 of 128 (a reshard in progress) are two
/// sessions: saving, loading or removing one leaves the other.
pub(crate) async fn generations_coexist_contract<S: SessionStore>(store: &S) {
    let (old, new) = (owner(64), owner(128));
    let mut a = session(&old, 3);
    a.session_id = "old-generation".into();
    let mut b = session(&new, 3);
    b.session_id = "new-generation".into();
    assert!(save_session(store, &a).await);
    assert!(save_session(store, &b).await);
    assert_eq!(load_session(store, &old, 3).await, Some(a.clone()));
    assert_eq!(load_session(store, &new, 3).await, Some(b.clone()));
    store.remove(SessionKey::of(&a)).await.unwrap();
    assert_eq!(load_session(store, &old, 3).await, None);
    assert_eq!(load_session(store, &new, 3).await, Some(b.clone()));
    store.remove(SessionKey::of(&b)).await.unwrap();
}

/// A session an older build stored under the shard id alone resumes after
/// the upgrade, and moves to its generation's key; another generation
/// neither takes nor deletes it.
pub(crate) async fn legacy_is_migrated_contract<S: SessionStore>(store: &S) {
    let mine = owner(64);
    let s = session(&mine, 5);
    let (legacy, key) = (SessionKey::Legacy { shard_id: 5 }, SessionKey::of(&s));
    store.save(legacy, s.encode()).await.unwrap();

    assert_eq!(load_session(store, &owner(128), 5).await, None);
    assert!(store.load(legacy).await.unwrap().is_some(), "left alone");
    assert_eq!(store.load(SessionKey::shard(128, 5)).await.unwrap(), None);

    assert_eq!(load_session(store, &mine, 5).await, Some(s.clone()));
    assert_eq!(store.load(legacy).await.unwrap(), None, "moved");
    assert_eq!(store.load(key).await.unwrap(), Some(s.encode()));
    assert_eq!(load_session(store, &mine, 5).await, Some(s.clone()));

    // Once the generation's key exists, a legacy key is never read: not
    // when it is older, not when the generation's key is corrupt.
    let mut stale = s.clone();
    stale.seq = 1;
    store.save(legacy, stale.encode()).await.unwrap();
    assert_eq!(load_session(store, &mine, 5).await, Some(s.clone()));
    store.save(key, b"{\"format\":1,".to_vec()).await.unwrap();
    assert_eq!(load_session(store, &mine, 5).await, None);
    assert_eq!(store.load(legacy).await.unwrap(), Some(stale.encode()));
    store.remove(legacy).await.unwrap();
    store.remove(key).await.unwrap();
}

/// Retiring the generation of 4 shards removes its 4 sessions and nothing
/// of the generation of 8, nor legacy keys; retiring again finds none.
pub(crate) async fn retire_contract<S: SessionStore>(store: &S) {
    let (old, new) = (owner(4), owner(8));
    for shard in 0..4 {
        assert!(save_session(store, &session(&old, shard)).await);
    }
    for shard in 0..8 {
        assert!(save_session(store, &session(&new, shard)).await);
    }
    let legacy = SessionKey::Legacy { shard_id: 2 };
    store.save(legacy, session(&old, 2).encode()).await.unwrap();

    assert_eq!(store.retire_generation(4).await.unwrap(), 4);
    for shard in 0..4 {
        assert_eq!(store.load(SessionKey::shard(4, shard)).await.unwrap(), None);
    }
    for shard in 0..8 {
        assert_eq!(
            load_session(store, &new, shard).await,
            Some(session(&new, shard))
        );
    }
    assert!(store.load(legacy).await.unwrap().is_some());
    assert_eq!(store.retire_generation(4).await.unwrap(), 0);
    assert_eq!(store.retire_generation(16).await.unwrap(), 0, "never run");
    assert_eq!(store.retire_generation(8).await.unwrap(), 8);
    store.remove(legacy).await.unwrap();
}

fn store(dir: &TempDir) -> FileSessionStore {
    FileSessionStore::new(dir.join("nested"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn save_load_and_reject_bad_files() {
    let dir = TempDir::new("files").unwrap();
    let store = store(&dir);
    let owner = owner(8);
    assert_eq!(load_session(&store, &owner, 1).await, None, "nothing yet");

    let s = session(&owner, 1);
    assert!(save_session(&store, &s).await);
    assert_eq!(load_session(&store, &owner, 1).await, Some(s.clone()));
    // Overwrite leaves no temp file behind.
    let mut s2 = s.clone();
    s2.seq = 100;
    assert!(save_session(&store, &s2).await);
    assert_eq!(load_session(&store, &owner, 1).await.unwrap().seq, 100);
    assert_eq!(names(&dir.join("nested")), ["total-8"]);
    assert_eq!(names(&store.generation_dir(8)), ["shard-1.json"]);

    // Another bot's token: ignored.
    let foreign = SessionOwner::new(&Secret::new("other"), 8);
    assert_eq!(load_session(&store, &foreign, 1).await, None);
    // Corrupt, truncated, empty files: ignored, no panic.
    let path = store.path(SessionKey::of(&s));
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
    std::fs::write(store.path(SessionKey::shard(8, 2)), &good).unwrap();
    assert_eq!(load_session(&store, &owner, 2).await, None);

    store.remove(SessionKey::of(&s)).await.unwrap();
    store.remove(SessionKey::of(&s)).await.unwrap();
    assert!(!path.exists());
}

#[tokio::test]
async fn generations_of_one_shard_coexist_in_files() {
    let dir = TempDir::new("generations").unwrap();
    let store = store(&dir);
    generations_coexist_contract(&store).await;
    assert_eq!(names(&dir.join("nested")), ["total-128", "total-64"]);
}

#[tokio::test]
async fn a_legacy_file_is_read_and_migrated() {
    let dir = TempDir::new("legacy").unwrap();
    let store = store(&dir);
    assert_eq!(
        store.path(SessionKey::Legacy { shard_id: 5 }),
        dir.join("nested").join("shard-5.json"),
        "where builds before per-generation keys saved"
    );
    legacy_is_migrated_contract(&store).await;
    assert_eq!(names(&dir.join("nested")), ["total-64"]);
}

#[tokio::test]
async fn retiring_a_generation_removes_only_its_files() {
    let dir = TempDir::new("retire").unwrap();
    let store = store(&dir);
    // A temporary file a crash left in the generation goes too, uncounted.
    std::fs::create_dir_all(store.generation_dir(4)).unwrap();
    std::fs::write(store.generation_dir(4).join(".shard-0.json.1.tmp"), b"x").unwrap();
    retire_contract(&store).await;
    assert_eq!(names(&dir.join("nested")), Vec::<String>::new());
    // A store whose directory was never created has nothing to retire.
    let empty = FileSessionStore::new(dir.join("never"));
    assert_eq!(empty.retire_generation(4).await.unwrap(), 0);
}

#[tokio::test]
async fn unwritable_directory_is_an_error_not_a_panic() {
    let dir = TempDir::new("unwritable").unwrap();
    // A file where the directory should be.
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, b"x").unwrap();
    let store = FileSessionStore::new(&blocker);
    let owner = owner(8);
    assert!(!save_session(&store, &session(&owner, 0)).await);
    assert!(store.load(SessionKey::shard(8, 0)).await.is_err());
    assert_eq!(load_session(&store, &owner, 0).await, None);
    assert!(store.retire_generation(8).await.is_err());
}

#[tokio::test]
async fn a_fifo_or_a_huge_file_is_refused_without_blocking() {
    let dir = TempDir::new("fifo").unwrap();
    let store = FileSessionStore::new(dir.path());
    std::fs::create_dir_all(store.generation_dir(8)).unwrap();
    let owner = owner(8);
    // A FIFO nobody writes to: opening it for reading would block.
    let made = std::process::Command::new("mkfifo")
        .arg(store.path(SessionKey::shard(8, 3)))
        .status()
        .unwrap();
    assert!(made.success());
    let e = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.load(SessionKey::shard(8, 3)),
    )
    .await
    .expect("a FIFO must not block the load")
    .unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert_eq!(load_session(&store, &owner, 3).await, None);
    // A huge file is read only one byte past the bound.
    std::fs::write(
        store.path(SessionKey::shard(8, 4)),
        vec![b' '; crate::session::MAX_SESSION_BYTES * 2],
    )
    .unwrap();
    let bytes = store.load(SessionKey::shard(8, 4)).await.unwrap().unwrap();
    assert_eq!(bytes.len(), crate::session::MAX_SESSION_BYTES + 1);
    assert_eq!(load_session(&store, &owner, 4).await, None);
}
