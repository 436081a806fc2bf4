//! Transport compression: `zlib-stream` and `zstd-stream`, one compression
//! context per connection, kept across messages as Discord does.
//!
//! # Algorithm
//! zlib-stream: every payload is fed to the connection's deflate stream and
//! flushed with Z_SYNC_FLUSH, so each websocket message ends with
//! `00 00 FF FF` and the client's single inflate context can decode it.
//! zstd-stream: every payload is fed to the connection's zstd stream and
//! flushed (ZSTD_e_flush), so each websocket message decompresses, in the
//! client's single decompression context, to exactly one payload.

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use tokio_tungstenite::tungstenite::Message;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

/// The compression a connection asked for with `compress=`.
pub(crate) enum Transport {
    Plain,
    Zlib(Box<Compress>),
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
            Some("zlib-stream") => Ok(Transport::Zlib(Box::new(Compress::new(
                Compression::fast(),
                true,
            )))),
            Some("zstd-stream") => zstd::stream::raw::Encoder::new(1)
                .map(|e| Transport::Zstd(Box::new(e)))
                .map_err(|e| format!("cannot create zstd context: {e}")),
            Some(other) => Err(format!(
                "unsupported compress={other:?}; use zlib-stream or zstd-stream"
            )),
        }
    }

    /// Encodes one payload as one websocket message.
    pub(crate) fn encode(&mut self, text: &str) -> Result<Message, CompressError> {
        match self {
            Transport::Plain => Ok(Message::Text(text.to_owned().into())),
            Transport::Zlib(c) => Ok(Message::Binary(Bytes::from(zlib_sync(c, text.as_bytes())?))),
            Transport::Zstd(e) => Ok(Message::Binary(Bytes::from(zstd_flush(
                e,
                text.as_bytes(),
            )?))),
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

fn zlib_sync(c: &mut Compress, input: &[u8]) -> Result<Vec<u8>, CompressError> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let start = c.total_in();
    loop {
        let consumed = (c.total_in() - start) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let rest = input.get(consumed..).unwrap_or_default();
        c.compress_vec(rest, &mut out, FlushCompress::Sync)
            .map_err(|e| CompressError(e.to_string()))?;
        let done = (c.total_in() - start) as usize == input.len();
        if done && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

fn zstd_flush(
    e: &mut zstd::stream::raw::Encoder<'static>,
    input: &[u8],
) -> Result<Vec<u8>, CompressError> {
    let err = |e: std::io::Error| CompressError(e.to_string());
    let mut out: Vec<u8> = Vec::with_capacity(input.len() / 2 + 64);
    let mut inb = InBuffer::around(input);
    while inb.pos() < input.len() {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let pos = out.len();
        let mut outb = OutBuffer::around_pos(&mut out, pos);
        e.run(&mut inb, &mut outb).map_err(err)?;
    }
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let pos = out.len();
        let mut outb = OutBuffer::around_pos(&mut out, pos);
        if e.flush(&mut outb).map_err(err)? == 0 {
            return Ok(out);
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
    fn unknown_compression_is_rejected() {
        assert!(Transport::from_query(Some("gzip")).is_err());
        assert!(matches!(Transport::from_query(None), Ok(Transport::Plain)));
    }
}
