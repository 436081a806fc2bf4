//! Real compressed gateway streams, then mutated: the payloads are
//! compressed as the gateway does (one zlib context sync-flushed per
//! message, or one zstd stream flushed per message), then bytes of the
//! compressed messages are flipped, overwritten, dropped or truncated as the
//! input says. Unmutated streams must give back every payload exactly;
//! mutated ones must give payloads within the bound or errors, never panics.
//!
//! Input layout: `mode` byte (bit 0: zlib or zstd), `n` mutation count, `n`
//! mutations of 4 bytes (op, message index, u16 position), then the plain
//! payloads, each a little-endian u16 length then its bytes.
#![no_main]

use flate2::{Compress, Compression as Level, FlushCompress};
use gateway_protocol::{Compression, Decompressor, Frame};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

const MAX_PAYLOAD: usize = 64 * 1024;

fn zlib_messages(payloads: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut c = Compress::new(Level::default(), true);
    payloads
        .iter()
        .map(|p| {
            let mut out = Vec::with_capacity(p.len() + 64);
            let mut offset = 0usize;
            loop {
                out.reserve(4096);
                let (before, written) = (c.total_in(), out.len());
                c.compress_vec(&p[offset..], &mut out, FlushCompress::Sync)
                    .expect("deflate of a buffer");
                offset += usize::try_from(c.total_in() - before).expect("fits");
                // An empty payload right after a flush compresses to nothing.
                let stalled = out.len() == written;
                if offset == p.len() && (out.ends_with(&[0, 0, 0xFF, 0xFF]) || stalled) {
                    return out;
                }
            }
        })
        .collect()
}

fn zstd_messages(payloads: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder");
    payloads
        .iter()
        .map(|p| {
            enc.write_all(p).expect("write to a Vec");
            enc.flush().expect("flush to a Vec");
            std::mem::take(enc.get_mut())
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let [mode, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*n % 16);
    if rest.len() < 4 * n {
        return;
    }
    let (mutations, mut rest) = rest.split_at(4 * n);
    let mut payloads = Vec::new();
    while !rest.is_empty() && payloads.len() < 16 {
        let (len, tail) = match rest {
            [a, b, tail @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), tail),
            _ => break,
        };
        let (p, tail) = tail.split_at(len.min(tail.len()));
        // The gateway never sends an empty payload (an empty sync flush
        // produces no bytes, so there would be no message to send).
        if !p.is_empty() {
            payloads.push(p);
        }
        rest = tail;
    }
    if payloads.is_empty() {
        return;
    }
    let zlib = mode & 1 == 0;
    let mut messages = if zlib {
        zlib_messages(&payloads)
    } else {
        zstd_messages(&payloads)
    };
    for m in mutations.chunks_exact(4) {
        let (op, idx, pos) = (
            m[0],
            usize::from(m[1]),
            usize::from(u16::from_le_bytes([m[2], m[3]])),
        );
        let count = messages.len();
        let msg = &mut messages[idx % count];
        if msg.is_empty() {
            continue;
        }
        let at = pos % msg.len();
        match op % 5 {
            0 => msg[at] ^= 1 << (op >> 5),
            1 => msg[at] = op,
            2 => {
                msg.remove(at);
            }
            3 => msg.truncate(at),
            _ => msg.insert(at, op),
        }
    }
    let compression = if zlib {
        Compression::ZlibStream
    } else {
        Compression::ZstdStream
    };
    let mut inflater = Decompressor::new(compression, MAX_PAYLOAD).expect("decoder");
    for (i, msg) in messages.iter().enumerate() {
        match inflater.push(msg) {
            Ok(Some(out)) => {
                assert!(out.len() <= MAX_PAYLOAD);
                if n == 0 {
                    assert_eq!(out, payloads[i], "unmutated payload {i} differs");
                }
                if let Ok(f) = Frame::parse(&out) {
                    let _ = f.dispatch_keys();
                    let _ = f.d_range(&out);
                }
            }
            Ok(None) => assert!(n > 0, "unmutated message {i} incomplete"),
            Err(e) => {
                assert!(n > 0, "unmutated message {i}: {e}");
                return;
            }
        }
    }
});
