//! Properties of the framing: every valid batch roundtrips exactly, and no
//! byte string (random, truncated or mutated) makes the decoder panic.
#![allow(clippy::unwrap_used)]

use envelope::{BatchEncoder, Event, GuildCreateKind, decode};
use proptest::prelude::*;
use testkit::owned_event::OwnedEvent;

type Owned = OwnedEvent;

fn marker() -> impl Strategy<Value = GuildCreateKind> {
    prop_oneof![
        Just(GuildCreateKind::Initial),
        Just(GuildCreateKind::Available),
        Just(GuildCreateKind::Joined),
    ]
}

fn owned() -> impl Strategy<Value = Owned> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(None), "[A-Z_][A-Z0-9_]{0,63}".prop_map(Some)],
        any::<Option<u64>>(),
        marker(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(epoch, seq, received_at, t, guild_id, m, d)| {
            let (t, marker) = match t {
                Some(t) if t != "GUILD_CREATE" => (t, None),
                _ => ("GUILD_CREATE".to_owned(), Some(m)),
            };
            Owned {
                epoch,
                seq,
                received_at,
                t,
                guild_id,
                marker,
                d,
            }
        })
}

fn batch() -> impl Strategy<Value = (u32, u32, Vec<Owned>)> {
    (
        1u32..=u32::MAX,
        any::<u32>(),
        proptest::collection::vec(owned(), 1..8),
    )
        .prop_map(|(n, s, events)| (s % n, n, events))
}

fn encode(shard: u32, n: u32, events: &[Owned]) -> Vec<u8> {
    let mut e = BatchEncoder::new(shard, n).unwrap();
    for ev in events {
        e.push(&ev.event()).unwrap();
    }
    e.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn roundtrip((shard, n, events) in batch()) {
        let bytes = encode(shard, n, &events);
        let b = decode(&bytes).unwrap();
        prop_assert_eq!((b.shard_id, b.num_shards), (shard, n));
        let want: Vec<Event<'_>> = events.iter().map(Owned::event).collect();
        prop_assert_eq!(b.events, want);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let mut with_magic = b"BW\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = decode(&with_magic);
    }

    #[test]
    fn mutated_messages_never_panic(
        (shard, n, events) in batch(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(shard, n, &events);
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let _ = decode(&bytes);
        let end = cut.index(bytes.len());
        // A strict prefix of a valid message never decodes.
        let clean = encode(shard, n, &events);
        prop_assert!(decode(&clean[..end]).is_err());
        let _ = decode(&bytes[..end]);
    }
}
