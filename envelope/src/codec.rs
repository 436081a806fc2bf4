//! Binary framing of a batch of events (layout in the crate docs).
//!
//! # Algorithm
//!
//! The encoder appends fixed-width little-endian fields and the raw `d`
//! bytes to one growing buffer, then patches the event count in the header.
//! The decoder walks the message with a bounds-checked cursor: every read
//! first checks the remaining length, so truncated, garbage or hostile input
//! yields a [`DecodeError`] naming the field and offset, never a panic or an
//! allocation sized by untrusted input (the event vector grows per event
//! actually decoded).

use crate::{DecodeError, EncodeError, Event, GuildCreateKind};

/// First two bytes of every message.
pub const MAGIC: [u8; 2] = *b"BW";
/// Format version written by this crate.
pub const FORMAT_VERSION: u8 = 1;
/// Upper bound of a whole message: RabbitMQ 4's default `max_message_size`.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;
/// Upper bound of the events in one message.
pub const MAX_BATCH_EVENTS: usize = 4096;
/// Upper bound of an event name.
pub const MAX_EVENT_NAME_LEN: usize = 64;

const HEADER_LEN: usize = 2 + 1 + 4 + 4 + 2;
const COUNT_OFFSET: usize = HEADER_LEN - 2;
const GUILD_CREATE: &str = "GUILD_CREATE";
const FLAG_GUILD_ID: u8 = 1;
const MARKER_SHIFT: u8 = 1;
const MARKER_MASK: u8 = 0b110;
const KNOWN_FLAGS: u8 = FLAG_GUILD_ID | MARKER_MASK;

/// A decoded message: consecutive events of one shard, in gateway order,
/// borrowing from the message bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<'a> {
    pub shard_id: u32,
    pub num_shards: u32,
    pub events: Vec<Event<'a>>,
}

impl Batch<'_> {
    /// The header's shard of its total.
    pub fn shard(&self) -> crate::ShardRef {
        crate::ShardRef::new(self.shard_id, self.num_shards)
    }
}

/// Frames consecutive events of one shard into one message.
#[derive(Debug, Clone)]
pub struct BatchEncoder {
    buf: Vec<u8>,
    count: usize,
}

fn valid_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_EVENT_NAME_LEN
        && t.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_marker(t: &str, marker: Option<GuildCreateKind>) -> bool {
    (t == GUILD_CREATE) == marker.is_some()
}

impl BatchEncoder {
    /// Starts a message for `shard_id` of `num_shards`.
    pub fn new(shard_id: u32, num_shards: u32) -> Result<Self, EncodeError> {
        if num_shards == 0 || shard_id >= num_shards {
            return Err(EncodeError::BadShard {
                shard_id,
                num_shards,
            });
        }
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&MAGIC);
        buf.push(FORMAT_VERSION);
        buf.extend_from_slice(&shard_id.to_le_bytes());
        buf.extend_from_slice(&num_shards.to_le_bytes());
        buf.extend_from_slice(&0u16.to_le_bytes());
        Ok(Self { buf, count: 0 })
    }

    /// Makes room for `additional` more bytes (at most up to
    /// [`MAX_MESSAGE_LEN`]) at once. A caller that knows what it will push
    /// saves the buffer's doubling, which copies everything framed so far
    /// each time (a few percent of the sharder's CPU at ~200 events per
    /// message).
    pub fn reserve(&mut self, additional: usize) {
        let room = MAX_MESSAGE_LEN.saturating_sub(self.buf.len());
        self.buf.reserve(additional.min(room));
    }

    /// Encoded size of `event` alone, to decide when to flush a batch.
    pub fn event_len(event: &Event<'_>) -> usize {
        1 + 8
            + 8
            + 8
            + if event.guild_id.is_some() { 8 } else { 0 }
            + 1
            + event.t.len()
            + 4
            + event.d.len()
    }

    /// Appends one event. On error the encoder is unchanged.
    pub fn push(&mut self, event: &Event<'_>) -> Result<(), EncodeError> {
        if !valid_name(event.t) {
            return Err(EncodeError::BadEventName(event.t.to_owned()));
        }
        if !valid_marker(event.t, event.guild_create) {
            return Err(EncodeError::BadMarker(event.t.to_owned()));
        }
        if self.count >= MAX_BATCH_EVENTS {
            return Err(EncodeError::TooManyEvents {
                max: MAX_BATCH_EVENTS,
            });
        }
        if self.buf.len() + Self::event_len(event) > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLarge {
                max: MAX_MESSAGE_LEN,
            });
        }
        let mut flags = 0u8;
        if event.guild_id.is_some() {
            flags |= FLAG_GUILD_ID;
        }
        if let Some(kind) = event.guild_create {
            flags |= kind.to_bits() << MARKER_SHIFT;
        }
        self.buf.push(flags);
        self.buf.extend_from_slice(&event.epoch.to_le_bytes());
        self.buf.extend_from_slice(&event.seq.to_le_bytes());
        self.buf.extend_from_slice(&event.received_at.to_le_bytes());
        if let Some(g) = event.guild_id {
            self.buf.extend_from_slice(&g.to_le_bytes());
        }
        // Both lengths were bounded above, so the casts cannot truncate.
        self.buf.push(event.t.len() as u8);
        self.buf.extend_from_slice(event.t.as_bytes());
        self.buf
            .extend_from_slice(&(event.d.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(event.d);
        self.count += 1;
        let count = (self.count as u16).to_le_bytes();
        self.buf[COUNT_OFFSET..HEADER_LEN].copy_from_slice(&count);
        Ok(())
    }

    /// Events pushed so far.
    pub fn event_count(&self) -> usize {
        self.count
    }

    /// Bytes framed so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no event was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The message bytes. A message with no event does not decode: push at
    /// least one first.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[derive(Debug, Clone)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError::Truncated {
                field,
                offset: self.pos,
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn invalid(&self, field: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::Invalid {
            field,
            offset: self.pos,
            reason,
        }
    }
}

/// Checks and decodes a whole message. The returned events borrow `t` and
/// `d` from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Batch<'_>, DecodeError> {
    let mut decoder = Decoder::new(bytes)?;
    let events = decoder.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok(Batch {
        shard_id: decoder.shard_id,
        num_shards: decoder.num_shards,
        events,
    })
}

/// Decodes a message one event at a time, checking exactly what [`decode`]
/// checks and in the same order: the header in [`Decoder::new`], each
/// event as it is reached, then that no byte follows the last one. The
/// first error ends the iteration.
///
/// A consumer that works on each event as it is decoded reads the message
/// from memory once, while its bytes are in cache; decoding all of a large
/// message first and then reading the payloads reads it twice. A consumer
/// that must not act on part of an invalid message keeps its side effects
/// until the iteration has ended without an error.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    cur: Cursor<'a>,
    shard_id: u32,
    num_shards: u32,
    count: usize,
    left: usize,
    done: bool,
}

impl<'a> Decoder<'a> {
    /// Checks the message's size and header.
    pub fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let mut cur = Cursor { bytes, pos: 0 };
        if cur.array::<2>("magic").map_err(|_| DecodeError::BadMagic)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = cur.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let shard_id = cur.u32("shard_id")?;
        let num_shards = cur.u32("num_shards")?;
        if num_shards == 0 || shard_id >= num_shards {
            return Err(cur.invalid("num_shards", "must be at least 1 and above shard_id"));
        }
        let count = usize::from(cur.u16("event count")?);
        if count == 0 || count > MAX_BATCH_EVENTS {
            return Err(cur.invalid("event count", "must be 1..=4096"));
        }
        Ok(Self {
            cur,
            shard_id,
            num_shards,
            count,
            left: count,
            done: false,
        })
    }

    /// The header's `shard_id`.
    pub fn shard_id(&self) -> u32 {
        self.shard_id
    }

    /// The header's `num_shards`.
    pub fn num_shards(&self) -> u32 {
        self.num_shards
    }

    /// The header's shard of its total.
    pub fn shard(&self) -> crate::ShardRef {
        crate::ShardRef::new(self.shard_id, self.num_shards)
    }

    /// The header's event count (1..=[`MAX_BATCH_EVENTS`]); the message may
    /// still turn out to hold fewer.
    pub fn event_count(&self) -> usize {
        self.count
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Event<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.left == 0 {
            self.done = true;
            let rest = self.cur.bytes.len() - self.cur.pos;
            return (rest != 0).then_some(Err(DecodeError::TrailingBytes(rest)));
        }
        self.left -= 1;
        let event = decode_event(&mut self.cur);
        self.done = event.is_err();
        Some(event)
    }
}

fn decode_event<'a>(cur: &mut Cursor<'a>) -> Result<Event<'a>, DecodeError> {
    let flags = cur.u8("flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(cur.invalid("flags", "unknown flag bits set"));
    }
    let epoch = cur.u64("epoch")?;
    let seq = cur.u64("seq")?;
    let received_at = cur.u64("received_at")?;
    let guild_id = if flags & FLAG_GUILD_ID != 0 {
        Some(cur.u64("guild_id")?)
    } else {
        None
    };
    let t_len = usize::from(cur.u8("t length")?);
    let t = cur.take(t_len, "t")?;
    let t = std::str::from_utf8(t)
        .ok()
        .filter(|t| valid_name(t))
        .ok_or_else(|| cur.invalid("t", "event name must be 1-64 characters of A-Z, 0-9, _"))?;
    let guild_create = GuildCreateKind::from_bits((flags & MARKER_MASK) >> MARKER_SHIFT);
    if !valid_marker(t, guild_create) {
        return Err(cur.invalid(
            "flags",
            "GUILD_CREATE needs a marker and no other event may have one",
        ));
    }
    let d_len = cur.u32("d length")? as usize;
    let d = cur.take(d_len, "d")?;
    Ok(Event {
        epoch,
        seq,
        received_at,
        t,
        guild_id,
        guild_create,
        d,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev<'a>(t: &'a str, d: &'a [u8]) -> Event<'a> {
        Event {
            epoch: 9,
            seq: 1,
            received_at: 5,
            t,
            guild_id: None,
            guild_create: None,
            d,
        }
    }

    fn one(event: &Event<'_>) -> Vec<u8> {
        let mut e = BatchEncoder::new(0, 1).unwrap();
        e.push(event).unwrap();
        e.finish()
    }

    #[test]
    fn batch_keeps_order_and_bytes() {
        let mut e = BatchEncoder::new(5, 8).unwrap();
        let d1 = br#"{"a":"\u00e9 raw, not re-encoded"}"#;
        let mut a = ev("MESSAGE_CREATE", d1);
        a.guild_id = Some(u64::MAX);
        let mut b = ev("GUILD_CREATE", b"{}");
        b.seq = 2;
        b.guild_create = Some(GuildCreateKind::Available);
        let c = ev("TYPING_START", b"");
        for x in [&a, &b, &c] {
            e.push(x).unwrap();
        }
        assert_eq!(e.event_count(), 3);
        let bytes = e.finish();
        let batch = decode(&bytes).unwrap();
        assert_eq!((batch.shard_id, batch.num_shards), (5, 8));
        assert_eq!(batch.events, vec![a, b, c]);
        // `d` borrows the message, byte for byte.
        let range = bytes.as_ptr_range();
        assert!(range.contains(&batch.events[0].d.as_ptr()));
        assert_eq!(batch.events[0].d, d1);
    }

    #[test]
    fn reserved_room_is_used_without_growing_and_capped_at_a_message() {
        let d = [b'x'; 1000];
        let events: Vec<Event<'_>> = (0..50).map(|_| ev("MESSAGE_CREATE", &d)).collect();
        let total: usize = events.iter().map(BatchEncoder::event_len).sum();
        let mut e = BatchEncoder::new(0, 1).unwrap();
        e.reserve(total);
        let start = e.buf.as_ptr();
        for x in &events {
            e.push(x).unwrap();
        }
        assert_eq!(e.buf.as_ptr(), start, "the buffer moved: it grew");
        assert_eq!(e.len(), HEADER_LEN + total);
        // More than one message can hold is capped, not a capacity overflow.
        let mut huge = BatchEncoder::new(0, 1).unwrap();
        huge.reserve(usize::MAX);
        assert!(huge.buf.capacity() <= MAX_MESSAGE_LEN);
    }

    #[test]
    fn empty_and_garbage_are_errors() {
        assert_eq!(decode(b""), Err(DecodeError::Empty));
        assert_eq!(decode(b"{\"op\":0}"), Err(DecodeError::BadMagic));
        assert_eq!(decode(b"B"), Err(DecodeError::BadMagic));
        assert_eq!(decode(b"BW\x02"), Err(DecodeError::UnsupportedVersion(2)));
        let header_only = BatchEncoder::new(0, 1).unwrap().finish();
        assert!(matches!(
            decode(&header_only),
            Err(DecodeError::Invalid {
                field: "event count",
                ..
            })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut g = ev("GUILD_CREATE", br#"{"id":"1"}"#);
        g.guild_id = Some(1);
        g.guild_create = Some(GuildCreateKind::Joined);
        let bytes = one(&g);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn decoder_checks_what_decode_checks() {
        let mut g = ev("GUILD_CREATE", br#"{"id":"1"}"#);
        g.guild_create = Some(GuildCreateKind::Joined);
        let mut e = BatchEncoder::new(2, 4).unwrap();
        for x in [&ev("READY", b"{}"), &g, &ev("MESSAGE_CREATE", b"[]")] {
            e.push(x).unwrap();
        }
        let mut bytes = e.finish();
        bytes.push(7);
        for cut in 0..=bytes.len() {
            let whole = decode(&bytes[..cut]);
            let stepped = Decoder::new(&bytes[..cut]).and_then(|mut d| {
                assert_eq!((d.shard_id(), d.num_shards(), d.event_count()), (2, 4, 3));
                let events = d.by_ref().collect::<Result<Vec<_>, _>>()?;
                assert!(d.next().is_none(), "fused after the end");
                Ok(events)
            });
            assert_eq!(whole.map(|b| b.events), stepped, "prefix of {cut} bytes");
        }
        // After an error, nothing more.
        let mut d = Decoder::new(&bytes[..bytes.len() - 3]).unwrap();
        assert!(d.next().unwrap().is_ok());
        assert!(d.next().unwrap().is_ok());
        assert!(d.next().unwrap().is_err());
        assert!(d.next().is_none());
    }

    #[test]
    fn oversized_is_rejected_before_parsing() {
        let big = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert!(matches!(decode(&big), Err(DecodeError::Oversized { .. })));
        let d = vec![b' '; MAX_MESSAGE_LEN];
        let mut e = BatchEncoder::new(0, 1).unwrap();
        assert_eq!(
            e.push(&ev("X", &d)),
            Err(EncodeError::TooLarge {
                max: MAX_MESSAGE_LEN
            })
        );
        assert!(e.is_empty());
    }

    #[test]
    fn huge_declared_length_is_truncation_not_allocation() {
        let mut bytes = one(&ev("READY", b"{}"));
        let d_len_at = bytes.len() - 2 - 4;
        bytes[d_len_at..d_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Truncated { field: "d", .. })
        ));
    }

    #[test]
    fn markers_and_names_are_checked_both_ways() {
        let mut e = BatchEncoder::new(0, 1).unwrap();
        assert!(matches!(
            e.push(&ev("GUILD_CREATE", b"{}")),
            Err(EncodeError::BadMarker(_))
        ));
        let mut m = ev("MESSAGE_CREATE", b"{}");
        m.guild_create = Some(GuildCreateKind::Initial);
        assert!(matches!(e.push(&m), Err(EncodeError::BadMarker(_))));
        for bad in ["", "lower", "A.B", &"X".repeat(65)] {
            assert!(matches!(
                e.push(&ev(bad, b"{}")),
                Err(EncodeError::BadEventName(_))
            ));
        }
        assert!(BatchEncoder::new(4, 4).is_err());
        assert!(BatchEncoder::new(0, 0).is_err());
        // A marker flipped on a non-GUILD_CREATE event is caught on decode.
        let mut bytes = one(&ev("READY", b"{}"));
        bytes[HEADER_LEN] |= 3 << MARKER_SHIFT;
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Invalid { field: "flags", .. })
        ));
        bytes[HEADER_LEN] = 0x80;
        assert!(decode(&bytes).is_err());
    }
}
