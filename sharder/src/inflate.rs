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
//! - The chunk both decoders write into is one scratch buffer per thread,
//!   not per message or per connection: zeroing a fresh 32 KiB chunk per
//!   message was 7 % of the sharder's CPU, and one per connection would be
//!   half of an idle shard's memory. A payload that fits one chunk (nearly
//!   all) is copied out into an allocation of exactly its size.
//!
//! Every error leaves the context unusable: the caller drops the connection
//! and resumes on a new one, which gets a new context.

use flate2::{Decompress, FlushDecompress, Status};
use std::cell::RefCell;
use zstd::stream::raw::{Decoder as ZstdDecoder, Operation};

/// Suffix of a complete zlib-stream message.
const ZLIB_SUFFIX: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Size of one decompression step's output chunk.
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// The output chunk of every decoder on this thread (see the module
    /// docs). Decoding never awaits, so one borrow never spans two messages.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch chunk, `CHUNK` bytes long.
fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH.with_borrow_mut(|chunk| {
        if chunk.len() < CHUNK {
            chunk.resize(CHUNK, 0);
        }
        f(chunk)
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

impl From<config::GatewayCompression> for Compression {
    fn from(c: config::GatewayCompression) -> Self {
        match c {
            config::GatewayCompression::None => Self::None,
            config::GatewayCompression::ZlibStream => Self::ZlibStream,
            config::GatewayCompression::ZstdStream => Self::ZstdStream,
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
    pub fn push(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, InflateError> {
        let limit = self.max_payload;
        match &mut self.context {
            Context::None => {
                if message.len() > limit {
                    return Err(InflateError::TooLarge {
                        codec: "plain",
                        limit,
                    });
                }
                Ok(Some(message.to_vec()))
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
) -> Result<Vec<u8>, InflateError> {
    with_scratch(|chunk| inflate_zlib_into(inflate, input, limit, chunk))
}

fn inflate_zlib_into(
    inflate: &mut Decompress,
    input: &[u8],
    limit: usize,
    chunk: &mut [u8],
) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress(&input[offset..], chunk, FlushDecompress::Sync)
            .map_err(|e| InflateError::Corrupt {
                codec: "zlib",
                message: e.to_string(),
            })?;
        let consumed = usize::try_from(inflate.total_in() - in_before).unwrap_or(usize::MAX);
        let produced = usize::try_from(inflate.total_out() - out_before).unwrap_or(usize::MAX);
        offset = offset.saturating_add(consumed).min(input.len());
        if out.len() + produced > limit {
            return Err(InflateError::TooLarge {
                codec: "zlib",
                limit,
            });
        }
        out.extend_from_slice(&chunk[..produced.min(chunk.len())]);
        let input_done = offset == input.len();
        if status == Status::StreamEnd || (input_done && produced < chunk.len()) {
            return Ok(out);
        }
        if consumed == 0 && produced == 0 {
            return Err(InflateError::Stalled {
                codec: "zlib",
                pending: input.len() - offset,
            });
        }
    }
}

fn decode_zstd(
    decoder: &mut ZstdDecoder<'static>,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, InflateError> {
    with_scratch(|chunk| decode_zstd_into(decoder, input, limit, chunk))
}

fn decode_zstd_into(
    decoder: &mut ZstdDecoder<'static>,
    input: &[u8],
    limit: usize,
    chunk: &mut [u8],
) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let status = decoder
            .run_on_buffers(&input[offset..], chunk)
            .map_err(|e| InflateError::Corrupt {
                codec: "zstd",
                message: e.to_string(),
            })?;
        offset = offset.saturating_add(status.bytes_read).min(input.len());
        if out.len() + status.bytes_written > limit {
            return Err(InflateError::TooLarge {
                codec: "zstd",
                limit,
            });
        }
        out.extend_from_slice(&chunk[..status.bytes_written.min(chunk.len())]);
        let input_done = offset == input.len();
        if input_done && status.bytes_written < chunk.len() {
            return Ok(out);
        }
        if status.bytes_read == 0 && status.bytes_written == 0 {
            return Err(InflateError::Stalled {
                codec: "zstd",
                pending: input.len() - offset,
            });
        }
    }
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
        assert_eq!(d.push(&server.message(a)).unwrap().unwrap(), a);
        // The second message refers back to the first one's window.
        let second = server.message(b);
        assert_eq!(d.push(&second).unwrap().unwrap(), b);
        // A fresh context cannot read a mid-stream message.
        let mut fresh = Decompressor::new(Compression::ZlibStream, 1 << 20).unwrap();
        let third = server.message(b);
        let r = fresh.push(&third);
        assert!(!matches!(r, Ok(Some(ref p)) if p == b), "{r:?}");
    }

    #[test]
    fn zlib_message_split_over_frames_waits_for_suffix() {
        let mut server = ZlibServer::new();
        let payload = br#"{"op":11,"d":null}"#;
        let msg = server.message(payload);
        let mut d = Decompressor::new(Compression::ZlibStream, 1 << 20).unwrap();
        let (head, tail) = msg.split_at(msg.len() / 2);
        assert!(d.push(head).unwrap().is_none());
        assert_eq!(d.push(tail).unwrap().unwrap(), payload);
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
        assert_eq!(d.push(&msgs[0]).unwrap().unwrap(), a);
        assert_eq!(d.push(&msgs[1]).unwrap().unwrap(), b);
        assert_eq!(d.push(&msgs[2]).unwrap().unwrap(), big);
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
            Ok(Some(p)) => assert_ne!(p, a),
            Ok(None) => panic!("zstd always yields"),
            Err(_) => {}
        }
    }

    #[test]
    fn plain_is_bounded() {
        let mut d = Decompressor::new(Compression::None, 10).unwrap();
        assert_eq!(d.push(b"{}").unwrap().unwrap(), b"{}");
        assert!(d.push(&[b' '; 11]).is_err());
    }
}
