//! Which shard total runs: the generation record.
//!
//! `total_shards` in the configuration is what the operator wrote; after a
//! live reshard the bot runs another total, and a restart must come back
//! with that one (its sessions are stored under it), not re-identify every
//! shard at the old total. So the session store keeps one small record
//! beside the sessions: the running total, the configured total it was
//! written under, and the reshard in progress, if any.
//!
//! # Algorithm
//! At start-up ([`resolve`]):
//! * no record, or one written under another configured total (the
//!   operator changed `total_shards` since: their word wins): run the
//!   configured total;
//! * a record whose reshard was still loading (`started`: the process
//!   died before the hand-over): roll back. The old total's sessions are
//!   intact (its shards kept serving), so the old total resumes, the new
//!   one's sessions are retired and the workers are told `aborted`. A
//!   reshard is then started again by whatever started it;
//! * a record whose hand-over was committed (`completed`, written before
//!   the first old shard closes, naming the new total): roll forward. The
//!   new total resumes, the old one's sessions are retired and
//!   `completed` is published (again: the workers announce a phase once);
//! * otherwise run the record's total.

use crate::session_store::{SessionStore, StoreError};
use envelope::ReshardMarker;
use serde::{Deserialize, Serialize};

/// The record kept beside the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRecord {
    /// The shard total that serves.
    pub total: u32,
    /// `sharder.total_shards` when the record was written.
    pub configured: u32,
    /// A live reshard between its `started` and its `completed` markers.
    pub reshard: Option<ReshardMarker>,
}

/// What start-up runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub total: u32,
    /// A reshard the previous process left unfinished: `started` is rolled
    /// back (retire `to`'s sessions, publish `aborted`), `completed` rolled
    /// forward (retire `from`'s sessions, publish `completed`).
    pub unfinished: Option<ReshardMarker>,
}

/// The record's decision for a process configured with `configured` (the
/// `total_shards` key; 0 for `"auto"`) that would otherwise run `total`
/// (the configured or, for `"auto"`, Discord's recommended total).
pub fn resolve(record: Option<GenerationRecord>, configured: u32, total: u32) -> Resolved {
    match record {
        Some(r) if r.configured == configured => Resolved {
            total: r.total,
            unfinished: r.reshard,
        },
        _ => Resolved {
            total,
            unfinished: None,
        },
    }
}

/// Reads the record; an unreadable one is logged and ignored (the
/// configured total runs).
pub async fn load_record<S: SessionStore>(store: &S) -> Option<GenerationRecord> {
    match store.load_generation().await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable generation record; running the configured total");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the generation record; running the configured total");
            None
        }
    }
}

/// Writes the record.
pub async fn save_record<S: SessionStore>(
    store: &S,
    record: &GenerationRecord,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    store.save_generation(bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_store::FileSessionStore;
    use envelope::ReshardPhase;

    fn marker() -> ReshardMarker {
        ReshardMarker {
            id: 9,
            phase: ReshardPhase::Started,
            from: 4,
            to: 8,
            at_ms: 1,
        }
    }

    #[test]
    fn the_record_runs_unless_the_configuration_changed_since() {
        let done = GenerationRecord {
            total: 8,
            configured: 4,
            reshard: None,
        };
        assert_eq!(resolve(None, 4, 4).total, 4);
        assert_eq!(resolve(None, 0, 6).total, 6, "auto: the recommendation");
        assert_eq!(resolve(Some(done), 4, 4).total, 8);
        assert_eq!(
            resolve(Some(done), 16, 16).total,
            16,
            "the operator's new word wins"
        );
        let midway = GenerationRecord {
            total: 4,
            configured: 4,
            reshard: Some(marker()),
        };
        assert_eq!(
            resolve(Some(midway), 4, 4),
            Resolved {
                total: 4,
                unfinished: Some(marker())
            }
        );
    }

    #[tokio::test]
    async fn the_file_store_keeps_the_record_and_ignores_a_corrupt_one() {
        let dir = std::env::temp_dir().join(format!(
            "bulwark-generation-{}-{}",
            std::process::id(),
            line!()
        ));
        let store = FileSessionStore::new(&dir);
        assert_eq!(load_record(&store).await, None);
        let r = GenerationRecord {
            total: 8,
            configured: 4,
            reshard: Some(marker()),
        };
        save_record(&store, &r).await.unwrap();
        assert_eq!(load_record(&store).await, Some(r));
        std::fs::write(store.generation_path(), b"{not json").unwrap();
        assert_eq!(load_record(&store).await, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
