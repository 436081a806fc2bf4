//! Transport compression toward a bot: `zlib-stream`, `zstd-stream` or
//! none, one context per connection kept across messages, as Discord does
//! (see the simulator's transport, whose contexts these match).

use bytes::Bytes;
use gateway_protocol::ZlibStream;
use tokio_tungstenite::tungstenite::Message;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

/// The compression a connection asked for with `compress=`.
pub enum Compression {
    Plain,
    Zlib(ZlibStream),
    Zstd(Box<zstd::stream::raw::Encoder<'static>>),
}

impl Compression {
    /// Parses the `compress` query value.
    pub fn from_query(value: Option<&str>) -> Result<Self, String> {
        match value {
            None => Ok(Self::Plain),
            Some("zlib-stream") => Ok(Self::Zlib(ZlibStream::new())),
            Some("zstd-stream") => zstd::stream::raw::Encoder::new(1)
                .map(|e| Self::Zstd(Box::new(e)))
                .map_err(|e| format!("cannot create a zstd context: {e}")),
            Some(other) => Err(format!(
                "unsupported compress={other:?}; use zlib-stream or zstd-stream"
            )),
        }
    }

    /// One payload as one websocket message.
    pub fn encode(&mut self, text: &str) -> Result<Message, std::io::Error> {
        match self {
            Self::Plain => Ok(Message::Text(text.to_owned().into())),
            Self::Zlib(z) => {
                let mut out = Vec::with_capacity(text.len() / 2 + 64);
                z.compress_sync(text.as_bytes(), &mut out);
                Ok(Message::Binary(Bytes::from(out)))
            }
            Self::Zstd(e) => {
                let mut out = vec![0u8; zstd::zstd_safe::compress_bound(text.len()) + 64];
                let mut input = InBuffer::around(text.as_bytes());
                let mut output = OutBuffer::around(&mut out[..]);
                while input.pos() < text.len() {
                    e.run(&mut input, &mut output)?;
                }
                while e.flush(&mut output)? > 0 {}
                let n = output.pos();
                out.truncate(n);
                Ok(Message::Binary(Bytes::from(out)))
            }
        }
    }
}
