//! Hostile input smoke (the stable, bounded counterpart of the
//! `envelope_decode` fuzz target): random bytes and valid messages mutated
//! by bit flips, truncations, splices, overwritten length fields and huge
//! declared lengths. `decode` must answer every one with a clear error or a
//! batch that honours everything the worker relies on, never a panic; an
//! accepted batch re-encodes to exactly the bytes it came from.
#![allow(clippy::unwrap_used)]

use envelope::{
    BatchEncoder, DecodeError, Event, GuildCreateKind, MAX_BATCH_EVENTS, MAX_EVENT_NAME_LEN, decode,
};
use proptest::prelude::*;
use testkit::{Mutation, Mutations, mutated};

/// Damage to a binary message (the test kit's mutations): splices of any
/// bytes, 4-byte huge lengths, 2-byte counts and short lengths, and the
/// message doubled.
fn mutation() -> impl Strategy<Value = Mutation> {
    Mutations::bytes(&[], 1..16, 1..32)
        .overwrite::<u32>(&[u32::MAX, u32::MAX - 1, 1 << 24, 1 << 31])
        .overwrite::<u16>(&[0, u16::MAX, 4097])
        .double()
        .strategy()
}

#[derive(Debug, Clone)]
struct Owned {
    epoch: u64,
    seq: u64,
    t: String,
    guild_id: Option<u64>,
    marker: Option<GuildCreateKind>,
    d: Vec<u8>,
}

fn owned_event() -> impl Strategy<Value = Owned> {
    let name = prop_oneof![
        Just("GUILD_CREATE".to_owned()),
        Just("MESSAGE_CREATE".to_owned()),
        "[A-Z0-9_]{1,64}",
    ];
    let marker = prop_oneof![
        Just(GuildCreateKind::Initial),
        Just(GuildCreateKind::Available),
        Just(GuildCreateKind::Joined),
    ];
    (
        any::<u64>(),
        any::<u64>(),
        name,
        proptest::option::of(any::<u64>()),
        marker,
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(epoch, seq, t, guild_id, m, d)| Owned {
            epoch,
            seq,
            marker: (t == "GUILD_CREATE").then_some(m),
            t,
            guild_id,
            d,
        })
}

/// A valid message of 1 to 6 events.
fn valid_message() -> impl Strategy<Value = Vec<u8>> {
    (
        1u32..64,
        any::<u32>(),
        prop::collection::vec(owned_event(), 1..6),
    )
        .prop_map(|(num_shards, shard, events)| {
            let mut enc = BatchEncoder::new(shard % num_shards, num_shards).unwrap();
            for e in &events {
                enc.push(&Event {
                    epoch: e.epoch,
                    seq: e.seq,
                    received_at: 1_700_000_000_000,
                    t: &e.t,
                    guild_id: e.guild_id,
                    guild_create: e.marker,
                    d: &e.d,
                })
                .unwrap();
            }
            enc.finish()
        })
}

/// What the worker relies on for every batch `decode` accepts, and the
/// format's single encoding.
fn check_accepted(bytes: &[u8]) -> Result<(), TestCaseError> {
    let batch = match decode(bytes) {
        Ok(b) => b,
        Err(e) => {
            // A clear error: it names what is wrong.
            prop_assert!(!e.to_string().is_empty());
            if let DecodeError::Truncated { offset, .. } | DecodeError::Invalid { offset, .. } = e {
                prop_assert!(offset <= bytes.len());
            }
            return Ok(());
        }
    };
    prop_assert!(batch.shard_id < batch.num_shards);
    prop_assert!(!batch.events.is_empty() && batch.events.len() <= MAX_BATCH_EVENTS);
    let mut enc = BatchEncoder::new(batch.shard_id, batch.num_shards).unwrap();
    for ev in &batch.events {
        prop_assert!(!ev.t.is_empty() && ev.t.len() <= MAX_EVENT_NAME_LEN);
        prop_assert_eq!(ev.t == "GUILD_CREATE", ev.guild_create.is_some());
        prop_assert!(bytes.as_ptr_range().contains(&ev.t.as_ptr()));
        prop_assert!(enc.push(ev).is_ok(), "decoded event does not re-encode");
    }
    prop_assert_eq!(enc.finish(), bytes, "re-encoding differs");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_accepted(&bytes)?;
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_panic(
        shard in 0u32..4,
        count in any::<u16>(),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = b"BW\x01".to_vec();
        bytes.extend_from_slice(&shard.to_le_bytes());
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&body);
        check_accepted(&bytes)?;
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        bytes in valid_message(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        check_accepted(&mutated(bytes, &mutations))?;
    }

    #[test]
    fn spliced_messages_never_panic(
        a in valid_message(),
        b in valid_message(),
        cut_a in any::<usize>(),
        cut_b in any::<usize>(),
    ) {
        let mut bytes = a[..cut_a % (a.len() + 1)].to_vec();
        bytes.extend_from_slice(&b[cut_b % (b.len() + 1)..]);
        check_accepted(&bytes)?;
    }
}

#[test]
fn every_truncation_and_every_bit_flip_of_a_message_is_handled() {
    let d = br#"{"id":"81384788765712384","name":"x"}"#;
    let mut enc = BatchEncoder::new(3, 16).unwrap();
    for (t, marker, guild_id) in [
        ("GUILD_CREATE", Some(GuildCreateKind::Joined), Some(1)),
        ("MESSAGE_CREATE", None, Some(2)),
        ("READY", None, None),
    ] {
        enc.push(&Event {
            epoch: 7,
            seq: 42,
            received_at: 1,
            t,
            guild_id,
            guild_create: marker,
            d,
        })
        .unwrap();
    }
    let bytes = enc.finish();
    check_accepted(&bytes).unwrap();
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut m = bytes.clone();
            m[i] ^= 1 << bit;
            check_accepted(&m).unwrap();
        }
    }
}

#[test]
fn huge_declared_lengths_are_truncation_errors_not_allocations() {
    // One READY event, its d_len then replaced by every huge value.
    let mut enc = BatchEncoder::new(0, 1).unwrap();
    enc.push(&Event {
        epoch: 1,
        seq: 1,
        received_at: 1,
        t: "READY",
        guild_id: None,
        guild_create: None,
        d: b"{}",
    })
    .unwrap();
    let bytes = enc.finish();
    let d_len_at = bytes.len() - 2 - 4;
    for huge in [3u32, 1 << 16, 1 << 24, 1 << 31, u32::MAX] {
        let mut m = bytes.clone();
        m[d_len_at..d_len_at + 4].copy_from_slice(&huge.to_le_bytes());
        assert!(
            matches!(decode(&m), Err(DecodeError::Truncated { field: "d", .. })),
            "d_len {huge}"
        );
    }
    // The event count at its maximum, with one event present.
    let mut m = bytes.clone();
    m[11..13].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(matches!(
        decode(&m),
        Err(DecodeError::Invalid {
            field: "event count",
            ..
        })
    ));
}
