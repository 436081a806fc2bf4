#![allow(clippy::unwrap_used)]
use super::*;

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Inflates one zlib-stream message through the client's shared context.
fn inflate(d: &mut flate2::Decompress, msg: &[u8]) -> Vec<u8> {
    assert!(msg.ends_with(&SYNC_TAIL), "no sync-flush suffix");
    let mut out = Vec::with_capacity(msg.len() * 8 + 64);
    let start = d.total_in();
    loop {
        let consumed = (d.total_in() - start) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        d.decompress_vec(&msg[consumed..], &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        if (d.total_in() - start) as usize == msg.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

/// JSON-like text built from a small vocabulary, so it has matches at
/// every distance.
fn jsonish(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 10] = [
        "{\"op\":0,",
        "\"t\":\"MESSAGE_CREATE\",",
        "\"guild_id\":\"",
        "1100000000000",
        "\"content\":\"hello\"",
        "\"member\":{\"roles\":[]}",
        "null,",
        "}",
        "\"s\":",
        "\"author\":{\"id\":\"9\"}",
    ];
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
        out.push(b'0' + rng.below(10) as u8);
    }
    out.truncate(len);
    out
}

#[test]
fn every_message_inflates_to_its_input_in_one_shared_context() {
    let mut rng = Rng(0x1234_5678_9abc_def0);
    let mut z = ZlibStream::new();
    let mut d = flate2::Decompress::new(true);
    let mut total_in = 0;
    for i in 0..2000 {
        let input = match i % 50 {
            0 => Vec::new(),
            1 => vec![b'a'; rng.below(3 * MAX_MATCH)],
            // Every byte value, no structure: literals only.
            2 => (0..rng.below(600)).map(|_| rng.next() as u8).collect(),
            // Longer than the whole history: slides mid-message.
            3 => {
                let len = HISTORY * 3 + rng.below(999);
                jsonish(&mut rng, len)
            }
            _ => {
                let len = 1 + rng.below(1500);
                jsonish(&mut rng, len)
            }
        };
        let mut msg = Vec::new();
        if i % 3 == 0 {
            // The same bytes in up to three parts.
            let a = rng.below(input.len() + 1);
            let b = a + rng.below(input.len() - a + 1);
            z.compress_parts(&[&input[..a], &input[a..b], &input[b..]], &mut msg);
        } else {
            z.compress_sync(&input, &mut msg);
        }
        if i == 0 {
            assert_eq!(msg[..2], ZLIB_HEADER);
        } else {
            assert_ne!(msg[..2], ZLIB_HEADER, "header sent once, message {i}");
        }
        assert_eq!(inflate(&mut d, &msg), input, "message {i}");
        total_in += input.len();
    }
    assert!(total_in > 1_000_000);
}

#[test]
fn repeated_payloads_compress_against_earlier_messages() {
    let mut rng = Rng(7);
    let payload = jsonish(&mut rng, 600);
    let mut z = ZlibStream::new();
    let mut d = flate2::Decompress::new(true);
    let mut first = Vec::new();
    z.compress_sync(&payload, &mut first);
    // The vocabulary repeats within the message itself.
    assert!(first.len() < payload.len() / 2, "{} bytes", first.len());
    for i in 0..100 {
        let mut msg = Vec::new();
        z.compress_sync(&payload, &mut msg);
        // From the second repetition on, the parse lines up with the
        // previous copy's: three matches (at most 258 bytes each), end of
        // block and the sync flush. The first repetition finds shorter
        // matches where the first copy was not hashed.
        let max = if i == 0 { 40 } else { 20 };
        assert!(msg.len() <= max, "repetition {i}: {} bytes", msg.len());
        assert_eq!(inflate(&mut d, &first), payload);
        first = msg;
    }
}

#[test]
fn a_fresh_stream_inflates_the_same_as_zlib_output() {
    let mut rng = Rng(99);
    let texts: Vec<Vec<u8>> = (0..64).map(|_| jsonish(&mut rng, 700)).collect();
    let mut ours = ZlibStream::new();
    let mut zlib = flate2::Compress::new(flate2::Compression::fast(), true);
    let (mut d_ours, mut d_zlib) = (flate2::Decompress::new(true), flate2::Decompress::new(true));
    let (mut ours_len, mut zlib_len) = (0, 0);
    for t in &texts {
        let mut a = Vec::new();
        ours.compress_sync(t, &mut a);
        let mut b = Vec::with_capacity(t.len() * 2 + 64);
        zlib.compress_vec(t, &mut b, flate2::FlushCompress::Sync)
            .unwrap();
        assert_eq!(inflate(&mut d_ours, &a), inflate(&mut d_zlib, &b));
        ours_len += a.len();
        zlib_len += b.len();
    }
    // Comparable to zlib's level 1 (deflate_quick), not stored blocks.
    assert!(ours_len * 10 < texts.len() * 700 * 3, "{ours_len}");
    assert!(ours_len < zlib_len * 2, "{ours_len} vs zlib {zlib_len}");
}

#[test]
fn distance_codes_follow_rfc1951() {
    // (distance, code, extra bits, extra value)
    for (dist, code, bits, extra) in [
        (1, 0, 0, 0),
        (4, 3, 0, 0),
        (5, 4, 1, 0),
        (6, 4, 1, 1),
        (7, 5, 1, 0),
        (9, 6, 2, 0),
        (24, 8, 3, 7),
        (193, 15, 6, 0),
        (16384, 27, 12, 4095),
        (32768, 29, 13, 8191),
    ] {
        let (v, len) = distance(dist);
        assert_eq!(len, 5 + bits, "distance {dist}");
        assert_eq!(v & 31, reverse(code, 5), "distance {dist}");
        assert_eq!(v >> 5, extra, "distance {dist}");
    }
}

#[test]
fn length_codes_follow_rfc1951() {
    // (length, symbol, extra bits, extra value)
    for (len, sym, bits, extra) in [
        (3, 257, 0, 0),
        (10, 264, 0, 0),
        (11, 265, 1, 0),
        (12, 265, 1, 1),
        (130, 280, 4, 15),
        (227, 284, 5, 0),
        (257, 284, 5, 30),
        (258, 285, 0, 0),
    ] {
        let (v, n) = LENGTHS[len - 3];
        let (code, clen) = if sym < 280 {
            (sym - 256, 7)
        } else {
            (0xC0 + sym - 280, 8)
        };
        assert_eq!(n, clen + bits, "length {len}");
        assert_eq!(v & ((1 << clen) - 1), reverse(code, clen), "length {len}");
        assert_eq!(v >> clen, extra, "length {len}");
    }
}
