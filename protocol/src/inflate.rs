//! Transport decompression: one streaming context per gateway connection.
//!
//! Discord compresses the whole websocket stream, not single messages, so the
//! dictionary built from earlier messages is needed to read later ones. A
//! context therefore lives exactly as long as one connection: a new
//! connection (identify or resume) must start with a fresh [`Decompressor`],
//! or the first message fails to inflate.
//!
//! # Algorithm
//! - `zlib-stream`: a websocket binary message that ends with the
//!   `Z_SYNC_FLUSH` marker `00 00 FF FF` (nearly all of them) is inflated
//!   straight from the message; a message without it is appended to a
//!   buffer until the buffer ends with the marker. Inflating (sync flush)
//!   runs in chunks through the connection's [`flate2::Decompress`], which
//!   keeps its window across messages. The result is one gateway payload.
//! - `zstd-stream`: every websocket binary message is fed to the
//!   connection's `zstd` streaming decoder until all input is consumed and
//!   the decoder stops filling the output chunk; the output is exactly one
//!   gateway payload.
//! - Both bound the decompressed size (and zlib bounds the buffered
//!   compressed bytes), so a hostile or broken stream is an error
//!   ([`InflateError::TooLarge`]) long before it is an out-of-memory kill.
//! - Both decoders write into one arena per thread, not a buffer per
//!   message or per connection: a payload is decoded straight into the
//!   arena's free part and split off it as a [`Bytes`] that shares the
//!   arena's allocation, so the event (and `d`, a slice of it) travels on
//!   with no copy and no allocation of its own. A fresh arena (zeroed once)
//!   starts when the free part gets short; an old one is freed when the last
//!   payload cut from it is dropped. Zeroing a fresh 32 KiB chunk per
//!   message was 7 % of the sharder's CPU, allocating and copying each
//!   payload out of a scratch chunk about 10 %, and a buffer per connection
//!   would be half of an idle shard's memory. A payload larger than the
//!   free part (a big GUILD_CREATE) is gathered into its own allocation.
//!
//! Every error leaves the context unusable: the caller drops the connection
//! and resumes on a new one, which gets a new context.

use bytes::{Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use std::cell::RefCell;
use zstd::stream::raw::{Decoder as ZstdDecoder, Operation};

/// Suffix of a complete zlib-stream message.
const ZLIB_SUFFIX: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Size of a fresh arena: below glibc's mmap threshold (128 KiB), so arenas
/// come from and return to the heap without a syscall or page faults each.
const ARENA: usize = 32 * 1024;

/// A new arena starts when the current one has less than this left.
const ARENA_MIN_FREE: usize = 4 * 1024;

thread_local! {
    /// The decode arena of this thread (see the module docs); its length is
    /// its free, zeroed-once part. Decoding never awaits, so one borrow
    /// never spans two messages.
    static ARENA_FREE: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// One decoder step: reads from `input` into `out`; returns (bytes read,
/// bytes written, end of stream).
type Step<'a> = dyn FnMut(&[u8], &mut [u8]) -> Result<(usize, usize, bool), InflateError> + 'a;

/// Runs `step` over `input` until it is consumed and the decoder has
/// flushed everything, into this thread's arena. `codec` names errors.
///
/// The payload is decoded into the arena's free part and split off it. One
/// that outgrows the free part is gathered in a `Vec` of its own, the free
/// part then serving as the step's output chunk.
fn decode(
    codec: &'static str,
    input: &[u8],
    limit: usize,
    step: &mut Step<'_>,
) -> Result<Bytes, InflateError> {
    ARENA_FREE.with_borrow_mut(|arena| {
        if arena.len() < ARENA_MIN_FREE {
            *arena = BytesMut::zeroed(ARENA);
        }
        let mut offset = 0;
        // Decoded so far: in the arena's front, or gathered in `large`.
        let mut in_arena = 0;
        let mut large: Option<Vec<u8>> = None;
        loop {
            let out = match large {
                Some(_) => &mut arena[..],
                None => &mut arena[in_arena..],
            };
            let room = out.len();
            let (read, wrote, end) = step(&input[offset..], out)?;
            let wrote = wrote.min(room);
            offset = offset.saturating_add(read).min(input.len());
            let decoded = large.as_ref().map_or(in_arena, Vec::len);
            if decoded + wrote > limit {
                return Err(InflateError::TooLarge { codec, limit });
            }
            match &mut large {
                Some(v) => v.extend_from_slice(&arena[..wrote]),
                None => in_arena += wrote,
            }
            if end || (offset == input.len() && wrote < room) {
                return Ok(match large {
                    Some(v) => Bytes::from(v),
                    None => arena.split_to(in_arena).freeze(),
                });
            }
            if read == 0 && wrote == 0 {
                return Err(InflateError::Stalled {
                    codec,
                    pending: input.len() - offset,
                });
            }
            if large.is_none() && in_arena == arena.len() {
                large = Some(arena.to_vec());
            }
        }
    })
}

/// Default bound on one decompressed payload: the largest GUILD_CREATE of a
/// huge guild is a few MiB; 64 MiB is far above it and far below a crash.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// Which transport compression the connection asked for (`compress=` in the
/// gateway URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain JSON text messages.
    None,
    /// `compress=zlib-stream`.
    ZlibStream,
    /// `compress=zstd-stream`.
    #[default]
    ZstdStream,
}

impl Compression {
    /// The value of the gateway URL's `compress` query parameter.
    pub fn query_value(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::ZlibStream => Some("zlib-stream"),
            Self::ZstdStream => Some("zstd-stream"),
        }
    }
}

/// Why a compressed message could not be turned into a payload. Every
/// variant means: close this connection and resume on a new one.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    /// The compressed stream is corrupt.
    #[error("{codec} stream is corrupt: {message}")]
    Corrupt {
        codec: &'static str,
        message: String,
    },
    /// The payload (or the buffered compressed bytes) would exceed the bound.
    #[error("{codec} payload exceeds the {limit}-byte bound")]
    TooLarge { codec: &'static str, limit: usize },
    /// The decoder made no progress on input it was given: the message is
    /// truncated or garbage.
    #[error("{codec} stream stalled with {pending} bytes of input unconsumed")]
    Stalled { codec: &'static str, pending: usize },
}

enum Context {
    None,
    Zlib {
        /// Raw deflate: the 2-byte zlib header is checked and stripped by
        /// hand ([`strip_zlib_header`]), because a zlib-mode context
        /// computes an Adler-32 of every output byte (3.5 % of the
        /// sharder's CPU) for a trailer that zlib-stream never sends.
        inflate: Box<Decompress>,
        header_seen: bool,
        pending: Vec<u8>,
    },
    Zstd(Box<ZstdDecoder<'static>>),
}

/// The decompression state of one connection.
pub struct Decompressor {
    context: Context,
    max_payload: usize,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.context {
            Context::None => "none",
            Context::Zlib { .. } => "zlib-stream",
            Context::Zstd(_) => "zstd-stream",
        };
        f.debug_struct("Decompressor")
            .field("kind", &kind)
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

impl Decompressor {
    /// A fresh context for a new connection.
    pub fn new(compression: Compression, max_payload: usize) -> Result<Self, InflateError> {
        let context = match compression {
            Compression::None => Context::None,
            Compression::ZlibStream => Context::Zlib {
                inflate: Box::new(Decompress::new(false)),
                header_seen: false,
                pending: Vec::new(),
            },
            Compression::ZstdStream => {
                Context::Zstd(Box::new(ZstdDecoder::new().map_err(|e| {
                    InflateError::Corrupt {
                        codec: "zstd",
                        message: format!("cannot create decoder: {e}"),
                    }
                })?))
            }
        };
        Ok(Self {
            context,
            max_payload,
        })
    }

    /// Feeds one binary websocket message. Returns the payload when the
    /// message completes one, `None` when more messages are needed
    /// (zlib-stream only).
    pub fn push(&mut self, message: &[u8]) -> Result<Option<Bytes>, InflateError> {
        let limit = self.max_payload;
        match &mut self.context {
            Context::None => {
                if message.len() > limit {
                    return Err(InflateError::TooLarge {
                        codec: "plain",
                        limit,
                    });
                }
                Ok(Some(Bytes::copy_from_slice(message)))
            }
            Context::Zlib {
                inflate,
                header_seen,
                pending,
            } => {
                if pending.len() + message.len() > limit {
                    *pending = Vec::new();
                    return Err(InflateError::TooLarge {
                        codec: "zlib",
                        limit,
                    });
                }
                if pending.is_empty() && message.ends_with(&ZLIB_SUFFIX) {
                    let body = strip_zlib_header(header_seen, message)?;
                    return inflate_zlib(inflate, body, limit).map(Some);
                }
                pending.extend_from_slice(message);
                if !pending.ends_with(&ZLIB_SUFFIX) {
                    return Ok(None);
                }
                // Freed, not kept: an idle shard should not hold its largest
                // split message's capacity.
                let input = std::mem::take(pending);
                let body = strip_zlib_header(header_seen, &input)?;
                inflate_zlib(inflate, body, limit).map(Some)
            }
            Context::Zstd(decoder) => decode_zstd(decoder, message, limit).map(Some),
        }
    }
}

/// The first complete message of a connection starts with the zlib header
/// (RFC 1950): deflate (`CM` 8), a window of at most 32 KiB, no preset
/// dictionary, and a check value that makes it a multiple of 31. Returns
/// the deflate data after it.
fn strip_zlib_header<'a>(
    header_seen: &mut bool,
    input: &'a [u8],
) -> Result<&'a [u8], InflateError> {
    if *header_seen {
        return Ok(input);
    }
    let corrupt = |message: &str| InflateError::Corrupt {
        codec: "zlib",
        message: message.to_owned(),
    };
    let (&[cmf, flg], body) = input
        .split_first_chunk::<2>()
        .ok_or_else(|| corrupt("message shorter than the zlib header"))?;
    if cmf & 0x0F != 8 || cmf >> 4 > 7 || (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
        return Err(corrupt("invalid zlib header"));
    }
    if flg & 0x20 != 0 {
        return Err(corrupt("zlib header asks for a preset dictionary"));
    }
    *header_seen = true;
    Ok(body)
}

fn inflate_zlib(
    inflate: &mut Decompress,
    input: &[u8],
    limit: usize,
) -> Result<Bytes, InflateError> {
    decode("zlib", input, limit, &mut |input, out| {
        let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress(input, out, FlushDecompress::Sync)
            .map_err(|e| InflateError::Corrupt {
                codec: "zlib",
                message: e.to_string(),
            })?;
        let read = usize::try_from(inflate.total_in() - in_before).unwrap_or(usize::MAX);
        let wrote = usize::try_from(inflate.total_out() - out_before).unwrap_or(usize::MAX);
        Ok((read, wrote, status == Status::StreamEnd))
    })
}

fn decode_zstd(
    decoder: &mut ZstdDecoder<'static>,
    input: &[u8],
    limit: usize,
) -> Result<Bytes, InflateError> {
    decode("zstd", input, limit, &mut |input, out| {
        let status = decoder
            .run_on_buffers(input, out)
            .map_err(|e| InflateError::Corrupt {
                codec: "zstd",
                message: e.to_string(),
            })?;
        Ok((
            status.bytes_read,
            status.bytes_written.min(out.len()),
            false,
        ))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use flate2::{Compress, Compression as Level, FlushCompress};
    use std::io::Write;

    /// A zlib-stream server side: one deflate context, sync-flushed per message.
    pub(crate) struct ZlibServer(Compress);

    impl ZlibServer {
        pub(crate) fn new() -> Self {
            Self(Compress::new(Level::default(), true))
        }
        pub(crate) fn message(&mut self, payload: &[u8]) -> Vec<u8> {
            let mut out = Vec::with_capacity(payload.len() + 64);
            let mut offset = 0;
            loop {
                out.reserve(4096);
                let before = self.0.total_in();
                self.0
                    .compress_vec(&payload[offset..], &mut out, FlushCompress::Sync)
                    .unwrap();
                offset += (self.0.total_in() - before) as usize;
                if offset == payload.len() && out.ends_with(&ZLIB_SUFFIX) {
                    return out;
                }
            }
        }
    }

    /// A zstd-stream server side: one encoder, flushed per message.
    fn zstd_messages(payloads: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let mut out = Vec::new();
        for p in payloads {
            enc.write_all(p).unwrap();
            enc.flush().unwrap();
            out.push(std::mem::take(enc.get_mut()));
        }
        out
    }

    #[test]
    fn zlib_context_is_kept_across_messages() {
        let mut server = ZlibServer::new();
        let mut d = Decompressor::new(Compression::ZlibStream, 1 << 20).unwrap();
        let a = br#"{"op":10,"d":{"heartbeat_interval":41250}}"#;
        let b = br#"{"op":0,"s":1,"t":"READY","d":{"heartbeat_interval":41250}}"#;
        assert_eq!(&d.push(&server.message(a)).unwrap().unwrap()[..], &a[..]);
        // The second message refers back to the first one's window.
        let second = server.message(b);
        assert_eq!(&d.push(&second).unwrap().unwrap()[..], &b[..]);
        // A fresh context cannot read a mid-stream message.
        let mut fresh = Decompressor::new(Compression::ZlibStream, 1 << 20).unwrap();
        let third = server.message(b);
        let r = fresh.push(&third);
        assert!(!matches!(r, Ok(Some(ref p)) if p[..] == b[..]), "{r:?}");
    }

    #[test]
    fn payloads_cut_from_the_arena_stay_intact_across_arenas() {
        for kind in [Compression::ZlibStream, Compression::ZstdStream] {
            let mut zlib = ZlibServer::new();
            let mut zstd = zstd::stream::raw::Encoder::new(3).unwrap();
            let mut d = Decompressor::new(kind, 1 << 20).unwrap();
            let mut kept = Vec::new();
            // Sizes from 0 to 150 KiB: many arenas, payloads that straddle
            // an arena's end, and some larger than a whole arena.
            for i in 0..400usize {
                let len = (i * 7919) % (if i % 50 == 0 { 150 << 10 } else { 20 << 10 });
                let payload: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
                let msg = match kind {
                    Compression::ZlibStream => zlib.message(&payload),
                    _ => {
                        use zstd::stream::raw::{InBuffer, OutBuffer};
                        let mut out = vec![0u8; payload.len() + 1024];
                        let mut o = OutBuffer::around(&mut out);
                        let mut input = InBuffer::around(&payload);
                        while input.pos < payload.len() {
                            zstd.run(&mut input, &mut o).unwrap();
                        }
                        zstd.flush(&mut o).unwrap();
                        let n = o.pos();
                        out.truncate(n);
                        out
                    }
                };
                let got = d.push(&msg).unwrap().unwrap();
                kept.push((payload, got));
            }
            for (i, (want, got)) in kept.iter().enumerate() {
                assert!(got[..] == want[..], "{kind:?} payload {i} changed");
            }
        }
    }

    #[test]
    fn zlib_message_split_over_frames_waits_for_suffix() {
        let mut server = ZlibServer::new();
        let payload = br#"{"op":11,"d":null}"#;
        let msg = server.message(payload);
        let mut d = Decompressor::new(Compression::ZlibStream, 1 << 20).unwrap();
        let (head, tail) = msg.split_at(msg.len() / 2);
        assert!(d.push(head).unwrap().is_none());
        assert_eq!(&d.push(tail).unwrap().unwrap()[..], &payload[..]);
    }

    #[test]
    fn zlib_corrupt_is_an_error() {
        let mut d = Decompressor::new(Compression::ZlibStream, 1 << 20).unwrap();
        let err = d
            .push(&[0x12, 0x34, 0x56, 0x00, 0x00, 0xFF, 0xFF])
            .unwrap_err();
        assert!(matches!(err, InflateError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn zlib_bomb_is_bounded() {
        let mut server = ZlibServer::new();
        let big = vec![b'a'; 4 << 20];
        let msg = server.message(&big);
        assert!(msg.len() < 64 << 10, "test premise: highly compressible");
        let mut d = Decompressor::new(Compression::ZlibStream, 1 << 20).unwrap();
        assert!(matches!(d.push(&msg), Err(InflateError::TooLarge { .. })));
    }

    #[test]
    fn zlib_pending_bytes_are_bounded() {
        let mut d = Decompressor::new(Compression::ZlibStream, 1024).unwrap();
        assert!(d.push(&[1u8; 1000]).unwrap().is_none());
        assert!(matches!(
            d.push(&[1u8; 100]),
            Err(InflateError::TooLarge { .. })
        ));
    }

    #[test]
    fn zstd_one_message_one_payload() {
        let a: &[u8] = br#"{"op":10,"d":{"heartbeat_interval":41250}}"#;
        let b: &[u8] = br#"{"op":0,"s":1,"t":"GUILD_CREATE","d":{"id":"1"}}"#;
        let big = vec![b'x'; 100_000];
        let msgs = zstd_messages(&[a, b, &big]);
        let mut d = Decompressor::new(Compression::ZstdStream, 1 << 20).unwrap();
        assert_eq!(&d.push(&msgs[0]).unwrap().unwrap()[..], a);
        assert_eq!(&d.push(&msgs[1]).unwrap().unwrap()[..], b);
        assert_eq!(&d.push(&msgs[2]).unwrap().unwrap()[..], &big[..]);
    }

    #[test]
    fn zstd_corrupt_and_huge_are_errors() {
        let mut d = Decompressor::new(Compression::ZstdStream, 1 << 20).unwrap();
        assert!(d.push(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]).is_err());
        let big = vec![b'a'; 4 << 20];
        let msgs = zstd_messages(&[&big]);
        let mut d = Decompressor::new(Compression::ZstdStream, 1 << 20).unwrap();
        assert!(matches!(
            d.push(&msgs[0]),
            Err(InflateError::TooLarge { .. })
        ));
    }

    #[test]
    fn zstd_truncated_message_never_yields_the_payload() {
        let a: &[u8] = br#"{"op":0,"s":1,"t":"GUILD_CREATE","d":{"id":"1","name":"x"}}"#;
        let msgs = zstd_messages(&[a]);
        let mut d = Decompressor::new(Compression::ZstdStream, 1 << 20).unwrap();
        let cut = &msgs[0][..msgs[0].len() - 3];
        match d.push(cut) {
            Ok(Some(p)) => assert_ne!(&p[..], a),
            Ok(None) => panic!("zstd always yields"),
            Err(_) => {}
        }
    }

    #[test]
    fn plain_is_bounded() {
        let mut d = Decompressor::new(Compression::None, 10).unwrap();
        assert_eq!(&d.push(b"{}").unwrap().unwrap()[..], &b"{}"[..]);
        assert!(d.push(&[b' '; 11]).is_err());
    }
}
