//! Hostile input smoke for the sharder's decoders (the stable, bounded
//! counterpart of the `gateway_frame`, `gateway_stream` and
//! `session_decode` fuzz targets): random bytes and valid inputs mutated by
//! bit flips, truncations, splices and huge numbers, through transport
//! decompression (zlib-stream and zstd-stream), `Frame` and
//! `Session::decode`. Each must answer with a clear error or a value that
//! honours its contract, never a panic.
#![allow(clippy::unwrap_used)]

mod hostile;

use flate2::{Compress, Compression as Level, FlushCompress};
use gateway_protocol::{Compression, Decompressor, Frame, parse_snowflake};
use hostile::{FRAMES, mutated, mutation};
use proptest::prelude::*;
use sharder::{GuildSnapshot, GuildTracker, Session, SessionOwner};
use std::io::Write;

const MAX_PAYLOAD: usize = 64 * 1024;

/// What the shard does with a payload; panics only on a broken contract.
fn read_frame(payload: &[u8]) -> Result<(), TestCaseError> {
    let frame = match Frame::parse(payload) {
        Ok(f) => f,
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            return Ok(());
        }
    };
    if frame.op == gateway_protocol::op::DISPATCH {
        prop_assert!(frame.s.is_some() && !frame.event().is_empty());
    }
    if let Ok(keys) = frame.dispatch_keys()
        && let Some(g) = keys.guild_id
    {
        prop_assert_eq!(parse_snowflake(&g.to_string()), Some(g));
    }
    match (frame.d, frame.d_range(payload)) {
        (Some(d), Some(r)) => prop_assert_eq!(&payload[r], d),
        (None, None) => {}
        (d, r) => prop_assert!(false, "d {:?} but range {:?}", d, r),
    }
    let _ = frame.data::<Option<bool>>();
    Ok(())
}

fn zlib_messages(payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut c = Compress::new(Level::default(), true);
    payloads
        .iter()
        .map(|p| {
            let mut out = Vec::with_capacity(p.len() + 64);
            let mut offset = 0;
            loop {
                out.reserve(4096);
                let (before, written) = (c.total_in(), out.len());
                c.compress_vec(&p[offset..], &mut out, FlushCompress::Sync)
                    .unwrap();
                offset += usize::try_from(c.total_in() - before).unwrap();
                // An empty payload right after a flush compresses to nothing.
                let stalled = out.len() == written;
                if offset == p.len() && (out.ends_with(&[0, 0, 0xFF, 0xFF]) || stalled) {
                    return out;
                }
            }
        })
        .collect()
}

fn zstd_messages(payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    payloads
        .iter()
        .map(|p| {
            enc.write_all(p).unwrap();
            enc.flush().unwrap();
            std::mem::take(enc.get_mut())
        })
        .collect()
}

/// Pushes `messages` through one connection's context as the shard does:
/// the first error ends the connection.
fn run_connection(compression: Compression, messages: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let mut inflater = Decompressor::new(compression, MAX_PAYLOAD).unwrap();
    for m in messages {
        match inflater.push(m) {
            Ok(Some(payload)) => {
                prop_assert!(payload.len() <= MAX_PAYLOAD);
                read_frame(&payload)?;
            }
            Ok(None) => {}
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
        }
    }
    Ok(())
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::ZlibStream), Just(Compression::ZstdStream)]
}

fn valid_session() -> Vec<u8> {
    serde_json::json!({
        "format": 1, "token_fingerprint": "cbf29ce484222325", "bot_user_id": 5,
        "shard_id": 3, "total_shards": 16, "session_id": "abc",
        "resume_gateway_url": "wss://gateway.example", "seq": 42, "epoch": 1_700_000_000_000u64,
        "guilds": {"pending": [2, 4], "available": [1], "unavailable": [3]}
    })
    .to_string()
    .into_bytes()
}

fn owner() -> SessionOwner {
    SessionOwner {
        token_fingerprint: "cbf29ce484222325".into(),
        total_shards: 16,
    }
}

/// What a shard does with stored bytes: decode, and when accepted rebuild
/// its guild tracker and save the session again.
fn load_session(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Session::decode(bytes, &owner(), 3) {
        Ok(s) => {
            prop_assert_eq!(s.shard_id, 3);
            prop_assert!(!s.session_id.trim().is_empty());
            let tracker = GuildTracker::from_snapshot(&s.guilds);
            let _ = tracker.snapshot();
            prop_assert_eq!(Session::decode(&s.encode(), &owner(), 3), Ok(s));
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        read_frame(&bytes)?;
    }

    #[test]
    fn mutated_frames_never_panic(
        i in 0..FRAMES.len(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        read_frame(&mutated(FRAMES[i].as_bytes().to_vec(), &mutations))?;
    }

    #[test]
    fn random_compressed_messages_never_panic(
        c in compression(),
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..128), 1..4),
    ) {
        run_connection(c, &messages)?;
    }

    #[test]
    fn unmutated_streams_give_back_every_payload(
        zlib in any::<bool>(),
        picks in prop::collection::vec(0..FRAMES.len(), 1..6),
    ) {
        let payloads: Vec<Vec<u8>> = picks.iter().map(|&i| FRAMES[i].as_bytes().to_vec()).collect();
        let (c, messages) = if zlib {
            (Compression::ZlibStream, zlib_messages(&payloads))
        } else {
            (Compression::ZstdStream, zstd_messages(&payloads))
        };
        let mut inflater = Decompressor::new(c, MAX_PAYLOAD).unwrap();
        for (m, p) in messages.iter().zip(&payloads) {
            prop_assert_eq!(&inflater.push(m).unwrap().unwrap(), p);
        }
    }

    #[test]
    fn mutated_compressed_streams_never_panic(
        zlib in any::<bool>(),
        picks in prop::collection::vec(0..FRAMES.len(), 1..5),
        target in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let payloads: Vec<Vec<u8>> = picks.iter().map(|&i| FRAMES[i].as_bytes().to_vec()).collect();
        let (c, mut messages) = if zlib {
            (Compression::ZlibStream, zlib_messages(&payloads))
        } else {
            (Compression::ZstdStream, zstd_messages(&payloads))
        };
        let at = target % messages.len();
        messages[at] = mutated(std::mem::take(&mut messages[at]), &mutations);
        run_connection(c, &messages)?;
    }

    #[test]
    fn random_session_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        load_session(&bytes)?;
    }

    #[test]
    fn mutated_sessions_never_panic(mutations in prop::collection::vec(mutation(), 1..4)) {
        load_session(&mutated(valid_session(), &mutations))?;
    }
}

#[test]
fn a_bomb_in_either_codec_is_bounded() {
    let bomb = vec![vec![b' '; 8 * MAX_PAYLOAD]];
    for (c, messages) in [
        (Compression::ZlibStream, zlib_messages(&bomb)),
        (Compression::ZstdStream, zstd_messages(&bomb)),
    ] {
        assert!(messages[0].len() < MAX_PAYLOAD / 8, "test premise");
        let mut inflater = Decompressor::new(c, MAX_PAYLOAD).unwrap();
        assert!(inflater.push(&messages[0]).is_err(), "{c:?}");
    }
}

#[test]
fn huge_and_deep_sessions_are_rejected_or_read() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Session::decode(deep.as_bytes(), &owner(), 3).is_err());
    let mut huge = valid_session();
    huge.extend(std::iter::repeat_n(b' ', sharder::MAX_SESSION_BYTES));
    assert!(Session::decode(&huge, &owner(), 3).is_err());
    // Extreme but well-typed values are accepted and survive a save.
    let mut doc: serde_json::Value = serde_json::from_slice(&valid_session()).unwrap();
    doc["seq"] = u64::MAX.into();
    doc["epoch"] = u64::MAX.into();
    doc["guilds"] = serde_json::to_value(GuildSnapshot {
        pending: vec![u64::MAX, 0, u64::MAX],
        available: vec![u64::MAX],
        unavailable: (0..10_000).collect(),
    })
    .unwrap();
    let bytes = serde_json::to_vec(&doc).unwrap();
    let s = Session::decode(&bytes, &owner(), 3).unwrap();
    assert_eq!((s.seq, s.epoch), (u64::MAX, u64::MAX));
    assert_eq!(sharder::next_epoch(Some(s.epoch)), u64::MAX);
    let tracker = GuildTracker::from_snapshot(&s.guilds);
    assert!(tracker.len() >= 10_000);
    doc["seq"] = serde_json::json!(-1);
    assert!(Session::decode(&serde_json::to_vec(&doc).unwrap(), &owner(), 3).is_err());
}

#[test]
fn deep_and_huge_frames_never_panic() {
    let deep = format!(
        r#"{{"op":0,"s":1,"t":"X","d":{}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    // `d` is only delimited (iteratively), never built: a deep `d` is no
    // stack overflow here; the worker's full parse bounds the depth.
    let f = Frame::parse(deep.as_bytes()).unwrap();
    assert_eq!(f.d_range(deep.as_bytes()).unwrap().len(), 20_001);
    assert!(f.dispatch_keys().is_ok());
    let deep_keys = format!(
        r#"{{"op":0,"s":1,"t":"GUILD_CREATE","d":{{"id":"1","x":{}1{}}}}}"#,
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    );
    let f = Frame::parse(deep_keys.as_bytes()).unwrap();
    assert_eq!(f.dispatch_keys().unwrap().guild_id, Some(1));
    let deep_envelope = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(Frame::parse(deep_envelope.as_bytes()).is_err());
    let f =
        Frame::parse(br#"{"op":0,"s":1,"t":"GUILD_CREATE","d":{"id":"99999999999999999999999"}}"#)
            .unwrap();
    assert!(f.dispatch_keys().is_err());
    assert!(Frame::parse(br#"{"op":0,"s":18446744073709551616,"t":"X"}"#).is_err());
}
