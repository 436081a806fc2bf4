//! Transport compression: `zlib-stream` and `zstd-stream`, one compression
//! context per connection, kept across messages as Discord does.
//!
//! # Algorithm
//! zlib-stream: every payload is fed to the connection's deflate stream and
//! flushed with Z_SYNC_FLUSH, so each websocket message ends with
//! `00 00 FF FF` and the client's single inflate context can decode it. The
//! deflate stream is the simulator's own level-1 compressor
//! ([`gateway_protocol::ZlibStream`]), whose few KiB of state per connection stay in
//! cache where zlib's 300 KiB would not.
//! zstd-stream: every payload is fed to the connection's zstd stream and
//! flushed (ZSTD_e_flush), so each websocket message decompresses, in the
//! client's single decompression context, to exactly one payload.
//!
//! Payload compression (IDENTIFY `compress: true`, plain transport only):
//! each payload of at least [`PAYLOAD_COMPRESS_MIN`] bytes is sent as a
//! binary message holding one complete zlib stream; smaller ones stay text,
//! so clients must handle both, as on Discord.
//!
//! Dispatches are framed straight into a per-connection output buffer
//! ([`Transport::frame_into`]) that the connection writes once per batch,
//! reusing the compression scratch buffer, so a dispatch costs no
//! allocation on this path.

use super::protocol;
use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use gateway_protocol::ZlibStream;
use tokio_tungstenite::tungstenite::Message;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

/// The compression a connection asked for with `compress=`.
pub(crate) enum Transport {
    Plain,
    Zlib(ZlibStream),
    Zstd(Box<zstd::stream::raw::Encoder<'static>>),
}

/// Compression failed (should not happen; the connection is closed).
#[derive(Debug, thiserror::Error)]
#[error("transport compression failed: {0}")]
pub(crate) struct CompressError(String);

impl Transport {
    /// Parses the `compress` query value.
    pub(crate) fn from_query(value: Option<&str>) -> Result<Self, String> {
        match value {
            None => Ok(Transport::Plain),
            Some("zlib-stream") => Ok(Transport::Zlib(ZlibStream::new())),
            Some("zstd-stream") => zstd::stream::raw::Encoder::new(1)
                .map(|e| Transport::Zstd(Box::new(e)))
                .map_err(|e| format!("cannot create zstd context: {e}")),
            Some(other) => Err(format!(
                "unsupported compress={other:?}; use zlib-stream or zstd-stream"
            )),
        }
    }

    /// Appends one payload as one complete server websocket frame (FIN,
    /// unmasked) to `out`, compressing through `scratch`.
    pub(crate) fn frame_into(
        &mut self,
        text: &str,
        payload_zlib: Option<&mut Compress>,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        scratch.clear();
        let opcode = match self {
            Transport::Plain => match payload_zlib {
                Some(c) if text.len() >= PAYLOAD_COMPRESS_MIN => {
                    c.reset();
                    zlib_into(c, text.as_bytes(), FlushCompress::Finish, scratch)?;
                    OP_BINARY
                }
                _ => {
                    push_ws_header(out, OP_TEXT, text.len());
                    out.extend_from_slice(text.as_bytes());
                    return Ok(());
                }
            },
            Transport::Zlib(z) => {
                z.compress_sync(text.as_bytes(), scratch);
                OP_BINARY
            }
            Transport::Zstd(e) => {
                zstd_into(e, text.as_bytes(), scratch)?;
                OP_BINARY
            }
        };
        push_ws_header(out, opcode, scratch.len());
        out.extend_from_slice(scratch);
        Ok(())
    }

    /// Appends dispatch `d` with `seq` and `event` as one frame, exactly as
    /// [`Self::frame_into`] would frame [`protocol::dispatch_into`]'s text.
    /// zlib-stream compresses the parts without joining them first; `text`
    /// is reused scratch space.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn frame_dispatch_into(
        &mut self,
        seq: u64,
        event: &str,
        d: &[u8],
        payload_zlib: Option<&mut Compress>,
        text: &mut String,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        protocol::dispatch_head(text, seq, event);
        let parts = [text.as_bytes(), d, b"}"];
        match self {
            Transport::Zlib(z) => {
                scratch.clear();
                z.compress_parts(&parts, scratch);
                push_ws_header(out, OP_BINARY, scratch.len());
                out.extend_from_slice(scratch);
                Ok(())
            }
            Transport::Plain if payload_zlib.is_none() => {
                push_ws_header(out, OP_TEXT, parts.iter().map(|p| p.len()).sum());
                for p in parts {
                    out.extend_from_slice(p);
                }
                Ok(())
            }
            _ => {
                // `d` is a whole frame's text, so valid UTF-8.
                let d = std::str::from_utf8(d).map_err(|e| CompressError(e.to_string()))?;
                text.push_str(d);
                text.push('}');
                self.frame_into(text, payload_zlib, scratch, out)
            }
        }
    }

    /// Encodes one payload as one websocket message.
    pub(crate) fn encode(&mut self, text: &str) -> Result<Message, CompressError> {
        match self {
            Transport::Plain => Ok(Message::Text(text.to_owned().into())),
            Transport::Zlib(z) => {
                let mut out = Vec::with_capacity(text.len() / 2 + 64);
                z.compress_sync(text.as_bytes(), &mut out);
                Ok(Message::Binary(Bytes::from(out)))
            }
            Transport::Zstd(e) => {
                let mut out = Vec::with_capacity(text.len() / 2 + 64);
                zstd_into(e, text.as_bytes(), &mut out)?;
                Ok(Message::Binary(Bytes::from(out)))
            }
        }
    }

    /// Encodes `text` but sends only the first half of the compressed bytes:
    /// a truncated message that corrupts the client's stream context (a
    /// fault injection). Plain connections get half of the text.
    pub(crate) fn encode_truncated(&mut self, text: &str) -> Result<Message, CompressError> {
        match self.encode(text)? {
            Message::Binary(b) => Ok(Message::Binary(b.slice(..b.len() / 2))),
            _ => {
                let mut cut = text.len() / 2;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                Ok(Message::Text(text[..cut].to_owned().into()))
            }
        }
    }
}

/// Payloads at least this long are zlib-compressed when the client asked
/// for payload compression.
pub(crate) const PAYLOAD_COMPRESS_MIN: usize = 1024;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;

/// A fresh context for payload compression (reset per payload).
pub(crate) fn payload_compressor() -> Compress {
    Compress::new(Compression::fast(), true)
}

/// Appends a websocket frame header (FIN, no mask) for `len` bytes.
fn push_ws_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends `input` deflated through `c` and flushed with `flush` to `out`.
fn zlib_into(
    c: &mut Compress,
    input: &[u8],
    flush: FlushCompress,
    out: &mut Vec<u8>,
) -> Result<(), CompressError> {
    let finish = matches!(flush, FlushCompress::Finish);
    out.reserve(input.len() / 2 + 64);
    let start = c.total_in();
    loop {
        let consumed = (c.total_in() - start) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let rest = input.get(consumed..).unwrap_or_default();
        let status = c
            .compress_vec(rest, out, flush)
            .map_err(|e| CompressError(e.to_string()))?;
        let done = (c.total_in() - start) as usize == input.len();
        if finish {
            if status == flate2::Status::StreamEnd {
                return Ok(());
            }
        } else if done && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

fn zstd_into(
    e: &mut zstd::stream::raw::Encoder<'static>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CompressError> {
    let err = |e: std::io::Error| CompressError(e.to_string());
    out.reserve(input.len() / 2 + 64);
    let mut inb = InBuffer::around(input);
    while inb.pos() < input.len() {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let pos = out.len();
        let mut outb = OutBuffer::around_pos(out, pos);
        e.run(&mut inb, &mut outb).map_err(err)?;
    }
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let pos = out.len();
        let mut outb = OutBuffer::around_pos(out, pos);
        if e.flush(&mut outb).map_err(err)? == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    fn bytes(m: Message) -> Vec<u8> {
        match m {
            Message::Binary(b) => b.to_vec(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zlib_messages_end_with_sync_flush_and_share_one_context() {
        let mut t = Transport::from_query(Some("zlib-stream")).unwrap();
        let mut inflate = flate2::Decompress::new(true);
        for text in ["{\"op\":10}", &"x".repeat(100_000), "{\"op\":11}"] {
            let b = bytes(t.encode(text).unwrap());
            assert!(b.ends_with(&[0, 0, 0xff, 0xff]));
            let mut out = Vec::with_capacity(text.len() + 64);
            inflate
                .decompress_vec(&b, &mut out, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn zstd_messages_decompress_to_one_payload_each() {
        let mut t = Transport::from_query(Some("zstd-stream")).unwrap();
        let mut all = Vec::new();
        let mut lens = Vec::new();
        for text in ["{\"op\":10}", &"y".repeat(300_000), "{\"op\":0}"] {
            let b = bytes(t.encode(text).unwrap());
            lens.push(text.len());
            all.extend(b);
        }
        let mut d = zstd::stream::read::Decoder::new(&all[..]).unwrap();
        let mut out = vec![0; lens.iter().sum()];
        d.read_exact(&mut out).unwrap();
        assert_eq!(&out[..9], b"{\"op\":10}");
        assert!(out.ends_with(b"{\"op\":0}"));
    }

    #[test]
    fn framed_payloads_match_tungstenite_messages() {
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        let mut t = Transport::from_query(Some("zlib-stream")).unwrap();
        let mut inflate = flate2::Decompress::new(true);
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        let texts = [
            "{\"op\":11}".to_owned(),
            "z".repeat(70_000),
            "a".repeat(300),
        ];
        for text in &texts {
            t.frame_into(text, None, &mut scratch, &mut out).unwrap();
        }
        let mut cursor = std::io::Cursor::new(&out[..]);
        for text in &texts {
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            let start = cursor.position() as usize;
            let body = &out[start..start + len as usize];
            cursor.set_position(start as u64 + len);
            let mut text_out = Vec::with_capacity(text.len() + 64);
            inflate
                .decompress_vec(body, &mut text_out, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(text_out, text.as_bytes());
        }
        assert_eq!(cursor.position() as usize, out.len());
    }

    #[test]
    fn framed_dispatches_match_framed_dispatch_text() {
        let d = format!("{{\"content\":\"{}\"}}", "c".repeat(2000));
        for compress in [None, Some("zlib-stream"), Some("zstd-stream")] {
            for payload in [false, true] {
                let mut a = Transport::from_query(compress).unwrap();
                let mut b = Transport::from_query(compress).unwrap();
                let (mut ca, mut cb) = (payload_compressor(), payload_compressor());
                let (mut text, mut scratch) = (String::new(), Vec::new());
                let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
                for (seq, d) in [(1, "{}"), (2, d.as_str()), (300, "null")] {
                    a.frame_dispatch_into(
                        seq,
                        "MESSAGE_CREATE",
                        d.as_bytes(),
                        payload.then_some(&mut ca),
                        &mut text,
                        &mut scratch,
                        &mut out_a,
                    )
                    .unwrap();
                    protocol::dispatch_into(&mut text, seq, "MESSAGE_CREATE", d);
                    b.frame_into(&text, payload.then_some(&mut cb), &mut scratch, &mut out_b)
                        .unwrap();
                }
                assert_eq!(out_a, out_b, "{compress:?} payload={payload}");
            }
        }
    }

    #[test]
    fn payload_compression_sends_big_payloads_as_one_zlib_stream() {
        let mut t = Transport::from_query(None).unwrap();
        let mut c = payload_compressor();
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        let big = format!("{{\"x\":\"{}\"}}", "b".repeat(5000));
        t.frame_into("{}", Some(&mut c), &mut scratch, &mut out)
            .unwrap();
        assert_eq!(out, [0x81, 2, b'{', b'}']);
        for _ in 0..2 {
            out.clear();
            t.frame_into(&big, Some(&mut c), &mut scratch, &mut out)
                .unwrap();
            assert_eq!(out[0], 0x82);
            let header = if out[1] == 126 { 4 } else { 2 };
            let mut text = String::new();
            flate2::read::ZlibDecoder::new(&out[header..])
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, big);
        }
    }

    #[test]
    fn unknown_compression_is_rejected() {
        assert!(Transport::from_query(Some("gzip")).is_err());
        assert!(matches!(Transport::from_query(None), Ok(Transport::Plain)));
    }
}
