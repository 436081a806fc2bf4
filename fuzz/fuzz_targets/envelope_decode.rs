//! `envelope::decode` on any bytes (the worker reads them off the queue).
//! A message that decodes must satisfy what the worker relies on, and must
//! re-encode to exactly the same bytes (the format has one encoding). A
//! reshard marker event is read without panicking.
#![no_main]

use envelope::{BatchEncoder, MAX_BATCH_EVENTS, MAX_EVENT_NAME_LEN, ReshardMarker, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = decode(data) else {
        return;
    };
    assert!(batch.shard_id < batch.num_shards);
    assert!(!batch.events.is_empty() && batch.events.len() <= MAX_BATCH_EVENTS);
    let mut enc = BatchEncoder::new(batch.shard_id, batch.num_shards).expect("decoded header");
    for ev in &batch.events {
        assert!(!ev.t.is_empty() && ev.t.len() <= MAX_EVENT_NAME_LEN);
        assert_eq!(ev.t == "GUILD_CREATE", ev.guild_create.is_some());
        let _ = ReshardMarker::of(ev);
        enc.push(ev).expect("a decoded event encodes");
    }
    assert_eq!(enc.finish(), data, "re-encoding differs");
});
