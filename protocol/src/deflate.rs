//! A small zlib-stream compressor: one context per connection, one
//! Z_SYNC_FLUSH per message, in a few KiB of state.
//!
//! The wire format is what zlib produces at level 1 with `Z_SYNC_FLUSH`:
//! the zlib header `78 01` once, then per message one fixed-Huffman deflate
//! block (LZ77 matches against everything this connection sent, within the
//! window) followed by an empty stored block, so every message ends with
//! `00 00 FF FF`. Any inflater, with its usual 32 KiB window, decodes it.
//! The stream is never finished (Discord's is not either), so no Adler-32
//! is ever written or computed.
//!
//! # Algorithm
//! Greedy LZ77 as in zlib-ng's level 1 (`deflate_quick`): at each position,
//! hash the next 4 bytes, look up the last position with that hash, and
//! take the match if its first 4 bytes agree, extended up to 258 bytes;
//! otherwise emit a literal. Only examined positions are hashed. The
//! difference from zlib is the size of the state: a [`HASH_SIZE`]-entry
//! table and a [`HISTORY`]-byte history instead of zlib's 64 Ki-entry table
//! and 32 KiB window (about 300 KiB per context with zlib-rs), so 256
//! contexts stay in cache. When the history is full, its last [`WINDOW`]
//! bytes move to the front and the table is rebased (entries that fall out
//! of the window are cleared).

/// Bytes of history kept after a slide: the guaranteed match window.
const WINDOW: usize = 8 * 1024;
/// History capacity; matches reach back at most this far (< 32 KiB, the
/// window declared in the zlib header).
const HISTORY: usize = 2 * WINDOW;
const HASH_BITS: u32 = 12;
/// Entries in the match table.
const HASH_SIZE: usize = 1 << HASH_BITS;
const MIN_MATCH: usize = 4;
const MAX_MATCH: usize = 258;
/// The zlib header: deflate, 32 KiB window, "fastest" level, valid check.
const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];
/// The end of a sync flush: an empty stored block's LEN and NLEN.
const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// One connection's zlib-stream compression context.
#[derive(Debug)]
pub struct ZlibStream {
    /// Bytes sent so far, the last up to [`HISTORY`] of them.
    history: Vec<u8>,
    /// Per hash: 1 + the last position in `history` with that hash, 0 if none.
    table: Box<[u16; HASH_SIZE]>,
    header_sent: bool,
}

impl Default for ZlibStream {
    fn default() -> Self {
        Self::new()
    }
}

impl ZlibStream {
    /// A fresh context: the next message starts the zlib stream.
    pub fn new() -> Self {
        Self {
            history: Vec::with_capacity(HISTORY),
            table: Box::new([0; HASH_SIZE]),
            header_sent: false,
        }
    }

    /// Appends `input` compressed and sync-flushed to `out`: one complete
    /// zlib-stream message ending with `00 00 FF FF`.
    pub fn compress_sync(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.compress_parts(&[input], out);
    }

    /// [`Self::compress_sync`] of the concatenation of `parts`, without
    /// concatenating them first.
    pub fn compress_parts(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        out.reserve(total + total / 8 + 16);
        if !self.header_sent {
            out.extend_from_slice(&ZLIB_HEADER);
            self.header_sent = true;
        }
        let mut bits = Bits::default();
        if total > 0 {
            // BFINAL = 0, BTYPE = 01 (fixed Huffman codes).
            bits.put(0b010, 3, out);
            if self.history.len() + total > HISTORY && self.history.len() > WINDOW {
                self.slide();
            }
            let mut start = self.history.len();
            for part in parts {
                let mut rest = *part;
                while !rest.is_empty() {
                    if self.history.len() == HISTORY {
                        self.encode(start, &mut bits, out);
                        self.slide();
                        start = self.history.len();
                    }
                    let take = rest.len().min(HISTORY - self.history.len());
                    self.history.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                }
            }
            self.encode(start, &mut bits, out);
            // End of block: symbol 256, seven zero bits.
            bits.put(0, 7, out);
        }
        // Sync flush: an empty stored block, byte-aligned.
        bits.put(0, 3, out);
        bits.align(out);
        out.extend_from_slice(&SYNC_TAIL);
    }

    /// Keeps the last [`WINDOW`] bytes of history and rebases the table.
    fn slide(&mut self) {
        let shift = self.history.len() - WINDOW;
        self.history.copy_within(shift.., 0);
        self.history.truncate(WINDOW);
        let shift = u16::try_from(shift).unwrap_or(u16::MAX);
        for e in self.table.iter_mut() {
            *e = e.saturating_sub(shift);
        }
    }

    /// Emits the symbols for `history[start..]`.
    fn encode(&mut self, start: usize, bits: &mut Bits, out: &mut Vec<u8>) {
        let h = &self.history[..];
        let end = h.len();
        let mut pos = start;
        while pos + MIN_MATCH <= end {
            let v = read_u32(h, pos);
            let slot = hash(v);
            let cand = usize::from(self.table[slot]);
            // `pos + 1 <= HISTORY`, which fits in u16.
            self.table[slot] = (pos + 1) as u16;
            if cand != 0 && read_u32(h, cand - 1) == v {
                let from = cand - 1;
                let len = match_len(h, from, pos, (end - pos).min(MAX_MATCH));
                bits.put_match(len, pos - from, out);
                pos += len;
            } else {
                bits.put_literal(h[pos], out);
                pos += 1;
            }
        }
        for &b in &h[pos..] {
            bits.put_literal(b, out);
        }
    }
}

fn read_u32(h: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(h: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(b)
}

fn hash(v: u32) -> usize {
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// Length of the match between `from` and `pos` (`from < pos`), at least
/// [`MIN_MATCH`] (already checked) and at most `max`.
fn match_len(h: &[u8], from: usize, pos: usize, max: usize) -> usize {
    let mut len = MIN_MATCH;
    while len + 8 <= max {
        let x = read_u64(h, from + len) ^ read_u64(h, pos + len);
        if x != 0 {
            return len + (x.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    while len < max && h[from + len] == h[pos + len] {
        len += 1;
    }
    len
}

/// LSB-first bit output, as deflate packs it.
#[derive(Default)]
struct Bits {
    acc: u64,
    n: u32,
}

impl Bits {
    /// Appends the low `len` (<= 32) bits of `v`.
    fn put(&mut self, v: u32, len: u32, out: &mut Vec<u8>) {
        self.acc |= u64::from(v) << self.n;
        self.n += len;
        if self.n >= 32 {
            out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    fn put_literal(&mut self, b: u8, out: &mut Vec<u8>) {
        let (code, len) = LITERALS[usize::from(b)];
        self.put(code, len, out);
    }

    /// A match of `len` (3..=258) bytes, `dist` (1..=32768) back.
    fn put_match(&mut self, len: usize, dist: usize, out: &mut Vec<u8>) {
        let (lcode, llen) = LENGTHS[len - 3];
        let (dcode, dlen) = distance(dist);
        self.put(lcode | (dcode << llen), llen + dlen, out);
    }

    /// Writes out the pending bits, padded with zeros to a byte boundary.
    fn align(&mut self, out: &mut Vec<u8>) {
        while self.n > 0 {
            out.push(self.acc as u8);
            self.acc >>= 8;
            self.n = self.n.saturating_sub(8);
        }
        self.acc = 0;
    }
}

/// Reverses the low `len` bits of `code` (Huffman codes go MSB first).
const fn reverse(code: u32, len: u32) -> u32 {
    code.reverse_bits() >> (32 - len)
}

/// Fixed literal codes: (bit-reversed code, length).
const LITERALS: [(u32, u32); 256] = {
    let mut t = [(0, 0); 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i < 144 {
            (reverse(0x30 + i as u32, 8), 8)
        } else {
            (reverse(0x190 + (i as u32 - 144), 9), 9)
        };
        i += 1;
    }
    t
};

const LENGTH_BASE: [u32; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];

/// Match lengths 3..=258: (length code with its extra bits, total bits).
const LENGTHS: [(u32, u32); 256] = {
    let mut t = [(0, 0); 256];
    let mut sym = 0;
    let mut len = 3;
    while len <= 258 {
        while sym + 1 < 29 && LENGTH_BASE[sym + 1] <= len {
            sym += 1;
        }
        // Symbols 257..=279 have 7-bit codes 0..=22; 280..=285 8-bit codes
        // from 0xC0.
        let s = 257 + sym as u32;
        let (code, clen) = if s < 280 {
            (reverse(s - 256, 7), 7)
        } else {
            (reverse(0xC0 + (s - 280), 8), 8)
        };
        let extra = len - LENGTH_BASE[sym];
        t[(len - 3) as usize] = (code | (extra << clen), clen + LENGTH_EXTRA[sym]);
        len += 1;
    }
    t
};

/// Bit-reversed 5-bit fixed distance codes.
const DIST_CODES: [u32; 30] = {
    let mut t = [0; 30];
    let mut i = 0;
    while i < 30 {
        t[i] = reverse(i as u32, 5);
        i += 1;
    }
    t
};

/// Distance 1..=32768: (distance code with its extra bits, total bits).
fn distance(dist: usize) -> (u32, u32) {
    let d = (dist - 1) as u32;
    if d < 4 {
        return (DIST_CODES[d as usize], 5);
    }
    let top = 31 - d.leading_zeros();
    let extra_bits = top - 1;
    let code = 2 * top + ((d >> extra_bits) & 1);
    let extra = d & ((1 << extra_bits) - 1);
    (DIST_CODES[code as usize] | (extra << 5), 5 + extra_bits)
}

#[cfg(test)]
#[path = "deflate_tests.rs"]
mod tests;
