//! The persisted session document (a file per shard, or a Redis value) on
//! any bytes: `Session::decode` with a fixed owner, then again with the
//! owner and shard the document itself claims (so the checks after parsing
//! run too), and what a shard does with an accepted session: rebuild its
//! guild tracker, snapshot it and save it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sharder::{GuildTracker, Session, SessionOwner};

fn accepted(s: &Session, owner: &SessionOwner, shard_id: u32) {
    let tracker = GuildTracker::from_snapshot(&s.guilds);
    let _ = tracker.snapshot();
    let again = Session::decode(&s.encode(), owner, shard_id).expect("a saved session reloads");
    assert_eq!(&again, s);
}

fuzz_target!(|data: &[u8]| {
    let owner = SessionOwner {
        token_fingerprint: "cbf29ce484222325".into(),
        total_shards: 16,
    };
    if let Ok(s) = Session::decode(data, &owner, 3) {
        accepted(&s, &owner, 3);
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let field = |k: &str| doc.get(k).and_then(serde_json::Value::as_u64);
    let claimed = SessionOwner {
        token_fingerprint: doc
            .get("token_fingerprint")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        total_shards: field("total_shards")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1),
    };
    let shard_id = field("shard_id")
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    if let Ok(s) = Session::decode(data, &claimed, shard_id) {
        accepted(&s, &claimed, shard_id);
    }
});
